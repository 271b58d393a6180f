"""Waiting for processes by fact, not by time: the shared helpers of the e2e and soak tests.

A process sent SIGKILL is not gone when kill() returns: one inside an fsync, or
unmapping gigabytes, dies later, and until then it still holds its locks, files and
memory. On a loaded machine "later" can be seconds. So a test that kills something
waits until /proc/PID shows it gone (or a zombie, which holds nothing) with a
deadline, and a test that needs a child ready waits for the child to say so.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time


def gone(pid: int) -> bool:
    """True when `pid` has exited: no /proc entry, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state follows the command name, which is in parentheses and may hold any byte.
    return stat[stat.rindex(b")") + 2:].startswith((b"Z", b"X"))


def wait_gone(pid: int, timeout: float = 30.0, what: str = "process") -> float:
    """Poll until `pid` is gone; returns the seconds waited. Raises AssertionError
    naming `what` when it is still there after `timeout` seconds."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} {pid} still running {timeout:.0f} s after it was "
                                 f"expected to end")
        time.sleep(0.02)
    return time.monotonic() - t0


def kill_and_wait(p: subprocess.Popen | int, sig: int = signal.SIGKILL,
                  timeout: float = 30.0, what: str = "process") -> int | None:
    """Send `sig` and wait until the process is gone. For a Popen, reap it and return
    its exit status (None for a bare pid)."""
    pid = p if isinstance(p, int) else p.pid
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    if isinstance(p, subprocess.Popen):
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what} {pid} still running {timeout:.0f} s after "
                                 f"{signal.Signals(sig).name}") from None
    wait_gone(pid, timeout, what)
    return None


def wait_for(pred, timeout: float = 30.0, what: str = "condition", step: float = 0.02):
    """Poll `pred()` until it returns a true value (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every live process below `pid`, children first."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rindex(b")")
        fields = stat[close + 2:].split()
        parent[int(d)] = int(fields[1])
        comm[int(d)] = stat[stat.index(b"(") + 1:close].decode(errors="replace")
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        for c, pp in parent.items():
            if pp == p:
                out.append((c, comm[c]))
                todo.append(c)
    return out


def read_until(stream, text: str) -> str:
    """Read lines from a child's text pipe up to the one containing `text`; returns all
    read. Fails if the pipe ends first. For "the host said it saw the signal": standard
    signals do not queue, so a second one sent before the first is handled may merge
    with it."""
    seen = ""
    while text not in seen:
        line = stream.readline()
        if not line:
            raise AssertionError(f"the stream ended before {text!r}:\n{seen}")
        seen += line
    return seen
