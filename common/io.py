"""Files written so that a reader never sees half of them: write to a temporary file in the destination folder,
flush to disk, rename over the destination (atomic on POSIX). And the SHA-256 every cache and manifest uses."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["check_destination", "sha256_bytes", "sha256_file", "write_bytes_atomic", "write_json_atomic"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (with ``fsync``, on disk before the rename); nothing is left behind on
    failure."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """``obj`` as indented JSON (non-JSON values through ``str``), written atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def check_destination(path: str | os.PathLike[str], suffixes: tuple[str, ...] = ()) -> str | None:
    """Why ``path`` cannot be written (wrong suffix, a directory, a folder that cannot be created or written), or
    None; checked before long work starts, by creating and removing a probe file beside it."""
    p = Path(path)
    if suffixes and p.suffix not in suffixes:
        return f"{str(p)!r} must end in {' or '.join(suffixes)}"
    if p.is_dir():
        return f"{str(p)!r} is a directory: give a file name{' ending in ' + suffixes[0] if suffixes else ''}"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p.parent, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write to {str(p.parent)!r}: {e.strerror or e}"
    return None
