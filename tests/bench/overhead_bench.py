#!/usr/bin/env python3
"""Host overhead: the same generate + train_step loop on builtin:tiny, driven once by a
Lua recipe through rlhost (tests/bench/overhead.lua, embedded engine) and once by a plain
Python loop calling the engine's dispatch directly (no JSON, no host), each in a fresh
process, alternating, best of --repeat. Prints one JSON object for tests/bench/run:

  overhead_ratio      rlhost loop wall time / Python loop wall time (aim: <= 1.03)
  overhead_lua_s      best rlhost loop time;  overhead_python_s: best Python loop time
  overhead_cpu_ratio  the same for CPU time of the driving process (steadier when busy)
  overhead_same_work  true when both loops produced the same sum of step losses

Both loops time only the steps (after the model is loaded). The workload is defined in
overhead.lua and mirrored in python_loop() below: change both together.

  .venv/bin/python tests/bench/overhead_bench.py --host build/rlhost [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reward(text: str) -> float:
    b = text.encode("utf-8")
    if not b:
        return 0.0
    return sum(1 for c in b if 97 <= c <= 122) / len(b)


def python_loop(steps: int, prompts: int, group: int, max_tokens: int, seed: int,
                lr: float) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from rlengine.dispatch import dispatch

    def call(req: dict) -> dict:
        r = dispatch(req)
        if not r.get("ok"):
            raise SystemExit(f"engine error: {r['error']['message']}")
        return r

    h = call({"id": 1, "op": "load", "path": "builtin:tiny", "seed": seed, "lr": lr})["model"]
    t0, c0 = time.monotonic(), time.process_time()
    loss_sum, tokens, rid = 0.0, 0, 1
    for s in range(steps):
        ps = [f"task {s}-{j}: " for j in range(prompts)]
        rid += 1
        gen = call({"id": rid, "op": "generate", "model": h, "prompts": ps, "n": group,
                    "max_tokens": max_tokens, "seed": seed + s})
        samples = [x for grp in gen["samples"] for x in grp]
        adv = []
        for g in range(prompts):
            r = [reward(samples[g * group + j]["text"]) for j in range(group)]
            total = 0.0
            for x in r:
                total = total + x
            mean = total / group
            adv += [x - mean for x in r]
        rid += 1
        call({"id": rid, "op": "backward", "model": h, "samples": samples, "loss": "pg",
              "advantages": adv})
        rid += 1
        st = call({"id": rid, "op": "step", "model": h, "clip": 1.0})
        loss_sum += st["loss"]
        tokens += st["tokens"]
    return {"loop_s": time.monotonic() - t0, "cpu_s": time.process_time() - c0,
            "loss_sum": loss_sum, "tokens": tokens, "steps": steps}


def last_json(out: str) -> dict:
    return json.loads([l for l in out.splitlines() if l.strip().startswith("{")][-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default=os.path.join(ROOT, "build", "rlhost"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--worker", action="store_true",
                    help="also time the worker transport (overhead_worker_ratio)")
    ap.add_argument("--python-loop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = {"steps": args.steps, "prompts": 8, "group": 4, "max_tokens": 32, "seed": 0,
            "lr": 1e-4}
    if args.python_loop:
        print(json.dumps(python_loop(**work)))
        return 0

    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "scripts"), HF_HUB_OFFLINE="1")

    def run(cmd: list[str]) -> dict:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                           check=True)
        return last_json(p.stdout)

    py_cmd = [sys.executable, os.path.abspath(__file__), "--python-loop",
              "--steps", str(args.steps)]
    lua_cmd = [args.host, "tests/bench/overhead.lua", f"steps={args.steps}"]
    py_runs, lua_runs, wrk_runs = [], [], []
    for _ in range(args.repeat):
        py_runs.append(run(py_cmd))
        lua_runs.append(run(lua_cmd))
        if args.worker:
            wrk_runs.append(run(lua_cmd + ['transport="worker"']))
    py_best = min(r["loop_s"] for r in py_runs)
    lua_best = min(r["loop_s"] for r in lua_runs)
    out = {
        "overhead_ratio": lua_best / py_best,
        "overhead_lua_s": lua_best,
        "overhead_python_s": py_best,
        "overhead_steps": args.steps,
        # CPU seconds of the driving process (all its threads): steadier than wall time
        # on a busy machine. Not comparable for the worker, whose engine runs elsewhere.
        "overhead_cpu_ratio": (min(r["cpu_s"] for r in lua_runs)
                               / min(r["cpu_s"] for r in py_runs)),
        "overhead_same_work": all(r["loss_sum"] == py_runs[0]["loss_sum"]
                                  for r in py_runs + lua_runs + wrk_runs),
    }
    if wrk_runs:
        out["overhead_worker_ratio"] = min(r["loop_s"] for r in wrk_runs) / py_best
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
