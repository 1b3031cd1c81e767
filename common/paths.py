"""Where the toolkit keeps what it may rebuild (exports, engines, timing caches): ``$POLYPSEG_CACHE``, else
``~/.cache/polypseg`` — never relative to the working directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """The cache folder (read from the environment at each call, so tests and users can redirect it)."""
    env = os.environ.get("POLYPSEG_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "polypseg"
