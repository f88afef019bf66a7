"""Sparse rows with channels (the ``"csr"`` strategy) on explicit SIMD tiles.

Each stored entry ``(m, n, p)`` of a sparse pattern (the Cayley design) adds
``theta[p] @ x[b, n]`` to ``y[b, m]``: a small ``C_out x C_in`` matrix-vector
product.  Written as scalar loops it runs one multiply-add at a time (LLVM
cannot vectorise through arrays it cannot prove disjoint); here a register
tile of 4 batch elements x 2 vectors of output channels reuses every loaded
vector of ``theta`` four times (:mod:`.simd`).  Scalar patterns
(``C_in == C_out == 1``) keep the batch-vectorised kernels of :mod:`.cpu`.

Layouts (C-contiguous, one float dtype):

- :func:`csr_rows`: sources ``x`` (``(B, N, Ci)`` inputs, or the group
  sums ``(G, B, Ci)`` of gather-contract, located by two strides),
  ``theta_t (P, Ci, Cop)`` (``theta`` transposed, zero-padded to ``Cop``, a
  multiple of 2 vectors), ``y (B, M, Co)``; row ``m``'s entries are
  ``indptr[m]:indptr[m + 1]`` of ``cols, params``.
- :func:`csr_dtheta`: ``dy (B, M, Co)``, sources as for :func:`csr_rows`,
  parameter-major entries ``pptr, prows, pcols``, ``dtheta (P, Coq, Cip)``
  (``Coq`` = ``Co`` rounded up to 4, ``Cip`` = ``Ci`` rounded up to 2
  vectors; entries past ``(Co, Ci)`` are padding).
"""

from __future__ import annotations

from numba import prange

from .cpu import kernel
from .simd import inline, lanes, load, store, vbcast, vfma, vload, vstore, vzero


@inline
def _rows_quad(x, theta_t, indptr, cols, params, bstride, sstride, y, b, m, rows):
    """``y[b : b + rows, m]`` for ``rows`` of 1 to 4: 4 batch elements x 2 vectors of output
    channels per pass.  Past ``rows`` the tile repeats the last element and stores nothing:
    every loaded vector of ``theta`` serves all the rows, so a tail of 2-3 elements costs
    one pass, not 2-3 of :func:`_rows_one` (S_64 at 3 -> 16 channels, batch 3: 82 against
    25 us for batch 4; C_64 at 8 -> 8, batch 3: 110-133 against 54-83).  A single element
    keeps :func:`_rows_one`: with 8 input channels the repeated rows' multiply-adds cost
    more than the loads they share (C_64, batch 1: 45-49 against 52-80 us)."""
    nci = theta_t.shape[1]
    nm, nco, cop = y.shape[1], y.shape[2], theta_t.shape[2]
    L = lanes(x)
    # from source (b, s) to (b + i, s), the last element repeated past rows
    s1 = bstride if rows > 1 else 0
    s2 = 2 * bstride if rows > 2 else s1
    s3 = 3 * bstride if rows > 3 else s2
    for col in range(0, cop, 2 * L):
        a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
        c0, c1, c2, c3 = vzero(x), vzero(x), vzero(x), vzero(x)
        for e in range(indptr[m], indptr[m + 1]):
            xo = b * bstride + cols[e] * sstride
            to = params[e] * nci * cop + col
            for ci in range(nci):
                w0 = vload(theta_t, to + ci * cop)
                w1 = vload(theta_t, to + ci * cop + L)
                g0 = vbcast(x, xo + ci)
                g1 = vbcast(x, xo + s1 + ci)
                g2 = vbcast(x, xo + s2 + ci)
                g3 = vbcast(x, xo + s3 + ci)
                a0, c0 = vfma(g0, w0, a0), vfma(g0, w1, c0)
                a1, c1 = vfma(g1, w0, a1), vfma(g1, w1, c1)
                a2, c2 = vfma(g2, w0, a2), vfma(g2, w1, c2)
                a3, c3 = vfma(g3, w0, a3), vfma(g3, w1, c3)
        n = nco - col
        o = (b * nm + m) * nco + col
        rstep = nm * nco  # from y[b, m] to y[b + 1, m]
        store(y, o, a0, n)
        store(y, o + L, c0, n - L)
        if rows > 1:
            store(y, o + rstep, a1, n)
            store(y, o + rstep + L, c1, n - L)
        if rows > 2:
            store(y, o + 2 * rstep, a2, n)
            store(y, o + 2 * rstep + L, c2, n - L)
        if rows > 3:
            store(y, o + 3 * rstep, a3, n)
            store(y, o + 3 * rstep + L, c3, n - L)


@inline
def _rows_one(x, theta_t, indptr, cols, params, bstride, sstride, y, b, m):
    """``y[b, m]`` alone (a batch of one, or its last element), one vector of output
    channels at a time."""
    nci = theta_t.shape[1]
    nm, nco, cop = y.shape[1], y.shape[2], theta_t.shape[2]
    for col in range(0, nco, lanes(x)):  # no pass over padding alone
        acc = vzero(x)
        for e in range(indptr[m], indptr[m + 1]):
            xo = b * bstride + cols[e] * sstride
            to = params[e] * nci * cop + col
            for ci in range(nci):
                acc = vfma(vbcast(x, xo + ci), vload(theta_t, to + ci * cop), acc)
        store(y, (b * nm + m) * nco + col, acc, nco - col)


@kernel(nrt=False)
def csr_rows(x, theta_t, indptr, cols, params, bstride, sstride, y, nchunks):
    """``y[b, m] = sum_{entries e of row m} theta[params[e]] @ source(b, cols[e])``.

    The source vector ``(b, s)`` (``C_in`` values) starts at flat offset
    ``b * bstride + s * sstride`` of ``x``: ``x (B, N, C_in)`` has
    ``(N * C_in, C_in)``; gathered sums ``(G, B, C_in)`` have
    ``(C_in, B * C_in)``.  Work items are (4 batch elements, row) pairs,
    dealt round-robin to the chunks; each writes only its own rows of ``y``.
    """
    nb, nm = y.shape[0], y.shape[1]
    nq = (nb + 3) // 4
    for c in prange(nchunks):
        for t in range(c, nq * nm, nchunks):
            q = t // nm
            m = t - q * nm
            b = 4 * q
            if b + 1 == nb:  # a single element: no repeated rows' multiply-adds
                _rows_one(x, theta_t, indptr, cols, params, bstride, sstride, y, b, m)
            else:
                _rows_quad(x, theta_t, indptr, cols, params, bstride, sstride, y, b, m,
                           min(4, nb - b))


@inline
def _dtheta_tile(dy, x, pptr, prows, pcols, bstride, sstride, dtheta, p, co, col):
    """``dtheta[p, co : co + 4, col : col + 2L]`` over every entry of ``p`` and batch element."""
    nci = x.shape[2]
    nb, nm, nco = dy.shape[0], dy.shape[1], dy.shape[2]
    coq, cip = dtheta.shape[1], dtheta.shape[2]
    L = lanes(x)
    # padding rows past C_out repeat the last channel (their sums are discarded)
    k1, k2, k3 = min(co + 1, nco - 1), min(co + 2, nco - 1), min(co + 3, nco - 1)
    a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
    c0, c1, c2, c3 = vzero(x), vzero(x), vzero(x), vzero(x)
    w = nci - col
    for e in range(pptr[p], pptr[p + 1]):
        for b in range(nb):
            xo = b * bstride + pcols[e] * sstride + col
            do = (b * nm + prows[e]) * nco
            x0, x1 = load(x, xo, w), load(x, xo + L, w - L)
            g0, g1 = vbcast(dy, do + co), vbcast(dy, do + k1)
            g2, g3 = vbcast(dy, do + k2), vbcast(dy, do + k3)
            a0, c0 = vfma(g0, x0, a0), vfma(g0, x1, c0)
            a1, c1 = vfma(g1, x0, a1), vfma(g1, x1, c1)
            a2, c2 = vfma(g2, x0, a2), vfma(g2, x1, c2)
            a3, c3 = vfma(g3, x0, a3), vfma(g3, x1, c3)
    o = (p * coq + co) * cip + col
    vstore(dtheta, o, a0)
    vstore(dtheta, o + L, c0)
    vstore(dtheta, o + cip, a1)
    vstore(dtheta, o + cip + L, c1)
    vstore(dtheta, o + 2 * cip, a2)
    vstore(dtheta, o + 2 * cip + L, c2)
    vstore(dtheta, o + 3 * cip, a3)
    vstore(dtheta, o + 3 * cip + L, c3)


@kernel(nrt=False)
def csr_dtheta(dy, x, pptr, prows, pcols, bstride, sstride, dtheta):
    """``dtheta[p] = sum_{entries (m, s) of p} sum_b dy[b, m] (x) source(b, s)`` (padded).

    Sources are located by strides as in :func:`csr_rows` (inputs, or the
    group sums of gather-contract with one entry per group).  Each parallel
    iteration owns one parameter: no races, a fixed order.
    """
    npar, coq, cip = dtheta.shape
    L = lanes(x)
    for p in prange(npar):
        for co in range(0, coq, 4):
            for col in range(0, cip, 2 * L):
                _dtheta_tile(dy, x, pptr, prows, pcols, bstride, sstride, dtheta, p, co, col)
