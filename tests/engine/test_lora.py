"""LoRA through peft: on a tiny random-init Llama built here, and on builtin:tiny."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import THREADS, Worker, call, call_raw, model_obj
from test_hf import make_model

SFT = [{"prompt": "the cat", "text": " sat on the mat"},
       {"prompt": "one two", "text": " three four five"},
       {"prompt": "hello", "text": " world, hello model"}]
PROMPTS = ["the cat", "hello world, hello", "one two"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    make_model("llama", d)
    return d


def lora_load(path, lora=None, **opts):
    opts.setdefault("threads", THREADS)
    opts.setdefault("lr", 5e-2)
    return call(op="load", path=str(path), lora=lora or {"r": 4, "alpha": 8}, **opts)


def train(h, steps=2):
    for _ in range(steps):
        call(op="backward", model=h, samples=SFT, loss="sft")
        call(op="step", model=h, clip=1.0)


def expected_adapter_params(r, shapes):
    return sum(r * (i + o) for i, o in shapes)


def test_trainable_counts_all_linear_and_named_targets(llama):
    # The random Llama: hidden 64, MLP 128, 4 heads of 16, 2 KV heads (k/v 32 wide),
    # 2 layers; all-linear = q, k, v, o, gate, up, down (not lm_head).
    per_layer = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    rep = lora_load(llama, {"r": 4})
    info = rep["info"]
    assert info["trainable"] == expected_adapter_params(4, per_layer * 2)
    base = call(op="load", path=str(llama), threads=THREADS)
    assert info["params"] == call(op="info", model=base["model"])["params"] + info["trainable"]
    assert info["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "targets": "all-linear",
                            "layers": 14}
    rep2 = lora_load(llama, {"r": 8, "targets": ["q_proj", "v_proj"]})
    assert rep2["info"]["trainable"] == expected_adapter_params(8, [(64, 64), (64, 32)] * 2)
    for h in (rep["model"], base["model"], rep2["model"]):
        call(op="close", model=h)


def test_only_adapter_trains_and_is_in_optimizer_state(llama):
    h = lora_load(llama)["model"]
    m = model_obj(h)
    before = {k: v.detach().clone() for k, v in m.module.named_parameters()}
    train(h, 1)
    after = dict(m.module.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    # lora_A starts random, lora_B at zero; both move after a step with gradient.
    assert any(".lora_B." in k for k in changed)
    state_params = {id(p) for p in m.opt.state}
    lora_params = {id(p) for k, p in after.items() if ".lora_" in k}
    assert state_params == lora_params
    assert sum(p.numel() for g in m.opt.param_groups for p in g["params"]) == \
        call(op="info", model=h)["trainable"]
    call(op="close", model=h)


def test_checkpoint_is_peft_format_and_resume_is_bitwise(llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    h = lora_load(llama, reference=True)["model"]
    train(h, 2)
    saved = call(op="save", model=h, dir=str(tmp_path / "ck"))
    assert "adapter" in saved["files"] and "hf" not in saved["files"]
    adir = tmp_path / "ck" / "adapter"
    assert (adir / "adapter_model.safetensors").is_file()
    cfg = json.loads((adir / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"
    meta = json.loads((tmp_path / "ck" / "engine.json").read_text())
    assert meta["base_model"] == str(llama) and meta["lora"]["r"] == 4
    # The optimizer file holds the adapter's moments only.
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ck" / "optimizer.safetensors"), "pt") as f:
        assert f.keys() and all(".lora_" in k for k in f.keys())

    # PeftModel.from_pretrained reads it and computes what the engine computes.
    base = AutoModelForCausalLM.from_pretrained(str(llama), local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, str(adir)).eval()
    mine = call(op="logprobs", model=h, samples=SFT)["logprobs"]
    tok = model_obj(h).tok
    for s, lp in zip(SFT, mine, strict=True):
        p = tok.encode_prompt(s["prompt"])
        c = tok.encode_text(s["text"]) + [tok.eos_id]
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([p + c])).logits[0]
        want = torch.log_softmax(logits[len(p) - 1:-1], -1).gather(
            -1, torch.tensor(c)[:, None]).squeeze(-1)
        assert lp == pytest.approx(want.tolist(), abs=1e-5)

    # Resume: the next steps of a restored model equal the uninterrupted ones bitwise.
    train(h, 2)
    gen = call(op="generate", model=h, prompts=PROMPTS, n=2, max_tokens=6)["samples"]
    want_lp = call(op="logprobs", model=h, samples=SFT, reference=True)
    h2 = lora_load(llama, reference=True, seed=7)["model"]  # another adapter init
    assert call(op="restore", model=h2, dir=str(tmp_path / "ck"))["version"] == 2
    train(h2, 2)
    assert call(op="generate", model=h2, prompts=PROMPTS, n=2, max_tokens=6)["samples"] == gen
    assert call(op="logprobs", model=h2, samples=SFT, reference=True) == want_lp
    for hh in (h, h2):
        call(op="close", model=hh)


def test_restore_refuses_another_lora_setting(llama, tmp_path):
    h = lora_load(llama)["model"]
    call(op="save", model=h, dir=str(tmp_path / "ck"))
    full = call(op="load", path=str(llama), threads=THREADS)["model"]
    rep = call_raw(id=1, op="restore", model=full, dir=str(tmp_path / "ck"))
    assert rep["error"]["kind"] == "config" and "lora" in rep["error"]["message"]
    other = lora_load(llama, {"r": 8})["model"]
    rep = call_raw(id=2, op="restore", model=other, dir=str(tmp_path / "ck"))
    assert rep["error"]["kind"] == "config" and "lora" in rep["error"]["message"]
    for hh in (h, full, other):
        call(op="close", model=hh)


def test_merged_export_loads_in_transformers_and_generates_identically(llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    h = lora_load(llama, lr=1e-1)["model"]
    before = call(op="generate", model=h, prompts=PROMPTS, temperature=0, max_tokens=10)
    train(h, 3)
    mine = call(op="generate", model=h, prompts=PROMPTS, temperature=0, max_tokens=10)
    assert mine["samples"] != before["samples"]  # the adapter changed the answers
    rep = call(op="save", model=h, dir=str(tmp_path / "merged"), merged=True)
    assert "model.safetensors" in rep["files"] and "config.json" in rep["files"]
    out = tmp_path / "merged"
    assert not list(out.glob("adapter*"))
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert not any(".lora_" in k or "base_layer" in k for k in model.state_dict())
    for (s,) in mine["samples"]:
        ids = torch.tensor([s["prompt_ids"]])
        got = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=10, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert got == s["ids"]
    # Saving again replaces the directory whole.
    call(op="save", model=h, dir=str(out), merged=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(rep["files"])
    call(op="close", model=h)


def test_merged_export_of_a_full_fine_tune_is_the_model_itself(llama, tmp_path):
    from transformers import AutoModelForCausalLM
    h = call(op="load", path=str(llama), threads=THREADS, lr=1e-2)["model"]
    train(h, 1)
    call(op="save", model=h, dir=str(tmp_path / "m"), merged=True)
    rec = json.loads((tmp_path / "m" / "rlhost-export.json").read_text())
    assert rec["steps"] == 1 and rec["lora"] is None and rec["base_model"] == str(llama)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    mine = model_obj(h).module.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, mine[k]), k
    call(op="close", model=h)


def test_kl_reference_is_the_base_model_with_adapter_disabled(llama):
    h = lora_load(llama, reference=True)["model"]
    m = model_obj(h)
    assert not isinstance(m.ref, torch.nn.Module)  # no second copy of the weights
    train(h, 2)
    rep = call(op="logprobs", model=h, samples=SFT, reference=True)
    base = call(op="load", path=str(llama), threads=THREADS)["model"]
    want = call(op="logprobs", model=base, samples=SFT)["logprobs"]
    assert rep["ref_logprobs"] == want
    assert rep["logprobs"] != want  # the adapter is on for the policy
    # A backward with KL sees a non-zero divergence from the base.
    st = call(op="backward", model=h, samples=SFT, loss="sft", kl=0.1)
    assert st["kl"] > 0
    for hh in (h, base):
        call(op="close", model=hh)


def test_worker_sync_sends_the_adapter_only(llama):
    lora = {"r": 4, "alpha": 8}
    h = lora_load(llama, lora)["model"]
    train(h, 2)
    exp = call(op="export", model=h)
    full = call(op="load", path=str(llama), threads=THREADS)["model"]
    full_bytes = call(op="export", model=full)["bytes"]
    assert exp["bytes"] < full_bytes / 3
    w = Worker()
    try:
        wh = w.call(op="load", path=str(llama), lora=lora, threads=THREADS, seed=5)["model"]
        w.call(op="import", model=wh, path=exp["path"])
        got = w.call(op="logprobs", model=wh, samples=SFT)["logprobs"]
        assert got == call(op="logprobs", model=h, samples=SFT)["logprobs"]
        # A generator loaded without the adapter cannot take it: a config error.
        wf = w.call(op="load", path=str(llama), threads=THREADS)["model"]
        rep = w.call_raw(op="import", model=wf, path=exp["path"])
        assert rep["error"]["kind"] == "config" and "does not match" in rep["error"]["message"]
    finally:
        w.close()
    for hh in (h, full):
        call(op="close", model=hh)


def test_builtin_lora_trains_resumes_and_exports(tmp_path):
    h = call(op="load", path="builtin:tiny", lora={"r": 4}, threads=THREADS, lr=1e-2,
             reference=True)
    info = h["info"]
    h = h["model"]
    # builtin:tiny all-linear: per block qkv 128->384, proj 128->128, fc 128->512,
    # fc2 512->128; 4 blocks.
    assert info["trainable"] == expected_adapter_params(
        4, [(128, 384), (128, 128), (128, 512), (512, 128)] * 4)
    train(h, 2)
    call(op="save", model=h, dir=str(tmp_path / "ck"))
    assert (tmp_path / "ck" / "adapter" / "adapter_model.safetensors").is_file()
    train(h, 1)
    want = call(op="logprobs", model=h, samples=SFT, reference=True)
    h2 = call(op="load", path="builtin:tiny", lora={"r": 4}, threads=THREADS, lr=1e-2,
              reference=True, seed=9)["model"]
    call(op="restore", model=h2, dir=str(tmp_path / "ck"))
    train(h2, 1)
    assert call(op="logprobs", model=h2, samples=SFT, reference=True) == want
    # The merged export folds the adapter in: a plain builtin state dict.
    call(op="save", model=h, dir=str(tmp_path / "m"), merged=True)
    from safetensors.torch import load_file
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    plain = call(op="load", path="builtin:tiny", threads=THREADS)["model"]
    assert set(sd) == set(model_obj(plain).module.state_dict())
    model_obj(plain).module.load_state_dict(sd)
    got = call(op="logprobs", model=plain, samples=SFT)["logprobs"]
    for a, b in zip(got, want["logprobs"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for hh in (h, h2, plain):
        call(op="close", model=hh)


def test_lora_dropout_only_while_training(llama):
    h = lora_load(llama, {"r": 4, "dropout": 0.5}, seed=3)["model"]
    train(h, 1)  # lora_B moves off zero, so dropout on the adapter path shows
    a = call(op="logprobs", model=h, samples=SFT)["logprobs"]
    assert call(op="logprobs", model=h, samples=SFT)["logprobs"] == a  # no dropout here
    # Two backward passes on the same weights: dropout masks differ, so do the losses.
    b1 = call(op="backward", model=h, samples=SFT, loss="sft")["loss"]
    b2 = call(op="backward", model=h, samples=SFT, loss="sft")["loss"]
    assert b1 != b2
    call(op="close", model=h)
    h = lora_load(llama, {"r": 4}, seed=3)["model"]
    train(h, 1)
    b1 = call(op="backward", model=h, samples=SFT, loss="sft")["loss"]
    assert call(op="backward", model=h, samples=SFT, loss="sft")["loss"] == b1
    call(op="close", model=h)


@pytest.mark.parametrize("lora,msg", [
    ({"alpha": 8}, "'lora.r' (the adapter rank) is required"),
    ({"r": 0}, "'lora.r' must be an integer >= 1"),
    ({"r": 4, "dropout": 1.0}, "'lora.dropout' must be < 1"),
    ({"r": 4, "targets": []}, "'lora.targets' must be \"all-linear\""),
    ({"r": 4, "targets": ["q_proj", "nope"]}, "names ['nope']"),
    ({"r": 4, "rank": 4}, "unknown field 'lora.rank' (did you mean 'lora.r'?)"),
    ("yes", "'lora' must be an object"),
])
def test_bad_lora_options_are_config_errors(llama, lora, msg):
    rep = call_raw(id=1, op="load", path=str(llama), lora=lora, threads=THREADS)
    assert rep["error"]["kind"] == "config"
    assert msg in rep["error"]["message"]
