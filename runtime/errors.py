"""Runtime error types: user errors print as one line (no traceback) in the CLIs."""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """Bad input from the user: a missing file, a feed of the wrong shape, a manifest from another model."""


class BackendUnavailableError(RuntimeError):
    """The requested backend (or its device) is not available on this machine; the message says how to get it."""


class EngineError(RuntimeError):
    """A TensorRT engine that cannot run here (built for another GPU or TensorRT version, missing plugins)."""
