"""Standalone model exports of the torch backend (`save{merged=true}`); imports torch.

`save_hf_merged` writes a Hugging Face directory that `AutoModelForCausalLM.from_pretrained`
loads without peft or rlhost: config.json, generation_config.json, model.safetensors, the
tokenizer files with the chat template. `replace_dir` moves a finished directory into
place.
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

import torch


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
