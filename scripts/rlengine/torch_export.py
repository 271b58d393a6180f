"""Standalone model exports of the torch backend (`save{merged=true}`); imports torch.

`save_hf_merged` writes a Hugging Face directory that `AutoModelForCausalLM.from_pretrained`
loads without peft or rlhost: config.json, generation_config.json, model.safetensors, the
tokenizer files with the chat template. `replace_dir` moves a finished directory into
place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from typing import Any

import torch

# Written into every export: {"version", "steps", "base_model", "lora"} of the model
# that was saved (recipes compare steps with a run's checkpoints).
EXPORT_RECORD = "rlhost-export.json"


def save_hf_merged(module: Any, tokenizer: Any, state_dict: dict[str, torch.Tensor] | None,
                   out_dir: str) -> None:
    """Write `module` (a transformers PreTrainedModel) to out_dir. state_dict: the
    weights to write under the model's own names (a LoRA adapter already folded in),
    or None for the module's own weights. With a state dict, a fresh model of the same
    config receives it, so the live module (and its LoRA layers) is left untouched."""
    if state_dict is None:
        module.save_pretrained(out_dir)
    else:
        from transformers import AutoModelForCausalLM
        cfg = copy.deepcopy(module.config)
        dtype = next(iter(state_dict.values())).dtype
        plain = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        missing, unexpected = plain.load_state_dict(state_dict, strict=False)
        tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"merged export: state dict does not fit the model: missing "
                               f"{missing[:5]}, unexpected {unexpected[:5]}")
        plain.generation_config = copy.deepcopy(module.generation_config)
        plain.save_pretrained(out_dir)
        del plain
    tokenizer.save_pretrained(out_dir)
    portable_tokenizer_config(out_dir, tokenizer)


def portable_tokenizer_config(out_dir: str, tok: Any) -> None:
    """Make tokenizer_config.json readable by transformers 4.x too (vLLM, TGI and
    llama.cpp's converter often run it): transformers 5 writes its own class name
    `TokenizersBackend`, which 4.x lacks; `PreTrainedTokenizerFast` names the same class
    in 5.x. The chat template is also put inline, where readers older than
    chat_template.jinja look for it. Load-time-only keys are dropped."""
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    if tok.chat_template and "chat_template" not in cfg:
        cfg["chat_template"] = tok.chat_template
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


def replace_dir(src: str, dst: str) -> None:
    """fsync every file of src, then rename it to dst, replacing an existing dst (the
    old one is renamed aside first and removed after, so dst is never half-written)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o777 & ~umask)  # mkdtemp made it 0700
    for root, _, files in os.walk(src):
        for name in files:
            path = os.path.join(root, name)
            # save_pretrained writes through private temporary files (mode 0600).
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    old = None
    if os.path.lexists(dst):
        old = f"{src}.old"
        os.replace(dst, old)
    os.replace(src, dst)
    fd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old:
        shutil.rmtree(old, ignore_errors=True)
