"""The worker transport: same answers as the embedded entry point, clean reply stream."""

from __future__ import annotations

import json
import os
import sys

from conftest import THREADS, Worker, call, load, strip_ids

LOAD = dict(path="builtin:tiny", seed=7, lr=1e-3, reference=True, threads=THREADS)


def _script(req_for):
    """A short run: generate, ppo backward with KL, step, generate again."""
    out = []
    out.append(req_for(op="generate", prompts=["one", "two two"], n=2, max_tokens=10, seed=3))
    samples = [s for g in out[-1]["samples"] for s in g]
    adv = [0.5, -0.5, 1.0, None]
    out.append(req_for(op="backward", samples=samples, advantages=adv, loss="ppo", kl=0.1))
    out.append(req_for(op="step", clip=1.0))
    out.append(req_for(op="generate", prompts=["one"], n=3, max_tokens=10, top_p=0.9, seed=4))
    out.append(req_for(op="logprobs", samples=samples, reference=True))
    return [strip_ids(r) for r in out]


def test_worker_and_embedded_give_identical_results(worker):
    h = load(**{k: v for k, v in LOAD.items() if k != "path"})
    embedded = _script(lambda **r: call(model=h, **r))
    wh = worker.call(op="load", **LOAD)["model"]
    remote = _script(lambda **r: worker.call(model=wh, **r))
    # Bitwise: the JSON floats (shortest repr of the doubles) are the same strings.
    assert json.dumps(remote) == json.dumps(embedded)
    assert worker.close() == 0
    call(op="close", model=h)


def test_exported_weights_give_identical_logprobs_in_worker(worker):
    trainer = load(seed=1, lr=1e-2)
    samples = [s for g in call(op="generate", model=trainer, prompts=["abc", "de"], n=2,
                                max_tokens=8, seed=0)["samples"] for s in g]
    call(op="backward", model=trainer, samples=samples, advantages=[1, -1, 0.5, 2])
    call(op="step", model=trainer)
    exp = call(op="export", model=trainer)
    gen = worker.call(op="load", path="builtin:tiny", seed=99, threads=THREADS)["model"]
    before = worker.call(op="logprobs", model=gen, samples=samples)["logprobs"]
    rep = worker.call(op="import", model=gen, path=exp["path"], version=exp["version"],
                      remove=True)
    assert rep["version"] == 1 and not os.path.exists(exp["path"])
    want = call(op="logprobs", model=trainer, samples=samples)["logprobs"]
    got = worker.call(op="logprobs", model=gen, samples=samples)["logprobs"]
    assert got == want and before != want
    # Samples generated in the worker now carry the synced version and match the trainer.
    g_w = worker.call(op="generate", model=gen, prompts=["abc"], max_tokens=6, seed=5)
    g_t = call(op="generate", model=trainer, prompts=["abc"], max_tokens=6, seed=5)
    assert strip_ids(g_w) == strip_ids(g_t) and g_w["samples"][0][0]["version"] == 1
    call(op="close", model=trainer)


def test_bad_requests_get_typed_errors_and_the_handle_survives(worker, tmp_path):
    h = worker.call(op="load", path="builtin:tiny", seed=0, threads=THREADS)["model"]
    rep = worker.send_raw(b"{this is not json")
    assert rep["ok"] is False and rep["error"]["kind"] == "config" and rep["id"] is None
    rep = worker.send_raw(b"\xff\xfe not utf-8")
    assert rep["error"]["kind"] == "config"
    rep = worker.call_raw(op="generate", model=h, prompts=["x"], n=0)
    assert rep["error"]["message"] == "generate: 'n' must be an integer >= 1, got 0"
    rep = worker.call_raw(op="generate", model=h, prompts=["x"], stop_words=["a"])
    assert rep["error"]["kind"] == "config" and "'stop_words'" in rep["error"]["message"]
    rep = worker.call_raw(op="step", model=h)
    assert rep["error"]["kind"] == "state"
    rep = worker.call_raw(op="info", model=h + 5)
    assert rep["error"]["kind"] == "state"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    rep = worker.call_raw(op="import", model=h, path=str(bad))
    assert rep["error"]["kind"] == "config" and str(bad) in rep["error"]["message"]
    bad.write_bytes(b"\xff" * 64)
    rep = worker.call_raw(op="import", model=h, path=str(bad))
    assert rep["error"]["kind"] == "config"
    # A well-formed file of another model.
    other = load(path="builtin:tiny", seed=0, dtype="float64")
    call(op="export", model=other, path=str(tmp_path / "ok.safetensors"))
    call(op="close", model=other)
    rep = worker.call_raw(op="import", model=h, path=str(tmp_path / "ok.safetensors"))
    assert rep["ok"], rep  # same names and shapes; float64 is cast to the model's dtype
    rep = worker.call_raw(op="load", path=str(tmp_path / "missing-dir"))
    assert rep["error"]["kind"] == "config" and "missing-dir" in rep["error"]["message"]
    assert worker.call(op="generate", model=h, prompts=["fine"], max_tokens=3)["samples"]
    assert worker.call(op="info", model=h)["params"] == 855040
    worker.call(op="close", model=h)
    assert worker.call_raw(op="info", model=h)["error"]["kind"] == "state"
    assert worker.close() == 0


def test_prints_never_reach_the_reply_stream():
    """Python- and C-level writes to stdout inside the worker land on stderr."""
    code = ("import os, sys, rlengine.dispatch as d;"
            "orig = d.dispatch\n"
            "def noisy(req):\n"
            "    print('python noise'); os.write(1, b'c-level noise\\n')\n"
            "    return orig(req)\n"
            "d.dispatch = noisy\n"
            "import rlengine.host as h; h.dispatch = noisy\n"
            "from rlengine.worker import main; sys.exit(main())\n")
    w = Worker([sys.executable, "-c", code])
    assert w.call(op="ping")["ok"]
    h = w.call(op="load", path="builtin:tiny", threads=THREADS)["model"]
    assert w.call(op="generate", model=h, prompts=["x"], max_tokens=2)["samples"]
    assert w.close() == 0  # close() also checks nothing else came out on stdout


def test_worker_exits_zero_on_eof_and_cleans_exports():
    w = Worker()
    h = w.call(op="load", path="builtin:tiny", threads=THREADS)["model"]
    path = w.call(op="export", model=h)["path"]
    assert os.path.exists(path)
    assert w.close() == 0
    assert not os.path.exists(path)  # default-path exports die with their model
