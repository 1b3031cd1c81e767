"""Model registry: one :class:`ModelSpec` per network, so export and runtime never re-type constants.

Every model family registers its entry points with :func:`register_model`. The spec carries what the deploy side
needs (input size, normalisation, output activation, plugin-eligible blocks) next to the builder.

Example:
    >>> from training import create_model, get_spec
    >>> spec = get_spec("msnet")
    >>> spec.input_hw
    (352, 352)
    >>> model = create_model("msnet")
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch.nn as nn

from common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "UnknownModelError",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]


class UnknownModelError(UserError, KeyError, ValueError):
    """Raised for a model name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain sentence.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the export and runtime sides need to know about a registered model.

    Attributes:
        name: registry name, e.g. ``"msnet"``.
        build: callable returning an ``nn.Module``; receives the keyword overrides of :func:`create_model`.
        input_hw: native input size (height, width) in pixels.
        in_channels: input channels (3 = RGB).
        num_classes: output logit maps.
        size_divisor: H and W must be multiples of this.
        mean, std: per-channel normalisation applied to an RGB image scaled to [0, 1].
        output_activation: activation the runtime applies to the logits (``"sigmoid"`` or ``"softmax"``).
        threshold: probability above which a pixel is foreground.
        plugin_blocks: names of the plugin-eligible blocks the network contains (see ``kernels/``).
        fixed_size: True when the network only accepts ``input_hw`` (e.g. window attention).
        paper: citation or link.
        description: one line for ``list_models`` tables.
        in_channels_key: state_dict key of the first convolution weight (its dim 1 = input channels), so that
            ``load_model`` can infer ``in_channels`` from a checkpoint.
        num_classes_key: state_dict key of the last convolution weight (its dim 0 = classes).
        int8_calibration: default INT8 activation calibration (``percentile``, ``minmax`` or ``entropy``): the one
            measured to keep the model's Kvasir-SEG mDice closest to FP32.
    """

    name: str
    build: Callable[..., nn.Module] = field(repr=False, compare=False)
    input_hw: tuple[int, int] = (352, 352)
    in_channels: int = 3
    num_classes: int = 1
    size_divisor: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    output_activation: str = "sigmoid"
    threshold: float = 0.5
    plugin_blocks: tuple[str, ...] = ()
    fixed_size: bool = False
    paper: str = ""
    description: str = ""
    in_channels_key: str = ""
    num_classes_key: str = ""
    int8_calibration: str = "percentile"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (the builder is dropped)."""
        d = asdict(self)
        d.pop("build")
        d["input_hw"] = list(self.input_hw)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["plugin_blocks"] = list(self.plugin_blocks)
        return d


_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, **fields: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``.

    Raises:
        ValueError: if ``name`` is already registered (a silent overwrite would change what gets exported).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _SPECS:
            raise ValueError(f"model {name!r} is already registered")
        _SPECS[name] = ModelSpec(name=name, build=fn, **fields)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so that importing the registry stays cheap.
    from training import models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    _ensure_loaded()
    return sorted(n for n in _SPECS if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``.

    Raises:
        UnknownModelError: for an unknown name, listing the valid ones.
    """
    _ensure_loaded()
    try:
        return _SPECS[name]
    except KeyError:
        valid = ", ".join(sorted(_SPECS))
        raise UnknownModelError(f"unknown model {name!r}; valid models: {valid}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build model ``name`` on the CPU in train mode.

    ``None`` overrides are dropped so that CLI defaults never mask model defaults.
    """
    spec = get_spec(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    model = spec.build(**kwargs)
    changed = {k: kwargs[k] for k in ("in_channels", "num_classes", "input_hw") if k in kwargs}
    if "input_hw" in changed:
        changed["input_hw"] = tuple(changed["input_hw"])
    model.spec = replace(spec, **changed) if changed else spec  # type: ignore[assignment]  # handy for export; not a parameter
    return model
