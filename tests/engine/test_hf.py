"""The Hugging Face path: a tiny random Llama / Qwen2 and a tokenizer built here."""

from __future__ import annotations


import pytest
import torch
from conftest import THREADS, call, call_raw, model_obj

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "hello world, hello model",
         "reinforcement learning from feedback", "one two three four five six"] * 4


def make_tokenizer(out_dir, texts=TEXTS, vocab_size=320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def make_model(kind, out_dir):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    fast = make_tokenizer(out_dir)
    common = dict(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    model.save_pretrained(out_dir)
    assert list(out_dir.glob("*.safetensors")) and not list(out_dir.glob("*.bin"))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_model_generate_train_save_reload(kind, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = tmp_path / "src"
    make_model(kind, src)
    rep = call(op="load", path=str(src), dtype="float32", seed=0, lr=1e-3, reference=True,
               threads=THREADS)
    h, info = rep["model"], rep["info"]
    assert info["arch"] in ("LlamaForCausalLM", "Qwen2ForCausalLM") and info["vocab"] > 256
    prompts = ["the cat", "hello world, hello", "a"]
    out = call(op="generate", model=h, prompts=prompts, n=2, max_tokens=8, seed=1)["samples"]
    again = call(op="generate", model=h, prompts=prompts, n=2, max_tokens=8, seed=1)["samples"]
    assert out == again
    flat = [s for g in out for s in g]
    assert all(s["prompt_ids"][0] == 1 for s in flat)  # BOS from the tokenizer
    # The KV cache with left padding agrees with a full forward pass.
    lp = call(op="logprobs", model=h, samples=flat)["logprobs"]
    for s, want in zip(flat, lp, strict=True):
        assert s["logprobs"] == pytest.approx(want, abs=1e-4)
    greedy = call(op="generate", model=h, prompts=prompts, temperature=0, max_tokens=8)
    lp = call(op="logprobs", model=h, samples=[g[0] for g in greedy["samples"]])["logprobs"]
    for g, want in zip(greedy["samples"], lp, strict=True):
        assert g[0]["logprobs"] == pytest.approx(want, abs=1e-4)

    # Text-only samples (as from a teacher) are tokenized here, with EOS appended.
    sft = [{"prompt": "the cat", "text": " sat on the mat"},
           {"prompt": "one two", "text": " three"}]
    b = call(op="backward", model=h, samples=sft, loss="sft")
    assert b["tokens"] > 4
    call(op="backward", model=h, samples=flat, advantages=[1, -1, 0.5, None, 2, -2],
         loss="pg", kl=0.1)
    st = call(op="step", model=h, clip=1.0)
    assert st["version"] == 1 and st["grad_norm"] > 0 and st["kl"] is not None

    saved = call(op="save", model=h, dir=str(tmp_path / "ck"))
    assert "hf" in saved["files"]
    hf_dir = tmp_path / "ck" / "hf"
    reloaded = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True)
    AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    mine = model_obj(h).module.state_dict()
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, mine[k]), k

    # Restore into a fresh load of the original directory gives the trained weights.
    h2 = call(op="load", path=str(src), seed=0, lr=1e-3, threads=THREADS)["model"]
    call(op="restore", model=h2, dir=str(tmp_path / "ck"))
    a = call(op="logprobs", model=h, samples=sft)["logprobs"]
    assert call(op="logprobs", model=h2, samples=sft)["logprobs"] == a
    # And loading the saved directory itself works as a model path.
    h3 = call(op="load", path=str(hf_dir), threads=THREADS)["model"]
    assert call(op="logprobs", model=h3, samples=sft)["logprobs"] == a
    # Export/import between the HF models (tied weights included).
    exp = call(op="export", model=h)
    call(op="import", model=h2, path=exp["path"], remove=True)
    for hh in (h, h2, h3):
        call(op="close", model=hh)


def test_hf_bad_directories(tmp_path):
    src = tmp_path / "m"
    make_model("llama", src)
    h = call(op="load", path=str(src), threads=THREADS)["model"]
    # A builtin checkpoint is another model.
    tiny = call(op="load", path="builtin:tiny", threads=THREADS)["model"]
    call(op="save", model=tiny, dir=str(tmp_path / "tiny"))
    rep = call_raw(id=1, op="restore", model=h, dir=str(tmp_path / "tiny"))
    assert rep["error"]["kind"] == "config" and "another model" in rep["error"]["message"]
    call(op="close", model=tiny)
    # Corrupt weights in a model directory.
    weights = next(src.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    rep = call_raw(id=2, op="load", path=str(src))
    assert rep["error"]["kind"] == "config" and str(weights) in rep["error"]["message"]
    weights.unlink()
    rep = call_raw(id=3, op="load", path=str(src))
    assert rep["error"]["kind"] == "config" and "no *.safetensors" in rep["error"]["message"]
    (src / "config.json").unlink()
    rep = call_raw(id=4, op="load", path=str(src))
    assert rep["error"]["kind"] == "config" and "config.json" in rep["error"]["message"]
    assert call(op="info", model=h)["vocab"] > 0
    call(op="close", model=h)
