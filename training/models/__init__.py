"""Model families. Importing this package registers every family with the registry."""

from . import (
    gmsrf,  # noqa: F401  (registers gmsrf)
    msa2net,  # noqa: F401  (registers msa2net)
    msga,  # noqa: F401  (registers msga)
    msnet,  # noqa: F401  (registers msnet, m2snet, msnet_effl0, m2snet_effl0)
)
from .registry import ModelSpec, UnknownModelError, create_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "UnknownModelError", "create_model", "get_spec", "list_models", "register_model"]
