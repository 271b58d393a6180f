"""Builtin models of the torch backend: a GPT-style decoder and a byte-level tokenizer.

Part of the torch backend (imported only by backend_torch), so it may import torch.

Architecture: pre-LayerNorm decoder, rotary positions (no learned position table, so
the context limit is a sanity bound, not a parameter), GELU MLP, untied input and
output embeddings (untied keeps every parameter a distinct tensor, so safetensors files
need no shared-tensor handling), no biases in linear layers, no dropout (RL needs the
same function at generation and training time).

Sizes:
- tiny: d=128, 4 layers, 4 heads, MLP 512, context 256: ~0.86M parameters. One
  forward+backward of a 32 x 64-token batch is ~10 GFLOP, ~0.1 s on 2 CPU cores, so a
  few hundred optimizer steps (an SFT or RL smoke run) take minutes, and the tests a
  few seconds. Four layers of width 128 are enough to memorise and copy short strings.
- small: d=768, 14 layers, 12 heads, MLP 3072, context 1024: ~99.5M parameters, the
  "around 100M" model for throughput benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 259
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 512
    max_seq: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


BUILTIN_CONFIGS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(d_model=128, n_layer=4, n_head=4, d_ff=512, max_seq=256),
    "small": GPTConfig(d_model=768, n_layer=14, n_head=12, d_ff=3072, max_seq=1024),
}


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; BOS, EOS and PAD follow."""

    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab = 259

    def encode_prompt(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8")]

    def encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # Specials never reach the text; an incomplete UTF-8 tail (a sample cut by
        # max_tokens mid-character) decodes to U+FFFD rather than failing.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def eos_ids(self) -> list[int]:
        return [self.eos_id]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: tuple[torch.Tensor, torch.Tensor] | None,
                start: int) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:
            kc, vc = cache
            kc[:, :, start:start + t] = k
            vc[:, :, start:start + t] = v
            k, v = kc[:, :, :start + t], vc[:, :, :start + t]
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        dh = cfg.d_model // cfg.n_head
        # The table is computed in float64 and cast with the module, so float32 and
        # float64 models see the same angles up to their own rounding.
        inv = 1.0 / (cfg.rope_base ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
        ang = torch.arange(cfg.max_seq, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
        self.register_buffer("rope_sin", ang.sin().float(), persistent=False)
        self._ang = ang
        # Set by torch_precision.Checkpointing during a training forward: each block's
        # activations are recomputed in the backward instead of kept.
        self.checkpointing = False

    def init_weights(self, seed: int) -> None:
        """Deterministic GPT-2 style init from `seed`, independent of global RNG state.

        Draws in float32 on the CPU in parameter order, so a model's starting weights
        depend only on (config, seed), not on dtype or device.
        """
        g = torch.Generator(device="cpu").manual_seed(seed)
        std_resid = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                    w = torch.ones(p.shape)
                elif name.endswith(".bias"):
                    w = torch.zeros(p.shape)
                else:
                    std = std_resid if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                    w = torch.empty(p.shape).normal_(0.0, std, generator=g)
                p.copy_(w.to(p.dtype))

    def refresh_buffers(self) -> None:
        # After a dtype change, recompute the rotary table from the float64 angles
        # rather than from the rounded float32 copy.
        dt, dev = self.rope_cos.dtype, self.rope_cos.device
        self.rope_cos = self._ang.cos().to(dev, dt)
        self.rope_sin = self._ang.sin().to(dev, dt)

    def new_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        p = self.lm_head.weight
        shape = (batch, cfg.n_head, length, cfg.d_model // cfg.n_head)
        return [(torch.zeros(shape, dtype=p.dtype, device=p.device),
                 torch.zeros(shape, dtype=p.dtype, device=p.device)) for _ in self.blocks]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None,
                cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                start: int = 0, last_only: bool = False,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for `ids` (B, T): (B, T, V), or (N, V) for the N true positions of
        `keep` (boolean (B, T)) in row-major order, the head running on those only.

        positions: (B, T) rotary positions (default 0..T-1); mask: boolean (B, 1, T, K)
        attention mask, None = plain causal (right-padded or unpadded batches); cache:
        per-layer preallocated key/value tensors written at [start, start+T).
        """
        b, t = ids.shape
        if positions is None:
            positions = torch.arange(t, device=ids.device).expand(b, t)
        cos = self.rope_cos[positions].unsqueeze(1)
        sin = self.rope_sin[positions].unsqueeze(1)
        x = self.embed(ids)
        ckpt = self.checkpointing and cache is None and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if ckpt:
                x = checkpoint(blk, x, cos, sin, mask, None, start, use_reentrant=False)
            else:
                x = blk(x, cos, sin, mask, cache[i] if cache is not None else None, start)
        if last_only:
            x = x[:, -1:]
        if keep is not None:
            x = x[keep]
        return self.lm_head(self.ln_f(x))


def build(name: str, seed: int) -> GPT:
    cfg = BUILTIN_CONFIGS[name]
    model = GPT(cfg)
    model.init_weights(seed)
    return model
