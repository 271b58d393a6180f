"""Dispatch: a request dict in, a reply dict out. Torch-free.

Holds the handle table of loaded models. A backend is a module with
`load(opts) -> model` and `error_kind(exc) -> str | None`; the model object answers the
model ops (see `Model` below). Backends are imported lazily on the first `load`, so
`ping` and validation errors never pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from typing import Any, Protocol

from . import __version__
from .errors import ConfigError, EngineError, StateError
from .protocol import MODEL_OPS, OPS, unknown_name, validate

log = logging.getLogger("rlengine")

BACKENDS = {"torch": "rlengine.backend_torch"}


class Model(Protocol):
    """What a backend's model object provides (one method per model op)."""

    def info(self) -> dict: ...
    def generate(self, o: dict) -> dict: ...
    def logprobs(self, o: dict) -> dict: ...
    def next_logprobs(self, o: dict) -> dict: ...
    def backward(self, o: dict) -> dict: ...
    def step(self, o: dict) -> dict: ...
    def save(self, o: dict) -> dict: ...
    def restore(self, o: dict) -> dict: ...
    def export(self, o: dict) -> dict: ...
    def import_weights(self, o: dict) -> dict: ...
    def close(self) -> None: ...


# handle -> (model, backend module)
HANDLES: dict[int, tuple[Any, Any]] = {}
_next_handle = 1


def _backend(name: str) -> Any:
    return importlib.import_module(BACKENDS[name])


def _op_load(o: dict) -> dict:
    global _next_handle
    backend = _backend(o["backend"])
    model = backend.load(o)
    handle = _next_handle
    _next_handle += 1
    HANDLES[handle] = (model, backend)
    log.info("loaded %s as model %d", o["path"], handle)
    return {"model": handle, "info": model.info()}


def _model_op(method: str):
    def run(model: Any, o: dict) -> dict:
        return getattr(model, method)(o)
    return run


def _op_info(model: Any, o: dict) -> dict:
    return model.info()


MODEL_HANDLERS = {
    "info": _op_info,
    "generate": _model_op("generate"),
    "logprobs": _model_op("logprobs"),
    "next_logprobs": _model_op("next_logprobs"),
    "backward": _model_op("backward"),
    "step": _model_op("step"),
    "save": _model_op("save"),
    "restore": _model_op("restore"),
    "export": _model_op("export"),
    "import": _model_op("import_weights"),
}
assert set(MODEL_HANDLERS) | {"close"} == set(MODEL_OPS)


def model_object(handle: int) -> Any:
    """The backend model behind a handle (for tests and tools in the same process)."""
    if handle not in HANDLES:
        raise StateError(f"unknown model handle {handle}")
    return HANDLES[handle][0]


def close_all() -> None:
    """Close every model (end of input in the worker, interpreter shutdown in the host)."""
    for handle in list(HANDLES):
        model, _ = HANDLES.pop(handle)
        try:
            model.close()
        except Exception:  # closing must go on for the others
            log.exception("closing model %d failed", handle)


def _classify(exc: BaseException, backend: Any) -> str:
    if isinstance(exc, EngineError):
        return exc.kind
    if backend is not None:
        kind = backend.error_kind(exc)
        if kind:
            return kind
    if isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError):
        return "io"
    return "internal"


def error_reply(rid: Any, kind: str, message: str, tb: str = "") -> dict:
    return {"id": rid, "ok": False, "error": {"kind": kind, "message": message, "traceback": tb}}


def dispatch(req: Any) -> dict:
    """Answer one request object. Never raises (except SystemExit)."""
    rid = req.get("id") if isinstance(req, dict) else None
    if not (isinstance(rid, int) and not isinstance(rid, bool)) and not isinstance(rid, str):
        rid = None
    backend = None
    try:
        if not isinstance(req, dict):
            raise ConfigError("request must be a JSON object")
        op = req.get("op")
        if not isinstance(op, str):
            raise ConfigError("request needs an 'op' string")
        if op not in OPS:
            raise ConfigError(unknown_name("op", op, sorted(OPS)))
        model = None
        if op in MODEL_OPS:
            handle = req.get("model")
            if isinstance(handle, bool) or not isinstance(handle, int):
                raise ConfigError(f"{op}: 'model' must be a model handle (integer)")
            if handle not in HANDLES:
                raise StateError(f"{op}: unknown model handle {handle} (closed or never loaded)")
            model, backend = HANDLES[handle]
        opts = validate(op, req)
        if op == "ping":
            result: dict = {"pid": os.getpid(), "version": __version__}
        elif op == "load":
            backend = _backend(opts["backend"])
            result = _op_load(opts)
        elif op == "close":
            HANDLES.pop(req["model"])
            model.close()
            result = {}
        else:
            # Process-wide settings (torch's thread count) are per model: embedded
            # models share one process, so each op puts its own model's back.
            getattr(model, "activate", lambda: None)()
            result = MODEL_HANDLERS[op](model, opts)
        return {"id": rid, "ok": True, **result}
    except SystemExit:
        raise
    except BaseException as exc:  # every failure becomes a reply, by contract
        kind = _classify(exc, backend)
        msg = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        if kind == "oom" and not isinstance(exc, EngineError):
            msg = f"out of memory: {msg}"
        if kind != "config":
            log.warning("%s error: %s", kind, msg)
        return error_reply(rid, kind, msg, traceback.format_exc())
