"""End to end: both engine transports under signals and odd paths, driving $RLHOST as
a user would.

A second Ctrl-C (or SIGTERM, SIGHUP) while the host waits on a busy worker must end the
host promptly and leave no worker behind; a single one must not reach the worker at
all (it runs in its own process group), so the call in flight completes and the host
exits 130 / 143 / 129. A host killed by SIGKILL takes its worker and sandboxed
programs with it. A run directory whose name is not ASCII (or not even UTF-8) is
checkpointed and restored through either transport, whatever the locale.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from procwait import descendants, kill_and_wait, read_until, wait_for, wait_gone

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


_started: list[subprocess.Popen] = []


def popen(args, **kw) -> subprocess.Popen:
    """subprocess.Popen, remembered so that a failing test leaves no host running."""
    p = subprocess.Popen(args, **kw)
    _started.append(p)
    return p


@pytest.fixture(autouse=True)
def _no_host_left():
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:  # the test failed before it ended its host; its worker
            kill_and_wait(p, signal.SIGKILL, what="a host the test left")  # dies with it
        for f in (p.stdout, p.stderr):
            if f:
                f.close()


def start(tmp_path, n: int) -> tuple[subprocess.Popen, int]:
    recipe = tmp_path / "recipe.lua"
    recipe.write_text(RECIPE % n)
    p = popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    line = p.stdout.readline()
    assert line.startswith("worker "), (line, p.stderr.read() if p.poll() is not None else "")
    return p, int(line.split()[1])


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_second_sigint_stops_the_wait_and_the_worker(tmp_path):
    p, pid = start(tmp_path, 64)
    time.sleep(0.5)  # the generate is under way
    p.send_signal(signal.SIGINT)
    first = read_until(p.stderr, "finishing the current step")  # signals do not queue
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    err = first + err
    assert p.returncode == 130, (out, err)
    assert time.monotonic() - t0 < 10
    assert "interrupted" in err
    wait_gone(pid, 10, "the worker of a host stopped by a second Ctrl-C")


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                        (signal.SIGHUP, 129)])
def test_one_signal_lets_the_call_finish(tmp_path, sig, status):
    p, pid = start(tmp_path, 4)
    time.sleep(0.3)  # most likely inside the generate; before it is as good
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert "generated 8 interrupted=true" in out, (out, err)
    assert p.returncode == status, (out, err)  # finished cleanly after the signal
    if sig != signal.SIGINT:
        assert f"{sig.name}: finishing the current step" in err, err
    wait_gone(pid, 30, "the worker of a host that finished")


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_sigterm_to_every_process_of_the_job_lets_the_call_finish(tmp_path):
    """systemd (a control group) and batch schedulers (a job step) send SIGTERM to every
    process of the job at once, the worker included: it must not die mid-request."""
    p, pid = start(tmp_path, 4)
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert "generated 8 interrupted=true" in out, (out, err)
    assert p.returncode == 143, (out, err)
    wait_gone(pid, 30, "the worker of a host that finished")


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_second_sigterm_stops_the_wait_and_the_worker(tmp_path):
    p, pid = start(tmp_path, 64)
    p.send_signal(signal.SIGTERM)
    first = read_until(p.stderr, "SIGTERM: finishing the current step")  # do not queue
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    err = first + err
    assert p.returncode == 143, (out, err)
    assert "interrupted by a second signal (the first was SIGTERM)" in err, err
    wait_gone(pid, 10, "the worker of a host stopped by a second SIGTERM")


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_sigkilled_host_takes_its_busy_worker_along(tmp_path):
    """The worker asked the kernel for SIGKILL at its parent's death (PR_SET_PDEATHSIG):
    it does not finish its long generate first, nor live on holding memory."""
    p, pid = start(tmp_path, 256)
    kill_and_wait(p, signal.SIGKILL, what="host")
    took = wait_gone(pid, 20, "the worker of a SIGKILLed host")
    assert took < 10, f"the worker lived {took:.1f} s past its host"


SANDBOX_RECIPE = r"""
local rl = require "rl"
io.stdout:write("go\n") io.stdout:flush()
local r, info = rl.score(rl.reward.run{lang = "bash", check = "tests", timeout = 120, cpu = 120,
                                      tests = {{stdin = "", stdout = ""}}},
                         {{text = "sleep 300"}})
"""


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_sigkilled_host_takes_its_sandboxed_programs_along(tmp_path):
    recipe = tmp_path / "sb.lua"
    recipe.write_text(SANDBOX_RECIPE)
    # A SIGKILLed host cannot remove its sandbox's work directory: keep it in this
    # test's own TMPDIR, not in the /tmp other tests check.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp)))
    assert p.stdout.readline().strip() == "go"
    # the program itself (sleep) is running under the sandbox's processes
    kids = wait_for(lambda: (lambda d: d if any(c == "sleep" for _, c in d) else None)(
        descendants(p.pid)), 60, "the sandboxed program to start")
    kill_and_wait(p, signal.SIGKILL, what="host")
    for pid, comm in kids:
        wait_gone(pid, 20, f"sandbox process '{comm}' of a SIGKILLed host")


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
    p = popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
    p = popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    first = [read_until(p.stderr, "finishing the current step")]  # signals do not queue
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    # Timed to the error report, not to the exit: under make san the exit adds
    # LeakSanitizer's scan of a heap holding torch (2.5 s here, the stop itself 0.06 s).
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


PATH_RECIPE = r"""
local rl = require "rl"
local cfg = rl.config{dir = "", transport = "embedded"}
local run = rl.run{dir = cfg.dir, resume = true, checkpoint_every = 1, plot = false,
                   progress = false}
local m <close> = rl.model{path = "builtin:tiny", transport = cfg.transport, device = "cpu",
                           threads = 1, seed = 3}
run:model(m)
for step in run:steps(tonumber(os.getenv("STEPS"))) do
  local s = rl.generate(m, {"ab", "cd"}, {n = 2, max_tokens = 4, temperature = 1.0})
  local st = m:train_step(s, {loss = "pg", advantages = {1, -1, 0.5, -0.5}, clip = 1.0})
  run:log{loss = st.loss}
end
"""


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
@pytest.mark.parametrize("lang", ["C", "C.UTF-8"])
@pytest.mark.parametrize("transport", ["embedded", "worker"])
def test_non_ascii_run_dir_checkpoints_and_resumes(tmp_path, transport, lang):
    """Fault 9.1: 'runs/rün ✓' failed with UnicodeEncodeError in the engine (the
    embedded Python took ASCII as the file-system encoding)."""
    recipe = tmp_path / "paths.lua"
    recipe.write_text(PATH_RECIPE)
    run = tmp_path / "runs" / "rün ✓"

    def host(steps: int) -> subprocess.CompletedProcess:
        env = dict(os.environ, LANG=lang, LC_ALL=lang, STEPS=str(steps))
        return subprocess.run([RLHOST, str(recipe), f"dir={run}", f"transport={transport}"],
                              capture_output=True, env=env, cwd=tmp_path, timeout=300,
                              text=True, errors="replace")

    p = host(2)
    assert p.returncode == 0, p.stderr
    assert sorted(n for n in os.listdir(run) if n.startswith("ckpt-")) == ["ckpt-1", "ckpt-2"]
    assert os.path.isfile(run / "ckpt-2" / "model" / "model.safetensors")
    p = host(3)  # resumes: the engine reads the checkpoint back from the same path
    assert p.returncode == 0, p.stderr
    assert "from ckpt-2" in p.stderr, p.stderr
    assert os.path.isdir(run / "ckpt-3")


BYTES_RECIPE = r"""
local rl = require "rl"
local m <close> = rl.model{path = "builtin:tiny", transport = arg[1], device = "cpu", threads = 1}
local d = arg[2]
m:save(d .. "/m")
m:restore(d .. "/m")
local ok, e = pcall(m.restore, m, d .. "/missing")
io.stdout:write(e.message, "\n")
ok, e = pcall(rl.generate, m, {"a\xffb"}, {max_tokens = 2})
io.stdout:write(tostring(e), "\n")
"""


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
@pytest.mark.parametrize("transport", ["embedded", "worker"])
def test_path_bytes_that_are_not_utf8_round_trip(tmp_path, transport):
    """A Linux path is bytes: 0xFF travels to the engine as U+DCFF (surrogateescape) and
    back, in the files it writes and in the error text it returns. Text the model reads
    must still be UTF-8: a prompt holding 0xFF is refused naming the field."""
    recipe = tmp_path / "bytes.lua"
    recipe.write_text(BYTES_RECIPE)
    d = os.fsencode(tmp_path) + b"/r\xffn \xe2\x9c"
    os.mkdir(d)
    p = subprocess.run([os.fsencode(RLHOST), os.fsencode(recipe), transport.encode(), d],
                       capture_output=True, env=dict(os.environ, LANG="C", LC_ALL="C"),
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert os.path.isfile(d + b"/m/model.safetensors")
    assert os.listdir(os.fsencode(tmp_path)).count(b"r\xffn \xe2\x9c") == 1  # no lookalike
    restore_err, prompt_err = p.stdout.split(b"\n")[:2]
    assert d + b"/missing" in restore_err, restore_err
    assert b"'prompts[1]' is not valid UTF-8 text (byte 0xff" in prompt_err, prompt_err


RESUME_RECIPE = r"""
local rl = require "rl"
local cfg = rl.config{dir = "", transport = "embedded"}
local run = rl.run{dir = cfg.dir, resume = true, checkpoint_every = 100, plot = false,
                   progress = false}
local m <close> = rl.model{path = "builtin:tiny", transport = cfg.transport, device = "cpu",
                           threads = 1, seed = 3}
run:model(m)
for step in run:steps(6) do
  local s = rl.generate(m, {"ab", "cd"}, {n = 2, max_tokens = 4, temperature = 1.0})
  local st = m:train_step(s, {loss = "pg", advantages = {1, -1, 0.5, -0.5}, clip = 1.0})
  run:log{loss = st.loss, text = s[1].text .. "|" .. s[4].text}
  if os.getenv("SLOW") then rl.fs.sleep(0.5) end
end
m:save(cfg.dir .. "/final")
"""


def metrics_of(run) -> list[dict]:
    rows = []
    with open(run / "metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            rec.pop("time", None)  # wall-clock times differ by nature
            rows.append(rec)
    return rows


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
@pytest.mark.parametrize("transport", ["embedded", "worker"])
def test_sigterm_checkpoints_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path,
                                                                              transport):
    recipe = tmp_path / "resume.lua"
    recipe.write_text(RESUME_RECIPE)

    def args(run):
        return [RLHOST, str(recipe), f"dir={run}", f"transport={transport}"]

    ref = tmp_path / "ref"
    p = subprocess.run(args(ref), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "termed"
    p = popen(args(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=dict(os.environ, SLOW="1"))
    wait_for(lambda: p.poll() is not None or (run / "metrics.jsonl").exists()
             and len(metrics_of(run)) >= 2, 300, "step 2")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 143, err
    assert "SIGTERM: finishing the current step" in err, err
    k = len(metrics_of(run))
    assert 2 <= k < 6 and f"interrupted after step {k}; checkpoint" in err, err
    assert (run / f"ckpt-{k}" / "manifest.json").exists()
    p = subprocess.run(args(run), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"from ckpt-{k}" in p.stderr, p.stderr
    assert metrics_of(run) == metrics_of(ref)
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert (run / "final" / f).read_bytes() == (ref / "final" / f).read_bytes(), f


SYNC_RECIPE = r"""
local rl = require "rl"
local trainer <close> = rl.model{path = "builtin:tiny", device = "cpu", threads = 1}
local gen <close> = rl.model{path = "builtin:tiny", transport = "worker", device = "cpu",
                             threads = 1}
local _, wpid = gen:_transport()
io.stdout:write("worker ", wpid, "\n") io.stdout:flush()
local s0 = rl.generate(trainer, {"ab", "cd"}, {max_tokens = 3})
trainer:train_step(s0, {loss = "sft", clip = 1.0})
for i = 1, tonumber(os.getenv("SYNCS") or "1000000") do
  trainer:sync(gen)
end
local s = rl.generate(gen, {"ab"}, {max_tokens = 2})
io.stdout:write("synced version ", s[1].version, " of ", trainer:info().version, "\n")
"""


def sync_files(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("rlengine-"))


def start_sync(tmp_path, env: dict) -> tuple[subprocess.Popen, int]:
    recipe = tmp_path / "sync.lua"
    recipe.write_text(SYNC_RECIPE)
    p = popen([RLHOST, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path, env=dict(os.environ, **env))
    line = p.stdout.readline()
    assert line.startswith("worker "), (line, p.stderr.read() if p.poll() is not None else "")
    return p, int(line.split()[1])


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_host_sigkilled_mid_sync_leaves_nothing_after_the_next_start(tmp_path):
    """Fault 9.3: a host SIGKILLed while it wrote the weights for its worker left
    rlengine-PID-*.safetensors.tmp-* files in /dev/shm for good. Here the sync
    directory is a private one (RLENGINE_SHM_DIR), so the count is exact, and every
    kill lands inside a write (the engine pauses there for the test)."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {"RLENGINE_SHM_DIR": str(shm), "RLENGINE_TEST_WRITE_DELAY": "0.3"}
    for _ in range(4):
        p, worker = start_sync(tmp_path, env)
        mine = f"rlengine-{p.pid}-"  # the embedded trainer writes them, in the host
        wait_for(lambda: [n for n in sync_files(shm) if n.startswith(mine) and ".tmp-" in n],
                 120, "a weight-sync write to start")
        kill_and_wait(p, signal.SIGKILL, what="host")
        wait_gone(worker, 20, "the worker of a SIGKILLed host")
        # the kill landed in a write: its half-written file is there (until the next
        # host's start removes it)
        assert [n for n in sync_files(shm) if n.startswith(mine) and ".tmp-" in n]
    left = sync_files(shm)
    # The next start of any engine removes what dead owners left; a live one's stay.
    other = shm / f"rlengine-{os.getpid()}-0123456789ab.safetensors"
    other.write_bytes(b"a live process's file")
    p = subprocess.run([RLHOST, "-e", 'rl.model{path = "builtin:tiny", threads = 1}'],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=dict(os.environ, RLENGINE_SHM_DIR=str(shm)))
    assert p.returncode == 0, p.stderr
    assert sync_files(shm) == [other.name], f"left before: {left}"


def mount_tmpfs(path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")
def test_full_shm_falls_back_to_the_temp_dir(tmp_path):
    """A sync directory too small for the weights (a full /dev/shm): the export says so
    once and syncs through the temporary directory; the generator still gets every
    version, and nothing half-written stays in either place."""
    shm = tmp_path / "shm"
    if not mount_tmpfs(shm, "1m"):
        pytest.skip("needs root to mount a small tmpfs")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    try:
        p, worker = start_sync(tmp_path, {"RLENGINE_SHM_DIR": str(shm), "SYNCS": "3",
                                          "TMPDIR": str(tmp)})
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "synced version 1 of 1" in out, (out, err)
        assert err.count("weight sync: cannot write") == 1, err
        assert "No space left on device" in err, err
        assert sync_files(shm) == [], "a partial file stayed in the full directory"
        assert sync_files(tmp) == [], "the fallback file outlived its model"
        wait_gone(worker, 20, "the worker")
    finally:
        subprocess.run(["umount", str(shm)])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
