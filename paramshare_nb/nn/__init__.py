"""Neural-network building blocks on :mod:`paramshare_nb.autograd`.

Layers take and return :class:`paramshare_nb.Tensor` (arrays are wrapped);
equivariant data is ``(batch, N, channels)``.
"""

from .layers import (
    GELU,
    Dropout,
    EquivariantLinear,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    ModuleList,
    OrbitPool,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from .losses import cross_entropy, mse
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "EquivariantLinear", "Linear", "Sequential", "ModuleList",
           "OrbitPool", "Flatten", "Identity", "Dropout", "ReLU", "LeakyReLU", "Tanh", "Sigmoid",
           "GELU", "cross_entropy", "mse"]
