#!/usr/bin/env python
"""Engine benchmarks; prints one JSON object on stdout (used by `make bench`).

Parts (all when none is chosen):
  --python-loop  N steps of generate + train_step (backward then step, pg loss) on
                 builtin:tiny, driven directly through rlengine.host.call, the entry
                 point the embedded host uses. The Lua twin of this loop (same requests)
                 gives the host-overhead ratio. The loop, per step s (0-based):
                   generate  prompts=PROMPTS[:prompts], n=group, max_tokens, seed=s
                   reward    fraction of the letters a, e, i, o, u in each text
                   advantage reward minus its group's mean
                   backward  samples, advantages, loss="pg"
                   step      clip=1.0
                 after `load path=builtin:tiny seed=0 lr=1e-3`.
  --generation   tokens/s of builtin:small at several batch sizes with the KV cache,
                 and the machine's float32 matmul rate measured in the same run; each
                 reported as a fraction of the FLOP bound 2 * params * tokens / FLOP/s.
  --sync         seconds to export builtin:small's weights and import them into a
                 worker process (through /dev/shm or the temp dir), against one
                 in-memory copy of the same bytes. The first sync creates the file;
                 the figure reported is the best later one (the file rewritten in
                 place, as in a training run), with the first and the median beside.
  --lora-sync    the same with a LoRA adapter (r=16, all linear layers) on
                 builtin:small: only the adapter crosses; bytes and seconds per sync
                 beside the full model's (`bytes_ratio` = adapter / full bytes).

Run: PYTHONPATH=scripts .venv/bin/python tests/bench/engine_bench.py [--part ...] [opts]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlengine import host  # noqa: E402  (sets the OpenMP wait policy before torch loads)

PROMPTS = ["Write a word:", "Name a colour:", "Say hello:", "Count to three:",
           "An animal:", "A city:", "A short poem:", "Your name:"]


def call(**req) -> dict:
    rep = json.loads(host.call(json.dumps(req)))
    if not rep["ok"]:
        raise RuntimeError(f"{req['op']}: {rep['error']['kind']}: {rep['error']['message']}")
    return rep


def reward(text: str) -> float:
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def python_loop(a: argparse.Namespace) -> dict:
    load = {"op": "load", "path": "builtin:tiny", "seed": 0, "lr": 1e-3}
    if a.threads:
        load["threads"] = a.threads
    t0 = time.perf_counter()
    h = call(**load)["model"]
    t_load = time.perf_counter() - t0
    prompts = PROMPTS[:a.prompts]
    t0 = time.perf_counter()
    for s in range(a.steps):
        groups = call(op="generate", model=h, prompts=prompts, n=a.group,
                      max_tokens=a.max_tokens, seed=s)["samples"]
        samples, adv = [], []
        for g in groups:
            r = [reward(x["text"]) for x in g]
            mean = sum(r) / len(r)
            samples += g
            adv += [x - mean for x in r]
        call(op="backward", model=h, samples=samples, advantages=adv, loss="pg")
        call(op="step", model=h, clip=1.0)
    wall = time.perf_counter() - t0
    call(op="close", model=h)
    return {"steps": a.steps, "prompts": len(prompts), "group": a.group,
            "max_tokens": a.max_tokens, "load_s": t_load, "wall_s": wall,
            "per_step_s": wall / a.steps}


def matmul_flops(n: int, seconds: float) -> float:
    import torch
    x = torch.randn(n, n)
    y = torch.randn(n, n)
    torch.mm(x, y)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(x, y)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2.0 * n ** 3 * reps / dt


def generation(a: argparse.Namespace) -> dict:
    load = {"op": "load", "path": "builtin:small", "seed": 0}
    if a.threads:
        load["threads"] = a.threads
    rep = call(**load)
    h, params = rep["model"], rep["info"]["params"]
    call(op="generate", model=h, prompts=["warm up"], max_tokens=2, seed=0)
    flops = matmul_flops(a.matmul_n, a.matmul_s)
    out = {"model": "builtin:small", "params": params, "max_tokens": a.gen_tokens,
           "matmul_n": a.matmul_n, "matmul_flops": flops, "batches": {}}
    for b in a.batches:
        # Short prompts: the bound counts generated tokens only.
        prompts = [f"P{i:03d}:" for i in range(b)]
        t0 = time.perf_counter()
        groups = call(op="generate", model=h, prompts=prompts, max_tokens=a.gen_tokens,
                      seed=1)["samples"]
        dt = time.perf_counter() - t0
        tokens = sum(len(g[0]["ids"]) for g in groups)
        ptok = sum(len(g[0]["prompt_ids"]) for g in groups)
        tps = tokens / dt
        out["batches"][str(b)] = {
            "seconds": dt, "tokens": tokens, "prompt_tokens": ptok, "tokens_per_s": tps,
            "flop_bound_fraction": 2.0 * params * tps / flops,
            # The prefill's FLOPs are real work too; this one counts them.
            "flop_bound_fraction_with_prompt": 2.0 * params * (tokens + ptok) / dt / flops}
    out["matmul_flops_after"] = matmul_flops(a.matmul_n, a.matmul_s)
    call(op="close", model=h)
    return out


def sync(a: argparse.Namespace, lora: dict | None = None) -> dict:
    import torch
    load: dict = {"path": "builtin:small", "seed": 0}
    if lora:
        load["lora"] = lora
    if a.threads:
        load["threads"] = a.threads
    trainer = call(op="load", **load)["model"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"))
    w = subprocess.Popen([sys.executable, "-m", "rlengine.worker"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env)

    def wcall(**req) -> dict:
        w.stdin.write((json.dumps(req) + "\n").encode())
        w.stdin.flush()
        rep = json.loads(w.stdout.readline())
        if not rep["ok"]:
            raise RuntimeError(f"worker {req['op']}: {rep['error']['message']}")
        return rep

    try:
        gen = wcall(id=1, op="load", **dict(load, seed=1))["model"]
        runs = []
        for r in range(a.sync_reps):
            t0 = time.perf_counter()
            exp = call(op="export", model=trainer)
            t1 = time.perf_counter()
            wcall(id=10 + r, op="import", model=gen, path=exp["path"],
                  version=exp["version"])
            t2 = time.perf_counter()
            runs.append({"export_s": t1 - t0, "import_s": t2 - t1, "total_s": t2 - t0,
                         "bytes": exp["bytes"], "path_dir": os.path.dirname(exp["path"])})
    finally:
        w.stdin.close()
        w.wait(timeout=60)
    from rlengine.dispatch import model_object
    params = list(model_object(trainer).params.values())
    dst = [torch.empty_like(p) for p in params]
    copies = []
    with torch.no_grad():
        for _ in range(a.sync_reps):
            t0 = time.perf_counter()
            for d, p in zip(dst, params, strict=True):
                d.copy_(p)
            copies.append(time.perf_counter() - t0)
    call(op="close", model=trainer)
    # The first sync creates the file (page allocation); the later ones rewrite it in
    # place, which is the steady state of a training run.
    first = runs[0]
    steady = runs[1:] or runs
    best = min(steady, key=lambda x: x["total_s"])
    copy_s = min(copies)
    return {"model": "builtin:small", "lora": lora, "bytes": best["bytes"],
            "dir": best["path_dir"],
            "reps": a.sync_reps, "sync_s": best["total_s"], "export_s": best["export_s"],
            "import_s": best["import_s"],
            "sync_s_median": statistics.median(x["total_s"] for x in steady),
            "first_sync_s": first["total_s"],
            "memcopy_s": copy_s, "ratio": best["total_s"] / copy_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python-loop", action="store_true")
    p.add_argument("--generation", action="store_true")
    p.add_argument("--sync", action="store_true")
    p.add_argument("--lora-sync", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--gen-tokens", type=int, default=16)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--matmul-s", type=float, default=0.5)
    p.add_argument("--sync-reps", type=int, default=4)
    a = p.parse_args()
    a.batches = [int(x) for x in a.batches.split(",") if x]
    everything = not (a.python_loop or a.generation or a.sync or a.lora_sync)
    result: dict = {"engine": "torch", "cpus": os.cpu_count()}
    if everything or a.python_loop:
        result["python_loop"] = python_loop(a)
    if everything or a.generation:
        result["generation"] = generation(a)
    if everything or a.sync or a.lora_sync:
        result["sync"] = sync(a)
    if everything or a.lora_sync:
        lo = sync(a, {"r": 16, "alpha": 32, "targets": "all-linear"})
        full = result["sync"]
        result["sync_lora"] = {**lo, "full_bytes": full["bytes"],
                               "full_sync_s": full["sync_s"],
                               "bytes_ratio": lo["bytes"] / full["bytes"]}
    import torch
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
