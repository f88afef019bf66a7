"""A small reverse-mode autograd on numpy arrays (and CUDA arrays for the tied multiply).

``Tensor`` records operations; ``Function`` is the base of the primitives;
``backward`` sorts the graph iteratively and accumulates gradients;
``gradcheck`` verifies a backward against finite differences.
"""

from .engine import backward, toposort
from .function import Function, enable_grad, is_grad_enabled, no_grad
from .gradcheck import gradcheck
from .primitives import unbroadcast
from .tensor import Tensor, concat, segment_reduce, tied_matmul

__all__ = ["Tensor", "Function", "backward", "toposort", "no_grad", "enable_grad",
           "is_grad_enabled", "gradcheck", "unbroadcast", "concat", "segment_reduce",
           "tied_matmul"]
