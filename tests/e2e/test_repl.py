"""`rlhost -i` driven through a pseudo-terminal, as a user at a terminal would use it:
readline, Tab completion, history across sessions, `help`, pretty-printed values,
errors at the line typed, and a recipe's top-level locals reachable after it ran.

Every wait is for output with a deadline; nothing sleeps a fixed time.
"""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Repl:
    """rlhost -i on a pseudo-terminal; `expect` waits for a regex in the output."""

    def __init__(self, home: str, args: list[str] | None = None, cwd: str | None = None):
        master, slave = pty.openpty()
        env = dict(os.environ, HOME=home, TERM="xterm", INPUTRC="/dev/null")
        self.proc = subprocess.Popen([RLHOST, "-i", *(args or [])], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, cwd=cwd or home,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.fd = master
        self.out = ""
        self.pos = 0  # output before this was matched already

    def _read(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.fd], [], [], left)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.out += ANSI.sub("", data.decode(errors="replace"))
        return True

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.out, self.pos)
            if m:
                self.pos = m.end()
                return m
            if not self._read(deadline):
                raise AssertionError(f"no {pattern!r} within {timeout}s; output:\n{self.out}")

    def prompt(self) -> None:
        self.expect(r"(?m)^> \Z")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def line(self, text: str) -> str:
        """Type a line, wait for the next prompt, return what was printed (the
        terminal's echo of the typed lines left out)."""
        start = len(self.out)
        self.send(text + "\n")
        for _ in text.split("\n"):
            start = self.expect(r"\n").end()
        self.prompt()
        return self.out[start:self.pos]

    def close(self) -> int:
        self.send("\x04")  # Ctrl-D on an empty line
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(min(deadline, time.monotonic() + 0.5))
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        os.close(self.fd)
        return self.proc.wait(timeout=30)


@pytest.fixture
def repl(tmp_path):
    r = Repl(str(tmp_path))
    r.prompt()
    yield r
    r.close()


def test_tables_print_readably(repl):
    out = repl.line("{1, 2, {a = 3}}")
    assert "{1, 2, {a = 3}}" in out
    assert "table: 0x" not in out
    # a sample: its text first, long token lists cut short
    out = repl.line('{ids = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20}, '
                    'text = "1 2 3", prompt = "sort: 3 1 2", finish = "stop"}')
    assert out.index("prompt =") < out.index("text =") < out.index("ids =")
    assert "… (20 items)" in out
    big = repl.line("(function() local t = {} for i = 1, 500 do t[i] = {i} end return t end)()")
    assert "… (484 more)" in big and big.count("\n") < 40


def test_tab_completes_fields_and_globals(repl):
    repl.send("rl.mo\t == require('rl.model').model\n")
    repl.expect(r"\ntrue\r?\n")
    repl.prompt()
    repl.send("pri\t('completed' .. 'ok')\n")
    repl.expect(r"\ncompletedok\r?\n")
    repl.prompt()


def test_help(repl):
    out = repl.line("help")
    assert "rlhost interactive mode" in out and "Tab" in out and ".rlhost_history" in out


def test_errors_point_at_the_line_typed(repl):
    out = repl.line('rl.dataset("no-such.jsonl")')
    assert "stdin:1: config error: cannot open dataset no-such.jsonl" in out
    assert "dataset.lua" not in out and "traceback" not in out
    out = repl.line("do\nlocal x = 1\nerror('on three')\nend")
    assert "stdin:3: on three" in out
    out = repl.line("traceback")  # the library frames are still there when wanted
    assert "stack traceback" in out


def test_history_is_kept_between_sessions(tmp_path):
    r = Repl(str(tmp_path))
    r.prompt()
    r.line('print("hist" .. 6 * 7)')
    assert r.close() == 0
    assert 'print("hist" .. 6 * 7)' in (tmp_path / ".rlhost_history").read_text()
    r = Repl(str(tmp_path))
    r.prompt()
    r.send("\x1b[A\n")  # Up arrow: the last session's line
    r.expect(r"\nhist42\r?\n")
    r.prompt()
    r.close()


def test_recipe_locals_are_reachable(tmp_path):
    (tmp_path / "mine.lua").write_text(
        'local rl = require "rl"\nlocal cfg = rl.config{steps = 3}\n'
        'local answer = {value = cfg.steps * 14}\n')
    r = Repl(str(tmp_path), ["mine.lua", "steps=3"])
    r.prompt()
    assert r.line("answer.value").startswith("42\n")
    assert "steps = 3" in r.line("cfg")
    r.close()
