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

Kernels on explicit SIMD register tiles (:mod:`.simd`) live beside these:
:mod:`.csr_cpu` (sparse rows and gather-contract products with channels)
and :mod:`.sums_cpu` (block totals, gather sums with channels, and Deep Sets'
complement sums in one pass per batch element).
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from .simd import lanes, load, vadd, vfma, vload, vstore, vsum, vzero

# Reassociation lets the batch dot products vectorise; no nnan/ninf (NaN and
# inf propagate as usual).
_FAST = {"reassoc", "contract", "nsz", "arcp"}


def kernel(fastmath=False, nrt=True):
    """``parallel=True`` driver with a serial twin compiled from the same body.

    The returned dispatcher carries ``.serial``: the same loop nest compiled
    without ``parallel`` (``prange`` runs as ``range``), which the dispatcher
    calls for small work instead of changing numba's thread count (a
    ``set_num_threads`` pair costs more than a small kernel).  The twin gets
    its own qualified name, hence its own on-disk cache entry.

    ``nrt=False`` compiles without numba's reference counting, for kernels
    that allocate nothing and only index their arguments: helpers inlined
    into them then pass arrays without atomic increments in inner loops.
    """
    opts = {"cache": True, "nogil": True}
    if not nrt:
        opts["_nrt"] = False
    if fastmath:
        opts["fastmath"] = _FAST

    def deco(py):
        twin = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial",
                                  py.__defaults__, py.__closure__)
        twin.__qualname__ = py.__qualname__ + "_serial"
        twin.__doc__ = py.__doc__
        par = njit(parallel=True, **opts)(py)
        par.serial = njit(**opts)(twin)
        return par
    return deco


@njit(cache=True, nogil=True, _nrt=False)
def all_finite(a):
    """Whether every value of the C-contiguous float array ``a`` is finite.

    ``a * 0`` is 0 for a finite value and nan for ``inf`` or ``nan``; these
    are added up in 4 vectors, so one pass decides and no sum of the values
    themselves can overflow.  For ``"materialize"``'s check of its input
    (``_dispatch._finite_or``): numpy's ``isfinite(x.sum())`` took 15.2 us
    on Figure 1's ``x`` at batch 4096 (82k float32), longer than the
    forward itself.
    """
    n, L, z = a.size, lanes(a), vzero(a)
    s0, s1, s2, s3 = z, z, z, z
    i = 0
    while i + 4 * L <= n:
        s0 = vfma(vload(a, i), z, s0)
        s1 = vfma(vload(a, i + L), z, s1)
        s2 = vfma(vload(a, i + 2 * L), z, s2)
        s3 = vfma(vload(a, i + 3 * L), z, s3)
        i += 4 * L
    while i < n:  # whole vectors, then a partial one (zeros past the end)
        s0 = vfma(load(a, i, n - i), z, s0)
        i += L
    return vsum(vadd(vadd(s0, s1), vadd(s2, s3))) == 0


# ---------------------------------------------------------------------------
# materialize: W gathered from theta (the sparse rows with channels are in csr_cpu)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _gather_row_complete(theta, params, m, w):
    """Row ``m`` of :func:`gather_w` for a complete pattern (every entry one edge, the
    edges in row-major order): plain stores, no walk through ``cols``.  Input channels
    in whole SIMD vectors are copied a vector at a time, and one input channel (a
    network's first layer) takes a loop of its own.  Against the walk, one thread,
    paired: D4 on 8 x 8 pixels with 16 x 1 channels 7.5x (44 against 292 us), 1 x 16
    2.3x, 8 x 8 2.7x, 16 x 16 1.8x; D4 on 16 x 16 with 8 x 8 channels (compare.py's
    w3) 1.8x (1.47 against 2.63 ms).  ``theta`` and ``w`` are C-contiguous (the
    vectors take flat offsets)."""
    nco, nn, nci = w.shape[1], w.shape[2], w.shape[3]
    base = m * nn
    if nci % lanes(w) == 0:  # whole SIMD vectors: 1.5-2x the loop below (8 x 8, 16 x 16)
        for co in range(nco):
            row = (m * nco + co) * nn * nci
            for n in range(nn):
                src = (params[base + n] * nco + co) * nci
                for k in range(0, nci, lanes(w)):
                    vstore(w, row + n * nci + k, vload(theta, src + k))
    elif nci == 1:
        for co in range(nco):
            for n in range(nn):
                w[m, co, n, 0] = theta[params[base + n], co, 0]
    else:
        for co in range(nco):
            for n in range(nn):
                p = params[base + n]
                for ci in range(nci):
                    w[m, co, n, ci] = theta[p, co, ci]


@kernel()
def gather_w(theta, indptr, cols, params, complete, w):
    """``w[m, :, n, :] = sum_{edges (m, n, p)} theta[p]``; ``w`` is ``(M, Co, N, Ci)``.

    Each row's edges must be sorted by column (a :class:`Pattern`'s are), so
    that every value of ``w`` is written once, in memory order: the first edge
    of a cell assigns, its multi-edges add, a cell without edges gets zero.
    Zeroing ``w`` first and adding every edge wrote it twice: one thread,
    C_64 regular with 16 x 16 channels, 0.49 -> 0.37 ms (minima).  ``complete``
    patterns take :func:`_gather_row_complete`.
    """
    nm, nco, nn, nci = w.shape
    for m in prange(nm):
        if complete:
            _gather_row_complete(theta, params, m, w)
            continue
        lo, hi = indptr[m], indptr[m + 1]
        for co in range(nco):
            e = lo
            for n in range(nn):
                if e < hi and cols[e] == n:
                    p = params[e]
                    for ci in range(nci):
                        w[m, co, n, ci] = theta[p, co, ci]
                    e += 1
                    while e < hi and cols[e] == n:  # multi-edges: their parameters add
                        p = params[e]
                        for ci in range(nci):
                            w[m, co, n, ci] += theta[p, co, ci]
                        e += 1
                else:
                    for ci in range(nci):
                        w[m, co, n, ci] = 0


# ---------------------------------------------------------------------------
# gather-contract: sums of inputs that share a parameter, then small products
# ---------------------------------------------------------------------------
# A *gather plan* describes T targets, each a signed sum of source columns:
#   out[t] = sum_{k in blocks(t)} total[k] + sum_{s in plus(t)} src[s] - sum_{s in minus(t)} src[s]
# where total[k] is the sum of the source columns in block k (the complement
# sums: "everything in the block but a few exceptions"; sums_cpu.block_totals).
# Sources are read as src[b, s, :] (``(B, S, C)``); targets are written target-major
# out[t, b, :] (``(T, B, C)``) or batch-major out[b, t, :] (``(B, T, C)``).


#: Batch rows per block of a target-major gather (below): each parallel
#: iteration owns one target and one block of the batch, so its outputs stay in
#: L1 while every source column is added, and the index lists are read once per
#: block, not once per batch element.  (Few channels a side, scalar layers
#: included, take :mod:`.tile_sums_cpu` instead.)
SUM_B = 256


@njit(cache=True, nogil=True, inline="always")
def _gather_block(src, tot, bptr, blks, pptr, plus, mptr, minus, o, g, b0, w):
    """``o[b] = out[g, b]`` for ``w`` rows from ``b0``; ``o`` is target ``g``'s ``(B, C)`` view.

    The batch is the innermost loop, written ``j in range(w)`` indexing
    ``b0 + j``: with the (1-3) channels innermost, or the batch running over
    ``range(b0, b0 + w)``, the same sums ran 3-6x slower (loop overhead per
    element, numba's negative-index handling not hoisted).
    """
    nc = src.shape[2]
    for c in range(nc):
        for j in range(w):
            o[b0 + j, c] = 0
    for i in range(bptr[g], bptr[g + 1]):
        k = blks[i]
        for c in range(nc):
            for j in range(w):
                o[b0 + j, c] += tot[b0 + j, k, c]
    for i in range(pptr[g], pptr[g + 1]):
        s = plus[i]
        for c in range(nc):
            for j in range(w):
                o[b0 + j, c] += src[b0 + j, s, c]
    for i in range(mptr[g], mptr[g + 1]):
        s = minus[i]
        for c in range(nc):
            for j in range(w):
                o[b0 + j, c] -= src[b0 + j, s, c]


@njit(cache=True, nogil=True, inline="always")
def _gather_entry(src, tot, bptr, blks, pptr, plus, mptr, minus, out, b, g):
    """``out[b, g] =`` target ``g``'s sums for batch element ``b`` (batch-major)."""
    for c in range(src.shape[2]):
        v = out.dtype.type(0)
        for i in range(bptr[g], bptr[g + 1]):
            v += tot[b, blks[i], c]
        for i in range(pptr[g], pptr[g + 1]):
            v += src[b, plus[i], c]
        for i in range(mptr[g], mptr[g + 1]):
            v -= src[b, minus[i], c]
        out[b, g, c] = v


@kernel()
def gather_sums(src, tot, bptr, blks, pptr, plus, mptr, minus, out, batch_major):
    """Evaluate a gather plan (see the section comment) into ``out``.

    Target-major outputs are filled a target and a block of the batch at a
    time, batch-major ones a batch element at a time: either way the writes
    run along memory (a target's column of a batch-major ``out`` is strided
    by a whole row, a page for 1024 targets).
    """
    nb = src.shape[0]
    nt = bptr.shape[0] - 1
    if batch_major:
        for b in prange(nb):
            for g in range(nt):
                _gather_entry(src, tot, bptr, blks, pptr, plus, mptr, minus, out, b, g)
        return
    nblk = (nb + SUM_B - 1) // SUM_B
    for t in prange(nt * nblk):
        g = t // nblk
        b0 = (t - g * nblk) * SUM_B
        _gather_block(src, tot, bptr, blks, pptr, plus, mptr, minus, out[g], g, b0,
                      min(nb - b0, SUM_B))


@kernel()
def row_sums(r, row_ptr, row_groups, y):
    """``y[b, m] = sum_{groups g of row m} r[g, b]`` (after per-parameter BLAS)."""
    nb, nm, nco = y.shape
    for t in prange(nb * nm):
        b = t // nm
        m = t - b * nm
        for co in range(nco):
            y[b, m, co] = 0
        for i in range(row_ptr[m], row_ptr[m + 1]):
            g = row_groups[i]
            for co in range(nco):
                y[b, m, co] += r[g, b, co]


@kernel()
def contract_cols(x, theta_t, zcol, zparam, z):
    """``z[b, j] = theta[zparam[j]] @ x[b, zcol[j]]``: contract first (transposed order).

    Each parallel iteration owns a batch element and writes its row of ``z``
    in memory order.
    """
    nb, nz, nco = z.shape
    nci = x.shape[2]
    for b in prange(nb):
        if nco == nci == 1:  # scalar: no one-trip loops per entry (5x slower)
            for j in range(nz):
                z[b, j, 0] = theta_t[zparam[j], 0, 0] * x[b, zcol[j], 0]
            continue
        for j in range(nz):
            n = zcol[j]
            p = zparam[j]
            for co in range(nco):
                v = z.dtype.type(0)
                for ci in range(nci):
                    v += theta_t[p, ci, co] * x[b, n, ci]
                z[b, j, co] = v


@kernel()
def gather_rows_tm(src, idx, out):
    """``out[g, b] = src[b, idx[g]]``: batch-major rows to a target-major copy."""
    ng, nb, nc = out.shape
    for t in prange(ng * nb):
        g = t // nb
        b = t - g * nb
        s = idx[g]
        for c in range(nc):
            out[g, b, c] = src[b, s, c]


# ---------------------------------------------------------------------------
# complement sums: W = (block-constant base per row) + sparse residual
# ---------------------------------------------------------------------------


@kernel()
def add_base(u, row_ptr, row_u, y):
    """``y[b, m] += sum_{bases j of row m} u[b, j]`` (``u = theta_q @ block total``)."""
    nb, nm, nco = y.shape
    for t in prange(nb * nm):
        b = t // nm
        m = t - b * nm
        for i in range(row_ptr[m], row_ptr[m + 1]):
            j = row_u[i]
            for co in range(nco):
                y[b, m, co] += u[b, j, co]


@kernel()
def base_dtheta(dy, tot, u_ptr, u_rows, base_k, q_ptr, q_us, dtheta):
    """``dtheta[q] += sum_{bases j of q} sum_b (sum_{rows m of j} dy[b, m]) (x) tot[b, k_j]``.

    Bases are grouped by parameter (``q_ptr, q_us``): each parallel iteration
    owns one parameter, so there are no races.
    """
    nb = dy.shape[0]
    nco = dy.shape[2]
    nci = tot.shape[2]
    npar = q_ptr.shape[0] - 1
    for q in prange(npar):
        if q_ptr[q + 1] == q_ptr[q]:
            continue
        dsum = np.empty(nco, dtype=dy.dtype)
        acc = dtheta[q]
        for i in range(q_ptr[q], q_ptr[q + 1]):
            j = q_us[i]
            k = base_k[j]
            for b in range(nb):
                for co in range(nco):
                    dsum[co] = 0
                for r in range(u_ptr[j], u_ptr[j + 1]):
                    m = u_rows[r]
                    for co in range(nco):
                        dsum[co] += dy[b, m, co]
                for co in range(nco):
                    d = dsum[co]
                    for ci in range(nci):
                        acc[co, ci] += d * tot[b, k, ci]


# ---------------------------------------------------------------------------
# scalar patterns with a long batch: batch-last layout, vectorised over the batch
# ---------------------------------------------------------------------------
#: Batch rows per tile of the scalar kernels (a tile of inputs stays in L1).
TILE_B = 64


@kernel(fastmath=True)
def scalar_forward(x, theta, rows, cols, params, y, nchunks):
    """Scalar patterns: ``y[b, m] = sum_e theta[p_e] x[b, n_e]``, ``x (B, N)``, ``y (B, M)``.

    Each chunk transposes a tile of ``TILE_B`` batch rows into a local
    ``(N, TILE_B)`` buffer, runs over the edges with the innermost loop along
    the batch (vectorised), and writes its rows of ``y``: one pass over ``x``,
    no shared writes.
    """
    nb, nn = x.shape
    nm = y.shape[1]
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.zeros((nn, TILE_B), dtype=x.dtype)
        acc = np.zeros((nm, TILE_B), dtype=y.dtype)
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            for bb in range(w):
                for j in range(nn):
                    xt[j, bb] = x[b0 + bb, j]
            acc[:, :] = 0
            for e in range(rows.shape[0]):
                a = theta[params[e]]
                r = rows[e]
                s = cols[e]
                for bb in range(TILE_B):
                    acc[r, bb] += a * xt[s, bb]
            for bb in range(w):
                for i in range(nm):
                    y[b0 + bb, i] = acc[i, bb]


@kernel(fastmath=True)
def scalar_backward(dy, x, theta, rows, cols, params, dx, dth_part, nchunks):
    """Scalar patterns, both gradients in one pass over ``dy`` and ``x``.

    ``dx[b, n] = sum_e theta[p_e] dy[b, m_e]``; ``dth_part[c, p]`` is chunk
    ``c``'s share of ``sum_e sum_b dy[b, m_e] x[b, n_e]`` (summed by the caller
    in a fixed order: deterministic, race-free).
    """
    nb, nn = x.shape
    nm = dy.shape[1]
    ntile = (nb + TILE_B - 1) // TILE_B
    for c in prange(nchunks):
        xt = np.zeros((nn, TILE_B), dtype=x.dtype)
        dyt = np.zeros((nm, TILE_B), dtype=dy.dtype)
        acc = np.zeros((nn, TILE_B), dtype=dx.dtype)
        for p in range(dth_part.shape[1]):
            dth_part[c, p] = 0
        for tile in range(c, ntile, nchunks):
            b0 = tile * TILE_B
            w = min(TILE_B, nb - b0)
            for bb in range(w):
                for j in range(nn):
                    xt[j, bb] = x[b0 + bb, j]
                for i in range(nm):
                    dyt[i, bb] = dy[b0 + bb, i]
            for bb in range(w, TILE_B):
                # a partial last tile: the dtheta sums run over every lane, so the lanes
                # left from the chunk's previous tile must not count again
                for j in range(nn):
                    xt[j, bb] = 0
                for i in range(nm):
                    dyt[i, bb] = 0
            acc[:, :] = 0
            for e in range(rows.shape[0]):
                p = params[e]
                a = theta[p]
                r = rows[e]
                s = cols[e]
                d = dth_part.dtype.type(0)
                for bb in range(TILE_B):
                    g = dyt[r, bb]
                    acc[s, bb] += a * g
                    d += g * xt[s, bb]
                dth_part[c, p] += d
            for bb in range(w):
                for j in range(nn):
                    dx[b0 + bb, j] = acc[j, bb]


@kernel()
def reduce_dw_rows(dw, indptr, cols, params, part, nchunks):
    """``part[c, p] += dw[m, :, n, :]`` over the edges of chunk ``c``'s rows.

    Reads ``dw`` once, in memory order (row-major CSR), and scatters into a
    per-chunk ``(P, Co, Ci)`` buffer: no races; the caller sums the chunks in
    a fixed order.  ``part`` must be zeroed.
    """
    nm, nco, _, nci = dw.shape
    for c in prange(nchunks):
        for m in range(c, nm, nchunks):
            for e in range(indptr[m], indptr[m + 1]):
                n = cols[e]
                p = params[e]
                for co in range(nco):
                    for ci in range(nci):
                        part[c, p, co, ci] += dw[m, co, n, ci]
