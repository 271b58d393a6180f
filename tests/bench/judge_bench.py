#!/usr/bin/env python3
"""Judge throughput: 512 judge calls against tests/servers/teacher.py (in its own
process, 100 ms of added latency per request) at concurrency 64, through rlhost
(rl.judge over rl.endpoint: libcurl multi) and, side by side in the same run, through
the official `openai` SDK's AsyncOpenAI with asyncio (max_retries=0, a semaphore of
64). The ideal is 512 x 0.1 / 64 = 0.8 s. Prints one JSON object for tests/bench/run:

  judge_ideal_s             the ideal wall time
  judge_rlhost_s            best rlhost wall time (first, uncached run; fresh cache)
  judge_rlhost_efficiency   ideal / rlhost wall time (aim: >= 0.9)
  judge_openai_s            best AsyncOpenAI wall time
  judge_openai_efficiency   ideal / AsyncOpenAI wall time
  judge_speedup_vs_openai   AsyncOpenAI time / rlhost time (aim: > 1)
  judge_cached_s            a fully cached rerun (same cache, no HTTP)
  judge_cached_fraction     cached rerun time / first run time
  judge_cached_requests     HTTP requests the server saw during the cached rerun (0)

rlhost times are taken inside the recipe with rl.fs.monotonic() around rl.score (no
process start-up); the SDK's around asyncio.gather (client already built).

  .venv/bin/python tests/bench/judge_bench.py --host build/rlhost [--repeat 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, CONC, LAT = 512, 64, 0.1

RECIPE = r"""
local rl = require "rl"
local url, cache = arg[1], arg[2]
local ep = rl.endpoint { url = url, model = "teach", concurrency = %d, max_retries = 0, timeout = 30 }
local j = rl.judge { endpoint = ep, cache = cache, max_tokens = 64 }
local s = {}
for i = 1, %d do s[i] = { prompt = "bench prompt " .. i, text = ("answer %%d "):format(i):rep(i %% 7 + 1) } end
local t0 = rl.fs.monotonic()
local r, info = rl.score(j, s)
local dt = rl.fs.monotonic() - t0
io.stdout:write(rl.json.encode { wall_s = dt, ok = info.summary.ok, hits = info.summary.cache_hits }, "\n")
""" % (CONC, N)

# The same prompts the judge sends, for the SDK (the rubric text is rl.judge's default).
PROMPT = ("Please act as an impartial judge and evaluate the quality of the response. Rating "
          "from 1 to 10 as [[n]].\n\n[The Start of the Prompt]\nbench prompt {i}\n[The End of the Prompt]\n\n"
          "[The Start of the Response]\n{c}\n[The End of the Response]")


def start_teacher() -> tuple[subprocess.Popen, str]:
    cfg = json.dumps({"latency": LAT, "rule": "len10"})
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "servers", "teacher.py"),
                          "--config", cfg], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    port = int(line.split()[1])
    return p, f"http://127.0.0.1:{port}"


def server(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"{}")


def run_rlhost(host: str, url: str, cache: str, script: str) -> dict:
    p = subprocess.run([host, script, url, cache], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"rlhost failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


async def run_openai(url: str) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench-key", max_retries=0, timeout=30)
    sem = asyncio.Semaphore(CONC)

    async def one(i: int):
        c = ("answer %d " % i) * (i % 7 + 1)
        async with sem:
            r = await client.chat.completions.create(
                model="teach", temperature=0, max_tokens=64,
                messages=[{"role": "user", "content": PROMPT.format(i=i, c=c)}])
            return r.choices[0].message.content

    t0 = time.monotonic()
    out = await asyncio.gather(*(one(i) for i in range(1, N + 1)))
    dt = time.monotonic() - t0
    await client.close()
    assert len(out) == N and all("[[" in o for o in out)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default=os.path.join(ROOT, "build", "rlhost"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    proc, base = start_teacher()
    url = base + "/v1"
    best_rl = best_oa = best_cached = float("inf")
    cached_requests = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "judge_bench.lua")
            with open(script, "w") as f:
                f.write(RECIPE)
            for k in range(args.repeat):
                cache = os.path.join(tmp, f"cache{k}.sqlite")
                first = run_rlhost(args.host, url, cache, script)
                assert first["ok"] == N and first["hits"] == 0, first
                best_rl = min(best_rl, first["wall_s"])
                server(base, "/_config", {"reset": True})
                again = run_rlhost(args.host, url, cache, script)
                assert again["hits"] == N, again
                cached_requests = server(base, "/_stats").get("requests", 0)
                best_cached = min(best_cached, again["wall_s"])
                best_oa = min(best_oa, asyncio.run(run_openai(url)))
    finally:
        proc.terminate()
        proc.wait()
    ideal = N * LAT / CONC
    print(json.dumps({
        "judge_ideal_s": ideal,
        "judge_rlhost_s": best_rl,
        "judge_rlhost_efficiency": ideal / best_rl,
        "judge_openai_s": best_oa,
        "judge_openai_efficiency": ideal / best_oa,
        "judge_speedup_vs_openai": best_oa / best_rl,
        "judge_cached_s": best_cached,
        "judge_cached_fraction": best_cached / best_rl,
        "judge_cached_requests": cached_requests,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
