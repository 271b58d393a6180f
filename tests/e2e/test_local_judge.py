"""verdict="logprobs" against an HTTP judge that returns top log-probs
(tests/servers/teacher.py: OpenAI chat `logprobs`/`top_logprobs`, completions
`logprobs`), and the local judge end to end in the host."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "servers"))
from teacher import Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))

PRELUDE = r"""
local rl = require "rl"
local function out(t) io.stdout:write(rl.json.encode(t), "\n") io.stdout:flush() end
local function samples()
  local s = {}
  for d = 1, 8 do s[d] = { prompt = "q" .. d, text = "answer " .. d } end
  return s
end
"""


def run_lua(tmp_path, body, timeout=120):
    path = tmp_path / "script.lua"
    path.write_text(PRELUDE + body)
    p = subprocess.run([RLHOST, str(path)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=timeout)
    return p, [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def expected(d: int, k: int, mass: float = 0.9) -> tuple[float, float]:
    """The teacher's verdict distribution for digit d (see teacher.verdict_dist), cut to
    its top k tokens: (expected score, verdict mass)."""
    dist = sorted([(" " + str(d), 0.6 * mass), (str(d), 0.2 * mass), (" " + str(d + 1), 0.2 * mass),
                   (" The", 1 - mass)], key=lambda t: -t[1])[:k]
    probs = {}
    for tok, p in dist:
        if tok.strip().isdigit():
            probs[int(tok)] = probs.get(int(tok), 0) + p
    m = sum(probs.values())
    return sum(v * p for v, p in probs.items()) / m, m


@pytest.fixture
def teacher():
    t = Teacher(rule="digit").start()
    yield t
    t.stop()


@pytest.mark.parametrize("api,k", [("openai-chat", 20), ("openai-chat", 2),
                                   ("openai-completions", 5)])
def test_endpoint_logprobs_verdicts(tmp_path, teacher, api, k):
    body = f"""
local ep = rl.endpoint {{ url = "{teacher.url}", api = "{api}", model = "t" }}
local j = rl.judge {{ endpoint = ep, verdict = "logprobs", top_logprobs = {k} }}
local r, info = rl.score(j, samples())
for i = 1, 8 do out {{ r = r[i], score = info[i].score, mass = info[i].mass, kind = info[i].kind }} end
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    assert len(lines) == 8
    for d, got in enumerate(lines, start=1):
        ev, mass = expected(d, k)
        assert got["score"] == pytest.approx(ev, abs=1e-9)
        assert got["r"] == pytest.approx((ev - 1) / 8, abs=1e-9)
        assert got["mass"] == pytest.approx(mass, abs=1e-9)
    assert teacher.stats()["logprobs_requests"] == 8


def test_endpoint_logprobs_low_mass_is_a_parse_failure(tmp_path, teacher):
    teacher.configure(logprob_mass=0.3)
    body = f"""
local ep = rl.endpoint {{ url = "{teacher.url}", model = "t" }}
local r, info = rl.score(rl.judge {{ endpoint = ep, verdict = "logprobs" }}, samples())
out {{ r = r[1], kind = info[1].kind, message = info[1].message, raw = info[1].raw,
       failures = info.summary.failures }}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    got = lines[0]
    assert got.get("r") is None and got["kind"] == "parse"
    assert "30.0% of the judge's next-token probability" in got["message"]
    assert '" The"' in got["message"] and got["failures"] == {"parse": 8}


def test_endpoint_without_logprobs_is_a_parse_failure(tmp_path, teacher):
    # A prompt the teacher does not take for a judge prompt gets an echo without
    # log-probs, as from a server that does not offer them.
    body = f"""
local ep = rl.endpoint {{ url = "{teacher.url}", model = "t" }}
local j = rl.judge {{ endpoint = ep, verdict = "logprobs", rubric = "Q {{prompt}} A {{completion}} Score: " }}
local r, info = rl.score(j, samples())
out {{ r = r[1], kind = info[1].kind, message = info[1].message }}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    assert lines[0].get("r") is None and lines[0]["kind"] == "parse"
    assert "no top log-probs" in lines[0]["message"]


def test_endpoint_logprobs_pairwise(tmp_path):
    with Teacher(rule="longer") as t:
        body = f"""
local ep = rl.endpoint {{ url = "{t.url}", model = "t" }}
local j = rl.judge {{ endpoint = ep, verdict = "logprobs", mode = "pairwise" }}
local r, info = rl.score(j, {{ {{ prompt = "q", text = "a longer answer" }}, {{ prompt = "q", text = "short" }} }})
out {{ r1 = r[1], r2 = r[2], v = info[1].verdicts, consistent = info[1].consistent }}
"""
        p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    # The winner's verdict ("A" or "B") gets 0.54 + 0.18 of the 0.9 on A and B.
    win = 0.72 / 0.9
    assert lines[0]["r1"] == pytest.approx(win, abs=1e-9)
    assert lines[0]["r2"] == pytest.approx(1 - win, abs=1e-9)
    assert lines[0]["v"] == ["A", "B"] and lines[0]["consistent"] is True


def test_anthropic_logprobs_is_a_config_error(tmp_path, teacher):
    body = f"""
local ep = rl.endpoint {{ url = "{teacher.url}", api = "anthropic", model = "t" }}
rl.judge {{ endpoint = ep, verdict = "logprobs" }}
"""
    p, _ = run_lua(tmp_path, body)
    assert p.returncode == 2 and "Anthropic API does not return" in p.stderr


def test_local_judge_in_a_worker_scores_a_batch(tmp_path):
    """The host's rl.judge{model=rl.model{transport="worker"}} next to a policy model:
    logprobs verdicts equal to the judge model's own next-token distribution."""
    body = r"""
local policy <close> = rl.model { path = "builtin:tiny", threads = 1 }
local judge_model <close> = rl.model { path = "builtin:tiny", seed = 3, transport = "worker", threads = 1 }
local j = rl.judge { model = judge_model, verdict = "logprobs", min_mass = 0,
                     rubric = "Q: {prompt}\nA: {completion}\nScore ({lo}-{hi}): " }
local s = policy:generate({ "abc", "cba" }, { n = 2, max_tokens = 6, seed = 1 })
local r, info = rl.score(j, s)
local digits = {}
for d = 1, 9 do digits[d] = tostring(d) end
for i, x in ipairs(s) do
  local lp = judge_model:next_logprobs({ j:prompt_for(x) }, digits).logprobs[1]
  out { r = r[i], lp = lp, mass = info[i].mass, pid = judge_model:info().pid }
end
"""
    p, lines = run_lua(tmp_path, body, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(lines) == 4
    for got in lines:
        probs = [math.exp(x) for x in got["lp"]]
        ev = sum((k + 1) * q for k, q in enumerate(probs)) / sum(probs)
        # float32 logits in a left-padded batch of 4 vs one prompt alone
        assert got["r"] == pytest.approx((ev - 1) / 8, abs=1e-5)
        assert got["mass"] == pytest.approx(sum(probs), rel=1e-4)
        assert got["pid"] != os.getpid() and got["pid"] is not None


sys.path.insert(0, os.path.join(ROOT, "scripts"))
from rlengine import model_path  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct"


@pytest.mark.skipif(SMOLLM2 not in model_path.available(),
                    reason=f"{SMOLLM2} is not built (run `make models`; `make test` does)")
def test_smollm2_judge_logprobs_and_text(tmp_path):
    """The real judge model, briefly: two replies, yes/no verdicts from the next-token
    distribution (equal to the model's own), and a text verdict cut at 3 tokens, which
    is a parse failure with finish = "length", never a score."""
    body = f"""
local jm <close> = rl.model {{ path = {json.dumps(SMOLLM2)}, transport = "worker", threads = 2 }}
local j = rl.judge {{ model = jm, verdict = "logprobs", scale = {{ 0, 1 }}, min_mass = 0,
                      choices = {{ yes = 1, Yes = 1, no = 0, No = 0 }},
                      rubric = {json.dumps(os.path.join(ROOT, "recipes", "rubrics", "smollm2_english.txt"))} }}
local s = {{ {{ prompt = "Greet me.", text = "Hello there, nice to meet you." }},
            {{ prompt = "Greet me.", text = "Bonjour, enchanté de vous rencontrer." }} }}
local r, info = rl.score(j, s)
for i = 1, 2 do
  local d = jm:next_logprobs({{ j:prompt_for(s[i]) }}, {{ "No", "Yes", "no", "yes" }})
  out {{ r = r[i], mass = info[i].mass, lp = d.logprobs[1] }}
end
local t = rl.judge {{ model = jm, max_tokens = 3 }}
local r2, info2 = rl.score(t, {{ s[1] }})
out {{ r = r2[1], kind = info2[1].kind, finish = info2[1].finish, tokens = info2.summary.completion_tokens }}
"""
    p, lines = run_lua(tmp_path, body, timeout=600)
    assert p.returncode == 0, p.stderr
    for got in lines[:2]:
        no, yes = math.exp(got["lp"][0]) + math.exp(got["lp"][2]), \
            math.exp(got["lp"][1]) + math.exp(got["lp"][3])
        assert got["r"] == pytest.approx(yes / (yes + no), abs=1e-4)
        assert got["mass"] == pytest.approx(yes + no, rel=1e-3) and 0.05 < got["mass"] <= 1
    last = lines[2]
    assert last.get("r") is None and last["kind"] == "parse" and last["finish"] == "length"
    assert last["tokens"] == 3
