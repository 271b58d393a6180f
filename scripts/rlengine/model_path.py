"""Where a model named in `rl.model{path=...}` lives (torch-free).

A path is `builtin:NAME`, a Hugging Face directory (absolute, or relative to the
current directory), or a short name such as `smollm2-135m-instruct`: a directory under
the models directory, `$RLHOST_MODELS` when set, else `<rlhost home>/models` (what
`make models` fills; the home is the directory above scripts/).
"""

from __future__ import annotations

import os

from .errors import ConfigError

HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def models_dirs() -> list[str]:
    """The directories searched for short names, in order."""
    dirs = []
    env = os.environ.get("RLHOST_MODELS")
    if env:
        dirs.append(os.path.abspath(env))
    home = os.path.join(HOME, "models")
    if home not in dirs:
        dirs.append(home)
    return dirs


def available() -> list[str]:
    """Short names that resolve now (directories with a config.json)."""
    names = set()
    for d in models_dirs():
        try:
            for n in os.listdir(d):
                if not n.startswith(".") and os.path.isfile(os.path.join(d, n, "config.json")):
                    names.add(n)
        except OSError:
            pass
    return sorted(names)


def resolve(path: str) -> str:
    """The model directory `path` names: itself when it is an existing directory or
    looks like a path (has a '/'), else the short name under the models directories.
    Raises ConfigError for a short name that is not there, listing those that are."""
    if path.startswith("builtin:") or os.path.isdir(path) or "/" in path or \
            path.startswith("."):
        return path
    for d in models_dirs():
        cand = os.path.join(d, path)
        if os.path.isdir(cand):
            return cand
    have = available()
    listed = ", ".join(have) if have else "none built yet"
    raise ConfigError(f"load: model '{path}' is not a directory, and no model of that name "
                      f"is in {' or '.join(models_dirs())} (available: {listed}; "
                      f"`make models` builds the shipped ones, scripts/models.json; a "
                      f"model is 'builtin:tiny', 'builtin:small', a short name or a "
                      f"Hugging Face directory)")
