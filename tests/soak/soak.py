#!/usr/bin/env python3
"""make soak: recipes/rlaif.lua on builtin:tiny for many steps while things go wrong
on purpose, then proof that the run came out whole.

Faults, all real (processes, signals, files):
- the judge (tests/servers/teacher.py, a separate process) faults a fraction of its
  requests with a mix of kinds throughout, and is stopped outright for a while in
  the middle (connections refused), then started again on the same port;
- the generator runs as a worker process (generator=worker) and gets SIGKILL about
  every `worker_every` steps, while it is busy generating;
- the host gets SIGKILL at random moments (one of them during a checkpoint write)
  and is started again with resume=true;
- one incarnation runs under a file-size limit (RLIMIT_FSIZE) that its next
  checkpoint cannot fit: it must say so, keep the previous checkpoint and leave no
  partial one; the next incarnation (limit lifted: the disk was cleaned) resumes;
- one incarnation gets SIGTERM at a random moment (a scheduler's preemption): it must
  finish its step, checkpoint it and exit 143, and the next one resume from exactly
  that step (nothing redone, nothing lost);
- that incarnation also finds its weight-sync directory full: RLENGINE_SHM_DIR points
  at a small tmpfs the soak mounts and fills (root only; the summary says when it
  could not): the engine must say so once, sync through TMPDIR instead, and leave
  nothing in either place.

Then it checks: every step exactly once in metrics.jsonl; the SIGTERM and full-shm
stages went as described; the newest checkpoint
verifies, loads losslessly and reproduces the final step's greedy held-out reward
(the final weights) and version; the judge cache passes PRAGMA integrity_check; no
process carrying this soak's marker, no .tmp-* entry, no sandbox or /dev/shm file
is left. It prints what was injected and how each fault was absorbed, and exits 0
only if every check holds.

    .venv/bin/python tests/soak/soak.py [--steps 200] [--dir build/soak] ...
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from procwait import wait_for  # noqa: E402  (the tests' shared process helpers)

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
RLAIF = os.path.join(ROOT, "recipes", "rlaif.lua")
CHECK_LUA = os.path.join(ROOT, "tests", "soak", "check_ckpt.lua")
FINAL_SAVE_LUA = os.path.join(ROOT, "tests", "soak", "final_save.lua")
TEACHER = os.path.join(ROOT, "tests", "servers", "teacher.py")
MARKER = "RLHOST_SOAK_ID"  # every process the soak starts carries it in its environment

# A rubric the test teacher grades ("len10": 1 + len % 10 on the 0-10 scale, so the
# rewards vary within a group and the policy trains every step).
RUBRIC = ("Grade the answer to {prompt} (correct: {reference}) from {lo} to {hi}.\n"
          "[The Start of the Response]\n{completion}\n[The End of the Response]\n")
ALL_FAULTS = ["429", "429date", "500", "503", "truncated", "ctype", "hang", "reset",
              "unparsable"]


def log(msg: str) -> None:
    print(f"soak: [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int, needle: bytes) -> list[int]:
    """Live children of pid whose command line contains needle."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_stat(int(d))
        if not st or int(st[1]) != pid or st[0] == "Z":
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out


def marked_processes(soak_id: str) -> list[str]:
    """Live processes whose environment carries this soak's marker: anything the
    soak started, or that those started, however far it was reparented."""
    want = f"{MARKER}={soak_id}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if want not in f.read().split(b"\0"):
                    continue
            st = proc_stat(int(d))
            if st and st[0] == "Z":
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            out.append(f"{d}: {cmd}")
        except OSError:
            continue
    return out


def cpu_ticks(pid: int) -> int | None:
    st = proc_stat(pid)
    return int(st[11]) + int(st[12]) if st else None  # utime + stime


# ---------------------------------------------------------------- the judge


class Judge:
    """tests/servers/teacher.py as a child process on a fixed port, so an outage is a
    real one (connection refused) and the restarted server is reached at the same
    URL. Its counters restart with it; stats() sums them over every life."""

    def __init__(self, cfg: dict[str, Any], env: dict[str, str], workdir: str):
        self.cfg = cfg
        self.env = env
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.past: dict[str, int] = {}
        self.lives = 0

    def start(self) -> None:
        cfg = dict(self.cfg)
        # teacher.py binds port 0 as a program; bind a known port through its Server.
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import teacher; "
                "s = teacher.Server(('127.0.0.1', int(sys.argv[2])), json.loads(sys.argv[3])); "
                "print('PORT', s.server_address[1], flush=True); "
                "s.serve_forever(poll_interval=0.05)")
        args = [sys.executable, "-c", code, os.path.dirname(TEACHER), str(self.port),
                json.dumps(cfg)]
        for attempt in range(50):  # the old socket may linger briefly after a restart
            self.proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE,
                                         stderr=open(os.path.join(self.workdir, "judge.log"), "a"),
                                         text=True)
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                self.lives += 1
                return
            self.proc.wait()
            time.sleep(0.1)
        raise RuntimeError(f"the judge server would not start on port {self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def live_stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            for k, v in self.live_stats().items():
                self.past[k] = self.past.get(k, 0) + v
        except (OSError, ValueError) as e:
            log(f"judge /_stats unreadable before stopping it: {e}")
        self.proc.send_signal(signal.SIGINT)  # teacher.py's main stops on KeyboardInterrupt
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict[str, int]:
        total = dict(self.past)
        if self.up:
            for k, v in self.live_stats().items():
                total[k] = total.get(k, 0) + v
        return total


# ---------------------------------------------------------------- the run


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """Complete lines of metrics.jsonl (a last line without its newline is being written)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    try:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def tmp_entries(run_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(run_dir) if n.startswith(".tmp-"))
    except FileNotFoundError:
        return []


def checkpoints(run_dir: str) -> list[int]:
    try:
        return sorted(int(m.group(1)) for n in os.listdir(run_dir)
                      if (m := re.fullmatch(r"ckpt-(\d+)", n)))
    except FileNotFoundError:
        return []


@dataclass
class Stage:
    """One incarnation of the host and how it is meant to end."""
    end: str                    # "kill" | "kill_ckpt" | "disk_full" | "sigterm" | "finish"
    after_step: int = 0         # kill: once this step is logged (plus a random delay);
                                # kill_ckpt: at the first checkpoint write after it
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Incarnation:
    index: int
    stage: str
    pid: int
    log: str
    started_step: int
    resumed_from: str = ""
    resumed_step: int = 0
    running: bool = False
    ended_step: int = 0
    rc: int | None = None
    how: str = ""               # what ended it, as the summary tells it
    error: str = ""


class Soak:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.rng = random.Random(a.seed)
        self.soak_id = uuid.uuid4().hex
        self.dir = os.path.abspath(a.dir)
        self.run_dir = os.path.join(self.dir, "run")
        self.tmp = os.path.join(self.dir, "tmp")
        self.cache = os.path.join(self.dir, "judge-cache.sqlite")
        self.final_save = os.path.join(self.dir, "final-save")
        # every metrics line any incarnation wrote, by (incarnation, step): lines of
        # steps redone after a resume are dropped from metrics.jsonl, but the faults
        # they absorbed happened and count in the summary
        self.seen: dict[tuple[int, int], dict[str, Any]] = {}
        self._metrics_sig: tuple[int, int] = (-1, -1)
        self._rows: list[dict[str, Any]] = []
        self.incarnations: list[Incarnation] = []
        self.host_pids: list[int] = []
        self.hosts: list[subprocess.Popen[bytes]] = []
        self.worker_kills: list[dict[str, Any]] = []
        self.outage: dict[str, Any] = {}
        self.disk_full: dict[str, Any] = {}
        self.sigterm: dict[str, Any] = {}
        self.shm_full: dict[str, Any] = {}
        self.failures: list[str] = []
        self.t0 = time.monotonic()
        self.next_worker_kill = self.rng.randint(min(5, a.worker_every), a.worker_every)
        self.unplanned = 0

    # -- setup

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("RL_TEACHER") and k != "RLHOST_TEST_CHECKPOINT_DELAY"}
        e[MARKER] = self.soak_id
        # Temporary files of the host and what it starts (sandboxes, Python's
        # tempfiles) land here, so "nothing left behind" can be checked exactly.
        e["TMPDIR"] = self.tmp
        e.update(extra or {})
        return e

    def recipe_args(self) -> list[str]:
        a = self.a
        return [f"dir={self.run_dir}", f"steps={a.steps}", "generator=worker",
                f"prompts={a.prompts}", f"group={a.group}", f"max_tokens={a.max_tokens}",
                f"checkpoint_every={a.checkpoint_every}", "keep_last=3",
                f"eval_every={a.eval_every}", f"eval_prompts={a.eval_prompts}",
                "threads=1", "plot=false", f"rubric={os.path.join(self.dir, 'rubric.txt')}",
                f"judge_cache={self.cache}", f"teacher_timeout={a.teacher_timeout}",
                "gen_timeout=60", "resume=true"]

    def plan(self) -> list[Stage]:
        n, r = self.a.steps, self.rng
        kills = self.a.host_kills
        stages: list[Stage] = []
        # Random moments spread over the run; the second kill lands in a checkpoint
        # write, made long enough to hit by the library's own test hook.
        spots = sorted(r.randint(max(2, int(n * lo)), max(3, int(n * hi)))
                       for lo, hi in [(0.1, 0.2), (0.2, 0.28), (0.6, 0.7)][:kills])
        term = r.randint(max(4, int(n * 0.45)), max(5, int(n * 0.55))) if self.a.sigterm else 0
        for i, s in enumerate(spots):
            if term and s > term:
                stages.append(self.sigterm_stage(term))
                term = 0
            if i == 1:
                stages.append(Stage("kill_ckpt", s, {"RLHOST_TEST_CHECKPOINT_DELAY": "0.3"}))
            else:
                stages.append(Stage("kill", s))
            if i == min(1, kills - 1) and self.a.disk_full:
                # early, so the run's pace around the outage cannot crowd it out
                stages.append(Stage("disk_full"))
        if term:
            stages.append(self.sigterm_stage(term))
        stages.append(Stage("finish"))
        return stages

    def sigterm_stage(self, after: int) -> Stage:
        """SIGTERM after step `after`; with --shm-full, its weight sync finds a full
        directory."""
        env = {}
        if self.a.shm_full:
            full = self.full_shm()
            if full:
                env["RLENGINE_SHM_DIR"] = full
        return Stage("sigterm", after, env)

    def full_shm(self) -> str | None:
        """A 2 MiB tmpfs, mounted under the soak dir and filled to the last byte (a
        full /dev/shm without filling the machine's). None where mounting is refused."""
        path = os.path.join(self.dir, "shm-full")
        os.makedirs(path, exist_ok=True)
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=1777", "tmpfs", path],
                           capture_output=True, text=True)
        if m.returncode != 0:
            self.shm_full.update(skipped=m.stderr.strip() or f"mount exited {m.returncode}")
            log(f"full /dev/shm stage skipped: cannot mount a tmpfs ({self.shm_full['skipped']})")
            return None
        self.shm_full.update(dir=path)
        try:
            with open(os.path.join(path, "filler"), "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        except OSError as e:
            self.shm_full.update(filled=str(e))
        log(f"weight-sync directory {path}: a tmpfs filled up ({self.shm_full.get('filled')})")
        return path

    def unmount_shm(self) -> None:
        d = self.shm_full.get("dir")
        if d and not self.shm_full.get("unmounted"):
            left = sorted(n for n in os.listdir(d) if n != "filler")
            self.shm_full.update(left=left, unmounted=True)
            subprocess.run(["umount", d], capture_output=True)

    # -- faults

    def outage_step(self) -> int:
        # In the middle of the wall time rather than of the steps: while the judge is
        # down, steps score with the native reward, which on this untrained model
        # gives groups of equal rewards, so nothing trains and steps run about ten
        # times faster (30 s covered 110 of 200 steps when it started at step 80).
        return max(1, int(self.a.steps * 0.35))

    def outage_over(self) -> bool:
        return self.a.outage_s <= 0 or "end" in self.outage

    def maybe_outage(self, step: int) -> None:
        """Stop the judge for outage_s seconds once the run reaches outage_step."""
        o = self.outage
        if not o and step >= self.outage_step() and self.a.outage_s > 0:
            self.judge.stop()
            o.update(start=time.monotonic(), step=step, until=time.monotonic() + self.a.outage_s)
            log(f"judge DOWN at step {step} for {self.a.outage_s:g}s")
        elif o and "end" not in o and time.monotonic() >= o["until"]:
            self.judge.start()
            o["end"] = time.monotonic()
            o["end_step"] = step
            log(f"judge UP again at step {step} (down {o['end'] - o['start']:.1f}s)")

    def outage_near(self) -> bool:
        """While the judge is down (and just after, while the generator chain may
        still skip it), a killed worker has no teacher to fall back on."""
        o = self.outage
        return bool(o) and ("end" not in o or time.monotonic() < o["end"] + 3)

    def kill_worker_at_random(self, host: subprocess.Popen[bytes], step: int) -> bool:
        """SIGKILL the generator worker within a second of a step ending."""
        time.sleep(self.rng.uniform(0.0, 1.0))
        workers = children(host.pid, b"rlengine.worker")
        if not workers or host.poll() is not None:
            return False
        os.kill(workers[0], signal.SIGKILL)
        self.worker_kills.append({"step": step, "pid": workers[0], "when": "at random"})
        log(f"worker {workers[0]} SIGKILLed after step {step} (at a random moment)")
        return True

    def kill_worker_when_busy(self, host: subprocess.Popen[bytes], step: int) -> bool:
        """SIGKILL the generator worker while it computes (two CPU-time samples
        rising 15 ms apart: a generate call, or the import of new weights)."""
        workers = children(host.pid, b"rlengine.worker")
        if not workers:
            return False
        w = workers[0]
        last = cpu_ticks(w)
        deadline = time.monotonic() + 30
        rising = 0
        while time.monotonic() < deadline and host.poll() is None:
            time.sleep(0.015)
            now = cpu_ticks(w)
            if now is None:
                return False
            rising = rising + 1 if last is not None and now > last else 0
            last = now
            st = proc_stat(w)
            if rising >= 2 and st and st[0] == "R":
                os.kill(w, signal.SIGKILL)
                self.worker_kills.append({"step": step, "pid": w, "when": "busy"})
                log(f"worker {w} SIGKILLed after step {step} (while busy)")
                return True
        return False

    # -- incarnations

    def poll_metrics(self, inc: Incarnation) -> list[dict[str, Any]]:
        """metrics.jsonl, reread only when it changed (the loop polls every 10 ms)."""
        try:
            st = os.stat(os.path.join(self.run_dir, "metrics.jsonl"))
            sig = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            sig = (0, 0)
        if sig != self._metrics_sig:
            self._metrics_sig = sig
            self._rows = read_metrics(self.run_dir)
            if self.host_started(inc):
                for r in self._rows[inc.resumed_step:]:
                    self.seen[(inc.index, r["step"])] = r
        return self._rows

    def host_started(self, inc: Incarnation) -> bool:
        """Has this incarnation loaded its models and resumed (its worker is up and
        metrics.jsonl was cut back to its checkpoint)?"""
        if inc.running:
            return True
        try:
            with open(inc.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return False
        m = re.search(r"resuming \S+ from ckpt-(\d+)", text)
        if m:
            inc.resumed_from, inc.resumed_step = f"ckpt-{m.group(1)}", int(m.group(1))
        inc.running = bool(m) or bool(re.search(r"^step \d+", text, re.M))
        return inc.running

    def start_host(self, stage: Stage) -> tuple[subprocess.Popen[bytes], Incarnation]:
        k = len(self.incarnations) + 1
        logpath = os.path.join(self.dir, f"host-{k}.log")
        env = self.env({"RL_TEACHER_URL": self.judge.url, "RL_TEACHER_MODEL": "teach", **stage.env})
        preexec: Callable[[], None] | None = None
        if stage.end == "disk_full":
            # The next checkpoint's optimizer file (2x the weights) cannot fit, while
            # the weights export for the worker (1x) and the small files still can:
            # a disk that fills up right at the checkpoint.
            newest = max(checkpoints(self.run_dir))
            weights = os.path.getsize(os.path.join(self.run_dir, f"ckpt-{newest}", "model",
                                                   "model.safetensors"))
            limit = int(weights * 1.5)
            self.disk_full.update(limit=limit, kept=newest)

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        hook: list[str] = []
        if stage.end == "finish":
            env["SOAK_FINAL_SAVE"] = self.final_save
            hook = ["-e", f"dofile({json.dumps(FINAL_SAVE_LUA)})"]
        with open(logpath, "wb") as lf:
            p = subprocess.Popen([RLHOST, *hook, self.recipe, *self.recipe_args()], cwd=self.dir,
                                 env=env,
                                 stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                 preexec_fn=preexec)
        self.host_pids.append(p.pid)
        self.hosts.append(p)
        inc = Incarnation(k, stage.end, p.pid, logpath,
                          started_step=len(read_metrics(self.run_dir)))
        self.incarnations.append(inc)
        log(f"host #{k} pid {p.pid} ({stage.end}) started; metrics hold "
            f"{inc.started_step} steps; checkpoints {checkpoints(self.run_dir)}")
        return p, inc

    def run_stage(self, stage: Stage) -> bool:
        """Run one incarnation to its planned end. False if it ended some other way
        (the stage is then run again by a new incarnation)."""
        p, inc = self.start_host(stage)
        kill_at: float | None = None
        termed: float | None = None  # when SIGTERM was sent
        while True:
            rc = p.poll()
            rows = self.poll_metrics(inc)
            step = rows[-1]["step"] if rows else 0
            self.maybe_outage(step)
            if rc is not None:
                break
            if termed is not None:
                if time.monotonic() > termed + 300:
                    p.kill()
                    p.wait()
                    self.failures.append("the host did not stop within 300 s of SIGTERM")
                    break
                time.sleep(0.01)
                continue
            if stage.end == "sigterm" and step >= stage.after_step and self.host_started(inc):
                if kill_at is None:
                    kill_at = time.monotonic() + self.rng.uniform(0.0, 2.0)  # a random moment
                elif time.monotonic() >= kill_at:
                    p.send_signal(signal.SIGTERM)
                    termed = time.monotonic()
                    self.sigterm.update(step=step, pid=p.pid)
                    log(f"host #{inc.index} SIGTERM after step {step}")
                    continue
            if step >= self.next_worker_kill and not self.outage_near() \
                    and step < self.a.steps - 1 and self.host_started(inc):
                # Alternately while it generates (the step falls back to the teacher)
                # and at a random moment (mostly idle: the next sync restarts it).
                kill = self.kill_worker_when_busy if len(self.worker_kills) % 2 == 0 \
                    else self.kill_worker_at_random
                if kill(p, step):
                    jitter = self.rng.randint(-3, 3)
                    self.next_worker_kill = step + max(1, self.a.worker_every + jitter)
                continue
            # a kill planned after the outage waits for its end, so the next host
            # finds the judge back (this one's fallback chain would skip it for
            # the breaker's cooldown), but not past 85% of the run
            if stage.end == "kill" and step >= stage.after_step and \
                    (stage.after_step < self.outage_step() or self.outage_over()
                     or step >= int(self.a.steps * 0.85)):
                if kill_at is None:
                    kill_at = time.monotonic() + self.rng.uniform(0.0, 2.0)  # a random moment
                elif time.monotonic() >= kill_at:
                    tmp = tmp_entries(self.run_dir)
                    p.kill()
                    p.wait()
                    inc.how = f"SIGKILL after step {step}" + (f" (during {tmp[0]})" if tmp else "")
                    break
            # (with a complete checkpoint already there, for the next host to resume)
            if stage.end == "kill_ckpt" and step >= stage.after_step and checkpoints(self.run_dir):
                tmp = [t for t in tmp_entries(self.run_dir) if t.startswith(".tmp-ckpt-")]
                if tmp:
                    time.sleep(self.rng.uniform(0.05, 0.6))  # somewhere inside the write
                    tmp = [t for t in tmp_entries(self.run_dir) if t.startswith(".tmp-ckpt-")]
                    if tmp:
                        p.kill()
                        p.wait()
                        being = int(tmp[0].split("-")[3])  # .tmp-ckpt-STEP-PID
                        inc.how = f"SIGKILL during the checkpoint write {tmp[0]}"
                        if being in checkpoints(self.run_dir):
                            self.failures.append(f"ckpt-{being} exists though its write was killed")
                        if not tmp_entries(self.run_dir):
                            self.failures.append("the killed checkpoint write left no .tmp-ckpt")
                        break
            time.sleep(0.01)
        inc.rc = p.returncode
        self._metrics_sig = (-1, -1)
        rows = self.poll_metrics(inc)
        inc.ended_step = rows[-1]["step"] if rows else 0
        with open(inc.log, errors="replace") as f:
            text = f.read()
        errs = [ln for ln in text.splitlines() if "error" in ln and not ln.startswith("\t")]
        inc.error = errs[-1].strip() if errs else ""
        if inc.how:
            log(f"host #{inc.index}: {inc.how}")
            return True
        if stage.end == "sigterm" and termed is not None:
            return self.sigterm_ended(inc, p.returncode, text)
        if stage.end == "disk_full" and p.returncode == 1 and "not written" in text:
            inc.how = "checkpoint write failed: file size limit"
            said = next(ln for ln in text.splitlines() if "not written" in ln)
            self.disk_full.update(message=said,
                                  step=inc.ended_step, tmp_left=tmp_entries(self.run_dir),
                                  ckpts=checkpoints(self.run_dir))
            log(f"host #{inc.index} exited 1: {self.disk_full['message']}")
            if tmp_entries(self.run_dir):
                self.failures.append(f"the failed checkpoint left {tmp_entries(self.run_dir)}")
            if self.disk_full["kept"] not in checkpoints(self.run_dir):
                self.failures.append(
                    f"ckpt-{self.disk_full['kept']} is gone after the failed write")
            if "is kept" not in self.disk_full["message"]:
                self.failures.append("the failed checkpoint's message does not name the one kept")
            return True
        if p.returncode == 0 and inc.ended_step >= self.a.steps:
            # (a planned kill that came too late in a short run: the run is complete)
            inc.how = "finished"
            log(f"host #{inc.index} finished at step {inc.ended_step}")
            return True
        inc.how = f"UNPLANNED exit {p.returncode}"
        log(f"host #{inc.index} UNPLANNED exit {p.returncode} at step {inc.ended_step}: "
            f"{inc.error}")
        return False

    def sigterm_ended(self, inc: Incarnation, rc: int, text: str) -> bool:
        """The SIGTERMed host: exit 143 after checkpointing the step it was in."""
        inc.how = f"SIGTERM after step {self.sigterm['step']}: exit {rc}"
        m = re.search(r"interrupted after step (\d+); checkpoint (\S+) written", text)
        self.sigterm.update(rc=rc, said="SIGTERM: finishing the current step" in text,
                            stopped=int(m.group(1)) if m else None,
                            ckpts=checkpoints(self.run_dir), tmp_left=tmp_entries(self.run_dir),
                            logged=inc.ended_step)
        if self.shm_full.get("dir"):
            self.shm_full.update(warned=text.count("weight sync: cannot write"))
            self.unmount_shm()
        log(f"host #{inc.index} exited {rc} after SIGTERM; stopped after step "
            f"{self.sigterm['stopped']}")
        if rc == 0 and inc.ended_step >= self.a.steps:
            inc.how = "finished"  # the SIGTERM came with the last step
        return True

    def check_sigterm(self) -> tuple[str, bool, str]:
        t = self.sigterm
        name = "SIGTERM: step finished, checkpointed, exit 143, resumed from that step"
        if not t:
            return name, not self.a.sigterm, "not planned" if not self.a.sigterm else "never sent"
        k = t.get("stopped")
        # the next host that got as far as resuming (one killed while it started up,
        # before reading the run directory, does not count)
        at = next((i for i, inc in enumerate(self.incarnations) if inc.stage == "sigterm"), -1)
        nxt = next((inc for inc in self.incarnations[at + 1:] if inc.resumed_from), None)
        problems = []
        if t.get("rc") != 143:
            problems.append(f"exit status {t.get('rc')}, not 143")
        if not t.get("said"):
            problems.append("no 'SIGTERM: finishing the current step' on stderr")
        if k is None:
            problems.append("no 'interrupted after step K; checkpoint ... written' line")
        elif k not in (t.get("ckpts") or []) or k != t.get("logged"):
            problems.append(f"stopped after step {k} but checkpoints are {t.get('ckpts')} and "
                            f"metrics end at step {t.get('logged')}")
        if t.get("tmp_left"):
            problems.append(f"left {t['tmp_left']}")
        if nxt is None or nxt.resumed_step != k:
            problems.append(f"the next host resumed from "
                            f"{nxt.resumed_from if nxt else 'nothing'}, not ckpt-{k}")
        return name, not problems, "; ".join(problems) or (
            f"sent after step {t['step']}; the host finished step {k}, wrote ckpt-{k}, exited "
            f"143; host #{nxt.index} resumed from ckpt-{k} with nothing redone")

    def check_shm_full(self) -> tuple[str, bool, str]:
        f = self.shm_full
        name = "full weight-sync directory: reported once, synced through TMPDIR, nothing left"
        if not self.a.shm_full or f.get("skipped"):
            return name, True, f"skipped: {f.get('skipped', 'not planned')}"
        problems = []
        if f.get("warned") != 1:
            problems.append(f"'weight sync: cannot write' said {f.get('warned', 0)} times, "
                            f"not once")
        if f.get("left"):
            problems.append(f"left in the full directory: {f['left']}")
        return name, not problems, "; ".join(problems) or (
            f"{f['dir']} (a 2 MiB tmpfs, filled: {f.get('filled')}): the host said so once and "
            f"synced its worker through TMPDIR")

    def run(self) -> int:
        a = self.a
        full = os.path.join(self.dir, "shm-full")
        if os.path.ismount(full):  # an aborted soak's
            subprocess.run(["umount", full], capture_output=True)
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.tmp)
        with open(os.path.join(self.dir, "rubric.txt"), "w") as f:
            f.write(RUBRIC)
        # Every incarnation runs the recipe as it was when the soak started: an edit
        # to recipes/ meanwhile (a new default) would make resume refuse the run as
        # "run with another config", rightly, but that is not a fault under test.
        snap = os.path.join(self.dir, "recipe")
        shutil.copytree(os.path.join(ROOT, "recipes", "tasks"), os.path.join(snap, "tasks"))
        shutil.copy(RLAIF, snap)
        self.recipe = os.path.join(snap, "rlaif.lua")
        self.judge = Judge({"rule": "len10", "fault_rate": a.fault_rate, "faults": ALL_FAULTS,
                            "seed": a.seed, "retry_after": 1, "hang_s": a.teacher_timeout + 1.0},
                           self.env(), self.dir)
        self.judge.start()
        log(f"judge on {self.judge.url}: {a.fault_rate:.0%} of requests faulted "
            f"({', '.join(ALL_FAULTS)}); soak dir {self.dir}")
        try:
            for stage in self.plan():
                while not self.run_stage(stage):
                    self.unplanned += 1
                    if self.incarnations[-1].rc == 2:  # a config error will not go away
                        self.failures.append("the host refused its configuration")
                        return self.finish()
                    if self.unplanned > a.max_restarts:
                        self.failures.append(f"{self.unplanned} unplanned host exits; giving up")
                        return self.finish()
                if self.incarnations[-1].how == "finished":
                    if stage.end != "finish":
                        self.failures.append(f"the run finished before its planned {stage.end}")
                    break
            # an outage still pending when the run ended: bring the judge back for /_stats
            if self.outage and "end" not in self.outage:
                self.judge.start()
                self.outage["end"] = time.monotonic()
        finally:
            for h in self.hosts:  # nothing of ours may outlive an aborted soak
                if h.poll() is None:
                    h.kill()
                    h.wait()
            self.unmount_shm()
        return self.finish()

    def abort(self) -> None:
        for h in self.hosts:
            if h.poll() is None:
                h.kill()
                h.wait()
        self.unmount_shm()
        judge = getattr(self, "judge", None)
        if judge is not None:
            judge.stop()

    # -- checks and summary

    def finish(self) -> int:
        stats = self.judge.stats() if self.judge.up else dict(self.judge.past)
        self.judge.stop()
        rows = read_metrics(self.run_dir)
        checks: list[tuple[str, bool, str]] = []

        steps = [r["step"] for r in rows]
        dup = sorted({s for s in steps if steps.count(s) > 1})
        missing = sorted(set(range(1, self.a.steps + 1)) - set(steps))
        checks.append(("every step exactly once in metrics.jsonl",
                       steps == list(range(1, self.a.steps + 1)),
                       f"{len(steps)} lines; missing {missing[:10]}; duplicated {dup[:10]}"))

        checks.append(self.check_checkpoint(rows))

        try:
            with sqlite3.connect(f"file:{self.cache}?mode=ro", uri=True) as db:
                integ = db.execute("PRAGMA integrity_check").fetchone()[0]
                entries = db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        except sqlite3.Error as e:
            integ, entries = f"error: {e}", 0
        checks.append(("judge cache PRAGMA integrity_check", integ == "ok",
                       f"{integ} ({entries} tables)"))

        checks.append(self.check_sigterm())
        checks.append(self.check_shm_full())

        # Workers die with their host (PR_SET_PDEATHSIG), the judge was stopped: wait
        # for that with a deadline rather than a guess, then list what is left.
        try:
            wait_for(lambda: not marked_processes(self.soak_id), 30, "the soak's processes to end")
        except AssertionError:
            pass
        left = marked_processes(self.soak_id)
        checks.append(("no process left (host, worker, judge)", not left,
                       "; ".join(left) or "none"))
        tmp = tmp_entries(self.run_dir)
        # torchinductor_<user> is torch's compile cache, kept across runs by design
        sbx = [n for n in (os.listdir(self.tmp) if os.path.isdir(self.tmp) else [])
               if not n.startswith("torchinductor_")]
        shm = [n for n in (os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else [])
               if any(n.startswith(f"rlengine-{pid}-") for pid in self.host_pids)]
        checks.append(("no temporary file or directory left",
                       not tmp and not sbx and not shm,
                       f"run dir .tmp-*: {tmp or 'none'}; TMPDIR: {sbx or 'empty'}; "
                       f"/dev/shm exports: {shm or 'none'}"))
        for f in self.failures:
            checks.append(("fault handled as expected", False, f))
        self.summary(rows, stats, checks)
        return 0 if all(ok for _, ok, _ in checks) else 1

    def check_checkpoint(self, rows: list[dict[str, Any]]) -> tuple[str, bool, str]:
        name = "newest checkpoint verifies, loads and holds the final weights"
        if not rows:
            return name, False, "no metrics"
        last = rows[-1]
        out = os.path.join(self.dir, "check-save")
        p = subprocess.run([RLHOST, CHECK_LUA, f"dir={self.run_dir}", f"out={out}",
                            f"eval_prompts={self.a.eval_prompts}",
                            f"max_tokens={self.a.max_tokens}"],
                           cwd=self.dir, env=self.env(), capture_output=True, text=True,
                           timeout=300)
        if p.returncode != 0:
            return name, False, f"check_ckpt.lua exited {p.returncode}: {p.stderr.strip()[-500:]}"
        got = json.loads(p.stdout.strip().splitlines()[-1])
        problems = []
        if got["step"] != self.a.steps:
            problems.append(f"newest is ckpt-{got['step']}, not ckpt-{self.a.steps}")
        if got["version"] != last.get("version"):
            problems.append(f"version {got['version']} != final step's {last.get('version')}")
        for k in ("eval_reward", "eval_exact"):
            if k in last and got[k] != last[k]:
                problems.append(f"{k} {got[k]} != final step's {last[k]}")
        if "eval_reward" not in last:
            problems.append("the final step has no eval_reward to compare")
        final_model = b""
        for fname in ("model.safetensors", "optimizer.safetensors"):
            with open(os.path.join(got["path"], "model", fname), "rb") as f:
                in_ckpt = f.read()
            try:
                with open(os.path.join(self.final_save, fname), "rb") as f:
                    final = f.read()
            except FileNotFoundError:
                problems.append(f"no final save of {fname} (the last host did not finish?)")
                continue
            if in_ckpt != final:
                problems.append(
                    f"{fname} in ckpt-{got['step']} differs from the final weights")
            if fname == "model.safetensors":
                final_model = final
        with open(os.path.join(out, "model.safetensors"), "rb") as f:
            if f.read() != final_model:
                problems.append("the checkpoint restored into a fresh model saves other weights")
        shutil.rmtree(out, ignore_errors=True)
        return name, not problems, "; ".join(problems) or (
            f"ckpt-{got['step']} (version {got['version']}) equals the final save bytewise "
            f"(weights, optimizer); restored into a fresh model it saves the same weights and "
            f"its greedy eval_reward {got['eval_reward']:.4f} equals the final step's")

    def summary(self, rows: list[dict[str, Any]], stats: dict[str, int],
                checks: list[tuple[str, bool, str]]) -> None:
        every = list(self.seen.values())  # absorbed faults of redone steps count too

        def total(key: str) -> int:
            return sum(int(r.get(key) or 0) for r in every)

        def sum_maps(key: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for r in every:
                for k, v in (r.get(key) or {}).items():
                    out[k] = out.get(k, 0) + int(v)
            return out

        faults = {k[6:]: v for k, v in sorted(stats.items()) if k.startswith("fault_")}
        scored = sum_maps("scored_by")
        generated = sum_maps("generated_by")
        wall = time.monotonic() - self.t0
        print()
        print("=" * 78)
        print(f"SOAK SUMMARY  {self.a.steps} steps of recipes/rlaif.lua on builtin:tiny, "
              f"wall {wall / 60:.1f} min")
        print("=" * 78)
        print("Injected:")
        print(f"  judge faults      {sum(faults.values())} of {stats.get('requests', 0)} requests "
              f"({self.a.fault_rate:.0%} drawn): "
              + ", ".join(f"{k} {v}" for k, v in faults.items()))
        print("                    (+ 'unparsable' answers, not counted by the server: "
              "see parse failures below)")
        o = self.outage
        if o:
            print(f"  judge outage      stopped after step {o['step']} for "
                  f"{o.get('end', o['start']) - o['start']:.1f}s (connection refused); back at "
                  f"step {o.get('end_step', '?')}; {self.judge.lives} server lives")
        print(f"  worker SIGKILLs   {len(self.worker_kills)} (after steps "
              f"{', '.join(str(k['step']) + ' ' + k['when'] for k in self.worker_kills)})")
        kills = [i for i in self.incarnations if i.how.startswith("SIGKILL")]
        print(f"  host SIGKILLs     {len(kills)}")
        for i in kills:
            print(f"                    #{i.index}: {i.how}")
        d = self.disk_full
        if d:
            print(f"  disk full         RLIMIT_FSIZE {d['limit']} bytes for host "
                  f"#{next((i.index for i in self.incarnations if i.stage == 'disk_full'), '?')}")
        t = self.sigterm
        if t:
            who = next((i.index for i in self.incarnations if i.stage == "sigterm"), "?")
            print(f"  SIGTERM           host #{who} after step {t['step']}")
        f = self.shm_full
        if f:
            print("  full shm          " + (f"skipped: {f['skipped']}" if f.get("skipped") else
                  f"RLENGINE_SHM_DIR={f['dir']}, a 2 MiB tmpfs filled up, for the SIGTERMed host"))
        print("Absorbed (counted over every step run, redone ones included):")
        print(f"  judge             {stats.get('requests', 0)} requests (with retries) scored "
              f"{scored.get('judge', 0)} samples (redone steps mostly from the cache); "
              f"{total('score_fallbacks')} samples fell back to the native reward "
              f"(failures by kind: {json.dumps(sum_maps('score_failures'), sort_keys=True)}); "
              f"scored_by {json.dumps(scored, sort_keys=True)}; unscored {total('unscored')}")
        fell = sorted(st for (_, st), r in self.seen.items() if (r.get("gen_fallbacks") or 0) > 0)
        if o.get("end_step") is not None:
            during = sorted(st for (_, st), r in self.seen.items()
                            if o["step"] < st <= o["end_step"])
            back = [st for (_, st), r in self.seen.items()
                    if st > o["end_step"] and (r.get("scored_by") or {}).get("judge", 0) > 0]
            print(f"  judge outage      steps {o['step'] + 1}-{o['end_step']} scored by the native "
                  f"reward ({len(during)} step runs); the judge scored again from step "
                  f"{min(back) if back else 'never'}")
        print(f"  worker            {total('gen_fallbacks')} generate calls fell back to the "
              f"teacher (steps {fell}); generated_by {json.dumps(generated, sort_keys=True)}; "
              f"{total('off_policy')} off-policy samples not trained on; "
              f"gen failures {json.dumps(sum_maps('gen_failures'), sort_keys=True)}; the other "
              f"kills were met by the recipe's sync before generating, which starts a new worker")
        print("  host              incarnations:")
        for i in self.incarnations:
            why = f"  [{i.error}]" if i.how.startswith("UNPLANNED") else ""
            print(f"                    #{i.index} pid {i.pid}: {i.resumed_from or 'fresh'} -> "
                  f"step {i.ended_step}, {i.how}{why}")
        incs = self.incarnations
        after_full = [incs[k + 1].resumed_from for k in range(len(incs) - 1)
                      if incs[k].stage == "disk_full"]
        if d:
            print(f"  disk full         reported: {d.get('message', '(no message!)')}")
            print(f"                    checkpoints afterwards {d.get('ckpts')}, partial left: "
                  f"{d.get('tmp_left') or 'none'}; the next host resumed from "
                  f"{after_full[0] if after_full else '?'}")
        redone = len(self.seen) - len(rows)
        print(f"  steps             {len(self.seen)} step runs for {len(rows)} lines in "
              f"metrics.jsonl: {redone} steps were run again after a resume and are logged once")
        print("Checks:")
        for name, ok, detail in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
        print("=" * 78)
        print(f"soak: {'PASSED' if all(ok for _, ok, _ in checks) else 'FAILED'} "
              f"(logs in {self.dir})", flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dir", default=os.path.join(ROOT, "build", "soak"))
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    # Enough samples per step that a step without the judge still takes a fraction
    # of a second, so the outage covers tens of steps rather than the rest of the run.
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--group", type=int, default=8)
    # Longer than the sort task's 12: generation then dominates a step scored without
    # the judge, so the 30 s outage spans tens of steps, not the rest of the run.
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--teacher-timeout", type=int, default=2,
                    help="seconds per judge attempt; 'hang' faults outlast it")
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--worker-every", type=int, default=20)
    ap.add_argument("--host-kills", type=int, default=3, choices=[0, 1, 2, 3])
    ap.add_argument("--disk-full", type=int, default=1, choices=[0, 1])
    ap.add_argument("--sigterm", type=int, default=1, choices=[0, 1],
                    help="one incarnation gets SIGTERM mid-run")
    ap.add_argument("--shm-full", type=int, default=1, choices=[0, 1],
                    help="the SIGTERMed incarnation's weight-sync directory is a full tmpfs "
                         "(needs root to mount it; skipped otherwise)")
    ap.add_argument("--max-restarts", type=int, default=3,
                    help="unplanned host exits tolerated (each restarted with resume=true)")
    ap.add_argument("--strict", action="store_true", help="fail on any unplanned host exit")
    a = ap.parse_args(argv)
    if a.shm_full and not a.sigterm:
        ap.error("--shm-full needs --sigterm 1 (the SIGTERMed host finds the full directory)")
    if a.disk_full and not a.host_kills:
        ap.error("--disk-full needs --host-kills >= 1 (the limit is sized from a checkpoint)")
    if not os.access(RLHOST, os.X_OK):
        print(f"soak: {RLHOST} is not built (make)", file=sys.stderr)
        return 2
    log(f"seed {a.seed}")
    s = Soak(a)
    try:
        rc = s.run()
    except BaseException:
        s.abort()  # a driver bug or Ctrl-C must not leave a judge or host running
        raise
    if a.strict and s.unplanned:
        print(f"soak: FAILED (--strict): {s.unplanned} unplanned host exits")
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
