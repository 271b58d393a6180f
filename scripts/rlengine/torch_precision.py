"""Precision and memory for the torch backend: mixed precision, gradient checkpointing,
the AdamW kernel and the entropy statistic.

Part of the torch backend (imported only by backend_torch), so it may import torch.

Precisions (the `precision` load option; `dtype` is the parameters' storage type):

| precision    | parameters, gradients, AdamW state | forward/backward compute      | scaler    |
|--------------|------------------------------------|-------------------------------|-----------|
| `fp32`       | float32                            | float32                       | no        |
| `bf16-mixed` | float32 (master weights)           | bfloat16 under torch.autocast | no        |
| `bf16`       | bfloat16 (as `dtype=bfloat16`)     | bfloat16                      | no        |
| `fp16-mixed` | float32 (master weights)           | float16 under torch.autocast  | CUDA only |

Log-softmax, losses and statistics run in float32 whatever the precision (the logits
are cast up before the softmax), so PPO ratios are not computed from bfloat16 values.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
# precision -> (parameter dtype name, autocast dtype or None, gradient scaler)
PRECISIONS: dict[str, tuple[str, torch.dtype | None, bool]] = {
    "fp32": ("float32", None, False),
    "bf16-mixed": ("float32", torch.bfloat16, False),
    "bf16": ("bfloat16", None, False),
    "fp16-mixed": ("float32", torch.float16, True),
}
# A `dtype` given without `precision` keeps its meaning from before `precision` existed:
# pure training in that type.
PURE = {"float32": "fp32", "bfloat16": "bf16", "float64": "fp64", "float16": "fp16"}


@dataclass(frozen=True)
class Precision:
    """How a model stores its weights and computes.

    name: a `precision` value, or `fp64`/`fp16` for pure training in a `dtype` that has
    no precision name; dtype: parameters, gradients and optimizer state; compute: the
    autocast dtype (None = compute in `dtype`); scaler: fp16 loss scaling.
    """
    name: str
    dtype: torch.dtype
    dtype_name: str
    compute: torch.dtype | None
    device_type: str
    scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes (the backward replays the forward's autocast)."""
        if self.compute is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.compute)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.scaler else None


def resolve(precision: str | None, dtype: str | None, device: torch.device) -> Precision:
    """The Precision for the load options `precision` and `dtype` on `device`.

    Raises ConfigError (before any weight is read) when the two contradict each other
    or the device cannot run the precision (fp16-mixed off CUDA, bf16 on a GPU without
    bfloat16).
    """
    cuda = device.type == "cuda"
    if precision is None and dtype is None:
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision is None:
        name, store, compute, scaler = PURE[dtype], dtype, None, False
    else:
        store, compute, scaler = PRECISIONS[precision]
        if dtype is not None and dtype != store:
            raise ConfigError(
                f"load: 'dtype' {dtype} contradicts 'precision' '{precision}', which keeps "
                f"the weights in {store} (drop 'dtype'; 'precision' alone says it)")
        name = precision
    if scaler and not cuda:
        raise ConfigError(f"load: precision '{precision}' needs a CUDA device (float16 "
                          f"autocast with loss scaling is a GPU recipe); this model is on "
                          f"'{device.type}': use 'bf16-mixed', which needs no scaler")
    uses_bf16 = compute == torch.bfloat16 or store == "bfloat16"
    if cuda and uses_bf16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"load: precision '{name}' needs bfloat16, which this GPU lacks "
                          f"(use 'fp16-mixed' or 'fp32')")
    return Precision(name, DTYPES[store], store, compute, device.type, scaler)


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW implementation flags: one fused kernel on CUDA, multi-tensor (foreach)
    elsewhere. Either updates all parameters in a few large operations instead of a
    dozen small ones per parameter."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def entropy_sum(logp: torch.Tensor, rows: int = 0) -> float:
    """Sum over rows of the entropy of each row's distribution, from log-probs (N, V).

    Computed in row chunks (~16 MiB of temporaries by default) without autograd, so the
    statistic costs no (N, V) copies next to the loss's own.
    """
    n, v = logp.shape
    rows = rows or max(1, (4 << 20) // max(1, v))
    total = torch.zeros((), dtype=torch.float64, device=logp.device)
    with torch.no_grad():
        for chunk in logp.detach().split(rows):
            total += (chunk.exp() * chunk).sum(dtype=torch.float64)
    return -float(total)


# ---- gradient checkpointing -------------------------------------------------------------

class Checkpointing:
    """Activation recomputation for a training forward pass.

    Builtin models checkpoint each block (torch.utils.checkpoint, non-reentrant) while
    `GPT.checkpointing` is set. Hugging Face models use their own switch
    (`activation_checkpointing_enable`, `gradient_checkpointing_enable` before
    transformers 5) with use_reentrant=False; transformers checkpoints a decoder layer
    only while that layer is in training mode, and the engine keeps models in eval mode
    (no dropout, and generation must keep its KV cache). So `training()` puts just the
    checkpointed layers (not their submodules: attention dropout stays off) in training
    mode for the duration of one training forward.
    """

    def __init__(self, module: Any, builtin: bool) -> None:
        self.module = module
        self.builtin = builtin
        self.layers: list[torch.nn.Module] = []
        if builtin:
            return
        kwargs = {"use_reentrant": False}
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(f"load: 'gradient_checkpointing': {type(base).__name__} does "
                              f"not support gradient checkpointing")
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        from transformers.modeling_layers import GradientCheckpointingLayer
        self.layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)
                       and getattr(m, "gradient_checkpointing", False)]
        if not self.layers:
            raise ConfigError(f"load: 'gradient_checkpointing': {type(base).__name__} has no "
                              f"layers that transformers can checkpoint")

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        if self.builtin:
            self.module.checkpointing = True
            try:
                yield
            finally:
                self.module.checkpointing = False
            return
        before = [m.training for m in self.layers]
        for m in self.layers:
            m.training = True
        try:
            yield
        finally:
            for m, t in zip(self.layers, before):
                m.training = t


# ---- LM head on completion positions ------------------------------------------------------

_KEEPS_MASK: dict[type, bool] = {}


def keeps_position_mask(module: Any) -> bool:
    """Whether a Hugging Face causal LM applies its head (lm_head, then any soft-capping
    or logit scaling) to only the positions of a boolean `logits_to_keep` mask.

    transformers' `slice_logits_to_keep` does that for a 2-D boolean mask; models whose
    forward slices inline would misread one, so they get full logits instead.
    """
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    cls = type(base)
    if cls not in _KEEPS_MASK:
        try:
            src = inspect.getsource(inspect.unwrap(getattr(cls, "forward")))
        except (AttributeError, OSError, TypeError):
            src = ""
        _KEEPS_MASK[cls] = "slice_logits_to_keep(" in src
    return _KEEPS_MASK[cls]
