#!/usr/bin/env python
"""Train-step benchmark on a SmolLM2-135M-sized Llama; prints one JSON object on stdout
(used by `make bench`).

The model: models/smollm2-135m-instruct when `make models` has made it, else a
random-init LlamaForCausalLM of the same configuration (vocab 49152, 30 layers, width
576, tied embeddings) written to a temporary directory; the timing does not depend on
the weights' values. The work: one optimizer step on 8 samples of 48 prompt + 152
completion tokens (fixed random ids), pg loss with advantages, grad-norm clipping 1.0,
AdamW lr 1e-5.

Rows (each measured in a fresh process, so its peak RSS is its own):
  fp32        full fine-tune in float32
  fp32_ckpt   the same with gradient checkpointing
  lora        LoRA r=16, alpha=32, all linear layers (when the engine has `lora`)
  lora_ckpt   the same with gradient checkpointing
  bf16_mixed  full fine-tune, float32 master weights, bfloat16 autocast
Each row runs the rlhost engine (backward + step through rlengine.host.call, the
embedded entry point) and a plain loop written as a transformers/peft user would write
it (full logits, log_softmax, gather, backward, clip_grad_norm_, torch AdamW with its
defaults), alternately, in the same run. Reported per row: seconds per step (the
median of --steps after one warm-up step), peak RSS in MiB, and the ratios
engine / plain (aim <= 1.0).

Run: PYTHONPATH=scripts .venv/bin/python tests/bench/train_bench.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
            rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2)
BATCH, PROMPT, COMPLETION = 8, 48, 152
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
ROWS = {"fp32": {}, "fp32_ckpt": {"ckpt": True}, "lora": {"lora": LORA},
        "lora_ckpt": {"lora": LORA, "ckpt": True}, "bf16_mixed": {"precision": "bf16-mixed"}}


def make_random_llama(out: Path) -> None:
    """A random-init Llama with SmolLM2-135M's configuration and a small tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{chr(33 + i): 3 + i for i in range(90)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(out)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOL)).save_pretrained(out)


def batch(vocab: int) -> tuple[list[dict], list[float]]:
    import random
    rng = random.Random(0)
    samples = [{"prompt_ids": [rng.randrange(3, vocab) for _ in range(PROMPT)],
                "ids": [rng.randrange(3, vocab) for _ in range(COMPLETION)]}
               for _ in range(BATCH)]
    adv = [rng.uniform(-1, 1) for _ in range(BATCH)]
    return samples, adv


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_steps(model: str, row: dict, steps: int, threads: int) -> list[float]:
    from rlengine import host

    def call(**req) -> dict:
        rep = json.loads(host.call(json.dumps(req)))
        if not rep["ok"]:
            raise RuntimeError(f"{req['op']}: {rep['error']['message']}")
        return rep

    load = {"op": "load", "path": model, "lr": 1e-5, "threads": threads}
    if "lora" in row:
        load["lora"] = row["lora"]
    if row.get("ckpt"):
        load["gradient_checkpointing"] = True
    if "precision" in row:
        load["precision"] = row["precision"]
    h = call(**load)["model"]
    samples, adv = batch(call(op="info", model=h)["vocab"])
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        call(op="backward", model=h, samples=samples, advantages=adv, loss="pg")
        call(op="step", model=h, clip=1.0)
        times.append(time.perf_counter() - t0)
    return times[1:]


def plain_steps(model: str, row: dict, steps: int, threads: int) -> list[float]:
    """The same step as a transformers (+peft) user writes it."""
    import contextlib
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    if "lora" in row:
        from peft import LoraConfig, get_peft_model
        m = get_peft_model(m, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                         lora_dropout=0.0, target_modules="all-linear"))
    if row.get("ckpt"):
        base = m.get_base_model() if hasattr(m, "get_base_model") else m
        kw = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    m.train()  # what a training loop does (the configuration has no dropout)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    samples, adv = batch(m.config.vocab_size)
    ids = torch.tensor([s["prompt_ids"] + s["ids"] for s in samples])
    a = torch.tensor(adv)[:, None]
    mixed = row.get("precision") == "bf16-mixed"
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
        with ctx:
            logits = m(input_ids=ids, attention_mask=torch.ones_like(ids),
                       use_cache=False).logits
        logp = torch.log_softmax(logits[:, PROMPT - 1:-1].float(), -1)
        lp = logp.gather(-1, ids[:, PROMPT:, None]).squeeze(-1)
        loss = -(a * lp).sum() / lp.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[1:]


def one(a: argparse.Namespace) -> int:
    kind, name = a.one.split(":")
    fn = engine_steps if kind == "engine" else plain_steps
    times = fn(a.model, ROWS[name], a.steps, a.threads)
    print(json.dumps({"seconds": statistics.median(times), "times": times,
                      "peak_rss_mib": peak_rss_mib()}))
    return 0


def has_lora() -> bool:
    from rlengine.protocol import LOAD
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return "lora" in LOAD


def run_one(kind: str, name: str, model: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{kind}:{name}", "--model", model,
           "--steps", str(a.steps), "--threads", str(a.threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"), HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{kind}:{name} failed: {p.stderr[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2, help="measured steps per row and side")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--model", default="")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.threads:
        from rlengine.cores import available_cores
        a.threads = available_cores()
    if a.one:
        return one(a)
    out: dict = {"batch": BATCH, "prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                 "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        shipped = ROOT / "models" / "smollm2-135m-instruct"
        if not model and (shipped / "config.json").is_file():
            model = str(shipped)
        if not model:
            model = str(Path(tmp) / "llama")
            make_random_llama(Path(model))
        out["model"] = "smollm2-135m-instruct" if model == str(shipped) else \
            ("random-init SmolLM2-135M config" if not a.model else model)
        lora = has_lora()
        for name in a.rows.split(","):
            if "lora" in ROWS[name] and not lora:
                out[name] = {"skipped": "the engine has no 'lora' load option (or peft "
                                        "is missing)"}
                continue
            eng = run_one("engine", name, model, a)
            plain = run_one("plain", name, model, a)
            out[name] = {"engine_s": eng["seconds"], "plain_s": plain["seconds"],
                         "engine_rss_mib": eng["peak_rss_mib"],
                         "plain_rss_mib": plain["peak_rss_mib"],
                         "time_ratio": eng["seconds"] / plain["seconds"],
                         "rss_ratio": eng["peak_rss_mib"] / plain["peak_rss_mib"]}
            print(f"train {name}: {json.dumps(out[name])}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
