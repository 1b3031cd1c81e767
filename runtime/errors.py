"""Runtime error types: user errors print as one line (no traceback) in the CLIs."""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """Bad input from the user: a missing file, a feed of the wrong shape, a manifest from another model."""


class BackendUnavailableError(RuntimeError):
    """The requested backend (or its device) is not available on this machine; the message says how to get it."""


class EngineError(RuntimeError):
    """A TensorRT engine that cannot run here (built for another GPU or TensorRT version, missing plugins)."""


def cli_warnings() -> None:
    """Command-line entry points: a warning prints as one ``warning: …`` line (no source line echoed), each once."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"  # noqa: ARG005
    warnings.simplefilter("once", UserWarning)
