"""rl.server: tests/servers/teacher.py (a real HTTP server) started by a recipe as a
child process, probed until ready, used as a judge, and never left running: not after
the recipe ends, fails, is SIGTERMed or is SIGKILLed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from procwait import read_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
TEACHER = os.path.join(ROOT, "tests", "servers", "teacher.py")

PRELUDE = f"""
local rl = require "rl"
local function out(t) io.stdout:write(rl.json.encode(t), "\\n") io.stdout:flush() end
local PY, TEACHER = {json.dumps(sys.executable)}, {json.dumps(TEACHER)}
"""


def write(tmp_path, body):
    path = tmp_path / "s.lua"
    path.write_text(PRELUDE + body)
    return str(path)


def run(tmp_path, body, timeout=120):
    p = subprocess.run([RLHOST, write(tmp_path, body)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=timeout)
    return p, [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def gone(pid: int, within: float = 15.0) -> bool:
    """Wait (up to `within` s) until pid has exited: no /proc entry, or a zombie."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_server_as_judge_end_to_end(tmp_path):
    body = """
local run = rl.run { dir = "run" }
local srv <close> = rl.server { command = { PY, TEACHER, "--port", "{port}", "--delay", "1" },
                                ready = "/v1/models", timeout = 60, run = run }
local j = rl.judge { endpoint = rl.endpoint { url = srv.url, model = "teacher" } }
local s = { { prompt = "q", text = "abc" }, { prompt = "q", text = "abcdefg" } }
local r, info = rl.score(j, s)
out { r = r, url = srv.url, pid = srv.pid, log = srv.log, alive = srv:alive(),
      port = srv.port }
"""
    t0 = time.monotonic()
    p, lines = run(tmp_path, body)
    assert p.returncode == 0, p.stderr
    got = lines[0]
    # teacher rule len10: score 1 + len % 10 on 1..10
    assert got["r"] == [pytest.approx(3 / 9), pytest.approx(7 / 9)]
    assert got["url"] == f"http://127.0.0.1:{got['port']}/v1" and got["alive"] is True
    assert got["log"] == f"run/server-{got['port']}.log" and (tmp_path / got["log"]).exists()
    assert time.monotonic() - t0 >= 1.0  # it waited for the --delay
    assert gone(got["pid"]), "the server outlived the recipe"


def test_server_that_exits_fails_fast_with_its_log(tmp_path):
    body = """
local ok, e = pcall(rl.server, { command = PY .. " -c 'import sys; print(\\"boom: no model file\\", flush=True); sys.exit(3)'",
                                 timeout = 60 })
out { ok = ok, kind = e.kind, message = e.message }
"""
    t0 = time.monotonic()
    p, lines = run(tmp_path, body)
    assert p.returncode == 0, p.stderr
    got = lines[0]
    assert got["ok"] is False and got["kind"] == "crash"
    assert "exited with status 3 before it was ready" in got["message"]
    assert "boom: no model file" in got["message"]
    assert time.monotonic() - t0 < 30


def test_server_not_ready_times_out_and_is_stopped(tmp_path):
    body = """
local ok, e = pcall(rl.server, { command = { "sh", "-c", "echo $$ > pid.txt; exec sleep 300" },
                                 timeout = 1, grace = 1 })
local pid = io.open("pid.txt"):read("l")
-- Checked while the host still runs: stopped by rl.server itself, not by the host's exit.
out { ok = ok, kind = e.kind, message = e.message,
      alive = os.execute("kill -0 " .. pid .. " 2>/dev/null") == true }
"""
    p, lines = run(tmp_path, body)
    assert p.returncode == 0, p.stderr
    got = lines[0]
    assert got["ok"] is False and got["kind"] == "timeout"
    assert "not ready after 1s" in got["message"] and got["alive"] is False
    pid = int((tmp_path / "pid.txt").read_text())  # the shell became the sleep (exec)
    assert gone(pid, within=0.5), "the server that never became ready was left running"


def test_bad_command_is_a_config_error(tmp_path):
    p, _ = run(tmp_path, 'rl.server { command = { "no-such-server-binary" } }')
    assert p.returncode == 2
    assert "cannot run 'no-such-server-binary': not found on PATH" in p.stderr


def test_recipe_error_stops_the_server(tmp_path):
    body = """
local pid
local ok, e = pcall(function()
  local srv <close> = rl.server { command = { PY, TEACHER, "--port", "{port}" } }
  pid = srv.pid
  error("a step failed")
end)
-- The <close> variable stopped it on the way out of the failing scope.
out { pid = pid, ok = ok, alive = os.execute("kill -0 " .. pid .. " 2>/dev/null") == true }
local srv2 = rl.server { command = { PY, TEACHER, "--port", "{port}" } }
out { pid = srv2.pid }
error("the recipe failed")
"""
    p, lines = run(tmp_path, body)
    assert p.returncode == 1 and "the recipe failed" in p.stderr
    assert lines[0]["ok"] is False and lines[0]["alive"] is False
    assert gone(lines[1]["pid"]), "a server left open outlived the failed recipe"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGTERM twice"])
def test_host_killed_takes_the_server_along(tmp_path, how):
    """A server outlives no host: SIGKILLed (the kernel's parent-death signal), asked to
    stop by SIGTERM (the recipe sees rl.interrupted() and returns; exit 143), or stopped
    at once by a second SIGTERM while the recipe ignores the first."""
    wait = "rl.fs.sleep(120)" if how != "SIGTERM" else \
        "while not rl.interrupted() do rl.fs.sleep(0.05) end"
    body = f"""
local srv = rl.server {{ command = {{ PY, TEACHER, "--port", "{{port}}" }} }}
out {{ pid = srv.pid }}
{wait}
"""
    host = subprocess.Popen([RLHOST, write(tmp_path, body)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = host.stdout.readline()
        pid = json.loads(line)["pid"]
        assert not gone(pid, within=0.2), "the server should be running"
        if how == "SIGKILL":
            host.send_signal(signal.SIGKILL)
        else:
            host.send_signal(signal.SIGTERM)
            if how == "SIGTERM twice":
                # Signals do not queue: send the second once the host said it saw the first.
                read_until(host.stderr, "SIGTERM")
                host.send_signal(signal.SIGTERM)
        rc = host.wait(timeout=60)
        assert rc == (-signal.SIGKILL if how == "SIGKILL" else 143), (rc, host.stderr.read())
        assert gone(pid), f"the server outlived a host stopped by {how}"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_env_reaches_the_server(tmp_path):
    body = """
local ok, e = pcall(rl.server, { command = { "sh", "-c", "echo val=$RLSERVER_TEST; exit 4" },
                                 env = { RLSERVER_TEST = "hello" } })
out { ok = ok, kind = e.kind, message = e.message }
"""
    p, lines = run(tmp_path, body)
    assert p.returncode == 0, p.stderr
    assert lines[0]["kind"] == "crash" and "val=hello" in lines[0]["message"]
    assert "exited with status 4" in lines[0]["message"]
