"""LoRA adapters for the torch backend, through peft (part of the backend: imports torch).

`Lora(module, spec, ...)` injects LoRA layers into `module` in place (peft's
`get_peft_model`), freezing every base weight. Calling `module` afterwards runs base +
adapter, so the backend's forward code needs no change; what changes is:

- trainable parameters: only the adapters' `lora_A`/`lora_B` matrices (`trainable()`),
  so the optimizer state, checkpoints and weight syncs hold the adapter only;
- the KL reference: the same module with the adapter disabled (`reference()`, peft's
  `disable_adapter` context), so no second copy of the weights is kept;
- checkpoints: the adapter in PEFT's own layout (`adapter_model.safetensors`,
  `adapter_config.json`), which `PeftModel.from_pretrained(base, dir)` loads;
- a merged export (`merged_state_dict()`): base weights + scale * B @ A, under the base
  model's own parameter names, so `AutoModelForCausalLM.from_pretrained` loads it.

Determinism: the adapters' initial values are drawn from torch's global RNG (peft's
kaiming init of lora_A; lora_B starts at zero), which the backend seeds from the load seed
just before, so the same load options give the same adapter. LoRA dropout (default 0)
is active only in forward passes that record gradients (backward; see GradDropout) and
draws from the global RNG, whose state checkpoints keep, so a resumed run stays bitwise
identical.

Builtin models work too: they are plain `nn.Module`s, which peft adapts when the target
modules are named; "all-linear" is expanded here to every `nn.Linear` except the output
head (peft itself only expands it for transformers models). Their checkpoints keep the
whole module in model.safetensors as before (the base is seed-initialised, not a file)
plus the PEFT-format adapter.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

ADAPTER = "default"
ADAPTER_DIR = "adapter"
OUTPUT_HEADS = ("lm_head",)


def _peft() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft
    return peft


class GradDropout(nn.Dropout):
    """Dropout that is active exactly when autograd records (the policy forward of
    backward) and never under no_grad/inference_mode (generate, logprobs, the KL
    reference), whatever the module's train/eval flag: the backend keeps models in eval
    mode throughout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, self.p, training=torch.is_grad_enabled())


def _all_linear(module: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, m in module.named_modules()
             if isinstance(m, nn.Linear)}
    return sorted(names - set(OUTPUT_HEADS))


class Lora:
    """The LoRA adapter of one model.

    module: the base model (nn.Module), changed in place. spec: the validated `lora`
    load option, {r: int >= 1, alpha: float > 0, dropout: float in [0, 1),
    targets: "all-linear" | [module name suffix, ...]}. hf: whether `module` is a
    transformers PreTrainedModel. base_path: recorded in adapter_config.json as
    `base_model_name_or_path` (the resolved model directory, or "builtin:NAME").
    Raises ConfigError when a target names no module of the model.
    """

    def __init__(self, module: nn.Module, spec: dict, hf: bool, base_path: str) -> None:
        peft = _peft()
        self.spec = spec
        self.module = module
        targets = spec["targets"]
        if targets == "all-linear" and not hf:
            targets = _all_linear(module)
        elif targets != "all-linear":
            names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
            unknown = [t for t in targets if t not in names]
            if unknown:
                linear = _all_linear(module)
                raise ConfigError(f"load: 'lora.targets' names {unknown}, which this model "
                                  f"does not have (its linear layers: {linear}, or "
                                  f"\"all-linear\")")
        cfg = peft.LoraConfig(r=spec["r"], lora_alpha=spec["alpha"],
                              lora_dropout=spec["dropout"], target_modules=targets,
                              bias="none", task_type="CAUSAL_LM" if hf else None,
                              base_model_name_or_path=base_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers deprecation notes peft triggers
            self.peft = peft.get_peft_model(module, cfg, adapter_name=ADAPTER)
        self.peft.peft_config[ADAPTER].base_model_name_or_path = base_path
        self.layers = [m for m in module.modules()
                       if isinstance(m, peft.tuners.lora.LoraLayer)]
        if spec["dropout"] > 0:
            for layer in self.layers:
                layer.lora_dropout[ADAPTER] = GradDropout(spec["dropout"])

    # ---- training ---------------------------------------------------------------------

    def trainable(self) -> dict[str, torch.Tensor]:
        """The adapter parameters by the base module's names (peft froze the rest)."""
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def reference(self) -> Any:
        """A callable with the module's signature that runs the base model alone."""
        peft_model, module = self.peft, self.module

        def call(*args: Any, **kwargs: Any) -> Any:
            with peft_model.disable_adapter():
                return module(*args, **kwargs)
        return call

    def describe(self) -> dict:
        return {"r": self.spec["r"], "alpha": self.spec["alpha"],
                "dropout": self.spec["dropout"], "targets": self.spec["targets"],
                "layers": len(self.layers)}

    # ---- checkpoints --------------------------------------------------------------------

    def save(self, ckpt_dir: str) -> list[str]:
        """Write ckpt_dir/adapter/{adapter_model.safetensors, adapter_config.json}."""
        out = os.path.join(ckpt_dir, ADAPTER_DIR)
        with warnings.catch_warnings():
            # peft looks for the base model's config.json to see whether the
            # vocabulary changed; a builtin base has none.
            warnings.simplefilter("ignore")
            self.peft.save_pretrained(out, safe_serialization=True)
        return [ADAPTER_DIR]

    def load(self, ckpt_dir: str, what: str = "restore") -> None:
        """Read an adapter written by `save` (or any PEFT LoRA adapter of the same shape)
        into this one; everything is checked before a parameter changes."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        peft = _peft()
        d = os.path.join(ckpt_dir, ADAPTER_DIR)
        path = os.path.join(d, "adapter_model.safetensors")
        try:
            with open(os.path.join(d, "adapter_config.json")) as f:
                cfg = json.load(f)
            tensors = load_file(path)
        except FileNotFoundError as exc:
            raise ConfigError(f"{what}: '{exc.filename}' does not exist (a LoRA "
                              f"checkpoint holds {ADAPTER_DIR}/)") from None
        except (ValueError, SafetensorError) as exc:
            raise ConfigError(f"{what}: '{d}' is not a readable PEFT adapter: {exc}") from None
        if cfg.get("r") != self.spec["r"] or cfg.get("lora_alpha") != self.spec["alpha"]:
            raise ConfigError(f"{what}: '{d}' is an adapter with r={cfg.get('r')}, "
                              f"alpha={cfg.get('lora_alpha')}; this model's lora is "
                              f"r={self.spec['r']}, alpha={self.spec['alpha']}")
        mine = peft.get_peft_model_state_dict(self.peft, adapter_name=ADAPTER)
        missing = sorted(set(mine) - set(tensors))
        extra = sorted(set(tensors) - set(mine))
        if missing or extra:
            raise ConfigError(f"{what}: '{path}' does not match this model's adapter: "
                              f"missing {missing[:3]}, unexpected {extra[:3]}")
        for k, t in tensors.items():
            if t.shape != mine[k].shape:
                raise ConfigError(f"{what}: '{path}': tensor '{k}' has shape "
                                  f"{list(t.shape)}, the adapter has {list(mine[k].shape)}")
        result = peft.set_peft_model_state_dict(self.peft, tensors, adapter_name=ADAPTER)
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise ConfigError(f"{what}: '{path}': peft did not place {bad[:3]}")

    # ---- merged export --------------------------------------------------------------------

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's state dict with every adapter folded into its layer's weight
        (W + scale * B @ A) and peft's wrapping removed from the names; the live model
        is not changed (merging in place and back would not restore W bitwise)."""
        lora_ids = {id(m) for m in self.layers}
        by_prefix = {name: m for name, m in self.module.named_modules() if id(m) in lora_ids}
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, t in self.module.state_dict().items():
                if ".lora_" in name:
                    continue
                if ".base_layer." in name:
                    prefix, leaf = name.split(".base_layer.", 1)
                    layer = by_prefix[prefix]
                    name = f"{prefix}.{leaf}"
                    if leaf == "weight":
                        delta = layer.get_delta_weight(ADAPTER)
                        t = (t.float() + delta.float()).to(t.dtype)
                out[name] = t
        return out
