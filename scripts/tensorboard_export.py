#!/usr/bin/env python3
"""Write a run's metrics.jsonl as TensorBoard events, through the tensorboard package's
own event writer (no TensorFlow needed).

    .venv/bin/python scripts/tensorboard_export.py runs/sft [runs/rlaif ...]
    tensorboard --logdir runs/

Events go to RUN/tensorboard/. Every number in a metrics line becomes a scalar at its
step; nested fields are joined with "/" (time.step -> time/step, scored_by.native ->
scored_by/native); strings and booleans are left out. rl.run calls this at every
checkpoint and at the end of a run when given tensorboard=true. Each call appends only
the steps past the last one exported (RUN/tensorboard/exported.json remembers it), so
TensorBoard shows every step once while the run goes on.

Exit status: 0 written (or nothing new), 1 a run directory without metrics.jsonl, 2
tensorboard not installed (pip install tensorboard==2.21.0, as scripts/requirements.txt).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator


def scalars(rec: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every number in a metrics record, nested keys joined by '/'."""
    for k in sorted(rec):
        v = rec[k]
        tag = f"{prefix}{k}"
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            if tag != "step":
                yield tag, float(v)
        elif isinstance(v, dict):
            yield from scalars(v, tag + "/")


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The complete, valid lines of metrics.jsonl (a torn last line is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                out.append(rec)
    return out


def export(run_dir: str) -> int:
    """Append the steps of RUN/metrics.jsonl not yet exported; returns how many."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    out = os.path.join(run_dir, "tensorboard")
    state_path = os.path.join(out, "exported.json")
    done = 0
    try:
        with open(state_path, encoding="utf-8") as f:
            done = int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        done = 0
    recs = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["step"] > done]
    if not recs:
        return 0
    os.makedirs(out, exist_ok=True)
    writer = EventFileWriter(out)
    now = time.time()
    for rec in recs:
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars(rec)]
        writer.add_event(Event(wall_time=now, step=rec["step"], summary=Summary(value=values)))
    writer.close()
    tmp = state_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": recs[-1]["step"]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path)
    return len(recs)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed in this Python (pip install tensorboard==2.21.0)",
              file=sys.stderr)
        return 2
    rc = 0
    for run_dir in argv:
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            print(f"{run_dir}: no metrics.jsonl", file=sys.stderr)
            rc = 1
            continue
        export(run_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
