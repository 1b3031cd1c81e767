"""Training side of the toolkit: model registry, checkpoints, data, losses, metrics and the training loop.

Public API::

    from training import create_model, list_models, get_spec, load_model
"""

from .checkpoint import CheckpointError, load_model, save_checkpoint
from .models.registry import ModelSpec, UnknownModelError, create_model, get_spec, list_models

__all__ = [
    "CheckpointError",
    "ModelSpec",
    "UnknownModelError",
    "create_model",
    "get_spec",
    "list_models",
    "load_model",
    "save_checkpoint",
]
