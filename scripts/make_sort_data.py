"""Write the demo task's data: sorting five digits (recipes/data/sort_*.jsonl).

The files are committed; this script documents how they were made and remakes them
exactly (fixed seed). Each line: {"prompt": "sort 3 9 1 4 7 =", "completion":
" 1 3 4 7 9\\n", "reference": "1 3 4 7 9"}. The held-out prompts share no digit
sequence with the training ones.

    .venv/bin/python scripts/make_sort_data.py recipes/data
"""
from __future__ import annotations

import json
import os
import random
import sys


def example(digits: list[int]) -> dict:
    ref = " ".join(map(str, sorted(digits)))
    return {"prompt": "sort " + " ".join(map(str, digits)) + " =",
            "completion": " " + ref + "\n", "reference": ref}


def main(out_dir: str, k: int = 5, n_train: int = 2000, n_heldout: int = 200) -> None:
    rng = random.Random(20261123)
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    while len(rows) < n_train + n_heldout:
        d = tuple(rng.randint(0, 9) for _ in range(k))
        if d not in seen:
            seen.add(d)
            rows.append(list(d))
    os.makedirs(out_dir, exist_ok=True)
    for name, part in (("sort_train.jsonl", rows[:n_train]),
                       ("sort_heldout.jsonl", rows[n_train:])):
        with open(os.path.join(out_dir, name), "w") as f:
            for d in part:
                f.write(json.dumps(example(d)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "recipes/data")
