"""rl.stats against independent Python computations, and recipes/judge_check.lua end to
end with tests/servers/teacher.py as the judge (its rules make the judge's scores
known, so every figure of the report is checked)."""
from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "servers"))
from teacher import Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))


def avg_ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def fisher(r, n, se_z):
    z = math.atanh(r)
    return math.tanh(z - 1.959964 * se_z), math.tanh(z + 1.959964 * se_z)


def check(tmp_path, args, timeout=300):
    return subprocess.run([RLHOST, os.path.join(ROOT, "recipes", "judge_check.lua"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def run(tmp_path, script, args=(), timeout=300):
    path = tmp_path / "s.lua"
    path.write_text(script)
    return subprocess.run([RLHOST, str(path), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("seed", [1, 2])
def test_stats_match_python(tmp_path, seed):
    rng = random.Random(seed)
    n = 37
    x = [rng.randint(0, 5) for _ in range(n)]  # ties on purpose
    y = [xi + rng.gauss(0, 2) for xi in x]
    script = f"""
local s = require "rl.stats"
local x, y = {{{",".join(map(repr, x))}}}, {{{",".join(map(repr, y))}}}
io.stdout:write(require("rl.json").encode {{ p = s.pearson(x, y), s = s.spearman(x, y),
  m = s.mae(x, y), q = s.proportion(7, 20), mean = s.mean(y), few = s.pearson({{1, 2}}, {{2, 3}}),
  const = s.spearman({{1, 1, 1, 1, 1}}, {{1, 2, 3, 4, 5}}) }})
"""
    p = run(tmp_path, script)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    r = statistics.correlation(x, y)
    assert got["p"]["r"] == pytest.approx(r, abs=1e-12)
    assert got["p"]["se"] == pytest.approx((1 - r * r) / math.sqrt(n - 3), abs=1e-12)
    lo, hi = fisher(r, n, 1 / math.sqrt(n - 3))
    assert (got["p"]["lo"], got["p"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    rho = statistics.correlation(avg_ranks(x), avg_ranks(y))
    assert got["s"]["r"] == pytest.approx(rho, abs=1e-12)
    lo, hi = fisher(rho, n, math.sqrt((1 + rho * rho / 2) / (n - 3)))
    assert (got["s"]["lo"], got["s"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    d = [abs(a - b) for a, b in zip(x, y)]
    assert got["m"]["value"] == pytest.approx(statistics.fmean(d))
    assert got["m"]["se"] == pytest.approx(statistics.stdev(d) / math.sqrt(n))
    assert got["q"]["value"] == 0.35 and got["q"]["se"] == pytest.approx(math.sqrt(0.35 * 0.65 / 20))
    assert got["mean"]["se"] == pytest.approx(statistics.stdev(y) / math.sqrt(n))
    assert "r" not in got["few"] and "4 or more" in got["few"]["why"]
    assert "r" not in got["const"] and "constant" in got["const"]["why"]


RUBRIC = ("Grade the reply.\n[The Start of the Prompt]\n{prompt}\n[The End of the Prompt]\n"
          "[The Start of the Response]\n{completion}\n[The End of the Response]\n")


def test_judge_check_report(tmp_path):
    """teacher rule "digit": the judge's score is the reply's first digit (1-9); a reply
    without one is a parse failure. Reference: each row's "score" field."""
    rows = []
    for i in range(12):
        digit = 1 + i % 9
        score = digit if i % 4 else 9 - digit  # agrees on 3 rows of 4
        # Two answers per prompt; the second is longer and better by the reference.
        rows.append({"prompt": f"q{i // 2}", "completion": f"answer {digit}" + "." * (i % 2),
                     "score": score})
    rows.append({"prompt": "q-none", "completion": "no digits here", "score": 5})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    with Teacher(rule="digit") as t:
        p = check(tmp_path, [f"teacher_url={t.url}", "data=d.jsonl", "reference=field:score",
                 "reference_scale=1,9", "scale=1,9", "verdict=text", "rubric=rubric.txt",
                 "pairwise=false", "out=out"])
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "out" / "judge_check.json").read_text())
    judged = [(int(next(c for c in r["completion"] if c.isdigit())) - 1) / 8
              for r in rows[:-1]]
    ref = [(r["score"] - 1) / 8 for r in rows[:-1]]
    n = len(judged)
    assert rep["n"] == 13 and rep["scored"] == 12 and rep["failures"] == {"parse": 1}
    assert rep["parse_failure_rate"]["value"] == pytest.approx(1 / 13)
    assert rep["pearson"]["r"] == pytest.approx(statistics.correlation(judged, ref))
    assert rep["spearman"]["r"] == pytest.approx(
        statistics.correlation(avg_ranks(judged), avg_ranks(ref)))
    assert rep["mae"]["value"] == pytest.approx(statistics.fmean(abs(a - b) for a, b in zip(judged, ref)))
    assert rep["pearson"]["n"] == n
    md = (tmp_path / "out" / "judge_check.md").read_text()
    assert "| Spearman rho |" in md and "parse-failure rate | 0.077 ± 0.074" in md
    assert p.stdout == md


def test_judge_check_pairwise_accuracy_and_position_bias(tmp_path):
    """Pairwise logprobs through the teacher: the longer reply wins ("longer" rule);
    equal lengths give a verdict on neither letter but mass (0.18) on " A" only, i.e.
    the judge picks the first position in both orders (position bias)."""
    rows = [
        {"prompt": "a", "completion": "short 1", "score": 1},
        {"prompt": "a", "completion": "much longer 9", "score": 9},  # longer and better
        {"prompt": "b", "completion": "long answer 2", "score": 2},
        {"prompt": "b", "completion": "tiny 8", "score": 8},         # shorter but better
        {"prompt": "c", "completion": "same 3", "score": 3},
        {"prompt": "c", "completion": "also 7", "score": 7},         # equal lengths
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    pw = ("[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n"
          "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]\n{prompt}")
    (tmp_path / "pw.txt").write_text(pw)
    with Teacher(rule="digit") as t:
        p = check(tmp_path, [f"teacher_url={t.url}", "data=d.jsonl", "reference=field:score",
                 "reference_scale=1,9", "scale=1,9", "verdict=logprobs", 'choices=""',
                 "rubric=rubric.txt", "pairwise_rubric=pw.txt", "min_mass=0.1", "out=out"])
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "out" / "judge_check.json").read_text())
    assert rep["pairs"] == 3
    # pair a: right; pair b: wrong; pair c: both orders say "A": a tie (0.5), biased
    assert rep["pairwise_accuracy"]["value"] == pytest.approx(1.5 / 3)
    assert rep["position_bias_rate"]["value"] == pytest.approx(1 / 3)
    assert rep["pairwise_failure_rate"]["value"] == 0
    assert rep["verdict_mass"]["value"] == pytest.approx(0.9)


@pytest.mark.parametrize("args,msg", [
    (["rubric=missing.txt"], "setting 'rubric': cannot read missing.txt"),
    (["reference=votes"], "setting 'reference' must be task, field:NAME"),
    (["scale=5,1"], "setting 'scale' must be 'lo,hi' with lo < hi"),
    (["choices=yes"], "setting 'choices' must be verdict=score"),
])
def test_judge_check_bad_settings(tmp_path, args, msg):
    p = check(tmp_path, ["judge_model=builtin:tiny", "out=out", *args])
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
