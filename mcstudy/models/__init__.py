"""The model zoo. Every model is a plain ``torch.nn.Module`` built from standard layers;
``mcstudy.analog`` deploys its ``Linear`` and ``Conv2d`` layers on chips."""

from __future__ import annotations

import torch.nn as nn

from ..errors import McStudyError
from ..registry import Params
from . import factory, zoo  # noqa: F401  (registers the models)
from .zoo import MODELS, ModelFactory

__all__ = ["MODELS", "build_model"]


def build_model(name: str, params: Params, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Instantiate model ``name`` for inputs of ``input_shape`` (C, H, W) and ``n_classes`` outputs."""
    build: ModelFactory = MODELS.get(name).obj
    try:
        return build(params, input_shape, n_classes)
    except ValueError as e:  # e.g. a CNN asked to read feature vectors
        raise McStudyError(f"model {name!r} cannot be built for this dataset: {e}") from None

