"""The soak (tests/soak/soak.py, `make soak`) in small: recipes/rlaif.lua for 16 steps
with one of each fault (judge faults throughout and a short outage, a worker
SIGKILL, a host SIGKILL at a random moment and one during a checkpoint write, a
full disk at a checkpoint, a SIGTERM mid-run with a full weight-sync directory), then the same end checks as the full soak: every step
logged once, the newest checkpoint equal to the final weights, a sound judge cache,
nothing left behind. About two minutes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
SOAK = os.path.join(ROOT, "tests", "soak", "soak.py")

pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")


def test_soak_short(tmp_path):
    args = ["--steps", "16", "--checkpoint-every", "4", "--eval-every", "8", "--prompts", "2",
            "--group", "4", "--outage-s", "4", "--worker-every", "6",
            "--dir", str(tmp_path / "soak"), "--seed", "5"]
    p = subprocess.run([sys.executable, SOAK, *args], capture_output=True, text=True,
                       timeout=400, env={**os.environ, "RLHOST": RLHOST})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "soak: PASSED" in out
    # One of each fault was really injected (the summary says what happened).
    assert "host SIGKILLs     3" in out, out
    assert "SIGKILL during the checkpoint write .tmp-ckpt-" in out, out
    assert "checkpoint write failed: file size limit" in out, out
    assert "is kept (resume=true continues from it)" in out, out
    assert "judge outage      stopped after step" in out, out
    assert "worker SIGKILLs   0 " not in out, out
    assert "SIGTERM           host #" in out, out
    assert "[PASS] SIGTERM: step finished, checkpointed, exit 143, resumed from that step" in out
    assert "[PASS] full weight-sync directory" in out, out
    assert "[FAIL]" not in out
