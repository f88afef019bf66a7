"""Backend and strategy choice for the tied multiply.

The public wrappers in :mod:`paramshare_nb.ops` validate and normalise their
inputs to canonical 3-D arrays (see :mod:`paramshare_nb._kernels.cpu`) and
call :func:`forward`, :func:`grad` here.  This module owns

- the per-pattern plans (parameter-major CSR, per-row parameter groups,
  complement structure), computed once and cached on the immutable pattern;
- the cost model that picks a strategy (or the candidates that
  :mod:`._measure` times, under ``config.planner == "measure"``);
- the lazy import of the CUDA twin (never at package import).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _measure, config
from ._arrays import sorted_unique
from ._kernels import cpu, csr_cpu, simd, small_cpu, sums_cpu, tile_sums_cpu
from ._scratch import keeps, scratch
from ._validate import bytes_text, cuda_unusable

INDEX = np.int64

METHODS = ("auto", "materialize", "gather", "complement", "scatter", "csr")

_CACHE_ATTR = "_paramshare_ops_plans"

#: Below this many element operations a kernel runs on one thread: a parallel
#: region's barrier costs more than it saves (and, on a busy machine, a
#: descheduled worker can stall it for a whole time slice).  Measured against a
#: lower bound for the streamed small-``W`` kernels alone (2 threads): Figure 1 at
#: batch 4096 took 0.034 ms forward + backward split over threads, 0.050 on one, but
#: a step that also called OpenBLAS (a 4096 x 5 x 64 and a 256^3 product) took
#: 1.04-1.21 ms split against 0.26-0.46 on one thread: numba's OpenMP workers, still
#: spinning after the region (``config``), and BLAS's own threads fight for the cores.
SERIAL_WORK = 1 << 23

#: Complement splits with at most this many (derived parameter, parameter) pairs map
#: ``theta`` through a dense coefficient matrix (see ``Split.derived_theta``).
_DENSE_COEF = 1 << 14


def _run(kernel, *args, work=None):
    """Call a parallel kernel, or its serial twin when the work is small.

    ``work`` defaults to the number of float elements the arguments hold.
    Small work runs ``kernel.serial`` (same body, compiled without
    ``parallel``): no parallel region, no barrier, and no change to numba's
    global thread count.
    """
    if work is None:
        work = sum(a.size for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f")
    if work >= SERIAL_WORK:
        return kernel(*args)
    return kernel.serial(*args)


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
# gather plans (numpy, built once per pattern and direction)
# ---------------------------------------------------------------------------

class GatherPlan:
    """Targets as signed sums of source columns, with complement sums by block.

    Attributes are plain int64 arrays for :func:`cpu.gather_sums`:
    ``blk_ptr, blk_cols`` (block members), and per target ``bptr, blks``
    (block totals added), ``pptr, plus`` (columns added), ``mptr, minus``
    (columns subtracted).  ``n_terms`` counts the column reads.

    With complement sums, :meth:`run` falls back to the plain sums (no block
    totals) when a block total is not finite: ``total - exceptions`` would
    turn an ``inf`` input into ``inf - inf = nan`` where the plain sum gives
    ``inf``.
    """

    def __init__(self, tgt, src, n_tgt, n_src, block_of, complement):
        self._args = (tgt, src, n_tgt, n_src, block_of)
        self._plain = None
        self.n_blocks = int(block_of.max()) + 1 if n_src and complement else 0
        nblk = max(self.n_blocks, 1)
        key = tgt * n_src + src
        ukey, cnt = np.unique(key, return_counts=True)
        ut, us = ukey // max(n_src, 1), ukey % max(n_src, 1)
        if complement and ukey.size:
            bsize = np.bincount(block_of, minlength=nblk)
            self.blk_ptr = _ptr(bsize)
            self.blk_cols = np.argsort(block_of, kind="stable").astype(INDEX)
            tk = ut * nblk + block_of[us]
            tk_u, tk_inv, tk_cnt = np.unique(tk, return_inverse=True, return_counts=True)
            dup = np.bincount(tk_inv, weights=(cnt > 1), minlength=tk_u.size) > 0
            size_k = bsize[tk_u % nblk]
            # complement when "total - exceptions" reads fewer columns than the sum itself
            comp = ~dup & (size_k - tk_cnt + 1 < tk_cnt)
            sel = ~comp[tk_inv]
            plus_t, plus_s = np.repeat(ut[sel], cnt[sel]), np.repeat(us[sel], cnt[sel])
            ct, ck = tk_u[comp] // nblk, tk_u[comp] % nblk
            sizes = bsize[ck]
            total = int(sizes.sum())
            starts = np.repeat(self.blk_ptr[ck] - (np.cumsum(sizes) - sizes), sizes)
            members = self.blk_cols[starts + np.arange(total, dtype=INDEX)]
            rep_t = np.repeat(ct, sizes)
            mkey = rep_t * n_src + members
            pos = np.minimum(np.searchsorted(ukey, mkey), ukey.size - 1)
            absent = ukey[pos] != mkey
            minus_t, minus_s = rep_t[absent], members[absent]
        else:
            self.blk_ptr = np.zeros(1, INDEX)
            self.blk_cols = np.zeros(0, INDEX)
            plus_t, plus_s = np.repeat(ut, cnt), np.repeat(us, cnt)
            ct = ck = minus_t = minus_s = np.zeros(0, INDEX)
        self.bptr, self.blks = _ptr(np.bincount(ct, minlength=n_tgt)), ck.astype(INDEX)
        self.pptr, self.plus = _ptr(np.bincount(plus_t, minlength=n_tgt)), plus_s.astype(INDEX)
        self.mptr, self.minus = _ptr(np.bincount(minus_t, minlength=n_tgt)), minus_s.astype(INDEX)
        self.n_terms = int(self.plus.size + self.minus.size + self.blks.size)
        self.uses_blocks = bool(self.blks.size)

    def run(self, src, out, batch_major):
        """Evaluate into ``out`` from ``src (B, S, C)``."""
        nb, _, nc = src.shape
        if self.uses_blocks:
            tot = np.empty((nb, self.n_blocks, nc), dtype=src.dtype)
            _run(sums_cpu.block_totals, src, self.blk_ptr, self.blk_cols, tot)
            if not _finite(tot):
                self.plain().run(src, out, batch_major)
                return
        else:
            tot = np.zeros((nb, 1, nc), dtype=src.dtype)
        # channels in SIMD registers from 4 on; fewer fill too little of a vector
        kernel = sums_cpu.gather_sums if nc >= 4 else cpu.gather_sums
        _run(kernel, src, tot, self.bptr, self.blks, self.pptr, self.plus, self.mptr,
             self.minus, out, batch_major)

    def plain(self):
        """The same sums without block totals (built on first use)."""
        if self._plain is None:
            self._plain = GatherPlan(*self._args, False)
        return self._plain


def _finite(a):
    """Whether every entry of ``a`` is finite (block totals: small, one pass)."""
    return bool(np.isfinite(a).all())


def _as_rows(a):
    """``a`` as a matrix of its leading axis (also for a zero-length one, where
    ``reshape(0, -1)`` fails)."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _ptr(counts):
    ptr = np.zeros(counts.size + 1, dtype=INDEX)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def _column_blocks(cols, params, n):
    """Block id per input column: columns holding the same set of parameters.

    Any partition is correct for the complement sums; this one puts each input
    orbit of a ``G``-invariant pattern in one block (Deep Sets: a single
    block, so "everything else" is the total minus one column).
    """
    if n == 0:
        return np.zeros(0, INDEX)
    pairs = sorted_unique(cols * (int(params.max(initial=0)) + 1) + params)
    npar = int(params.max(initial=0)) + 1
    pc, pp = pairs // npar, pairs % npar
    salt = np.random.default_rng(0x5eed).integers(1, 2**63, size=npar, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    np.add.at(h, pc, salt[pp])  # wraps mod 2**64: a set hash; collisions stay correct
    return np.unique(h, return_inverse=True)[1].astype(INDEX)


class Split:
    """Complement sums: ``W = B + R`` with ``B`` constant on (row, column block) cells.

    For each row ``m`` and input block ``k`` (see :func:`_column_blocks`) where
    one parameter ``q`` fills most of the block's columns, the base puts
    ``theta_q`` on the whole cell and the residual ``R`` corrects the few
    exceptions.  ``R`` is again a tied pattern, over *derived* parameters
    (signed sums such as ``theta_0 - theta_1``), found exactly by grouping
    equal coefficient lists.  Deep Sets (``theta_0`` on the diagonal,
    ``theta_1`` elsewhere) becomes one base ``theta_1 * ones`` per row and a
    diagonal residual holding ``theta_0 - theta_1``:
    ``y_m = theta_1 @ sum_n x_n + (theta_0 - theta_1) @ x_m``, O(N) per row pair.
    The base needs one block total per batch element and one small product
    per distinct (block, parameter) pair, shared by all rows.
    """

    def __init__(self, plan):
        m, n = plan.shape
        npar = max(plan.n_params, 1)
        rows, cols, params = plan._edges
        blk = plan.col_block
        nblk = int(blk.max(initial=-1)) + 1
        self.n_bases = 0
        self._base_groups = None
        if rows.size == 0 or nblk == 0:
            return
        bsize = np.bincount(blk, minlength=nblk)
        ekey, ecnt = np.unique((rows * n + cols) * npar + params, return_counts=True)
        e_mn, e_p = ekey // npar, ekey % npar
        e_m, e_n = e_mn // n, e_mn % n
        # distinct columns per (row, block, param): pick each cell's dominant parameter
        ckey, ccnt = np.unique((e_m * nblk + blk[e_n]) * npar + e_p, return_counts=True)
        cell, cp = ckey // npar, ckey % npar
        order = np.lexsort((-ccnt, cell))
        first = np.ones(order.size, bool)
        first[1:] = cell[order][1:] != cell[order][:-1]
        best = order[first]
        b_cell, b_p, b_cnt = cell[best], cp[best], ccnt[best]
        b_k = b_cell % nblk
        use = b_cnt > bsize[b_k] - b_cnt + 1
        if not use.any():
            return
        c_m, c_k, c_q = b_cell[use] // nblk, b_k[use], b_p[use]
        # bases: distinct (block, param) pairs, each shared by several rows
        bkey, binv = np.unique(c_k * npar + c_q, return_inverse=True)
        self.base_k, self.base_q = (bkey // npar).astype(INDEX), (bkey % npar).astype(INDEX)
        self.n_bases = int(bkey.size)
        self.row_ptr = _ptr(np.bincount(c_m, minlength=m))   # c_m is sorted
        self.row_u = binv.astype(INDEX)
        by_u = np.argsort(binv, kind="stable")
        self.u_ptr = _ptr(np.bincount(binv, minlength=self.n_bases))
        self.u_rows = c_m[by_u].astype(INDEX)
        by_q = np.argsort(self.base_q, kind="stable")
        self.q_ptr = _ptr(np.bincount(self.base_q, minlength=plan.n_params))
        self.q_us = by_q.astype(INDEX)
        # residual coefficients per entry: edges (+count) and base (-1 on every cell column)
        blk_ptr = _ptr(bsize)
        blk_cols = np.argsort(blk, kind="stable")
        sizes = bsize[c_k]
        starts = np.repeat(blk_ptr[c_k] - (np.cumsum(sizes) - sizes), sizes)
        members = blk_cols[starts + np.arange(int(sizes.sum()))]
        neg_key = (np.repeat(c_m, sizes) * n + members) * npar + np.repeat(c_q, sizes)
        allkey = np.concatenate([ekey, neg_key])
        weight = np.concatenate([ecnt, -np.ones(neg_key.size, INDEX)])
        rkey, rinv = np.unique(allkey, return_inverse=True)
        net = np.bincount(rinv, weights=weight).astype(INDEX)
        keep = net != 0
        rkey, net = rkey[keep], net[keep]
        r_mn, r_p = rkey // npar, rkey % npar
        # exact grouping of coefficient lists into derived parameters
        mn_u, mn_inv, mn_cnt = np.unique(r_mn, return_inverse=True, return_counts=True)
        width = int(mn_cnt.max(initial=0))
        pos = np.arange(r_mn.size) - np.repeat(_ptr(mn_cnt)[:-1], mn_cnt)
        table = np.full((mn_u.size, 2 * width), -1 << 40, dtype=INDEX)
        table[mn_inv, 2 * pos] = r_p
        table[mn_inv, 2 * pos + 1] = net
        combos, d_of = np.unique(table, axis=0, return_inverse=True)
        d_of = d_of.reshape(-1)
        self.n_derived = int(combos.shape[0])
        dd, jj = np.nonzero(combos[:, 0::2] >= 0)
        self.d_idx = dd.astype(INDEX)
        self.p_idx = combos[dd, 2 * jj].astype(INDEX)
        self.coef = combos[dd, 2 * jj + 1].astype(np.float64)
        # small combinations as a dense (derived x params) matrix: one 2-us product a
        # call, where np.add.at took 25-50 us (and np.add.reduceat 17-26) on Deep Sets
        self._coef = {}
        if self.n_derived * plan.n_params <= _DENSE_COEF:
            c = np.zeros((self.n_derived, plan.n_params))
            np.add.at(c, (self.d_idx, self.p_idx), self.coef)
            self._coef = {np.dtype(t): c.astype(t) for t in (np.float32, np.float64)}
        res_rows, res_cols = mn_u // n, mn_u % n
        self.residual = Plan((m, n), res_rows.astype(INDEX), res_cols.astype(INDEX),
                             d_of.astype(INDEX), self.n_derived)
        self.blk_ptr, self.blk_cols = blk_ptr, blk_cols.astype(INDEX)
        self.n_blocks = nblk

    def derived_theta(self, theta):
        """``theta_d[d] = sum_j coef_j theta[p_j]`` over the combination of ``d``."""
        c = self._coef.get(theta.dtype)
        if c is not None:
            return (c @ _as_rows(theta)).reshape((self.n_derived,) + theta.shape[1:])
        out = np.zeros((self.n_derived,) + theta.shape[1:], dtype=theta.dtype)
        np.add.at(out, self.d_idx, self.coef.astype(theta.dtype)[:, None, None]
                  * theta[self.p_idx])
        return out

    def param_grads(self, d_grad, out):
        """``out[p] = sum_j coef_j d_grad[d_j]`` over the terms ``j`` of parameter ``p``
        (zero for parameters in no term): the chain rule through :meth:`derived_theta`."""
        c = self._coef.get(d_grad.dtype)
        if c is not None:
            out[...] = (c.T @ _as_rows(d_grad)).reshape(out.shape)
            return
        out[...] = 0
        np.add.at(out, self.p_idx, self.coef.astype(d_grad.dtype)[:, None, None]
                  * d_grad[self.d_idx])

    def base_groups(self):
        """Rows with the same list of bases share one start (Deep Sets: one group).

        ``(group_ptr, group_u, row_group)``: group ``g`` sums the bases
        ``group_u[group_ptr[g]:group_ptr[g + 1]]``; row ``m`` is in group ``row_group[m]``.
        """
        if self._base_groups is None:
            lists = [tuple(self.row_u[self.row_ptr[m]:self.row_ptr[m + 1]])
                     for m in range(self.row_ptr.size - 1)]
            first = {}
            row_group = np.array([first.setdefault(k, len(first)) for k in lists], dtype=INDEX)
            group_ptr = _ptr(np.array([len(k) for k in first], dtype=INDEX))
            group_u = np.array([j for k in first for j in k], dtype=INDEX)
            self._base_groups = (group_ptr, group_u, row_group)
        return self._base_groups

    def totals(self, x):
        tot = np.empty((x.shape[0], self.n_blocks, x.shape[2]), dtype=x.dtype)
        _run(sums_cpu.block_totals, x, self.blk_ptr, self.blk_cols, tot)
        return tot


class Plan:
    """Everything the fast strategies need for one pattern in one direction."""

    def __init__(self, shape, rows, cols, params, n_params):
        m, n = shape
        self.shape = (m, n)
        self.n_params = n_params
        self.nnz = int(rows.size)
        self._edges = (np.asarray(rows, INDEX), np.asarray(cols, INDEX),
                       np.asarray(params, INDEX))
        # groups: distinct (param, row) pairs, parameter-major
        gkey, ginv = np.unique(params * max(m, 1) + rows, return_inverse=True)
        self.gparam = (gkey // max(m, 1)).astype(INDEX)
        self.grow = (gkey % max(m, 1)).astype(INDEX)
        self.n_groups = int(gkey.size)
        self.param_ptr = _ptr(np.bincount(self.gparam, minlength=self.n_params))
        self.row_ptr = _ptr(np.bincount(self.grow, minlength=m))
        self.row_groups = np.argsort(self.grow, kind="stable").astype(INDEX)
        self.row_params = self.gparam[self.row_groups]  # parameter of each row's groups
        self.group_ids = np.arange(self.n_groups, dtype=INDEX)
        self._ginv = ginv.astype(INDEX)
        self.col_block = _column_blocks(cols, params, n)
        self._gather = None
        self._z = None
        self._split = None
        self.scratch = {}  # arrays reused across calls (_scratch_array)
        # a single parameter times the identity (Deep Sets' residual): one plain GEMM
        self.identity_param = -1
        if (self.n_groups == m == n == self.nnz and np.count_nonzero(np.diff(self.param_ptr)) == 1
                and np.array_equal(np.asarray(rows), np.arange(m))
                and np.array_equal(np.asarray(cols), np.arange(n))):
            self.identity_param = int(self.gparam[0])

    @classmethod
    def of(cls, pattern):  # noqa: D102
        return cls(pattern.shape, pattern.rows, pattern.cols, pattern.params, pattern.n_params)

    def split(self):
        """The complement decomposition (:class:`Split`), or None when nothing gains."""
        if self._split is None:
            self._split = Split(self)
        return self._split if self._split.n_bases else None

    def gather(self):
        """Group sums of ``x``: targets are the groups, sources the input columns.

        Plain sums: complement sums are :class:`Split`'s (bases and a residual).
        """
        if self._gather is None:
            self._gather = GatherPlan(self._ginv, self._edges[1], self.n_groups, self.shape[1],
                                      self.col_block, False)
        return self._gather

    def zplan(self):
        """Contract-then-scatter: ``z`` columns are distinct (param, input) pairs."""
        if self._z is None:
            m, n = self.shape
            rows, cols, params = self._edges
            zkey, zinv = np.unique(params * max(n, 1) + cols, return_inverse=True)
            zparam, zcol = (zkey // max(n, 1)).astype(INDEX), (zkey % max(n, 1)).astype(INDEX)
            nb = int(self.col_block.max(initial=-1)) + 1
            zblock = np.unique(zparam * max(nb, 1) + self.col_block[zcol],
                               return_inverse=True)[1].astype(INDEX)
            g = GatherPlan(rows, zinv.astype(INDEX), m, int(zkey.size), zblock, True)
            self._z = (zcol, zparam, g)
        return self._z


def plan_of(pattern, transposed=False):
    """The cached :class:`Plan` of ``pattern`` (or of its transpose, for ``dx``)."""
    if transposed:
        return _cached(pattern, "plan_t", lambda: Plan.of(pattern.transpose()))
    return _cached(pattern, "plan", lambda: Plan.of(pattern))


# ---------------------------------------------------------------------------
# strategies (CPU), canonical arrays: x (B, N, Ci), theta (P, Co, Ci), y (B, M, Co)
# ---------------------------------------------------------------------------

def _blas_contract(plan, c_in, c_out):
    """Whether per-parameter BLAS beats the fused numba contraction."""
    used = int(np.count_nonzero(np.diff(plan.param_ptr)))
    return c_in * c_out >= 256 and used <= 64


def _tiled_sums(c_in, c_out):
    """Whether gather-contract runs on :mod:`.tile_sums_cpu`'s batch tiles (few channels)."""
    return c_in <= 3 and c_out <= 3


def _tiled_work(plan, nb, c_in, c_out):
    """Element operations of the tiled gather-contract: the sums, then the products."""
    return nb * (plan.nnz * c_in + plan.n_groups * c_in * c_out)


def _gather_forward(plan, x, theta, y):
    nb, _, c_in = x.shape
    c_out = theta.shape[1]
    if plan.identity_param >= 0:
        np.matmul(x.reshape(-1, c_in), theta[plan.identity_param].T, out=y.reshape(-1, c_out))
        return
    gp = plan.gather()
    if _tiled_sums(c_in, c_out):
        work = _tiled_work(plan, nb, c_in, c_out)
        _run(tile_sums_cpu.gather_forward, x, theta, gp.pptr, gp.plus, plan.row_ptr,
             plan.row_groups, plan.gparam, y, _chunks(work), work=work)
        return
    g_sums = _scratch_array(plan.scratch, "g_sums", (plan.n_groups, nb, c_in), x.dtype)
    gp.run(x, g_sums, False)
    if _blas_contract(plan, c_in, c_out):
        r = _scratch_array(plan.scratch, "g_products", (plan.n_groups, nb, c_out), x.dtype)
        for p in range(plan.n_params):
            a, z = plan.param_ptr[p], plan.param_ptr[p + 1]
            if z > a:
                np.matmul(g_sums[a:z].reshape(-1, c_in), theta[p].T,
                          out=r[a:z].reshape(-1, c_out))
        _run(cpu.row_sums, r, plan.row_ptr, plan.row_groups, y)
    else:  # the csr tiles, over the groups' sums (G, B, Ci) as sources
        work = g_sums.size * c_out
        _run(csr_cpu.csr_rows, g_sums, _tile_theta_t(theta), plan.row_ptr, plan.row_groups,
             plan.row_params, c_in, nb * c_in, y, _chunks(work), work=work)


def _complement_forward(plan, x, theta, y):
    """Complement sums into ``y``; returns the block totals of ``x`` (None on fallback).

    Falls back to ``"gather"`` when a block total is not finite (an ``inf`` or
    ``nan`` in ``x``, or an overflow): ``total - exceptions`` would give
    ``inf - inf = nan`` where the dense product gives ``inf``; and when
    ``theta`` or the derived parameters are not (see :func:`_derived`).
    """
    sp = plan.split()
    derived = None if sp is None else _derived(sp, theta)
    if derived is None:
        _gather_forward(plan, x, theta, y)
        return None
    if _one_pass(sp, x.shape[0], x.size * theta.shape[1]):
        return _diagonal_complement(plan, sp, x, theta, derived, y)
    tot = sp.totals(x)
    if not _finite(tot):
        _gather_forward(plan, x, theta, y)
        return None
    _gather_forward(sp.residual, x, derived, y)
    u = np.empty((x.shape[0], sp.n_bases, theta.shape[1]), dtype=x.dtype)
    _run(cpu.contract_cols, tot, np.ascontiguousarray(theta.transpose(0, 2, 1)), sp.base_k,
                      sp.base_q, u)
    _run(cpu.add_base, u, sp.row_ptr, sp.row_u, y)
    return tot


def _derived(sp, theta):
    """``sp``'s derived parameters for ``theta``, or None when ``theta`` or they hold an
    inf or nan: an inf in ``theta`` turns base minus exception into ``inf - inf`` in
    rows that never use it, and ``theta_0 - theta_1`` can overflow (float32) where
    every sum over the entries is finite.  Both are small arrays."""
    if not _finite(theta):
        return None
    derived = sp.derived_theta(theta)
    return derived if _finite(derived) else None


def _one_pass(sp, nb, work):
    """Whether complement sums run as :func:`_diagonal_complement`: a diagonal residual, and
    a batch element for every thread (else the separate passes, BLAS and row-parallel
    kernels, use more cores)."""
    return sp is not None and sp.residual.identity_param >= 0 and nb >= _chunks(work)


def _diagonal_complement(plan, sp, x, theta, derived, y):
    """Complement sums with a diagonal residual in one pass (:mod:`._kernels.sums_cpu`).

    Returns the block totals of ``x``, or None after falling back to ``"gather"``
    on non-finite totals.
    """
    nb, n, c_in = x.shape
    c_out = theta.shape[1]
    lanes = _lanes(x.itemsize)
    nvec = _round_up(c_out, lanes) // lanes
    # the kernel's tiles: 1 or 2 vectors of outputs (8-row tiles), else groups of 4
    jp = nvec * lanes if nvec <= 2 else _round_up(nvec, 4) * lanes
    at = np.zeros((c_in, jp), dtype=x.dtype)
    at[:, :c_out] = derived[sp.residual.identity_param].T
    theta_t = np.ascontiguousarray(theta.transpose(0, 2, 1))
    group_ptr, group_u, row_group = sp.base_groups()
    tot = np.empty((nb, sp.n_blocks, c_in), dtype=x.dtype)
    work = x.size * c_out
    nchunks = _chunks(work)
    starts = np.zeros((nchunks, group_ptr.size - 1, jp), dtype=x.dtype)
    _run(sums_cpu.diagonal_complement, x, at, theta_t, sp.blk_ptr, sp.blk_cols, sp.base_k,
         sp.base_q, group_ptr, group_u, row_group, y, tot, starts, nchunks, work=work)
    if _finite(tot):
        return tot
    _gather_forward(plan, x, theta, y)
    return None


def _dy_blocks(pattern):
    """Per base of the forward split, the block of the ``dx`` split that holds exactly its rows.

    Then the base's ``sum_{rows m} dy[b, m]`` is a block total of ``dy`` that the ``dx``
    pass has already computed (Deep Sets: the one base spans every row, the one block of
    ``pattern.T``).  ``(ptr, blocks)`` in :func:`cpu.base_dtheta`'s ``u_ptr, u_rows``
    form (one entry per base), or None when some base spans no single block.
    """
    def build():
        sp, spt = plan_of(pattern).split(), plan_of(pattern, True).split()
        if sp is None or spt is None:
            return False
        blk = plan_of(pattern, True).col_block
        bsize = np.diff(spt.blk_ptr)
        out = np.empty(sp.n_bases, INDEX)
        for j in range(sp.n_bases):
            rows = sp.u_rows[sp.u_ptr[j]:sp.u_ptr[j + 1]]
            k = blk[rows]
            if rows.size == 0 or (k != k[0]).any() or np.unique(rows).size != bsize[k[0]]:
                return False
            out[j] = k[0]
        return np.arange(sp.n_bases + 1, dtype=INDEX), out
    hit = _cached(pattern, "dy_blocks", build)
    return hit or None


def _complement_dtheta(plan, dy, x, dtheta, dy_tot=None, dy_blocks=None):
    """``dtheta`` by complement sums; ``dy_tot`` (block totals of ``dy`` from the ``dx``
    pass) with ``dy_blocks`` (see :func:`_dy_blocks`) saves a pass over ``dy``.

    Non-finite inputs (seen in the block totals of ``x`` or ``dy``, or as a
    non-finite ``dtheta``, which is small) go through ``"gather"``: the
    derived parameters' differences would turn ``inf`` into ``nan``.
    """
    sp = plan.split()
    tot_x = None if sp is None else sp.totals(x)
    if tot_x is None or not _finite(tot_x) or (dy_tot is not None and not _finite(dy_tot)):
        return _gather_dtheta(plan, dy, x, dtheta)
    dd = np.empty((sp.n_derived,) + dtheta.shape[1:], dtype=dtheta.dtype)
    _gather_dtheta(sp.residual, dy, x, dd)
    sp.param_grads(dd, dtheta)
    if dy_tot is not None and dy_blocks is not None:
        _run(cpu.base_dtheta, dy_tot, tot_x, dy_blocks[0], dy_blocks[1], sp.base_k,
             sp.q_ptr, sp.q_us, dtheta)
    else:
        _run(cpu.base_dtheta, dy, tot_x, sp.u_ptr, sp.u_rows, sp.base_k, sp.q_ptr,
             sp.q_us, dtheta)
    if not _finite(dtheta):  # an inf or nan in dy: redo without the differences
        _gather_dtheta(plan, dy, x, dtheta)


def _scatter_forward(plan, x, theta, y):
    zcol, zparam, g = plan.zplan()
    theta_t = np.ascontiguousarray(theta.transpose(0, 2, 1))
    z = np.empty((x.shape[0], zcol.size, theta.shape[1]), dtype=x.dtype)
    _run(cpu.contract_cols, x, theta_t, zcol, zparam, z, work=z.size * x.shape[2])
    g.run(z, y, True)


def _gather_dtheta(plan, dy, x, dtheta):
    nb, _, c_in = x.shape
    c_out = dy.shape[2]
    if plan.identity_param >= 0:
        dtheta[...] = 0
        _outer_product(dy.reshape(-1, c_out), x.reshape(-1, c_in), dtheta[plan.identity_param])
        return
    gp = plan.gather()
    if _tiled_sums(c_in, c_out):
        work = _tiled_work(plan, nb, c_in, c_out)
        nchunks = _chunks(work)
        part = (dtheta[None] if nchunks == 1
                else np.empty((nchunks,) + dtheta.shape, dtype=dtheta.dtype))
        _run(tile_sums_cpu.gather_dtheta, dy, x, gp.pptr, gp.plus, plan.gparam, plan.grow,
             part, nchunks, work=work)
        if nchunks > 1:
            np.sum(part, axis=0, out=dtheta)
        return
    g_sums = _scratch_array(plan.scratch, "g_sums", (plan.n_groups, nb, c_in), x.dtype)
    gp.run(x, g_sums, False)
    if _blas_contract(plan, c_in, c_out):
        d = _scratch_array(plan.scratch, "g_dy", (plan.n_groups, nb, c_out), x.dtype)
        _run(cpu.gather_rows_tm, dy, plan.grow, d)
        for p in range(plan.n_params):
            a, z = plan.param_ptr[p], plan.param_ptr[p + 1]
            if z > a:
                np.matmul(d[a:z].reshape(-1, c_out).T, g_sums[a:z].reshape(-1, c_in),
                          out=dtheta[p])
            else:
                dtheta[p] = 0
    else:  # the csr dtheta tiles: groups are parameter-major entries over the group sums
        _tiled_dtheta(dy, g_sums, plan.param_ptr, plan.grow, plan.group_ids, c_in, nb * c_in,
                      dtheta)


def _outer_product(a, b, out):
    """``out = a.T @ b`` for long ``a (R, A)`` and ``b (R, K)``: the diagonal's ``dtheta``.

    Up to 32 columns a side, on :mod:`.small_cpu`'s outer-product tiles (one
    chunk of rows per thread), else BLAS.  The tiles only match OpenBLAS
    there (Deep Sets, 32768 x 32 each: 1.00 against 1.04 ms; 0.6x at 48 or
    64 columns), but leave no BLAS threads spinning against the parallel
    numba kernels that run next: Deep Sets w1's forward + backward went from
    4.5-5.0 to 3.6-3.8 ms (medians, interleaved runs).
    """
    rows, na, nk = a.shape[0], a.shape[1], b.shape[1]
    if max(na, nk) > 32:
        np.matmul(a.T, b, out=out)
        return
    work = rows * na * nk
    nchunks = _chunks(work)
    part = np.empty((nchunks, na, _part_width(nk, a.itemsize)), dtype=a.dtype)
    _run(small_cpu.outer_products, a, b, part, nchunks, work=work)
    np.sum(part[:, :, :nk], axis=0, out=out)


def _part_width(k, itemsize):
    """Row length of :mod:`.small_cpu`'s ``dW`` buffers for ``k`` columns: whole tiles of 3
    vectors when the vector count divides by 3, else of 2."""
    lanes = _lanes(itemsize)
    vectors = _round_up(k, lanes) // lanes
    return _round_up(k, (3 if vectors % 3 == 0 else 2) * lanes)


def _chunks(work):
    return 1 if work < SERIAL_WORK else numba.get_num_threads()


def _scalar_edges(pattern, transposed):
    """``(rows, cols, params)`` int64 edge arrays for the scalar kernels."""
    def build():
        src = pattern.transpose() if transposed else pattern
        return tuple(np.array(a, dtype=INDEX) for a in (src.rows, src.cols, src.params))
    return _cached(pattern, "edges_t" if transposed else "edges", build)


def _csr_forward(x, theta, pattern, y, transposed=False):
    nb = x.shape[0]
    if theta.shape[1] == theta.shape[2] == 1:
        # scalar: tiles of the batch, vectorised along it
        rows, cols, params = _scalar_edges(pattern, transposed)
        work = nb * cols.size
        _run(cpu.scalar_forward, x.reshape(nb, -1), theta.reshape(-1), rows, cols, params,
             y.reshape(nb, -1), _chunks(work), work=work)
        return
    indptr, cols, params = csr_t_of(pattern) if transposed else csr_of(pattern)
    c_in = x.shape[2]
    work = nb * cols.size * theta[0].size
    _run(csr_cpu.csr_rows, x, _tile_theta_t(theta), indptr, cols, params, x.shape[1] * c_in,
         c_in, y, _chunks(work), work=work)


def _lanes(itemsize):
    """Values of one dtype per SIMD vector (:data:`simd.WIDTH` bytes)."""
    return simd.WIDTH // itemsize


def _round_up(n, k):
    """``n`` rounded up to a multiple of ``k`` (padding to whole register tiles)."""
    return -(-n // k) * k


def _tile_theta_t(theta):
    """``theta (P, Co, Ci)`` transposed to ``(P, Ci, Cop)``, ``Cop`` = ``Co`` zero-padded to
    the 2 vectors of :func:`csr_cpu.csr_rows`' tiles."""
    npar, c_out, c_in = theta.shape
    theta_t = np.zeros((npar, c_in, _round_up(c_out, 2 * _lanes(theta.itemsize))),
                       dtype=theta.dtype)
    theta_t[:, :, :c_out] = theta.transpose(0, 2, 1)
    return theta_t


def _csr_dx(dy, theta_t, pattern, dx):
    _csr_forward(dy, theta_t, pattern, dx, transposed=True)


def _csr_dtheta(dy, x, pattern, dtheta):
    pptr, prows, pcols = param_major_of(pattern)
    c_out, c_in = dtheta.shape[1:]
    if c_in < c_out:
        # the tiles' vectors run along the sources' channels: with fewer input channels,
        # dtheta's transpose, with x as the broadcast side and dy as the sources (Deep
        # Sets S_16, batch 64, float32: 1 -> 16 channels 83 -> 24 us, 3 -> 16 96 -> 24)
        _tiled_dtheta(x, dy, pptr, pcols, prows, dy.shape[1] * c_out, c_out,
                      dtheta.transpose(0, 2, 1))
        return
    _tiled_dtheta(dy, x, pptr, prows, pcols, x.shape[1] * c_in, c_in, dtheta)


def _tiled_dtheta(dy, src, pptr, prows, pcols, bstride, sstride, dtheta):
    """:func:`csr_cpu.csr_dtheta` into a tile-padded buffer, then ``dtheta``."""
    npar, c_out, c_in = dtheta.shape
    padded = np.empty((npar, _round_up(c_out, 4), _round_up(c_in, 2 * _lanes(src.itemsize))),
                      dtype=dtheta.dtype)
    _run(csr_cpu.csr_dtheta, dy, src, pptr, prows, pcols, bstride, sstride, padded,
         work=dy.shape[0] * prows.size * c_out * c_in)
    dtheta[...] = padded[:, :c_out, :c_in]


def _scalar_grad(dy, x, theta, pattern, dx, dtheta):
    """Scalar patterns: ``dx`` and ``dtheta`` in one fused pass."""
    nb = x.shape[0]
    rows, cols, params = _scalar_edges(pattern, False)
    work = nb * cols.size
    nchunks = _chunks(work)
    # one chunk writes dtheta itself (np.sum over a tiny buffer costs more than the kernel)
    part = (dtheta.reshape(1, -1) if nchunks == 1
            else np.empty((nchunks, pattern.n_params), dtype=dtheta.dtype))
    _run(cpu.scalar_backward, dy.reshape(nb, -1), x.reshape(nb, -1), theta.reshape(-1), rows,
         cols, params, dx.reshape(nb, -1), part, nchunks, work=work)
    if nchunks > 1:
        np.sum(part, axis=0, out=dtheta.reshape(-1))


def _mat_forward(x, theta, pattern, y):
    _materialize_forward(pattern, x.shape[0], x.shape[2], y.shape[2], x.dtype)(x, theta, y)


def _materialize_forward(pattern, nb, c_in, c_out, dtype):
    """``run(x, theta, y)`` for ``"materialize"``: a small thin ``W`` streamed, else BLAS."""
    m, n = pattern.shape
    if not _streams(m, n, nb, c_in, c_out, dtype.itemsize):
        run = _blas_forward(pattern, nb, c_in, c_out, dtype)
    else:
        _check_w_bytes(pattern, c_out, c_in, dtype.itemsize, "materialize")  # gathered there
        run = _streaming_forward(pattern, nb, m * c_out, n * c_in, dtype,
                                 _chunks(nb * m * n * c_out * c_in))
    def sparse(x, theta, y):
        entries, theta_e = entry_pattern(pattern, theta)
        _run_forward("csr", entries, x, theta_e, y)
    return _finite_or(pattern, run, sparse)


def _materialize_grad(pattern, nb, c_in, c_out, dtype):
    """``run(dy, x, theta, dx, dtheta)`` for ``"materialize"``: :func:`_materialize_forward`'s
    twin."""
    m, n = pattern.shape
    if not _streams(m, n, nb, c_in, c_out, dtype.itemsize):
        run = _blas_grad(pattern, nb, c_in, c_out, dtype)
    else:
        _check_w_bytes(pattern, c_out, c_in, dtype.itemsize, "materialize")
        run = _streaming_grad(pattern, nb, m * c_out, n * c_in, dtype,
                              _chunks(nb * m * n * c_out * c_in))

    def sparse_dx(dy, x, theta, dx, dtheta):
        entries, theta_e = entry_pattern(pattern, theta)
        theta_t = np.ascontiguousarray(theta_e.transpose(0, 2, 1))
        _run_forward("csr", entries, dy, theta_t, dx, transposed=True)
        _mat_grad(dy, x, theta, pattern, None, dtheta)  # dW's entries hold no 0 * inf
    return _finite_or(pattern, run, sparse_dx)


def entry_pattern(pattern, theta):
    """``(entries, theta_e)``: ``pattern`` with each distinct entry ``(m, n)`` as its own
    parameter, whose value ``theta_e`` is the sum of the entry's parameters; the pattern
    itself and ``theta`` when there are no multi-edges.

    For ``"materialize"``'s sparse fallback: ``"csr"`` on the pattern multiplies a
    multi-edge's parameters one by one, so an entry ``1 - 2`` times ``inf`` gave
    ``inf - 2 inf = nan`` where the dense product has ``-inf`` (found by review).
    """
    if not pattern.has_multi_edges:
        return pattern, theta
    return entries_of(pattern), np.add.reduceat(theta[pattern.params], pattern.entry_starts,
                                                axis=0)


def entries_of(pattern):
    """The pattern of ``pattern``'s distinct entries, parameter ``u`` for the ``u``-th
    (:attr:`Pattern.entry_starts`)."""
    def build():
        first = pattern.entry_starts
        return type(pattern)._from_sorted(*pattern.shape, pattern.rows[first],
                                          pattern.cols[first], np.arange(first.size), first.size)
    return _cached(pattern, "entries", build)


def _finite_or(pattern, run, fallback):
    """``run``, or ``fallback`` for calls whose first array (``x``, or ``dy``) holds an
    inf or nan, when ``W`` has structural zeros: a dense product turns their ``0 * inf``
    into nan in outputs whose sums do not include that input (``"csr"`` sums only the
    entries).  One pass over the input tells (:func:`cpu.all_finite`)."""
    if not _structural_zeros(pattern):
        return run

    def checked(src, *args):
        (run if cpu.all_finite(src) else fallback)(src, *args)
    return checked


def _blas_forward(pattern, nb, c_in, c_out, dtype):
    """``run(x, theta, y)``: ``W`` gathered, one BLAS product; set up once."""
    w_of = _gatherer(pattern, c_out, c_in, dtype)
    keep = _keep_w(pattern, c_out, c_in)
    o = pattern.shape[0] * c_out

    def run(x, theta, y):
        if keep:  # a W no backward took: dropped first, so that its array is reused
            _plans(pattern).pop("last_w", None)
        w = w_of(theta)
        if keep:
            _plans(pattern)["last_w"] = (theta.copy(), w)
        np.matmul(x.reshape(nb, -1), w.T, out=y.reshape(nb, o))
    return run


def _scratch_array(store, name, shape, dtype):
    """An array for ``name``: the one ``store`` (a pattern's plans, a :class:`Plan`'s
    ``scratch``) keeps for it when it has this shape and dtype and nothing else holds it,
    else a new one (kept from now on when its size suits
    :func:`~paramshare_nb._scratch.scratch`).  One per name and dtype, whatever the
    batch: a new batch size replaces it, so no more than that is kept."""
    key = ("scratch", name, dtype.str)
    buf = store.get(key)
    if buf is not None and buf.shape == shape:
        return buf.take()
    buf = scratch(shape, dtype)
    if buf is None:  # a size allocated each time: the kept one (another size) goes
        store.pop(key, None)
        return np.empty(shape, dtype)
    store[key] = buf
    return buf.take()


def _gatherer(pattern, c_out, c_in, dtype):
    """``theta -> W`` as an ``(M * Co, N * Ci)`` matrix, the way of gathering decided once."""
    _check_w_bytes(pattern, c_out, c_in, dtype.itemsize, "materialize")
    m, n = pattern.shape
    shape = (m, c_out, n, c_in)
    kept = keeps(shape, dtype)  # a large W: gathered into the pattern's array

    def buf():
        return _scratch_array(_plans(pattern), "w", shape, dtype)
    if (c_out, c_in) == (1, 1) and _complete(pattern):
        # scalar, every entry once, row-major: params is the index (a 1-D fancy index:
        # 1.6 against 2.7 us for np.take on 32 x 32)
        params = pattern.params
        if not kept:
            return lambda theta: theta.reshape(-1)[params].reshape(m, n)
        # mode="clip": with the default "raise", numpy gathers into a temporary first
        return lambda theta: np.take(theta.reshape(-1), params, mode="clip",
                                     out=buf().reshape(-1)).reshape(m, n)
    if not kept:
        return lambda theta: materialize(theta, pattern).reshape(m * c_out, n * c_in)
    return lambda theta: materialize(theta, pattern, buf()).reshape(m * c_out, n * c_in)


def _streamed(o, k, itemsize):
    """Whether ``"materialize"`` streams the batch through :mod:`.small_cpu`'s tiles.

    ``W`` is ``o x k`` (``M * Co x N * Ci``, either way round).  A small
    ``W`` with a thin side: BLAS spends such calls on the shape, not on
    arithmetic (Figure 1's 4096 x 20 @ 20 x 5 runs at a fraction of its
    square-matrix rate).  The bounds are where the tiles still beat OpenBLAS
    in both directions (measured, float32 and float64).
    """
    lanes = simd.WIDTH // itemsize  # runs on every call: no helper calls
    return (o if o < k else k) <= 2 * lanes and (k if o < k else o) <= 6 * lanes


#: Entries of a scalar ``W`` and element products of a batch (``B * M * N``) up to which
#: ``"materialize"`` streams even a square ``W`` (see :func:`_streams`).
_SMALL_SQUARE = 64 * 64
_SMALL_SQUARE_WORK = 1 << 18


def _streams(m, n, nb, c_in, c_out, itemsize):
    """Whether ``"materialize"`` streams the batch through :mod:`.small_cpu`'s tiles: a thin
    ``W`` (:func:`_streamed`), or a small scalar one at a small batch, where the fixed cost
    of BLAS's three calls (about 10 us) is most of the time.  Forward + backward, float32,
    measured against the BLAS runners: C_32 at batch 1, 16, 64, 256: 6.5 / 7.8 / 13.2 /
    24.6 against 16.7 / 17.2 / 20.9 / 40.9 us; C_64 at batch 64: 38.5 against 46.5, at
    batch 256: 94 against 84 (past the bound)."""
    o, k = m * c_out, n * c_in
    if _streamed(o, k, itemsize):
        return True
    return c_in == c_out == 1 and o * k <= _SMALL_SQUARE and nb * o * k <= _SMALL_SQUARE_WORK


def _streaming_forward(pattern, nb, o, k, dtype, nchunks):
    """``run(x, theta, y)``: the streamed small ``W`` (``o x k``), buffer shape decided once."""
    indptr, cols, params = csr_of(pattern)
    complete = _complete(pattern)
    lanes = _lanes(dtype.itemsize)
    if _dots_forward(o, k, dtype.itemsize):  # dot products along x's rows, W in registers
        dots = small_cpu.dot_forward(o, _round_up(k, lanes) // lanes)
        dots = dots if nchunks > 1 else dots.serial
        # W, each chunk's partial sums, and room to align both (small_cpu.dot_forward)
        size = o * _round_up(k, lanes) + nchunks * o * lanes * lanes + 2 * lanes

        def run(x, theta, y):
            dots(x.reshape(nb, k), theta, indptr, cols, params, complete,
                 np.empty(size, dtype), y.reshape(nb, o), nchunks)
        run.any_batch_shape = True
        return run
    # tiles along y's rows: W.T, padded to whole vectors
    kernel = small_cpu.small_forward if nchunks > 1 else small_cpu.small_forward.serial
    wt_shape = (k, _round_up(o, lanes))

    def run(x, theta, y):
        kernel(x.reshape(nb, k), theta, indptr, cols, params, complete,
               np.empty(wt_shape, dtype), y.reshape(nb, o), nchunks)
    run.any_batch_shape = True  # x and y in any C-contiguous shape of their size
    return run


def _streaming_grad(pattern, nb, o, k, dtype, nchunks):
    """``run(dy, x, theta, dx, dtheta)``: the streamed small ``W``'s backward in one call."""
    indptr, cols, params = csr_of(pattern)
    complete = _complete(pattern)
    w_shape = (o, _round_up(k, _lanes(dtype.itemsize)))
    if _fuses(o, k, dtype.itemsize):  # dW in registers: part is each chunk's dW, as w
        kernel = small_cpu.fused_backward(o, w_shape[1] // _lanes(dtype.itemsize))
        part_shape = (nchunks,) + w_shape
        w_shape = (math.prod(w_shape) + _lanes(dtype.itemsize),)  # to be aligned in it
    else:  # each chunk's dW with vectors along its longer side (small_backward's layouts)
        kernel = small_cpu.small_backward
        part_shape = (nchunks, min(o, k), _part_width(max(o, k), dtype.itemsize))
    if nchunks == 1:
        kernel = kernel.serial

    def run(dy, x, theta, dx, dtheta):
        kernel(dy.reshape(nb, o), x.reshape(nb, k), theta, indptr, cols, params, complete,
               np.empty(w_shape, dtype), np.empty(part_shape, dtype), dx.reshape(nb, k),
               dtheta, nchunks)
    run.any_batch_shape = True  # dy, x and dx in any C-contiguous shape of their size
    return run


def _fuses(o, k, itemsize):
    """Whether the streamed ``o x k`` ``W`` (``y`` rows of ``o`` values, ``x`` rows of ``k``)
    takes the kernels that keep ``W`` or ``dW`` in registers
    (:func:`small_cpu.dot_forward`, :func:`small_cpu.fused_backward`): ``o`` up to
    ``FUSED_ROWS``, ``k`` up to ``FUSED_VECTORS`` vectors, and ``W``'s (or ``dW``'s)
    rows, one row of ``x`` (or ``dx``) and a broadcast, ``(o + 1) * vectors + 1``, within
    the CPU's vector registers.  The backward's row of ``x`` may stay in memory: its
    multiply-adds read it from L1.  Measured with numba compiling for Haswell (16
    registers; float32, batch 4096, one thread, forward / backward): 4 x 24 (16 by this
    count, 19 counting ``x``'s row too) 13.8-14.0 / 23.7-26.2 us against 20.5-20.6 /
    27.6-28.1 for the tiles, 4 x 20 14.0 / 23.9 against 17.7 / 27.5; Figure 1's 5 x 20
    (19) 18.0-19.9 / 27.7-30.9 against 17.5-18.1 / 28.9-29.0, no better, so it keeps the
    tiles there."""
    vectors = -(-k // _lanes(itemsize))
    return (o <= small_cpu.FUSED_ROWS and vectors <= small_cpu.FUSED_VECTORS
            and (o + 1) * vectors + 1 <= simd.REGISTERS)


def _dots_forward(o, k, itemsize):
    """Whether the streamed forward of an ``o x k`` ``W`` takes :func:`small_cpu.dot_forward`
    (dot products along ``x``'s rows) rather than :func:`small_cpu.small_forward`'s tiles
    along ``y``'s: where :func:`_fuses` and the rows of ``x`` are at least 3 times as long
    as ``y``'s.  A tile costs about 0.75 cycles a row per value of ``x``'s rows (one
    broadcast and one multiply-add), a dot product about 2 cycles a row, so dot products
    win on long rows of ``x``: float32, batch 4096, one thread, 5 x 20 (Figure 1) 13.6
    against 17.1 us, 1 x 24 4.2 against 19.4, 3 x 20 8.8 against 16.9; and lose on short
    ones: 4 x 8 7.9 against 7.8, 5 x 3 11.5 against 4.8."""
    return k >= 3 * o and _fuses(o, k, itemsize)


def _mat_grad(dy, x, theta, pattern, dx, dtheta):
    _blas_grad(pattern, x.shape[0], x.shape[2], theta.shape[1], x.dtype)(dy, x, theta, dx, dtheta)


def _blas_grad(pattern, nb, c_in, c_out, dtype):
    """``run(dy, x, theta, dx, dtheta)``: ``dx`` by BLAS (skipped for ``dx=None``), the dense
    ``dW`` by BLAS, reduced by parameter; set up once."""
    w_of = _gatherer(pattern, c_out, c_in, dtype)
    small, keep = _small_w(pattern, c_out, c_in), _keep_w(pattern, c_out, c_in)
    _check_w_bytes(pattern, c_out, c_in, dtype.itemsize, "the dense dW")
    reduce = _dw_reducer(pattern, c_out, c_in, small)
    dw_shape = (pattern.shape[0] * c_out, pattern.shape[1] * c_in)
    dw_kept = keeps(dw_shape, dtype)

    def run(dy, x, theta, dx, dtheta):
        dy2 = dy.reshape(nb, -1)
        if dx is not None:
            w = _forwards_w(theta, pattern, w_of) if keep else w_of(theta)
            np.matmul(dy2, w, out=dx.reshape(nb, -1))
        dw = _scratch_array(_plans(pattern), "dw", dw_shape, dtype) if dw_kept else None
        reduce(np.matmul(dy2.T, x.reshape(nb, -1), out=dw), dtheta)
    return run


def _forwards_w(theta, pattern, w_of):
    """The forward's ``W`` when ``theta`` is unchanged (consumed once), else a fresh one."""
    last = _plans(pattern).pop("last_w", None)
    if last is not None and _same_bits(last[0], theta):
        return last[1]
    return w_of(theta)


def _same_bits(a, b):
    """Whether C-contiguous ``a`` and ``b`` hold the same bits, so that ``W`` gathered from
    either is the same (a nan equals itself, ``-0.0`` differs from ``0.0``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.size <= _SMALL_W:  # bytes: 0.3 us against 4 for np.array_equal on 32 values
        return a.tobytes() == b.tobytes()
    bits = np.dtype(f"u{a.dtype.itemsize}")
    return np.array_equal(a.view(bits), b.view(bits))


def _dw_reducer(pattern, c_out, c_in, small):
    """``reduce(dW, dtheta)``: the dense ``dW (M * Co, N * Ci)`` summed by parameter."""
    m, n = pattern.shape
    n_params = pattern.n_params
    if (c_out, c_in) == (1, 1) and small:
        # one bincount over the entries' positions (a kernel call costs more: 7 against
        # 4 us for 32 x 32)
        params = pattern.params
        # every entry once: dW's own row-major order, no gather of the entries' positions
        positions = None if _complete(pattern) else _cached(
            pattern, "positions", lambda: pattern.rows * n + pattern.cols)

        def by_bincount(dw, dtheta):
            w = dw.reshape(-1) if positions is None else dw.reshape(-1)[positions]
            dtheta.reshape(-1)[:] = np.bincount(params, weights=w, minlength=n_params)
        return by_bincount
    indptr, cols, params = csr_of(pattern)
    work = cols.size * c_out * c_in

    def by_kernel(dw, dtheta):
        dw = dw.reshape(m, c_out, n, c_in)
        nchunks = _chunks(work)
        if nchunks == 1:
            dtheta[...] = 0
            _run(cpu.reduce_dw_rows, dw, indptr, cols, params, dtheta[None], 1, work=work)
        else:
            part = np.zeros((nchunks,) + dtheta.shape, dtype=dtheta.dtype)
            _run(cpu.reduce_dw_rows, dw, indptr, cols, params, part, nchunks, work=work)
            np.sum(part, axis=0, out=dtheta)
    return by_kernel


# ---------------------------------------------------------------------------
# the cost model
# ---------------------------------------------------------------------------
# Rough throughputs of this kind of machine, per core-set: BLAS flops (GEMMs
# by _gemm_time, gather-contract's per-parameter products at _BLAS), fused
# numba multiply-add loops, gathered vector adds (elements), and the Python
# overhead of one call.  Only ratios matter.
#
# How well they choose is measured on three grids of cases, every strategy and
# every (dx, dtheta) pair timed (float32, a 2-core Zen 4): A, 8 patterns x 4
# channel pairs x batches 1-128; B, 8 other patterns, other channels, batches
# 2-256; C, 8 patterns at 16 and 32 channels, batches 3-64.  Cases where the
# choice took 1.25x the best time, A / B / C: 29 / 22 / 16 of 250 / 248 / 140
# before _GEMM_PEAK, _TILE_STEP, _dw_cost and the streamed pair, 17 / 10 / 17
# after, 15 / 10 / 17 with _GEMV; the geometric mean of choice / best 1.079 /
# 1.067 / 1.087 before, 1.042 / 1.025 / 1.068 after, 1.038 / 1.025 / 1.068 with
# _GEMV.  config.planner = "measure" times instead.
_BLAS = 40e9  # per-parameter products of gather-contract
#: OpenBLAS GEMMs (float32, 2 threads, Zen 4) ran at 6-110 GFLOP/s with a smallest side of
#: 16, 37-170 at 64 and 100-190 from 256 up, over 140 shapes: a rate saturating in the
#: smallest side (see :func:`_gemm_time`) fits their middle, where a fixed 40 GFLOP/s with
#: a penalty for thin sides priced w2's dense ``dW`` (1024 x 64 x 1024, about 1 ms) at 3.4
#: ms, which sent that ``dtheta`` to csr's tiles once they were priced right, 2x slower.
_GEMM_PEAK = 120e9
_GEMM_HALF = 64
#: Entries a second of a matrix-vector product (batch 1), measured 13-27 billion.  Grid A's
#: choices are the same for any rate from 5 billion up; the GEMM rate there had made 2 of
#: its 17 choices 1.25x off the best (C_64, 1 -> 8 channels: csr's dx, 50.6 against 25.1
#: us), and grids B and C have no batch of 1.
_GEMV = 14e9
_FUSED = 6e9
_SIMD = 25e9  # explicit-SIMD tiles (csr with channels: Cayley D8, 16 -> 16, batch 64)
_STREAM = 50e9  # a small W streamed over the batch (padded flops; Figure 1, batch 4096)
_ADDS = 1.5e9
_CALL = 4e-6
_ITER = 2e-8  # overhead of one (target, batch) iteration of a fused kernel: dominates at C = 1
#: Seconds per step of csr's ``dtheta`` tiles (one entry and batch element: 4 broadcast
#: channels x 2 vectors, 8 vector FMAs), plus :data:`_CALL` and a copy of the padded tiles
#: (``/ _ADDS``).  Steps measured 1.1-1.5 ns on patterns with many entries per parameter
#: and 2-4 ns with 16 or fewer (batch 4-128); 4 ns chose best on grids A and B, where
#: counting padded flops at ``_SIMD`` had overpriced these tiles 1.0-3.5x.
_TILE_STEP = 4e-9
#: The one-pass complement's fixed cost: derived parameters, checks, the call.  Measured
#: 12.3-13.1 us at batch 1 for S_4 to S_64 up to 8 -> 8 channels; at 7 calls' worth (28
#: us) the cheaper GEMMs of :data:`_GEMM_PEAK` took Deep Sets S_5, 32 -> 32 channels,
#: batch 64, to materialize (45 against 33 us forward).
_ONE_PASS_FIXED = 4 * _CALL


def _gather_cost(plan, nb, c_in, c_out):
    if plan.identity_param >= 0:
        return 2 * nb * plan.nnz * c_in * c_out / _BLAS + _CALL
    if _tiled_sums(c_in, c_out):
        # batch tiles: as the scalar csr kernels, plus each group's sums written and read
        # once more (scalar C_32, batch 1024: 0.3 ms, csr 0.14); every tile computes all
        # its lanes, whatever the batch
        m, n = plan.shape
        lanes = _round_up(nb, cpu.TILE_B)
        return (2 * lanes * (plan.nnz * c_in + 2 * plan.n_groups * c_in * c_out) / (4 * _FUSED)
                + nb * (m * c_out + n * c_in) / _ADDS + _CALL)
    used = int(np.count_nonzero(np.diff(plan.param_ptr)))
    contract = 2 * nb * plan.n_groups * c_in * c_out
    if _blas_contract(plan, c_in, c_out):
        ctime = contract / _BLAS + used * _CALL + nb * plan.n_groups * c_out / _ADDS
    else:  # channels contract on the SIMD tiles (csr_cpu)
        ctime = contract / _SIMD
    iters = nb * (plan.n_groups + plan.shape[0]) * _ITER
    return nb * plan.gather().n_terms * c_in / _ADDS + ctime + iters + 3 * _CALL


def _gemm_time(nb, o, k):
    """A BLAS product of ``nb`` rows with an ``o x k`` matrix (or ``dW``'s ``o x nb x k``):
    its rate rises with its smallest side ``s`` as ``s / (s + _GEMM_HALF)`` of
    :data:`_GEMM_PEAK`."""
    s = min(nb, o, k)
    return 2 * nb * o * k * (s + _GEMM_HALF) / (_GEMM_PEAK * s)


def _product_time(nb, o, k):
    """``nb`` rows times an ``o x k`` matrix: one row is a matrix-vector product, which
    numpy hands to GEMV, streaming the matrix at :data:`_GEMV` entries a second
    (OpenBLAS, 64-1024 x 64-1024: 1.9-38 us, 13-27 billion a second, where the GEMM rate
    of :func:`_gemm_time` priced 1024 x 1024 at 1.1 ms), else :func:`_gemm_time`."""
    return o * k / _GEMV + _CALL / 4 if nb == 1 else _gemm_time(nb, o, k)


def _dw_cost(plan, nb, c_in, c_out, itemsize):
    """``"materialize"``'s ``dtheta``: the dense ``dW`` by BLAS (no ``W``), then reduced by
    parameter, a pass over each entry's ``C_out`` rows of ``C_in`` (D4 on 8 x 8, batch 1,
    1 -> 8 channels: 38 us for the product, 59 for the reduction of 32768 one-element rows,
    where pricing ``dW`` as the forward's ``W``, 37 us in all, made this ``dtheta`` 3.7x
    slower than csr's; with 16 -> 16 channels the same number of entries reduces in about
    0.1 ms)."""
    m, n = plan.shape
    rows = plan.nnz * c_out * -(-c_in // _lanes(itemsize))
    return _gemm_time(nb, m * c_out, n * c_in) + 2 * rows / _ADDS + 2 * _CALL


def _costs(plan, nb, c_in, c_out, itemsize):
    """Estimated seconds of each strategy for one forward-direction multiply."""
    m, n = plan.shape
    cc = c_in * c_out
    dense = m * n * cc
    costs = {}
    if dense * itemsize <= config.max_bytes:
        costs["materialize"] = dense / _ADDS + _product_time(nb, m * c_out, n * c_in) + 2 * _CALL
        if _streams(m, n, nb, c_in, c_out, itemsize):  # output rows padded to vectors
            padded = _round_up(m * c_out, _lanes(itemsize)) * n * c_in
            costs["materialize"] = dense / _ADDS + 2 * nb * padded / _STREAM + _CALL
    if cc == 1:  # scalar: batch-vectorised kernels, after transposing tiles of x and y;
        # every tile computes all its lanes (D4 on 16 x 16 at batch 1: 0.8 ms, materialize 0.15)
        lanes = _round_up(nb, cpu.TILE_B)
        costs["csr"] = 2 * lanes * plan.nnz / (4 * _FUSED) + lanes * (m + n) / _ADDS + _CALL
    else:  # SIMD tiles: 4 batch elements x output channels padded to 2 vectors.  A tail
        # of 1-3 elements takes a whole tile's pass, but charging it so (round_up(nb, 4))
        # moved batch 1 from csr to gather, 3x slower (C_64, 8 -> 8 channels: 45 -> 142
        # us): _SIMD underrates the tiles where theta's loads dominate
        padded = c_in * _round_up(c_out, 2 * _lanes(itemsize))
        costs["csr"] = 2 * nb * plan.nnz * padded / _SIMD + nb * m / 4 * _ITER + _CALL
    costs["gather"] = _gather_cost(plan, nb, c_in, c_out)
    sp = plan.split()
    if _one_pass(sp, nb, nb * n * cc):
        # totals and one multiply-add pass over the rows; output channels padded to vectors;
        # derived parameters, checks and the call: _ONE_PASS_FIXED
        padded = _round_up(c_out, _lanes(itemsize))
        costs["complement"] = (nb * n * (c_in + c_out) / _ADDS + 2 * nb * n * c_in * padded / _SIMD
                               + 2 * nb * sp.n_bases * cc / _FUSED + _ONE_PASS_FIXED)
    elif sp is not None:
        costs["complement"] = (_gather_cost(sp.residual, nb, c_in, c_out)
                               + (nb * n * c_in + sp.u_rows.size * nb * c_out) / _ADDS
                               + 2 * nb * sp.n_bases * cc / _FUSED + nb * m * _ITER
                               + 4 * _CALL)
    else:
        costs["complement"] = costs["gather"]
    zcol, _, gz = plan.zplan()
    costs["scatter"] = (2 * nb * zcol.size * cc / _FUSED + nb * (zcol.size + m) * _ITER
                        + nb * (gz.n_terms * c_out + (zcol.size * c_out if gz.uses_blocks else 0))
                        / _ADDS + 3 * _CALL)
    return costs


def choose(pattern, batch, c_in, c_out, itemsize=8, transposed=False):
    """The cheapest strategy by the cost model, with the estimates (memoised per pattern).

    Returns ``(strategy, costs, dtheta_costs)``: the strategy for the
    multiply, the estimates, and the estimates for ``dtheta`` (no
    ``"scatter"``, which has no ``dtheta`` of its own; ``"materialize"``'s
    and ``"csr"``'s run other kernels than their forwards).
    """
    memo = _plans(pattern).setdefault("choices", {})
    key = _signature(pattern, batch, c_in, c_out, itemsize, transposed)
    hit = memo.get(key)
    if hit is None:
        if len(memo) > 256:  # many batch sizes: keep the memo small
            memo.clear()
        plan = plan_of(pattern, transposed)
        costs = _costs(plan, batch, c_in, c_out, itemsize)
        for_dtheta = {k: v for k, v in costs.items() if k != "scatter"}
        if "materialize" in costs:
            for_dtheta["materialize"] = _dw_cost(plan, batch, c_in, c_out, itemsize)
        for_dtheta["csr"] = _csr_dtheta_cost(plan, batch, c_in, c_out, itemsize)
        hit = memo[key] = (min(costs, key=costs.get), costs, for_dtheta)
    return hit


def _signature(pattern, batch, c_in, c_out, itemsize, transposed=False):
    """What a choice depends on besides the pattern: the sizes, the memory bound, and the
    chunks (threads, when the work passes SERIAL_WORK), which decide whether the one-pass
    complement applies; small work asks numba nothing (get_num_threads costs ~2 us)."""
    n = pattern.shape[0] if transposed else pattern.shape[1]
    return (batch, c_in, c_out, itemsize, transposed, config.max_bytes,
            _chunks(batch * n * c_in * c_out), SERIAL_WORK)


def _measuring():
    """Whether ``config.planner`` asks for measurement (a ValueError for a value that
    names no planner: assigned directly, it is not checked as ``override`` checks it)."""
    if config.planner == "estimate":
        return False
    if config.planner == "measure":
        return True
    raise ValueError(f"config.planner must be one of {config.PLANNERS}, got "
                     f"{config.planner!r}")


def _feeds_backward(pattern, nb, c_in, c_out, itemsize, how):
    """Whether the estimates' forward ``how`` gathers a ``W`` that their backward's ``dx``
    takes again (:func:`_forwards_w`).  The measuring planner keeps such a forward, and
    measures only the ``dtheta`` of that backward: timed alone the forward pays for a
    gather that a training step shares, and on w2 (C_64, 16 -> 16 channels, batch 64) it
    lost to csr's forward in some processes (1.38 against 1.05 ms), after which forward +
    backward took 4.4-6.8 ms against 3.6-3.7."""
    m, n = pattern.shape
    return (how == "materialize" and _keep_w(pattern, c_out, c_in)
            and not _streams(m, n, nb, c_in, c_out, itemsize)
            and _choose_grad(pattern, nb, c_in, c_out, itemsize)[0] == "materialize")


def _measured(pattern, kind, nb, c_in, c_out, dtype, costs, build):
    """``config.planner == "measure"``: the runner :func:`._measure.planned` makes from the
    candidates of ``costs``, each built by ``build``, its choice kept per pattern."""
    memo = _plans(pattern).setdefault("measured", {})
    key = measured_key(pattern, kind, nb, c_in, c_out, dtype.itemsize)
    # a losing "materialize" leaves the W it kept for a backward
    return _measure.planned(memo, key, _measure.candidates(costs), build,
                            settle=lambda: _plans(pattern).pop("last_w", None))


def measured_key(pattern, kind, nb, c_in, c_out, itemsize):
    """Where ``_plans(pattern)["measured"]`` keeps the measured choice of ``kind``
    (``"forward"`` or ``"grad"``): the signature and numba's thread count, always (the
    signature has it only past :data:`SERIAL_WORK`, as ops counts work; csr's kernels
    count theirs otherwise)."""
    return (kind, numba.get_num_threads()) + _signature(pattern, nb, c_in, c_out, itemsize)


def _csr_dtheta_cost(plan, nb, c_in, c_out, itemsize):
    """``"csr"``'s ``dtheta``, which runs other kernels than its forward: scalar, the fused
    pass with ``dx`` (twice the forward's products); with channels, :func:`csr_cpu.csr_dtheta`'s
    tiles of 4 broadcast channels x 2 vectors (see :func:`_csr_dtheta`)."""
    if c_in == c_out == 1:
        m, n = plan.shape
        lanes = _round_up(nb, cpu.TILE_B)
        return 4 * lanes * plan.nnz / (4 * _FUSED) + lanes * (m + n) / _ADDS + _CALL
    lo, hi = min(c_in, c_out), max(c_in, c_out)
    vectors = 2 * _lanes(itemsize)
    tiles = -(-lo // 4) * -(-hi // vectors)
    return (nb * plan.nnz * tiles * _TILE_STEP + plan.n_params * tiles * 4 * vectors / _ADDS
            + _CALL)


def _run_forward(how, pattern, x, theta, y, transposed=False):
    if how == "materialize":
        # the transposed pattern cached: its own plans (csr_of) then persist between calls
        src = _cached(pattern, "transposed", pattern.transpose) if transposed else pattern
        _mat_forward(x, theta, src, y)
    elif how == "csr":
        if transposed:
            _csr_dx(x, theta, pattern, y)
        else:
            _csr_forward(x, theta, pattern, y)
    elif how == "scatter":
        _scatter_forward(plan_of(pattern, transposed), x, theta, y)
    elif how == "complement":
        _complement_forward(plan_of(pattern, transposed), x, theta, y)
    else:
        _gather_forward(plan_of(pattern, transposed), x, theta, y)


def forward(x, theta, pattern, y, method="auto"):
    """Canonical forward: ``x (B, N, Ci)``, ``theta (P, Co, Ci)`` -> ``y (B, M, Co)``."""
    forward_runner(pattern, x.shape[0], x.shape[2], theta.shape[1], x.dtype, method)(x, theta, y)


def forward_runner(pattern, nb, c_in, c_out, dtype, method="auto"):
    """``run(x, theta, y)`` for canonical arrays of these sizes and ``dtype``.

    The strategy, and the set-up the sizes decide, are settled here, so a
    caller that keeps the runner (``ops`` does, per call signature and, for
    work past :data:`SERIAL_WORK`, numba's thread count) pays only for the
    kernels on later calls.
    """
    how = method
    if how == "auto":
        how, costs = choose(pattern, nb, c_in, c_out, dtype.itemsize)[:2]
        if _measuring() and not _feeds_backward(pattern, nb, c_in, c_out, dtype.itemsize,
                                                 how):
            return _measured(pattern, "forward", nb, c_in, c_out, dtype, costs,
                             lambda how: forward_runner(pattern, nb, c_in, c_out, dtype, how))
    if how == "materialize":
        return _materialize_forward(pattern, nb, c_in, c_out, dtype)
    return lambda x, theta, y: _run_forward(how, pattern, x, theta, y)


def grad(dy, x, theta, pattern, dx, dtheta, method="auto"):
    """Canonical backward: fills ``dx (B, N, Ci)`` and ``dtheta (P, Co, Ci)``.

    ``dx`` is the transposed multiply (the planner runs on ``pattern.T``);
    ``dtheta`` a segmented reduction by parameter.
    """
    grad_runner(pattern, x.shape[0], x.shape[2], theta.shape[1], x.dtype, method)(
        dy, x, theta, dx, dtheta)


def grad_runner(pattern, nb, c_in, c_out, dtype, method="auto"):
    """``run(dy, x, theta, dx, dtheta)`` for these sizes: :func:`forward_runner`'s twin."""
    if method != "auto":
        return _pair_runner(pattern, nb, c_in, c_out, dtype, method,
                            "complement" if method == "scatter" else method)
    pairs = _grad_pairs(pattern, nb, c_in, c_out, dtype.itemsize)
    if _measuring():
        if _feeds_backward(pattern, nb, c_in, c_out, dtype.itemsize,
                           choose(pattern, nb, c_in, c_out, dtype.itemsize)[0]):
            # the forward, kept unmeasured, gathers W for this dx: only dtheta is measured
            pairs = {p: c for p, c in pairs.items() if p[0] == "materialize"}
        return _measured(pattern, "grad", nb, c_in, c_out, dtype, pairs,
                         lambda pair: _pair_runner(pattern, nb, c_in, c_out, dtype, *pair))
    return _pair_runner(pattern, nb, c_in, c_out, dtype, *min(pairs, key=pairs.get))


def _pair_runner(pattern, nb, c_in, c_out, dtype, hx, ht):
    """:func:`grad_runner` for ``dx`` by ``hx`` and ``dtheta`` by ``ht``."""
    if hx == ht == "materialize":
        return _materialize_grad(pattern, nb, c_in, c_out, dtype)
    if "materialize" not in (hx, ht) or (ht == "csr" and c_in == c_out == 1):
        # (a scalar csr dtheta is the fused pass, dx included: _run_grad)
        return lambda dy, x, theta, dx, dtheta: _run_grad(hx, ht, pattern, dy, x, theta, dx,
                                                          dtheta)
    # one side materialised: its runner prepared here once, not on every call
    if hx == "materialize":
        transposed = _cached(pattern, "transposed", pattern.transpose)
        dx_run = _materialize_forward(transposed, nb, c_out, c_in, dtype)

        def run(dy, x, theta, dx, dtheta):
            dx_run(dy, np.ascontiguousarray(theta.transpose(0, 2, 1)), dx)
            _run_dtheta(ht, pattern, dy, x, dtheta)
        return run
    dtheta_run = _blas_grad(pattern, nb, c_in, c_out, dtype)

    def run(dy, x, theta, dx, dtheta):
        _run_forward(hx, pattern, dy, np.ascontiguousarray(theta.transpose(0, 2, 1)), dx,
                     transposed=True)
        dtheta_run(dy, x, theta, None, dtheta)
    return run


#: Estimated extra seconds of a backward whose ``dx`` and ``dtheta`` take different
#: strategies: two set-ups instead of one, and none of a pair's sharing (``W`` gathered
#: once, ``dy``'s totals, the fused scalar pass).  Measured: Figure 1 at 8 -> 8 channels,
#: batch 16, 25.5 us against 16.4 for materialize both; the Cayley D8 design, 1 -> 8
#: channels, batch 16, 20.0 against 12.9 for csr both.
_MIXED = 2 * _CALL


def _choose_grad(pattern, nb, c_in, c_out, itemsize):
    """``(dx strategy, dtheta strategy)``: the cheapest of :func:`_grad_pairs`."""
    pairs = _grad_pairs(pattern, nb, c_in, c_out, itemsize)
    return min(pairs, key=pairs.get)


def _grad_pairs(pattern, nb, c_in, c_out, itemsize):
    """``{(dx strategy, dtheta strategy): estimated seconds}``, a pair of one strategy
    (``"scatter"``'s ``dtheta`` is ``"complement"``'s) spared :data:`_MIXED`."""
    dx_costs = choose(pattern, nb, c_out, c_in, itemsize, transposed=True)[1]
    _, fwd_costs, dtheta_costs = choose(pattern, nb, c_in, c_out, itemsize)
    fused = c_in == c_out == 1  # a scalar csr dtheta runs the fused pass, dx included
    pairs = {}
    for hx, cx in dx_costs.items():
        for ht, ct in dtheta_costs.items():
            joint = hx == ht or (hx, ht) == ("scatter", "complement")
            if not (fused and ht == "csr"):
                pairs[hx, ht] = cx + ct + (0.0 if joint else _MIXED)
            elif hx == "csr":  # every (hx, "csr") runs that pass: ("csr", "csr") names it
                pairs[hx, ht] = ct
    m, n = pattern.shape
    if "materialize" in dtheta_costs and _streams(m, n, nb, c_in, c_out, itemsize):
        # one streamed call: W gathered once, dx and dW its two products; priced as two
        # calls it lost to csr's fused pass, 2.0-2.6x slower (scalar C_16 and Figure 1,
        # batch 1-128: 8.4 against 3.3 us at C_16, batch 1)
        pairs["materialize", "materialize"] = (2 * fwd_costs["materialize"]
                                               - m * n * c_in * c_out / _ADDS - _CALL)
    return pairs


def _run_grad(hx, ht, pattern, dy, x, theta, dx, dtheta):
    """Every pair of strategies but materialize for both (see :func:`_pair_runner`)."""
    c_in, c_out = x.shape[2], theta.shape[1]
    if ht == "csr" and c_in == c_out == 1:
        # scalar: dx and dtheta in one fused pass (csr_dtheta's channel tiles would use 1
        # lane of 64), whatever served dx alone
        _scalar_grad(dy, x, theta, pattern, dx, dtheta)
        return
    theta_t = np.ascontiguousarray(theta.transpose(0, 2, 1))
    if hx == ht == "complement":
        dy_tot = _complement_forward(plan_of(pattern, True), dy, theta_t, dx)
        _complement_dtheta(plan_of(pattern), dy, x, dtheta, dy_tot, _dy_blocks(pattern))
        return
    _run_forward(hx, pattern, dy, theta_t, dx, transposed=True)
    _run_dtheta(ht, pattern, dy, x, dtheta)


def _run_dtheta(how, pattern, dy, x, dtheta):
    """``dtheta`` by ``how``; a materialised ``dtheta`` has its runner prepared in
    :func:`_pair_runner` instead."""
    if how == "csr":
        _csr_dtheta(dy, x, pattern, dtheta)
    elif how == "complement":
        _complement_dtheta(plan_of(pattern), dy, x, dtheta)
    else:
        _gather_dtheta(plan_of(pattern), dy, x, dtheta)


def _check_w_bytes(pattern, c_out, c_in, itemsize, what="method='materialize'"):
    m, n = pattern.shape
    need = m * n * c_out * c_in * itemsize
    if need > config.max_bytes:
        raise MemoryError(
            f"{what} needs W of shape ({m * c_out}, {n * c_in}) = {bytes_text(need)}, over "
            f"config.max_bytes = {bytes_text(config.max_bytes)}; pick another method or "
            f"raise the bound with config.override(max_bytes=...)")


def materialize(theta, pattern, out=None):
    """Canonical materialize: ``theta (P, Co, Ci)`` -> ``W (M, Co, N, Ci)``, into ``out``
    (C-contiguous, that shape and ``theta``'s dtype) when given and ``W`` is not small."""
    _, c_out, c_in = theta.shape
    _check_w_bytes(pattern, c_out, c_in, theta.itemsize, "materialize")
    m, n = pattern.shape
    if _small_w(pattern, c_out, c_in) and not pattern.has_multi_edges:
        # a small W: one numpy gather beats a kernel call (11 us -> about 1 us for 5 x 20);
        # np.take along axis 0 copies whole (C_out, C_in) blocks (3.7x faster than
        # theta[params] for 4096 entries of 4 x 3)
        per_entry = np.take(theta, pattern.params, axis=0)
        if _complete(pattern):  # params is the index
            w = per_entry.reshape(m, n, c_out, c_in)
        else:
            w = np.zeros((m, n, c_out, c_in), dtype=theta.dtype)
            w[pattern.rows, pattern.cols] = per_entry
        return np.ascontiguousarray(w.transpose(0, 2, 1, 3)) if (c_out, c_in) != (1, 1) \
            else w.reshape(m, 1, n, 1)
    w = np.empty((m, c_out, n, c_in), dtype=theta.dtype) if out is None else out
    if w.size:
        indptr, cols, params = csr_of(pattern)
        _run(cpu.gather_w, theta, indptr, cols, params, _complete(pattern), w)
    return w


#: ``W`` up to this many entries is gathered with numpy (no kernel call overhead) and its
#: ``dW`` summed by ``bincount``; the backward gathers it again unless :func:`_keep_w`.
_SMALL_W = 1 << 12


def _complete(pattern):
    """Whether every entry of ``W`` holds exactly one edge: the edges, sorted, are then
    ``W``'s row-major order, and ``pattern.params`` indexes ``theta`` into ``W``."""
    return pattern.nnz == pattern.shape[0] * pattern.shape[1] and not pattern.has_multi_edges


def _structural_zeros(pattern):
    """Whether some entry of ``W`` holds no edge."""
    return pattern.n_entries < pattern.shape[0] * pattern.shape[1]


def _small_w(pattern, c_out, c_in):
    """Whether ``W`` with these channels has at most ``_SMALL_W`` entries."""
    return pattern.shape[0] * pattern.shape[1] * c_out * c_in <= _SMALL_W


def _keep_w(pattern, c_out, c_in):
    """Whether the BLAS forward keeps ``W`` for the backward of the same step, which
    takes it after comparing ``theta`` (:func:`_forwards_w`): a large ``W``, or one with
    4 or more entries per parameter, whose ``theta`` compares faster than ``W`` gathers
    (scalar C_64: 64 values' bytes against 4096 gathered, 0.7 against 7.8 us)."""
    return not _small_w(pattern, c_out, c_in) or 4 * pattern.n_params <= pattern.nnz


def cuda_module():
    """The CUDA twin (:mod:`._dispatch_cuda`), imported lazily; a RuntimeError saying how to
    get it when unusable."""
    try:
        from . import _dispatch_cuda
        from ._kernels import cuda as ck
    except ImportError as exc:
        raise cuda_unusable(exc) from None
    ck.require()
    return _dispatch_cuda


def cuda_tied_matmul(x, theta, pattern, out=None, method="auto"):
    return cuda_module().tied_matmul(x, theta, pattern, out=out, method=method)


def cuda_tied_matmul_grad(dy, x, theta, pattern, method="auto"):
    return cuda_module().tied_matmul_grad(dy, x, theta, pattern, method=method)
