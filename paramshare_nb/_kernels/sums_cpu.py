"""Sums of inputs on explicit SIMD vectors: block totals, gather-plan sums, and
complement sums with a diagonal residual in one pass per batch element.

Deep Sets' layer ``y_m = theta_1 @ sum_n x_n + (theta_0 - theta_1) @ x_m``
is the commonest complement split (see ``_dispatch.Split``): a residual
that is one matrix ``A`` on the diagonal plus block-constant bases.  Run as
separate passes (block totals, a BLAS product, an add) it reads ``x``
twice, ``y`` once and writes ``y`` twice.  :func:`diagonal_complement` instead
takes one batch element at a time: its block totals, its bases
``u_j = theta_{q_j} @ total_{k_j}``, then ``y_m = A x_m`` in register tiles
of explicit SIMD vectors (:mod:`.simd`) whose accumulators *start* from the
row's bases, so each element is read twice (the second time from cache)
and written once.  No BLAS call: numba's BLAS is scipy's OpenBLAS, whose
spinning threads fight numpy's for the same cores (a Deep Sets backward ran
2.5x slower).  Deep Sets 64 x 512 points, 32 -> 32 channels, float32, one
thread: forward 1.74 -> 1.07 ms, forward + backward 5.1 -> 3.6 ms.

Every array these kernels take must be C-contiguous: they address it by flat
offsets (:mod:`.simd`), not strides.  Layouts of :func:`diagonal_complement`
(one float dtype, ``M == N``):

- ``x (B, N, Ci)``, ``y (B, N, Co)``, ``tot (B, K, Ci)`` (written: the
  caller checks it for inf/nan);
- ``at (Ci, Jp)``: ``A.T`` with zero columns up to ``Jp`` = 1 or 2 vectors
  (narrow tiles: 8 rows x 1 vector) or a multiple of 4 vectors (wide
  tiles: 2 rows x 4 vectors);
- ``theta_t (P, Ci, Co)``; base ``j`` is ``theta[base_q[j]]`` times block
  total ``base_k[j]``;
- rows with the same list of bases form a group: row ``m`` starts from
  group ``row_group[m]``, which sums the bases
  ``group_u[group_ptr[g]:group_ptr[g + 1]]`` (Deep Sets: one group);
- ``s (nchunks, G, Jp)``: scratch for the groups' sums, one slice per
  parallel chunk, zero past ``Co`` (the caller zeroes it).
"""

from __future__ import annotations

from numba import prange

from .cpu import kernel
from .simd import inline, lanes, load, store, store8, vadd, vbcast, vfma, vload, vsub, vsum, vzero


@inline
def _start(s, sb, row_group, m, col):
    """Row ``m``'s accumulator start at column ``col``: its group's sum of bases."""
    return vload(s, sb + row_group[m] * s.shape[2] + col)


@inline
def _one_row(x, at, y, s, sb, row_group, r, m):
    nci, nco, jp = x.shape[2], y.shape[2], at.shape[1]
    for col in range(0, jp, lanes(x)):
        acc = _start(s, sb, row_group, m, col)
        for k in range(nci):
            acc = vfma(vbcast(x, r * nci + k), vload(at, k * jp + col), acc)
        store(y, r * nco + col, acc, nco - col)


@inline
def _eight_rows(x, at, y, s, sb, row_group, r, m):
    """Narrow tiles: rows ``r .. r + 7`` x 1 vector; one vector of ``at`` per ``k``."""
    nci, nco, jp = x.shape[2], y.shape[2], at.shape[1]
    for col in range(0, jp, lanes(x)):
        a0 = _start(s, sb, row_group, m, col)
        a1 = _start(s, sb, row_group, m + 1, col)
        a2 = _start(s, sb, row_group, m + 2, col)
        a3 = _start(s, sb, row_group, m + 3, col)
        a4 = _start(s, sb, row_group, m + 4, col)
        a5 = _start(s, sb, row_group, m + 5, col)
        a6 = _start(s, sb, row_group, m + 6, col)
        a7 = _start(s, sb, row_group, m + 7, col)
        for k in range(nci):
            w = vload(at, k * jp + col)
            o = r * nci + k
            a0 = vfma(vbcast(x, o), w, a0)
            a1 = vfma(vbcast(x, o + nci), w, a1)
            a2 = vfma(vbcast(x, o + 2 * nci), w, a2)
            a3 = vfma(vbcast(x, o + 3 * nci), w, a3)
            a4 = vfma(vbcast(x, o + 4 * nci), w, a4)
            a5 = vfma(vbcast(x, o + 5 * nci), w, a5)
            a6 = vfma(vbcast(x, o + 6 * nci), w, a6)
            a7 = vfma(vbcast(x, o + 7 * nci), w, a7)
        store8(y, r * nco + col, nco, nco - col, a0, a1, a2, a3, a4, a5, a6, a7)


@inline
def _two_rows(x, at, y, s, sb, row_group, r, m):
    """Wide tiles: rows ``r, r + 1`` x 4 vectors; one broadcast of ``x`` feeds 4 FMAs."""
    nci, nco, jp = x.shape[2], y.shape[2], at.shape[1]
    L = lanes(x)
    for col in range(0, jp, 4 * L):
        p0 = _start(s, sb, row_group, m, col)
        p1 = _start(s, sb, row_group, m, col + L)
        p2 = _start(s, sb, row_group, m, col + 2 * L)
        p3 = _start(s, sb, row_group, m, col + 3 * L)
        q0 = _start(s, sb, row_group, m + 1, col)
        q1 = _start(s, sb, row_group, m + 1, col + L)
        q2 = _start(s, sb, row_group, m + 1, col + 2 * L)
        q3 = _start(s, sb, row_group, m + 1, col + 3 * L)
        for k in range(nci):
            o = k * jp + col
            w0, w1 = vload(at, o), vload(at, o + L)
            w2, w3 = vload(at, o + 2 * L), vload(at, o + 3 * L)
            g = vbcast(x, r * nci + k)
            h = vbcast(x, (r + 1) * nci + k)
            p0, p1, p2, p3 = vfma(g, w0, p0), vfma(g, w1, p1), vfma(g, w2, p2), vfma(g, w3, p3)
            q0, q1, q2, q3 = vfma(h, w0, q0), vfma(h, w1, q1), vfma(h, w2, q2), vfma(h, w3, q3)
        n = nco - col
        o = r * nco + col
        store(y, o, p0, n)
        store(y, o + L, p1, n - L)
        store(y, o + 2 * L, p2, n - 2 * L)
        store(y, o + 3 * L, p3, n - 3 * L)
        o += nco
        store(y, o, q0, n)
        store(y, o + L, q1, n - L)
        store(y, o + 2 * L, q2, n - 2 * L)
        store(y, o + 3 * L, q3, n - 3 * L)


@inline
def _acc4(a0, a1, a2, a3, arr, t, w, sub):
    """Four accumulators plus (or minus) the ``w`` values at flat ``arr[t:]``, a vector each."""
    L = lanes(arr)
    v0, v1 = load(arr, t, w), load(arr, t + L, w - L)
    v2, v3 = load(arr, t + 2 * L, w - 2 * L), load(arr, t + 3 * L, w - 3 * L)
    if sub:
        return vsub(a0, v0), vsub(a1, v1), vsub(a2, v2), vsub(a3, v3)
    return vadd(a0, v0), vadd(a1, v1), vadd(a2, v2), vadd(a3, v3)


@inline
def _store4(out, o, a0, a1, a2, a3, w):
    L = lanes(out)
    store(out, o, a0, w)
    store(out, o + L, a1, w - L)
    store(out, o + 2 * L, a2, w - 2 * L)
    store(out, o + 3 * L, a3, w - 3 * L)


@inline
def _totals(x, blk_ptr, blk_cols, tot, b):
    """``tot[b, k] = sum_{columns s of block k} x[b, s]``, 4 vectors of channels at a time
    (for one channel: vectors along a block that is a run of columns, else four running
    sums).  Each block's columns must ascend without repeats (``np.argsort(block_of,
    kind="stable")`` gives that): a run is detected from its two ends."""
    n, nci = x.shape[1], x.shape[2]
    L = lanes(x)
    nk = blk_ptr.shape[0] - 1
    if nci == 1:
        for k in range(nk):
            i, end = blk_ptr[k], blk_ptr[k + 1]
            if end > i and blk_cols[end - 1] - blk_cols[i] == end - i - 1:
                # the block is a run of columns (blk_cols ascend): vectors along it
                acc = vzero(x)
                o, stop = b * n + blk_cols[i], b * n + blk_cols[end - 1] + 1
                while o < stop:
                    acc = vadd(acc, load(x, o, stop - o))
                    o += L
                tot[b, k, 0] = vsum(acc)
                continue
            # four running sums: the adds do not wait on each other
            a0 = a1 = a2 = a3 = tot.dtype.type(0)
            while i + 4 <= end:
                a0 += x[b, blk_cols[i], 0]
                a1 += x[b, blk_cols[i + 1], 0]
                a2 += x[b, blk_cols[i + 2], 0]
                a3 += x[b, blk_cols[i + 3], 0]
                i += 4
            while i < end:
                a0 += x[b, blk_cols[i], 0]
                i += 1
            tot[b, k, 0] = (a0 + a1) + (a2 + a3)
        return
    for k in range(nk):
        for col in range(0, nci, 4 * L):
            w = nci - col
            a0, a1, a2, a3 = vzero(x), vzero(x), vzero(x), vzero(x)
            for i in range(blk_ptr[k], blk_ptr[k + 1]):
                a0, a1, a2, a3 = _acc4(a0, a1, a2, a3, x, (b * n + blk_cols[i]) * nci + col, w,
                                       False)
            _store4(tot, (b * nk + k) * nci + col, a0, a1, a2, a3, w)


@kernel(nrt=False)
def block_totals(x, blk_ptr, blk_cols, tot):
    """``tot[b, k] = sum_{columns s of block k} x[b, s]`` (``(B, K, C)``) for every ``b``:
    the complement sums' totals wherever they are needed on their own.  ``blk_cols``
    lists each block's columns in ascending order (see :func:`_totals`)."""
    for b in prange(x.shape[0]):
        _totals(x, blk_ptr, blk_cols, tot, b)


@inline
def _gather_one(src, tot, bptr, blks, pptr, plus, mptr, minus, out, o, g, b):
    """Target ``g`` of batch element ``b`` into flat ``out[o:]``: its block totals, plus
    and minus columns, 4 vectors of channels at a time in registers."""
    ns, nc, nk = src.shape[1], src.shape[2], tot.shape[1]
    for col in range(0, nc, 4 * lanes(src)):
        w = nc - col
        a0, a1, a2, a3 = vzero(src), vzero(src), vzero(src), vzero(src)
        for i in range(bptr[g], bptr[g + 1]):
            a0, a1, a2, a3 = _acc4(a0, a1, a2, a3, tot, (b * nk + blks[i]) * nc + col, w, False)
        for i in range(pptr[g], pptr[g + 1]):
            a0, a1, a2, a3 = _acc4(a0, a1, a2, a3, src, (b * ns + plus[i]) * nc + col, w, False)
        for i in range(mptr[g], mptr[g + 1]):
            a0, a1, a2, a3 = _acc4(a0, a1, a2, a3, src, (b * ns + minus[i]) * nc + col, w, True)
        _store4(out, o + col, a0, a1, a2, a3, w)


@kernel(nrt=False)
def gather_sums(src, tot, bptr, blks, pptr, plus, mptr, minus, out, batch_major):
    """A gather plan (``cpu``'s section comment) with channels: ``out[g, b]`` (or
    ``out[b, g]`` when ``batch_major``) = block totals + plus columns - minus columns."""
    nb, nc = src.shape[0], src.shape[2]
    nt = bptr.shape[0] - 1
    for t in prange(nt * nb):
        if batch_major:
            b = t // nt
            g = t - b * nt
        else:
            g = t // nb
            b = t - g * nb
        _gather_one(src, tot, bptr, blks, pptr, plus, mptr, minus, out, t * nc, g, b)


@inline
def _group_bases(tot, theta_t, base_k, base_q, group_ptr, group_u, s, c, b):
    """``s[c, g] = sum_{bases j of group g} theta_{q_j} @ tot[b, k_j]`` (columns past C_out
    stay zero)."""
    nci, nco = theta_t.shape[1], theta_t.shape[2]
    for g in range(group_ptr.shape[0] - 1):
        for co in range(nco):
            s[c, g, co] = 0
        for i in range(group_ptr[g], group_ptr[g + 1]):
            j = group_u[i]
            k = base_k[j]
            q = base_q[j]
            for ci in range(nci):
                v = tot[b, k, ci]
                for co in range(nco):
                    s[c, g, co] += v * theta_t[q, ci, co]


@inline
def _scalar_rows(x, at, y, s, c, row_group, b):
    """One channel: ``y[b, m] = a x[b, m] + s[c, row_group[m]]``, a vector of rows at a
    time when every row starts from the same group (Deep Sets)."""
    n = x.shape[1]
    m = 0
    if s.shape[1] == 1:
        L = lanes(x)
        a = vbcast(at, 0)
        start = vbcast(s, c * s.shape[2])
        while m < n:
            o = b * n + m
            store(y, o, vfma(a, load(x, o, n - m), start), n - m)
            m += L
        return
    for m in range(n):
        y[b, m, 0] = at[0, 0] * x[b, m, 0] + s[c, row_group[m], 0]


@kernel(nrt=False)
def diagonal_complement(x, at, theta_t, blk_ptr, blk_cols, base_k, base_q, group_ptr, group_u,
                        row_group, y, tot, s, nchunks):
    """``y[b, m] = A @ x[b, m] + s[row_group[m]]`` (see the module docstring)."""
    nb, n = x.shape[0], x.shape[1]
    wide = at.shape[1] > 2 * lanes(x)
    step = 2 if wide else 8
    for c in prange(nchunks):
        sb = c * s.shape[1] * s.shape[2]
        for b in range(c, nb, nchunks):
            _totals(x, blk_ptr, blk_cols, tot, b)
            _group_bases(tot, theta_t, base_k, base_q, group_ptr, group_u, s, c, b)
            if x.shape[2] == 1 and y.shape[2] == 1:
                _scalar_rows(x, at, y, s, c, row_group, b)
                continue
            m = 0
            while m + step <= n:
                if wide:
                    _two_rows(x, at, y, s, sb, row_group, b * n + m, m)
                else:
                    _eight_rows(x, at, y, s, sb, row_group, b * n + m, m)
                m += step
            while m < n:
                _one_row(x, at, y, s, sb, row_group, b * n + m, m)
                m += 1
