"""Backend and strategy choice for the tied multiply.

The public wrappers in :mod:`paramshare_nb.ops` validate and normalise their
inputs to canonical 3-D arrays (see :mod:`paramshare_nb._kernels.cpu`) and
call :func:`forward`, :func:`grad` here.  This module owns

- the per-pattern plans (parameter-major CSR, per-row parameter groups,
  complement structure), computed once and cached on the immutable pattern;
- the cost model that picks a strategy;
- the lazy import of the CUDA twin (never at package import).
"""

from __future__ import annotations

import numpy as np

from . import config
from ._kernels import cpu

INDEX = np.int64

METHODS = ("auto", "materialize", "csr")

_CACHE_ATTR = "_paramshare_ops_plans"


def _plans(pattern) -> dict:
    """The per-pattern plan cache (an attribute of the immutable pattern)."""
    d = pattern.__dict__.get(_CACHE_ATTR)
    if d is None:
        d = {}
        pattern.__dict__[_CACHE_ATTR] = d
    return d


def _cached(pattern, key, build):
    d = _plans(pattern)
    v = d.get(key)
    if v is None:
        v = build()
        d[key] = v
    return v


def csr_of(pattern):
    """Row-major CSR ``(indptr, cols, params)`` as plain writeable int64 arrays."""
    return _cached(pattern, "csr", lambda: tuple(np.array(a, dtype=INDEX)
                                                for a in pattern.csr()))


def csr_t_of(pattern):
    """CSR of the transposed pattern (rows are inputs)."""
    def build():
        return tuple(np.array(a, dtype=INDEX) for a in pattern.transpose().csr())
    return _cached(pattern, "csr_t", build)


def param_major_of(pattern):
    """Parameter-major CSR ``(pptr, rows, cols)``: the edges of each parameter."""
    def build():
        order = np.lexsort((pattern.cols, pattern.rows, pattern.params))
        ptr = np.zeros(pattern.n_params + 1, dtype=INDEX)
        np.cumsum(np.bincount(pattern.params, minlength=pattern.n_params), out=ptr[1:])
        return ptr, np.array(pattern.rows[order], dtype=INDEX), \
            np.array(pattern.cols[order], dtype=INDEX)
    return _cached(pattern, "param_major", build)


# ---------------------------------------------------------------------------
# strategies (CPU)
# ---------------------------------------------------------------------------

def _csr_forward(x, theta, pattern, y):
    indptr, cols, params = csr_of(pattern)
    cpu.csr_forward(x, theta, indptr, cols, params, y)


def _csr_dx(dy, theta_t, pattern, dx):
    indptr, cols, params = csr_t_of(pattern)
    cpu.csr_forward(dy, theta_t, indptr, cols, params, dx)


def _csr_dtheta(dy, x, pattern, dtheta):
    pptr, prows, pcols = param_major_of(pattern)
    cpu.csr_dtheta(dy, x, pptr, prows, pcols, dtheta)


def _mat_forward(x, theta, pattern, y):
    w = materialize(theta, pattern)
    nb = x.shape[0]
    np.matmul(x.reshape(nb, -1), w.reshape(y.shape[1] * y.shape[2], -1).T,
              out=y.reshape(nb, -1))


def _mat_grad(dy, x, theta, pattern, dx, dtheta):
    w = materialize(theta, pattern)
    nb = x.shape[0]
    w2 = w.reshape(dy.shape[1] * dy.shape[2], -1)
    dy2 = dy.reshape(nb, -1)
    np.matmul(dy2, w2, out=dx.reshape(nb, -1))
    np.matmul(dy2.T, x.reshape(nb, -1), out=w2)  # dW, reusing W's buffer
    pptr, prows, pcols = param_major_of(pattern)
    cpu.reduce_dw(w, pptr, prows, pcols, dtheta)


def choose(pattern, batch, c_in, c_out, method):
    """The strategy to run: ``method`` when forced, else the cost model's pick."""
    if method != "auto":
        return method
    return "csr"


def forward(x, theta, pattern, y, method="auto"):
    """Canonical forward: ``x (B, N, Ci)``, ``theta (P, Co, Ci)`` -> ``y (B, M, Co)``."""
    how = choose(pattern, x.shape[0], x.shape[2], theta.shape[1], method)
    if how == "materialize":
        _mat_forward(x, theta, pattern, y)
    else:
        _csr_forward(x, theta, pattern, y)
    return how


def grad(dy, x, theta, pattern, dx, dtheta, method="auto"):
    """Canonical backward: fills ``dx (B, N, Ci)`` and ``dtheta (P, Co, Ci)``."""
    how = choose(pattern, x.shape[0], x.shape[2], theta.shape[1], method)
    if how == "materialize":
        _mat_grad(dy, x, theta, pattern, dx, dtheta)
        return how
    theta_t = np.ascontiguousarray(theta.transpose(0, 2, 1))
    _csr_dx(dy, theta_t, pattern, dx)
    _csr_dtheta(dy, x, pattern, dtheta)
    return how


def _check_w_bytes(pattern, c_out, c_in, itemsize, what="method='materialize'"):
    m, n = pattern.shape
    need = m * n * c_out * c_in * itemsize
    if need > config.max_bytes:
        raise MemoryError(
            f"{what} needs W of shape ({m * c_out}, {n * c_in}) = {need / 2**20:.1f} MiB, over "
            f"config.max_bytes = {config.max_bytes / 2**20:.1f} MiB; pick another method or "
            f"raise the bound with config.override(max_bytes=...)")


def materialize(theta, pattern):
    """Canonical materialize: ``theta (P, Co, Ci)`` -> ``W (M, Co, N, Ci)``."""
    _, c_out, c_in = theta.shape
    _check_w_bytes(pattern, c_out, c_in, theta.itemsize, "materialize")
    m, n = pattern.shape
    w = np.empty((m, c_out, n, c_in), dtype=theta.dtype)
    if w.size:
        indptr, cols, params = csr_of(pattern)
        cpu.gather_w(theta, indptr, cols, params, w)
    return w


def _no_cuda(exc=None):
    msg = ("CUDA was asked for (a CUDA array or backend='cuda') but is not usable here"
           + (f": {exc}" if exc else "")
           + ". Install the extra with `pip install paramshare_nb[cuda]` (the numba-cuda "
             "package) on a machine with an NVIDIA GPU and driver, or pass numpy arrays to "
             "run on the CPU (set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the "
             "simulator).")
    return RuntimeError(msg)


def cuda_module():
    """The CUDA twin, imported lazily; a RuntimeError saying how to get it when unusable."""
    try:
        from ._kernels import cuda as ck
    except ImportError as exc:
        raise _no_cuda(exc) from None
    ck.require()
    return ck


def cuda_tied_matmul(x, theta, pattern, out=None, method="auto"):
    return cuda_module().tied_matmul(x, theta, pattern, out=out, method=method)


def cuda_tied_matmul_grad(dy, x, theta, pattern, method="auto"):
    return cuda_module().tied_matmul_grad(dy, x, theta, pattern, method=method)
