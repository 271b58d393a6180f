"""End-to-end scoring: the host (rl.endpoint, rl.judge, rl.score, the cache) against
tests/servers/teacher.py on a loopback port."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "servers"))
from teacher import Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
KEY = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0SECRET"

# Lua prelude shared by the scripts: samples whose expected judge score under the
# teacher's "len10" rule is 1 + len % 10, with lengths never ≡ 0 (mod 10), so a
# correct reward is never 0 and a silent 0 would be caught.
PRELUDE = r"""
local rl = require "rl"
local function out(t) io.stdout:write(rl.json.encode(t), "\n") io.stdout:flush() end
local function samples(n, tag)
  local s = {}
  for i = 1, n do
    local len = i % 9 + 1 + 10 * (i % 7)
    s[i] = { prompt = "question " .. i .. (tag or ""), text = string.rep("y", len) }
  end
  return s
end
local function expected(s) return (#s.text % 10) / 9 end
"""


def run_lua(tmp_path, body, env=None, timeout=120, name="script.lua"):
    path = tmp_path / name
    path.write_text(PRELUDE + body)
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([RLHOST, str(path)], cwd=tmp_path, env=e, capture_output=True, text=True,
                       timeout=timeout)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    return p, lines


@pytest.fixture
def teacher():
    t = Teacher(rule="len10").start()
    yield t
    t.stop()


def test_faulted_run_then_cache(tmp_path, teacher):
    teacher.configure(fault_rate=0.3, hang_s=1.5, seed=7, retry_after=1)
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=64, timeout=0.75,
                       retry_base=0.05, retry_max=0.4, max_retries=2}}
local j = rl.judge{{endpoint=ep, cache=arg[1]}}
local s = samples(1000)
local r, info = rl.score(j, s)
local res = {{ok=0, err=0, kinds={{}}, wrong=0, zero=0, noraw=0, summary=info.summary}}
local rewards = {{}}
for i = 1, #s do
  local inf = info[i]
  if r[i] ~= nil then
    res.ok = res.ok + 1
    if math.abs(r[i] - expected(s[i])) > 1e-9 then res.wrong = res.wrong + 1 end
    if r[i] == 0 then res.zero = res.zero + 1 end
    rewards[i] = r[i]
  else
    res.err = res.err + 1
    assert(inf.status == "error" and inf.kind, "untyped failure")
    res.kinds[inf.kind] = (res.kinds[inf.kind] or 0) + 1
    if inf.kind == "parse" and not (inf.raw and #inf.raw > 0) then res.noraw = res.noraw + 1 end
    rewards[i] = false
  end
end
res.rewards = rewards
out(res)
"""
    db = str(tmp_path / "cache.sqlite")
    p, lines = run_lua(tmp_path, body.replace("arg[1]", json.dumps(db)))
    assert p.returncode == 0, p.stderr
    res = lines[0]
    st = teacher.stats()
    # None lost, none silently 0, all typed.
    assert res["ok"] + res["err"] == 1000
    assert res["wrong"] == 0 and res["zero"] == 0 and res["noraw"] == 0
    assert set(res["kinds"]) <= {"parse", "http", "timeout", "rate_limit"}
    assert res["kinds"].get("parse", 0) > 0  # unparsable answers are not retried
    assert res["ok"] > 800
    # Every fault kind was exercised, and the counts agree with what the server saw.
    for f in ("429", "429date", "500", "503", "truncated", "ctype", "hang", "reset", "unparsable"):
        if f != "unparsable":
            assert st.get("fault_" + f, 0) > 0, f
    summary = res["summary"]
    assert summary["requests"] == st["requests"]
    assert summary["retries"] == st["requests"] - 1000
    assert summary["failures"] == res["kinds"] if res["kinds"] else True
    first = res["rewards"]

    # Second run, server healthy: only the samples that failed are asked again.
    teacher.configure(reset=True, fault_rate=0.0)
    p, lines = run_lua(tmp_path, body.replace("arg[1]", json.dumps(db)))
    assert p.returncode == 0, p.stderr
    second = lines[0]
    assert teacher.stats().get("requests", 0) == res["err"]
    assert second["ok"] == 1000 and second["summary"]["cache_hits"] == res["ok"]
    for a, b in zip(first, second["rewards"]):
        if a is not False:
            assert a == b

    # Third run: everything cached, no HTTP at all, identical rewards.
    teacher.configure(reset=True)
    p, lines = run_lua(tmp_path, body.replace("arg[1]", json.dumps(db)))
    assert p.returncode == 0, p.stderr
    third = lines[0]
    assert teacher.stats().get("requests", 0) == 0
    assert third["summary"]["requests"] == 0 and third["summary"]["cache_hits"] == 1000
    assert third["rewards"] == second["rewards"]


def test_cache_survives_sigkill(tmp_path, teacher):
    db = str(tmp_path / "kill.sqlite")
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=16}}
local j = rl.judge{{endpoint=ep, cache={json.dumps(db)}}}
local s = samples(4000)
for b = 0, 399 do
  local batch = {{}}
  for i = 1, 10 do batch[i] = s[b * 10 + i] end
  rl.score(j, batch)
  if b == 2 then io.stdout:write("{{\\"started\\":true}}\\n") io.stdout:flush() end
end
"""
    path = tmp_path / "writer.lua"
    path.write_text(PRELUDE + body)
    proc = subprocess.Popen([RLHOST, str(path)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert "started" in proc.stdout.readline()
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n = con.execute("SELECT count(*) FROM scores").fetchone()[0]
    con.close()
    assert 30 <= n < 4000
    # Reopen through the host: every cached entry holds the right reward.
    teacher.configure(reset=True)
    check = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=16}}
local j = rl.judge{{endpoint=ep, cache={json.dumps(db)}}}
local s = samples(4000)
local r, info = rl.score(j, s)
local bad, cached = 0, 0
for i = 1, #s do
  if info[i].cached then cached = cached + 1 end
  if r[i] == nil or math.abs(r[i] - expected(s[i])) > 1e-9 then bad = bad + 1 end
end
out{{bad = bad, cached = cached}}
"""
    p, lines = run_lua(tmp_path, check, name="check.lua")
    assert p.returncode == 0, p.stderr
    assert lines[0]["bad"] == 0
    assert lines[0]["cached"] == n
    assert teacher.stats()["requests"] == 4000 - n


def test_cache_shared_by_two_runs(tmp_path, teacher):
    db = str(tmp_path / "shared.sqlite")
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=8}}
local j = rl.judge{{endpoint=ep, cache={json.dumps(db)}}}
local s = samples(600)
for b = 0, 59 do
  local batch = {{}}
  for i = 1, 10 do batch[i] = s[b * 10 + i] end
  local r = rl.score(j, batch)
  for i = 1, 10 do assert(r[i] and math.abs(r[i] - expected(batch[i])) < 1e-9) end
end
out{{done = true}}
"""
    path = tmp_path / "shared.lua"
    path.write_text(PRELUDE + body)
    procs = [subprocess.Popen([RLHOST, str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for pr in procs:
        o, e = pr.communicate(timeout=120)
        assert pr.returncode == 0, e
        assert '"done":true' in o
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 600
    con.close()


def test_key_never_leaks(tmp_path, teacher):
    teacher.configure(fault_rate=0.5, faults=["echo", "500", "unparsable", "reset"], seed=3)
    logdir = tmp_path / "out"
    logdir.mkdir()
    body = f"""
local eps = {{
  rl.endpoint{{url="{teacher.url}", model="teach", api_key_env="RL_TEST_KEY", max_retries=1,
              retry_base=0.01, concurrency=8}},
  rl.endpoint{{url="{teacher.url}", api="anthropic", model="claude", api_key_env="RL_TEST_KEY",
              max_retries=1, retry_base=0.01, concurrency=8}},
}}
local f = assert(io.open("out/log.jsonl", "w"))
for _, ep in ipairs(eps) do
  print(tostring(ep), rl.json.encode(ep:info()))
  local j = rl.judge{{endpoint=ep, cache="out/cache.sqlite"}}
  local r, info = rl.score(j, samples(60, tostring(ep)))
  for i = 1, 60 do
    f:write(rl.json.encode(info[i]), "\\n")
    io.stderr:write(tostring(info[i].message), "\\n")
  end
  f:write(rl.json.encode(info.summary), "\\n")
  f:write(rl.json.encode(ep:stats()), "\\n")
  local ok, err = pcall(ep.generate, ep, {{"hello"}}, {{n = 2}})
  print(ok, tostring(err))
end
f:close()
error(rl.error{{kind = "http", message = "final failure for the log"}})
"""
    p, _ = run_lua(tmp_path, body, env={"RL_TEST_KEY": KEY})
    assert p.returncode == 1
    st = teacher.stats()
    assert st.get("auth_bearer", 0) > 0 and st.get("auth_x_api_key", 0) > 0  # it was sent
    assert st.get("fault_echo", 0) > 0  # and echoed back at least once
    assert KEY not in p.stdout and KEY not in p.stderr
    assert "POST" in p.stderr  # error texts were printed
    for dirpath, _, files in os.walk(tmp_path):
        for fn in files:
            with open(os.path.join(dirpath, fn), "rb") as fh:
                assert KEY.encode() not in fh.read(), fn


def key_exposures(blob: bytes, key: str = KEY) -> list[str]:
    """How blob still gives key away: as it is, or after undoing up to two layers of
    JSON/C backslash, percent or HTML escapes, or as base64 (any alignment). An oracle
    written independently of host/scrub.c."""
    import base64
    import html
    import re
    import urllib.parse

    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"'}

    def unbackslash(t: str) -> str:
        def one(m: re.Match) -> str:
            e = m.group(1)
            if e[0] in "ux" and len(e) > 1:
                return chr(int(e[1:], 16))
            return simple.get(e, m.group(0))
        return re.sub(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", one, t)

    found = []
    views = {"as is": blob.decode("latin-1")}
    for _ in range(2):
        for name, t in list(views.items()):
            for how, f in (("backslash", unbackslash), ("percent", urllib.parse.unquote),
                           ("html", html.unescape)):
                views.setdefault(f"{name}, {how}", f(t))
    found += [name for name, t in views.items() if key in t]
    for prefix in ("", "a", "ab"):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            core = enc((prefix + key).encode()).decode()[4:-4]
            if core in views["as is"]:
                found.append(f"base64 after {len(prefix)} bytes")
    return found


def test_key_exposures_oracle():
    """The oracle the next test relies on sees each encoding the teacher can echo."""
    import teacher as T
    assert key_exposures(b"nothing") == []
    for mode in ("plain", "json_u", "json_mixed", "pct", "b64"):
        echo, _ = T.key_echo(mode, KEY)
        assert key_exposures(T.encode_body({"text": echo}, mode, KEY)), mode


# The API key echoed back, each way the test teacher can: in a judge reply (stored in
# the cache, kept in info[i].raw, logged to metrics and printed), in an error body and
# in a Content-Type (error texts).
ECHOES = [("openai-chat", "json_u", None), ("openai-chat", "json_mixed", None),
          ("openai-chat", "pct", None), ("openai-chat", "b64", None), ("anthropic", "json_u", None),
          ("anthropic", "split", None), ("openai-chat", None, "echo_escaped"),
          ("anthropic", None, "echo_ctype")]


@pytest.mark.parametrize("api,echo,fault", ECHOES)
def test_key_never_leaks_encoded(tmp_path, teacher, api, echo, fault):
    if fault:
        teacher.configure(fault_rate=0.5, faults=[fault], seed=5)
    else:
        teacher.configure(echo_key=echo)
    body = f"""
local run = rl.run{{dir = "out/run", plot = false, progress = false}}
local ep = rl.endpoint{{url="{teacher.url}", api="{api}", model="teach", api_key_env="RL_TEST_KEY",
                       max_retries=0, concurrency=4}}
local j = rl.judge{{endpoint=ep, cache="out/cache.sqlite"}}
for step in run:steps(2) do
  local r, info = rl.score(j, samples(8, "step" .. step))
  for i = 1, #info do
    out{{raw = info[i].raw, message = info[i].message, kind = info[i].kind}}
    io.stderr:write(tostring(info[i].raw), " ", tostring(info[i].message), "\\n")
  end
  run:log{{reward = rl.mean(r), raw = info[1].raw, message = info[1].message}}
end
"""
    (tmp_path / "out").mkdir()
    p, lines = run_lua(tmp_path, body, env={"RL_TEST_KEY": KEY})
    assert p.returncode == 0, p.stderr
    st = teacher.stats()
    assert st.get("auth_bearer", 0) + st.get("auth_x_api_key", 0) > 0
    assert key_exposures(p.stdout.encode()) == []
    assert key_exposures(p.stderr.encode()) == []
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert any(f.endswith("cache.sqlite") for f in files) and any(f.endswith("metrics.jsonl") for f in files)
    for f in files:  # the SQLite file and its WAL as raw bytes, metrics, config
        with open(f, "rb") as fh:
            assert key_exposures(fh.read()) == [], f
    if fault:  # the echo reached the client, and its text was printed
        assert st.get("fault_" + fault, 0) > 0 and any(l.get("message") for l in lines)
    else:  # the replies carried the (now starred) echo and were still scored
        assert any("***" in l.get("raw", "") for l in lines), lines[:2]
        assert not any(l.get("kind") for l in lines), lines[:2]


def test_key_env_missing_is_config_error(tmp_path, teacher):
    body = f'rl.endpoint{{url="{teacher.url}", api_key_env="RL_NO_SUCH_KEY_VAR"}}'
    p, _ = run_lua(tmp_path, body)
    assert p.returncode == 2
    assert "RL_NO_SUCH_KEY_VAR" in p.stderr


def test_shapes_and_n_ignored(tmp_path, teacher):
    body = f"""
local res = {{}}
for _, api in ipairs{{"openai-chat", "openai-completions", "anthropic"}} do
  local ep = rl.endpoint{{url="{teacher.url}", api=api, model="m-" .. api}}
  local s = ep:generate({{"alpha", "beta"}}, {{n = 3, max_tokens = 8}})
  local texts = {{}}
  for i, x in ipairs(s) do texts[i] = x.prompt .. "|" .. x.source .. "|" .. x.finish end
  res[api] = {{n = #s, texts = texts, stats = ep:stats()}}
end
out(res)
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    res = lines[0]
    for api in ("openai-chat", "openai-completions", "anthropic"):
        assert res[api]["n"] == 6
        assert res[api]["texts"][:3] == [f"alpha|endpoint:m-{api}|stop"] * 3
        assert res[api]["texts"][3:] == [f"beta|endpoint:m-{api}|stop"] * 3
        assert res[api]["stats"]["prompt_tokens"] > 0
    # OpenAI shapes: one request per prompt with n=3; Anthropic: one per sample.
    assert res["openai-chat"]["stats"]["attempts"] == 2
    assert res["anthropic"]["stats"]["attempts"] == 6
    # A server that ignores n: asked again for the rest.
    teacher.configure(reset=True, ignore_n=True)
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    res = lines[0]
    assert res["openai-chat"]["n"] == 6
    assert res["openai-chat"]["stats"]["attempts"] == 6  # 2 short replies, then 4 singles


@pytest.mark.parametrize("form", ["429", "429date"])
def test_retry_after_both_forms(tmp_path, teacher, form):
    teacher.configure(fail_first=1, faults=[form], retry_after=2 if form == "429date" else 1)
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", retry_base=0.01, retry_max=0.02}}
local t = ep:chat({{"hi"}})
out{{ok = t[1].ok, attempts = t[1].attempts, latency_ms = t[1].latency_ms}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    r = lines[0]
    assert r["ok"] and r["attempts"] == 2
    # Backoff alone would wait ~10 ms: the server's Retry-After was honoured.
    assert r["latency_ms"] >= 900, r
    assert r["latency_ms"] < 3000, r


def test_retry_after_over_cap_falls_back_to_backoff(tmp_path, teacher):
    teacher.configure(fail_first=1, faults=["429"], retry_after=120)
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", retry_base=0.01, retry_max=0.02}}
local t = ep:chat({{"hi"}})
out{{ok = t[1].ok, attempts = t[1].attempts, latency_ms = t[1].latency_ms}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    assert lines[0]["ok"] and lines[0]["attempts"] == 2 and lines[0]["latency_ms"] < 800


def test_non_retryable_4xx_and_deadline(tmp_path, teacher):
    teacher.configure(fail_first=1, faults=["echo"])
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", retry_base=0.01}}
local t = ep:chat({{"hi"}})
out{{ok = t[1].ok, attempts = t[1].attempts, status = t[1].status, kind = t[1].kind}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    a = lines[0]
    assert not a["ok"] and a["attempts"] == 1 and a["status"] == 400 and a["kind"] == "http"
    teacher.configure(fail_first=0, fault_rate=1.0, faults=["hang"], hang_s=5)
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", timeout=0.3, deadline=1.0,
                       retry_base=0.2, max_retries=10}}
local t = ep:chat({{"hi"}})
out{{ok = t[1].ok, attempts = t[1].attempts, kind = t[1].kind, latency_ms = t[1].latency_ms}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    b = lines[0]
    assert not b["ok"] and b["kind"] == "timeout"
    assert b["latency_ms"] < 1600 and 2 <= b["attempts"] <= 4, b


def test_score_raise_when_judge_down(tmp_path):
    body = """
local ep = rl.endpoint{url="http://127.0.0.1:9/v1", model="none", max_retries=1, retry_base=0.01,
                       connect_timeout=1}
local j = rl.judge{endpoint=ep}
local r, info = rl.score(j, samples(3))
local ok, err = pcall(rl.score, j, samples(3), {raise = true})
out{kind1 = info[1].kind, ok = ok, kind = err.kind, retryable = err.retryable,
    isrl = rl.is_error(err), n = info.summary.failed, attempts = info[1].attempts}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    r = lines[0]
    assert r["kind1"] == "http" and r["n"] == 3 and r["attempts"] == 2
    assert r["ok"] is False and r["kind"] == "http" and r["retryable"] and r["isrl"]


def test_second_sigint_stops_hanging_batch(tmp_path, teacher):
    teacher.configure(fault_rate=1.0, faults=["hang"], hang_s=30)
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", timeout=60}}
io.stdout:write("{{\\"go\\":1}}\\n") io.stdout:flush()
ep:chat({{"a", "b", "c"}})
"""
    path = tmp_path / "hang.lua"
    path.write_text(PRELUDE + body)
    proc = subprocess.Popen([RLHOST, str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 3
    assert proc.returncode == 130, err
    assert "interrupted" in err


def test_pairwise_and_votes(tmp_path, teacher):
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach"}}
local pj = rl.judge{{endpoint=ep, mode="pairwise"}}
local r, info = rl.score(pj, {{{{prompt="p", text="short"}}, {{prompt="p", text="a longer one"}},
                              {{prompt="q", text="same"}}, {{prompt="q", text="same"}}}})
local vj = rl.judge{{endpoint=ep, votes=3}}
local r2, info2 = rl.score(vj, samples(4))
out{{r = r, consistent = info[1].consistent, tie = info[3].consistent, r2 = r2,
     requests = info2.summary.requests}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    res = lines[0]
    assert res["r"] == [0, 1, 0.5, 0.5] and res["consistent"] is True
    assert res["requests"] == 12


def test_connections_reused_and_rpm(tmp_path, teacher):
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=4}}
for b = 1, 5 do ep:chat({{"a", "b", "c", "d", "e", "f", "g", "h"}}) end
local slow = rl.endpoint{{url="{teacher.url}", model="teach", concurrency=8, rpm=600}}
local t0 = rl.fs.monotonic()
local r = slow:chat({{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"}})
out{{rpm_s = rl.fs.monotonic() - t0, ok = r[11].ok}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    st = teacher.stats()
    assert st["requests"] == 51
    # 40 requests over 5 batches at concurrency 4 used 4 connections, not 40.
    assert st["connections"] <= 4 + 8, st
    # 600 per minute: one start every 100 ms, so 11 starts span at least 1 s.
    assert lines[0]["ok"] and lines[0]["rpm_s"] >= 0.95, lines[0]


def test_tls_is_verified(tmp_path):
    import shutil
    if not shutil.which("openssl"):
        pytest.skip("openssl command not available to make a certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    t = Teacher(certfile=cert, keyfile=key).start()
    try:
        body = f"""
local bad = rl.endpoint{{url="{t.url}", model="teach", retry_base=0.01}}
local r1 = bad:chat({{"hi"}})[1]
local good = rl.endpoint{{url="{t.url}", model="teach", ca_file={json.dumps(cert)}}}
local r2 = good:chat({{"hi"}})[1]
out{{bad = {{ok = r1.ok, kind = r1.kind, attempts = r1.attempts, message = r1.message}},
     good = {{ok = r2.ok}}}}
"""
        p, lines = run_lua(tmp_path, body)
    finally:
        t.stop()
    assert p.returncode == 0, p.stderr
    bad = lines[0]["bad"]
    assert not bad["ok"] and bad["kind"] == "http" and bad["attempts"] == 1, bad
    assert "certificate" in bad["message"].lower() or "ssl" in bad["message"].lower(), bad
    assert lines[0]["good"]["ok"]


def test_endpoint_as_generation_source_and_fallback(tmp_path, teacher):
    body = f"""
local ep = rl.endpoint{{url="{teacher.url}", model="teach"}}
local s = rl.generate(ep, {{"a", {{prompt = "b", id = 7}}}}, {{n = 2, max_tokens = 5}})
local dead = rl.endpoint{{url="http://127.0.0.1:9/v1", max_retries = 0}}
local s2 = rl.generate(rl.fallback{{dead, ep}}, {{"c"}}, {{n = 1}})
local judge_dead = rl.judge{{endpoint = dead}}
local r, info = rl.score(rl.fallback{{judge_dead, rl.reward.length{{target = 1}}}}, {{{{prompt = "p", text = "x"}}}})
out{{n = #s, p = {{s[1].prompt, s[3].prompt}}, src = s[1].source, ids = s[1].ids == nil,
     text2 = s2[1].text, r = r[1], fb = info[1].fallback}}
"""
    p, lines = run_lua(tmp_path, body)
    assert p.returncode == 0, p.stderr
    r = lines[0]
    assert r["n"] == 4 and r["p"] == ["a", "b"] and r["src"] == "endpoint:teach" and r["ids"]
    assert r["text2"] == "echo 0: c"
    assert r["r"] == 1 and r["fb"] is True
