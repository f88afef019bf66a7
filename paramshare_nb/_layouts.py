"""Shapes and array kinds of the tied multiply's arguments, for its CPU and CUDA
dispatchers alike (below both, so that neither imports the public wrappers)."""

from __future__ import annotations

import numpy as np

from ._validate import has_cuda_interface
from .patterns import Pattern

__all__ = ["theta_layout", "x_layout", "out_shape", "nothing_to_sum", "is_cuda_array"]


def theta_layout(theta: np.ndarray, pattern: Pattern):
    """``(scalar, C_out, C_in)`` from ``theta``'s shape, or a ValueError."""
    p = pattern.n_params
    if theta.ndim == 1 and theta.shape[0] == p:
        return True, 1, 1
    if theta.ndim == 3 and theta.shape[0] == p:
        return False, int(theta.shape[1]), int(theta.shape[2])
    raise ValueError(f"theta must have shape ({p},) or ({p}, C_out, C_in) for a pattern with "
                     f"n_params = {p}, got {theta.shape}")


def x_layout(x: np.ndarray, pattern: Pattern, scalar: bool, c_in: int, name: str = "x"):
    """Leading batch shape of ``x``, or a ValueError naming the expected shape."""
    n = pattern.shape[1]
    if scalar:
        if x.ndim < 1 or x.shape[-1] != n:
            raise ValueError(f"{name} must have shape (..., N) = (..., {n}) for scalar theta "
                             f"and a pattern of shape {pattern.shape}, got {x.shape}")
        return x.shape[:-1]
    if x.ndim < 2 or x.shape[-2:] != (n, c_in):
        raise ValueError(f"{name} must have shape (..., N, C_in) = (..., {n}, {c_in}) for theta "
                         f"of shape (P, C_out, C_in) and a pattern of shape {pattern.shape}, "
                         f"got {x.shape}")
    return x.shape[:-2]


def out_shape(lead, pattern: Pattern, scalar: bool, c_out: int):
    m = pattern.shape[0]
    return tuple(lead) + ((m,) if scalar else (m, c_out))


def nothing_to_sum(pattern: Pattern, n: int, c_in: int) -> bool:
    """Whether every output is an empty sum (no inputs, no channels, no entries)."""
    return n == 0 or c_in == 0 or pattern.n_params == 0 or pattern.nnz == 0


def is_cuda_array(obj) -> bool:
    """CUDA arrays: anything with ``__cuda_array_interface__``, or a numba device array
    (the simulator's arrays lack the interface).  Never imports ``numba.cuda``."""
    return (has_cuda_interface(obj)
            or type(obj).__module__.startswith(("numba.cuda.", "numba_cuda.")))
