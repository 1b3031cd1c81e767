"""Where the toolkit keeps what it may rebuild (exports, engines, timing caches): ``$POLYPSEG_CACHE``, else
``~/.cache/polypseg`` — never relative to the working directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "data_root", "repo_root", "resolve_data_path"]


def cache_root() -> Path:
    """The cache folder (read from the environment at each call, so tests and users can redirect it)."""
    env = os.environ.get("POLYPSEG_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "polypseg"


def repo_root() -> Path:
    """The checkout this package runs from (the folder holding ``common/``)."""
    return Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared data: ``$POLYPSEG_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("POLYPSEG_DATA")
    return Path(env).expanduser().resolve() if env else (repo_root().parent / "shared" / "data").resolve()


def resolve_data_path(recorded: str | os.PathLike[str] | None) -> Path | None:
    """A data path as recorded in a checkpoint or config (often relative to where training ran), found from any working
    directory: as given, then relative to the checkout, then — for paths into ``shared/data`` — under
    :func:`data_root`. None when it is nowhere."""
    if not recorded:
        return None
    p = Path(recorded).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, repo_root() / p]
    parts = p.parts
    for i in range(len(parts) - 1):
        if parts[i] == "shared" and parts[i + 1] == "data":
            candidates.append(data_root().joinpath(*parts[i + 2:]))
            break
    return next((c.resolve() for c in candidates if c.exists()), None)
