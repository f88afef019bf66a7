"""CUDA twins of the tied multiply's kernels (``numba.cuda``), with their launchers.

Imported lazily, with :mod:`paramshare_nb._dispatch_cuda` (which takes the
caller's arrays, uploads the plans and picks the strategy), only when CUDA
is asked for: importing ``numba.cuda`` costs a noticeable fraction of a
second and the ``numba-cuda`` package is an optional extra
(``paramshare_nb[cuda]``).  Everything here takes device arrays in the
canonical layouts, and device plans as dicts of device arrays.

Canonical device layouts are those of the CPU kernels: ``x (B, N, Ci)``,
``theta (P, Co, Ci)``, ``y (B, M, Co)``, C-contiguous, one float dtype.

- every kernel uses grid-stride loops, so any grid covers any size;
- launch sizes come from :mod:`paramshare_nb.config` (``cuda_threads``,
  ``cuda_max_blocks``), read here in the launchers and never in a kernel;
- kernels are built per (dtype, tile) by a factory so that accumulators start
  from a zero *of the array's dtype* (a bare ``0.0`` puts float64
  instructions into float32 code);
- the contraction is tiled through shared memory (``tile x tile`` threads:
  batch rows x output channels, looping over input-channel tiles);
- ``dtheta`` is a deterministic two-pass reduction: per-block partial sums
  over chunks of one parameter's groups, then a fixed-order sum of the
  chunks.  No atomics, no races.

Every strategy of the CPU has a twin here, built on the CPU's numpy plans
(:class:`~paramshare_nb._dispatch.Plan`, ``Split``, ``GatherPlan``: host
side, cached per pattern) uploaded once per pattern:

``"gather"`` / ``"csr"``
    Group sums then the tiled contraction; or one pass over each row's edges.
``"materialize"``
    ``W (M, Co, N, Ci)`` gathered on the device (bounded by
    ``config.max_bytes`` as on the CPU), then a shared-memory tiled GEMM for
    ``y = x2 @ W2.T``, ``dx = dy2 @ W2`` and ``dW = dy2.T @ x2``;
    ``dtheta`` sums each parameter's edges of ``dW`` in a fixed order (one
    block per ``(p, co, ci)``, its threads' partials added in thread order).
``"complement"``
    Block totals, one small product per (block, parameter) base shared by its
    rows, and the residual pattern through ``"gather"`` over derived
    parameters; ``dtheta`` maps the residual's back by ``coef`` and adds the
    bases' terms.  Non-finite block totals (or ``dtheta``) fall back to
    ``"gather"``, as on the CPU; the finiteness test is a flag set on the
    device and read back (one int).
``"scatter"``
    Contract each used (input column, parameter) pair, then the complement
    gather plan of :meth:`Plan.zplan` adds them into the outputs; ``dtheta``
    by ``"complement"``.
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np

from .. import config
from .._validate import cuda_unusable
from . import cuda_blas, cuda_launch, cuda_memory

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba without its CUDA part
    cuda = None

INDEX = np.int64
#: Groups per partial-sum block in the ``dtheta`` reduction.
CHUNK = 32

_KERNELS: dict = {}


def require():
    """Raise a RuntimeError that says how to get CUDA when it is not usable."""
    if cuda is None:
        raise cuda_unusable("numba.cuda cannot be imported")
    try:
        ok = cuda.is_available()
    except Exception as exc:  # pragma: no cover - driver errors vary
        raise cuda_unusable(exc) from None
    if not ok:
        raise cuda_unusable("no CUDA driver or device was found")
    if config.cuda_threads > 1024:  # PARAMSHARE_CUDA_THREADS reaches here unchecked
        raise ValueError(f"config.cuda_threads must be at most 1024 (CUDA's threads per "
                         f"block), got {config.cuda_threads}; set PARAMSHARE_CUDA_THREADS "
                         f"or config.override(cuda_threads=...) to 1024 or less")
    _check_numpy_compat()


def _check_numpy_compat():
    """Refuse, with the fix, a numba-cuda that cannot compile under this numpy.

    numba-cuda 0.30.4 registers an overload of ``np.row_stack``, which numpy 2.5
    removed; the first kernel compilation then dies with an AttributeError deep in
    numba (seen on a GPU machine with numpy 2.5.2).  Importing that module now turns
    it into an error that says what to install.  The simulator compiles nothing.
    """
    import importlib

    if hasattr(np, "row_stack") or numba.config.ENABLE_CUDASIM:
        return
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    except ImportError:  # another numba-cuda layout: nothing known to fail
        return
    except AttributeError as exc:
        from importlib import metadata
        try:
            have = f"numba-cuda {metadata.version('numba-cuda')}"
        except metadata.PackageNotFoundError:  # a source checkout: no install metadata
            have = "this numba-cuda"
        raise RuntimeError(
            f"{have} cannot compile kernels with numpy {np.__version__} ({exc}); install "
            f"numpy<2.5 (pip install 'numpy<2.5') or a numba-cuda release that supports "
            f"numpy {np.__version__}") from exc


def _tile() -> int:
    """Tile edge: the largest power of two whose square fits ``config.cuda_threads``."""
    t = 1
    while (2 * t) ** 2 <= config.cuda_threads and t < 32:
        t *= 2
    return t


def _jit_for_blocks(threads: int):
    """``cuda.jit`` for kernels always launched with ``threads`` per block: the bound keeps
    each thread's registers within what a block that size may use (for sm_90,
    ``csr_dtheta_split`` took 66 registers unbounded, 52 bounded: a block of 1024 threads
    may have 64 each, so at ``cuda_threads=1024`` it could not launch).  The simulator's
    ``jit`` takes no ``launch_bounds``."""
    if numba.config.ENABLE_CUDASIM:
        return cuda.jit
    return functools.partial(cuda.jit, launch_bounds=threads)


def _grid(work: int, per_block: int) -> int:
    return max(1, min(config.cuda_max_blocks, math.ceil(work / per_block)))


def kernels(dtype, tile):
    """The kernel set for one float dtype and tile size (built once, cached)."""
    key = (np.dtype(dtype).str, tile)
    if key in _KERNELS:
        return _KERNELS[key]
    zero = np.dtype(dtype).type(0)
    nbtype = numba.from_dtype(np.dtype(dtype))
    T = tile
    TP = tile + 1  # padded shared rows
    TT = tile * tile  # threads of a block reduction
    block_jit = _jit_for_blocks(TT)  # kernels launched with TT threads a block, no other

    @cuda.jit(device=True)
    def item_of(w, n1, n2):
        # (i0, i1, i2) of the flat C-order index w into an (N0, n1, n2) array: (p, co, ci)
        # of dtheta's items, (b, m, co) of y's, ...
        r = w // n2
        return r // n1, r % n1, w % n2

    @cuda.jit(device=True)
    def split_item(i, nb):
        # (k, b) with i = k * nb + b: an (edge or base, batch) item, batch fastest
        k = i // nb
        return k, i - k * nb

    @cuda.jit(device=True)
    def next_item(k, b, dk, db, nb):
        # split_item(i + step) from split_item(i) and (dk, db) = split_item(step): a loop
        # steps on without dividing (a 64-bit division is a long software routine on a GPU)
        k += dk
        b += db
        if b >= nb:
            return k + 1, b - nb
        return k, b

    @cuda.jit
    def csr_forward(x, theta, indptr, cols, params, y):
        nb, nm, nco = y.shape
        nci = x.shape[2]
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nb * nm * nco
        while i < total:
            co = i % nco
            t = i // nco
            m = t % nm
            b = t // nm
            s = zero
            for e in range(indptr[m], indptr[m + 1]):
                n = cols[e]
                p = params[e]
                for ci in range(nci):
                    s += theta[p, co, ci] * x[b, n, ci]
            y[b, m, co] = s
            i += stride

    @cuda.jit
    def gather(x, pptr, plus, g_sums):
        ng, nb, nci = g_sums.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = ng * nb * nci
        while i < total:
            g, b, ci = item_of(i, nb, nci)
            s = zero
            for k in range(pptr[g], pptr[g + 1]):
                s += x[b, plus[k], ci]
            g_sums[g, b, ci] = s
            i += stride

    @block_jit
    def contract_tiled(g_sums, theta, row_ptr, row_groups, gparam, y):
        # one block = one output row m, a tile of T batch rows, a tile of T channels
        nb, nm, nco = y.shape
        nci = g_sums.shape[2]
        s_g = cuda.shared.array((T, T), dtype=nbtype)
        # padded: a warp reads s_t[tx, k] down a column, T words apart without the pad
        # (every lane in one bank at T = 32)
        s_t = cuda.shared.array((T, TP), dtype=nbtype)
        tx = cuda.threadIdx.x  # output channel within the tile
        ty = cuda.threadIdx.y  # batch row within the tile
        nbt = (nb + T - 1) // T
        nct = (nco + T - 1) // T
        work = nm * nbt * nct
        w = cuda.blockIdx.x
        while w < work:  # uniform across the block: syncthreads stay convergent
            ct = w % nct
            r = w // nct
            bt = r % nbt
            m = r // nbt
            b = bt * T + ty
            co = ct * T + tx
            acc = zero
            for gi in range(row_ptr[m], row_ptr[m + 1]):
                g = row_groups[gi]
                p = gparam[g]
                for c0 in range(0, nci, T):
                    if b < nb and c0 + tx < nci:
                        s_g[ty, tx] = g_sums[g, b, c0 + tx]
                    else:
                        s_g[ty, tx] = zero
                    if ct * T + ty < nco and c0 + tx < nci:
                        s_t[ty, tx] = theta[p, ct * T + ty, c0 + tx]
                    else:
                        s_t[ty, tx] = zero
                    cuda.syncthreads()
                    for k in range(T):
                        acc += s_g[ty, k] * s_t[tx, k]
                    cuda.syncthreads()
            if b < nb and co < nco:
                y[b, m, co] = acc
            w += cuda.gridDim.x

    @cuda.jit
    def dtheta_partial(dy, g_sums, chunk_lo, chunk_hi, grow, partial):
        # one block = one chunk of one parameter's groups; threads over (co, ci)
        nco = dy.shape[2]
        nci = g_sums.shape[2]
        nb = dy.shape[0]
        nchunk = chunk_lo.shape[0]
        c = cuda.blockIdx.x
        while c < nchunk:
            j = cuda.threadIdx.x
            while j < nco * nci:
                co = j // nci
                ci = j - co * nci
                s = zero
                for g in range(chunk_lo[c], chunk_hi[c]):
                    m = grow[g]
                    for b in range(nb):
                        s += dy[b, m, co] * g_sums[g, b, ci]
                partial[c, co, ci] = s
                j += cuda.blockDim.x
            c += cuda.gridDim.x

    @cuda.jit
    def reduce_chunks(partial, chunk_ptr, dtheta):
        npar, nco, nci = dtheta.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = npar * nco * nci
        while i < total:
            p, co, ci = item_of(i, nco, nci)
            s = zero
            for c in range(chunk_ptr[p], chunk_ptr[p + 1]):
                s += partial[c, co, ci]
            dtheta[p, co, ci] = s
            i += stride

    @cuda.jit
    def transpose_theta(theta, theta_t):
        npar, nco, nci = theta.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < npar * nco * nci:
            p, co, ci = item_of(i, nco, nci)
            theta_t[p, ci, co] = theta[p, co, ci]
            i += stride

    @cuda.jit
    def entry_sums(theta, ptr, params, out):
        # out[u, co, ci] = sum of theta[p, co, ci] over entry u's parameters (edges ptr[u]
        # up to ptr[u + 1]): W's value at the entry, for csr on the distinct entries
        nu, nco, nci = out.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < nu * nco * nci:
            u, co, ci = item_of(i, nco, nci)
            s = zero
            for e in range(ptr[u], ptr[u + 1]):
                s += theta[params[e], co, ci]
            out[u, co, ci] = s
            i += stride

    @cuda.jit
    def cast_copy(src, dst):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < dst.shape[0]:
            dst[i] = src[i]
            i += stride

    @cuda.jit
    def fill_zero(dst):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < dst.shape[0]:
            dst[i] = zero
            i += stride

    # -- materialize: W on the device, a tiled GEMM, dW reduced by parameter --

    @cuda.jit
    def scatter_w(theta, indptr, cols, params, complete, w):
        # w (M, Co, N, Ci); one thread owns w[m, co, :, ci] (multi-edges: no race).  A
        # complete pattern stores every entry once; any other adds into a zeroed w.
        nm, nco, _, nci = w.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nm * nco * nci
        while i < total:
            m, co, ci = item_of(i, nco, nci)
            for e in range(indptr[m], indptr[m + 1]):
                if complete:
                    w[m, co, cols[e], ci] = theta[params[e], co, ci]
                else:
                    w[m, co, cols[e], ci] += theta[params[e], co, ci]
            i += stride

    @block_jit
    def gemm(a, b, c, ta, tb):
        # c (R, S) = op(a) (R, K) @ op(b) (K, S); op(a) = a.T when ta, op(b) = b.T when tb.
        # One block = one T x T tile of c; K is walked in tiles held in shared memory.
        # Transposed operands are read along their contiguous axis with threadIdx.x and
        # stored transposed (rows padded to T + 1: no bank conflicts).
        nr, ns = c.shape
        nk = a.shape[0] if ta else a.shape[1]
        s_a = cuda.shared.array((T, TP), dtype=nbtype)  # s_a[r, k] = op(a)[r0 + r, k0 + k]
        s_b = cuda.shared.array((T, TP), dtype=nbtype)  # s_b[k, s] = op(b)[k0 + k, s0 + s]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        nrt = (nr + T - 1) // T
        nst = (ns + T - 1) // T
        w = cuda.blockIdx.x
        while w < nrt * nst:  # uniform across the block: syncthreads stay convergent
            r0 = (w // nst) * T
            s0 = (w % nst) * T
            acc = zero
            for k0 in range(0, nk, T):
                if ta:
                    r = r0 + tx
                    k = k0 + ty
                    s_a[tx, ty] = a[k, r] if r < nr and k < nk else zero
                else:
                    r = r0 + ty
                    k = k0 + tx
                    s_a[ty, tx] = a[r, k] if r < nr and k < nk else zero
                if tb:
                    s = s0 + ty
                    k = k0 + tx
                    s_b[tx, ty] = b[s, k] if s < ns and k < nk else zero
                else:
                    s = s0 + tx
                    k = k0 + ty
                    s_b[ty, tx] = b[k, s] if s < ns and k < nk else zero
                cuda.syncthreads()
                for kk in range(T):
                    acc += s_a[ty, kk] * s_b[kk, tx]
                cuda.syncthreads()
            if r0 + ty < nr and s0 + tx < ns:
                c[r0 + ty, s0 + tx] = acc
            w += cuda.gridDim.x

    @cuda.jit(device=True)
    def block_total(buf, s, t):
        # The block's partials s summed by a fixed pairwise tree (TT is a power of two):
        # the same order on every run (deterministic, no atomics), log2(TT) barriers
        # rather than TT serial adds by one thread (4 us per item on an H200).  Every
        # thread gets the total; the last barrier lets the block's next item reuse buf.
        buf[t] = s
        cuda.syncthreads()
        half = TT // 2
        while half > 0:
            if t < half:
                buf[t] += buf[t + half]
            cuda.syncthreads()
            half //= 2
        s = buf[0]
        cuda.syncthreads()
        return s

    @cuda.jit(device=True)
    def dw_edges(dw, prows, pcols, lo, hi, step, co, ci):
        # sum of dW[m, co, n, ci] over the parameter-major edges lo, lo + step, ... < hi
        s = zero
        for e in range(lo, hi, step):
            s += dw[prows[e], co, pcols[e], ci]
        return s

    @cuda.jit(device=True)
    def csr_edges(dy, x, prows, pcols, lo, j, stop, step, co, ci):
        # sum of dy[b, m, co] x[b, n, ci] over the (edge, batch) pairs j, j + step, ...
        # < stop of the edges from lo on, batch fastest: the batch is spread over the
        # block too (w4's ten parameters of ten edges each, batch 4096: 0.92 ms on an
        # H200 with one thread per edge walking the batch).  Each edge's products summed,
        # as the CPU's csr does (summing the inputs that share a parameter first can
        # overflow where this stays finite).
        nb = dy.shape[0]
        s = zero
        if j >= stop:
            return s
        k, b = split_item(j, nb)
        dk, db = split_item(step, nb)
        while j < stop:
            e = lo + k
            s += dy[b, prows[e], co] * x[b, pcols[e], ci]
            j += step
            k, b = next_item(k, b, dk, db, nb)
        return s

    @block_jit
    def reduce_dw(dw, pptr, prows, pcols, dtheta):
        # dtheta[p, co, ci] = sum over p's edges (parameter-major CSR) of dW[m, co, n, ci].
        # One block per (p, co, ci): thread t sums edges t, t + TT, ...
        npar, nco, nci = dtheta.shape
        buf = cuda.shared.array(TT, dtype=nbtype)
        t = cuda.threadIdx.x
        w = cuda.blockIdx.x
        while w < npar * nco * nci:  # uniform across the block
            p, co, ci = item_of(w, nco, nci)
            s = dw_edges(dw, prows, pcols, pptr[p] + t, pptr[p + 1], TT, co, ci)
            s = block_total(buf, s, t)
            if t == 0:
                dtheta[p, co, ci] = s
            w += cuda.gridDim.x

    @cuda.jit
    def reduce_dw_items(dw, pptr, prows, pcols, dtheta):
        # reduce_dw with one thread per (p, co, ci), its edges in order: for many items
        # of few edges each, where a block per item would idle and wait at barriers
        npar, nco, nci = dtheta.shape
        w = cuda.grid(1)
        while w < npar * nco * nci:
            p, co, ci = item_of(w, nco, nci)
            dtheta[p, co, ci] = dw_edges(dw, prows, pcols, pptr[p], pptr[p + 1], 1, co, ci)
            w += cuda.gridsize(1)

    @cuda.jit
    def csr_dtheta_items(dy, x, pptr, prows, pcols, dtheta):
        # csr_dtheta with one thread per (p, co, ci), as reduce_dw_items
        npar, nco, nci = dtheta.shape
        w = cuda.grid(1)
        while w < npar * nco * nci:
            p, co, ci = item_of(w, nco, nci)
            lo = pptr[p]
            dtheta[p, co, ci] = csr_edges(dy, x, prows, pcols, lo, 0,
                                          (pptr[p + 1] - lo) * dy.shape[0], 1, co, ci)
            w += cuda.gridsize(1)

    @block_jit
    def csr_dtheta(dy, x, pptr, prows, pcols, dtheta):
        # dtheta[p, co, ci] = sum over p's edges (m, n) of sum_b dy[b, m, co] x[b, n, ci]
        # (csr_edges).  Blocks as reduce_dw.
        npar, nco, nci = dtheta.shape
        buf = cuda.shared.array(TT, dtype=nbtype)
        t = cuda.threadIdx.x
        w = cuda.blockIdx.x
        while w < npar * nco * nci:  # uniform across the block
            p, co, ci = item_of(w, nco, nci)
            lo = pptr[p]
            s = csr_edges(dy, x, prows, pcols, lo, t, (pptr[p + 1] - lo) * dy.shape[0], TT,
                          co, ci)
            s = block_total(buf, s, t)
            if t == 0:
                dtheta[p, co, ci] = s
            w += cuda.gridDim.x

    @block_jit
    def csr_dtheta_split(dy, x, pptr, prows, pcols, partial):
        # csr_dtheta for few items of many terms: partial[k, i] is part k of item i's
        # (edge, batch) pairs, cut in len(partial) equal runs, one block each
        n_split, items = partial.shape
        nco = dy.shape[2]
        nci = x.shape[2]
        buf = cuda.shared.array(TT, dtype=nbtype)
        t = cuda.threadIdx.x
        w = cuda.blockIdx.x
        while w < n_split * items:  # uniform across the block
            k = w // items
            i = w - k * items
            p, co, ci = item_of(i, nco, nci)
            lo = pptr[p]
            total = (pptr[p + 1] - lo) * dy.shape[0]
            run = (total + n_split - 1) // n_split
            stop = min(total, (k + 1) * run)
            s = csr_edges(dy, x, prows, pcols, lo, k * run + t, stop, TT, co, ci)
            s = block_total(buf, s, t)
            if t == 0:
                partial[k, i] = s
            w += cuda.gridDim.x

    @cuda.jit
    def sum_splits(partial, out):
        # out[i] = partial[0, i] + partial[1, i] + ..., in that order
        n_split, items = partial.shape
        i = cuda.grid(1)
        while i < items:
            s = zero
            for k in range(n_split):
                s += partial[k, i]
            out[i] = s
            i += cuda.gridsize(1)

    # -- complement sums and the scatter order --

    @cuda.jit
    def block_totals(src, blk_ptr, blk_cols, tot):
        # tot[b, k, c] = sum over the columns s of block k of src[b, s, c]
        nb, nk, nc = tot.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nb * nk * nc
        while i < total:
            c = i % nc
            t = i // nc
            k = t % nk
            b = t // nk
            s = zero
            for j in range(blk_ptr[k], blk_ptr[k + 1]):
                s += src[b, blk_cols[j], c]
            tot[b, k, c] = s
            i += stride

    @cuda.jit
    def flag_nonfinite(a, flag):
        # flag[0] = 1 when some entry is inf or nan (every writer writes the same 1)
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < a.shape[0]:
            if not math.isfinite(a[i]):
                flag[0] = 1
            i += stride

    @cuda.jit
    def gather_sums(src, tot, bptr, blks, pptr, plus, mptr, minus, out):
        # a gather plan, batch-major out[b, t, c]: block totals + columns - exceptions
        nb, nt, nc = out.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nb * nt * nc
        while i < total:
            c = i % nc
            r = i // nc
            g = r % nt
            b = r // nt
            s = zero
            for j in range(bptr[g], bptr[g + 1]):
                s += tot[b, blks[j], c]
            for j in range(pptr[g], pptr[g + 1]):
                s += src[b, plus[j], c]
            for j in range(mptr[g], mptr[g + 1]):
                s -= src[b, minus[j], c]
            out[b, g, c] = s
            i += stride

    @cuda.jit
    def row_sums(src, ptr, idx, out, accumulate):
        # out[b, t, c] (+)= sum_{j in ptr[t]:ptr[t + 1]} src[b, idx[j], c]
        nb, nt, nc = out.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nb * nt * nc
        while i < total:
            c = i % nc
            r = i // nc
            t = r % nt
            b = r // nt
            s = zero
            for j in range(ptr[t], ptr[t + 1]):
                s += src[b, idx[j], c]
            if accumulate:
                out[b, t, c] += s
            else:
                out[b, t, c] = s
            i += stride

    @cuda.jit
    def combine(theta, ptr, idx, coef, out):
        # out[d] = sum_{j in ptr[d]:ptr[d + 1]} coef[j] * theta[idx[j]]  (fixed order)
        nd, nco, nci = out.shape
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        total = nd * nco * nci
        while i < total:
            d, co, ci = item_of(i, nco, nci)
            s = zero
            for j in range(ptr[d], ptr[d + 1]):
                s += coef[j] * theta[idx[j], co, ci]
            out[d, co, ci] = s
            i += stride

    @block_jit
    def contract_cols(x, theta, zcol, zparam, z):
        # z[b, j] = theta[zparam[j]] @ x[b, zcol[j]]; one block = one column j,
        # a tile of T batch rows and a tile of T output channels
        nb, nz, nco = z.shape
        nci = x.shape[2]
        s_x = cuda.shared.array((T, TP), dtype=nbtype)
        s_t = cuda.shared.array((T, TP), dtype=nbtype)
        tx = cuda.threadIdx.x  # output channel within the tile
        ty = cuda.threadIdx.y  # batch row within the tile
        nbt = (nb + T - 1) // T
        nct = (nco + T - 1) // T
        w = cuda.blockIdx.x
        while w < nz * nbt * nct:  # uniform across the block
            ct = w % nct
            r = w // nct
            bt = r % nbt
            j = r // nbt
            n = zcol[j]
            p = zparam[j]
            b = bt * T + ty
            acc = zero
            for c0 in range(0, nci, T):
                if b < nb and c0 + tx < nci:
                    s_x[ty, tx] = x[b, n, c0 + tx]
                else:
                    s_x[ty, tx] = zero
                if ct * T + ty < nco and c0 + tx < nci:
                    s_t[ty, tx] = theta[p, ct * T + ty, c0 + tx]
                else:
                    s_t[ty, tx] = zero
                cuda.syncthreads()
                for k in range(T):
                    acc += s_x[ty, k] * s_t[tx, k]
                cuda.syncthreads()
            if b < nb and ct * T + tx < nco:
                z[b, j, ct * T + tx] = acc
            w += cuda.gridDim.x

    @block_jit
    def base_dtheta(dsum, tot, base_k, q_ptr, q_us, dtheta):
        # dtheta[q] += sum_{bases j of q} sum_b dsum[b, j] (x) tot[b, k_j].  One block per
        # (q, co, ci): thread t takes the (base, batch) items t, t + TT, ..., and
        # block_total adds the partials (fixed order, no atomics)
        npar, nco, nci = dtheta.shape
        nb = dsum.shape[0]
        buf = cuda.shared.array(TT, dtype=nbtype)
        t = cuda.threadIdx.x
        w = cuda.blockIdx.x
        while w < npar * nco * nci:  # uniform across the block
            q, co, ci = item_of(w, nco, nci)
            s = zero
            items = (q_ptr[q + 1] - q_ptr[q]) * nb
            if t < items:  # (base, batch) items t, t + TT, ...
                k, b = split_item(t, nb)
                dk, db = split_item(TT, nb)
                i = t
                while i < items:
                    j = q_us[q_ptr[q] + k]
                    s += dsum[b, j, co] * tot[b, base_k[j], ci]
                    i += TT
                    k, b = next_item(k, b, dk, db, nb)
            s = block_total(buf, s, t)
            if t == 0 and q_ptr[q + 1] > q_ptr[q]:
                dtheta[q, co, ci] += s
            w += cuda.gridDim.x

    ks = dict(csr_forward=csr_forward, gather=gather, contract_tiled=contract_tiled,
              dtheta_partial=dtheta_partial, reduce_chunks=reduce_chunks,
              transpose_theta=transpose_theta, entry_sums=entry_sums, cast_copy=cast_copy,
              fill_zero=fill_zero,
              scatter_w=scatter_w, gemm=gemm, reduce_dw=reduce_dw, csr_dtheta=csr_dtheta,
              reduce_dw_items=reduce_dw_items, csr_dtheta_items=csr_dtheta_items,
              csr_dtheta_split=csr_dtheta_split, sum_splits=sum_splits,
              block_totals=block_totals,
              flag_nonfinite=flag_nonfinite, gather_sums=gather_sums, row_sums=row_sums,
              combine=combine, contract_cols=contract_cols, base_dtheta=base_dtheta,
              tile=tile)  # the tile these kernels' shared arrays are sized for
    _KERNELS[key] = ks
    return ks


# ---------------------------------------------------------------------------
# launches, and device arrays in the canonical layouts
# ---------------------------------------------------------------------------

def _check_float(arr, name):
    dt = np.dtype(arr.dtype)
    if dt.kind != "f" or dt.itemsize > 8:
        hint = ".astype(np.float32)" if dt.kind in "biu" else ".astype(np.float64)"
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dt}; "
                        f"convert with {hint}")


def _canonical(arr, dtype, shape, ks):
    """C-contiguous device array of ``dtype`` reshaped to ``shape`` (copies once if needed)."""
    if not arr.is_c_contiguous():
        # a device-side strided copy (numba's assignment kernel): no host round trip, and
        # negative strides work (copy_to_host refuses them on a real device).  The key is
        # ``:``, not ``...``: a real device array's indexing takes no Ellipsis (the
        # simulator's numpy does, so only a GPU shows it)
        dense = cuda_memory.empty(arr.shape, arr.dtype)
        if arr.size:
            dense[:] = arr
        arr = dense
    if np.dtype(arr.dtype) != dtype:
        flat = cuda_memory.view(arr, arr.size)
        out = cuda_memory.empty(arr.size, dtype)
        if arr.size:
            _launch(ks, "cast_copy", _grid(arr.size, config.cuda_threads),
                    config.cuda_threads, flat, out)
        arr = out
    return cuda_memory.view(arr, shape)


def _overlaps(a, b) -> bool:
    """Whether the device arrays ``a`` and ``b`` may share memory (their byte spans meet)."""
    if a.size == 0 or b.size == 0:
        return False
    if hasattr(a, "_ary") and hasattr(b, "_ary"):  # the simulator: numpy arrays inside
        return bool(np.may_share_memory(a._ary, b._ary))

    def span(d):
        lo = hi = int(d.device_ctypes_pointer.value or 0)
        for size, stride in zip(d.shape, d.strides):
            lo += min(0, (size - 1) * stride)
            hi += max(0, (size - 1) * stride)
        return lo, hi + np.dtype(d.dtype).itemsize
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _launch(ks, name, grid, block, *args):
    """Every launch: the kernel ``name`` of the set ``ks`` on ``grid x block`` threads."""
    cuda_launch.launch(ks[name], grid, block, *args)


def _launch1(ks, name, size, *args):
    """A 1-D grid-stride launch over ``size`` work items (nothing when empty)."""
    if size:
        threads = config.cuda_threads
        _launch(ks, name, _grid(size, threads), threads, *args)


def _tiled(ks, name, work, *args):
    """A launch of a shared-memory tiled kernel: ``work`` tile-blocks, ``tile x tile`` threads
    (the tile the set was built for, never ``config``'s again: another thread's
    ``config.override(cuda_threads=...)`` in between would launch blocks that overrun the
    shared arrays, or leave them partly unwritten)."""
    if work:
        t = ks["tile"]
        _launch(ks, name, max(1, min(config.cuda_max_blocks, work)), (t, t), *args)


def _reduce(ks, name, items, *args):
    """A launch of a block-reduction kernel: one block of ``tile**2`` threads per item (the
    set's tile, as in :func:`_tiled`)."""
    if items:
        t = ks["tile"]
        _launch(ks, name, max(1, min(config.cuda_max_blocks, items)), t * t, *args)


def _dtheta_reduce(ks, name, items, work, *args):
    """``name`` (``reduce_dw`` or ``csr_dtheta``) over ``items`` outputs of at most
    ``work`` terms each: a block per item, or its ``_items`` twin, a thread per item,
    where that has the shorter critical path (:func:`_thread_per_item`); csr's items,
    when too few to fill the device, split over several blocks each (:func:`_splits`).
    The choice, and so the order of the sums, can differ between GPUs (it counts their
    threads); on one device it is the same on every run."""
    if _thread_per_item(items, work, ks["tile"]):
        _launch1(ks, name + "_items", items, *args)
        return
    n_split = _splits(items, work, ks["tile"]) if name == "csr_dtheta" else 1
    if n_split == 1:
        _reduce(ks, name, items, *args)
        return
    *inputs, dtheta = args
    partial = cuda_memory.empty((n_split, items), dtheta.dtype)
    _reduce(ks, "csr_dtheta_split", n_split * items, *inputs, partial)
    _launch1(ks, "sum_splits", items, partial, cuda_memory.view(dtheta, items))


def _splits(items, work, tile) -> int:
    """Blocks per item for ``items`` block sums of ``work`` terms: enough to fill the
    device's resident blocks, each block keeping at least 8 terms a thread (w4 on an
    H200: 10 parameters of 40960 terms, 78 us in 10 blocks)."""
    tt = tile ** 2
    at_once = max(1, min(config.cuda_max_blocks, _resident_threads() // tt))
    if items >= at_once:
        return 1
    return max(1, min(math.ceil(at_once / items), work // (8 * tt)))


def _thread_per_item(items, work, tile) -> bool:
    """Whether ``items`` sums of ``work`` terms each finish sooner a thread per item.

    Counted in steps of one term per thread, with the device's resident threads
    (multiprocessors x threads each) as the width: a block of ``TT`` threads per item
    takes ``work / TT`` steps plus its tree's ``2 log2 TT`` barrier steps, with
    ``resident / TT`` items at once (at most ``cuda_max_blocks``); a thread per item
    takes ``work`` steps, ``resident`` items at once.  Many short sums (D4 on an image:
    528K items of 512 terms) go a thread each; few long ones (Deep Sets: 2K items of
    8M terms) a block each.
    """
    tt = tile ** 2
    resident = _resident_threads()
    at_once = max(1, min(config.cuda_max_blocks, resident // tt))
    by_block = math.ceil(items / at_once) * (math.ceil(work / tt) + 2 * int(math.log2(tt)))
    by_thread = math.ceil(items / resident) * work
    return by_thread <= by_block


def _resident_threads() -> int:
    """Threads the current device holds at once (the simulator's: an H100-sized guess);
    kept per context (asking the device cost 12 us on an H200 host)."""
    key, _ = cuda_launch.current_context()  # 0: no context current, nothing kept
    hit = _RESIDENT.get(key) if key != 0 else None
    if hit is None:
        dev = cuda.get_current_device()
        sms = getattr(dev, "MULTIPROCESSOR_COUNT", 132)
        hit = sms * getattr(dev, "MAX_THREADS_PER_MULTIPROCESSOR", 2048)
        if key != 0:
            _RESIDENT[key] = hit
    return hit


_RESIDENT: dict = {}


def _nonfinite(a, ks) -> bool:
    """Whether the device array ``a`` holds an inf or a nan (one int comes back)."""
    if a.size == 0:
        return False
    flag = _flag()
    flag[0] = 0
    _launch1(ks, "flag_nonfinite", a.size, cuda_memory.view(a, a.size), flag)
    cuda.synchronize()
    return bool(flag[0])


_FLAGS = threading.local()


def _flag():
    """A pinned host int mapped into the device, one per thread and context.

    The kernel writes it in place and the host reads it after a synchronize: no upload
    and no copy back (uploading a fresh zero cost 120 us on an H200 host, more than
    the launch).  Per thread, so two threads' checks never share it.
    """
    ctx = cuda.current_context()
    hit = getattr(_FLAGS, "hit", None)
    if hit is None or hit[0] is not ctx:
        hit = _FLAGS.hit = (ctx, cuda.mapped_array(1, np.int32))
    return hit[1]


def _gather_forward(dp, x, theta, y, ks):
    """Plain group sums of ``x``, then the tiled contraction into ``y``."""
    nb, _, c_in = x.shape
    g_sums = cuda_memory.empty((dp["n_groups"], nb, c_in), x.dtype)
    _launch1(ks, "gather", g_sums.size, x, dp["pptr"], dp["plus"], g_sums)
    t = ks["tile"]
    _tiled(ks, "contract_tiled", y.shape[1] * math.ceil(nb / t) * math.ceil(y.shape[2] / t),
           g_sums, theta, dp["row_ptr"], dp["row_groups"], dp["gparam"], y)


def _gather_dtheta(dp, dy, x, dtheta, ks):
    """``dtheta`` by group sums: chunked partial sums, then a fixed-order sum of chunks."""
    nb, _, c_in = x.shape
    if dp["n_chunks"] == 0:
        _launch1(ks, "fill_zero", dtheta.size, cuda_memory.view(dtheta, dtheta.size))
        return
    g_sums = cuda_memory.empty((dp["n_groups"], nb, c_in), x.dtype)
    _launch1(ks, "gather", g_sums.size, x, dp["pptr"], dp["plus"], g_sums)
    partial = cuda_memory.empty((dp["n_chunks"],) + dtheta.shape[1:], x.dtype)
    _launch(ks, "dtheta_partial", min(config.cuda_max_blocks, dp["n_chunks"]),
            config.cuda_threads, dy, g_sums, dp["chunk_lo"], dp["chunk_hi"], dp["grow"], partial)
    _launch1(ks, "reduce_chunks", dtheta.size, partial, dp["chunk_ptr"], dtheta)


def _block_totals(src, blk_ptr, blk_cols, n_blocks, ks):
    nb, _, nc = src.shape
    tot = cuda_memory.empty((nb, n_blocks, nc), src.dtype)
    _launch1(ks, "block_totals", tot.size, src, blk_ptr, blk_cols, tot)
    return tot


def _contract_cols(x, theta, zcol, zparam, n_z, ks):
    """``z[b, j] = theta[zparam[j]] @ x[b, zcol[j]]``, ``z (B, n_z, Co)``."""
    nb = x.shape[0]
    z = cuda_memory.empty((nb, n_z, theta.shape[1]), x.dtype)
    t = ks["tile"]
    _tiled(ks, "contract_cols", n_z * math.ceil(nb / t) * math.ceil(theta.shape[1] / t),
           x, theta, zcol, zparam, z)
    return z


def _gemm(a, b, c, ta, tb, ks):
    """``c = op(a) @ op(b)`` (``op`` transposes when ``ta``/``tb``): cuBLAS where CuPy is
    installed (:mod:`.cuda_blas`), else the tiled numba kernel."""
    if cuda_blas.gemm(a, b, c, ta, tb):
        return
    t = ks["tile"]
    _tiled(ks, "gemm", math.ceil(c.shape[0] / t) * math.ceil(c.shape[1] / t),
           a, b, c, int(ta), int(tb))
