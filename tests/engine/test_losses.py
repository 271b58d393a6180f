"""Losses against hand-written formulas, and exact gradient accumulation.

The expected values are computed here from an independent forward pass: each sample
alone through the bare torch module (no batching, padding or masking from the engine),
then the formula written out per sample and per token.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EngineFailed, call, load, model_obj

# Fixed samples: byte-level ids (BOS=256, EOS=257), different prompt and completion lengths.
SAMPLES = [
    {"prompt_ids": [256, *b"abc"], "ids": [*b" xyz", 257]},
    {"prompt_ids": [256, *b"hello world"], "ids": [*b"!!"]},
    {"prompt_ids": [256], "ids": [*b"just a completion", 257]},
    {"prompt_ids": [256, *b"q"], "ids": [*b"a"]},
]
ADV = [1.5, -0.75, 0.4, -2.0]


@pytest.fixture(scope="module")
def h():
    """A float64 policy that has moved away from its reference (so KL is non-zero)."""
    handle = load(dtype="float64", seed=1, reference=True, lr=1e-2)
    call(op="backward", model=handle, loss="sft",
         samples=[{"prompt": "train", "text": " me"}, {"prompt": "abc", "text": " def"}])
    call(op="step", model=handle)
    yield handle
    call(op="close", model=handle)


def token_logprobs(module, s) -> torch.Tensor:
    seq = torch.tensor([s["prompt_ids"] + s["ids"]])
    logp = torch.log_softmax(module(seq)[0].double(), dim=-1)
    p = len(s["prompt_ids"])
    return torch.stack([logp[p - 1 + j, t] for j, t in enumerate(s["ids"])])


def expected(h, loss, adv=None, kl=0.0, est="k3", agg="token-mean", scale=1.0,
             old=None, clip=(0.2, 0.2), total_tokens=None, total_samples=None):
    """The loss by the book, with autograd through the bare module."""
    m = model_obj(h)
    m.module.zero_grad(set_to_none=True)
    per_seq, ntok, nseq, kls = [], 0, 0, []
    total = 0.0
    for i, s in enumerate(SAMPLES):
        if adv is not None and adv[i] is None:
            continue
        lp = token_logprobs(m.module, s)
        if loss == "sft":
            tl = -lp
        elif loss == "pg":
            tl = -adv[i] * lp
        else:
            ratio = torch.exp(lp - torch.tensor(old[i], dtype=torch.float64))
            a = adv[i]
            unclipped = -a * ratio
            clipped = -a * torch.clamp(ratio, 1 - clip[0], 1 + clip[1])
            tl = torch.where(clipped > unclipped, clipped, unclipped)
        if kl:
            with torch.no_grad():
                ref = token_logprobs(m.ref, s)
            k = lp - ref if est == "k1" else torch.exp(ref - lp) - (ref - lp) - 1
            kls.append(k.detach())
            tl = tl + kl * k
        per_seq.append(tl)
        ntok += len(s["ids"])
        nseq += 1
    if agg == "token-mean":
        total = sum(t.sum() for t in per_seq) / (total_tokens or ntok)
    else:
        total = sum(t.mean() for t in per_seq) / (total_samples or nseq)
    total = total * scale
    total.backward()
    grads = {k: p.grad.clone() for k, p in m.params.items() if p.grad is not None}
    m.module.zero_grad(set_to_none=True)
    kl_mean = float(torch.cat(kls).mean()) if kls else None
    return float(total.detach()), grads, ntok, kl_mean


def engine(h, **kw):
    m = model_obj(h)
    m._discard_grads()
    rep = call(op="backward", model=h, samples=SAMPLES, **kw)
    grads = {k: p.grad.clone() for k, p in m.params.items() if p.grad is not None}
    m._discard_grads()
    return rep, grads


def check(h, engine_kw, expect_kw):
    rep, g_engine = engine(h, **engine_kw)
    loss, g_expect, ntok, kl_mean = expected(h, **expect_kw)
    assert rep["loss"] == pytest.approx(loss, rel=1e-12, abs=1e-15)
    assert rep["tokens"] == ntok
    if kl_mean is not None:
        assert rep["kl"] == pytest.approx(kl_mean, rel=1e-10, abs=1e-15)
    assert set(g_engine) == set(g_expect)
    for k in g_expect:
        torch.testing.assert_close(g_engine[k], g_expect[k], rtol=1e-10, atol=1e-14)
    return rep


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean"])
def test_sft(h, agg):
    check(h, dict(loss="sft", agg=agg), dict(loss="sft", agg=agg))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean"])
def test_pg(h, agg):
    check(h, dict(loss="pg", advantages=ADV, agg=agg, scale=0.3),
          dict(loss="pg", adv=ADV, agg=agg, scale=0.3))


def test_pg_null_advantage_contributes_nothing(h):
    adv = [1.5, None, 0.4, None]
    rep = check(h, dict(loss="pg", advantages=adv), dict(loss="pg", adv=adv))
    assert rep["samples"] == 2
    rep = call(op="backward", model=h, samples=SAMPLES, advantages=[None] * 4)
    assert rep["loss"] == 0.0 and rep["tokens"] == 0 and rep["samples"] == 0
    assert all(p.grad is None for p in model_obj(h).params.values())
    model_obj(h)._discard_grads()


def _grads(h) -> dict:
    g = {k: p.grad.clone() for k, p in model_obj(h).params.items() if p.grad is not None}
    model_obj(h)._discard_grads()
    return g


def test_length_cut_text_samples_get_no_eos_and_an_empty_one_trains_nothing(h):
    """A text sample cut at max_tokens did not end there: no EOS is appended (PROTOCOL.md);
    one cut before its first token has no completion token, so it adds nothing to the
    loss, the gradient or the token count, and a batch of only such samples is no error."""
    cut = {"prompt": "sort 3 2 1 =", "text": " 1 2 3", "finish": "length"}
    ended = {"prompt": "sort 3 2 1 =", "text": " 1 2 3", "finish": "stop"}
    plain = {"prompt": "sort 3 2 1 =", "text": " 1 2 3"}
    empty = {"prompt": "sort 3 2 1 =", "text": "", "finish": "length"}
    lp = call(op="logprobs", model=h, samples=[cut, ended, plain, empty])["logprobs"]
    assert [len(x) for x in lp] == [6, 7, 7, 0]
    assert lp[0] == lp[1][:6]
    for agg in ("token-mean", "seq-mean"):
        norm = {"total_tokens": 6} if agg == "token-mean" else {"total_samples": 1}
        alone = call(op="backward", model=h, samples=[cut], advantages=[1.0], agg=agg, **norm)
        g_alone = _grads(h)
        both = call(op="backward", model=h, samples=[empty, cut], advantages=[1.0, 1.0],
                    agg=agg, **norm)
        g_both = _grads(h)
        assert both["tokens"] == alone["tokens"] == 6 and both["samples"] == 1
        assert both["loss"] == alone["loss"] and math.isfinite(both["loss"])
        assert set(g_both) == set(g_alone)
        for k in g_alone:
            torch.testing.assert_close(g_both[k], g_alone[k], rtol=0, atol=0)
    # ppo: the empty one records no log-probs
    rep = call(op="backward", model=h, loss="ppo", advantages=[1.0, 1.0],
               samples=[{**empty, "logprobs": []}, {**cut, "logprobs": lp[0]}])
    assert rep["tokens"] == 6 and rep["samples"] == 1
    model_obj(h)._discard_grads()
    # a micro-batch of nothing but empty samples: its token total is 0 and that is fine
    rep = call(op="backward", model=h, samples=[empty], advantages=[1.0], total_tokens=0)
    assert rep["loss"] == 0.0 and rep["tokens"] == 0 and rep["samples"] == 0
    assert all(p.grad is None for p in model_obj(h).params.values())
    # a total below this micro-batch's own tokens is a caller's mistake, not a loss scale
    with pytest.raises(EngineFailed, match="total_tokens"):
        call(op="backward", model=h, samples=[cut], advantages=[1.0], total_tokens=0)
    assert all(p.grad is None for p in model_obj(h).params.values())
    with pytest.raises(EngineFailed, match=r"samples\[1\]\.finish"):
        call(op="logprobs", model=h, samples=[{**cut, "finish": 3}])


@pytest.mark.parametrize("est", ["k1", "k3"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean"])
def test_kl_estimators(h, est, agg):
    rep = check(h, dict(loss="pg", advantages=ADV, kl=0.5, kl_estimator=est, agg=agg),
                dict(loss="pg", adv=ADV, kl=0.5, est=est, agg=agg))
    assert rep["kl"] != 0.0
    if est == "k3":
        assert rep["kl"] > 0  # k3 is non-negative per token


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean"])
def test_ppo_clipped_ratio(h, agg):
    m = model_obj(h)
    with torch.no_grad():
        cur = [token_logprobs(m.module, s) for s in SAMPLES]
    # Recorded log-probs shifted so ratios land below, inside and above [0.8, 1.28].
    shifts = [0.5, -0.5, 0.05, -0.02]
    old = [[float(x) + shifts[i] * (1 if j % 2 else -1) for j, x in enumerate(c)]
           for i, c in enumerate(cur)]
    samples = [dict(s, logprobs=o) for s, o in zip(SAMPLES, old, strict=True)]
    kw = dict(loss="ppo", advantages=ADV, clip_low=0.2, clip_high=0.28, agg=agg, kl=0.1)
    m._discard_grads()
    rep = call(op="backward", model=h, samples=samples, **kw)
    g_engine = {k: p.grad.clone() for k, p in m.params.items() if p.grad is not None}
    m._discard_grads()
    loss, g_expect, _, _ = expected(h, "ppo", adv=ADV, old=old, clip=(0.2, 0.28), agg=agg,
                                    kl=0.1)
    assert rep["loss"] == pytest.approx(loss, rel=1e-12)
    for k in g_expect:
        torch.testing.assert_close(g_engine[k], g_expect[k], rtol=1e-10, atol=1e-14)
    # Count the active clips by hand: clipped objective strictly larger.
    n_clip = n = 0
    for i, c in enumerate(cur):
        r = torch.exp(c - torch.tensor(old[i], dtype=torch.float64))
        a = ADV[i]
        n_clip += int(((-a * r.clamp(0.8, 1.28)) > (-a * r)).sum())
        n += len(c)
    assert 0 < n_clip < n
    assert rep["clip_frac"] == pytest.approx(n_clip / n)


def test_ppo_on_policy_equals_pg(h):
    """At ratio 1 the clipped objective's gradient is the policy gradient."""
    lp = call(op="logprobs", model=h, samples=SAMPLES)["logprobs"]
    samples = [dict(s, logprobs=x) for s, x in zip(SAMPLES, lp, strict=True)]
    m = model_obj(h)
    m._discard_grads()
    rep_ppo = call(op="backward", model=h, samples=samples, loss="ppo", advantages=ADV)
    g_ppo = {k: p.grad.clone() for k, p in m.params.items()}
    m._discard_grads()
    call(op="backward", model=h, samples=SAMPLES, loss="pg", advantages=ADV)
    for k, p in m.params.items():
        torch.testing.assert_close(p.grad, g_ppo[k], rtol=1e-9, atol=1e-13)
    m._discard_grads()
    assert rep_ppo["clip_frac"] == 0.0


def test_global_normalisers(h):
    check(h, dict(loss="pg", advantages=ADV, total_tokens=100),
          dict(loss="pg", adv=ADV, total_tokens=100))
    check(h, dict(loss="pg", advantages=ADV, agg="seq-mean", total_samples=10),
          dict(loss="pg", adv=ADV, agg="seq-mean", total_samples=10))


def test_temperature_scales_logits(h):
    samples = [{"prompt_ids": s["prompt_ids"], "ids": s["ids"]} for s in SAMPLES]
    lp = call(op="logprobs", model=h, samples=samples, temperature=0.5)["logprobs"]
    m = model_obj(h)
    with torch.no_grad():
        for s, got in zip(samples, lp, strict=True):
            seq = torch.tensor([s["prompt_ids"] + s["ids"]])
            logp = torch.log_softmax(m.module(seq)[0] / 0.5, -1)
            p = len(s["prompt_ids"])
            want = [float(logp[p - 1 + j, t]) for j, t in enumerate(s["ids"])]
            assert got == pytest.approx(want, rel=1e-12)


def test_nonfinite_loss_is_refused_and_handle_survives(h):
    lp = call(op="logprobs", model=h, samples=SAMPLES)["logprobs"]
    samples = [dict(s, logprobs=[x - 1e4 for x in lps])
               for s, lps in zip(SAMPLES, lp, strict=True)]
    from conftest import call_raw
    rep = call_raw(id=1, op="backward", model=h, samples=samples, loss="ppo",
                   advantages=[-1.0] * 4)
    assert rep["ok"] is False and rep["error"]["kind"] == "nonfinite"
    assert all(p.grad is None for p in model_obj(h).params.values())
    assert call(op="backward", model=h, samples=SAMPLES, loss="sft")["tokens"] > 0
    model_obj(h)._discard_grads()


# ---- gradient accumulation ----------------------------------------------------------

def _batch(n=16):
    out, adv = [], []
    for i in range(n):
        out.append({"prompt_ids": [256, *f"prompt {i}".encode()],
                    "ids": [*("x" * (1 + i % 5) + f" answer {i * 7}").encode(), 257]})
        adv.append(None if i % 7 == 3 else (i % 5) - 2.0)
    return out, adv


def _params(h):
    return {k: p.detach().clone() for k, p in model_obj(h).params.items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
def test_gradient_accumulation_is_exact(dtype, agg):
    samples, adv = _batch()
    opts = dict(dtype=dtype, seed=5, lr=1e-3, weight_decay=0.01, reference=True)
    kw = dict(loss="pg", kl=0.05, agg=agg)
    contributing = [i for i, a in enumerate(adv) if a is not None]
    whole = load(**opts)
    mb = load(**opts)
    # One step so the reference differs and Adam has a history (a first Adam step
    # normalises the update and would hide gradient errors).
    for handle in (whole, mb):
        call(op="backward", model=handle, samples=samples[:4], loss="sft")
        call(op="step", model=handle)
    if agg == "token-mean":
        # With uneven micro-batches a per-micro-batch mean is not the batch mean: the
        # global normaliser makes it exact.
        norm = {"total_tokens": sum(len(samples[i]["ids"]) for i in contributing)}
        scale = 1.0
    else:
        # Equal micro-batches by contributing samples: pass the global count too.
        norm = {"total_samples": len(contributing)}
        scale = 1.0
    ref = call(op="backward", model=whole, samples=samples, advantages=adv, **kw, **norm)
    st_whole = call(op="step", model=whole, clip=1.0)
    losses = []
    for j in range(4):
        sl = slice(4 * j, 4 * j + 4)
        r = call(op="backward", model=mb, samples=samples[sl], advantages=adv[sl],
                 scale=scale, **kw, **norm)
        losses.append(r["loss"])
    st_mb = call(op="step", model=mb, clip=1.0)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    assert st_mb["loss"] == pytest.approx(ref["loss"], rel=rtol)
    assert st_mb["grad_norm"] == pytest.approx(st_whole["grad_norm"], rel=rtol)
    assert st_mb["tokens"] == st_whole["tokens"] and st_mb["samples"] == st_whole["samples"]
    pw, pm = _params(whole), _params(mb)
    for k in pw:
        rel = float((pw[k] - pm[k]).norm() / pw[k].norm())
        assert rel <= rtol, (k, rel)
    call(op="close", model=whole)
    call(op="close", model=mb)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    # Elementwise relative error is meaningless where a component is a near-cancelling
    # sum (its rounding error is relative to the summands), so the absolute tolerance is
    # relative to the tensor's scale.
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_scale_quarter_equals_whole_batch_mean():
    """The issue's recipe: four equal micro-batches with scale=1/4 (seq-mean, no
    nulls) give the whole-batch gradients and step, exactly up to float64 rounding."""
    samples, _ = _batch()
    adv = [float(i % 5) - 2.0 for i in range(16)]
    opts = dict(dtype="float64", seed=6, lr=1e-3)
    whole, mb = load(**opts), load(**opts)
    call(op="backward", model=whole, samples=samples, advantages=adv, agg="seq-mean")
    for j in range(4):
        sl = slice(4 * j, 4 * j + 4)
        call(op="backward", model=mb, samples=samples[sl], advantages=adv[sl],
             agg="seq-mean", scale=0.25)
    gw = {k: p.grad.clone() for k, p in model_obj(whole).params.items()}
    for k, p in model_obj(mb).params.items():
        _close(p.grad, gw[k], 1e-12)
    call(op="step", model=whole)
    call(op="step", model=mb)
    pw, pm = _params(whole), _params(mb)
    for k in pw:
        _close(pm[k], pw[k], 1e-12)
    call(op="close", model=whole)
    call(op="close", model=mb)


def test_schedule_and_clip():
    h = load(seed=0, lr=0.1, schedule="cosine", warmup=2, total_steps=6, min_lr_ratio=0.1)
    s = [{"prompt": "a", "text": "b"}]
    lrs = []
    for _ in range(8):
        call(op="backward", model=h, samples=s, loss="sft")
        lrs.append(call(op="step", model=h, clip=1e-3)["lr"])
    want = [0.05, 0.1]
    for k in range(2, 8):
        prog = min(1.0, (k - 2) / 4)
        want.append(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))))
    assert lrs == pytest.approx(want, rel=1e-12)
    call(op="backward", model=h, samples=s, loss="sft")
    assert call(op="step", model=h, lr=0.5)["lr"] == 0.5
    call(op="close", model=h)
    h = load(seed=0, lr=1.0, schedule="linear", total_steps=4)
    lrs = []
    for _ in range(5):
        call(op="backward", model=h, samples=s, loss="sft")
        lrs.append(call(op="step", model=h)["lr"])
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    call(op="close", model=h)


def test_clip_scales_gradient_to_max_norm():
    h = load(seed=0, dtype="float64", lr=1e-3)
    m = model_obj(h)
    call(op="backward", model=h, samples=SAMPLES, loss="sft")
    raw = torch.sqrt(sum((p.grad ** 2).sum() for p in m.params.values()))
    before = _params(h)
    grads = {k: p.grad.clone() for k, p in m.params.items()}
    st = call(op="step", model=h, clip=0.01)
    assert st["grad_norm"] == pytest.approx(float(raw), rel=1e-12)
    # First AdamW step with bias correction: update = lr * g / (|g| + eps'), where the
    # clipped g differs from the raw g only by a scale, so check direction and size.
    c = 0.01 / (float(raw) + 1e-6)
    for k, p in m.params.items():
        g = grads[k] * c
        upd = 1e-3 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(before[k] - p.detach(), upd, rtol=1e-9, atol=1e-15)
    call(op="close", model=h)
