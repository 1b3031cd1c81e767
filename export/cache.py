"""The one export cache: callers pass export settings, the key is computed here from every setting that changes the
graph's bytes, and a cached graph is verified (its manifest's sha256) before it is reused.

Used by ``demos.live``, ``runtime.bench`` rows, ``export.bench`` and ``export.compare``::

    path = cached_export(cache_dir, "msnet_effl0", precision="int8", int8_flavour="qdq-u8", calib_count=256)

Key = model, input size, precision, INT8 flavour and its revision, the checkpoint's sha256 (``untrained`` for the
seeded untrained weights), calibration data / split / count / method, excluded nodes, deploy graph (plugins),
dynamic batch, opset, toolkit version and the export's own revision. File names keep a readable prefix
(``msnet_effl0-256x256-int8-qdq-u8r3-<key>.onnx``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from common.cli import entry
from common.io import sha256_file
from runtime.manifest import Manifest, manifest_path

from .errors import ExportError

__all__ = ["EXPORT_REVISION", "cache_key", "cached_export", "export_settings"]

#: bump when the export changes the bytes it writes for the same settings
EXPORT_REVISION = 1


def _checkpoint_sha(name: str, checkpoint: str | None) -> tuple[str | None, str]:
    """(checkpoint the export will load, its sha256 or ``untrained``) — the shipped ``<name>-kvasir`` by default."""
    from training.checkpoint import WEIGHTS_DIR, CheckpointError, resolve_checkpoint

    if checkpoint is None and (WEIGHTS_DIR / f"{name}-kvasir.pt").is_file():
        checkpoint = f"{name}-kvasir"
    if checkpoint is None:
        return None, "untrained"
    try:
        return checkpoint, sha256_file(resolve_checkpoint(checkpoint))
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def _abs(p: str | None) -> str:
    return str(Path(p).resolve()) if p else ""


def export_settings(name: str, *, checkpoint: str | None = None, precision: str = "fp32",
                    input_hw: Sequence[int] | None = None, dynamic_batch: bool = False, calib_data: str | None = None,
                    calib_split: str | None = None, calib_count: int = 256, calib_method: str | None = None,
                    int8_flavour: str = "qdq-s8", exclude_nodes: Sequence[str] = (), plugins: bool = False
                    ) -> dict[str, Any]:
    """Every setting that changes the exported bytes, normalised (defaults resolved, paths absolute)."""
    from training import UnknownModelError, get_spec

    from .onnx import OPSET, PRECISIONS, TOOLKIT_VERSION, check_input_size
    from .precision import flavour_tag

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    try:
        spec = get_spec(name)
    except UnknownModelError as e:
        raise ExportError(str(e)) from None
    hw = list(check_input_size(name, spec, input_hw))
    checkpoint, weights = _checkpoint_sha(name, checkpoint)
    int8 = precision == "int8"
    return {
        "model": name, "input_hw": hw, "precision": precision, "checkpoint": checkpoint, "weights": weights,
        "int8_flavour": int8_flavour if int8 else "", "flavour_tag": flavour_tag(int8_flavour) if int8 else "",
        # the frames shape FP16 (kept-float ranges) and INT8 (scales) graphs; an FP32 graph is the same without them
        "calib_data": _abs(calib_data) if precision != "fp32" else "",
        "calib_split": _abs(calib_split) if precision != "fp32" else "",
        "calib_count": int(calib_count) if int8 else 0, "calib_method": (calib_method or spec.int8_calibration)
        if int8 else "", "exclude_nodes": sorted(exclude_nodes), "plugins": bool(plugins),
        "dynamic_batch": bool(dynamic_batch), "opset": OPSET, "toolkit": TOOLKIT_VERSION, "revision": EXPORT_REVISION,
    }


def cache_key(settings: dict[str, Any]) -> str:
    blob = json.dumps({k: v for k, v in settings.items() if k != "checkpoint"}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _file_name(s: dict[str, Any]) -> str:
    h, w = s["input_hw"]
    flav = f"-{s['flavour_tag']}" if s["flavour_tag"] else ""
    deploy = "-deploy" if s["plugins"] else ""
    return f"{s['model']}-{h}x{w}-{s['precision']}{flav}{deploy}-{cache_key(s)}.onnx"


def _intact(path: Path) -> bool:
    """The cached graph is the one its manifest describes (a truncated or replaced file is not)."""
    try:
        m = Manifest.load(manifest_path(path))
        return bool(m.onnx_sha256) and sha256_file(path) == m.onnx_sha256
    except (OSError, ValueError):
        return False


def cached_export(cache_dir: str | os.PathLike[str], name: str, *, log: Callable[..., None] = print,
                  progress: bool = False, parity_gate: bool = True, parity_tolerance: dict[str, float] | None = None,
                  **settings: Any) -> Path:
    """The cached export of ``name`` with ``settings`` (keyword arguments of :func:`export.onnx.export_onnx`),
    exported first when missing or damaged; returns the ONNX path (its manifest beside it)."""
    s = export_settings(name, **settings)
    path = Path(cache_dir) / _file_name(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _EntryLock(path, log):  # two processes exporting one entry: the second waits, then reuses the first's
        return _cached_export_locked(path, s, name, log=log, progress=progress, parity_gate=parity_gate,
                                     parity_tolerance=parity_tolerance, **settings)


class _EntryLock:
    """An exclusive lock on one cache entry (``<entry>.lock``, flock: released by the OS if the holder dies)."""

    def __init__(self, path: Path, log: Callable[..., None]) -> None:
        self.lock, self.log = path.with_name(path.name + ".lock"), log

    def __enter__(self):
        import fcntl

        self.f = open(self.lock, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.log(f"waiting for another process exporting {self.lock.name[:-5]} …")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _cached_export_locked(path: Path, s: dict[str, Any], name: str, *, log, progress, parity_gate, parity_tolerance,
                          **settings: Any) -> Path:
    from .onnx import export_onnx

    if path.is_file() and _intact(path):
        gate = Manifest.load(manifest_path(path)).parity.get("gate") or {}
        if parity_gate and gate.get("passed") is False:  # kept by an ungated caller: not for a gated one
            raise ExportError(f"the cached {s['precision']} graph {path.name} misses its parity tolerance against "
                              f"PyTorch ({(gate.get('failures') or ['?'])[0]})")
        return path
    if path.exists() or manifest_path(path).exists():
        log(f"warning: cached export {path.name} is damaged or incomplete; exporting it again")
    else:
        log(f"first use: exporting {name} ({s['precision']}) to {path} …")
    export_onnx(name, path, checkpoint=s["checkpoint"], progress=progress, parity_gate=parity_gate,
                parity_tolerance=parity_tolerance, log=log,
                **{k: v for k, v in settings.items() if k != "checkpoint"})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.cache --model NAME [export options]``: export into the cache when missing or damaged and print
    the graph's path (the one line on stdout; progress on stderr). The torch-free tools (``runtime.batch``) call it to
    get a model without importing PyTorch themselves."""
    import argparse
    import sys

    from common.paths import cache_root

    from .onnx import PRECISIONS, add_args

    p = argparse.ArgumentParser(prog="python -m export.cache", description=main.__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--precision", choices=PRECISIONS, default="int8")
    p.add_argument("--cache-dir", help="default: $POLYPSEG_CACHE/onnx, else ~/.cache/polypseg/onnx")
    a = p.parse_args(argv)

    def log(*x):
        print(*x, file=sys.stderr, flush=True)

    path = cached_export(a.cache_dir or cache_root() / "onnx", a.model, checkpoint=a.checkpoint, precision=a.precision,
                         input_hw=a.input_size, dynamic_batch=a.dynamic_batch, calib_data=a.calib_data,
                         calib_split=a.calib_split, calib_count=a.calib_count, calib_method=a.calib_method,
                         int8_flavour=a.int8_flavour, exclude_nodes=a.exclude_nodes, plugins=a.plugins,
                         parity_gate=a.parity_gate, progress=a.progress and sys.stderr.isatty(), log=log)
    print(path)
    return 0


cli = entry(main)  # console script (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
