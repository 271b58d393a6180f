"""Precision and memory: mixed precision, gradient checkpointing, the LM head on
completion positions only, the AdamW kernel, entropy on request, thread counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import SCRIPTS, THREADS, call, call_raw, load, model_obj
from test_hf import make_model, make_tokenizer

SAMPLES = [{"prompt": "the cat", "text": " sat on the mat"},
           {"prompt": "hello world,", "text": " hello model"},
           {"prompt": "a", "text": " dog ran in the park, one two three"},
           {"prompt": "one two three four", "text": " five six"}]
ADV = [1.0, -0.5, 0.25, -1.0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    make_model("llama", d)
    return str(d)


def _grads(h) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model_obj(h).params.items()
            if p.grad is not None}


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while `fn` runs
    (those saved inside a checkpointed region are the checkpoint's, not counted)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _count_calls(modules) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for m in modules:
        m.register_forward_hook(hook)
    return calls


def _inner_modules(h) -> list[torch.nn.Module]:
    """Modules called inside each checkpointed unit: builtin blocks' attention
    projection, HF decoder layers' self-attention (transformers checkpoints a layer's
    forward, so hooks on the layer itself stay outside the checkpoint)."""
    mod = model_obj(h).module
    if hasattr(mod, "blocks"):
        return [b.qkv for b in mod.blocks]
    return [layer.self_attn for layer in mod.model.layers]


@pytest.mark.parametrize("which", ["builtin", "llama"])
def test_checkpointing_recomputes_and_gives_the_same_gradients(which, llama):
    path = "builtin:tiny" if which == "builtin" else llama
    plain = load(path, seed=3, lr=1e-3)
    ckpt = load(path, seed=3, lr=1e-3, gradient_checkpointing=True)
    assert call(op="info", model=ckpt)["gradient_checkpointing"] is True
    units = _inner_modules(ckpt)
    calls = _count_calls(units)
    req = dict(op="backward", samples=SAMPLES, advantages=ADV, loss="pg")
    saved_plain = _saved_bytes(lambda: call(model=plain, **req))
    saved_ckpt = _saved_bytes(lambda: call(model=ckpt, **req))
    # Every checkpointed unit ran twice: once forward, once recomputed in the backward.
    assert calls[0] == 2 * len(units)
    assert saved_ckpt < 0.6 * saved_plain, (saved_ckpt, saved_plain)
    ga, gb = _grads(plain), _grads(ckpt)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        assert (ga[k] - gb[k]).abs().max().item() <= 1e-5, k
    # Generation is untouched (HF keeps its KV cache: no training-mode layers there).
    g1 = call(op="generate", model=plain, prompts=["the cat"], n=2, max_tokens=6, seed=5)
    g2 = call(op="generate", model=ckpt, prompts=["the cat"], n=2, max_tokens=6, seed=5)
    assert g1["samples"] == g2["samples"]
    st1, st2 = call(op="step", model=plain), call(op="step", model=ckpt)
    assert st1["loss"] == pytest.approx(st2["loss"], abs=1e-6)
    for h in (plain, ckpt):
        call(op="close", model=h)


def _has_lora() -> bool:
    from rlengine.protocol import LOAD
    return "lora" in LOAD


@pytest.mark.skipif(not _has_lora(), reason="this engine has no 'lora' load option")
def test_checkpointing_with_lora_gives_the_same_adapter_gradients(llama):
    lora = {"r": 4, "alpha": 8}
    plain = load(llama, seed=3, lora=lora)
    ckpt = load(llama, seed=3, lora=lora, gradient_checkpointing=True, precision="bf16-mixed")
    ckpt32 = load(llama, seed=3, lora=lora, gradient_checkpointing=True)
    units = _inner_modules(ckpt32)
    calls = _count_calls(units)
    for h in (plain, ckpt, ckpt32):
        call(op="backward", model=h, samples=SAMPLES, advantages=ADV, )
    assert calls[0] == 2 * len(units)
    ga, gb, gc = _grads(plain), _grads(ckpt), _grads(ckpt32)
    assert ga.keys() == gc.keys() == gb.keys() and ga
    assert all("lora" in k for k in ga)
    for k in ga:
        assert (ga[k] - gc[k]).abs().max().item() <= 1e-5, k
        # bf16 compute: the same gradients to bf16 accuracy (relative to their norm)
        rel = ((ga[k] - gb[k]).norm() / ga[k].norm().clamp(min=1e-30)).item()
        assert rel < 0.05, (k, rel)


def _sft_losses(path, steps=4, **opts) -> list[float]:
    h = load(path, seed=1, lr=3e-3, **opts)
    out = []
    for _ in range(steps):
        call(op="backward", model=h, samples=SAMPLES, loss="sft")
        out.append(call(op="step", model=h, clip=1.0)["loss"])
    call(op="close", model=h)
    return out


@pytest.mark.parametrize("which", ["builtin", "llama"])
def test_bf16_mixed_computes_in_bf16_and_its_loss_tracks_fp32(which, llama):
    path = "builtin:tiny" if which == "builtin" else llama
    h = load(path, seed=1, precision="bf16-mixed")
    info = call(op="info", model=h)
    assert info["precision"] == "bf16-mixed" and info["dtype"] == "float32"
    m = model_obj(h)
    assert all(p.dtype == torch.float32 for p in m.params.values())
    head = m.module.lm_head
    seen = []
    head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    call(op="backward", model=h, samples=SAMPLES, loss="sft")
    assert seen == [torch.bfloat16]  # compute under autocast, not float32
    assert all(p.grad.dtype == torch.float32 for p in m.params.values() if p.grad is not None)
    call(op="close", model=h)
    fp32 = _sft_losses(path)
    mixed = _sft_losses(path, precision="bf16-mixed")
    assert fp32 != mixed  # really another computation
    for a, b in zip(fp32, mixed):
        assert b == pytest.approx(a, rel=0.02), (fp32, mixed)


@pytest.mark.parametrize("which", ["builtin", "llama"])
def test_bf16_mixed_saves_float32_master_weights(which, llama, tmp_path):
    from safetensors import safe_open
    path = "builtin:tiny" if which == "builtin" else llama
    h = load(path, seed=1, lr=1e-3, precision="bf16-mixed")
    call(op="backward", model=h, samples=SAMPLES, loss="sft")
    call(op="step", model=h)
    files = call(op="save", model=h, dir=str(tmp_path / "ck"))["files"]
    meta = json.loads((tmp_path / "ck" / "engine.json").read_text())
    assert meta["precision"] == "bf16-mixed" and meta["dtype"] == "float32"
    weights = [tmp_path / "ck" / "model.safetensors"] if "model.safetensors" in files \
        else sorted((tmp_path / "ck" / "hf").glob("*.safetensors"))
    for f in weights + [tmp_path / "ck" / "optimizer.safetensors"]:
        with safe_open(str(f), framework="pt") as sf:
            dtypes = {sf.get_slice(k).get_dtype() for k in sf.keys()}
        assert dtypes == {"F32"}, (f, dtypes)
    # The checkpoint resumes into a float32 model too.
    b = load(path, seed=9, precision="fp32")
    call(op="restore", model=b, dir=str(tmp_path / "ck"))
    for k, p in model_obj(h).params.items():
        assert torch.equal(p, model_obj(b).params[k]), k


@pytest.mark.parametrize("which", ["builtin", "llama"])
def test_generation_under_bf16_mixed(which, llama):
    path = "builtin:tiny" if which == "builtin" else llama
    mixed = load(path, seed=2, precision="bf16-mixed")
    fp32 = load(path, seed=2)
    out = call(op="generate", model=mixed, prompts=["the cat", "a"], n=2, max_tokens=8,
               seed=4)["samples"]
    again = call(op="generate", model=mixed, prompts=["the cat", "a"], n=2, max_tokens=8,
                 seed=4)["samples"]
    assert out == again
    flat = [s for g in out for s in g]
    assert all(len(s["ids"]) == len(s["logprobs"]) > 0 for s in flat)
    # The recorded log-probs are those of the same weights at float32, to bf16 accuracy.
    ref = call(op="logprobs", model=fp32, samples=flat)["logprobs"]
    for s, r in zip(flat, ref):
        assert s["logprobs"] == pytest.approx(r, abs=0.05)


def test_precision_option_errors_before_loading():
    rep = call_raw(op="load", path="/no/such/model", precision="fp16-mixed", device="cpu",
                   threads=THREADS)
    assert rep["error"]["kind"] == "config"
    assert "fp16-mixed" in rep["error"]["message"] and "CUDA" in rep["error"]["message"]
    rep = call_raw(op="load", path="builtin:tiny", precision="bf16-mixed", dtype="bfloat16",
                   threads=THREADS)
    assert rep["error"]["kind"] == "config" and "'dtype'" in rep["error"]["message"]
    rep = call_raw(op="load", path="builtin:tiny", precision="fp8", threads=THREADS)
    assert rep["error"]["kind"] == "config" and "'precision'" in rep["error"]["message"]


def test_dtype_alone_keeps_its_meaning():
    for dtype, prec in (("float32", "fp32"), ("bfloat16", "bf16"), ("float64", "fp64")):
        h = load(dtype=dtype)
        info = call(op="info", model=h)
        assert (info["dtype"], info["precision"]) == (dtype, prec)
        call(op="close", model=h)
    h = load(precision="bf16")
    assert call(op="info", model=h)["dtype"] == "bfloat16"
    assert call(op="info", model=h)["precision"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16-mixed needs a CUDA device")
def test_fp16_mixed_on_cuda_scales_and_resumes(tmp_path):
    h = load(seed=1, lr=1e-3, precision="fp16-mixed", device="cuda")
    for _ in range(3):
        call(op="backward", model=h, samples=SAMPLES, loss="sft")
        st = call(op="step", model=h)
        assert st["loss_scale"] > 0 and isinstance(st["skipped"], bool)
    call(op="save", model=h, dir=str(tmp_path / "ck"))
    meta = json.loads((tmp_path / "ck" / "engine.json").read_text())
    assert meta["scaler"]["scale"] == st["loss_scale"]


def test_loss_scaling_steps_skips_on_overflow_and_resumes(monkeypatch, tmp_path):
    """fp16-mixed's GradScaler path, run on the CPU in float32 (the scaler logic does not
    depend on the device; the CUDA test above covers float16 itself)."""
    import rlengine.backend_torch as bt
    from rlengine.torch_precision import Precision
    scaled = Precision("fp16-mixed", torch.float32, "float32", None, "cpu", True)
    monkeypatch.setattr(bt, "resolve_precision", lambda *a: scaled)
    h = load(seed=1, lr=1e-3)
    monkeypatch.undo()
    ref = load(seed=1, lr=1e-3)
    for m in (h, ref):
        call(op="backward", model=m, samples=SAMPLES, loss="sft")
    st, st_ref = call(op="step", model=h, clip=1.0), call(op="step", model=ref, clip=1.0)
    assert st["skipped"] is False and st["loss_scale"] == 2.0 ** 16
    # Scaling by a power of two and unscaling before the norm changes nothing.
    assert st["grad_norm"] == pytest.approx(st_ref["grad_norm"], rel=1e-6)
    for k, p in model_obj(h).params.items():
        assert torch.allclose(p, model_obj(ref).params[k], atol=1e-7), k
    before = {k: p.detach().clone() for k, p in model_obj(h).params.items()}
    call(op="backward", model=h, samples=SAMPLES, loss="sft")
    next(iter(model_obj(h).params.values())).grad[0].fill_(float("inf"))  # an overflow
    st = call(op="step", model=h)
    assert st["skipped"] is True and st["version"] == 1 and st["loss_scale"] == 2.0 ** 15
    for k, p in model_obj(h).params.items():
        assert torch.equal(p, before[k]), k
    assert all(p.grad is None for p in model_obj(h).params.values())
    call(op="save", model=h, dir=str(tmp_path / "ck"))
    assert json.loads((tmp_path / "ck" / "engine.json").read_text())["scaler"]["scale"] == 2.0 ** 15
    monkeypatch.setattr(bt, "resolve_precision", lambda *a: scaled)
    b = load(seed=7, lr=1e-3)
    call(op="restore", model=b, dir=str(tmp_path / "ck"))
    assert model_obj(b).scaler.get_scale() == 2.0 ** 15


# ---- the LM head on completion positions ------------------------------------------------

def _full_logprobs(module, seqs) -> list[list[float]]:
    """Log-probs of each completion token from a plain full-logits forward pass."""
    out = []
    with torch.no_grad():
        for p, c in seqs:
            ids = torch.tensor([p + c])
            o = module(input_ids=ids) if hasattr(module, "config") else module(ids)
            logits = o.logits if hasattr(o, "logits") else o
            lp = torch.log_softmax(logits[0, len(p) - 1:-1].float(), -1)
            out.append(lp.gather(-1, torch.tensor(c)[:, None]).squeeze(-1).tolist())
    return out


def _make_gemma2(d):
    """A tiny Gemma2 with tied embeddings and final logit soft-capping, scaled so the
    cap bites (logits near +-cap)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    fast = make_tokenizer(d)
    cfg = Gemma2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, max_position_embeddings=128, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, final_logit_softcapping=2.0,
                       tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20.0)
    model.save_pretrained(d)


@pytest.mark.parametrize("which", ["builtin", "llama", "gemma2"])
def test_head_runs_on_completion_positions_only(which, llama, tmp_path):
    if which == "gemma2":
        path = str(tmp_path / "g2")
        _make_gemma2(tmp_path / "g2")
    else:
        path = "builtin:tiny" if which == "builtin" else llama
    h = load(path, seed=0)
    m = model_obj(h)
    rows = []
    m.module.lm_head.register_forward_hook(
        lambda mod, inp, out: rows.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))
    lp = call(op="logprobs", model=h, samples=SAMPLES)["logprobs"]
    seqs = m._tokenize(SAMPLES, "test")
    assert rows == [sum(len(c) for _, c in seqs)]  # not batch x length
    rows.clear()
    ref = _full_logprobs(m.module, seqs)
    assert rows == [len(p) + len(c) for p, c in seqs]  # the hook sees full passes
    for a, b in zip(lp, ref):
        assert a == pytest.approx(b, abs=1e-5)
    if which == "gemma2":
        # The cap is in play: without it these log-probs would be far off.
        with torch.no_grad():
            p, c = seqs[0]
            raw = m.module.lm_head(m.module.model(input_ids=torch.tensor([p + c]))
                                   .last_hidden_state)[0, len(p) - 1:-1]
            uncapped = torch.log_softmax(raw.float(), -1).gather(
                -1, torch.tensor(c)[:, None]).squeeze(-1)
        assert (uncapped - torch.tensor(ref[0])).abs().max() > 0.1


# ---- optimizer, entropy ----------------------------------------------------------------

def test_adamw_multi_tensor_kernel_matches_the_per_parameter_loop():
    h = load(seed=5, lr=1e-2, weight_decay=0.1)
    m = model_obj(h)
    assert m.opt.defaults["foreach"] is True
    start = {k: p.detach().clone() for k, p in m.params.items()}
    for _ in range(3):
        call(op="backward", model=h, samples=SAMPLES, advantages=ADV)
        call(op="step", model=h)
    # The same steps by torch's per-parameter reference implementation.
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    decay = [ref[k] for k, p in m.params.items() if p.dim() >= 2]
    no_decay = [ref[k] for k, p in m.params.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-2,
                            foreach=False)
    g = load(seed=5)
    mg = model_obj(g)
    for _ in range(3):
        with torch.no_grad():
            for k, p in mg.params.items():
                p.copy_(ref[k])
        call(op="backward", model=g, samples=SAMPLES, advantages=ADV)
        for k, p in mg.params.items():
            ref[k].grad = p.grad.clone()
        mg.opt.zero_grad(set_to_none=True)
        mg._reset_accum()
        opt.step()
    for k, p in m.params.items():
        assert (p - ref[k]).abs().max().item() < 1e-6, k


def test_entropy_only_when_asked(monkeypatch):
    import rlengine.backend_torch as bt
    h = load(seed=0)
    with_e = call(op="backward", model=h, samples=SAMPLES, advantages=ADV)
    st = call(op="step", model=h)
    assert with_e["entropy"] > 0 and st["entropy"] == pytest.approx(with_e["entropy"])
    calls = []
    real = bt.entropy_sum
    monkeypatch.setattr(bt, "entropy_sum", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = call(op="backward", model=h, samples=SAMPLES, advantages=ADV, entropy=False)
    assert b["entropy"] is None and calls == []
    assert call(op="step", model=h)["entropy"] is None
    # Chunked entropy equals the direct formula.
    logp = torch.log_softmax(torch.randn(37, 259, dtype=torch.float64), -1)
    direct = float(-(logp.exp() * logp).sum())
    assert bt.entropy_sum(logp, rows=5) == pytest.approx(direct, rel=1e-12)


# ---- threads ---------------------------------------------------------------------------

def test_each_model_keeps_its_thread_count_in_a_shared_process():
    a = load(threads=2)
    b = load(threads=1)
    call(op="info", model=b)
    assert call(op="info", model=a)["threads"] == 2
    call(op="backward", model=a, samples=SAMPLES, advantages=ADV)
    assert torch.get_num_threads() == 2
    assert call(op="info", model=b)["threads"] == 1
    assert torch.get_num_threads() == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_default_threads_follow_the_cpu_affinity():
    """A worker allowed one core (taskset, a CPU set) runs one torch thread by default,
    not one per machine core."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    code = ("import json, os\nos.sched_setaffinity(0, {%d})\n"
            "from rlengine import host\n"
            "r = json.loads(host.call(json.dumps({'op': 'load', 'path': 'builtin:tiny'})))\n"
            "print(json.dumps(r['info']))\n" % cpu)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(SCRIPTS)), timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["threads"] == 1 and info["cores"] == 1


def test_cgroup_quota_caps_the_cores(tmp_path):
    from rlengine.cores import cgroup_limit
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "self").write_text("0::/a/b\n")
    assert cgroup_limit(str(tmp_path), str(tmp_path / "self")) == 1.5
    (tmp_path / "cpu,cpuacct" / "x").mkdir(parents=True)
    (tmp_path / "cpu,cpuacct" / "x" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu,cpuacct" / "x" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "self1").write_text("4:cpu,cpuacct:/x\n3:memory:/y\n")
    assert cgroup_limit(str(tmp_path), str(tmp_path / "self1")) == 0.5
    (tmp_path / "self2").write_text("0::/\n")
    assert cgroup_limit(str(tmp_path / "none"), str(tmp_path / "self2")) is None
