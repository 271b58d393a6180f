"""rl.reward.run: generated code in the sandbox (host/sandbox.c). Each hostile program
ends within its limits with a typed reason, and the host carries on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from procwait import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))

SCRIPT = r"""
local rl = require "rl"
local cases = rl.json.decode(io.read("a"))
for _, c in ipairs(cases) do
  local t0 = os.time()
  local scorer = rl.reward.run(c.opts)
  local r, info = rl.score(scorer, {{text = c.code}})
  io.stdout:write(rl.json.encode{name = c.name, reward = r[1] or false, status = info[1].status,
                                 reason = info[1].reason or info[1].kind or "?", detail = info[1].detail,
                                 isolated = info[1].isolated, wall_ms = info[1].wall_ms}, "\n")
  io.stdout:flush()
end
io.stdout:write('{"name":"host alive"}\n')
"""


def run_cases(tmp_path, cases, timeout=120):
    script = tmp_path / "sb.lua"
    script.write_text(SCRIPT)
    t0 = time.monotonic()
    p = subprocess.run([RLHOST, str(script)], input=json.dumps(cases), capture_output=True, text=True,
                       timeout=timeout, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        d = json.loads(line)
        out[d["name"]] = d
    assert "host alive" in out
    return out, time.monotonic() - t0


def nobody_procs():
    p = subprocess.run(["ps", "-u", "65534", "-o", "pid="], capture_output=True, text=True)
    return len(p.stdout.split())


ISOLATED = os.geteuid() == 0


def test_syntax_checks(tmp_path):
    cases = [
        {"name": "py ok", "code": "```python\nprint('hi')\n```", "opts": {"lang": "python"}},
        {"name": "py bad", "code": "def f(:\n  pass", "opts": {"lang": "python"}},
        {"name": "sh ok", "code": "echo hi; for i in 1 2; do echo $i; done", "opts": {"lang": "bash"}},
        {"name": "sh bad", "code": "if then fi (", "opts": {"lang": "bash"}},
        {"name": "c ok", "code": "int main(void){return 0;}", "opts": {"lang": "c"}},
        {"name": "c bad", "code": "int main(void){return }", "opts": {"lang": "c"}},
        {"name": "tests", "code": "import sys\nprint(int(sys.stdin.read())*2)",
         "opts": {"lang": "python", "tests": [{"stdin": "2", "stdout": "4\n"}, {"stdin": "5", "stdout": "10\n"},
                                               {"stdin": "1", "stdout": "3\n"}]}},
    ]
    out, _ = run_cases(tmp_path, cases)
    for n in ("py ok", "sh ok", "c ok"):
        assert out[n]["reward"] == 1 and out[n]["reason"] == "ok", out[n]
    for n in ("py bad", "sh bad", "c bad"):
        assert out[n]["reward"] == 0 and out[n]["reason"] == "exit", out[n]
    assert abs(out["tests"]["reward"] - 2 / 3) < 1e-9 and out["tests"]["reason"] == "wrong_output"


def test_hostile_programs(tmp_path):
    before = nobody_procs()
    outside = tmp_path / "outside.txt"
    marker = f"/tmp/rlhost-escape-{os.getpid()}.txt"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        listener.settimeout(20)
        try:
            while True:
                c, _ = listener.accept()
                accepted.append(c)
        except OSError:
            pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    lim = {"check": "tests", "cpu": 2, "timeout": 4, "mem_mb": 256, "nproc": 32, "fsize_mb": 1}
    cases = [
        {"name": "fork bomb", "code": ":(){ :|:& };:\nsleep 30", "opts": dict(lim, lang="bash")},
        {"name": "fork bomb py", "code": "import os\nwhile True:\n    os.fork()", "opts": dict(lim, lang="python")},
        # cpu=1 and a 10 s deadline: the CPU limit must fire first even while the fork
        # bombs beside it (64 busy processes for 4 s) starve it on two shared cores.
        {"name": "infinite loop", "code": "while True:\n    pass",
         "opts": dict(lim, lang="python", cpu=1, timeout=10)},
        {"name": "sleep forever", "code": "import time\ntime.sleep(100)", "opts": dict(lim, lang="python")},
        {"name": "allocate", "code": "x = []\nwhile True:\n    x.append(bytearray(10**6))",
         "opts": dict(lim, lang="python")},
        {"name": "big file", "code": "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)",
         "opts": dict(lim, lang="python")},
        {"name": "write outside",
         "code": f"import sys\nbad = 0\nfor p in ['../escape.txt', {str(outside)!r}, {marker!r}]:\n"
                 "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
                 "    except OSError as e:\n        print('refused', p, e)\n        bad += 1\n"
                 "sys.exit(1 if bad else 0)",
         "opts": dict(lim, lang="python")},
        {"name": "network",
         "code": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')",
         "opts": dict(lim, lang="python")},
        {"name": "output flood", "code": "while True:\n    print('y' * 1000)",
         "opts": dict(lim, lang="python", max_output=100000)},
    ]
    deadline = {c["name"]: c["opts"]["timeout"] for c in cases}
    out, wall = run_cases(tmp_path, cases)
    listener.close()
    for name, d in out.items():
        if name == "host alive":
            continue
        assert d["status"] == "ok", d  # the program's failure is a reward of 0, typed
        assert d["reward"] == 0, d
        assert d["reason"] not in ("?", "ok"), d
        assert d["wall_ms"] < (deadline[name] + 2) * 1000, d
    assert out["fork bomb"]["reason"] in ("timeout", "exit", "signal"), out["fork bomb"]
    assert out["fork bomb py"]["reason"] in ("timeout", "exit", "signal"), out["fork bomb py"]
    assert out["infinite loop"]["reason"] == "cpu", out["infinite loop"]
    assert out["sleep forever"]["reason"] == "timeout"
    assert out["allocate"]["reason"] == "memory", out["allocate"]
    assert out["big file"]["reason"] == "file_size", out["big file"]
    assert out["output flood"]["reason"] == "output"
    assert out["write outside"]["reason"] == "exit"
    assert not outside.exists() and not os.path.exists(marker)
    if ISOLATED:
        assert all(d.get("isolated") for n, d in out.items() if n != "host alive")
        assert out["network"]["reason"] == "exit" and not accepted
    # No process left behind (killed ones end late on a loaded machine: wait for the
    # fact with a deadline); no sandbox directory left behind.
    if ISOLATED:
        wait_for(lambda: nobody_procs() <= before, 30, "the sandboxed processes to end")
    tmp = os.environ.get("TMPDIR", "/tmp")
    assert not [d for d in os.listdir(tmp) if d.startswith("rlhost-sbx-")]
    assert wall < 60


def test_unprivileged_host_runs_unisolated(tmp_path):
    """Where namespaces are refused (here: the host run as uid 65534), programs still
    run under limits, but with the host's network and identity: `isolated` says so,
    and require_isolation refuses instead."""
    import shutil
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to start the host unprivileged")
    import tempfile
    d = tempfile.mkdtemp(prefix="rlhost-unpriv-")  # pytest's tmp_path is 0700: nobody cannot read it
    os.chmod(d, 0o755)
    script = os.path.join(d, "u.lua")
    with open(script, "w") as f:
        f.write(r"""
local rl = require "rl"
local r, info = rl.score(rl.reward.run{lang = "python", tests = {{stdout = "ok\n"}}, timeout = 3},
  {{text = "print('ok')"}, {text = "while True:\n    pass"}})
local r2, info2 = rl.score(rl.reward.run{lang = "python", tests = {{}}, require_isolation = true},
  {{text = "print(1)"}})
io.stdout:write(rl.json.encode{r1 = r[1], iso = info[1].isolated, reason2 = info[2].reason,
                               kind3 = info2[1].kind, r3 = r2[1] or false}, "\n")
""")
    os.chmod(script, 0o644)
    try:
        p = subprocess.run(["runuser", "-u", "nobody", "--", RLHOST, script], capture_output=True,
                           text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(d)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout.strip().splitlines()[-1])
    assert d["r1"] == 1 and d["iso"] is False
    assert d["reason2"] in ("timeout", "cpu")
    assert d["kind3"] == "internal" and d["r3"] is False
