"""Typed engine errors. Torch-free: every layer may raise these."""

from __future__ import annotations

KINDS = ("config", "oom", "io", "nonfinite", "state", "internal", "interrupted")


class EngineError(Exception):
    """An error with a protocol `kind`; its message is shown to the user as is."""

    kind = "internal"

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ConfigError(EngineError):
    kind = "config"


class StateError(EngineError):
    kind = "state"


class NonFiniteError(EngineError):
    kind = "nonfinite"


class EngineIOError(EngineError):
    kind = "io"
