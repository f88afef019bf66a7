"""Gather-contract for scalar patterns, on batch tiles (``"gather"`` and the
``"complement"`` residuals when ``C_in == C_out == 1``).

Each output row ``m`` is a sum over its *groups* (distinct parameters in the
row): ``y[b, m] = sum_g theta[p_g] * s_g[b]`` with ``s_g[b] = sum_{n in g}
x[b, n]``.  With channels, :mod:`.cpu` and :mod:`.csr_cpu` keep the group sums
``s_g`` in ``(G, B, C)`` buffers; with one channel that buffer is the input
copied once per group (C_32: 1024 groups of one column each, 4 MB for a batch
of 1024), and its per-element loops ran at 5-20 ns per sum.

Here, as in :func:`.cpu.scalar_forward`, each chunk transposes a tile of
``TILE_B`` batch rows into a local ``(N, TILE_B)`` buffer; a group's sum is
formed along the tile's lanes (vectorised) in a ``TILE_B`` buffer and used at
once, so nothing group-sized leaves the cache.  Lanes past the batch are
zeros, so the ``dtheta`` sums over whole tiles count nothing twice.

Arrays: ``x (B, N)``, ``y (B, M)``, ``theta (P,)``; a group ``g`` sums the
columns ``cols[ptr[g]:ptr[g + 1]]`` (repeated for multi-edges) and has
parameter ``gparam[g]`` and row ``grow[g]``; ``row_ptr, row_groups`` list the
groups of each row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import TILE_B, kernel


@njit(cache=True, nogil=True, inline="always")
def _tile_in(a, at, b0, w):
    """``at[:, :w] = a[b0 : b0 + w].T``; the lanes past ``w`` zeroed."""
    for bb in range(w):
        for j in range(a.shape[1]):
            at[j, bb] = a[b0 + bb, j]
    for bb in range(w, TILE_B):
        for j in range(a.shape[1]):
            at[j, bb] = 0


@njit(cache=True, nogil=True, inline="always")
def _group_sum(xt, ptr, cols, g, s):
    """``s = sum of xt[n]`` over the columns ``n`` of group ``g`` (one tile)."""
    for bb in range(TILE_B):
        s[bb] = 0
    for i in range(ptr[g], ptr[g + 1]):
        n = cols[i]
        for bb in range(TILE_B):
            s[bb] += xt[n, bb]


@kernel(fastmath=True)
def gather_forward(x, theta, ptr, cols, row_ptr, row_groups, gparam, y, nchunks):
    """``y[b, m] = sum_{groups g of row m} theta[p_g] * sum_{n in g} x[b, n]``."""
    nb, nn = x.shape
    nm = y.shape[1]
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.empty((nn, TILE_B), dtype=x.dtype)
        s = np.empty(TILE_B, dtype=x.dtype)
        acc = np.empty((nm, TILE_B), dtype=y.dtype)
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            _tile_in(x, xt, b0, w)
            for m in range(nm):
                for bb in range(TILE_B):
                    acc[m, bb] = 0
                for i in range(row_ptr[m], row_ptr[m + 1]):
                    g = row_groups[i]
                    _group_sum(xt, ptr, cols, g, s)
                    a = theta[gparam[g]]
                    for bb in range(TILE_B):
                        acc[m, bb] += a * s[bb]
            for bb in range(w):
                for m in range(nm):
                    y[b0 + bb, m] = acc[m, bb]


@kernel(fastmath=True)
def gather_dtheta(dy, x, ptr, cols, gparam, grow, part, nchunks):
    """``part[c, p]``: chunk ``c``'s share of ``sum_{groups g of p} sum_b dy[b, m_g] s_g[b]``.

    The caller sums ``part`` over chunks in a fixed order (deterministic,
    race-free).
    """
    nb, nn = x.shape
    nm = dy.shape[1]
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.empty((nn, TILE_B), dtype=x.dtype)
        dyt = np.empty((nm, TILE_B), dtype=dy.dtype)
        s = np.empty(TILE_B, dtype=x.dtype)
        for p in range(part.shape[1]):
            part[c, p] = 0
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            _tile_in(x, xt, b0, w)
            _tile_in(dy, dyt, b0, w)
            for g in range(gparam.shape[0]):
                _group_sum(xt, ptr, cols, g, s)
                m = grow[g]
                d = part.dtype.type(0)
                for bb in range(TILE_B):
                    d += dyt[m, bb] * s[bb]
                part[c, gparam[g]] += d
