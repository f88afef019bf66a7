"""A small dense ``W`` streamed over a large batch, on explicit SIMD tiles.

When ``W`` has a few hundred entries and the batch is thousands of rows
(the scalar Figure-1 layer: ``W`` is 5 x 20, the batch 4096), a BLAS call
spends its time on the thin shape, not on arithmetic: OpenBLAS runs
``4096 x 20 @ 20 x 5`` at a fraction of its square-matrix rate.  These
kernels gather ``W`` from ``theta`` into a small padded buffer and stream the
batch through register tiles of :mod:`.simd` vectors; the backward computes
``dx``, the per-chunk ``dW`` and the reduction to ``dtheta`` in one call.
Figure 1, batch 4096, float32, one thread: forward 22.5 against 36.5 us for
the OpenBLAS product alone; backward 41 against 68 us for its two (18 us
since :func:`fused_backward` keeps ``dW`` in registers).

Each tile keeps at least 8 independent accumulators, so the fused
multiply-adds do not wait on each other's latency: 8 rows x 1 vector when the
output row fits one vector (the forward of Figure 1), 6 rows x 2 vectors for
each pair of vectors otherwise, 3 rows of ``dW`` x 3 vectors or 6 x 2 for the
outer products (12 accumulators, 2 vectors of ``x`` and a broadcast: 15 of
the 16 AVX registers).  A 4 x 3 tile needs 16 and more: LLVM spilled its
accumulators to the stack and ran it at half the rate.

Layouts (C-contiguous, one float dtype; the channel dimensions are folded
in, so ``W`` is ``(M * Co, N * Ci)`` as a plain matrix):

- ``x (B, K)`` rows streamed through ``w (K, OP)``, ``y (B, O)`` with
  ``O <= OP``, ``OP`` a multiple of one vector (the forward: ``K = N * Ci``,
  ``w = W.T``; ``dx``: ``K = M * Co``, ``w = W``);
- ``theta (P, Co, Ci)``; the pattern's entries row-major as ``indptr, cols,
  params``;
- ``part``: each chunk's ``dW`` (or ``dW.T``, see :func:`small_backward`),
  its rows padded to whole tiles; the padding lanes collect garbage from the
  next row's values and are never read.
"""

from __future__ import annotations

import functools

from numba import njit, prange

from .cpu import kernel
from .simd import (
    aligned,
    inline,
    lanes,
    load,
    store,
    store_over,
    vbcast,
    vfma,
    vkeep,
    vload,
    vstore,
    vsums,
    vzero,
)

#: The loops over tiles are compiled apart from the kernels (the tiles are inlined into
#: them): inlined into each kernel and its serial twin, numba's passes took 32 s to
#: compile the serial backward and 83 s the parallel one; now 9 and 12 s.
#: No NRT, like the kernels (see ``simd.inline``).
_apart = njit(nogil=True, _nrt=False)


@_apart
def _fill_w(theta, indptr, cols, params, w, transposed, complete):
    """``w = W(theta).T`` (``transposed``) or ``W(theta)``, zero past the matrix.

    ``complete``: every entry of ``W`` holds one edge and the edges are in
    ``W``'s row-major order (every dense design), so ``W`` is a plain gather
    (:func:`_fill_complete`).  Otherwise ``W`` is zeroed and each edge added
    in; scalar patterns take loops of their own there: the general loop nest,
    with its channel loops of one trip and the layout test inside, spent 7 ns
    an entry.
    """
    if complete:
        _fill_complete(theta, params, w, indptr.size - 1, transposed)
        return
    nco, nci = theta.shape[1], theta.shape[2]
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            w[i, j] = 0
    if nco == 1 and nci == 1:
        if transposed:
            for m in range(indptr.size - 1):
                for e in range(indptr[m], indptr[m + 1]):
                    w[cols[e], m] += theta[params[e], 0, 0]
        else:
            for m in range(indptr.size - 1):
                for e in range(indptr[m], indptr[m + 1]):
                    w[m, cols[e]] += theta[params[e], 0, 0]
        return
    for m in range(indptr.size - 1):
        for e in range(indptr[m], indptr[m + 1]):
            n, p = cols[e], params[e]
            for co in range(nco):
                for ci in range(nci):
                    if transposed:
                        w[n * nci + ci, m * nco + co] += theta[p, co, ci]
                    else:
                        w[m * nco + co, n * nci + ci] += theta[p, co, ci]


@_apart
def _fill_complete(theta, params, w, m, transposed):
    """:func:`_fill_w` for ``m`` rows of edges that are ``W``'s entries, each once, in
    row-major order: ``W[i, j] = theta[params[i * N + j]]``.  Stores instead of
    zeroing and adding: C_64, 4096 entries, 2.5-3.3 against 9.4-11.8 us (the
    loops through ``indptr`` and ``cols`` cost 2-3 ns an entry; this 0.6).
    """
    if m == 0:
        return
    nco, nci = theta.shape[1], theta.shape[2]
    n = params.size // m
    rows, width = (n * nci, m * nco) if transposed else (m * nco, n * nci)
    for i in range(rows):  # the padding past the matrix's columns
        for j in range(width, w.shape[1]):
            w[i, j] = 0
    if nco == 1 and nci == 1:
        if transposed:
            for i in range(m):
                for j in range(n):
                    w[j, i] = theta[params[i * n + j], 0, 0]
        else:
            for i in range(m):
                for j in range(n):
                    w[i, j] = theta[params[i * n + j], 0, 0]
        return
    for i in range(m):
        for j in range(n):
            p = params[i * n + j]
            for co in range(nco):
                for ci in range(nci):
                    if transposed:
                        w[j * nci + ci, i * nco + co] = theta[p, co, ci]
                    else:
                        w[i * nco + co, j * nci + ci] = theta[p, co, ci]


@inline
def _tile8x1(x, w, y, b, col, end):
    """``y[b : b + 8, col : col + 1 vector]`` (stores: :func:`.simd.store_over` up to
    flat ``end``)."""
    k, o, op = x.shape[1], y.shape[1], w.shape[1]
    a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
    a4, a5, a6, a7 = vzero(x), vzero(x), vzero(x), vzero(x)
    xo = b * k
    for j in range(k):
        v = vload(w, j * op + col)
        a0 = vfma(vbcast(x, xo + j), v, a0)
        a1 = vfma(vbcast(x, xo + k + j), v, a1)
        a2 = vfma(vbcast(x, xo + 2 * k + j), v, a2)
        a3 = vfma(vbcast(x, xo + 3 * k + j), v, a3)
        a4 = vfma(vbcast(x, xo + 4 * k + j), v, a4)
        a5 = vfma(vbcast(x, xo + 5 * k + j), v, a5)
        a6 = vfma(vbcast(x, xo + 6 * k + j), v, a6)
        a7 = vfma(vbcast(x, xo + 7 * k + j), v, a7)
    i, n = b * o + col, o - col
    store_over(y, i, a0, n, end)
    store_over(y, i + o, a1, n, end)
    store_over(y, i + 2 * o, a2, n, end)
    store_over(y, i + 3 * o, a3, n, end)
    store_over(y, i + 4 * o, a4, n, end)
    store_over(y, i + 5 * o, a5, n, end)
    store_over(y, i + 6 * o, a6, n, end)
    store_over(y, i + 7 * o, a7, n, end)


@inline
def _tile6x2(x, w, y, b, col, end):
    """``y[b : b + 6, col : col + 2 vectors]`` (stores as :func:`_tile8x1`'s): 12
    accumulators, so that short rows of ``x`` (Figure 1's ``dx``: 5 values) still keep
    the multiply-adds busy (4 x 2 tiles took 1.36x as long there)."""
    k, o, op = x.shape[1], y.shape[1], w.shape[1]
    L = lanes(x)
    a0, a1, a2, a3, a4, a5 = vzero(x), vzero(x), vzero(x), vzero(x), vzero(x), vzero(x)
    c0, c1, c2, c3, c4, c5 = vzero(x), vzero(x), vzero(x), vzero(x), vzero(x), vzero(x)
    xo = b * k
    for j in range(k):
        v, u = vload(w, j * op + col), vload(w, j * op + col + L)
        g = vbcast(x, xo + j)
        a0, c0 = vfma(g, v, a0), vfma(g, u, c0)
        g = vbcast(x, xo + k + j)
        a1, c1 = vfma(g, v, a1), vfma(g, u, c1)
        g = vbcast(x, xo + 2 * k + j)
        a2, c2 = vfma(g, v, a2), vfma(g, u, c2)
        g = vbcast(x, xo + 3 * k + j)
        a3, c3 = vfma(g, v, a3), vfma(g, u, c3)
        g = vbcast(x, xo + 4 * k + j)
        a4, c4 = vfma(g, v, a4), vfma(g, u, c4)
        g = vbcast(x, xo + 5 * k + j)
        a5, c5 = vfma(g, v, a5), vfma(g, u, c5)
    r, yo = o - col, b * o + col
    _store2(y, yo, a0, c0, r, end)
    _store2(y, yo + o, a1, c1, r, end)
    _store2(y, yo + 2 * o, a2, c2, r, end)
    _store2(y, yo + 3 * o, a3, c3, r, end)
    _store2(y, yo + 4 * o, a4, c4, r, end)
    _store2(y, yo + 5 * o, a5, c5, r, end)


@inline
def _store2(y, i, a, c, n, end):
    """The first ``n`` values of the consecutive vectors ``a, c`` at flat ``i``."""
    store_over(y, i, a, n, end)
    store_over(y, i + lanes(y), c, n - lanes(y), end)


@_apart
def _row(x, w, y, b):
    """``y[b]`` alone (the tail of a chunk), one vector at a time."""
    k, o, op = x.shape[1], y.shape[1], w.shape[1]
    for col in range(0, op, lanes(x)):
        acc = vzero(x)
        for j in range(k):
            acc = vfma(vbcast(x, b * k + j), vload(w, j * op + col), acc)
        store(y, b * o + col, acc, o - col)


@_apart
def _stream(x, w, y, lo, hi):
    """``y[lo:hi] = x[lo:hi] @ w[:, :O]`` in blocks of 8 or 24 rows (``w`` stays in L1).

    A row's last vector is stored whole, its lanes past the row landing in
    the next rows' first values (:func:`.simd.store_over`), except where
    that would pass row ``hi``: so each block of rows is written from its
    last vector down, and the rows in increasing order.  Lane-by-lane stores
    of Figure 1's 5 outputs per row took a quarter of its forward.
    """
    op, L = w.shape[1], lanes(x)
    pairs = op // (2 * L) * (2 * L)  # columns in 6 x 2 tiles; an odd last vector in 8 x 1
    end = hi * y.shape[1]
    if pairs == 0:
        # one vector (Figure 1's forward): in a loop of its own it runs 1.4x faster
        # (23 against 32 us) than inside the general loop below
        tail = lo + (hi - lo) // 8 * 8
        for b in range(lo, tail, 8):
            _tile8x1(x, w, y, b, 0, end)
    else:  # blocks of 24 rows: three 8 x 1 tiles, and four 6 x 2 per pair of vectors
        blocks = lo + (hi - lo) // 24 * 24
        for b in range(lo, blocks, 24):
            if pairs < op:
                for r in range(b, b + 24, 8):
                    _tile8x1(x, w, y, r, pairs, end)
            for col in range(pairs - 2 * L, -1, -2 * L):
                for r in range(b, b + 24, 6):
                    _tile6x2(x, w, y, r, col, end)
        tail = blocks + (hi - blocks) // 8 * 8
        for b in range(blocks, tail, 8):  # what is left: 8 x 1 tiles, last vector first
            for col in range(op - L, -1, -L):
                _tile8x1(x, w, y, b, col, end)
    for b in range(tail, hi):
        _row(x, w, y, b)


@kernel(nrt=False)
def small_forward(x, theta, indptr, cols, params, complete, wt, y, nchunks):
    """``y = x @ W(theta).T``: ``x (B, N * Ci)``, ``wt (N * Ci, OP)`` scratch, ``y (B, M * Co)``."""
    _fill_w(theta, indptr, cols, params, wt, True, complete)
    nb = x.shape[0]
    per = (nb + nchunks - 1) // nchunks
    for c in prange(nchunks):
        # clamped: with more chunks than rows' worth, the last chunks are empty
        _stream(x, wt, y, min(nb, c * per), min(nb, (c + 1) * per))


@inline
def _xvec(x, i, size):
    """``x.flat[i : i + lanes]``; past the array's end only what is there.

    A vector that starts in one row and runs into the next is read whole: its
    lanes past the row land in ``dW``'s padding, which is never read.
    """
    if i + lanes(x) <= size:
        return vload(x, i)
    return load(x, i, size - i)


@inline
def _row_vectors(x, xo, guard, nv):
    """The ``nv`` vectors of ``x`` from flat ``xo`` (the first repeated for the missing
    ones), through :func:`_xvec` when ``guard`` (the last may run past ``x``'s end)."""
    L = lanes(x)
    v = _xvec(x, xo, x.size) if guard else vload(x, xo)
    u = v
    if nv > 1:
        u = _xvec(x, xo + L, x.size) if guard else vload(x, xo + L)
    t = v
    if nv > 2:
        t = _xvec(x, xo + 2 * L, x.size) if guard else vload(x, xo + 2 * L)
    return v, u, t


def _outer(nr, nv):
    """``part[c, r0 : r0 + nr, col : col + nv vectors] += dy[lo:hi, r0 : r0 + nr].T @ x[lo:hi]``.

    ``nr`` rows of ``dW`` x ``nv`` vectors (3 x 3, 6 x 2 or 4 x 2, or fewer
    rows at the end): up to 12 accumulators, each ``x`` vector loaded once
    per batch row and used ``nr`` times.  ``nr`` and ``nv`` are closure
    constants, so each variant compiles without branches in its loop (a
    runtime test there made a tile twice as slow).
    """
    @inline
    def tile(dy, x, part, c, lo, hi, r0, col):
        k, o, kp = x.shape[1], dy.shape[1], part.shape[2]
        po = (c * o + r0) * kp + col
        a0, a1, a2 = _load_row(part, po, nv)
        # placeholders for the rows past nr, never stored
        c0, c1, c2, d0, d1, d2, e0, e1, e2 = a0, a1, a2, a0, a1, a2, a0, a1, a2
        f0, f1, g0, g1 = a0, a1, a0, a1
        if nr > 1:
            c0, c1, c2 = _load_row(part, po + kp, nv)
        if nr > 2:
            d0, d1, d2 = _load_row(part, po + 2 * kp, nv)
        if nr > 3:
            e0, e1, e2 = _load_row(part, po + 3 * kp, nv)
        if nr > 4:  # 6 x 2 only: 12 accumulators, 2 vectors of x, 1 broadcast
            f0, f1, _ = _load_row(part, po + 4 * kp, 2)
            g0, g1, _ = _load_row(part, po + 5 * kp, 2)
        for b in range(lo, hi):
            xo, go = b * k + col, b * o + r0
            v, u, t = _row_vectors(x, xo, True, nv)
            a0, a1, a2 = _fma_row(vbcast(dy, go), v, u, t, a0, a1, a2, nv)
            if nr > 1:
                c0, c1, c2 = _fma_row(vbcast(dy, go + 1), v, u, t, c0, c1, c2, nv)
            if nr > 2:
                d0, d1, d2 = _fma_row(vbcast(dy, go + 2), v, u, t, d0, d1, d2, nv)
            if nr > 3:
                e0, e1, e2 = _fma_row(vbcast(dy, go + 3), v, u, t, e0, e1, e2, nv)
            if nr > 4:
                f0, f1, _ = _fma_row(vbcast(dy, go + 4), v, u, t, f0, f1, f1, 2)
                g0, g1, _ = _fma_row(vbcast(dy, go + 5), v, u, t, g0, g1, g1, 2)
        # part's rows are whole tiles of vectors: no partial loads or stores
        _store_row(part, po, a0, a1, a2, nv)
        if nr > 1:
            _store_row(part, po + kp, c0, c1, c2, nv)
        if nr > 2:
            _store_row(part, po + 2 * kp, d0, d1, d2, nv)
        if nr > 3:
            _store_row(part, po + 3 * kp, e0, e1, e2, nv)
        if nr > 4:
            _store_row(part, po + 4 * kp, f0, f1, f1, 2)
            _store_row(part, po + 5 * kp, g0, g1, g1, 2)
    return tile


@inline
def _fma_row(g, v, u, t, a, c, d, nv):
    """One row of ``dW``'s tile: ``g`` times the ``nv`` vectors ``v, u, t`` added in."""
    a = vfma(g, v, a)
    if nv > 1:
        c = vfma(g, u, c)
    if nv > 2:
        d = vfma(g, t, d)
    return a, c, d


@inline
def _load_row(part, i, nv):
    """The ``nv`` vectors at flat ``i`` (the first repeated for the missing ones)."""
    a = vload(part, i)
    c = vload(part, i + lanes(part)) if nv > 1 else a
    return a, c, (vload(part, i + 2 * lanes(part)) if nv > 2 else c)


@inline
def _store_row(part, i, a, c, d, nv):
    vstore(part, i, a)
    if nv > 1:
        vstore(part, i + lanes(part), c)
    if nv > 2:
        vstore(part, i + 2 * lanes(part), d)


# the last rows of the 2-vector tiles go one at a time: fewer variants, a shorter compile
_outer3x3, _outer2x3, _outer1x3 = _outer(3, 3), _outer(2, 3), _outer(1, 3)
_outer6x2, _outer4x2, _outer1x2 = _outer(6, 2), _outer(4, 2), _outer(1, 2)


#: Bytes of ``x`` and ``dy`` rows per block of the outer products: every tile of ``dW``
#: passes over a block while it is in L1 (32 KB on the CPUs we measure), instead of
#: streaming the whole batch once per tile.  Deep Sets' 32 + 32 channels: 64-row
#: blocks and 6 x 2 tiles took 0.87-0.91 of the time of 128-row blocks and 4 x 2
#: tiles (one thread); Figure 1 (163 rows) is unchanged.
_BLOCK_BYTES = 16384


@_apart
def _outer_sum(dy, x, part, c, lo, hi):
    """Chunk ``c``'s ``dW = dy[lo:hi].T @ x[lo:hi]`` into ``part[c]`` (overwritten).

    ``part``'s rows are 3 vectors per tile when their vector count divides
    by 3 (Figure 1's 20 values: 3 vectors), else 2 (16 values: 2 vectors, not
    3 with a third of padding).  The two loops are compiled apart: together,
    Figure 1's ran 10-20% slower.
    """
    for i in range(part.shape[1]):
        for j in range(part.shape[2]):
            part[c, i, j] = 0
    rows = max(16, _BLOCK_BYTES // ((dy.shape[1] + x.shape[1]) * x.itemsize))
    threes = (part.shape[2] // lanes(x)) % 3 == 0
    for b in range(lo, hi, rows):
        if threes:
            _outer_rows3(dy, x, part, c, b, min(hi, b + rows))
        else:
            _outer_rows2(dy, x, part, c, b, min(hi, b + rows))


@_apart
def _outer_rows3(dy, x, part, c, lo, hi):
    """``part[c] += dy[lo:hi].T @ x[lo:hi]`` on tiles of 3 vectors: 3 rows of ``dW`` at a
    time, then the last 1 or 2."""
    o, kp, L = dy.shape[1], part.shape[2], lanes(x)
    for col in range(0, kp, 3 * L):
        r0 = 0
        while r0 + 3 <= o:
            _outer3x3(dy, x, part, c, lo, hi, r0, col)
            r0 += 3
        if o - r0 == 2:
            _outer2x3(dy, x, part, c, lo, hi, r0, col)
        elif o - r0 == 1:
            _outer1x3(dy, x, part, c, lo, hi, r0, col)


@_apart
def _outer_rows2(dy, x, part, c, lo, hi):
    """``part[c] += dy[lo:hi].T @ x[lo:hi]`` on tiles of 2 vectors: rows of ``dW`` 6 at a
    time, then 4 (8 left: two 4s, not a 6 and two singles), then one by one."""
    o, kp, L = dy.shape[1], part.shape[2], lanes(x)
    for col in range(0, kp, 2 * L):
        r0 = 0
        while o - r0 >= 6 and o - r0 != 8:
            _outer6x2(dy, x, part, c, lo, hi, r0, col)
            r0 += 6
        while r0 + 4 <= o:
            _outer4x2(dy, x, part, c, lo, hi, r0, col)
            r0 += 4
        for r in range(r0, o):
            _outer1x2(dy, x, part, c, lo, hi, r, col)


#: The most rows of ``W`` (values in a row of ``y`` or ``dy``) of the kernels that keep
#: ``W`` or ``dW`` in registers (:func:`fused_backward`, :func:`dot_forward`).
FUSED_ROWS = 5
#: The most vectors in a row of ``x`` of those kernels.
FUSED_VECTORS = 3


@_apart
def _fused(dy, x, w, dx, part, c, lo, hi, nr, nv):
    """``dx[lo:hi] = dy[lo:hi] @ w`` and ``part[c] = dy[lo:hi].T @ x[lo:hi]`` in one pass
    over the batch, for ``dy`` rows of ``nr`` values and ``x`` rows of ``nv`` vectors.

    The whole ``dW`` stays in ``nr * nv`` accumulators, and each row's ``nr``
    broadcasts of ``dy`` serve both products: Figure 1's backward (5 x 3)
    took 18.4 against 26.7 us in the two passes of :func:`_stream` and
    :func:`_outer_sum`, whose ``dx`` tiles spend a 5-step inner loop on
    setting up and storing 12 accumulators.  Up to 15 + 3 + 3 + 1 vector
    registers: the dispatcher takes this path only where they fit
    (``_dispatch._fuses``).  A row's last vector of ``dx`` runs into the
    next row, written afterwards (:func:`.simd.store_over`).

    Compiled once per dtype; each kernel of :func:`fused_backward` calls it
    once, with its ``nr`` and ``nv`` as constants, and LLVM inlines it
    there and folds the tests on them away (``dy`` rows of 1 and ``x`` rows
    of 24 values, float32: 9.6 against 15.0 us two-pass; inlined by numba
    instead, each kernel took 4-5 s more to compile).
    """
    k, kp, L = x.shape[1], w.shape[1], lanes(x)
    end, z = hi * k, vzero(x)
    a0, a1, a2, c0, c1, c2, d0, d1, d2 = z, z, z, z, z, z, z, z, z
    f0, f1, f2, h0, h1, h2 = z, z, z, z, z, z
    for b in range(lo, hi):
        xo, go = b * k, b * nr
        v, u, t = _row_vectors(x, xo, True, nv)
        g = vbcast(dy, go)
        a0, a1, a2 = _fma_row(g, v, u, t, a0, a1, a2, nv)
        p, q, r = _load_row(w, 0, nv)
        e0, e1, e2 = _fma_row(g, p, q, r, z, z, z, nv)
        if nr > 1:
            g = vbcast(dy, go + 1)
            c0, c1, c2 = _fma_row(g, v, u, t, c0, c1, c2, nv)
            p, q, r = _load_row(w, kp, nv)
            e0, e1, e2 = _fma_row(g, p, q, r, e0, e1, e2, nv)
        if nr > 2:
            g = vbcast(dy, go + 2)
            d0, d1, d2 = _fma_row(g, v, u, t, d0, d1, d2, nv)
            p, q, r = _load_row(w, 2 * kp, nv)
            e0, e1, e2 = _fma_row(g, p, q, r, e0, e1, e2, nv)
        if nr > 3:
            g = vbcast(dy, go + 3)
            f0, f1, f2 = _fma_row(g, v, u, t, f0, f1, f2, nv)
            p, q, r = _load_row(w, 3 * kp, nv)
            e0, e1, e2 = _fma_row(g, p, q, r, e0, e1, e2, nv)
        if nr > 4:
            g = vbcast(dy, go + 4)
            h0, h1, h2 = _fma_row(g, v, u, t, h0, h1, h2, nv)
            p, q, r = _load_row(w, 4 * kp, nv)
            e0, e1, e2 = _fma_row(g, p, q, r, e0, e1, e2, nv)
        # the vectors before the last lie inside the row (kp - L < k)
        if nv == 1:
            store_over(dx, xo, e0, k, end)
        elif nv == 2:
            vstore(dx, xo, e0)
            store_over(dx, xo + L, e1, k - L, end)
        else:
            vstore(dx, xo, e0)
            vstore(dx, xo + L, e1)
            store_over(dx, xo + 2 * L, e2, k - 2 * L, end)
    po = c * nr * kp
    _store_row(part, po, a0, a1, a2, nv)
    if nr > 1:
        _store_row(part, po + kp, c0, c1, c2, nv)
    if nr > 2:
        _store_row(part, po + 2 * kp, d0, d1, d2, nv)
    if nr > 3:
        _store_row(part, po + 3 * kp, f0, f1, f2, nv)
    if nr > 4:
        _store_row(part, po + 4 * kp, h0, h1, h2, nv)


@functools.cache
def fused_backward(nr, nv):
    """The one-pass backward (:func:`_fused`) for ``dy`` rows of ``nr`` values and ``x`` rows
    of ``nv`` vectors: a kernel like :func:`small_backward`, with ``w`` 1-D scratch for
    ``W``'s ``nr`` rows of ``nv`` vectors and a vector to spare (:func:`.simd.aligned`)
    and ``part (nchunks, nr, nv * lanes)``.

    One kernel per shape, compiled on its first call and cached on disk by
    its closure's ``nr, nv``: a model compiles only the shapes it has (all
    15 in one kernel more than doubled ``small_backward``'s compile, 23 to
    56 s).
    """
    if not (1 <= nr <= FUSED_ROWS and 1 <= nv <= FUSED_VECTORS):
        raise ValueError(f"no fused backward for {nr} x {nv} vectors")

    @kernel(nrt=False)
    def fused(dy, x, theta, indptr, cols, params, complete, scratch, part, dx, dtheta,
              nchunks):
        w = aligned(scratch, nr, nv * lanes(x))
        _fill_w(theta, indptr, cols, params, w, False, complete)
        nb = dy.shape[0]
        per = (nb + nchunks - 1) // nchunks
        for c in prange(nchunks):
            # the last chunks may be empty: their dW stays zero
            _fused(dy, x, w, dx, part, c, min(nb, c * per), min(nb, (c + 1) * per), nr, nv)
        _dtheta_of_parts(part, indptr, cols, params, False, complete, dtheta)
    return fused


@inline
def _dot(v, u, t, p, q, r, z, nv):
    """``v * p + u * q + t * r`` over the first ``nv`` pairs (``z``: zeros): a row's dot
    product with one row of ``W``, as a vector of partial sums along the row."""
    a = vfma(v, p, z)
    if nv > 1:
        a = vfma(u, q, a)
    if nv > 2:
        a = vfma(t, r, a)
    return a


@inline
def _dot_row(x, xo, guard, last, buf, i, p0, p1, p2, q0, q1, q2, r0, r1, r2, s0, s1, s2,
             t0, t1, t2, z, nr, nv):
    """Row ``x.flat[xo:]``'s ``nr`` dot products with ``W``'s rows (``p``, ``q``, ... its
    vectors) as vectors of partial sums, to ``buf`` from flat ``i``.  ``guard``: the row's
    last vector may run past ``x``'s end (:func:`_xvec`)."""
    L = lanes(x)
    v, u, e = _row_vectors(x, xo, guard, nv)
    if nv == 1:
        v = vkeep(v, last)
    elif nv == 2:
        u = vkeep(u, last)
    else:
        e = vkeep(e, last)
    vstore(buf, i, _dot(v, u, e, p0, p1, p2, z, nv))
    if nr > 1:
        vstore(buf, i + L, _dot(v, u, e, q0, q1, q2, z, nv))
    if nr > 2:
        vstore(buf, i + 2 * L, _dot(v, u, e, r0, r1, r2, z, nv))
    if nr > 3:
        vstore(buf, i + 3 * L, _dot(v, u, e, s0, s1, s2, z, nv))
    if nr > 4:
        vstore(buf, i + 4 * L, _dot(v, u, e, t0, t1, t2, z, nv))


@_apart
def _dots(x, w, y, buf, c, lo, hi, nr, nv):
    """``y[lo:hi] = x[lo:hi] @ w.T``, for ``y`` rows of ``nr`` values and ``x`` rows of
    ``nv`` vectors, as dot products along ``x``'s rows.

    :func:`_stream`'s tiles spend a broadcast load of ``x`` on every
    multiply-add, and their vectors run along ``y``'s short rows (Figure
    1's 5 of 8 lanes).  Here each row's ``nv`` vectors of ``x`` meet ``W``'s
    rows, held in registers, in ``nr`` short chains of multiply-adds; the
    partial sums of ``R`` rows (``R * nr`` a multiple of the lanes) go to
    ``buf`` in chunk ``c``'s slice, and :func:`.simd.vsums` turns each
    ``lanes`` of them into one vector of ``y``.  Figure 1's forward: 13.6
    against 15.6 us in :func:`_stream`'s 8 x 1 tiles.  The last vector of a
    row is cut to the row (:func:`.simd.vkeep`): the next row's values
    there, ``inf`` or ``nan`` included, are never multiplied.  Rows past
    the last whole tile of ``R`` are summed by the same tree: a row's
    result does not depend on where it falls in the batch.  Compiled once per
    dtype and inlined by LLVM into each kernel of :func:`dot_forward`,
    which folds the tests on ``nr`` and ``nv`` (as :func:`_fused`).
    """
    k, kp, L = x.shape[1], w.shape[1], lanes(x)
    last = k - (nv - 1) * L  # values of a row's last vector
    R = L  # rows per tile: the fewest whose nr * R values are whole vectors
    while R % 2 == 0 and (R // 2 * nr) % L == 0:
        R //= 2
    z = vzero(x)
    p0, p1, p2 = _load_row(w, 0, nv)
    q0, q1, q2 = _load_row(w, kp, nv) if nr > 1 else (z, z, z)
    r0, r1, r2 = _load_row(w, 2 * kp, nv) if nr > 2 else (z, z, z)
    s0, s1, s2 = _load_row(w, 3 * kp, nv) if nr > 3 else (z, z, z)
    t0, t1, t2 = _load_row(w, 4 * kp, nv) if nr > 4 else (z, z, z)
    start, step = c * buf.shape[1], nr * L
    # whole tiles of rows whose vectors all lie inside x (unguarded loads)
    inside = min(hi, (x.size - nv * L) // k + 1)
    tiles = lo + max(0, inside - lo) // R * R
    for b0 in range(lo, tiles, R):
        for r in range(R):
            _dot_row(x, (b0 + r) * k, False, last, buf, start + r * step, p0, p1, p2,
                     q0, q1, q2, r0, r1, r2, s0, s1, s2, t0, t1, t2, z, nr, nv)
        for g in range(R * nr // L):
            vstore(y, b0 * nr + g * L, vsums(buf, start + g * L * L))
    for b in range(tiles, hi):  # the rest: fewer than R rows
        _dot_row(x, b * k, True, last, buf, start + (b - tiles) * step, p0, p1, p2,
                 q0, q1, q2, r0, r1, r2, s0, s1, s2, t0, t1, t2, z, nr, nv)
    # summed by the same tree as the tiles, so that a row's bits do not depend on where
    # it falls in the batch; each lane sums its own vector, so the vectors past the
    # rest (stale, inside the chunk's slice) only fill lanes that are not stored
    count = (hi - tiles) * nr
    for g in range(0, count, L):
        store(y, tiles * nr + g, vsums(buf, start + g * L), count - g)


@functools.cache
def dot_forward(nr, nv):
    """The forward by dot products (:func:`_dots`) for ``y`` rows of ``nr`` values and ``x``
    rows of ``nv`` vectors: ``(x, theta, indptr, cols, params, complete, scratch, y,
    nchunks)`` with ``x (B, K)``, ``y (B, nr)`` and 1-D ``scratch`` for ``W``'s ``nr`` rows
    of ``nv`` vectors, each chunk's ``nr * lanes`` partial sums of ``lanes`` rows, and a
    vector to spare (:func:`.simd.aligned`).  One kernel per shape, as
    :func:`fused_backward`.
    """
    if not (1 <= nr <= FUSED_ROWS and 1 <= nv <= FUSED_VECTORS):
        raise ValueError(f"no dot-product forward for {nr} x {nv} vectors")

    @kernel(nrt=False)
    def dots(x, theta, indptr, cols, params, complete, scratch, y, nchunks):
        L = lanes(x)
        w = aligned(scratch, nr, nv * L)
        # w is whole vectors: it ends on the boundary where buf begins
        buf = aligned(scratch[w.size:], nchunks, nr * L * L)
        _fill_w(theta, indptr, cols, params, w, False, complete)
        nb = x.shape[0]
        per = (nb + nchunks - 1) // nchunks
        for c in prange(nchunks):
            _dots(x, w, y, buf, c, min(nb, c * per), min(nb, (c + 1) * per), nr, nv)
    return dots


@kernel(nrt=False)
def small_backward(dy, x, theta, indptr, cols, params, complete, w, part, dx, dtheta, nchunks):
    """``dx = dy @ W(theta)`` and ``dtheta``, the entries' sums of ``dW = dy.T @ x``.

    ``dy (B, M * Co)``, ``x (B, N * Ci)``, ``w (M * Co, KP)`` scratch,
    ``dx (B, N * Ci)``, ``dtheta (P, Co, Ci)``, and ``part`` scratch for
    each chunk's ``dW``: ``(nchunks, M * Co, R)`` with vectors along ``dW``'s
    rows, or ``(nchunks, N * Ci, R)`` (``dW.T``) when ``N * Ci < M * Co``, so
    that the vectors run along the longer side (``R`` that side rounded up
    to 3 vectors when its vectors divide by 3, else to 2; see
    :func:`_outer_sum`).  The chunks' slices are added in a fixed order:
    the result does not depend on the threads' timing.  Short rows of ``dy``
    take :func:`fused_backward` instead.
    """
    _fill_w(theta, indptr, cols, params, w, False, complete)
    nb = dy.shape[0]
    by_cols = x.shape[1] < dy.shape[1]
    per = (nb + nchunks - 1) // nchunks
    for c in prange(nchunks):
        lo, hi = min(nb, c * per), min(nb, (c + 1) * per)  # the last chunks may be empty
        _stream(dy, w, dx, lo, hi)
        if by_cols:
            _outer_sum(x, dy, part, c, lo, hi)
        else:
            _outer_sum(dy, x, part, c, lo, hi)
    _dtheta_of_parts(part, indptr, cols, params, by_cols, complete, dtheta)


@_apart
def _dtheta_of_parts(part, indptr, cols, params, by_cols, complete, dtheta):
    """``dtheta[p] = sum`` over ``p``'s entries of the chunks' ``dW`` (or ``dW.T``), added
    chunk by chunk in a fixed order.  Scalar patterns take loops of their own (as in
    :func:`_fill_w`: with the channel loops, C_64 took 21 against 3.9 us); a scalar
    ``complete`` pattern (:func:`_fill_w`) reads its entries in ``W``'s order, without
    ``indptr`` and ``cols`` (3.9 against 7.2 us).  With channels the entries go through
    ``indptr`` and ``cols`` either way."""
    nco, nci = dtheta.shape[1], dtheta.shape[2]
    for i in range(dtheta.shape[0]):
        for co in range(nco):
            for ci in range(nci):
                dtheta[i, co, ci] = 0
    m = indptr.size - 1
    if nco == 1 and nci == 1:
        if complete and m > 0:
            n = params.size // m
            for i in range(m):
                for j in range(n):
                    a, b = (j, i) if by_cols else (i, j)
                    dtheta[params[i * n + j], 0, 0] += _chunk_sum(part, a, b)
            return
        for i in range(m):
            for e in range(indptr[i], indptr[i + 1]):
                a, b = (cols[e], i) if by_cols else (i, cols[e])
                dtheta[params[e], 0, 0] += _chunk_sum(part, a, b)
        return
    for i in range(m):
        for e in range(indptr[i], indptr[i + 1]):
            p = params[e]
            for co in range(nco):
                for ci in range(nci):
                    a, b = i * nco + co, cols[e] * nci + ci
                    if by_cols:
                        a, b = b, a
                    dtheta[p, co, ci] += _chunk_sum(part, a, b)


@inline
def _chunk_sum(part, i, j):
    """``part[:, i, j].sum()``, the chunks in order."""
    s = part[0, i, j]
    for c in range(1, part.shape[0]):
        s += part[c, i, j]
    return s


@kernel(nrt=False)
def outer_products(a, b, part, nchunks):
    """``part[c] = a[rows of chunk c].T @ b[rows of chunk c]``; the caller sums the chunks.

    ``a (R, A)``, ``b (R, K)``, ``part (nchunks, A, KP)`` with ``KP`` = ``K``
    rounded up to whole tiles (see :func:`_outer_sum`): a long, thin product
    such as Deep Sets' ``dtheta = sum_(b, n) dy[b, n] x[b, n]^T`` (32768 rows,
    32 x 32), without calling BLAS, whose spinning threads would slow the
    parallel kernels that come next.
    """
    nr = a.shape[0]
    per = (nr + nchunks - 1) // nchunks
    for c in prange(nchunks):
        _outer_sum(a, b, part, c, min(nr, c * per), min(nr, (c + 1) * per))
