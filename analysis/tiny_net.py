"""A small network of your own, for analysis/03_your_own_model.ipynb: nothing in it
knows about mcstudy. Its Linear layers run on the chips; LayerNorm and GELU digitally."""

import math

import torch.nn as nn


def build(input_shape, n_classes, width=48):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.LayerNorm(width),
        nn.GELU(),
        nn.Linear(width, n_classes),
    )
