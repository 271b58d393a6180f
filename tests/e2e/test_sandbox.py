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
                                 isolated = info[1].isolated, no_sockets = info[1].no_sockets,
                                 disk_capped = info[1].disk_capped, stderr = info[1].stderr,
                                 wall_ms = info[1].wall_ms}, "\n")
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


def root_is_mount() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == "/" for line in f)


def sandbox_dirs():
    """Sandbox directories under $TMPDIR: compared before and after a test, since a
    host killed elsewhere on the machine may have left some of its own."""
    tmp = os.environ.get("TMPDIR", "/tmp")
    return {d for d in os.listdir(tmp) if d.startswith("rlhost-sbx-")}


def nobody_procs():
    """Processes whose real uid is 65534 (read from /proc: a minimal Debian has no ps)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        n += uid == "65534"
    return n


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
    before, dirs_before = nobody_procs(), sandbox_dirs()
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
    # No process left behind; no sandbox directory left behind.
    time.sleep(0.3)
    if ISOLATED:
        assert nobody_procs() <= before
    assert not sandbox_dirs() - dirs_before
    assert wall < 60


def test_unprivileged_host_runs_unisolated(tmp_path):
    """Where namespaces are refused (here: the host run as uid 65534), programs still
    run under limits, without sockets and with the disk cap counted in the working
    directory, but with the host's identity: `isolated` says so, and
    require_isolation refuses instead."""
    import shutil
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to start the host unprivileged")
    import tempfile
    d = tempfile.mkdtemp(prefix="rlhost-unpriv-")  # pytest's tmp_path is 0700: nobody cannot read it
    os.chmod(d, 0o755)
    # The checkout may sit under a 0700 directory (a clone in /root, as on a fresh
    # machine) that nobody cannot enter: run a copy of the host and its Lua library
    # from d (the host finds lua/ from its own path; nothing here needs the engine).
    home = os.path.dirname(os.path.dirname(os.path.abspath(RLHOST)))
    os.mkdir(os.path.join(d, "build"), 0o755)
    host = shutil.copy2(RLHOST, os.path.join(d, "build", "rlhost"))
    shutil.copytree(os.path.join(home, "lua"), os.path.join(d, "lua"))
    for dirpath, dirs, files in os.walk(d):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o755 if f == "rlhost" else 0o644)
    socks, paths = unix_listeners([d])
    probe = f"PATHS = {json.dumps(json.dumps(paths))}\n" + SOCKET_PROBE
    script = os.path.join(d, "u.lua")
    with open(script, "w") as f:
        f.write(r"""
local rl = require "rl"
local r, info = rl.score(rl.reward.run{lang = "python", tests = {{stdout = "ok\n"}}, timeout = 3},
  {{text = "print('ok')"}, {text = "while True:\n    pass"}})
local r2, info2 = rl.score(rl.reward.run{lang = "python", tests = {{}}, require_isolation = true},
  {{text = "print(1)"}})
local r4, info4 = rl.score(rl.reward.run{lang = "python", tests = {{}}, disk_mb = 8, fsize_mb = 2,
                                         timeout = 20},
  {{text = "for i in range(40):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))"}})
local r5, info5 = rl.score(rl.reward.run{lang = "python", tests = {{}}, raw = true, timeout = 10},
  {{text = os.getenv("PROBE")}})
io.stdout:write(rl.json.encode{r1 = r[1], iso = info[1].isolated, reason2 = info[2].reason,
                               kind3 = info2[1].kind, r3 = r2[1] or false,
                               reason4 = info4[1].reason, capped4 = info4[1].disk_capped,
                               reason5 = info5[1].reason, no_sockets5 = info5[1].no_sockets}, "\n")
""")
    os.chmod(script, 0o644)
    try:
        p = subprocess.run(["runuser", "-u", "nobody", "--", host, script], capture_output=True,
                           text=True, timeout=90, cwd="/", env=dict(os.environ, PROBE=probe))
        got = reached(socks)
    finally:
        for s in socks:
            s.close()
        shutil.rmtree(d)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout.strip().splitlines()[-1])
    assert d["r1"] == 1 and d["iso"] is False
    assert d["reason2"] in ("timeout", "cpu")
    assert d["kind3"] == "internal" and d["r3"] is False
    assert d["reason4"] == "disk" and d["capped4"] is False, d
    assert got == [] and d["reason5"] == "ok" and d["no_sockets5"] is True, (got, d)

def unix_listeners(dirs):
    """A stream listener and a bound datagram socket, both mode 0777, in each directory,
    plus a listener in the abstract namespace. Returns (sockets, paths for the program)."""
    socks, paths = [], []
    for d in dirs:
        sp, dp = os.path.join(d, "stream.sock"), os.path.join(d, "dgram.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sp)
        s.listen(8)
        g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        g.bind(dp)
        for p in (sp, dp):
            os.chmod(p, 0o777)
        socks += [s, g]
        paths.append({"stream": sp, "dgram": dp})
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract = f"\0rlhost-sbx-test-{os.getpid()}"
    a.bind(abstract)
    a.listen(8)
    socks.append(a)
    paths.append({"stream": abstract})
    for s in socks:
        s.setblocking(False)
    return socks, paths


def reached(socks):
    """Whether anything connected to or sent to any of the sockets (connections that
    were made and closed still wait in the accept queue; datagrams in the buffer)."""
    got = []
    for s in socks:
        try:
            if s.type == socket.SOCK_STREAM:
                c, _ = s.accept()
                c.close()
            else:
                s.recv(64)
            got.append(s.getsockname())
        except BlockingIOError:
            pass
    return got


# Tries every way the program could reach the Unix sockets in PATHS (and io_uring);
# exit 3 if any worked, 0 if all were refused.
SOCKET_PROBE = r"""
import json, socket, sys
paths = json.loads(PATHS)
worked = []
for p in paths:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(p["stream"])
        s.send(b"hello")
        worked.append(p["stream"])
    except OSError as e:
        print("refused", repr(p["stream"]), e, file=sys.stderr)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        if "dgram" not in p:
            continue
        try:
            a, b = socket.socketpair(socket.AF_UNIX, kind)
            a.sendto(b"hello", p["dgram"])
            worked.append(p["dgram"])
        except OSError as e:
            print("refused", p["dgram"], e, file=sys.stderr)
# io_uring can create and connect sockets without socket()/connect(): x86-64 and
# arm64 both number io_uring_setup 425.
import ctypes, platform
if platform.machine() in ("x86_64", "aarch64"):
    params = ctypes.create_string_buffer(120)
    if ctypes.CDLL(None, use_errno=True).syscall(425, 4, params) >= 0:
        worked.append("io_uring")
print("reached", worked, file=sys.stderr)
sys.exit(3 if worked else 0)
"""


def socket_dirs():
    """0755 directories outside the sandbox's own: one under build/ (not a /tmp the
    isolated sandbox replaces) and, as root, one under /run, where system services
    keep their sockets."""
    import tempfile
    dirs = [tempfile.mkdtemp(prefix="sock-", dir=os.path.join(ROOT, "build"))]
    if os.geteuid() == 0:
        dirs.append(tempfile.mkdtemp(prefix="rlhost-sock-", dir="/run"))
    for d in dirs:
        os.chmod(d, 0o755)
    return [d for d in dirs if len(d) < 90]  # sun_path holds 108 bytes


def test_unix_sockets_unreachable(tmp_path):
    """No Unix socket outside the sandbox answers the program, whatever its mode: a
    0777 stream socket and datagram socket in a world-readable directory, under /run,
    and in the abstract namespace."""
    import shutil
    dirs = socket_dirs()
    try:
        socks, paths = unix_listeners(dirs)
        code = f"PATHS = {json.dumps(json.dumps(paths))}\n" + SOCKET_PROBE
        cases = [{"name": "unix", "code": code, "opts": {"lang": "python", "check": "tests", "raw": True, "timeout": 10}},
                 {"name": "socketpair stream", "opts": {"lang": "python", "check": "tests", "timeout": 10},
                  "code": "import socket\na, b = socket.socketpair()\na.send(b'x')\nassert b.recv(1) == b'x'"}]
        out, _ = run_cases(tmp_path, cases)
        got = reached(socks)
        for s in socks:
            s.close()
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    assert got == [], f"the sandboxed program reached {got}"
    assert out["unix"]["reason"] == "ok", out["unix"]
    assert out["unix"]["no_sockets"] is True, out["unix"]
    assert "Permission denied" in out["unix"]["stderr"], out["unix"]
    # What stays allowed: an already-connected stream pair (asyncio, multiprocessing).
    assert out["socketpair stream"]["reason"] == "ok", out["socketpair stream"]


def test_disk_cap(tmp_path):
    """Many files that together pass disk_mb (each under fsize_mb) end with reason
    "disk", also when the program swallows the write errors and exits 0, and also when
    spread over /tmp, /var/tmp and /dev/shm; the host carries on and leaves nothing."""
    lim = {"lang": "python", "check": "tests", "disk_mb": 16, "fsize_mb": 2, "timeout": 20}
    many = "for i in range(200):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))"
    swallow = ("n = 0\nfor i in range(200):\n    try:\n        open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n"
               "        n += 1\n    except OSError:\n        pass\nprint(n)")
    cases = [
        {"name": "many files", "code": many, "opts": lim},
        {"name": "errors swallowed", "code": swallow, "opts": lim},
        {"name": "under the cap", "code": "for i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))",
         "opts": lim},
    ]
    if ISOLATED:  # unisolated, these are the host's own directories: not written to here
        spread = ("import os\nfor n, d in enumerate(['.', '/tmp', '/var/tmp', '/dev/shm']):\n"
                  "    for i in range(5):\n"
                  "        open(os.path.join(d, f'spread{n}-{i}'), 'wb').write(b'x' * (1 << 20))")
        cases.append({"name": "spread", "code": spread, "opts": lim})
    cases.append({"name": "after", "code": "print('fine')", "opts": {"lang": "python", "check": "tests"}})
    dirs_before = sandbox_dirs()
    out, _ = run_cases(tmp_path, cases)
    for n in ("many files", "errors swallowed") + (("spread",) if ISOLATED else ()):
        assert out[n]["reason"] == "disk", out[n]
        assert out[n]["reward"] == 0 and "disk limit of 16 MiB" in out[n]["detail"], out[n]
    assert out["under the cap"]["reason"] == "ok", out["under the cap"]
    assert out["after"]["reason"] == "ok" and out["after"]["reward"] == 1
    if ISOLATED:  # the read-only step needs "/" to be a mount (not so in a plain chroot)
        assert out["many files"]["disk_capped"] is root_is_mount()
    assert not sandbox_dirs() - dirs_before
