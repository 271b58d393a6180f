"""End to end: the recipes users run (recipes/sft.lua, rlaif.lua, eval.lua) on
builtin:tiny, driving $RLHOST as a user would.

- RLAIF scored by a teacher (tests/servers/teacher.py), then the teacher stopped
  mid-run: the native reward takes over and the metrics count it; a generator
  worker killed mid-run: the teacher writes that step's samples (off-policy, untrained).
- Exact resume: SIGKILL after step k, and SIGKILL during a checkpoint write, both
  resumed, end with the weights (bitwise) and metrics lines of an uninterrupted run.
- SIGINT: a checkpoint and exit status 130.
- eval.lua: a report for one checkpoint, and two side by side (pairwise with a teacher).
- Bad input: exit status 2, a message naming the culprit, the run directory untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "servers"))
from teacher import Teacher  # noqa: E402

RLHOST = os.environ.get("RLHOST", os.path.join(ROOT, "build", "rlhost"))
SFT = os.path.join(ROOT, "recipes", "sft.lua")
RLAIF = os.path.join(ROOT, "recipes", "rlaif.lua")
EVAL = os.path.join(ROOT, "recipes", "eval.lua")

pytestmark = pytest.mark.skipif(not os.access(RLHOST, os.X_OK), reason="rlhost not built")

# Small and quick: a step is a few tenths of a second.
QUICK = ["threads=1", "plot=false", "prompts=4", "group=4", "eval_prompts=16"]
# A rubric the test teacher recognises (it grades what sits between these markers).
RUBRIC = ("Grade the answer to {prompt} (correct: {reference}) from {lo} to {hi}.\n"
          "[The Start of the Response]\n{completion}\n[The End of the Response]\n")


def env_without_teacher(extra=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RL_TEACHER")}
    e.update(extra or {})
    return e


def rlhost(recipe, args, cwd, env=None, timeout=180):
    return subprocess.run([RLHOST, recipe, *args], cwd=cwd, env=env or env_without_teacher(),
                          capture_output=True, text=True, timeout=timeout)


def start(recipe, args, cwd, env=None):
    return subprocess.Popen([RLHOST, recipe, *args], cwd=cwd, env=env or env_without_teacher(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(run_dir, drop_time=True):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # being written
            rec = json.loads(line)
            if drop_time:
                rec.pop("time", None)
            out.append(rec)
    return out


def wait_for(pred, p, timeout=120, what="condition"):
    t0 = time.monotonic()
    while not pred():
        if p.poll() is not None:
            out, err = p.communicate()
            raise AssertionError(f"exited ({p.returncode}) before {what}:\n{err}")
        if time.monotonic() - t0 > timeout:
            p.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def tree(path):
    """Every file under path with its bytes' hash: what 'unchanged' means."""
    out = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, path)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def weights(ckpt):
    out = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        with open(os.path.join(ckpt, "model", name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A short SFT run: the warm start the RL tests and the evaluations use."""
    d = tmp_path_factory.mktemp("sft")
    p = rlhost(SFT, ["dir=run", "steps=8", "batch=16", "micro_batch=8", "checkpoint_every=4",
                     "eval_every=4", "eval_prompts=16", "threads=1", "plot=false"], d)
    assert p.returncode == 0, p.stderr
    rows = metrics(d / "run")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "eval_reward" in rows[3] and "eval_reward" in rows[7]
    assert sorted(os.listdir(d / "run" / "ckpt-8" / "model")) == [
        "engine.json", "model.safetensors", "optimizer.safetensors"]
    return str(d / "run")


def teacher_env(t, tmp_path):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(RUBRIC)
    return env_without_teacher({"RL_TEACHER_URL": t.url, "RL_TEACHER_MODEL": "teach"}), str(rubric)


def test_rlaif_with_teacher_then_teacher_stopped(tmp_path, sft):
    t = Teacher(rule="len10").start()
    try:
        env, rubric = teacher_env(t, tmp_path)
        # The teacher scores every sample.
        p = rlhost(RLAIF, [f"init={sft}", "dir=a", "steps=3", f"rubric={rubric}", *QUICK],
                   tmp_path, env)
        assert p.returncode == 0, p.stderr
        assert "native reward" not in p.stderr
        rows = metrics(tmp_path / "a")
        assert len(rows) == 3
        for r in rows:
            assert r["scored_by"] == {"judge": 16, "native": 0}
            assert r["score_fallbacks"] == 0 and r["unscored"] == 0
            assert r["generated_by"] == {"policy": 16, "teacher": 0}
        assert t.stats()["requests"] == 3 * 16
        # (len10: 1 + len % 10 on a 0-10 scale; never 0, so a silent 0 would show)
        assert all(r["reward"] > 0 for r in rows)

        # Stopped mid-run: the native reward takes over, with one notice.
        p = start(RLAIF, [f"init={sft}", "dir=b", "steps=8", f"rubric={rubric}", *QUICK],
                  tmp_path, env)
        wait_for(lambda: len(metrics(tmp_path / "b")) >= 2, p, what="step 2")
        t.configure(fault_rate=1.0, faults=["reset"])  # open connections fail too
        t.stop()
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    finally:
        t.stop()
    rows = metrics(tmp_path / "b")
    assert len(rows) == 8
    assert rows[0]["scored_by"] == {"judge": 16, "native": 0}
    assert rows[-1]["scored_by"] == {"judge": 0, "native": 16}
    assert sum(r["score_fallbacks"] for r in rows) > 0
    assert all(r["unscored"] == 0 for r in rows)  # every sample got a reward
    assert err.count("falling back to the next scorer") == 1, err


def worker_pids(pid):
    """Engine workers started by process pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"rlengine.worker" in cmd:
            out.append(int(d))
    return out


def test_generator_worker_killed_falls_back_to_teacher(tmp_path, sft):
    with Teacher(rule="len10") as t:
        env, rubric = teacher_env(t, tmp_path)
        env["RLHOST_TEST_CHECKPOINT_DELAY"] = "0"
        # gen_retries=0: the first crash goes to the teacher (the default retries once
        # on a fresh worker first; make soak exercises that path)
        p = start(RLAIF, [f"init={sft}", "dir=w", "steps=6", "generator=worker", "gen_retries=0",
                          f"rubric={rubric}", "checkpoint_every=0", *QUICK], tmp_path, env)
        wait_for(lambda: len(metrics(tmp_path / "w")) >= 2 and worker_pids(p.pid), p,
                 what="step 2")
        for w in worker_pids(p.pid):
            os.kill(w, signal.SIGKILL)
        out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    rows = metrics(tmp_path / "w")
    assert len(rows) == 6
    fell = [r for r in rows if r["generated_by"]["teacher"] > 0]
    assert len(fell) >= 1, rows
    for r in fell:
        assert r["gen_fallbacks"] == 1 and r["off_policy"] == r["generated_by"]["teacher"]
        assert r["trained"] == 0  # train_off_policy=false: teacher text is scored, not trained on
    assert rows[-1]["generated_by"] == {"policy": 16, "teacher": 0}  # a new worker took over
    assert "falling back to the next source" in err


RESUME_ARGS = ["steps=8", "checkpoint_every=4", "eval_every=4", "keep_last=0", *QUICK]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sft):
    d = tmp_path_factory.mktemp("resume")
    p = rlhost(RLAIF, [f"init={sft}", "dir=ref", *RESUME_ARGS], d)
    assert p.returncode == 0, p.stderr
    return d / "ref"


def test_exact_resume_after_sigkill(tmp_path, sft, uninterrupted):
    args = [f"init={sft}", "dir=k", *RESUME_ARGS]
    p = start(RLAIF, args, tmp_path)
    wait_for(lambda: len(metrics(tmp_path / "k")) >= 5, p, what="step 5")  # ckpt-4 is written
    p.kill()
    p.communicate()
    assert len(metrics(tmp_path / "k")) < 8
    p = rlhost(RLAIF, args, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "resuming k from ckpt-4 (step 4)" in p.stderr
    assert metrics(tmp_path / "k") == metrics(uninterrupted)
    assert weights(tmp_path / "k" / "ckpt-8") == weights(uninterrupted / "ckpt-8")


def test_killed_during_checkpoint_write_uses_previous(tmp_path, sft, uninterrupted):
    args = [f"init={sft}", "dir=c", *RESUME_ARGS]
    p = start(RLAIF, args, tmp_path, env_without_teacher({"RLHOST_TEST_CHECKPOINT_DELAY": "0.5"}))
    run = tmp_path / "c"
    wait_for(lambda: run.exists() and any(n.startswith(".tmp-ckpt-8-") for n in os.listdir(run)),
             p, what="the step-8 checkpoint write")
    p.kill()
    p.communicate()
    assert not (run / "ckpt-8").exists() and (run / "ckpt-4").exists()
    p = rlhost(RLAIF, args, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "interrupted write" in p.stderr and "from ckpt-4 (step 4)" in p.stderr
    assert not any(n.startswith(".tmp-") for n in os.listdir(run))
    assert metrics(run) == metrics(uninterrupted)
    assert weights(run / "ckpt-8") == weights(uninterrupted / "ckpt-8")


def test_sigint_checkpoints_and_exits_130(tmp_path, sft):
    p = start(RLAIF, [f"init={sft}", "dir=i", "steps=200", "checkpoint_every=0", *QUICK], tmp_path)
    wait_for(lambda: len(metrics(tmp_path / "i")) >= 2, p, what="step 2")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    last = metrics(tmp_path / "i")[-1]["step"]
    assert 2 <= last < 200
    assert (tmp_path / "i" / f"ckpt-{last}" / "manifest.json").exists()
    assert f"interrupted after step {last}" in err


def test_eval_one_checkpoint_and_a_comparison(tmp_path, sft, uninterrupted):
    p = rlhost(EVAL, [f"checkpoint={sft}", "out=one", "limit=12", "threads=1"], tmp_path)
    assert p.returncode == 0, p.stderr
    for f in ("report.md", "report.json", "report.png"):
        assert (tmp_path / "one" / f).exists(), f
    rep = json.loads((tmp_path / "one" / "report.json").read_text())
    assert [(r["scorer"], r["count"]) for r in rep["rows"]] == [("native", 12), ("exact", 12)]
    assert "| native |" in (tmp_path / "one" / "report.md").read_text()
    assert "no teacher configured" in p.stderr

    # Two checkpoints side by side, with a teacher: its grades and its pairwise verdicts.
    with Teacher(rule="len10") as t:
        env, rubric = teacher_env(t, tmp_path)
        p = rlhost(EVAL, [f"checkpoint={sft}", f"compare={uninterrupted}/ckpt-8", "label=sft",
                          "compare_label=rl", "out=two", "limit=12", f"rubric={rubric}",
                          "threads=1"], tmp_path, env)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "two" / "report.json").read_text())
    got = {(r["model"], r["scorer"]) for r in rep["rows"]}
    assert got == {(m, s) for m in ("sft", "rl") for s in ("native", "exact", "judge", "pairwise")}
    assert {d["scorer"] for d in rep["deltas"]} >= {"native", "exact", "judge"}
    pw = {r["model"]: r for r in rep["rows"] if r["scorer"] == "pairwise"}
    # a win for one is a loss for the other
    assert abs(pw["sft"]["mean"] + pw["rl"]["mean"] - 1.0) < 1e-9
    assert (tmp_path / "two" / "report.png").exists()
    assert "rl − sft" in (tmp_path / "two" / "report.md").read_text()


# ---- bad input ---------------------------------------------------------------------

def other_model_checkpoint(src, dst):
    """A copy of a checkpoint claiming another architecture (d_model 64), its manifest
    updated so only the engine's model check can refuse it."""
    shutil.copytree(src, dst)
    eng = os.path.join(dst, "model", "engine.json")
    meta = json.load(open(eng))
    meta["arch"]["d_model"] = 64
    with open(eng, "w") as f:
        json.dump(meta, f)
    man_path = os.path.join(dst, "manifest.json")
    man = json.load(open(man_path))
    for entry in man["files"]:
        full = os.path.join(dst, entry["path"])
        entry["size"] = os.path.getsize(full)
        entry["sha256"] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    with open(man_path, "w") as f:
        json.dump(man, f)


@pytest.fixture
def existing_run(tmp_path, uninterrupted):
    """An RLAIF run directory that bad input must leave exactly as it is."""
    shutil.copytree(uninterrupted, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("case", ["missing data", "malformed data", "missing rubric",
                                  "unknown override", "init of another model",
                                  "run of another model", "newer run format"])
def test_bad_input_is_exit_2_and_leaves_run_dir(tmp_path, sft, existing_run, case):
    run = existing_run
    # The run's own settings (more steps are allowed: resuming would extend it).
    args = [f"init={sft}", f"dir={run}", "steps=12",
            *[a for a in RESUME_ARGS if not a.startswith("steps=")]]
    env = None
    if case == "missing data":
        args.append("data=nowhere/train.jsonl")
        want = ["nowhere/train.jsonl"]
    elif case == "malformed data":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "sort 1 2 3 4 5 =", "reference": "1 2 3 4 5"}\n'
                       '{"prompt": "sort 5 4 3 2 1 =", "reference": "1 2 3 4 5"}\n'
                       '{"prompt": "sort 5 4 3 2 1 =", "reference": \n')
        args.append(f"data={bad}")
        want = [f"{bad}:3"]
    elif case == "missing rubric":
        env = env_without_teacher({"RL_TEACHER_URL": "http://127.0.0.1:9/v1",
                                   "RL_TEACHER_MODEL": "teach"})
        args.append("rubric=nowhere/rubric.txt")
        want = ["rubric file nowhere/rubric.txt"]
    elif case == "unknown override":
        args.append("lrr=1e-4")
        want = ["unknown setting 'lrr'", "did you mean 'lr'"]
    elif case == "init of another model":
        other_model_checkpoint(os.path.join(sft, "ckpt-8"), tmp_path / "other")
        args[0] = f"init={tmp_path / 'other'}"
        args[1] = f"dir={tmp_path / 'new'}"  # a new run: not even created
        want = ["another model", "d_model"]
    elif case == "run of another model":
        # The run's newest checkpoint is of another model: resuming refuses.
        shutil.rmtree(run / "ckpt-8")
        other_model_checkpoint(os.path.join(sft, "ckpt-8"), run / "ckpt-8")
        want = ["another model", "d_model"]
    else:
        (run / "run.json").write_text('{"format": 99, "rlhost": "9.0.0"}\n')
        want = ["newer rlhost", "format 99"]
    before = tree(run)
    p = rlhost(RLAIF, args, tmp_path, env)
    assert p.returncode == 2, (p.returncode, p.stderr)
    for w in want:
        assert w in p.stderr, (w, p.stderr)
    assert "Traceback" not in p.stderr and "stack traceback" not in p.stderr
    assert tree(run) == before
    assert not (tmp_path / "new").exists()
