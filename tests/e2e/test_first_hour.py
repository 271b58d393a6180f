"""A TRL user's first hour (issue 17), end to end through $RLHOST: an installed rlhost
running shipped recipes by name from another directory, quiet model loading, sample
texts and TensorBoard events in the run directory, the metrics TRL users read, and
recipe help.
"""
from __future__ import annotations

import json
import os
import re
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


# -- 6 and 7. samples.jsonl and the metrics TRL logs ----------------------------------

RL_QUICK = [*QUICK, "prompts=4", "group=4"]
SAMPLE_FIELDS = {"step", "prompt", "completion", "reference", "reward", "reward_source",
                 "version", "finish", "length", "source", "group"}


def test_samples_jsonl_and_completion_metrics(tmp_path):
    p = run(["rlaif", "steps=3", "log_samples=4", "dir=runs/rl", *RL_QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rundir = tmp_path / "runs" / "rl"
    samples = read_jsonl(rundir / "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 + [3] * 4
    for s in samples:
        assert SAMPLE_FIELDS <= set(s), s
        assert s["reward_source"] == "native" and isinstance(s["completion"], str)
        assert s["finish"] in ("stop", "length") and 0 < s["length"] <= 12
        assert s["prompt"].startswith("sort ") and s["reference"]
    for rec in read_jsonl(rundir / "metrics.jsonl"):
        cl = rec["completion_length"]
        assert cl["min"] <= cl["mean"] <= cl["max"] <= 12
        assert 0 <= rec["clipped_ratio"] <= 1 and rec["tokens"] >= rec["samples"] * cl["min"]
        assert rec["time"]["tokens_per_s"] > 0  # wall-clock numbers only under time
        assert rec["frac_reward_zero_std"] == pytest.approx(rec["zero_var_groups"] / 4)
        assert rec["reward_by_source"]["native"] == pytest.approx(rec["reward"])
    # a resumed, extended run keeps each step's samples once
    p = run(["rlaif", "steps=5", "log_samples=4", "dir=runs/rl", *RL_QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    steps = [s["step"] for s in read_jsonl(rundir / "samples.jsonl")]
    assert steps == sorted(steps) and all(steps.count(k) == 4 for k in range(1, 6))
    # all, or none
    p = run(["rlaif", "steps=1", "log_samples=-1", "dir=runs/all", *RL_QUICK], cwd=tmp_path)
    assert p.returncode == 0 and len(read_jsonl(tmp_path / "runs/all/samples.jsonl")) == 16
    p = run(["rlaif", "steps=1", "log_samples=0", "dir=runs/none", *RL_QUICK], cwd=tmp_path)
    assert p.returncode == 0 and not (tmp_path / "runs/none/samples.jsonl").exists()


def test_sft_progress_line_shows_the_loss(tmp_path):
    p = run(["sft", "steps=2", "dir=runs/s", *QUICK], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("step ")]
    recs = read_jsonl(tmp_path / "runs/s/metrics.jsonl")
    assert lines and f"loss {recs[-1]['loss']:.4g}" in lines[-1]


def test_eval_keeps_every_generation_beside_the_report(tmp_path):
    p = run(["eval", "limit=3", "n=2", "temperature=1.0", "out=ev", "threads=1"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    gens = read_jsonl(tmp_path / "ev" / "samples.jsonl")
    assert len(gens) == 6 and (tmp_path / "ev" / "report.md").exists()
    assert [g["i"] for g in gens] == [1, 2, 3, 4, 5, 6]
    for g in gens:
        assert set(g["rewards"]) == {"native", "exact"}
        assert g["prompt"].startswith("sort ") and isinstance(g["completion"], str)
        assert g["reference"] and g["model"] == "builtin:tiny"


def test_plot_panels_skip_constants_band_the_reward_and_smooth(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("plot", os.path.join(ROOT, "scripts", "plot.py"))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    rows = [{"step": k, "lr": 0.002, "reward": (k % 3) / 2, "reward_std": 0.1,
             "frac_reward_zero_std": 0.25 * (k % 2), "zero_var_groups": k % 2,
             "completion_length": {"mean": 8.0 + k % 2, "min": 2, "max": 12},
             "reward_by_source": {"native": (k % 3) / 2}} for k in range(1, 31)]
    series = plot.numeric_series(rows)
    names = plot.choose(series)
    assert "lr" not in names and plot.constants(series)["lr"] == 0.002  # no wasted panel
    assert names[:2] == ["reward", "frac_reward_zero_std"]
    assert "reward_std" not in names and "completion_length.min" not in names  # bands
    assert "reward_by_source.native" not in names and "zero_var_groups" not in names
    ys = [v for _, v in series["reward"]]
    sm = plot.smooth(ys)
    spread = lambda v: max(v[5:]) - min(v[5:])  # noqa: E731
    assert spread(sm) < spread(ys) and sm[0] == ys[0]
    rundir = tmp_path / "r"
    rundir.mkdir()
    (rundir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([PYTHON, os.path.join(ROOT, "scripts", "plot.py"), str(rundir)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (rundir / "metrics.png").stat().st_size > 10000


# -- 1. recipe help and TRL's names ---------------------------------------------------

@pytest.mark.parametrize("args", [["recipes/sft.lua", "--help"], ["sft", "-h"], ["sft", "help"],
                                  ["--help", "recipes/sft.lua"], ["sft", "steps=3", "--help"]])
def test_recipe_help_lists_settings_and_runs_nothing(tmp_path, args):
    p = run(args, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("recipes/sft.lua — supervised fine-tuning")  # the header comment
    assert "settings (set any with key=value after the recipe):" in out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and "(" in ln}
    assert "lr" in rows and "(float" in rows["lr"] and "0.002" in rows["lr"]
    assert "max global gradient norm" in rows["clip"] and "(float" in rows["clip"]
    assert "(unset)" in rows["init"] and "(string" in rows["init"]
    assert "(boolean)" in rows["plot"] and "true" in rows["plot"]
    assert "step 1" not in p.stderr and "loaded" not in p.stderr
    assert os.listdir(tmp_path) == []  # no runs/sft: nothing ran


def test_rlaif_help_names_the_teacher_variables(tmp_path):
    p = run(["recipes/rlaif.lua", "--help"], cwd=tmp_path, timeout=60)
    assert p.returncode == 0 and os.listdir(tmp_path) == []
    line = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("teacher_url"))
    assert "$RL_TEACHER_URL" in line
    assert "samples per prompt" in next(ln for ln in p.stdout.splitlines()
                                        if ln.strip().startswith("group "))


def test_help_stops_a_recipe_that_acts_before_rl_config(tmp_path):
    (tmp_path / "odd.lua").write_text(
        '-- odd: opens its run before its settings\nlocal rl = require "rl"\n'
        'local run = rl.run{dir = "runs/odd"}\nfor _ in run:steps(2) do end\n'
        'local cfg = rl.config{steps = 2}\n')
    p = run(["odd.lua", "--help"], cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("odd: opens its run") and "rl.run before any rl.config" in p.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe,trl,ours", [
    ("sft", "learning_rate", "lr"), ("sft", "max_steps", "steps"),
    ("sft", "per_device_train_batch_size", "micro_batch"),
    ("sft", "gradient_accumulation_steps", "batch"), ("sft", "warmup_steps", "warmup"),
    ("sft", "max_grad_norm", "clip"), ("sft", "num_train_epochs", "steps"),
    ("rlaif", "num_generations", "group"), ("rlaif", "max_completion_length", "max_tokens"),
    ("rlaif", "beta", "kl"), ("rlaif", "gradient_accumulation_steps", "prompts")])
def test_trl_names_get_the_rlhost_name(tmp_path, recipe, trl, ours):
    p = run([recipe, f"{trl}=1"], cwd=tmp_path, timeout=60)
    assert p.returncode == 2
    assert f"unknown setting '{trl}' (TRL's '{trl}' is '{ours}' here" in p.stderr
    assert os.listdir(tmp_path) == []


# -- 5. every hint names something that works -------------------------------------------

HINT = re.compile(r"\b(?:pass|run with|run again with|again with|set|try|use)\s+"
                  r"((?:[a-z_]+=[^\s,;)\"']+)(?:\s+(?:or|and)\s+[a-z_]+=[^\s,;)\"']+)*)")


def recipe_settings(name):
    p = run([name, "--help"], cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    return {ln.split()[0] for ln in p.stdout.splitlines() if re.match(r"  [a-z_]+ \(", ln)}


def test_hints_in_the_sources_name_real_settings():
    """Every `key=value` a message tells the user to type is a setting of a shipped
    recipe (rl.run options go through run.lua's how(), which names the recipe's own)."""
    settings = set()
    for name in ("sft", "rlaif", "eval", "demo"):
        settings |= recipe_settings(name)
    found = []
    verbs = re.compile(r"\b(pass|run with|run again with|again with|set|try|use)\s+[a-z_]+=")
    for top in ("lua", "host", "recipes"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if not f.endswith((".lua", ".c", ".h")):
                    continue
                path = os.path.join(dirpath, f)
                lines = open(path, encoding="utf-8").read().split("\n")
                if f.endswith(".lua"):  # comments out; a literal split over lines joined
                    lines = [ln for ln in lines if not ln.lstrip().startswith("--")]
                text = re.sub(r'"\s*(?:\.\.)?\s*\n\s*(?:\.\.)?\s*"', "", "\n".join(lines))
                for m in re.finditer(r'"([^"\n]*)"', text):
                    if verbs.search(m.group(1)):
                        for key in re.findall(r"\b([a-z_]+)=(?:true|false|-?\d)", m.group(1)):
                            found.append((path, key))
    assert found, "the hint pattern matches nothing: the test would not catch a bad hint"
    bad = [(os.path.relpath(p, ROOT), k) for p, k in found if k not in settings]
    assert not bad, f"hints naming no setting of a shipped recipe: {bad}"


def test_refusal_hints_work_when_typed(tmp_path):
    base = ["sft", "steps=1", *QUICK]
    assert run(base, cwd=tmp_path).returncode == 0
    tried = 0
    for change in (["resume=false"], ["lr=0.01"]):
        p = run([*base, *change], cwd=tmp_path)
        assert p.returncode == 2 and "allow_config_change=true" not in p.stderr
        hints = [h for m in HINT.finditer(p.stderr) for h in re.findall(r"[a-z_]+=\S+?(?=[\s,;)]|$)",
                                                                      m.group(1))]
        hints += re.findall(r"\b(dir=\S+?) for a new run", p.stderr)
        assert hints, p.stderr
        for h in hints:
            args = [a for a in base if not a.startswith(h.split("=")[0] + "=")]
            extra = [c for c in change if not c.startswith("resume=")]
            q = run([*args, *extra, h], cwd=tmp_path)
            assert q.returncode == 0, f"the hint {h!r} from\n{p.stderr}\ndid not work:\n{q.stderr}"
            tried += 1
    assert tried >= 3


# -- 2. a recipe of your own, anywhere; README followed verbatim -----------------------

def readme_block(after):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(after)
    m = re.compile(r"```lua\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_readme_recipe_of_your_own_runs_outside_the_tree(tmp_path):
    code = readme_block("A recipe of your own")
    assert 'require "tasks.sort"' in code
    (tmp_path / "mine.lua").write_text(code)
    p = run(["mine.lua", "steps=2"], cwd=tmp_path)  # as the README says, from elsewhere
    assert p.returncode == 0, p.stderr
    assert [r["step"] for r in read_jsonl(tmp_path / "runs/mine/metrics.jsonl")] == [1, 2]


def test_own_task_found_next_to_the_recipe_and_in_the_current_directory(tmp_path):
    task = ('local sort = require "tasks.sort"\nlocal M = {}\nfor k, v in pairs(sort) do '
            'M[k] = v end\nM.name = "%s"\nreturn M\n')
    recipe = ('local rl = require "rl"\nlocal t = require "tasks.mine"\n'
              'local data = rl.dataset(t.train)\nprint(t.name, #data)\n')
    (tmp_path / "proj" / "tasks").mkdir(parents=True)
    (tmp_path / "proj" / "tasks" / "mine.lua").write_text(task % "beside")
    (tmp_path / "proj" / "r.lua").write_text(recipe)
    (tmp_path / "cwd" / "tasks").mkdir(parents=True)
    (tmp_path / "cwd" / "tasks" / "mine.lua").write_text(task % "cwd")
    p = run([str(tmp_path / "proj" / "r.lua")], cwd=tmp_path / "cwd")
    assert p.returncode == 0 and p.stdout.split()[0] == "beside", p.stderr  # the recipe's first
    os.remove(tmp_path / "proj" / "tasks" / "mine.lua")
    p = run([str(tmp_path / "proj" / "r.lua")], cwd=tmp_path / "cwd")
    assert p.returncode == 0 and p.stdout.split()[0] == "cwd", p.stderr
    os.remove(tmp_path / "cwd" / "tasks" / "mine.lua")
    p = run([str(tmp_path / "proj" / "r.lua")], cwd=tmp_path / "cwd")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "module 'tasks.mine' not found" in lines[0]
    assert "r.lua:2:" in lines[0]
    for place in (str(tmp_path / "proj"), "the current directory", "recipes (rlhost's recipes)"):
        assert place in lines[0]


# -- 4. data= without eval_data= evaluates on the given data ---------------------------

PROBE_TASK = """-- a task whose reward tells which prompts it was given
local sort = require "tasks.sort"
local M = {}
for k, v in pairs(sort) do M[k] = v end
function M.reward(s)
  local _ = s.text
  return s.prompt:match("^mine:") and 1.0 or 0.0
end
return M
"""


def write_mine(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"mine: {i} =", "completion": f" {i}\n",
                                "reference": str(i)}) + "\n")


@pytest.mark.parametrize("recipe", ["sft", "rlaif"])
def test_data_without_eval_data_holds_out_its_own_rows(tmp_path, recipe):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "probe.lua").write_text(PROBE_TASK)
    write_mine(tmp_path / "mine.jsonl", 50)
    extra = ["prompts=4", "group=2"] if recipe == "rlaif" else ["batch=8"]
    p = run([recipe, "task=probe", "data=mine.jsonl", "steps=1", "eval_every=1", "dir=runs/a",
             *extra, "threads=1", "plot=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "data=mine.jsonl without eval_data=: evaluating on its last 5 rows" in p.stderr
    rec = read_jsonl(tmp_path / "runs/a/metrics.jsonl")[0]
    assert rec["eval_reward"] == 1.0  # every evaluated prompt came from mine.jsonl
    # eval_data= given: that is what is evaluated (the task's sort prompts here)
    p = run([recipe, "task=probe", "data=mine.jsonl", "eval_data=" + os.path.join(
        ROOT, "recipes/data/sort_heldout.jsonl"), "steps=1", "eval_every=1", "eval_prompts=8",
             "dir=runs/b", *extra, "threads=1", "plot=false"], cwd=tmp_path)
    assert p.returncode == 0 and "without eval_data" not in p.stderr, p.stderr
    assert read_jsonl(tmp_path / "runs/b/metrics.jsonl")[0]["eval_reward"] == 0.0
    # too few rows to hold any out: no evaluation, and it says so
    write_mine(tmp_path / "tiny.jsonl", 6)
    p = run([recipe, "task=probe", "data=tiny.jsonl", "steps=1", "eval_every=1", "dir=runs/c",
             *extra, "threads=1", "plot=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "has 6 rows, too few to hold any out: no evaluation" in p.stderr
    assert "eval_reward" not in read_jsonl(tmp_path / "runs/c/metrics.jsonl")[0]


def test_sft_own_data_is_evaluated_by_exact_match_without_task(tmp_path):
    write_mine(tmp_path / "mine.jsonl", 30)
    p = run(["sft", "data=mine.jsonl", "steps=1", "eval_every=1", "batch=8", "dir=runs/a",
             "threads=1", "plot=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "its last 3 rows, held out of training, by exact match with their reference" in p.stderr
    assert "eval_reward" in read_jsonl(tmp_path / "runs/a/metrics.jsonl")[0]
