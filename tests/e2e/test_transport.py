"""End to end: the worker transport under signals, driving $RLHOST as a user would.

A second Ctrl-C while the host waits on a busy worker must end the host promptly
(exit 130) and leave no worker behind; a single Ctrl-C must not reach the worker at
all (it runs in its own process group), so the call in flight completes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))

RECIPE = r"""
local rl = require "rl"
local m = rl.model { path = "builtin:tiny", transport = "worker", threads = 1 }
local _, pid = m:_transport()
print("worker " .. pid)
io.stdout:flush()
local s = rl.generate(m, { "a", "b" }, { n = %d, max_tokens = 240 })
print("generated " .. #s .. " interrupted=" .. tostring(rl.interrupted()))
"""


def start(tmp_path, n: int) -> tuple[subprocess.Popen, int]:
    recipe = tmp_path / "recipe.lua"
    recipe.write_text(RECIPE % n)
    p = subprocess.Popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    line = p.stdout.readline()
    assert line.startswith("worker "), (line, p.stderr.read() if p.poll() is not None else "")
    return p, int(line.split()[1])


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_second_sigint_stops_the_wait_and_the_worker(tmp_path):
    p, pid = start(tmp_path, 64)
    time.sleep(0.5)  # the generate is under way
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, (out, err)
    assert time.monotonic() - t0 < 10
    assert "interrupted" in err
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid), "the worker outlived the host"


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_one_sigint_lets_the_call_finish(tmp_path):
    p, pid = start(tmp_path, 4)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert "generated 8 interrupted=true" in out, (out, err)
    assert p.returncode == 130, (out, err)  # finished cleanly after a Ctrl-C
    assert gone(pid)


EMBEDDED_RECIPE = r"""
local rl = require "rl"
local m = rl.model { path = "builtin:tiny", threads = 1 }
rl.generate(m, { "warm" }, { max_tokens = 2 })
print("ready")
io.stdout:flush()
local t0 = os.time()
while not rl.interrupted() and os.time() - t0 < 20 do
  rl.generate(m, { "a" }, { max_tokens = 4 })
end
print("saw interrupt " .. tostring(rl.interrupted()))
"""


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_embedded_python_leaves_sigint_to_the_host(tmp_path):
    """The embedded interpreter installs no SIGINT handler (py.c): a Ctrl-C is seen by
    the recipe through rl.interrupted(), not turned into a KeyboardInterrupt."""
    recipe = tmp_path / "embedded.lua"
    recipe.write_text(EMBEDDED_RECIPE)
    p = subprocess.Popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "saw interrupt true" in out, (out, err)
    assert "KeyboardInterrupt" not in err
    assert p.returncode == 130, (out, err)


LONG_EMBEDDED = r"""
local rl = require "rl"
local m = rl.model { path = "builtin:tiny", threads = 1 }
rl.generate(m, { "warm" }, { max_tokens = 2 })
print("ready")
io.stdout:flush()
local t0 = rl.fs.monotonic()
local ok, e = pcall(rl.generate, m, { "a", "b", "c" }, { n = 64, max_tokens = 240 })
io.stderr:write(("call ended after %.2f s: %s\n"):format(rl.fs.monotonic() - t0, tostring(e)))
"""


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_second_sigint_interrupts_an_embedded_call(tmp_path):
    """py.c's watcher raises KeyboardInterrupt in the engine at a second Ctrl-C: the
    call ends with kind=interrupted long before the generate would have finished."""
    recipe = tmp_path / "long.lua"
    recipe.write_text(LONG_EMBEDDED)
    p = subprocess.Popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    # Timed to the error report, not to the exit: under make san the exit adds
    # LeakSanitizer's scan of a heap holding torch (2.5 s here, the stop itself 0.06 s).
    first = []
    for line in p.stderr:
        first.append(line)
        if "interrupted error" in line:
            break
    took = time.monotonic() - t0
    out, rest = p.communicate(timeout=120)
    err = "".join(first) + rest
    assert p.returncode == 130, (out, err)
    assert "interrupted error" in err, err
    assert took < 3, f"{took:.1f} s from the second Ctrl-C to the error\n{err}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
