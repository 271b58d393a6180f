"""Shared helpers for the engine tests.

Run: PYTHONPATH=scripts .venv/bin/python -m pytest tests/engine -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from rlengine import host  # noqa: E402

# The same thread count everywhere: bitwise comparisons across processes need it.
THREADS = 2


class EngineFailed(AssertionError):
    def __init__(self, reply: dict) -> None:
        super().__init__(f"{reply['error']['kind']}: {reply['error']['message']}")
        self.reply = reply


def call_raw(**req) -> dict:
    return json.loads(host.call(json.dumps(req)))


def call(**req) -> dict:
    """Send a request through the embedded entry point; raise unless it succeeded."""
    rep = call_raw(**req)
    if not rep["ok"]:
        raise EngineFailed(rep)
    return rep


def load(path: str = "builtin:tiny", **opts) -> int:
    opts.setdefault("threads", THREADS)
    return call(op="load", path=path, **opts)["model"]


def model_obj(handle: int):
    from rlengine.dispatch import model_object
    return model_object(handle)


class Worker:
    """`python -m rlengine.worker` as a subprocess speaking JSON Lines."""

    def __init__(self, argv: list[str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(SCRIPTS), HF_HUB_OFFLINE="1")
        self.stderr = open(os.devnull, "wb") if not os.environ.get("RLENGINE_TEST_STDERR") \
            else None
        self.proc = subprocess.Popen(argv or [sys.executable, "-m", "rlengine.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env, cwd=str(ROOT))
        self.next_id = 1000

    def send_raw(self, line: bytes) -> dict:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        assert out.endswith(b"\n"), f"worker reply missing or cut: {out!r}"
        return json.loads(out)

    def call_raw(self, **req) -> dict:
        req.setdefault("id", self.next_id)
        self.next_id += 1
        rep = self.send_raw(json.dumps(req).encode())
        assert rep["id"] == req["id"]
        return rep

    def call(self, **req) -> dict:
        rep = self.call_raw(**req)
        if not rep["ok"]:
            raise EngineFailed(rep)
        return rep

    def close(self) -> int:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=60)
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        if self.stderr:
            self.stderr.close()
        assert rest == b"", f"unexpected output after the last reply: {rest!r}"
        return rc


@pytest.fixture
def worker():
    w = Worker()
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()


def strip_ids(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k != "id"}
