#!/usr/bin/env python3
"""Plot a run's metrics or an evaluation report as PNG.

    .venv/bin/python scripts/plot.py runs/x                 # runs/x/metrics.png
    .venv/bin/python scripts/plot.py runs/x -o curves.png
    .venv/bin/python scripts/plot.py --report runs/x/eval/report.json   # report.png
    .venv/bin/python scripts/plot.py --stages runs/d/sft runs/d/rlaif [--report R] -o d.png

metrics.jsonl holds one JSON object per step (rl.run writes it). Curves are drawn
for the keys a recipe logs under the usual names (reward, loss, kl, grad_norm,
entropy, lr, ...), numbers nested one level deep included (`stats.loss`), and a
stacked view of the seconds per phase under `time`. Missing values (null) are
gaps, not zeros. The reward carries a band of ± its standard deviation across the
step's samples (reward_std), completion length a band from its min to its max;
series longer than SMOOTH_MIN points are drawn faint with an exponential moving
average over them (TensorBoard's smoothing). A series that never changes (a constant
lr) gets no panel: its value is written under the figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402

# Curves in this order when present; then any other numeric series.
PREFERRED = ["reward", "reward.mean", "eval_reward", "loss", "stats.loss",
             "frac_reward_zero_std", "completion_length.mean", "clipped_ratio", "kl",
             "stats.kl", "grad_norm", "stats.grad_norm", "entropy", "stats.entropy", "lr",
             "stats.lr", "clip_frac", "stats.clip_frac", "time.tokens_per_s"]
SKIP = {"step", "version", "stats.version", "stats.tokens", "tokens"}
# Drawn as bands around another panel's curve, not as panels of their own.
BANDS = {"reward": ("reward_std", None),
         "completion_length.mean": ("completion_length.min", "completion_length.max")}
BAND_PARTS = {p for lo_hi in BANDS.values() for p in lo_hi if p}
MAX_PANELS = 12
SMOOTH_MIN = 10      # points before a series is smoothed
SMOOTH_WEIGHT = 0.6  # TensorBoard's default smoothing weight


def read_metrics(path: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                rows.append(rec)
    return rows


def numeric_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Flatten numbers one level deep (`stats.loss`); of `time`, only the rate
    time.tokens_per_s (the seconds per phase have their own panel)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in rows:
        step = rec["step"]
        for key, val in rec.items():
            if key == "time":
                val = {"tokens_per_s": val.get("tokens_per_s")} if isinstance(val, dict) else {}
            items = val.items() if isinstance(val, dict) else [(None, val)]
            for sub, v in items:
                name = key if sub is None else f"{key}.{sub}"
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if name in SKIP or not math.isfinite(float(v)):
                    continue
                series.setdefault(name, []).append((step, float(v)))
    return series


def time_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in rows:
        t = rec.get("time")
        if not isinstance(t, dict):
            continue
        for k, v in t.items():
            if k in ("elapsed", "tokens_per_s") or not isinstance(v, (int, float)):
                continue
            out.setdefault(k, []).append((rec["step"], float(v)))
    return out


def constants(series: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Series with one value throughout (a constant lr): shown as text, not panels."""
    return {n: pts[0][1] for n, pts in series.items()
            if len(pts) > 1 and len({v for _, v in pts}) == 1}


def choose(series: dict[str, list[tuple[int, float]]]) -> list[str]:
    """The panels: preferred names first, then other series that change."""
    const = constants(series)
    names = [n for n in PREFERRED if n in series and n not in const]
    # nested duplicates of a top-level curve add nothing
    names = [n for n in names if not (n.startswith("stats.") and n[6:] in names)]
    # one scorer's mean is the reward itself
    by_source = [n for n in series if n.startswith("reward_by_source.")]
    single = set(by_source) if len(by_source) == 1 else set()
    if "frac_reward_zero_std" in series:  # the same groups, as a count
        single.add("zero_var_groups")
    for n in sorted(series):
        if n not in names and n not in const and n not in BAND_PARTS and n not in single:
            if len({v for _, v in series[n]}) > 1:
                names.append(n)
    return names[: MAX_PANELS - 1]


def smooth(ys: list[float], weight: float = SMOOTH_WEIGHT) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it)."""
    out, acc, norm = [], 0.0, 0.0
    for y in ys:
        acc = acc * weight + (1 - weight) * y
        norm = norm * weight + (1 - weight)
        out.append(acc / norm)
    return out


def draw_series(ax: Any, name: str, series: dict[str, list[tuple[int, float]]]) -> None:
    """One panel: the curve (smoothed when long), with its band when it has one."""
    xs, ys = zip(*series[name])
    if len(ys) >= SMOOTH_MIN:
        line, = ax.plot(xs, ys, lw=0.8, alpha=0.3)
        ax.plot(xs, smooth(list(ys)), lw=1.4, color=line.get_color())
    else:  # a series logged at a few steps only (eval_reward) shows its points
        line, = ax.plot(xs, ys, lw=1.2, marker="o" if len(ys) < 5 else None, ms=3)
    lo_name, hi_name = BANDS.get(name, (None, None))
    if lo_name in series:
        at = dict(series[name])
        lo = dict(series[lo_name])
        hi = dict(series[hi_name]) if hi_name in series else None
        steps = [s for s in xs if s in lo and (hi is None or s in hi)]
        if hi is None:  # a standard deviation around the curve
            lows = [at[s] - lo[s] for s in steps]
            highs = [at[s] + lo[s] for s in steps]
            label = f"± {lo_name}"
        else:
            lows, highs = [lo[s] for s in steps], [hi[s] for s in steps]
            label = "min..max"
        ax.fill_between(steps, lows, highs, alpha=0.15, color=line.get_color(), lw=0,
                        label=label)
        ax.legend(fontsize=7)


def plot_run(run_dir: str, out: str | None) -> str:
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = read_metrics(path)
    if not rows:
        raise SystemExit(f"plot.py: {path} has no metrics lines")
    series = numeric_series(rows)
    names = choose(series)
    times = time_series(rows)
    panels = len(names) + (1 if times else 0)
    panels = max(panels, 1)
    cols = min(3, panels)
    nrows = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, name in zip(flat, names):
        draw_series(ax, name, series)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    if times:
        ax = flat[len(names)]
        phases = [k for k in sorted(times) if k != "step"]
        for k in phases:
            xs, ys = zip(*times[k])
            ax.plot(xs, ys, lw=1.0, label=k)
        if "step" in times:
            xs, ys = zip(*times["step"])
            ax.plot(xs, ys, lw=1.0, ls="--", color="black", label="step total")
        ax.set_title("seconds per phase", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)), fontsize=11)
    const = constants(series)
    if const:
        text = "constant: " + ", ".join(f"{k} = {v:g}" for k, v in sorted(const.items()))
        fig.text(0.01, 0.005, text, fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03 if const else 0, 1, 1))
    out = out or os.path.join(run_dir, "metrics.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_report(ax: Any, rep: dict, report: str) -> None:
    """Bars of mean reward (± standard error) per model and scorer, into ax."""
    rows = rep.get("rows", [])
    if not rows:
        raise SystemExit(f"plot.py: {report} has no rows")
    models = list(dict.fromkeys(str(r.get("model", "")) for r in rows))
    scorers = list(dict.fromkeys(str(r.get("scorer", "")) for r in rows))
    width = 0.8 / max(1, len(models))
    for mi, m in enumerate(models):
        means, errs, xs = [], [], []
        for si, s in enumerate(scorers):
            r = next((r for r in rows
                      if str(r.get("model", "")) == m and str(r.get("scorer", "")) == s), None)
            if r is None or r.get("mean") is None:
                continue
            xs.append(si + mi * width - 0.4 + width / 2)
            means.append(float(r["mean"]))
            errs.append(float(r.get("stderr") or 0.0))
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=m or None)
    ax.set_xticks(range(len(scorers)))
    ax.set_xticklabels(scorers)
    ax.set_ylabel("mean reward")
    ax.set_title(str(rep.get("title", "evaluation")), fontsize=10)
    if len(models) > 1 or models[0]:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_report(report: str, out: str | None) -> str:
    """Bars of mean reward (± standard error) per model and scorer."""
    with open(report, encoding="utf-8") as f:
        rep = json.load(f)
    rows = rep.get("rows", [])
    if not rows:
        raise SystemExit(f"plot.py: {report} has no rows")
    models = list(dict.fromkeys(str(r.get("model", "")) for r in rows))
    scorers = list(dict.fromkeys(str(r.get("scorer", "")) for r in rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(scorers) * max(1, len(models))), 3.4))
    draw_report(ax, rep, report)
    fig.tight_layout()
    out = out or os.path.splitext(report)[0] + ".png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_stages(run_dirs: list[str], report: str | None, out: str) -> str:
    """Consecutive runs (SFT, then RL from its checkpoint) on one step axis: the
    held-out reward each logged as eval_reward, the RL run's training reward, and the
    evaluation report's bars when given."""
    stages = []
    offset = 0
    for d in run_dirs:
        rows = read_metrics(os.path.join(d, "metrics.jsonl"))
        if not rows:
            raise SystemExit(f"plot.py: {d}/metrics.jsonl has no metrics lines")
        stages.append((os.path.basename(os.path.normpath(d)), offset, rows))
        offset += max(r["step"] for r in rows)
    panels = 2 + (1 if report else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), squeeze=False)
    ax = axes[0][0]
    colors = {"eval_reward": "tab:blue", "eval_exact": "tab:green"}
    labels = {"eval_reward": "held-out reward", "eval_exact": "held-out exact match"}
    last: dict[str, tuple[int, float]] = {}
    for i, (name, off, rows) in enumerate(stages):
        end = off + max(r["step"] for r in rows)
        if i % 2:
            ax.axvspan(off, end, color="grey", alpha=0.08, lw=0)
        ax.text((off + end) / 2, 1.09, name, ha="center", va="top", fontsize=8, color="dimgray")
        for key, style in (("eval_reward", "-o"), ("eval_exact", "--s")):
            pts = [(off + r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if key in last:  # the curve goes on from where the previous stage ended
                pts.insert(0, last[key])
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, ms=3, lw=1.2, color=colors[key],
                        label=labels[key] if i == 0 else None)
                last[key] = pts[-1]
    ax.set_xlabel("step (stages in sequence)", fontsize=8)
    ax.set_title("held-out, greedy", fontsize=10)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    for name, off, rows in stages:
        pts = [(off + r["step"], r["reward"]) for r in rows
               if isinstance(r.get("reward"), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            k = max(1, len(ys) // 20)  # a moving average over ~5% of the run
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
                      for i in range(len(ys))]
            ax.plot(xs, ys, lw=0.6, alpha=0.4)
            ax.plot(xs, smooth, lw=1.4, label=f"{name}: training samples' reward")
            if off:
                ax.axvline(off, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("step (stages in sequence)", fontsize=8)
    ax.set_title("reward of sampled answers", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if report:
        with open(report, encoding="utf-8") as f:
            rep = json.load(f)
        draw_report(axes[0][2], rep, report)
        axes[0][2].set_title("held-out evaluation", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a run directory holding metrics.jsonl")
    ap.add_argument("--report", help="an evaluation report.json to plot instead")
    ap.add_argument("-o", "--out", help="output PNG path")
    ap.add_argument("--stages", nargs="+", metavar="RUN_DIR",
                    help="runs done in sequence (SFT, then RL), plotted on one step axis")
    args = ap.parse_args(argv)
    if args.stages:
        out = plot_stages(args.stages, args.report, args.out or "stages.png")
    elif args.report:
        out = plot_report(args.report, args.out)
    elif args.run_dir:
        out = plot_run(args.run_dir, args.out)
    else:
        ap.error("give a run directory or --report FILE")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
