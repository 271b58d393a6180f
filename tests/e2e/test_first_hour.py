"""A TRL user's first hour (issue 17), end to end through $RLHOST: an installed rlhost
running shipped recipes by name from another directory, quiet model loading, sample
texts and TensorBoard events in the run directory, the metrics TRL users read, and
recipe help.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")

QUICK = ["threads=1", "plot=false", "eval_every=0"]


def env_without_teacher(extra=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RL_TEACHER")}
    e.update(extra or {})
    return e


def run(args, cwd, env=None, timeout=300, exe=RLHOST):
    return subprocess.run([exe, *args], cwd=cwd, env=env or env_without_teacher(),
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -- 10. make install ---------------------------------------------------------------

def test_installed_rlhost_runs_shipped_recipes_by_name_elsewhere(tmp_path):
    prefix = tmp_path / "prefix"
    build = os.path.relpath(os.path.dirname(RLHOST), ROOT)
    p = subprocess.run(["make", "--no-print-directory", "install", f"PREFIX={prefix}",
                        f"BUILD={build}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    exe = str(prefix / "bin" / "rlhost")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = env_without_teacher()
    env.pop("RLHOST_HOME", None)
    env.pop("RLHOST_VENV", None)
    # by name, and by the path the README uses, neither of which exists here
    for recipe, d in (("sft", "runs/a"), ("recipes/sft.lua", "runs/b")):
        p = run([recipe, "steps=2", f"dir={d}", *QUICK], cwd=work, env=env, exe=exe)
        assert p.returncode == 0, p.stderr
        assert [r["step"] for r in read_jsonl(work / d / "metrics.jsonl")] == [1, 2]
    assert not (work / "recipes").exists()
    p = run(["no-such-recipe"], cwd=work, env=env, exe=exe)
    assert p.returncode == 2
    assert "no-such-recipe" in p.stderr and f"{prefix}/share/rlhost/recipes" in p.stderr
    # the recorded environment gone: one clear line that says what to do
    (prefix / "share" / "rlhost" / "venv").write_text(str(tmp_path / "gone") + "\n")
    p = run(["sft", "steps=1", "dir=runs/c", *QUICK], cwd=work, env=env, exe=exe)
    assert p.returncode == 2
    assert "RLHOST_VENV" in p.stderr and "is gone" in p.stderr
    assert not (work / "runs" / "c").exists()


# -- 11. transformers' progress bars -------------------------------------------------

def make_hf_model(out_dir):
    code = ("import sys, pathlib; from test_hf import make_model; "
            "make_model('qwen2', pathlib.Path(sys.argv[1]))")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "scripts") + os.pathsep
               + os.path.join(ROOT, "tests", "engine"), HF_HUB_OFFLINE="1")
    p = subprocess.run([PYTHON, "-c", code, str(out_dir)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"cannot build a tiny Hugging Face model: {p.stderr[-300:]}")


@pytest.mark.parametrize("transport", ["embedded", "worker"])
def test_model_loading_is_one_line_without_library_progress_bars(tmp_path, transport):
    make_hf_model(tmp_path / "hf")
    p = run(["sft", f"model={tmp_path / 'hf'}", "steps=2", "checkpoint_every=1",
             f"transport={transport}", "dir=runs/hf", *QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for bar in ("Loading weights", "Writing model shards", "it/s]", "%|"):
        assert bar not in p.stderr, p.stderr
    loaded = [ln for ln in p.stderr.splitlines() if ln.startswith("rlhost: loaded model ")]
    assert len(loaded) == 1, p.stderr
    assert str(tmp_path / "hf") in loaded[0] and loaded[0].endswith("s")


# -- 8. TensorBoard ------------------------------------------------------------------

def tb_scalars(logdir):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
                 for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_every_step_once(tmp_path):
    p = run(["sft", "steps=4", "checkpoint_every=2", "tensorboard=true", "dir=runs/tb",
             *QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # resumed and extended: the new steps are appended, none twice
    p = run(["sft", "steps=6", "checkpoint_every=2", "tensorboard=true", "dir=runs/tb",
             *QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rundir = tmp_path / "runs" / "tb"
    recs = read_jsonl(rundir / "metrics.jsonl")
    _, sc = tb_scalars(rundir / "tensorboard")
    assert [s for s, _ in sc["loss"]] == [1, 2, 3, 4, 5, 6]
    for (step, v), rec in zip(sc["loss"], recs):
        assert rec["step"] == step and v == pytest.approx(rec["loss"], rel=1e-6)
    assert [s for s, _ in sc["time/step"]] == [1, 2, 3, 4, 5, 6]  # nested fields
    # without tensorboard=true nothing is written
    p = run(["sft", "steps=1", "dir=runs/plain", *QUICK], cwd=tmp_path)
    assert p.returncode == 0 and not (tmp_path / "runs" / "plain" / "tensorboard").exists()
