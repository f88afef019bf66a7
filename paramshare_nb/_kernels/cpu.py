"""CPU kernels of the tied multiply (``numba.njit``, ``parallel=True`` drivers).

Private: the validated public wrappers live in :mod:`paramshare_nb.ops`, the
strategy choice in :mod:`paramshare_nb._dispatch`.

Every kernel sees canonical, C-contiguous, writeable arrays of one float dtype
(float32 or float64) and int64 index arrays:

- ``x``      ``(B, N, C_in)``   inputs (scalar layers use ``C_in == 1``),
- ``theta``  ``(P, C_out, C_in)`` parameters,
- ``y``      ``(B, M, C_out)``  outputs, written in full (never read).

Accumulators start from a zero of the array's own dtype, so float32 stays
float32.  Each parallel iteration writes only the rows it owns: no races and
no atomics; reductions that would collide (``dtheta``) either own whole
parameters or write per-chunk partial buffers merged serially.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ---------------------------------------------------------------------------
# sparse rows: one CSR pass, used for sparse patterns and as the simple baseline
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True, nogil=True)
def csr_forward(x, theta, indptr, cols, params, y):
    """``y[b, m] = sum_e theta[params[e]] @ x[b, cols[e]]`` over row ``m``'s edges."""
    nb, nm, nco = y.shape
    nci = x.shape[2]
    for t in prange(nb * nm):
        b = t // nm
        m = t - b * nm
        for co in range(nco):
            y[b, m, co] = 0
        for e in range(indptr[m], indptr[m + 1]):
            n = cols[e]
            p = params[e]
            for co in range(nco):
                s = y[b, m, co]
                for ci in range(nci):
                    s += theta[p, co, ci] * x[b, n, ci]
                y[b, m, co] = s


@njit(parallel=True, cache=True, nogil=True)
def csr_dtheta(dy, x, pptr, prows, pcols, dtheta):
    """``dtheta[p] = sum_{edges of p} sum_b dy[b, m] (x) x[b, n]``.

    ``pptr, prows, pcols`` is the parameter-major CSR of the pattern: each
    parallel iteration owns one parameter, so writes never collide.
    """
    npar, nco, nci = dtheta.shape
    nb = x.shape[0]
    for p in prange(npar):
        for co in range(nco):
            for ci in range(nci):
                dtheta[p, co, ci] = 0
        for e in range(pptr[p], pptr[p + 1]):
            m = prows[e]
            n = pcols[e]
            for b in range(nb):
                for co in range(nco):
                    g = dy[b, m, co]
                    for ci in range(nci):
                        dtheta[p, co, ci] += g * x[b, n, ci]


# ---------------------------------------------------------------------------
# materialize: gather W in the (M, C_out, N, C_in) layout
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True, nogil=True)
def gather_w(theta, indptr, cols, params, w):
    """``w[m, :, n, :] = sum_{edges (m, n, p)} theta[p]``; ``w`` is ``(M, Co, N, Ci)``."""
    nm, nco, nn, nci = w.shape
    for m in prange(nm):
        for co in range(nco):
            for n in range(nn):
                for ci in range(nci):
                    w[m, co, n, ci] = 0
        for e in range(indptr[m], indptr[m + 1]):
            n = cols[e]
            p = params[e]
            for co in range(nco):
                for ci in range(nci):
                    w[m, co, n, ci] += theta[p, co, ci]


@njit(parallel=True, cache=True, nogil=True)
def reduce_dw(dw, pptr, prows, pcols, dtheta):
    """``dtheta[p] = sum_{edges (m, n) of p} dw[m, :, n, :]``: a segmented reduction.

    ``pptr, prows, pcols`` is the parameter-major CSR; each parallel iteration
    owns one parameter.
    """
    npar, nco, nci = dtheta.shape
    for p in prange(npar):
        for co in range(nco):
            for ci in range(nci):
                dtheta[p, co, ci] = 0
        for e in range(pptr[p], pptr[p + 1]):
            m = prows[e]
            n = pcols[e]
            for co in range(nco):
                for ci in range(nci):
                    dtheta[p, co, ci] += dw[m, co, n, ci]
