"""CUDA twins of the tied multiply (``numba.cuda``), with their host launchers.

Imported lazily by :mod:`paramshare_nb._dispatch` only when CUDA is asked
for: importing ``numba.cuda`` costs a noticeable fraction of a second and
the ``numba-cuda`` package is an optional extra (``paramshare_nb[cuda]``).

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
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .. import config

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
    from .._dispatch import _no_cuda
    if cuda is None:
        raise _no_cuda("numba.cuda cannot be imported")
    try:
        ok = cuda.is_available()
    except Exception as exc:  # pragma: no cover - driver errors vary
        raise _no_cuda(exc) from None
    if not ok:
        raise _no_cuda("no CUDA driver or device was found")


def _tile() -> int:
    """Tile edge: the largest power of two whose square fits ``config.cuda_threads``."""
    t = 1
    while (2 * t) ** 2 <= config.cuda_threads and t < 32:
        t *= 2
    return t


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
            ci = i % nci
            t = i // nci
            b = t % nb
            g = t // nb
            s = zero
            for k in range(pptr[g], pptr[g + 1]):
                s += x[b, plus[k], ci]
            g_sums[g, b, ci] = s
            i += stride

    @cuda.jit
    def contract_tiled(g_sums, theta, row_ptr, row_groups, gparam, y):
        # one block = one output row m, a tile of T batch rows, a tile of T channels
        nb, nm, nco = y.shape
        nci = g_sums.shape[2]
        s_g = cuda.shared.array((T, T), dtype=nbtype)
        s_t = cuda.shared.array((T, T), dtype=nbtype)
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
            ci = i % nci
            t = i // nci
            co = t % nco
            p = t // nco
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
            ci = i % nci
            t = i // nci
            co = t % nco
            p = t // nco
            theta_t[p, ci, co] = theta[p, co, ci]
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

    ks = dict(csr_forward=csr_forward, gather=gather, contract_tiled=contract_tiled,
              dtheta_partial=dtheta_partial, reduce_chunks=reduce_chunks,
              transpose_theta=transpose_theta, cast_copy=cast_copy, fill_zero=fill_zero)
    _KERNELS[key] = ks
    return ks


# ---------------------------------------------------------------------------
# host side: arrays, plans, launches
# ---------------------------------------------------------------------------

def _is_device(obj) -> bool:
    from ..ops import _is_cuda_array
    return _is_cuda_array(obj)


def _as_device(obj, name):
    """A numba device array view of ``obj`` (numpy inputs are copied to the device)."""
    if _is_device(obj):
        if type(obj).__module__.startswith(("numba.cuda.", "numba_cuda.")):
            return obj
        arr = cuda.as_cuda_array(obj)
    else:
        host = np.asarray(obj)
        if host.dtype.kind != "f" or host.dtype.itemsize > 8:
            arr = host  # refused by the dtype check below
        else:
            return cuda.to_device(np.ascontiguousarray(host))
    return arr


def _check_float(arr, name):
    dt = np.dtype(arr.dtype)
    if dt.kind != "f" or dt.itemsize > 8:
        hint = ".astype(np.float32)" if dt.kind in "biu" else ".astype(np.float64)"
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {dt}; "
                        f"convert with {hint}")


def _canonical(arr, dtype, shape, ks):
    """C-contiguous device array of ``dtype`` reshaped to ``shape`` (copies once if needed)."""
    if not arr.is_c_contiguous():
        arr = cuda.to_device(np.ascontiguousarray(arr.copy_to_host()))
    if np.dtype(arr.dtype) != dtype:
        flat = arr.reshape(arr.size)
        out = cuda.device_array(arr.size, dtype=dtype)
        if arr.size:
            ks["cast_copy"][_grid(arr.size, config.cuda_threads), config.cuda_threads](flat, out)
        arr = out
    return arr.reshape(shape)


def _wrap_like(template, dev):
    """Return ``dev`` in the array family of ``template`` where possible."""
    mod = type(template).__module__.split(".")[0]
    if mod == "torch":
        import torch
        return torch.as_tensor(dev, device="cuda")
    if mod == "cupy":
        import cupy
        return cupy.asarray(dev)
    if _is_device(template):
        return dev
    return dev.copy_to_host()  # numpy in, backend="cuda" forced: numpy out


def _device_plan(pattern, transposed):
    """Plan arrays on the device, cached on the pattern beside the CPU plans."""
    from .. import _dispatch
    key = ("cuda_plan_t" if transposed else "cuda_plan")

    def build():
        plan = _dispatch.plan_of(pattern, transposed)
        gp = plan.gather(False)
        # dtheta chunks: each parameter's groups cut into runs of at most CHUNK
        lo, hi, ptr = [], [], [0]
        for p in range(plan.n_params):
            a, z = int(plan.param_ptr[p]), int(plan.param_ptr[p + 1])
            for s in range(a, z, CHUNK):
                lo.append(s)
                hi.append(min(s + CHUNK, z))
            ptr.append(len(lo))
        src = pattern.transpose() if transposed else pattern
        indptr, cols, params = (np.array(a, dtype=INDEX) for a in src.csr())
        d = {k: cuda.to_device(np.ascontiguousarray(v, dtype=INDEX)) for k, v in dict(
            pptr=gp.pptr, plus=gp.plus, row_ptr=plan.row_ptr, row_groups=plan.row_groups,
            gparam=plan.gparam, grow=plan.grow, chunk_lo=np.array(lo, INDEX),
            chunk_hi=np.array(hi, INDEX), chunk_ptr=np.array(ptr, INDEX),
            indptr=indptr, cols=cols, params=params).items()}
        d["n_groups"] = plan.n_groups
        d["n_chunks"] = len(lo)
        return d
    return _dispatch._cached(pattern, key, build)


def _choose(pattern, method):
    if method in ("csr", "gather"):
        return method
    if method != "auto":
        raise ValueError(f"method={method!r} is not implemented on CUDA; use 'auto', 'gather' "
                         f"or 'csr' (every CPU method is available with numpy inputs)")
    from .. import _dispatch
    plan = _dispatch.plan_of(pattern)
    return "gather" if plan.n_groups * 2 <= pattern.nnz else "csr"


def _forward(x, theta, pattern, y, how, transposed, ks):
    dp = _device_plan(pattern, transposed)
    threads = config.cuda_threads
    nb = x.shape[0]
    c_in, c_out = x.shape[2], y.shape[2]
    if how == "csr":
        ks["csr_forward"][_grid(y.size, threads), threads](
            x, theta, dp["indptr"], dp["cols"], dp["params"], y)
        return
    g_sums = cuda.device_array((dp["n_groups"], nb, c_in), dtype=x.dtype)
    if g_sums.size:
        ks["gather"][_grid(g_sums.size, threads), threads](x, dp["pptr"], dp["plus"], g_sums)
    t = _tile()
    work = y.shape[1] * math.ceil(nb / t) * math.ceil(c_out / t)
    ks["contract_tiled"][max(1, min(config.cuda_max_blocks, work)), (t, t)](
        g_sums, theta, dp["row_ptr"], dp["row_groups"], dp["gparam"], y)


def _dtheta(dy, x, pattern, dtheta, ks):
    dp = _device_plan(pattern, False)
    threads = config.cuda_threads
    nb, _, c_in = x.shape
    if dp["n_chunks"] == 0:
        ks["fill_zero"][_grid(dtheta.size, threads), threads](dtheta.reshape(dtheta.size))
        return
    g_sums = cuda.device_array((dp["n_groups"], nb, c_in), dtype=x.dtype)
    ks["gather"][_grid(g_sums.size, threads), threads](x, dp["pptr"], dp["plus"], g_sums)
    partial = cuda.device_array((dp["n_chunks"],) + dtheta.shape[1:], dtype=x.dtype)
    ks["dtheta_partial"][min(config.cuda_max_blocks, dp["n_chunks"]), threads](
        dy, g_sums, dp["chunk_lo"], dp["chunk_hi"], dp["grow"], partial)
    ks["reduce_chunks"][_grid(dtheta.size, threads), threads](partial, dp["chunk_ptr"], dtheta)


def _layout(x, theta, pattern, name="x"):
    from types import SimpleNamespace

    from ..ops import _out_shape, _theta_layout, _x_layout
    # plain tuples: some device-array shapes do not take negative indices
    x = SimpleNamespace(shape=tuple(x.shape), ndim=len(x.shape))
    theta = SimpleNamespace(shape=tuple(theta.shape), ndim=len(theta.shape))
    scalar, c_out, c_in = _theta_layout(theta, pattern)
    lead = _x_layout(x, pattern, scalar, c_in, name)
    return scalar, c_out, c_in, lead, _out_shape(lead, pattern, scalar, c_out)


def tied_matmul(x, theta, pattern, out=None, method="auto"):
    """CUDA twin of :func:`paramshare_nb.tied_matmul` (validated arguments, device result)."""
    template = x
    xd, td = _as_device(x, "x"), _as_device(theta, "theta")
    _check_float(xd, "x")
    _check_float(td, "theta")
    dtype = np.result_type(np.dtype(xd.dtype), np.dtype(td.dtype))
    if dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    scalar, c_out, c_in, lead, shape = _layout(xd, td, pattern)
    how = _choose(pattern, method)
    ks = kernels(dtype, _tile())
    m, n = pattern.shape
    b = math.prod(lead)
    if out is not None:
        if not _is_device(out):
            raise TypeError(f"out must be a CUDA array for CUDA inputs, got {type(out).__name__}")
        od = _as_device(out, "out")
        if tuple(od.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(od.shape)}")
        if np.dtype(od.dtype) != dtype:
            raise TypeError(f"out must have dtype {dtype} (the result dtype), got {od.dtype}")
        if not od.is_c_contiguous():
            raise ValueError("out must be C-contiguous on the device")
    else:
        od = cuda.device_array(shape, dtype=dtype)
    if od.size:
        if b * n == 0 or pattern.nnz == 0:
            ks["fill_zero"][_grid(od.size, config.cuda_threads), config.cuda_threads](
                od.reshape(od.size))
        else:
            xc = _canonical(xd, dtype, (b, n, c_in), ks)
            tc = _canonical(td, dtype, (pattern.n_params, c_out, c_in), ks)
            _forward(xc, tc, pattern, od.reshape(b, m, c_out), how, False, ks)
    return out if out is not None else _wrap_like(template, od)


def tied_matmul_grad(dy, x, theta, pattern, method="auto"):
    """CUDA twin of :func:`paramshare_nb.tied_matmul_grad`: ``(dx, dtheta)`` on the device."""
    template = x
    dyd, xd, td = _as_device(dy, "dy"), _as_device(x, "x"), _as_device(theta, "theta")
    for a, name in ((dyd, "dy"), (xd, "x"), (td, "theta")):
        _check_float(a, name)
    dtype = np.result_type(np.dtype(dyd.dtype), np.dtype(xd.dtype), np.dtype(td.dtype))
    if dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    scalar, c_out, c_in, lead, shape = _layout(xd, td, pattern)
    if tuple(dyd.shape) != shape:
        raise ValueError(f"dy must have the output's shape {shape} (batch of x, then "
                         f"{'M' if scalar else 'M, C_out'}), got {tuple(dyd.shape)}")
    how = _choose(pattern, method)
    ks = kernels(dtype, _tile())
    m, n = pattern.shape
    b = math.prod(lead)
    dx = cuda.device_array(tuple(xd.shape), dtype=dtype)
    dth = cuda.device_array(tuple(td.shape), dtype=dtype)
    threads = config.cuda_threads
    if b == 0 or m == 0 or n == 0:
        for a in (dx, dth):
            if a.size:
                ks["fill_zero"][_grid(a.size, threads), threads](a.reshape(a.size))
        return _wrap_like(template, dx), _wrap_like(template, dth)
    dyc = _canonical(dyd, dtype, (b, m, c_out), ks)
    xc = _canonical(xd, dtype, (b, n, c_in), ks)
    tc = _canonical(td, dtype, (pattern.n_params, c_out, c_in), ks)
    theta_t = cuda.device_array((pattern.n_params, c_in, c_out), dtype=dtype)
    if theta_t.size:
        ks["transpose_theta"][_grid(theta_t.size, threads), threads](tc, theta_t)
    _forward(dyc, theta_t, pattern, dx.reshape(b, n, c_in), how, True, ks)
    _dtheta(dyc, xc, pattern, dth.reshape(pattern.n_params, c_out, c_in), ks)
    return _wrap_like(template, dx), _wrap_like(template, dth)
