"""End to end on the shipped pretrained model (SmolLM2-135M-Instruct, `make models`):
recipes/sft.lua and recipes/rlaif.lua with LoRA run, checkpoint, resume bitwise, and
export a merged model/ that transformers loads and that generates what rlhost
generated. Kept short: a few steps of two samples and a few tokens.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from rlengine import model_path  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
SFT = os.path.join(ROOT, "recipes", "sft.lua")
RLAIF = os.path.join(ROOT, "recipes", "rlaif.lua")
NAME = "smollm2-135m-instruct"
BUILT = NAME in model_path.available()

pytestmark = [
    pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built"),
    pytest.mark.skipif(not BUILT, reason=f"{NAME} is not built (run `make models`; "
                                         f"`make test` does)"),
]

ROWS = [{"prompt": "Name a colour.", "completion": "Blue."},
        {"prompt": "Name an animal.", "completion": "A cat."},
        {"prompt": "Say hello.", "completion": "Hello!"},
        {"prompt": "Count to three.", "completion": "1, 2, 3."}]
MODEL = [f"model={NAME}", "lora_r=16", "threads=2", "plot=false"]
SFT_ARGS = MODEL + ["batch=2", "micro_batch=2", "checkpoint_every=1", "eval_every=0",
                    "lr=1e-3"]
RL_ARGS = MODEL + ["prompts=2", "group=2", "max_tokens=6", "kl=0.05", "eval_every=0",
                   "checkpoint_every=1", "lr=1e-4"]


def env():
    return {k: v for k, v in os.environ.items() if not k.startswith("RL_TEACHER")}


def rlhost(args, cwd, timeout=600):
    p = subprocess.run([RLHOST, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def files(ckpt):
    d = os.path.join(ckpt, "model")
    out = {}
    for rel in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
        with open(os.path.join(d, rel), "rb") as f:
            out[rel] = f.read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    path = d / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("sft")
    p = rlhost([SFT, "dir=run", f"data={data}", "steps=3", *SFT_ARGS], d)
    assert "final model in" in p.stderr and "run/model" in p.stderr
    return str(d / "run")


def test_sft_lora_resumes_bitwise(tmp_path, data, sft_run):
    rlhost([SFT, "dir=run", f"data={data}", "steps=2", *SFT_ARGS], tmp_path)
    rlhost([SFT, "dir=run", f"data={data}", "steps=3", *SFT_ARGS], tmp_path)
    assert files(os.path.join(tmp_path, "run", "ckpt-3")) == files(os.path.join(sft_run, "ckpt-3"))
    meta = json.load(open(os.path.join(sft_run, "ckpt-3", "model", "engine.json")))
    assert meta["lora"]["r"] == 16 and meta["base_model"].endswith("/" + NAME)


def test_sft_export_loads_in_transformers_and_generates_what_rlhost_did(tmp_path, sft_run):
    import torch
    from transformers import AutoModelForCausalLM
    script = tmp_path / "gen.lua"
    script.write_text(f"""
local rl = require "rl"
local m <close> = rl.model{{path = "{NAME}", lora = {{r = 16}}, threads = 2}}
m:restore("{sft_run}/ckpt-3/model")
local s = m:generate({{"Name a colour."}}, {{temperature = 0, max_tokens = 8}})[1]
print(rl.json.encode{{prompt_ids = s.prompt_ids, ids = s.ids}})
""")
    out = json.loads(rlhost([str(script)], tmp_path).stdout.strip().splitlines()[-1])
    export = os.path.join(sft_run, "model")
    assert not [n for n in os.listdir(export) if n.startswith("adapter")]
    model = AutoModelForCausalLM.from_pretrained(export, local_files_only=True).eval()
    ids = torch.tensor([out["prompt_ids"]])
    got = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=8)[0, ids.shape[1]:].tolist()
    assert got == out["ids"]


def test_rlaif_lora_from_the_sft_run_without_model_resumes_bitwise(tmp_path, sft_run):
    args = [a for a in RL_ARGS if not a.startswith("model=")] + [f"init={sft_run}"]
    a = rlhost([RLAIF, "dir=a", "steps=2", *args], tmp_path)
    assert "final model in" in a.stderr
    rlhost([RLAIF, "dir=b", "steps=1", *args], tmp_path)
    rlhost([RLAIF, "dir=b", "steps=2", *args], tmp_path)
    assert files(tmp_path / "b" / "ckpt-2") == files(tmp_path / "a" / "ckpt-2")
    meta = json.load(open(tmp_path / "a" / "ckpt-2" / "model" / "engine.json"))
    # The policy started from the SFT run's merged export: that is its base.
    assert meta["base_model"] == os.path.join(sft_run, "model")
    assert os.path.isfile(tmp_path / "a" / "model" / "config.json")
    rows = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["kl"] is not None
