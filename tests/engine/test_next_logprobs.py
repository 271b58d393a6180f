"""next_logprobs: a judge's verdict distribution, checked against the model's logits.

builtin:tiny (byte tokenizer) and a tiny random-init Llama with a byte-level BPE
tokenizer built here, whose vocabulary writes a word's leading space into the word's
token ("Ġyes"), so the prompt's trailing space is moved onto the candidates.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import THREADS, EngineFailed, call, load, model_obj
from test_hf import make_tokenizer

TEXTS = ["Answer yes or no: yes", "Answer yes or no: no", "Score: 7", "Score: 3",
         "is it a good reply? yes it is", "no it is not", "Score: 1 2 3 4 5 6 7 8 9"] * 8


def make_llama(out_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    fast = make_tokenizer(out_dir, TEXTS, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    return fast


def direct(module, ids: list[int]) -> torch.Tensor:
    """Next-token log-probs after ids, from one unpadded forward pass."""
    with torch.inference_mode():
        x = torch.tensor([ids])
        out = module(x) if not hasattr(module, "config") else module(input_ids=x).logits
        return torch.log_softmax(out[0, -1].float(), -1)


def test_builtin_matches_logits():
    h = load()
    prompts = ["Score: ", "Is this reply short? Answer: ", "x"]
    cands = [str(d) for d in range(10)]
    rep = call(op="next_logprobs", model=h, prompts=prompts, candidates=cands)
    m = model_obj(h)
    for i, p in enumerate(prompts):
        lp = direct(m.module, [256, *p.encode()])  # BOS + bytes: no space moved
        want = [float(lp[ord(c)]) for c in cands]
        assert rep["logprobs"][i] == pytest.approx(want, abs=1e-5)
        assert rep["mass"][i] == pytest.approx(sum(math.exp(x) for x in want), rel=1e-5)
        assert rep["top_logprob"][i] == pytest.approx(float(lp.max()), abs=1e-5)
    assert rep["first_only"] == []
    # Several tokens each, distinct first bytes: scored by the first one.
    yn = call(op="next_logprobs", model=h, prompts=["Answer: "], candidates=["yes", "no"])
    lp = direct(m.module, [256, *b"Answer: "])
    assert yn["logprobs"][0] == pytest.approx([float(lp[ord("y")]), float(lp[ord("n")])], abs=1e-5)
    assert yn["first_only"] == ["yes", "no"]


def test_builtin_refuses_ambiguous_candidates():
    h = load()
    for cands, msg in ((["1", "10"], "start with the same token"),
                       ([" a", " b"], "start with the same token"),
                       (["a", "a"], "duplicates"), ([], "non-empty list"),
                       (["a", ""], r"candidates\[2\].*empty string")):
        with pytest.raises(EngineFailed, match=msg) as e:
            call(op="next_logprobs", model=h, prompts=["Score: "], candidates=cands)
        assert e.value.reply["error"]["kind"] == "config"
    with pytest.raises(EngineFailed, match="context of 256"):
        call(op="next_logprobs", model=h, prompts=["x" * 300], candidates=["a"])


def test_hf_matches_logits_moves_the_space_and_pads(tmp_path):
    fast = make_llama(tmp_path)
    h = call(op="load", path=str(tmp_path), threads=THREADS)["model"]
    m = model_obj(h)
    yes, no = fast.encode(" yes", add_special_tokens=False), fast.encode(" no", add_special_tokens=False)
    assert len(yes) == 1 and len(no) == 1  # "Ġyes", "Ġno": the space is in the word's token
    prompts = ["Answer yes or no: ", "is it a good reply? Answer yes or no: ", "Answer yes or no:"]
    rep = call(op="next_logprobs", model=h, prompts=prompts, candidates=["yes", "no"])
    bare = [fast.encode(w, add_special_tokens=False)[0] for w in ("yes", "no")]
    for i, p in enumerate(prompts):
        # Prompts ending in a space are read as "...:" followed by " yes" / " no"; the
        # one without is read as given, followed by "yes" / "no".
        lp = direct(m.module, fast.encode(p.rstrip(" ")))
        ids = [yes[0], no[0]] if p.endswith(" ") else bare
        want = [float(lp[t]) for t in ids]
        # Three prompts of different lengths share a left-padded batch.
        assert rep["logprobs"][i] == pytest.approx(want, abs=1e-4), p
        assert rep["top"][i] == fast.decode([int(lp.argmax())])
    assert rep["first_only"] == []
    # One prompt alone gives the same numbers as in the padded batch.
    one = call(op="next_logprobs", model=h, prompts=[prompts[1]], candidates=["yes", "no"])
    assert one["logprobs"][0] == pytest.approx(rep["logprobs"][1], abs=1e-4)


def test_worker_transport_gives_the_same_numbers(worker):
    args = dict(prompts=["Score: ", "Answer: "], candidates=["1", "2", "3"])
    h = load()
    here = call(op="next_logprobs", model=h, **args)
    wh = worker.call(op="load", path="builtin:tiny", threads=THREADS)["model"]
    there = worker.call(op="next_logprobs", model=wh, **args)
    assert there["logprobs"] == here["logprobs"] and there["mass"] == here["mass"]
