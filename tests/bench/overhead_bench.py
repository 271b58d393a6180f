#!/usr/bin/env python3
"""Host overhead: the same generate + train_step loop on builtin:tiny, driven once by a
Lua recipe through rlhost (tests/bench/overhead.lua, embedded engine) and once by
tests/bench/engine_bench.py --python-loop (a plain Python loop calling the engine's
entry point rlengine.host.call), each in a fresh process, alternating, best of
--repeat. Prints one JSON object for tests/bench/run:

  overhead_ratio      rlhost loop wall time / Python loop wall time (aim: <= 1.03)
  overhead_lua_s      best rlhost loop time;  overhead_python_s: best Python loop time
  overhead_cpu_ratio  the same for CPU time of the driving process (steadier when the
                      machine is busy; wall times on a shared 2-core box are not)
  overhead_same_work  true when both loops trained the same way (equal loss sums)

engine_bench's reward counts vowels among Unicode letters, which Lua cannot reproduce
bit for bit on the random bytes an untrained model writes; here its `reward` is
swapped for the ASCII-only one overhead.lua uses, so both loops send the very same
requests (checked through the step losses). Everything else is engine_bench's loop.

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


def ascii_reward(text: str) -> float:
    letters = [c | 0x20 for c in text.encode("utf-8") if 65 <= c <= 90 or 97 <= c <= 122]
    return sum(c in b"aeiou" for c in letters) / len(letters) if letters else 0.0


def python_loop(steps: int) -> dict:
    """engine_bench.py's loop, instrumented: step losses and CPU time are recorded by
    wrapping its `call`, its reward made ASCII-only (see the module docstring)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
    import engine_bench as eb

    rec = {"loss_sum": 0.0, "cpu0": None}
    inner = eb.call

    def call(**req):
        if req["op"] == "generate" and rec["cpu0"] is None:
            rec["cpu0"] = time.process_time()
        rep = inner(**req)
        if req["op"] == "step":
            rec["loss_sum"] += rep["loss"]
            rec["cpu1"] = time.process_time()
        return rep

    eb.call, eb.reward = call, ascii_reward
    a = argparse.Namespace(threads=0, steps=steps, prompts=8, group=4, max_tokens=16)
    r = eb.python_loop(a)
    return {"loop_s": r["wall_s"], "cpu_s": rec["cpu1"] - rec["cpu0"],
            "loss_sum": rec["loss_sum"], "steps": steps}


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
    if args.python_loop:
        print(json.dumps(python_loop(args.steps)))
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
