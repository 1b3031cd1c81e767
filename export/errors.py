"""Export error type: user errors print as one line and exit 1 (no traceback)."""

from __future__ import annotations

from common.errors import UserError


class ExportError(UserError, ValueError):
    """A problem with the user's input to an export step (unknown model, bad checkpoint, unwritable output …)."""
