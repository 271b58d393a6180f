"""Request validation, error replies and the torch-free layers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SCRIPTS, call, call_raw, load

from rlengine import host


def err(rep: dict) -> tuple[str, str]:
    assert rep["ok"] is False, rep
    e = rep["error"]
    assert set(e) == {"kind", "message", "traceback"}
    return e["kind"], e["message"]


def test_ping_echoes_id():
    rep = call(id=7, op="ping")
    assert rep["id"] == 7 and rep["ok"] is True and isinstance(rep["pid"], int)
    assert rep["version"]


def test_bad_json_and_envelope():
    rep = json.loads(host.call("{not json"))
    assert err(rep)[0] == "config" and rep["id"] is None
    assert err(json.loads(host.call("[1, 2]"))) == ("config", "request must be a JSON object")
    kind, msg = err(call_raw(id=1, op="generat"))
    assert kind == "config" and "unknown op 'generat'" in msg and "generate" in msg
    kind, msg = err(call_raw(id=1))
    assert kind == "config" and "'op'" in msg


def test_host_call_never_raises_on_odd_input():
    for text in ["", "null", "1e400", '"str"', "\udcff", '{"op": "ping", "id": [1]}']:
        rep = json.loads(host.call(text))
        assert "ok" in rep


def test_load_validation_names_the_field():
    kind, msg = err(call_raw(id=1, op="load", path="builtin:tiny", lr="big"))
    assert kind == "config" and msg == "load: 'lr' must be a number, got a string"
    kind, msg = err(call_raw(id=1, op="load", path="builtin:tiny", dtyp="float64"))
    assert kind == "config" and "unknown field 'dtyp'" in msg and "did you mean 'dtype'" in msg
    kind, msg = err(call_raw(id=1, op="load"))
    assert kind == "config" and "missing required field 'path'" in msg
    kind, msg = err(call_raw(id=1, op="load", path="builtin:huge"))
    assert kind == "config" and "builtin:huge" in msg
    kind, msg = err(call_raw(id=1, op="load", path="/nonexistent/model"))
    assert kind == "config" and "/nonexistent/model" in msg and "does not exist" in msg
    kind, msg = err(call_raw(id=1, op="load", path="builtin:tiny", schedule="cosine"))
    assert kind == "config" and "total_steps" in msg
    kind, msg = err(call_raw(id=1, op="load", path="builtin:tiny", betas=[0.9, 1.5]))
    assert kind == "config" and "betas[2]" in msg


def test_model_op_validation_and_handle_survives():
    h = load(seed=0)
    cases = [
        (dict(op="generate", prompts=[]), "'prompts' must not be empty"),
        (dict(op="generate", prompts=["a"], n=0), "generate: 'n' must be an integer >= 1, got 0"),
        (dict(op="generate", prompts=["a", 3]), "'prompts[2]' must be a string"),
        (dict(op="generate", prompts=["a"], temperature=True), "'temperature' must be a number"),
        (dict(op="generate", prompts=["a"], top_p=0), "'top_p' must be > 0.0"),
        (dict(op="generate", prompts=["a"], max_tokens=1000), "context of 256"),
        (dict(op="backward", samples=[{"prompt": "a", "text": "b"}], loss="pg"),
         "loss 'pg' needs 'advantages'"),
        (dict(op="backward", samples=[{"prompt": "a", "text": "b"}], advantages=[1, 2]),
         "'advantages' has 2 entries for 1 samples"),
        (dict(op="backward", samples=[{"prompt": "a", "text": "b"}], loss="sft",
              advantages=[1]), "not used by loss 'sft'"),
        (dict(op="backward", samples=[{"prompt_ids": [256], "ids": [1]}], loss="ppo",
              advantages=[1]), "samples[1].logprobs"),
        (dict(op="backward", samples=[{"prompt_ids": [256], "ids": [999]}], loss="sft"),
         "token id 999"),
        (dict(op="backward", loss="ppo", advantages=[1],
              samples=[{"prompt_ids": [256], "ids": [1, 2], "logprobs": [-1.0]}]),
         "has 1 entries for 2 completion tokens"),
        (dict(op="backward", samples=[{"text": "b"}], loss="sft"), "samples[1]"),
        (dict(op="backward", samples=[{"prompt": "a", "text": "b"}], loss="sft", kl=0.1),
         "needs a reference model"),
        (dict(op="step"), "no backward since the last step"),
        (dict(op="logprobs", samples=[{"prompt": "a", "text": "b"}], reference=True),
         "needs a reference model"),
        (dict(op="import", path="/nonexistent.safetensors"), "does not exist"),
        (dict(op="restore", dir="/nonexistent-ckpt"), "does not exist"),
    ]
    for req, expect in cases:
        kind, msg = err(call_raw(id=3, model=h, **req))
        assert kind in ("config", "state"), (req, kind, msg)
        assert expect in msg, (req, msg)
    assert err(call_raw(id=3, op="step", model=h))[0] == "state"
    assert err(call_raw(id=3, op="info", model=h + 1000))[0] == "state"
    # Sample fields other than the known ones ride along and are ignored.
    rep = call(op="backward", model=h, loss="sft",
               samples=[{"prompt": "a", "text": "b", "source": "x", "reward": 1}])
    assert rep["tokens"] == 2  # "b" and EOS
    assert call(op="generate", model=h, prompts=["ok"], max_tokens=2)["samples"]
    call(op="close", model=h)
    kind, msg = err(call_raw(id=4, op="info", model=h))
    assert kind == "state" and "unknown model handle" in msg


def test_integral_floats_accepted_as_integers():
    h = load(seed=0)
    rep = call(op="generate", model=h, prompts=["x"], n=2.0, max_tokens=3.0, seed=1.0)
    assert len(rep["samples"][0]) == 2
    kind, msg = err(call_raw(id=1, op="generate", model=h, prompts=["x"], n=1.5))
    assert kind == "config" and "'n' must be an integer" in msg
    call(op="close", model=h)


def test_torch_free_layers():
    """dispatch/protocol/host/worker must not import torch (the backend boundary)."""
    code = ("import sys, json; from rlengine import host, worker, dispatch, protocol;"
            "r = json.loads(host.call(json.dumps({'id': 1, 'op': 'ping'})));"
            "r2 = json.loads(host.call(json.dumps("
            "    {'id': 2, 'op': 'load', 'path': 'x', 'bad': 1})));"
            "assert r['ok'] and r2['error']['kind'] == 'config', (r, r2);"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SCRIPTS)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    for name in ("protocol.py", "dispatch.py", "host.py", "worker.py", "errors.py"):
        text = (SCRIPTS / "rlengine" / name).read_text()
        assert "import torch" not in text and "from torch" not in text, name


@pytest.mark.parametrize("field,value", [("seed", -1), ("threads", 0), ("dtype", "int8"),
                                          ("device", "tpu"), ("reference", "yes")])
def test_load_field_types(field, value):
    kind, msg = err(call_raw(id=1, op="load", path="builtin:tiny", **{field: value}))
    assert kind == "config" and f"'{field}'" in msg
