"""generate: determinism, sampling options, stop strings, the KV cache."""

from __future__ import annotations

import math

import pytest
from conftest import call, load

PROMPTS = ["The cat", "A much longer prompt than the first one:", "x"]


@pytest.fixture(scope="module")
def h():
    handle = load(seed=3)
    yield handle
    call(op="close", model=handle)


def gen(h, **kw):
    kw.setdefault("prompts", PROMPTS)
    return call(op="generate", model=h, **kw)["samples"]


def test_shape_and_fields(h):
    out = gen(h, n=3, max_tokens=5, seed=1)
    assert len(out) == len(PROMPTS) and all(len(g) == 3 for g in out)
    for prompt, group in zip(PROMPTS, out, strict=True):
        for s in group:
            assert set(s) == {"text", "prompt_ids", "ids", "logprobs", "finish", "version"}
            assert s["prompt_ids"] == [256, *prompt.encode()]
            assert 1 <= len(s["ids"]) <= 5 and len(s["logprobs"]) == len(s["ids"])
            assert all(lp <= 0 and math.isfinite(lp) for lp in s["logprobs"])
            assert s["finish"] in ("stop", "length") and s["version"] == 0
            if s["finish"] == "length":
                assert len(s["ids"]) == 5
            else:
                assert s["ids"][-1] == 257  # EOS


def test_same_seed_same_samples_different_seed_differs(h):
    a = gen(h, n=2, max_tokens=12, seed=11)
    b = gen(h, n=2, max_tokens=12, seed=11)
    c = gen(h, n=2, max_tokens=12, seed=12)
    assert a == b
    assert a != c
    # The n samples of one prompt are different draws, not copies.
    assert a[0][0]["ids"] != a[0][1]["ids"]


def test_unseeded_generate_advances_the_model_generator(h):
    assert gen(h, max_tokens=8) != gen(h, max_tokens=8)


def test_greedy_is_deterministic_and_matches_top_k_1(h):
    g1 = gen(h, n=2, max_tokens=10, temperature=0, seed=1)
    g2 = gen(h, n=2, max_tokens=10, temperature=0, seed=2)
    assert g1 == g2
    assert all(grp[0]["ids"] == grp[1]["ids"] for grp in g1)
    k1 = gen(h, n=1, max_tokens=10, top_k=1, seed=5)
    assert [grp[0]["ids"] for grp in k1] == [grp[0]["ids"] for grp in g1]
    # A sampling distribution of one token: its log-prob is 0.
    assert all(lp == 0.0 for grp in k1 for lp in grp[0]["logprobs"])
    p = gen(h, n=1, max_tokens=10, top_p=1e-6, seed=5)
    assert [grp[0]["ids"] for grp in p] == [grp[0]["ids"] for grp in g1]


def test_kv_cache_matches_full_forward(h):
    """Logprobs recorded while decoding with the cache (left-padded batch) equal those
    of a full forward pass over the finished sequences (right-padded batch)."""
    for kw in (dict(temperature=0), dict(temperature=0.7), dict(temperature=1.0)):
        out = [s for grp in gen(h, n=2, max_tokens=16, seed=4, **kw) for s in grp]
        t = kw["temperature"] or 1.0
        lp = call(op="logprobs", model=h, samples=out, temperature=t)["logprobs"]
        for s, ref in zip(out, lp, strict=True):
            assert s["logprobs"] == pytest.approx(ref, abs=2e-5)


def test_top_k_top_p_restrict_the_distribution(h):
    """Sampled tokens lie in the top-k / top-p set of a full forward pass, and the
    recorded log-prob is that of the renormalised (filtered) distribution."""
    import torch
    from conftest import model_obj
    net = model_obj(h).module
    for kw in (dict(top_k=3), dict(top_p=0.3), dict(top_k=5, top_p=0.5, temperature=0.8)):
        out = [s for grp in gen(h, n=4, max_tokens=6, seed=9, **kw) for s in grp]
        assert out == [s for grp in gen(h, n=4, max_tokens=6, seed=9, **kw) for s in grp]
        t = kw.get("temperature", 1.0)
        for s in out:
            seq = torch.tensor([s["prompt_ids"] + s["ids"]])
            with torch.no_grad():
                logits = net(seq)[0, len(s["prompt_ids"]) - 1:-1] / t
            for j, tok in enumerate(s["ids"]):
                x = logits[j]
                keep = torch.ones_like(x, dtype=torch.bool)
                if "top_k" in kw:
                    keep &= x >= x.topk(kw["top_k"]).values[-1]
                if "top_p" in kw:
                    p = torch.where(keep, x, -torch.inf).softmax(-1)
                    order = p.argsort(descending=True)
                    before = p[order].cumsum(0) - p[order]
                    kept = torch.zeros_like(keep)
                    kept[order[before < kw["top_p"]]] = True
                    keep &= kept
                assert keep[tok], (kw, j)
                expect = torch.where(keep, x, -torch.inf).log_softmax(-1)[tok]
                assert s["logprobs"][j] == pytest.approx(float(expect), abs=2e-5)


def test_stop_strings_and_finish():
    h = load(seed=0, lr=3e-3)
    data = [{"prompt": "say:", "text": " abc;def"}] * 4
    for _ in range(40):
        call(op="backward", model=h, samples=data, loss="sft")
        call(op="step", model=h)
    s = call(op="generate", model=h, prompts=["say:"], temperature=0, max_tokens=20)
    s = s["samples"][0][0]
    assert s["text"] == " abc;def" and s["finish"] == "stop" and s["ids"][-1] == 257
    s = call(op="generate", model=h, prompts=["say:"], temperature=0, max_tokens=20,
             stop=[";", "zz"])["samples"][0][0]
    # The text ends before the stop string; ids keep the token that completed it.
    assert s["text"] == " abc" and s["finish"] == "stop"
    assert bytes(s["ids"]) == b" abc;" and len(s["logprobs"]) == 5
    s = call(op="generate", model=h, prompts=["say:"], temperature=0, max_tokens=3,
             stop="c;d")["samples"][0][0]
    assert s["text"] == " ab" and s["finish"] == "length"
    s = call(op="generate", model=h, prompts=["say:"], temperature=0, max_tokens=20,
             stop="c;d")["samples"][0][0]
    assert s["text"] == " ab" and s["finish"] == "stop" and bytes(s["ids"]) == b" abc;d"
    call(op="close", model=h)
