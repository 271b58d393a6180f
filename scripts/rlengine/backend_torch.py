"""The torch backend: the one module (with its torch_* helpers) that imports torch.

`load(opts)` returns a TorchModel that answers the model ops of scripts/PROTOCOL.md;
`error_kind(exc)` classifies torch exceptions for dispatch. Another backend (MLX) is
one more module with the same two functions.

Determinism: nothing here draws from global RNGs. Weights are initialised from the
load seed with a private generator, sampling uses a generator seeded from the request
seed (or, without one, from the model's own generator, whose state is checkpointed),
and there is no dropout. On the CPU the same requests in the same order therefore give
bitwise identical results in a fresh process with the same thread count.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import glob
import json
import logging
import math
import os
import random
import shutil
import tempfile
from typing import Any

import numpy as np
import torch

from . import __version__
from .chat import Chat, Sequence, find_end_of_turn
from .errors import ConfigError, EngineIOError, NonFiniteError, StateError
from .cores import available_cores
from .torch_precision import (Checkpointing, adamw_kernel, entropy_sum, keeps_position_mask,
                              resolve as resolve_precision)
from .torch_io import (ExportFile, check_safetensors_file, corrupt_error, export_weights,
                       forget, import_weights, load_safetensors, read_safetensors_into,
                       sweep_at_start, write_safetensors)
from .torch_models import BUILTIN_CONFIGS, GPT, ByteTokenizer, build
from . import model_path, torch_export, torch_lora

log = logging.getLogger("rlengine")

CHECKPOINT_FORMAT = 1


def error_kind(exc: BaseException) -> str | None:
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    if isinstance(exc, RuntimeError) and ("out of memory" in str(exc)
                                          or "not enough memory" in str(exc)):
        return "oom"
    return None


def quiet_transformers() -> None:
    """No tqdm bars and no advisory warnings from transformers (see __init__.py)."""
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load(opts: dict) -> TorchModel:
    sweep_at_start()  # files that engines which died left in /dev/shm go (torch_io)
    return TorchModel(opts)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Network adapters: the builtin GPT and Hugging Face causal LMs behind one interface.
# --------------------------------------------------------------------------------------

class BuiltinNet:
    def __init__(self, name: str, seed: int, dtype: torch.dtype, device: torch.device) -> None:
        if name not in BUILTIN_CONFIGS:
            known = ", ".join(f"builtin:{k}" for k in BUILTIN_CONFIGS)
            raise ConfigError(f"load: unknown builtin model 'builtin:{name}' (known: {known})")
        self.name = name
        self.module: GPT = build(name, seed).to(device=device, dtype=dtype)
        self.module.refresh_buffers()
        self.tok = ByteTokenizer()
        self.vocab = self.module.cfg.vocab
        self.context = self.module.cfg.max_seq
        self.pad_id = self.tok.pad_id

    def arch(self) -> dict:
        return {"type": "builtin", "name": self.name, **self.module.cfg.to_dict()}

    def arch_name(self) -> str:
        return f"builtin:{self.name}"

    def logits(self, module: Any, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # Right-padded batches: causal attention alone keeps pads out of real positions.
        return module(ids)

    def completion_logits(self, module: Any, ids: torch.Tensor, valid: torch.Tensor,
                          keep: torch.Tensor) -> torch.Tensor:
        return module(ids, keep=keep)

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor,
                total: int) -> tuple[torch.Tensor, dict]:
        b, p = ids.shape
        cache = self.module.new_cache(b, total)
        causal = torch.ones(p, p, dtype=torch.bool, device=ids.device).tril()
        # A left-pad query would attend to nothing (NaN); letting it see itself keeps
        # its garbage finite, and nothing real ever attends to it.
        mask = (causal & valid[:, None, None, :]) | torch.eye(p, dtype=torch.bool,
                                                               device=ids.device)
        logits = self.module(ids, pos, mask, cache, 0, last_only=True)[:, -1]
        keys = torch.cat([valid, torch.ones(b, total - p, dtype=torch.bool,
                                            device=ids.device)], dim=1)
        return logits, {"cache": cache, "keys": keys}

    def decode(self, tok: torch.Tensor, pos: torch.Tensor, state: dict,
               key_len: int) -> torch.Tensor:
        mask = state["keys"][:, None, None, :key_len]
        return self.module(tok[:, None], pos[:, None], mask, state["cache"],
                           key_len - 1)[:, -1]

    def save_weights(self, out_dir: str) -> list[str]:
        path = os.path.join(out_dir, "model.safetensors")
        write_safetensors(path, list(self.module.state_dict().items()),
                          {"format": "pt", "arch": json.dumps(self.arch())})
        return ["model.safetensors"]

    def load_weights(self, ckpt_dir: str) -> None:
        path = os.path.join(ckpt_dir, "model.safetensors")
        if not os.path.exists(path):
            raise ConfigError(f"restore: '{path}' does not exist")
        sd = dict(self.module.named_parameters())
        with torch.no_grad():
            read_safetensors_into(path, sd, "restore")


class HFTokenizer:
    """A HF tokenizer as the engine uses it; with a chat template, `eot_id` is the token
    that ends an assistant turn (also a stop token for generation, see rlengine.chat)."""

    def __init__(self, tok: Any, eos: list[int]) -> None:
        self.tok = tok
        self.template = bool(getattr(tok, "chat_template", None))
        self.eot_id = find_end_of_turn(tok) if self.template else None
        if self.eot_id is not None and self.eot_id not in eos:
            eos = eos + [self.eot_id]
        self.eos_ids = eos
        self.eos_id = eos[0] if eos else None

    def render(self, messages: list[dict], generation: bool, tokenize: bool) -> Any:
        """The chat template applied to `messages`: text, or ids exactly as
        apply_chat_template(tokenize=True) gives them (no second BOS)."""
        return self.tok.apply_chat_template(messages, add_generation_prompt=generation,
                                            tokenize=tokenize, return_dict=False)

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class HFNet:
    ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "tie_word_embeddings")

    def __init__(self, path: str, dtype: torch.dtype, device: torch.device) -> None:
        if not os.path.isdir(path):
            raise ConfigError(f"load: model directory '{path}' does not exist "
                              f"(a model is 'builtin:tiny', 'builtin:small' or a local "
                              f"Hugging Face directory)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"load: '{path}' has no config.json (not a Hugging Face "
                              f"model directory)")
        weights = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not weights:
            raise ConfigError(f"load: '{path}' has no *.safetensors weights (pickled "
                              f"weights are never loaded)")
        for w in weights:
            check_safetensors_file(w, "load")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        quiet_transformers()
        self.path = path
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"load: cannot load the tokenizer from '{path}': {exc}") from None
        try:
            module = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype, use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"load: cannot load the model from '{path}': {exc}") from None
        self.module = module.to(device)
        self.module.eval()
        cfg = self.module.config
        eos: list[int] = []
        for src in (tok.eos_token_id, getattr(self.module.generation_config, "eos_token_id", None)):
            for e in (src if isinstance(src, list) else [src]):
                if isinstance(e, int) and e not in eos:
                    eos.append(e)
        self.tok = HFTokenizer(tok, eos)
        self.vocab = self.module.get_input_embeddings().weight.shape[0]
        self.context = int(getattr(cfg, "max_position_embeddings", 0) or 2**31)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)

    def arch(self) -> dict:
        d = self.module.config.to_dict()
        return {"type": "hf", **{k: d.get(k) for k in self.ARCH_KEYS}}

    def arch_name(self) -> str:
        archs = getattr(self.module.config, "architectures", None) or []
        return archs[0] if archs else type(self.module).__name__

    def logits(self, module: Any, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return module(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits

    def completion_logits(self, module: Any, ids: torch.Tensor, valid: torch.Tensor,
                          keep: torch.Tensor) -> torch.Tensor:
        # The model's own head (tied embeddings, soft-capping, logit scaling included)
        # on the kept positions only: no (B, L, V) logits over prompts and padding.
        # The class decides; `module` may be a copy or a wrapper of it (the reference).
        if keeps_position_mask(self.module):
            return module(input_ids=ids, attention_mask=valid.long(), use_cache=False,
                          logits_to_keep=keep).logits
        return self.logits(module, ids, valid)[keep]

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor,
                total: int) -> tuple[torch.Tensor, dict]:
        b, p = ids.shape
        out = self.module(input_ids=ids, attention_mask=valid.long(), position_ids=pos,
                          use_cache=True, logits_to_keep=1)
        keys = torch.cat([valid.long(), torch.ones(b, total - p, dtype=torch.long,
                                                   device=ids.device)], dim=1)
        return out.logits[:, -1], {"cache": out.past_key_values, "keys": keys}

    def decode(self, tok: torch.Tensor, pos: torch.Tensor, state: dict,
               key_len: int) -> torch.Tensor:
        out = self.module(input_ids=tok[:, None], attention_mask=state["keys"][:, :key_len],
                          position_ids=pos[:, None], past_key_values=state["cache"],
                          use_cache=True)
        state["cache"] = out.past_key_values
        return out.logits[:, -1]

    def save_weights(self, out_dir: str) -> list[str]:
        hf_dir = os.path.join(out_dir, "hf")
        self.module.save_pretrained(hf_dir)
        self.tok.tok.save_pretrained(hf_dir)
        return ["hf"]

    def load_weights(self, ckpt_dir: str) -> None:
        hf_dir = os.path.join(ckpt_dir, "hf")
        files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
        if not files:
            raise ConfigError(f"restore: '{hf_dir}' has no *.safetensors weights")
        from safetensors import SafetensorError, safe_open
        params = dict(self.module.named_parameters())
        found: dict[str, torch.Tensor] = {}
        for path in files:
            check_safetensors_file(path, "restore")
            try:
                with safe_open(path, framework="pt") as f:
                    for k in f.keys():
                        if k in params:
                            found[k] = f.get_tensor(k)
            except SafetensorError as exc:
                raise corrupt_error(path, str(exc)) from None
        missing = sorted(set(params) - set(found))
        if missing:
            raise ConfigError(f"restore: '{hf_dir}' lacks tensors of this model: {missing[:5]}")
        for k, t in found.items():
            if t.shape != params[k].shape:
                raise ConfigError(f"restore: tensor '{k}' has shape {list(t.shape)}, "
                                  f"the model has {list(params[k].shape)}")
        with torch.no_grad():
            for k, t in found.items():
                params[k].copy_(t)


# --------------------------------------------------------------------------------------
# The model object.
# --------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


class TorchModel:
    def __init__(self, o: dict) -> None:
        self.opts = o
        self.threads = o["threads"] or available_cores()
        torch.set_num_threads(self.threads)
        if o["device"] == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = o["device"]
            if dev == "cuda" and not torch.cuda.is_available():
                raise ConfigError("load: 'device' is 'cuda' but no CUDA device is available")
        self.device = torch.device(dev)
        self.prec = resolve_precision(o["precision"], o["dtype"], self.device)
        o["precision"], o["dtype"] = self.prec.name, self.prec.dtype_name
        self.dtype = self.prec.dtype
        if o["schedule"] != "constant" and o["total_steps"] is None:
            raise ConfigError(f"load: schedule '{o['schedule']}' needs 'total_steps'")
        seed = o["seed"]
        # Global RNGs are seeded for any library code that draws from them; the engine
        # itself uses private generators (see the module docstring).
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        path = self.base_path = model_path.resolve(o["path"])
        if path.startswith("builtin:"):
            self.net: Any = BuiltinNet(path[len("builtin:"):], seed, self.dtype, self.device)
        else:
            self.net = HFNet(path, self.dtype, self.device)
        self.module = self.net.module
        self.tok = self.net.tok
        self.chat = Chat(self.tok, o["chat"], o["system"])
        self.module.requires_grad_(True)
        self.ref = None
        self.lora = self._apply_lora(o)
        if o["reference"]:
            # With LoRA the reference is the base model: the adapter switched off.
            self.ref = self.lora.reference() if self.lora else \
                copy.deepcopy(self.module).requires_grad_(False)
        # What trains, and what the optimizer, checkpoints and syncs hold: with LoRA
        # the adapter only.
        self.params = self.lora.trainable() if self.lora else \
            dict(self.module.named_parameters())
        decay = [p for p in self.params.values() if p.dim() >= 2]
        no_decay = [p for p in self.params.values() if p.dim() < 2]
        # Norm gains and biases are not decayed (the usual AdamW practice).
        groups = [{"params": decay, "weight_decay": o["weight_decay"]}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]),
                                     eps=o["eps"], **adamw_kernel(self.device))
        self.ckpt = Checkpointing(self.module, isinstance(self.net, BuiltinNet)) \
            if o["gradient_checkpointing"] else None
        self.scaler = self.prec.grad_scaler()
        self.version = 0
        self.steps = 0
        self.export_file = ExportFile()
        self.imported: set[str] = set()
        self._reset_accum()

    # ---- helpers ---------------------------------------------------------------------

    def _apply_lora(self, o: dict) -> torch_lora.Lora | None:
        if o["lora"] is None:
            return None
        base = self.base_path if self.base_path.startswith("builtin:") \
            else os.path.abspath(self.base_path)
        return torch_lora.Lora(self.module, o["lora"], isinstance(self.net, HFNet), base)

    def _reset_accum(self) -> None:
        self.acc = {"calls": 0, "loss": 0.0, "kl": 0.0, "kl_tokens": 0, "entropy": 0.0,
                    "entropy_tokens": 0, "tokens": 0, "samples": 0}

    def _discard_grads(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._reset_accum()

    def activate(self) -> None:
        """Called before each op: torch's thread count is process-wide, and another
        model loaded in the same process may have set its own."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def lr_at(self, step: int) -> float:
        o = self.opts
        base, warm = o["lr"], o["warmup"]
        if warm and step < warm:
            return base * (step + 1) / warm
        if o["schedule"] == "constant":
            return base
        span = max(1, o["total_steps"] - warm)
        progress = min(1.0, max(0.0, (step - warm) / span))
        if o["schedule"] == "linear":
            f = 1.0 - progress
        else:
            f = 0.5 * (1.0 + math.cos(math.pi * progress))
        r = o["min_lr_ratio"]
        return base * (r + (1.0 - r) * f)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        # Softmax in at least float32: half-precision log-probs are too coarse for ratios.
        return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x

    def _tokenize(self, samples: list[dict], op: str, o: dict,
                  recorded: bool = False) -> list[Sequence]:
        """Prompt and completion ids per sample (see rlengine.chat for text and message
        samples); `recorded`: check the recorded log-probs line up with the trained
        tokens (ppo uses them; others ignore them)."""
        on, system = self.chat.settings(op, o)
        out = []
        for i, s in enumerate(samples):
            where = f"{op}: 'samples[{i + 1}]'"
            if "ids" in s:
                seq = Sequence(s["prompt_ids"], s["ids"])
            else:
                seq = self.chat.sequence(s, on, system, op, f"samples[{i + 1}]")
            p, c = seq.prompt, seq.completion
            if not p:
                raise ConfigError(f"{where} has no prompt tokens (the first completion token "
                                  f"needs a context)")
            top = max(p + c)
            if top >= self.net.vocab:
                raise ConfigError(f"{where} has token id {top}, outside the vocabulary of "
                                  f"{self.net.vocab}")
            if len(p) + len(c) > self.net.context:
                raise ConfigError(f"{where} has {len(p) + len(c)} tokens, more than the "
                                  f"model's context of {self.net.context}")
            if recorded and len(s["logprobs"]) != seq.targets():
                raise ConfigError(f"{op}: 'samples[{i + 1}].logprobs' has {len(s['logprobs'])} "
                                  f"entries for {seq.targets()} completion tokens")
            out.append(seq)
        return out

    def _left_padded(self, rows: list[list[int]]):
        """Prompts left-padded to one length P, so every row's next token is at P.
        Returns ids (B, P) long, valid (B, P) bool and positions (B, P) long (0 at each
        row's first real token), on the model's device."""
        B, P = len(rows), max(len(r) for r in rows)
        ids = torch.full((B, P), self.net.pad_id, dtype=torch.long)
        valid = torch.zeros((B, P), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
            valid[i, P - len(r):] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        return ids, valid, (valid.long().cumsum(1) - 1).clamp(min=0)

    def _batch(self, seqs: list[Sequence]):
        """Right-padded ids and the mask selecting the trained tokens' predictions."""
        L = max(len(s.prompt) + len(s.completion) for s in seqs)
        b = len(seqs)
        ids = torch.full((b, L), self.net.pad_id, dtype=torch.long)
        valid = torch.zeros((b, L), dtype=torch.bool)
        sel = torch.zeros((b, L - 1), dtype=torch.bool)
        for i, s in enumerate(seqs):
            p, c = s.prompt, s.completion
            n = len(p) + len(c)
            ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
            valid[i, :n] = True
            if s.train is None:
                sel[i, len(p) - 1:len(p) - 1 + len(c)] = True
            else:
                sel[i, len(p) - 1:len(p) - 1 + len(c)] = torch.tensor(s.train, dtype=torch.bool)
        return ids.to(self.device), valid.to(self.device), sel.to(self.device)

    def _completion_logits(self, module: Any, ids: torch.Tensor, valid: torch.Tensor,
                           sel: torch.Tensor, temperature: float) -> torch.Tensor:
        """Logits (N, V) predicting the N completion tokens, in sample order, computed
        under the model's precision (autocast for mixed) and returned in float32 or wider."""
        # A position predicts the next token: the last column predicts nothing.
        keep = torch.nn.functional.pad(sel, (0, 1))
        with self.prec.autocast():
            logits = self.net.completion_logits(module, ids, valid, keep)
        logits = self._float(logits)
        if temperature != 1.0:
            logits = logits / temperature
        return logits

    def _token_logprobs(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    # ---- ops -------------------------------------------------------------------------

    def info(self, o: dict | None = None) -> dict:
        n = sum(p.numel() for p in self.module.parameters())
        trainable = sum(p.numel() for p in self.params.values() if p.requires_grad)
        return {"params": n, "trainable": trainable,
                "lora": self.lora.describe() if self.lora else None,
                "device": str(self.device),
                "dtype": self.opts["dtype"], "version": self.version, "steps": self.steps,
                "path": self.opts["path"], "arch": self.net.arch_name(), "vocab": self.net.vocab,
                "cores": available_cores(), "precision": self.prec.name,
                "gradient_checkpointing": self.ckpt is not None,
                "context": self.net.context, "reference": self.ref is not None,
                "backend": "torch", "threads": torch.get_num_threads(),
                "chat": self.chat.on, "system": self.chat.system}

    def generate(self, o: dict) -> dict:
        tok = self.tok
        on, system = self.chat.settings("generate", o)
        enc, rendered = [], []
        for i, prompt in enumerate(o["prompts"]):
            r = self.chat.prompt(prompt, on, system, "generate", f"prompts[{i + 1}]")
            rendered.append(r)
            p = r.ids
            if not p:
                raise ConfigError(f"generate: 'prompts[{i + 1}]' encodes to no tokens")
            if len(p) + o["max_tokens"] > self.net.context:
                raise ConfigError(f"generate: 'prompts[{i + 1}]' has {len(p)} tokens; with "
                                  f"max_tokens {o['max_tokens']} that exceeds the model's "
                                  f"context of {self.net.context}")
            enc.append(p)
        n, T = o["n"], o["max_tokens"]
        rows = [p for p in enc for _ in range(n)]
        B, P = len(rows), max(len(p) for p in rows)
        seed = o["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
        g = torch.Generator(device=self.device).manual_seed(seed)
        ids, valid, pos = self._left_padded(rows)
        next_pos = valid.long().sum(1)
        eos = set(tok.eos_ids)
        stops = o["stop"]
        out_ids: list[list[int]] = [[] for _ in range(B)]
        out_lp: list[list[float]] = [[] for _ in range(B)]
        finish = ["length"] * B
        done = [False] * B
        with torch.inference_mode(), self.prec.autocast():
            logits, state = self.net.prefill(ids, valid, pos, P + T)
            for s in range(T):
                nxt, lp = self._sample(logits, o, g)
                nl, ll = nxt.tolist(), lp.tolist()
                for i in range(B):
                    if done[i]:
                        continue
                    out_ids[i].append(nl[i])
                    out_lp[i].append(ll[i])
                    if nl[i] in eos:
                        done[i], finish[i] = True, "stop"
                    elif stops and self._hit_stop(out_ids[i], stops):
                        done[i], finish[i] = True, "stop"
                if all(done) or s == T - 1:
                    break
                logits = self.net.decode(nxt, next_pos + s, state, P + s + 1)
        samples = []
        for i in range(B):
            body = out_ids[i][:-1] if out_ids[i] and out_ids[i][-1] in eos else out_ids[i]
            text = tok.decode(body)
            if stops:
                cut = [k for k in (text.find(st) for st in stops) if k >= 0]
                if cut:
                    text = text[:min(cut)]
            samples.append({"text": text, "prompt_ids": rows[i], "ids": out_ids[i],
                            "logprobs": out_lp[i], "finish": finish[i],
                            "version": self.version})
        return {"samples": [samples[j * n:(j + 1) * n] for j in range(len(enc))],
                "prompts": [r.text for r in rendered], "messages": [r.messages for r in rendered]}

    def _hit_stop(self, ids: list[int], stops: list[str]) -> bool:
        text = self.tok.decode(ids)
        return any(st in text for st in stops)

    def _sample(self, logits: torch.Tensor, o: dict,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens and their log-probs under the distribution actually sampled from.

        Greedy (temperature 0) is a point mass, whose log-prob (0) says nothing; it
        reports the model's own log-probs instead (temperature 1, no filtering).
        """
        x = self._float(logits)
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("generate: the model produced non-finite logits "
                                 "(diverged weights?)")
        if o["temperature"] == 0:
            nxt = x.argmax(-1)
            return nxt, torch.log_softmax(x, -1).gather(-1, nxt[:, None]).squeeze(-1)
        x = x / o["temperature"]
        k = o["top_k"]
        if k and k < x.shape[-1]:
            kth = x.topk(k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if o["top_p"] < 1.0:
            sx, si = x.sort(dim=-1, descending=True)
            sp = sx.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p: drop a token when the
            # mass before it already does (the first token always stays).
            drop = (sp.cumsum(-1) - sp) >= o["top_p"]
            x = x.scatter(-1, si, sx.masked_fill(drop, float("-inf")))
        logp = torch.log_softmax(x, -1)
        # Exponential-race sampling: argmax p/E with E ~ Exp(1) draws from p; the draws
        # come from the request's generator only.
        e = torch.empty_like(logp).exponential_(generator=g)
        nxt = (logp.exp() / e).argmax(-1)
        return nxt, logp.gather(-1, nxt[:, None]).squeeze(-1)

    def logprobs(self, o: dict) -> dict:
        if o["reference"] and self.ref is None:
            raise StateError("logprobs: 'reference' needs a reference model "
                             "(load with reference=true)")
        seqs = self._tokenize(o["samples"], "logprobs", o)
        ids, valid, sel = self._batch(seqs)
        counts = [s.targets() for s in seqs]
        targets = ids[:, 1:][sel]
        result: dict[str, Any] = {}
        with torch.inference_mode():
            lp = self._token_logprobs(
                self._completion_logits(self.module, ids, valid, sel, o["temperature"]), targets)
            result["logprobs"] = [x.tolist() for x in lp.split(counts)]
            if o["reference"]:
                rlp = self._token_logprobs(
                    self._completion_logits(self.ref, ids, valid, sel, o["temperature"]),
                    targets)
                result["ref_logprobs"] = [x.tolist() for x in rlp.split(counts)]
        return result

    def backward(self, o: dict) -> dict:
        if o["kl"] > 0 and self.ref is None:
            raise StateError("backward: 'kl' > 0 needs a reference model "
                             "(load with reference=true)")
        seqs = self._tokenize(o["samples"], "backward", o, recorded=o["loss"] == "ppo")
        adv = o["advantages"]
        # A sample contributes when it has an advantage (or the loss needs none) and at
        # least one completion token; the others are dropped before the forward pass.
        keep = [i for i, s in enumerate(seqs)
                if s.targets() and (adv is None or adv[i] is not None)]
        stats = {"loss": 0.0, "kl": None, "entropy": None, "tokens": 0,
                 "samples": len(keep), "clip_frac": 0.0}
        if not keep:
            self.acc["calls"] += 1
            return stats
        seqs_k = [seqs[i] for i in keep]
        counts = [s.targets() for s in seqs_k]
        ntok = sum(counts)
        for name, own in (("total_tokens", ntok), ("total_samples", len(keep))):
            if o[name] is not None and o[name] < own:
                raise ConfigError(f"backward: '{name}' is {o[name]}, less than this "
                                  f"micro-batch's own {own}")
        ids, valid, sel = self._batch(seqs_k)
        targets = ids[:, 1:][sel]
        dev, fdt = self.device, self._float(torch.empty((), dtype=self.dtype)).dtype
        seg = torch.repeat_interleave(torch.arange(len(keep)), torch.tensor(counts)).to(dev)
        with self.ckpt.training() if self.ckpt else contextlib.nullcontext():
            logits = self._completion_logits(self.module, ids, valid, sel, o["temperature"])
        logp_all = torch.log_softmax(logits, dim=-1)
        lp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        ent_sum = entropy_sum(logp_all) if o["entropy"] else None
        loss_kind = o["loss"]
        if loss_kind == "sft":
            tok_loss = -lp
        else:
            a = torch.tensor([adv[i] for i in keep], dtype=fdt, device=dev)[seg]
            if loss_kind == "pg":
                tok_loss = -a * lp
            else:
                old = torch.tensor([x for i in keep for x in o["samples"][i]["logprobs"]],
                                   dtype=fdt, device=dev)
                ratio = torch.exp(lp - old)
                l1 = -a * ratio
                l2 = -a * torch.clamp(ratio, 1.0 - o["clip_low"], 1.0 + o["clip_high"])
                tok_loss = torch.maximum(l1, l2)
                stats["clip_frac"] = float((l2 > l1).to(fdt).mean())
        kl_sum = None
        if o["kl"] > 0:
            with torch.no_grad():
                ref_lp = self._token_logprobs(
                    self._completion_logits(self.ref, ids, valid, sel, o["temperature"]), targets)
            if o["kl_estimator"] == "k1":
                kl_tok = lp - ref_lp
            else:
                d = ref_lp - lp
                kl_tok = torch.exp(d) - d - 1.0
            tok_loss = tok_loss + o["kl"] * kl_tok
            kl_sum = float(kl_tok.detach().sum())
        if o["agg"] == "token-mean":
            denom = o["total_tokens"] or ntok
            loss = tok_loss.sum() / denom
        else:
            per_seq = torch.stack([x.sum() / x.numel() for x in tok_loss.split(counts)])
            denom = o["total_samples"] or len(keep)
            loss = per_seq.sum() / denom
        loss = loss * o["scale"]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError(f"backward: the loss is {value}; no gradient was accumulated")
        del logits, logp_all  # (N, V) each: not held through the backward pass
        try:
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        except BaseException:
            self._discard_grads()
            raise
        stats.update(loss=value, tokens=ntok,
                     entropy=None if ent_sum is None else ent_sum / ntok,
                     kl=None if kl_sum is None else kl_sum / ntok)
        acc = self.acc
        acc["calls"] += 1
        acc["loss"] += value
        if ent_sum is not None:
            acc["entropy"] += ent_sum
            acc["entropy_tokens"] += ntok
        acc["tokens"] += ntok
        acc["samples"] += len(keep)
        if kl_sum is not None:
            acc["kl"] += kl_sum
            acc["kl_tokens"] += ntok
        return stats

    def step(self, o: dict) -> dict:
        acc = self.acc
        if acc["calls"] == 0:
            raise StateError("step: no backward since the last step (call backward first)")
        with_grad = [p for p in self.params.values() if p.grad is not None]
        if self.scaler and with_grad:
            self.scaler.unscale_(self.opt)  # the norm and clipping see true gradients
        norm_t = torch.nn.utils.get_total_norm([p.grad for p in with_grad], 2.0) \
            if with_grad else None
        norm = float(norm_t) if norm_t is not None else 0.0
        if not math.isfinite(norm) and self.scaler and with_grad:
            return self._skip_overflow(norm)
        if not math.isfinite(norm):
            self._discard_grads()
            raise NonFiniteError(f"step: the gradient norm is {norm}; the step was not "
                                 f"applied and the gradients were discarded")
        if o["clip"] and with_grad:
            torch.nn.utils.clip_grads_with_norm_(with_grad, o["clip"], norm_t)
        lr = o["lr"] if o["lr"] is not None else self.lr_at(self.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.scaler and with_grad:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        self.version += 1
        return self._step_result(norm, lr)

    def _step_result(self, norm: float, lr: float) -> dict:
        acc = self.acc
        result = {"loss": acc["loss"], "grad_norm": norm, "lr": lr,
                  "kl": acc["kl"] / acc["kl_tokens"] if acc["kl_tokens"] else None,
                  "entropy": (acc["entropy"] / acc["entropy_tokens"]
                              if acc["entropy_tokens"] else None),
                  "tokens": acc["tokens"], "samples": acc["samples"], "version": self.version}
        if self.scaler:
            result["skipped"] = False
            result["loss_scale"] = float(self.scaler.get_scale())
        self._reset_accum()
        return result

    def _skip_overflow(self, norm: float) -> dict:
        """fp16-mixed: the scaled gradients overflowed. As torch.amp.GradScaler does,
        the update is skipped (weights, step count and version unchanged) and the
        loss scale lowered; early steps do this until the scale fits the gradients."""
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        result = self._step_result(norm, self.lr_at(self.steps))
        result["skipped"] = True
        return result

    # ---- judge verdicts --------------------------------------------------------------

    def _candidate_ids(self, cands: list[str], prefix: str) -> tuple[list[int], list[str]]:
        """One token id per candidate (`prefix` + candidate encoded without special
        tokens): its only token, or its first when no other candidate starts with the
        same one. Returns the ids and the candidates cut to their first token."""
        ids, cut, owner = [], [], {}
        for i, c in enumerate(cands):
            t = self.tok.encode_text(prefix + c)
            if not t:
                raise ConfigError(f"next_logprobs: 'candidates[{i + 1}]' encodes to no tokens")
            if t[0] in owner:
                j = owner[t[0]]
                raise ConfigError(
                    f"next_logprobs: 'candidates[{j + 1}]' ({cands[j]!r}) and "
                    f"'candidates[{i + 1}]' ({c!r}) start with the same token "
                    f"{self.tok.decode([t[0]])!r}, so the next token cannot tell them apart "
                    f"(use candidates that differ in their first token, e.g. a scale of "
                    f"single digits)")
            owner[t[0]] = i
            ids.append(t[0])
            if len(t) > 1:
                cut.append(c)
        return ids, cut

    def next_logprobs(self, o: dict) -> dict:
        """Log-probs (natural log, temperature 1, no filtering) of each candidate as the
        next token after each prompt: the verdict distribution of a model judge.

        A prompt ending in a space, with a tokenizer that writes a word's leading space
        into the word's token (byte-level BPE: 'Score:' + 'Ġ7'), is scored without that
        space and with it put before each candidate, so the model sees the split it was
        trained on, not a lone space token. Prompts are encoded as `generate` encodes
        them. Returns {"logprobs": [[float per candidate] per prompt], "mass": [sum of
        the candidates' probabilities per prompt], "top": [most likely next token per
        prompt, decoded], "top_logprob": [its log-prob], "first_only": [candidates cut to
        their first token]}.
        """
        cands = o["candidates"]
        if len(set(cands)) != len(cands):
            raise ConfigError("next_logprobs: 'candidates' has duplicates")
        plain, cut = self._candidate_ids(cands, "")
        spaced: list[int] | None = None
        space = self.tok.encode_text(" ")
        try:
            sp, sp_cut = self._candidate_ids(cands, " ")
            if all(t not in space for t in sp):
                spaced, cut = sp, sorted(set(cut) | set(sp_cut))
        except ConfigError:
            spaced = None  # the spaced forms collide: keep the prompt's space as it is
        rows, which = [], []
        for i, p in enumerate(o["prompts"]):
            if not isinstance(p, str):
                raise ConfigError(f"next_logprobs: 'prompts[{i + 1}]' must be a string")
            heal = spaced is not None and p.endswith(" ")
            ids = self.tok.encode_prompt(p[:-1] if heal else p)
            if not ids:
                raise ConfigError(f"next_logprobs: 'prompts[{i + 1}]' encodes to no tokens")
            if len(ids) > self.net.context:
                raise ConfigError(f"next_logprobs: 'prompts[{i + 1}]' has {len(ids)} tokens, "
                                  f"more than the model's context of {self.net.context}")
            rows.append(ids)
            which.append(spaced if heal else plain)
        out: dict[str, list] = {"logprobs": [], "mass": [], "top": [], "top_logprob": [],
                                "first_only": cut}
        chunk = 16  # bounds the prefill's memory on long judge prompts
        with torch.inference_mode():
            for s in range(0, len(rows), chunk):
                part = rows[s:s + chunk]
                B, P = len(part), max(len(r) for r in part)
                ids, valid, pos = self._left_padded(part)
                logits, _ = self.net.prefill(ids, valid, pos, P)
                logp = torch.log_softmax(self._float(logits), dim=-1)
                if not bool(torch.isfinite(logp).all()):
                    raise NonFiniteError("next_logprobs: the model produced non-finite "
                                         "logits (diverged weights?)")
                top_lp, top_id = logp.max(-1)
                for i in range(B):
                    cand = torch.tensor(which[s + i], dtype=torch.long, device=logp.device)
                    lp = logp[i].gather(0, cand)
                    out["logprobs"].append(lp.tolist())
                    out["mass"].append(float(lp.exp().sum()))
                    t = int(top_id[i])
                    # A special token (end of turn) decodes to nothing: name it by id.
                    out["top"].append(self.tok.decode([t]) or f"<token {t}>")
                    out["top_logprob"].append(float(top_lp[i]))
        return out

    # ---- checkpoints -----------------------------------------------------------------

    def _rng_state(self) -> dict:
        npst = np.random.get_state()
        py = random.getstate()
        st = {"torch": _b64(torch.get_rng_state()), "generator": _b64(self.gen.get_state()),
              "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
              "python": [py[0], list(py[1]), py[2]]}
        if torch.cuda.is_available():
            st["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
        return st

    def _set_rng_state(self, st: dict) -> None:
        torch.set_rng_state(_unb64(st["torch"]))
        self.gen.set_state(_unb64(st["generator"]))
        n = st["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        p = st["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in st["cuda"]])

    def save(self, o: dict) -> dict:
        d = o["dir"]
        if o["merged"]:
            return self._save_merged(d)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise EngineIOError(f"save: cannot create '{d}': {exc}") from None
        files = self._save_weights(d)
        tensors: list[tuple[str, torch.Tensor]] = []
        for name, p in self.params.items():
            for key, t in self.opt.state.get(p, {}).items():
                tensors.append((f"{name}.{key}", t))
        write_safetensors(os.path.join(d, "optimizer.safetensors"), tensors, {"format": "pt"})
        files.append("optimizer.safetensors")
        meta = {"format": CHECKPOINT_FORMAT, "engine": __version__, "backend": "torch",
                "path": self.opts["path"], "dtype": self.opts["dtype"],
                "base_model": self._base_model(), "lora": self.opts["lora"],
                "arch": self.net.arch(), "version": self.version, "steps": self.steps,
                "schedule": {k: self.opts[k] for k in ("schedule", "lr", "warmup",
                                                       "total_steps", "min_lr_ratio")},
                "optimizer": {"type": "adamw", "betas": self.opts["betas"],
                              "eps": self.opts["eps"],
                              "weight_decay": self.opts["weight_decay"]},
                "params": {k: list(p.shape) for k, p in self.params.items()},
                "rng": self._rng_state(), "precision": self.prec.name}
        if self.scaler:
            meta["scaler"] = self.scaler.state_dict()
        # engine.json last: its presence means the files before it are complete.
        tmp = os.path.join(d, "engine.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for name in files:
            full = os.path.join(d, name)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, os.path.join(d, "engine.json"))
        _fsync_dir(d)
        files.append("engine.json")
        return {"files": files, "version": self.version}

    def restore(self, o: dict) -> dict:
        d = o["dir"]
        mpath = os.path.join(d, "engine.json")
        if not os.path.isfile(mpath):
            raise ConfigError(f"restore: '{mpath}' does not exist (not a checkpoint, or an "
                              f"incomplete one)")
        try:
            with open(mpath) as f:
                meta = json.load(f)
        except ValueError as exc:
            raise ConfigError(f"restore: '{mpath}' is not valid JSON: {exc}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"restore: '{mpath}' has format {meta.get('format')!r}, "
                              f"this engine reads {CHECKPOINT_FORMAT}")
        mine, theirs = self.net.arch(), meta.get("arch") or {}
        diff = [f"{k} {theirs.get(k)!r} (checkpoint) != {mine.get(k)!r} (model)"
                for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if diff:
            raise ConfigError(f"restore: checkpoint '{d}' is of another model: " + "; ".join(diff))
        if meta.get("lora") != self.opts["lora"]:
            raise ConfigError(f"restore: checkpoint '{d}' has lora {meta.get('lora')}, "
                              f"this model has lora {self.opts['lora']}")
        shapes = {k: list(p.shape) for k, p in self.params.items()}
        if meta.get("params") != shapes:
            raise ConfigError(f"restore: checkpoint '{d}' has other parameters than this model")
        opt_tensors = load_safetensors(os.path.join(d, "optimizer.safetensors"), "restore")
        # Everything is read and checked before the model changes.
        self._load_weights(d)
        self.opt.state.clear()
        fused = bool(self.opt.defaults.get("fused"))
        for name, p in self.params.items():
            st = {}
            for key in ("step", "exp_avg", "exp_avg_sq"):
                t = opt_tensors.get(f"{name}.{key}")
                if t is not None:
                    # The fused (CUDA) kernel keeps step counts on the device.
                    st[key] = (t.to(p.device) if fused else t) if key == "step" \
                        else t.to(device=p.device, dtype=p.dtype)
            if st:
                self.opt.state[p] = st
        self._set_rng_state(meta["rng"])
        if self.scaler and isinstance(meta.get("scaler"), dict):
            self.scaler.load_state_dict(meta["scaler"])
        self.version = int(meta["version"])
        self.steps = int(meta["steps"])
        self._discard_grads()
        return {"version": self.version}

    def _base_model(self) -> str:
        """The base model as a checkpoint records it: `builtin:NAME` or an absolute
        directory (so `init=` a checkpoint needs no model= repeated)."""
        p = self.base_path
        return p if p.startswith("builtin:") else os.path.abspath(p)

    def _save_weights(self, d: str) -> list[str]:
        if self.lora is None:
            return self.net.save_weights(d)
        files = self.lora.save(d)
        if isinstance(self.net, BuiltinNet):
            # A builtin base is seed-initialised, not a file: keep it with the adapter.
            files = self.net.save_weights(d) + files
        return files

    def _load_weights(self, d: str) -> None:
        if self.lora is None or isinstance(self.net, BuiltinNet):
            self.net.load_weights(d)  # a builtin model's file holds base + adapter
        else:
            self.lora.load(d)

    def _save_merged(self, d: str) -> dict:
        """A standalone model in `d` (replaced atomically): for HF models a directory
        AutoModelForCausalLM.from_pretrained loads (config, model.safetensors with any
        LoRA adapter folded in, tokenizer and chat template, generation config); for
        builtin models model.safetensors with the adapter folded in."""
        parent = os.path.dirname(os.path.abspath(d)) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(d))}.tmp-",
                                   dir=parent)
        except OSError as exc:
            raise EngineIOError(f"save: cannot create a directory in '{parent}': {exc}") from None
        try:
            sd = self.lora.merged_state_dict() if self.lora else None
            if isinstance(self.net, BuiltinNet):
                sd = sd if sd is not None else self.module.state_dict()
                write_safetensors(os.path.join(tmp, "model.safetensors"), list(sd.items()),
                                  {"format": "pt", "arch": json.dumps(self.net.arch())})
            else:
                torch_export.save_hf_merged(self.module, self.tok.tok, sd, tmp)
            with open(os.path.join(tmp, torch_export.EXPORT_RECORD), "w") as f:
                json.dump({"version": self.version, "steps": self.steps,
                           "base_model": self._base_model(), "lora": self.opts["lora"]}, f)
            files = sorted(os.listdir(tmp))
            torch_export.replace_dir(tmp, d)
        except OSError as exc:
            raise EngineIOError(f"save: cannot write '{d}': {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"files": files, "version": self.version, "merged": True}

    # ---- weight sync -----------------------------------------------------------------

    def export(self, o: dict) -> dict:
        path = o["path"]
        meta = {"format": "pt", "arch": json.dumps(self.net.arch())}
        if path is None:
            # One file per model, rewritten in place by every export and removed on
            # close (torch_io.ExportFile).
            path, n = self.export_file.write(list(self.params.items()), meta, self.version)
            return {"path": path, "version": self.version, "bytes": n}
        try:
            n = export_weights(path, list(self.params.items()), meta, self.version)
        except OSError as exc:
            raise EngineIOError(f"export: cannot write '{path}': {exc}") from None
        return {"path": path, "version": self.version, "bytes": n}

    def import_weights(self, o: dict) -> dict:
        path = o["path"]
        meta = import_weights(path, self.params, "import")
        self.imported.add(path)
        if o["version"] is not None:
            self.version = o["version"]
        elif str(meta.get("version", "")).isdigit():
            self.version = int(meta["version"])
        if o["remove"]:
            forget(path)
            self.imported.discard(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return {"version": self.version}

    def close(self, o: dict | None = None) -> None:
        self.export_file.close()
        for path in self.imported:  # kept mappings would pin the files' pages
            forget(path)
        self.imported.clear()
        self.opt.state.clear()
        self.module = self.ref = self.net = None  # type: ignore[assignment]
        self.params.clear()
