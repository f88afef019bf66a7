"""Gather-contract for few channels, on batch tiles (``"gather"`` and the
``"complement"`` residuals when ``C_in`` and ``C_out`` are at most 3).

Each output row ``m`` is a sum over its *groups* (distinct parameters in the
row): ``y[b, m] = sum_g theta[p_g] @ s_g[b]`` with ``s_g[b] = sum_{n in g}
x[b, n]``.  With more channels the group sums go to a ``(G, B, C)`` buffer
(:func:`.cpu.gather_sums`, :func:`.sums_cpu.gather_sums`) and the contraction
runs on :mod:`.csr_cpu`'s channel tiles; with few channels that buffer is
mostly the input copied once per group (scalar C_32: 1024 groups of one
column each, 4 MB for a batch of 1024), and its loops ran at 5-20 ns per sum.

Here, as in :func:`.cpu.scalar_forward`, each chunk moves a tile of
``TILE_B`` batch rows into a local batch-last ``(N * C_in, TILE_B)`` buffer; a
group's sums are formed along the tile's lanes (vectorised) and used at once,
so nothing group-sized leaves the cache.  Lanes past the batch are zeros, so
the ``dtheta`` sums over whole tiles count nothing twice.

Arrays: ``x (B, N, C_in)``, ``y (B, M, C_out)``, ``theta (P, C_out, C_in)``; a
group ``g`` sums the columns ``cols[ptr[g]:ptr[g + 1]]`` (repeated for
multi-edges) and has parameter ``gparam[g]`` and row ``grow[g]``; ``row_ptr,
row_groups`` list the groups of each row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import TILE_B, kernel


@njit(cache=True, nogil=True, inline="always")
def _tile_in(a, at, b0, w):
    """``at[:, :w] = a[b0 : b0 + w].T`` for ``a`` as ``(B, K)`` rows (``K`` = columns x
    channels, one loop: a one-trip channel loop innermost made it 5x slower); the lanes past
    ``w`` zeroed."""
    for bb in range(w):
        for k in range(a.shape[1]):
            at[k, bb] = a[b0 + bb, k]
    for bb in range(w, TILE_B):
        for k in range(a.shape[1]):
            at[k, bb] = 0


@njit(cache=True, nogil=True, inline="always")
def _group_sum(xt, ptr, cols, g, s):
    """``s[c] = sum of xt[n * C + c]`` over the columns ``n`` of group ``g`` (one tile)."""
    for c in range(s.shape[0]):
        for bb in range(TILE_B):
            s[c, bb] = 0
    for i in range(ptr[g], ptr[g + 1]):
        n = cols[i]
        for c in range(s.shape[0]):
            for bb in range(TILE_B):
                s[c, bb] += xt[n * s.shape[0] + c, bb]


@kernel(fastmath=True)
def gather_forward(x, theta, ptr, cols, row_ptr, row_groups, gparam, y, nchunks):
    """``y[b, m] = sum_{groups g of row m} theta[p_g] @ sum_{n in g} x[b, n]``."""
    nb, nn, nci = x.shape
    nm, nco = y.shape[1], y.shape[2]
    x2, y2 = x.reshape(nb, nn * nci), y.reshape(nb, nm * nco)
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.empty((nn * nci, TILE_B), dtype=x.dtype)
        s = np.empty((nci, TILE_B), dtype=x.dtype)
        acc = np.empty((nm * nco, TILE_B), dtype=y.dtype)
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            _tile_in(x2, xt, b0, w)
            for m in range(nm):
                for co in range(nco):
                    for bb in range(TILE_B):
                        acc[m * nco + co, bb] = 0
                for i in range(row_ptr[m], row_ptr[m + 1]):
                    g = row_groups[i]
                    _group_sum(xt, ptr, cols, g, s)
                    p = gparam[g]
                    for co in range(nco):
                        for ci in range(nci):
                            a = theta[p, co, ci]
                            for bb in range(TILE_B):
                                acc[m * nco + co, bb] += a * s[ci, bb]
            for bb in range(w):
                for k in range(nm * nco):
                    y2[b0 + bb, k] = acc[k, bb]


@kernel(fastmath=True)
def gather_dtheta(dy, x, ptr, cols, gparam, grow, part, nchunks):
    """``part[c, p] (C_out, C_in)``: chunk ``c``'s share of
    ``sum_{groups g of p} sum_b dy[b, m_g] (x) s_g[b]``.

    The caller sums ``part`` over chunks in a fixed order (deterministic,
    race-free).
    """
    nb, nn, nci = x.shape
    nm, nco = dy.shape[1], dy.shape[2]
    x2, dy2 = x.reshape(nb, nn * nci), dy.reshape(nb, nm * nco)
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.empty((nn * nci, TILE_B), dtype=x.dtype)
        dyt = np.empty((nm * nco, TILE_B), dtype=dy.dtype)
        s = np.empty((nci, TILE_B), dtype=x.dtype)
        part[c] = 0
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            _tile_in(x2, xt, b0, w)
            _tile_in(dy2, dyt, b0, w)
            for g in range(gparam.shape[0]):
                _group_sum(xt, ptr, cols, g, s)
                m = grow[g]
                p = gparam[g]
                for co in range(nco):
                    for ci in range(nci):
                        d = part.dtype.type(0)
                        for bb in range(TILE_B):
                            d += dyt[m * nco + co, bb] * s[ci, bb]
                        part[c, p, co, ci] += d
