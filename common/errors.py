"""The base class of errors that a user can fix (a wrong path, a bad value, a missing device): command-line entry
points print them as one ``error: …`` line with exit status 1, never a traceback (:func:`common.cli.run`)."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error whose message names the problem and the fix; raised for bad input or an unfit environment."""
