"""End to end: field cases from public bug reports (issue 9), each against the real host,
a real teacher over loopback HTTP (tests/servers/teacher.py) and the real engine.

- A judge reply cut off at max_tokens (OpenAI finish_reason "length", Anthropic
  stop_reason "max_tokens") mentions scores in passing; it must be no verdict (kind
  parse, raw kept), so the fallback scorer takes over and the metrics count it.
- info.summary through rl.fallback counts the requests and cache hits of the judge
  inside (it said requests=0).
- A teacher sample cut at max_tokens is scored and trained without an EOS, over both
  transports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "servers"))
from teacher import CUT_JUDGE, CUT_PAIR, Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
RLAIF = os.path.join(ROOT, "recipes", "rlaif.lua")

pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")

PRELUDE = r"""
local rl = require "rl"
local function out(t) io.stdout:write(rl.json.encode(t), "\n") io.stdout:flush() end
local function samples(n)
  local s = {}
  for i = 1, n do s[i] = { prompt = "question " .. i, text = string.rep("y", i) } end
  return s
end
"""
APIS = ["openai-chat", "anthropic"]


def run_lua(tmp_path, body, timeout=180):
    path = tmp_path / "script.lua"
    path.write_text(PRELUDE + body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RL_TEACHER")}
    p = subprocess.run([RLHOST, str(path)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def teacher():
    t = Teacher(rule="len10").start()
    yield t
    t.stop()


@pytest.mark.parametrize("api", APIS)
def test_judge_reply_cut_at_max_tokens_is_no_verdict(tmp_path, teacher, api):
    teacher.configure(fault_rate=1.0, faults=["max_tokens"])
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", api="{api}", model="teach"}}
local judge = rl.judge{{endpoint = ep, max_tokens = 64}}
local r, info = rl.score(judge, samples(4))
local res = {{direct = {{}}}}
for i = 1, 4 do
  res.direct[i] = {{r = r[i] or false, kind = info[i].kind, raw = info[i].raw,
                    finish = info[i].finish, message = info[i].message}}
end
local chain = rl.fallback{{judge, function() return 0.25 end, names = {{"judge", "native"}},
                          quiet = true}}
local r2, info2 = rl.score(chain, samples(4))
res.chain = {{r = r2, source = info2[1].source, fallback = info2[1].fallback,
              summary = info2.summary, failures = chain:stats().failures}}
local pw = rl.judge{{endpoint = ep, mode = "pairwise"}}
local r3, info3 = rl.score(pw, {{{{prompt = "p", text = "a"}}, {{prompt = "p", text = "bb"}}}})
res.pair = {{r = r3[1] or false, kind = info3[1].kind, raw = info3[1].raw}}
out(res)
"""
    res = run_lua(tmp_path, body)[0]
    for d in res["direct"]:
        # before: the last [[9]] in the broken-off text was read as the verdict (0.9)
        assert d["r"] is False and d["kind"] == "parse", d
        assert d["raw"] == CUT_JUDGE and d["finish"] == "length"
        assert "max_tokens=64" in d["message"]
    c = res["chain"]
    assert c["r"] == [0.25] * 4 and c["source"] == "native" and c["fallback"] is True
    assert c["summary"]["failed"] == 0 and c["summary"]["requests"] == 4
    assert c["failures"] == {"parse": 4}
    assert res["pair"]["r"] is False and res["pair"]["kind"] == "parse"
    assert CUT_PAIR in res["pair"]["raw"]
    assert teacher.stats()["fault_max_tokens"] == 4 + 4 + 2


def test_summary_through_a_chain_counts_the_judge_inside(tmp_path, teacher):
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach"}}
local judge = rl.judge{{endpoint = ep, cache = "judge.sqlite"}}
local chain = rl.fallback{{judge, rl.reward.length{{target = 4}}, quiet = true}}
local _, a = rl.score(chain, samples(8))
local _, b = rl.score(chain, samples(8))
out{{first = a.summary, again = b.summary, last = rl.score_summary()}}
"""
    res = run_lua(tmp_path, body)[0]
    first, again = res["first"], res["again"]
    assert first["requests"] == 8 and first["cache_hits"] == 0, first
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0
    assert first["ok"] == 8
    assert again["requests"] == 0 and again["cache_hits"] == 8, again
    assert res["last"] == again
    assert teacher.stats()["requests"] == 8


def test_rlaif_metrics_count_cut_judge_replies(tmp_path, teacher):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade the answer to {prompt} (correct: {reference}) from {lo} to {hi}.\n"
                      "[The Start of the Response]\n{completion}\n[The End of the Response]\n")
    teacher.configure(fault_rate=0.4, faults=["max_tokens"], seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RL_TEACHER")}
    env.update(RL_TEACHER_URL=teacher.url, RL_TEACHER_MODEL="teach")
    p = subprocess.run([RLHOST, RLAIF, "dir=run", "steps=2", f"rubric={rubric}", "threads=1",
                        "plot=false", "prompts=4", "group=4", "eval_every=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2
    cut = teacher.stats()["fault_max_tokens"]
    assert 0 < cut < 32
    # every cut reply is a parse failure the native reward scored instead
    assert sum(r["score_failures"].get("parse", 0) for r in rows) == cut
    assert sum(r["scored_by"]["native"] for r in rows) == cut
    assert sum(r["scored_by"]["judge"] for r in rows) == 32 - cut
    assert all(r["unscored"] == 0 for r in rows)


@pytest.mark.parametrize("api", APIS)
def test_teacher_samples_cut_at_max_tokens_train_without_eos(tmp_path, teacher, api):
    teacher.configure(fault_rate=1.0, faults=["max_tokens"])
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", api="{api}", model="teach"}}
local s = rl.generate(ep, {{"sort 3 2 1 =", "abc"}}, {{n = 2, max_tokens = 8}})
local res = {{}}
for _, tr in ipairs{{"embedded", "worker"}} do
  local m <close> = rl.model{{path = "builtin:tiny", transport = tr, threads = 1}}
  local lp = m:logprobs(s)
  local b = m:backward(s, {{loss = "pg", advantages = {{1, -1, 0.5, 0.5}}}})
  m:step{{}}
  local st = m:train_step(s, {{loss = "sft"}})
  local n = {{}}
  for i = 1, #lp do n[i] = #lp[i] end
  res[tr] = {{lp = n, backward = b.tokens, train_step = st.tokens}}
end
local bytes = {{}}
for i, x in ipairs(s) do bytes[i] = #x.text; assert(x.finish == "length", x.finish) end
res.bytes = bytes
out(res)
"""
    res = run_lua(tmp_path, body)[0]
    total = sum(res["bytes"])
    assert total > 0
    for tr in ("embedded", "worker"):
        # byte-level tokens: one per byte of text, and no EOS (before: one more each)
        assert res[tr]["lp"] == res["bytes"], (tr, res)
        assert res[tr]["backward"] == total and res[tr]["train_step"] == total, (tr, res)
