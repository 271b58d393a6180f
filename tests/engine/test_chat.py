"""Chat templates: prompt ids equal apply_chat_template's, completions end at the
template's end-of-turn token, conversations train on their assistant turns, and the
template-off path treats strings and messages alike. Tiny random Llama / Qwen2 models
with tokenizers built here (a ChatML template like SmolLM2's, and a Llama 3 one that
writes BOS itself and ends turns with a token other than EOS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import test_hf
from conftest import THREADS, call, call_raw, model_obj

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "hello world, hello model",
         "what is two plus two", "you are a helpful assistant", "four"] * 4

# SmolLM2-Instruct's template: ChatML with a default system message.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
          "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama 3's: BOS written by the template, turns ended by <|eot_id|> (EOS is another token).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
          "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")

STYLES = {
    "chatml": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None,
                   eos="<|im_end|>", pad="<|endoftext|>", template=CHATML, eot="<|im_end|>"),
    "llama3": dict(special=["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>",
                            "<|end_header_id|>", "<|eot_id|>"],
                   bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>",
                   template=LLAMA3, eot="<|eot_id|>"),
}


def make_tokenizer(style: str, out_dir: Path, template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    st = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=340, special_tokens=st["special"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    if st["bos"]:  # like Llama 3's tokenizer: BOS added to plain text
        tok.post_processor = processors.TemplateProcessing(
            single=f"{st['bos']} $A", special_tokens=[(st["bos"], tok.token_to_id(st["bos"]))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=st["bos"],
                                   eos_token=st["eos"], pad_token=st["pad"])
    if template:
        fast.chat_template = st["template"]
    fast.save_pretrained(out_dir)
    return fast


def make_model(kind: str, style: str, out_dir: Path, template: bool = True):
    fast = make_tokenizer(style, out_dir, template)
    test_hf.make_model(kind, out_dir, fast)
    return fast


def template_ids(fast, messages, generation=True) -> list[int]:
    out = fast.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("chat")
    out = {}
    for kind, style in (("qwen2", "chatml"), ("llama", "llama3")):
        out[style] = (base / style, make_model(kind, style, base / style))
    return out


MSGS = [{"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "what is two plus two"}]


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_prompt_ids_equal_apply_chat_template(models, style):
    path, fast = models[style]
    rep = call(op="load", path=str(path), threads=THREADS)
    h = rep["model"]
    assert rep["info"]["chat"] is True and rep["info"]["system"] is None
    prompts = [MSGS, "what is two plus two", [{"role": "user", "content": "hello"}]]
    rep = call(op="generate", model=h, prompts=prompts, max_tokens=2, seed=0)
    want = [template_ids(fast, MSGS), template_ids(fast, [{"role": "user",
                                                           "content": "what is two plus two"}]),
            template_ids(fast, prompts[2])]
    for i, group in enumerate(rep["samples"]):
        assert group[0]["prompt_ids"] == want[i], i
        assert rep["prompts"][i] == fast.apply_chat_template(
            rep["messages"][i], add_generation_prompt=True, tokenize=False)
    assert rep["messages"][1] == [{"role": "user", "content": "what is two plus two"}]
    if style == "llama3":  # the template writes BOS; the tokenizer must not add another
        bos = fast.bos_token_id
        assert want[0][0] == bos and want[0][1] != bos
        assert fast("hi")["input_ids"][0] == bos  # plain text does get one
    else:  # SmolLM2's template inserts its default system message
        assert "named SmolLM" in rep["prompts"][1]
    # system= adds a system message (load option, and a per-call override).
    h2 = call(op="load", path=str(path), threads=THREADS, system="be brief")["model"]
    sys_msgs = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"}]
    for hh, extra in ((h2, {}), (h, {"system": "be brief"})):
        g = call(op="generate", model=hh, prompts=["hello"], max_tokens=1, seed=0, **extra)
        assert g["samples"][0][0]["prompt_ids"] == template_ids(fast, sys_msgs)
        assert g["messages"][0] == sys_msgs
    # A message list that has a system message keeps its own.
    g = call(op="generate", model=h2, prompts=[MSGS], max_tokens=1, seed=0)
    assert g["samples"][0][0]["prompt_ids"] == want[0]
    # chat=false per call: the raw text, tokenized as plain text.
    g = call(op="generate", model=h2, prompts=["hello"], max_tokens=1, seed=0, chat=False)
    assert g["samples"][0][0]["prompt_ids"] == fast("hello")["input_ids"]
    assert g["prompts"] == ["hello"] and g["messages"] == [None]
    for hh in (h, h2):
        call(op="close", model=hh)


def force_token(h, token_id: int):
    """Make the model always predict `token_id` (a hook on its output logits)."""
    module = model_obj(h).module

    def hook(mod, args, out):
        out.logits[..., token_id] += 1e4
        return out
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_generation_stops_at_end_of_turn(models, style):
    path, fast = models[style]
    eot = fast.convert_tokens_to_ids(STYLES[style]["eot"])
    h = call(op="load", path=str(path), threads=THREADS)["model"]
    assert model_obj(h).tok.eot_id == eot
    hook = force_token(h, eot)
    try:
        s = call(op="generate", model=h, prompts=[MSGS], max_tokens=5, seed=0)["samples"][0][0]
    finally:
        hook.remove()
    # Llama 3: <|eot_id|> is not the tokenizer's EOS, and still ends the turn.
    assert (eot == fast.eos_token_id) == (style == "chatml")
    assert s["ids"] == [eot] and s["finish"] == "stop" and s["text"] == ""
    call(op="close", model=h)


def completion_tokens(fast, prompt_msgs, content, eot):
    full = template_ids(fast, prompt_msgs + [{"role": "assistant", "content": content}], False)
    p = template_ids(fast, prompt_msgs)
    assert full[:len(p)] == p
    c = full[len(p):]
    return p, c[:c.index(eot) + 1]


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_text_samples_are_the_assistant_turn_through_end_of_turn(models, style):
    path, fast = models[style]
    eot = fast.convert_tokens_to_ids(STYLES[style]["eot"])
    h = call(op="load", path=str(path), threads=THREADS)["model"]
    m = model_obj(h)
    p, c = completion_tokens(fast, MSGS, "four", eot)
    assert c[-1] == eot and len(c) >= 2
    opts = {"chat": None, "system": None}
    for sample in ({"prompt": MSGS, "text": "four"},
                   {"prompt": MSGS, "text": [{"role": "assistant", "content": "four"}]},
                   {"messages": MSGS + [{"role": "assistant", "content": "four"}]}):
        seq = m._tokenize([sample], "backward", opts)[0]
        assert (seq.prompt, seq.completion, seq.train) == (p, c, None), sample
    # A text cut at max_tokens has no end-of-turn.
    seq = m._tokenize([{"prompt": MSGS, "text": "four", "finish": "length"}], "backward", opts)[0]
    assert seq.completion == c[:-1]
    # The generated ids of a turn that ended at end-of-turn are the text sample's ids.
    hook = force_token(h, c[0])
    try:
        g = call(op="generate", model=h, prompts=[MSGS], max_tokens=1, seed=0)["samples"][0][0]
    finally:
        hook.remove()
    assert g["prompt_ids"] == p and g["ids"] == c[:1]
    lp = call(op="logprobs", model=h, samples=[{"prompt": MSGS, "text": "four"}])["logprobs"]
    assert len(lp[0]) == len(c)
    call(op="close", model=h)


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_conversation_trains_every_assistant_turn(models, style):
    path, fast = models[style]
    eot = fast.convert_tokens_to_ids(STYLES[style]["eot"])
    conv = [{"role": "user", "content": "what is two plus two"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "hello model"},
            {"role": "assistant", "content": "hello world"}]
    h = call(op="load", path=str(path), threads=THREADS, lr=1e-3)["model"]
    seq = model_obj(h)._tokenize([{"messages": conv}], "backward", {"chat": None,
                                                                    "system": None})[0]
    p1, c1 = completion_tokens(fast, conv[:1], "four", eot)
    p2, c2 = completion_tokens(fast, conv[:3], "hello world", eot)
    full = seq.prompt + seq.completion
    assert seq.prompt == p1 and full[:len(p2)] == p2
    trained = [t for t, on in zip(seq.completion, seq.train, strict=True) if on]
    assert trained == c1 + c2  # both assistant turns, each through its end-of-turn
    assert sum(1 for t in trained if t == eot) == 2
    # The same log-probs as the two turns given as prompt/completion samples.
    lp = call(op="logprobs", model=h, samples=[{"messages": conv}])["logprobs"][0]
    parts = call(op="logprobs", model=h, samples=[{"prompt": conv[:1], "text": "four"},
                                                  {"prompt": conv[:3], "text": "hello world"}])
    assert lp == pytest.approx(parts["logprobs"][0] + parts["logprobs"][1], abs=1e-5)
    b = call(op="backward", model=h, samples=[{"messages": conv}], loss="sft")
    assert b["tokens"] == len(c1) + len(c2)
    rep = call_raw(id=1, op="backward", model=h, loss="sft",
                   samples=[{"messages": [{"role": "user", "content": "hi"}]}])
    assert rep["error"]["kind"] == "config" and "no assistant message" in rep["error"]["message"]
    call(op="close", model=h)


def grads_of(h, samples):
    m = model_obj(h)
    b = call(op="backward", model=h, samples=samples, loss="sft", agg="seq-mean")
    g = {k: p.grad.clone() for k, p in m.params.items() if p.grad is not None}
    m._discard_grads()
    return b["loss"], g


@pytest.mark.parametrize("path", ["builtin:tiny", "hf"])
def test_template_off_strings_and_messages_train_identically(models, path):
    opts = {}
    if path == "hf":
        path, opts = str(models["chatml"][0]), {"chat": False}
    h = call(op="load", path=path, threads=THREADS, **opts)["model"]
    strings = [{"prompt": "what is two plus two", "text": " four"},
               {"prompt": "hello", "text": " world"}]
    msgs = [{"prompt": [{"role": "user", "content": "what is two plus two"}],
             "text": [{"role": "assistant", "content": " four"}]},
            {"messages": [{"role": "user", "content": "hello"},
                          {"role": "assistant", "content": " world"}]}]
    loss_s, g_s = grads_of(h, strings)
    loss_m, g_m = grads_of(h, msgs)
    assert loss_s == loss_m and g_s.keys() == g_m.keys() and g_s
    for k in g_s:
        assert torch.equal(g_s[k], g_m[k]), k
    # Without a template a conversation must be one exchange.
    rep = call_raw(id=1, op="backward", model=h, loss="sft", samples=[{"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
    assert rep["error"]["kind"] == "config"
    assert "'samples[1].messages'" in rep["error"]["message"]
    call(op="close", model=h)


def test_chat_options_are_checked(models, tmp_path):
    rep = call_raw(id=1, op="load", path="builtin:tiny", chat=True)
    assert rep["error"]["kind"] == "config" and "no chat template" in rep["error"]["message"]
    rep = call_raw(id=2, op="load", path="builtin:tiny", system="x")
    assert rep["error"]["kind"] == "config" and "'system'" in rep["error"]["message"]
    notpl = tmp_path / "notpl"
    make_model("qwen2", "chatml", notpl, template=False)
    rep = call_raw(id=3, op="load", path=str(notpl), chat=True)
    assert rep["error"]["kind"] == "config" and "no chat template" in rep["error"]["message"]
    rep = call(op="load", path=str(notpl), threads=THREADS)
    h = rep["model"]
    assert rep["info"]["chat"] is False  # no template: chat defaults to off
    g = call(op="generate", model=h, prompts=[[{"role": "user", "content": "hello"}]],
             max_tokens=1, seed=0)
    assert g["prompts"] == ["hello"]
    call(op="close", model=h)
    h = call(op="load", path=str(models["chatml"][0]), threads=THREADS)["model"]
    bad = [([{"role": "user"}], "'prompts[1][1].content' must be a string"),
           ([], "'prompts[1]' must be a non-empty list of messages"),
           ([{"role": "user", "content": 3}], "'prompts[1][1].content' must be a string"),
           (7, "'prompts[1]' must be a string or a list of messages")]
    for prompt, msg in bad:
        rep = call_raw(id=4, op="generate", model=h, prompts=[prompt])
        assert rep["error"]["kind"] == "config" and msg in rep["error"]["message"], rep
    rep = call_raw(id=5, op="generate", model=h, prompts=["x"], chat=False, system="s")
    assert rep["error"]["kind"] == "config" and "'chat' is false" in rep["error"]["message"]
    rep = call_raw(id=6, op="logprobs", model=h, samples=[{"messages": MSGS, "text": "x"}])
    assert rep["error"]["kind"] == "config" and "not both" in rep["error"]["message"]
    # A template that refuses a conversation is a config error naming the sample.
    model_obj(h).tok.tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    rep = call_raw(id=7, op="generate", model=h, prompts=["x"])
    assert rep["error"]["kind"] == "config" and "roles must alternate" in rep["error"]["message"]
    assert "'prompts[1]'" in rep["error"]["message"]
    call(op="close", model=h)


@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="models/smollm2-135m-instruct is not built "
                                                 "(make models)")
def test_smollm2_chat_prompt_and_answer():
    from transformers import AutoTokenizer
    fast = AutoTokenizer.from_pretrained(str(SMOLLM2), local_files_only=True)
    h = call(op="load", path=str(SMOLLM2), threads=THREADS)["model"]
    q = [{"role": "user", "content": "What is 2+2?"}]
    rep = call(op="generate", model=h, prompts=[q], max_tokens=12, temperature=0)
    s = rep["samples"][0][0]
    assert s["prompt_ids"] == template_ids(fast, q)
    assert s["ids"][-1] == fast.convert_tokens_to_ids("<|im_end|>") and s["finish"] == "stop"
    assert "4" in s["text"]
    # The question as a string is the same user message.
    g = call(op="generate", model=h, prompts=["What is 2+2?"], max_tokens=1, temperature=0)
    assert g["samples"][0][0]["prompt_ids"] == s["prompt_ids"]
    assert g["prompts"][0].endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                                    "<|im_start|>assistant\n")
    call(op="close", model=h)

