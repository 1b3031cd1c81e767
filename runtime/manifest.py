"""The manifest written next to every exported model: the runtime reads preprocessing constants only from here.

``model.onnx`` ↔ ``model.manifest.json``; ``model.engine`` ↔ ``model.engine.manifest.json``. Plain JSON, one
level of nesting, so C++ and shell tools can read it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from common.io import sha256_file, write_json_atomic

from .errors import RuntimeInputError

__all__ = ["FORMAT", "Manifest", "manifest_path", "sha256_file", "write_json_atomic"]

FORMAT = "polypseg-manifest"
VERSION = 1


def manifest_path(model_path: str | os.PathLike[str]) -> Path:
    """``x.onnx`` → ``x.manifest.json``; ``x.engine`` → ``x.engine.manifest.json``."""
    p = Path(model_path)
    if p.suffix == ".onnx":
        return p.with_suffix(".manifest.json")
    return p.with_name(p.name + ".manifest.json")


@dataclass
class Manifest:
    """What an exported model is and how to feed it.

    Preprocessing: RGB image resized to ``input_hw`` (bilinear), scaled to [0, 1], ``(x − mean)/std``, NCHW.
    Postprocessing: ``output_activation`` on the logits, foreground where probability > ``threshold``.
    """

    model: str
    input_hw: list[int]
    mean: list[float]
    std: list[float]
    in_channels: int = 3
    num_classes: int = 1
    output_activation: str = "sigmoid"
    threshold: float = 0.5
    input_name: str = "input"
    output_name: str = "logits"
    io_dtype: str = "float32"
    dynamic_batch: bool = False
    precision: str = "fp32"
    quant_flavour: str = ""
    opset: int = 17
    ir_version: int = 0
    onnx_sha256: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    # TensorRT plugin ops of a deploy graph: [{name, version, namespace, count, blocks}]; empty = standard ops only
    plugins: list[dict[str, Any]] = field(default_factory=list)
    fp32_ops: list[str] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    export_config: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    toolkit_version: str = ""
    format: str = FORMAT
    version: int = VERSION

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest (or the manifest beside a model file)."""
        p = Path(path)
        if p.suffix in (".onnx", ".engine", ".plan") or not p.name.endswith(".json"):
            p = manifest_path(p)
        if not p.is_file():
            raise RuntimeInputError(
                f"no manifest {str(p)!r} beside the model: export it with `python -m export.onnx` (the runtime takes "
                "its preprocessing constants only from the manifest)"
            )
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RuntimeInputError(f"manifest {str(p)!r} is not valid JSON: {e}") from None
        if d.get("format") != FORMAT:
            raise RuntimeInputError(f"{str(p)!r} is not a polypseg manifest (format {d.get('format')!r})")
        known = {f.name for f in fields(cls)}
        try:
            m = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise RuntimeInputError(f"manifest {str(p)!r} lacks a field: {e}") from None
        bad = m.schema_problem()
        if bad:
            raise RuntimeInputError(f"manifest {str(p)!r}: {bad} (re-export the model; do not edit manifests by hand)")
        return m

    def schema_problem(self) -> str:
        """The first field whose type or value is wrong (hand-edited or damaged manifests), or ''."""
        def num(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        checks = [
            ("model", isinstance(self.model, str) and bool(self.model), "a non-empty string"),
            ("input_hw", isinstance(self.input_hw, list) and len(self.input_hw) == 2
             and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.input_hw),
             "[H, W], two positive integers"),
            ("mean", isinstance(self.mean, list) and len(self.mean) == self.in_channels and all(map(num, self.mean)),
             "one number per input channel"),
            ("std", isinstance(self.std, list) and len(self.std) == self.in_channels
             and all(num(v) and v > 0 for v in self.std), "one positive number per input channel"),
            ("in_channels", isinstance(self.in_channels, int) and self.in_channels > 0, "a positive integer"),
            ("threshold", num(self.threshold) and 0 < self.threshold < 1, "a number between 0 and 1"),
            ("output_activation", self.output_activation in ("sigmoid",), "'sigmoid'"),
            ("precision", self.precision in ("fp32", "fp16", "int8"), "fp32, fp16 or int8"),
        ]
        for name in ("input_name", "output_name", "io_dtype", "quant_flavour", "onnx_sha256", "checkpoint",
                     "checkpoint_sha256", "created", "toolkit_version"):
            checks.append((name, isinstance(getattr(self, name), str), "a string"))
        for name in ("plugins", "fp32_ops"):
            checks.append((name, isinstance(getattr(self, name), list), "a list"))
        for name in ("parity", "export_config", "engine"):
            checks.append((name, isinstance(getattr(self, name), dict), "an object"))
        for name, ok, want in checks:
            if not ok:
                return f"field {name!r} must be {want}, got {getattr(self, name)!r}"[:200]
        return ""

    def check_matches(self, model_path: str | os.PathLike[str]) -> None:
        """Refuse a manifest that describes another file (its recorded SHA-256 differs from the model's)."""
        p = Path(model_path)
        want = self.engine.get("engine_sha256") if p.suffix in (".engine", ".plan") else self.onnx_sha256
        if want and sha256_file(p) != want:
            raise RuntimeInputError(
                f"the manifest beside {p.name} belongs to another model file ({self.model}, {self.precision}): "
                "re-export the model so that file and manifest match"
            )

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
