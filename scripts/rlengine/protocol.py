"""Request schema and strict validation (see scripts/PROTOCOL.md). Torch-free.

Every op has a table of fields; `validate` turns a request dict into a complete options
dict (defaults filled in) or raises ConfigError naming the op and field at fault.
JSON null for an optional field means "not given" (Lua's nil may travel as null).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from .errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Field:
    check: Callable[[str, str, Any], Any]
    default: Any = None
    required: bool = False


def _is_int(v: Any) -> bool:
    # Lua floats with integral values (4.0) may cross the bridge as 4.0; accept them.
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _desc(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def integer(lo: int | None = None, hi: int | None = None) -> Callable:
    def check(op: str, name: str, v: Any) -> int:
        if not _is_int(v):
            raise ConfigError(f"{op}: '{name}' must be an integer, got {_desc(v)}")
        v = int(v)
        if lo is not None and v < lo:
            raise ConfigError(f"{op}: '{name}' must be an integer >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ConfigError(f"{op}: '{name}' must be an integer <= {hi}, got {v}")
        return v
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable:
    def check(op: str, name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{op}: '{name}' must be a number, got {_desc(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{op}: '{name}' must be finite, got {v}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            rel = ">" if lo_open else ">="
            raise ConfigError(f"{op}: '{name}' must be {rel} {lo}, got {v}")
        if hi is not None and v > hi:
            raise ConfigError(f"{op}: '{name}' must be <= {hi}, got {v}")
        return v
    return check


def boolean(op: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{op}: '{name}' must be a boolean, got {_desc(v)}")
    return v


def string(nonempty: bool = True) -> Callable:
    def check(op: str, name: str, v: Any) -> str:
        if not isinstance(v, str):
            raise ConfigError(f"{op}: '{name}' must be a string, got {_desc(v)}")
        if nonempty and not v:
            raise ConfigError(f"{op}: '{name}' must not be empty")
        return v
    return check


def choice(*options: str) -> Callable:
    def check(op: str, name: str, v: Any) -> str:
        if v not in options:
            opts = ", ".join(repr(o) for o in options)
            shown = repr(v) if isinstance(v, str) else _desc(v)
            raise ConfigError(f"{op}: '{name}' must be one of {opts}, got {shown}")
        return v
    return check


def prompts(op: str, name: str, v: Any) -> list[str]:
    if not isinstance(v, list):
        raise ConfigError(f"{op}: '{name}' must be a list of strings, got {_desc(v)}")
    if not v:
        raise ConfigError(f"{op}: '{name}' must not be empty")
    for i, p in enumerate(v):
        if not isinstance(p, str):
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be a string, got {_desc(p)}")
    return v


def stop_list(op: str, name: str, v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ConfigError(f"{op}: '{name}' must be a string or a list of strings, got {_desc(v)}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be a non-empty string")
    return v


def candidates(op: str, name: str, v: Any) -> list[str]:
    """Next-token candidates (judge verdicts such as "7" or "yes"): non-empty strings."""
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{op}: '{name}' must be a non-empty list of strings, got {_desc(v)}")
    for i, c in enumerate(v):
        if not isinstance(c, str) or not c:
            got = "an empty string" if c == "" else _desc(c)
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be a non-empty string, got {got}")
    return v


def betas(op: str, name: str, v: Any) -> list[float]:
    if not isinstance(v, list) or len(v) != 2:
        raise ConfigError(f"{op}: '{name}' must be a list of two numbers, got {_desc(v)}")
    out = [number(0.0)(op, f"{name}[{i + 1}]", b) for i, b in enumerate(v)]
    for i, b in enumerate(out):
        if b >= 1.0:
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be < 1, got {b}")
    return out


def _int_list(op: str, where: str, v: Any) -> list[int]:
    if not isinstance(v, list):
        raise ConfigError(f"{op}: '{where}' must be a list of integers, got {_desc(v)}")
    out = []
    for j, x in enumerate(v):
        if not _is_int(x) or x < 0:
            raise ConfigError(f"{op}: '{where}[{j + 1}]' must be a token id (integer >= 0), "
                              f"got {_desc(x)}")
        out.append(int(x))
    return out


def samples(op: str, name: str, v: Any) -> list[dict]:
    """Samples as produced by generate (prompt_ids/ids) or by others (prompt/text).

    Fields other than the ones read here ride along from Lua (source, version, extra
    prompt fields) and are ignored on purpose: a sample is data, not options.
    """
    if not isinstance(v, list):
        raise ConfigError(f"{op}: '{name}' must be a list of samples, got {_desc(v)}")
    if not v:
        raise ConfigError(f"{op}: '{name}' must not be empty")
    out = []
    for i, s in enumerate(v):
        where = f"{name}[{i + 1}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{op}: '{where}' must be an object, got {_desc(s)}")
        norm: dict[str, Any] = {}
        has_ids = s.get("ids") is not None or s.get("prompt_ids") is not None
        if has_ids:
            if s.get("ids") is None or s.get("prompt_ids") is None:
                raise ConfigError(f"{op}: '{where}' needs both 'prompt_ids' and 'ids'")
            norm["prompt_ids"] = _int_list(op, f"{where}.prompt_ids", s["prompt_ids"])
            norm["ids"] = _int_list(op, f"{where}.ids", s["ids"])
        else:
            if not isinstance(s.get("prompt"), str) or not isinstance(s.get("text"), str):
                raise ConfigError(f"{op}: '{where}' needs 'prompt_ids' and 'ids', "
                                  f"or 'prompt' and 'text' strings")
            norm["prompt"] = s["prompt"]
            norm["text"] = s["text"]
            # "length": cut at max_tokens, so no EOS is appended (any other value, or
            # none, means the text ended there).
            fin = s.get("finish")
            if fin is not None and not isinstance(fin, str):
                raise ConfigError(f"{op}: '{where}.finish' must be a string such as 'stop' "
                                  f"or 'length', got {_desc(fin)}")
            norm["finish"] = fin
        lp = s.get("logprobs")
        if lp is not None:
            if not isinstance(lp, list):
                raise ConfigError(f"{op}: '{where}.logprobs' must be a list of numbers")
            vals = []
            for j, x in enumerate(lp):
                if isinstance(x, bool) or not isinstance(x, (int, float)):
                    raise ConfigError(f"{op}: '{where}.logprobs[{j + 1}]' must be a number, "
                                      f"got {_desc(x)}")
                vals.append(float(x))
            norm["logprobs"] = vals
        out.append(norm)
    return out


def advantages(op: str, name: str, v: Any) -> list[float | None]:
    if not isinstance(v, list):
        raise ConfigError(f"{op}: '{name}' must be a list of numbers or nulls, got {_desc(v)}")
    out: list[float | None] = []
    for i, a in enumerate(v):
        if a is None:
            out.append(None)
            continue
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be a number or null, got {_desc(a)}")
        if not math.isfinite(a):
            raise ConfigError(f"{op}: '{name}[{i + 1}]' must be finite, got {a}")
        out.append(float(a))
    return out


LORA_KEYS = ("r", "alpha", "dropout", "targets")


def lora(op: str, name: str, v: Any) -> dict:
    """The `lora` load option: {r=, alpha=, dropout=, targets=} -> all four filled in
    (alpha defaults to 2 * r, dropout to 0, targets to "all-linear")."""
    if not isinstance(v, dict):
        raise ConfigError(f"{op}: '{name}' must be an object {{r=, alpha=, dropout=, "
                          f"targets=}}, got {_desc(v)}")
    for key in v:
        if key not in LORA_KEYS:
            raise ConfigError(f"{op}: " + unknown_name("field", f"{name}.{key}",
                                                       [f"{name}.{k}" for k in LORA_KEYS]))
    if v.get("r") is None:
        raise ConfigError(f"{op}: '{name}.r' (the adapter rank) is required")
    r = integer(1)(op, f"{name}.r", v["r"])
    alpha = v.get("alpha")
    alpha = 2.0 * r if alpha is None else number(0.0, lo_open=True)(op, f"{name}.alpha", alpha)
    dropout = v.get("dropout")
    dropout = 0.0 if dropout is None else number(0.0)(op, f"{name}.dropout", dropout)
    if dropout >= 1.0:
        raise ConfigError(f"{op}: '{name}.dropout' must be < 1, got {dropout}")
    targets = v.get("targets")
    if targets is None or targets == "all-linear":
        targets = "all-linear"
    elif isinstance(targets, list) and targets:
        for i, t in enumerate(targets):
            if not isinstance(t, str) or not t:
                raise ConfigError(f"{op}: '{name}.targets[{i + 1}]' must be a module name "
                                  f"such as \"q_proj\", got {_desc(t)}")
    else:
        raise ConfigError(f"{op}: '{name}.targets' must be \"all-linear\" or a non-empty "
                          f"list of module names, got {_desc(targets)}")
    # Integral alphas stay integers so adapter_config.json reads as PEFT writes it.
    if alpha.is_integer():
        alpha = int(alpha)
    return {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}


LOAD = {
    "path": Field(string(), required=True),
    "backend": Field(choice("torch"), "torch"),
    "device": Field(choice("auto", "cpu", "cuda"), "auto"),
    # dtype is the parameters' storage type; precision (torch_precision.py) adds
    # autocast and a gradient scaler. Both unset: fp32 on the CPU, bf16-mixed on CUDA.
    "dtype": Field(choice("float32", "float64", "bfloat16", "float16"), None),
    "precision": Field(choice("fp32", "bf16-mixed", "bf16", "fp16-mixed"), None),
    "gradient_checkpointing": Field(boolean, False),
    "threads": Field(integer(1), None),
    "seed": Field(integer(0, 2**63 - 1), 0),
    "reference": Field(boolean, False),
    "lr": Field(number(0.0, lo_open=True), 1e-5),
    "weight_decay": Field(number(0.0), 0.0),
    "betas": Field(betas, [0.9, 0.999]),
    "eps": Field(number(0.0, lo_open=True), 1e-8),
    "schedule": Field(choice("constant", "linear", "cosine"), "constant"),
    "warmup": Field(integer(0), 0),
    "total_steps": Field(integer(1), None),
    "min_lr_ratio": Field(number(0.0, 1.0), 0.0),
    "lora": Field(lora, None),
}

SAMPLES_OPTS = {
    "samples": Field(samples, required=True),
    "temperature": Field(number(0.0, lo_open=True), 1.0),
}

OPS: dict[str, dict[str, Field]] = {
    "ping": {},
    "load": LOAD,
    "info": {},
    "generate": {
        "prompts": Field(prompts, required=True),
        "n": Field(integer(1), 1),
        "max_tokens": Field(integer(1), 64),
        "temperature": Field(number(0.0), 1.0),
        "top_p": Field(number(0.0, 1.0, lo_open=True), 1.0),
        "top_k": Field(integer(0), 0),
        "stop": Field(stop_list, []),
        "seed": Field(integer(0, 2**63 - 1), None),
    },
    "logprobs": {
        **SAMPLES_OPTS,
        "reference": Field(boolean, False),
    },
    "next_logprobs": {
        "prompts": Field(prompts, required=True),
        "candidates": Field(candidates, required=True),
    },
    "backward": {
        **SAMPLES_OPTS,
        "loss": Field(choice("sft", "pg", "ppo"), "pg"),
        "advantages": Field(advantages, None),
        "kl": Field(number(0.0), 0.0),
        "kl_estimator": Field(choice("k1", "k3"), "k3"),
        "entropy": Field(boolean, True),  # the statistic; false skips its (N, V) pass
        "agg": Field(choice("token-mean", "seq-mean"), "token-mean"),
        "scale": Field(number(), 1.0),
        "clip_low": Field(number(0.0, 1.0), 0.2),
        "clip_high": Field(number(0.0), 0.2),
        # 0 is a batch whose samples have no completion token (all cut at max_tokens
        # before their first): nothing in it trains.
        "total_tokens": Field(integer(0), None),
        "total_samples": Field(integer(0), None),
    },
    "step": {
        "clip": Field(number(0.0), None),
        "lr": Field(number(0.0, lo_open=True), None),
    },
    "save": {"dir": Field(string(), required=True), "merged": Field(boolean, False)},
    "restore": {"dir": Field(string(), required=True)},
    "export": {"path": Field(string(), None)},
    "import": {
        "path": Field(string(), required=True),
        "version": Field(integer(0), None),
        "remove": Field(boolean, False),
    },
    "close": {},
}

# Ops that act on a loaded model and so carry "model": <handle>.
MODEL_OPS = frozenset(op for op in OPS if op not in ("ping", "load"))


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    return f"unknown {kind} '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")


def validate(op: str, req: dict) -> dict:
    """Check a request's fields for `op`; return the options with defaults filled in."""
    spec = OPS[op]
    envelope = {"id", "op"} | ({"model"} if op in MODEL_OPS else set())
    for key in req:
        if key not in spec and key not in envelope:
            raise ConfigError(f"{op}: " + unknown_name("field", str(key), sorted(spec)))
    opts: dict[str, Any] = {}
    for name, f in spec.items():
        v = req.get(name)
        if v is None:
            if f.required:
                raise ConfigError(f"{op}: missing required field '{name}'")
            opts[name] = list(f.default) if isinstance(f.default, list) else f.default
        else:
            opts[name] = f.check(op, name, v)
    if op == "backward":
        _check_backward(opts)
    return opts


def _check_backward(o: dict) -> None:
    n = len(o["samples"])
    adv = o["advantages"]
    if o["loss"] == "sft":
        if adv is not None:
            raise ConfigError("backward: 'advantages' is not used by loss 'sft' "
                              "(drop the samples you do not want to train on)")
    else:
        if adv is None:
            raise ConfigError(f"backward: loss '{o['loss']}' needs 'advantages'")
        if len(adv) != n:
            raise ConfigError(f"backward: 'advantages' has {len(adv)} entries for {n} samples")
    if o["loss"] == "ppo":
        for i, s in enumerate(o["samples"]):
            if "logprobs" not in s:
                raise ConfigError(f"backward: loss 'ppo' needs 'samples[{i + 1}].logprobs' "
                                  f"(the log-probs recorded at generation)")
