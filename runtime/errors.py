"""Runtime error types: user errors print as one line (no traceback) in the CLIs."""

from __future__ import annotations

from common.cli import cli_warnings
from common.errors import UserError

__all__ = ["BackendUnavailableError", "EngineError", "RuntimeInputError", "cli_warnings"]


class RuntimeInputError(UserError, ValueError):
    """Bad input from the user: a missing file, a feed of the wrong shape, a manifest from another model."""


class BackendUnavailableError(UserError, RuntimeError):
    """The requested backend (or its device) is not available on this machine; the message says how to get it."""


class EngineError(UserError, RuntimeError):
    """A TensorRT engine that cannot run here (built for another GPU or TensorRT version, missing plugins)."""

