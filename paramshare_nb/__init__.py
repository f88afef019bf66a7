"""paramshare_nb: equivariant layers through parameter sharing, on Numba.

Groups act on a layer's inputs and outputs; tying patterns (the dense and
sparse designs of Ravanbakhsh, Schneider & Póczos, ICML 2017) make a layer
equivariant to them; the library proves equivariance and uniqueness, runs the
tied multiply on CPU and GPU, and trains models without a framework.

This module re-exports the public face; it never imports ``numba.cuda``.
"""

from . import autograd, checkpoint, config, groups, nn, optim, perm
from . import dask, plot  # their heavy extras load only when used
from .actions import Action, product, regular, tensor_power
from .autograd import Tensor, gradcheck, no_grad
from .equivariance import equivariance_error, is_equivariant
from .groups import (closure, contains, is_regular, is_semiregular, is_transitive, orbits,
                     order, stabilizer)
from .ops import materialize, tied_matmul, tied_matmul_grad
from .patterns import (Pattern, bias_pattern, dense_pattern, load_pattern, save_pattern,
                       sparse_pattern)
from .symmetry import (SearchBudgetError, SymmetryGroup, UniquenessResult, check_lift,
                       explain, graph_action, graph_convolution_pattern,
                       is_uniquely_equivariant, is_uniquely_equivariant_layers, lift,
                       symmetry_group, symmetry_group_layers)

__version__ = "0.1.0"

__all__ = [
    "config", "dask", "groups", "perm", "plot",
    "Action", "product", "regular", "tensor_power",
    "closure", "contains", "is_regular", "is_semiregular", "is_transitive", "orbits", "order",
    "stabilizer",
    "Pattern", "bias_pattern", "dense_pattern", "load_pattern", "save_pattern", "sparse_pattern",
    "is_equivariant", "equivariance_error",
    "materialize", "tied_matmul", "tied_matmul_grad",
    "SearchBudgetError", "SymmetryGroup", "UniquenessResult", "check_lift", "explain",
    "graph_action", "graph_convolution_pattern", "is_uniquely_equivariant",
    "is_uniquely_equivariant_layers", "lift", "symmetry_group", "symmetry_group_layers",
    "autograd", "checkpoint", "nn", "optim", "Tensor", "gradcheck", "no_grad",
]
