"""The CUDA twin of the tied multiply's dispatcher: arrays in, plans, strategy, launches.

Imported by :func:`paramshare_nb._dispatch.cuda_module` only when CUDA is
asked for (``numba.cuda`` costs a noticeable fraction of a second to import,
and the ``numba-cuda`` package is an optional extra).  It takes what the
public wrappers in :mod:`paramshare_nb.ops` pass (numba device arrays,
CuPy or PyTorch arrays, or numpy arrays with ``backend="cuda"``), uploads the
CPU's plans for the pattern once (:class:`~paramshare_nb._dispatch.Plan`,
``Split``, ``GatherPlan``, cached on the pattern per CUDA context), picks a
strategy (:func:`_choose`) and runs it with the kernels and launchers of
:mod:`paramshare_nb._kernels.cuda`, which describes each strategy.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import _dispatch, config
from ._kernels import cuda as ck
from ._kernels import cuda_blas, cuda_memory
from ._layouts import is_cuda_array, nothing_to_sum, out_shape, theta_layout, x_layout
from ._validate import INDEX, refuse_masked

__all__ = ["tied_matmul", "tied_matmul_grad"]


def _as_device(obj, name):
    """A numba device array view of ``obj`` (numpy inputs are copied to the device)."""
    if is_cuda_array(obj):
        if type(obj).__module__.startswith(("numba.cuda.", "numba_cuda.")):
            return obj
        arr = ck.cuda.as_cuda_array(obj)
    else:
        refuse_masked(obj, name)
        try:
            host = np.asarray(obj)
        except ValueError as exc:  # ragged nested lists, mostly
            raise ValueError(f"{name} is ragged or not array-like ({exc}); give an array of "
                             f"equal-length rows") from None
        if host.dtype.kind != "f" or host.dtype.itemsize > 8:
            arr = host  # refused by the dtype check below
        else:
            return ck.cuda.to_device(np.ascontiguousarray(host))
    return arr


def _wrap_like(template, dev):
    """Return ``dev`` in the array family of ``template`` where possible."""
    mod = type(template).__module__.split(".")[0]
    if mod == "torch":
        import torch
        if not template.is_cuda:  # a CPU tensor with backend="cuda": a CPU tensor out
            return torch.from_numpy(dev.copy_to_host())
        return torch.as_tensor(dev, device="cuda")
    if mod == "cupy":
        import cupy
        return cupy.asarray(dev)
    if is_cuda_array(template):
        return dev
    return dev.copy_to_host()  # numpy in, backend="cuda" forced: numpy out


def _index(a):
    return ck.cuda.to_device(np.ascontiguousarray(a, dtype=INDEX))


def _ptr(counts):
    ptr = np.zeros(len(counts) + 1, dtype=INDEX)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def _plan_arrays(plan):
    """Device arrays of one CPU :class:`~paramshare_nb._dispatch.Plan`: the plain group
    sums, the per-row groups for the contraction and the ``dtheta`` chunks."""
    gp = plan.gather()
    # dtheta chunks: each parameter's groups cut into runs of at most CHUNK
    lo, hi, ptr = [], [], [0]
    for p in range(plan.n_params):
        a, z = int(plan.param_ptr[p]), int(plan.param_ptr[p + 1])
        for s in range(a, z, ck.CHUNK):
            lo.append(s)
            hi.append(min(s + ck.CHUNK, z))
        ptr.append(len(lo))
    d = {k: _index(v) for k, v in dict(
        pptr=gp.pptr, plus=gp.plus, row_ptr=plan.row_ptr, row_groups=plan.row_groups,
        gparam=plan.gparam, grow=plan.grow, chunk_lo=lo, chunk_hi=hi, chunk_ptr=ptr).items()}
    d["n_groups"] = plan.n_groups
    d["n_chunks"] = len(lo)
    return d


def _device_cached(pattern, key, build):
    """``_dispatch._cached`` for device arrays: valid only in the CUDA context that made them.

    After ``cuda.close()`` or on another GPU the current context is a different
    object, and the arrays are uploaded again instead of handing ck.kernels stale
    or foreign device pointers.  Holding the context keeps its identity unique.
    """
    plans = _dispatch._plans(pattern)
    ctx = ck.cuda.current_context()
    hit = plans.get(key)
    if hit is None or hit[0] is not ctx:
        hit = plans[key] = (ctx, build())
    return hit[1]


def _device_plan(pattern, transposed):
    """Plan arrays on the device (with the CSR), cached on the pattern beside the CPU plans."""
    key = ("cuda_plan_t" if transposed else "cuda_plan")

    def build():
        d = _plan_arrays(_dispatch.plan_of(pattern, transposed))
        src = pattern.transpose() if transposed else pattern
        d.update(zip(("indptr", "cols", "params"), (_index(a) for a in src.csr())))
        return d
    return _device_cached(pattern, key, build)


def _device_param_major(pattern):
    """The pattern's parameter-major CSR ``(pptr, rows, cols)`` on the device."""
    return _device_cached(pattern, "cuda_param_major", lambda: tuple(
        _index(a) for a in _dispatch.param_major_of(pattern)))


def _longest_param(pattern) -> int:
    """Edges of the parameter with the most: the longest sum of a dtheta reduction (a
    mean would hide one large orbit among many small ones, which a thread per item
    would then add up alone)."""

    def build():
        ptr = _dispatch.param_major_of(pattern)[0]
        return int(np.diff(ptr).max(initial=0))
    return _dispatch._cached(pattern, "longest_param", build)


def _device_gather_plan(gp):
    """A CPU ``GatherPlan``'s arrays on the device (its plain twin added on first use)."""
    d = {k: _index(getattr(gp, k)) for k in
         ("blk_ptr", "blk_cols", "bptr", "blks", "pptr", "plus", "mptr", "minus")}
    d["n_blocks"] = gp.n_blocks
    d["uses_blocks"] = gp.uses_blocks
    d["cpu"] = gp
    return d


def _plain_of(dg):
    if "plain" not in dg:
        dg["plain"] = _device_gather_plan(dg["cpu"].plain())
    return dg["plain"]


def _device_zplan(pattern, transposed):
    """The scatter order's plan (:meth:`Plan.zplan`) on the device."""
    key = "cuda_zplan_t" if transposed else "cuda_zplan"

    def build():
        zcol, zparam, g = _dispatch.plan_of(pattern, transposed).zplan()
        return dict(zcol=_index(zcol), zparam=_index(zparam), n_z=int(zcol.size),
                    g=_device_gather_plan(g))
    return _device_cached(pattern, key, build)


def _device_split(pattern, transposed):
    """The complement split (:class:`Split`) on the device, or None when the CPU has none
    (then ``"complement"`` is ``"gather"``, as on the CPU)."""
    key = "cuda_split_t" if transposed else "cuda_split"

    def build():
        sp = _dispatch.plan_of(pattern, transposed).split()
        if sp is None:
            return False
        npar = _dispatch.plan_of(pattern, transposed).n_params
        # derived parameters' terms grouped by derived parameter (derive theta_d) and by
        # original parameter (map the residual's dtheta back); stable: a fixed order
        by_d = np.argsort(sp.d_idx, kind="stable")
        by_p = np.argsort(sp.p_idx, kind="stable")
        d = {k: _index(v) for k, v in dict(
            blk_ptr=sp.blk_ptr, blk_cols=sp.blk_cols,
            d_ptr=_ptr(np.bincount(sp.d_idx, minlength=sp.n_derived)), d_p=sp.p_idx[by_d],
            p_ptr=_ptr(np.bincount(sp.p_idx, minlength=npar)), p_d=sp.d_idx[by_p],
            base_k=sp.base_k, base_q=sp.base_q, row_ptr=sp.row_ptr, row_u=sp.row_u,
            u_ptr=sp.u_ptr, u_rows=sp.u_rows, q_ptr=sp.q_ptr, q_us=sp.q_us).items()}
        d.update(n_blocks=sp.n_blocks, n_bases=sp.n_bases, n_derived=sp.n_derived,
                 coef_d=sp.coef[by_d], coef_p=sp.coef[by_p], coef={},
                 res=_plan_arrays(sp.residual))
        return d
    hit = _device_cached(pattern, key, build)
    return hit or None


def _coef(ds, dtype):
    """The split's coefficients in ``dtype`` on the device (by derived, by original param)."""
    k = np.dtype(dtype).str
    if k not in ds["coef"]:
        ds["coef"][k] = (ck.cuda.to_device(ds["coef_d"].astype(dtype)),
                         ck.cuda.to_device(ds["coef_p"].astype(dtype)))
    return ds["coef"][k]


def _device_dy_blocks(pattern):
    """:func:`_dispatch._dy_blocks` on the device: forward bases as blocks of ``dy``'s
    totals from the ``dx`` pass, or None."""

    def build():
        hit = _dispatch._dy_blocks(pattern)
        return False if hit is None else tuple(_index(a) for a in hit)
    return _device_cached(pattern, "cuda_dy_blocks", build) or None


#: Multiply-adds (``B nnz C_in C_out``) under which ``"auto"`` keeps ``"csr"`` on CUDA:
#: gather's five more launches cost about 200 us on an H200 host (41 us a launch), in
#: which csr does about 2**25 of them (1.7e11 a second, measured on w2).  Measured with
#: numba-cuda's own launches; packed ones (:mod:`.cuda_launch`) cost 12 us, so the bound
#: is on the high side, not re-measured.
_CSR_BELOW = 2 ** 25


def _choose(pattern, method, work, c_in=1, c_out=1, itemsize=4):
    """The strategy to run for ``work`` multiply-adds of the plain product.

    ``"auto"`` is csr unless rows share parameters (half as many groups as edges or
    fewer) and the work pays for more launches.  Then it is complement sums where the
    pattern has them (Deep Sets on an H200: scatter 1.87 ms, complement 2.25, gather
    4.00, csr 297): ``"scatter"`` sums ``C_out``-wide products and ``"complement"``
    ``C_in``-wide inputs, so the narrower side; else ``"gather"``.  The CPU cost model's
    constants are CPU throughputs (BLAS, fused loops, call overhead), not a GPU's, so it
    is not reused here; every other method runs as asked.

    Where csr would be chosen, cuBLAS is there and ``W`` is dense and within
    ``config.max_bytes``, long csr rows go to ``"materialize"`` (:func:`_blas_pays`).
    """
    if method in ("materialize", "gather", "complement", "scatter", "csr"):
        return method
    if method != "auto":
        raise ValueError(f"method={method!r} is not a tied-multiply strategy; use 'auto', "
                         f"'materialize', 'gather', 'complement', 'scatter' or 'csr'")
    plan = _dispatch.plan_of(pattern)
    if plan.n_groups * 2 > pattern.nnz or work < _CSR_BELOW:
        return "materialize" if _blas_pays(pattern, c_in, c_out, itemsize) else "csr"
    if plan.split() is not None:
        return "scatter" if c_out <= c_in else "complement"
    return "gather"


#: csr's serial terms per output (the longest row's edges x C_in, or a column's x C_out
#: for dx) from which cuBLAS's products on ``W`` take over in ``"auto"``: csr is a thread
#: per output summing its terms one after another, 1024 of them per output of w2.
_LONG_ROWS = 256


def _blas_pays(pattern, c_in, c_out, itemsize) -> bool:
    """Whether ``"auto"`` takes cuBLAS's products on ``W`` over ``"csr"``: cuBLAS usable,
    ``W`` at least half filled and within ``config.max_bytes``, and csr's rows long."""
    m, n = pattern.shape
    if not cuda_blas.available() or 2 * pattern.n_entries < m * n \
            or m * n * c_in * c_out * itemsize > config.max_bytes:
        return False
    longest = _dispatch._cached(pattern, "cuda_longest_rows", lambda: (
        int(np.bincount(pattern.rows, minlength=1).max(initial=0)),
        int(np.bincount(pattern.cols, minlength=1).max(initial=0))))
    return max(longest[0] * c_in, longest[1] * c_out) >= _LONG_ROWS


def _run_gather(dg, src, out, ks):
    """Evaluate a device gather plan batch-major into ``out (B, T, C)``; like the CPU's
    ``GatherPlan.run``, non-finite block totals switch to the plain sums."""
    if dg["uses_blocks"]:
        tot = ck._block_totals(src, dg["blk_ptr"], dg["blk_cols"], dg["n_blocks"], ks)
        if ck._nonfinite(tot, ks):
            dg = _plain_of(dg)
            tot = src  # never read: the plain sums use no block totals
    else:
        tot = src
    ck._launch1(ks, "gather_sums", out.size, src, tot, dg["bptr"], dg["blks"], dg["pptr"],
             dg["plus"], dg["mptr"], dg["minus"], out)


def _scatter_forward(pattern, transposed, x, theta, y, ks):
    """The transposed order: contract each used (column, parameter) pair, then add them
    into the outputs by the gather plan of :meth:`Plan.zplan` (complement sums)."""
    dz = _device_zplan(pattern, transposed)
    z = ck._contract_cols(x, theta, dz["zcol"], dz["zparam"], dz["n_z"], ks)
    _run_gather(dz["g"], z, y, ks)


def _complement_forward(pattern, transposed, x, theta, y, ks):
    """Complement sums into ``y``; returns the block totals of ``x`` (None on fallback).

    Falls back to ``"gather"`` when there is no split, or a block total, ``theta`` or a
    derived parameter is not finite (``total - exceptions`` would turn an ``inf`` into
    ``inf - inf = nan``).
    """
    ds = _device_split(pattern, transposed)
    tot = theta_d = None
    if ds is not None and not ck._nonfinite(theta, ks):
        coef_d, _ = _coef(ds, x.dtype)
        theta_d = cuda_memory.empty((ds["n_derived"],) + tuple(theta.shape[1:]), x.dtype)
        ck._launch1(ks, "combine", theta_d.size, theta, ds["d_ptr"], ds["d_p"], coef_d, theta_d)
        if not ck._nonfinite(theta_d, ks):  # theta_0 - theta_1 can overflow (the CPU's _derived)
            tot = ck._block_totals(x, ds["blk_ptr"], ds["blk_cols"], ds["n_blocks"], ks)
    if tot is None or ck._nonfinite(tot, ks):
        ck._gather_forward(_device_plan(pattern, transposed), x, theta, y, ks)
        return None
    ck._gather_forward(ds["res"], x, theta_d, y, ks)
    u = ck._contract_cols(tot, theta, ds["base_k"], ds["base_q"], ds["n_bases"], ks)
    ck._launch1(ks, "row_sums", y.size, u, ds["row_ptr"], ds["row_u"], y, 1)
    return tot


def _complement_dtheta(pattern, dy, x, dtheta, ks, dy_tot=None):
    """``dtheta`` by complement sums (``dy_tot``: the ``dx`` pass's totals of ``dy``).

    Non-finite block totals of ``x``, or a non-finite result (an inf or nan in ``dy``),
    go through ``"gather"``, as on the CPU.
    """
    dp = _device_plan(pattern, False)
    ds = _device_split(pattern, False)
    tot_x = None
    if ds is not None:
        tot_x = ck._block_totals(x, ds["blk_ptr"], ds["blk_cols"], ds["n_blocks"], ks)
    if tot_x is None or ck._nonfinite(tot_x, ks):
        ck._gather_dtheta(dp, dy, x, dtheta, ks)
        return
    nb, _, c_out = dy.shape
    dd = cuda_memory.empty((ds["n_derived"],) + tuple(dtheta.shape[1:]), x.dtype)
    ck._gather_dtheta(ds["res"], dy, x, dd, ks)
    _, coef_p = _coef(ds, x.dtype)
    ck._launch1(ks, "combine", dtheta.size, dd, ds["p_ptr"], ds["p_d"], coef_p, dtheta)
    # the bases: per base, dy summed over its rows, against the block total of x
    dsum = cuda_memory.empty((nb, ds["n_bases"], c_out), x.dtype)
    blocks = _device_dy_blocks(pattern) if dy_tot is not None else None
    if blocks is not None:
        ck._launch1(ks, "row_sums", dsum.size, dy_tot, blocks[0], blocks[1], dsum, 0)
    else:
        ck._launch1(ks, "row_sums", dsum.size, dy, ds["u_ptr"], ds["u_rows"], dsum, 0)
    ck._reduce(ks, "base_dtheta", dtheta.size, dsum, tot_x, ds["base_k"], ds["q_ptr"],
            ds["q_us"], dtheta)
    if ck._nonfinite(dtheta, ks):  # an inf or nan in dy: redo without the differences
        ck._gather_dtheta(dp, dy, x, dtheta, ks)


def _materialize(pattern, theta, ks):
    """``W (M, Co, N, Ci)`` on the device (its callers check ``config.max_bytes`` first)."""
    m, n = pattern.shape
    _, c_out, c_in = theta.shape
    dp = _device_plan(pattern, False)
    w = cuda_memory.empty((m, c_out, n, c_in), theta.dtype)
    complete = _dispatch._complete(pattern)
    if not complete:
        ck._launch1(ks, "fill_zero", w.size, cuda_memory.view(w, w.size))
    ck._launch1(ks, "scatter_w", m * c_out * c_in, theta, dp["indptr"], dp["cols"], dp["params"],
             int(complete), w)
    return w


def _sparse_input(pattern, a, ks) -> bool:
    """Whether ``W`` has structural zeros and ``a`` an inf or nan: the dense product would
    make their ``0 * inf = nan`` (the CPU's ``_dispatch._finite_or``); ``"csr"`` instead."""
    return _dispatch._structural_zeros(pattern) and ck._nonfinite(a, ks)


def _entry_theta(pattern, theta, ks):
    """:func:`_dispatch.entry_pattern` on the device: the distinct entries as parameters,
    valued by ``W`` (the pattern and ``theta`` themselves without multi-edges)."""
    if not pattern.has_multi_edges:
        return pattern, theta
    entries = _dispatch.entries_of(pattern)
    ptr, params = _device_cached(pattern, "cuda_entries", lambda: (
        _index(np.r_[pattern.entry_starts, pattern.nnz]), _index(pattern.params)))
    theta_e = cuda_memory.empty((entries.n_params,) + tuple(theta.shape[1:]), theta.dtype)
    ck._launch1(ks, "entry_sums", theta_e.size, theta, ptr, params, theta_e)
    return entries, theta_e


def _mat_forward(pattern, x, theta, y, ks):
    # bounded whichever way it runs, as on the CPU (found by a bug hunt: csr skipped it)
    _dispatch._check_w_bytes(pattern, theta.shape[1], theta.shape[2],
                             np.dtype(x.dtype).itemsize, "materialize")
    if _sparse_input(pattern, x, ks):
        entries, theta_e = _entry_theta(pattern, theta, ks)
        _forward(x, theta_e, entries, y, "csr", False, ks)
        return
    nb = x.shape[0]
    w = _materialize(pattern, theta, ks)
    m, c_out, n, c_in = w.shape
    ck._gemm(cuda_memory.view(x, (nb, n * c_in)), cuda_memory.view(w, (m * c_out, n * c_in)),
          cuda_memory.view(y, (nb, m * c_out)), False, True, ks)


def _mat_grad(pattern, dy, x, theta, dx, dtheta, ks):
    """``dx = dy2 @ W2``, ``dW = dy2.T @ x2`` (``W`` and ``dW`` have one size, checked
    against ``config.max_bytes`` before any work), ``dtheta`` from ``dW`` by parameter (one
    block per ``(p, co, ci)``, edges in a fixed order)."""
    nb = x.shape[0]
    m, n = pattern.shape
    _, c_out, c_in = theta.shape
    _dispatch._check_w_bytes(pattern, c_out, c_in, np.dtype(x.dtype).itemsize, "materialize")
    dy2 = cuda_memory.view(dy, (nb, m * c_out))
    x2 = cuda_memory.view(x, (nb, n * c_in))
    if _sparse_input(pattern, dy, ks):
        entries, theta_e = _entry_theta(pattern, theta, ks)
        theta_t = cuda_memory.empty((entries.n_params, c_in, c_out), theta.dtype)
        ck._launch1(ks, "transpose_theta", theta_t.size, theta_e, theta_t)
        _forward(dy, theta_t, entries, dx, "csr", True, ks)
    else:
        w = _materialize(pattern, theta, ks)
        ck._gemm(dy2, cuda_memory.view(w, (m * c_out, n * c_in)),
              cuda_memory.view(dx, (nb, n * c_in)), False, False, ks)
        del w
    dw = cuda_memory.empty((m * c_out, n * c_in), x.dtype)
    ck._gemm(dy2, x2, dw, True, False, ks)
    pptr, prows, pcols = _device_param_major(pattern)
    ck._dtheta_reduce(ks, "reduce_dw", dtheta.size, _longest_param(pattern),
                   cuda_memory.view(dw, (m, c_out, n, c_in)), pptr, prows, pcols, dtheta)


def _forward(x, theta, pattern, y, how, transposed, ks):
    """One multiply by ``how``; returns the block totals of ``x`` when complement sums
    computed them (reused by ``dtheta``), else None."""
    if how == "csr":
        dp = _device_plan(pattern, transposed)
        ck._launch1(ks, "csr_forward", y.size, x, theta, dp["indptr"], dp["cols"], dp["params"],
                 y)
    elif how == "materialize":  # forward only: the gradient has its own (_mat_grad)
        _mat_forward(pattern, x, theta, y, ks)
    elif how == "complement":
        return _complement_forward(pattern, transposed, x, theta, y, ks)
    elif how == "scatter":
        _scatter_forward(pattern, transposed, x, theta, y, ks)
    else:
        ck._gather_forward(_device_plan(pattern, transposed), x, theta, y, ks)
    return None


def _layout(x, theta, pattern, name="x"):
    # plain tuples: some device-array shapes do not take negative indices
    x = SimpleNamespace(shape=tuple(x.shape), ndim=len(x.shape))
    theta = SimpleNamespace(shape=tuple(theta.shape), ndim=len(theta.shape))
    scalar, c_out, c_in = theta_layout(theta, pattern)
    lead = x_layout(x, pattern, scalar, c_in, name)
    return scalar, c_out, c_in, lead, out_shape(lead, pattern, scalar, c_out)


def tied_matmul(x, theta, pattern, out=None, method="auto"):
    """CUDA twin of :func:`paramshare_nb.tied_matmul` (validated arguments, device result)."""
    template = x
    xd, td = _as_device(x, "x"), _as_device(theta, "theta")
    ck._check_float(xd, "x")
    ck._check_float(td, "theta")
    dtype = np.result_type(np.dtype(xd.dtype), np.dtype(td.dtype))
    if dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    scalar, c_out, c_in, lead, shape = _layout(xd, td, pattern)
    b = math.prod(lead)
    how = _choose(pattern, method, b * pattern.nnz * c_in * c_out, c_in, c_out,
                  dtype.itemsize)
    ks = ck.kernels(dtype, ck._tile())
    m, n = pattern.shape
    if out is not None:
        if not is_cuda_array(out):
            raise TypeError(f"out must be a CUDA array when the multiply runs on the GPU (CUDA "
                            f"inputs or backend='cuda'), got {type(out).__name__}; leave out "
                            f"unset to get the result as x's type")
        od = _as_device(out, "out")
        if tuple(od.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(od.shape)}")
        if np.dtype(od.dtype) != dtype:
            raise TypeError(f"out must have dtype {dtype} (the result dtype), got {od.dtype}")
        if not od.is_c_contiguous():
            raise ValueError("out must be C-contiguous on the device; pass a contiguous array "
                             "and copy the result into your view")
    else:
        od = cuda_memory.empty(shape, dtype)
    if od.size:
        if b * n == 0 or nothing_to_sum(pattern, n, c_in):
            ck._launch1(ks, "fill_zero", od.size, cuda_memory.view(od, od.size))
        else:
            xc = ck._canonical(xd, dtype, (b, n, c_in), ks)
            tc = ck._canonical(td, dtype, (pattern.n_params, c_out, c_in), ks)
            # out=x (or theta) in place: "csr" and the GEMM read inputs that other threads
            # have already overwritten; compute into a temporary, as the CPU does
            target = od
            if out is not None and (ck._overlaps(od, xc) or ck._overlaps(od, tc)):
                target = cuda_memory.empty(shape, dtype)
            _forward(xc, tc, pattern, cuda_memory.view(target, (b, m, c_out)), how, False, ks)
            if target is not od:
                ck._launch1(ks, "cast_copy", od.size, cuda_memory.view(target, od.size),
                         cuda_memory.view(od, od.size))
    return out if out is not None else _wrap_like(template, od)


def tied_matmul_grad(dy, x, theta, pattern, method="auto"):
    """CUDA twin of :func:`paramshare_nb.tied_matmul_grad`: ``(dx, dtheta)`` on the device.

    ``"scatter"`` computes ``dx`` in the scatter order and ``dtheta`` by complement sums;
    ``"complement"`` reuses ``dy``'s block totals from ``dx`` in ``dtheta`` where the CPU
    does (:func:`_dispatch._dy_blocks`).
    """
    template = x
    dyd, xd, td = _as_device(dy, "dy"), _as_device(x, "x"), _as_device(theta, "theta")
    for a, name in ((dyd, "dy"), (xd, "x"), (td, "theta")):
        ck._check_float(a, name)
    dtype = np.result_type(np.dtype(dyd.dtype), np.dtype(xd.dtype), np.dtype(td.dtype))
    if dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    scalar, c_out, c_in, lead, shape = _layout(xd, td, pattern)
    if tuple(dyd.shape) != shape:
        raise ValueError(f"dy must have the output's shape {shape} (batch of x, then "
                         f"{'M' if scalar else 'M, C_out'}), got {tuple(dyd.shape)}")
    b = math.prod(lead)
    how = _choose(pattern, method, b * pattern.nnz * c_in * c_out, c_in, c_out,
                  dtype.itemsize)
    ks = ck.kernels(dtype, ck._tile())
    m, n = pattern.shape
    dx = cuda_memory.empty(tuple(xd.shape), dtype)
    dth = cuda_memory.empty(tuple(td.shape), dtype)
    if b == 0 or m == 0 or c_out == 0 or nothing_to_sum(pattern, n, c_in):
        for a in (dx, dth):
            ck._launch1(ks, "fill_zero", a.size, cuda_memory.view(a, a.size))
        return _wrap_like(template, dx), _wrap_like(template, dth)
    dyc = ck._canonical(dyd, dtype, (b, m, c_out), ks)
    xc = ck._canonical(xd, dtype, (b, n, c_in), ks)
    tc = ck._canonical(td, dtype, (pattern.n_params, c_out, c_in), ks)
    dx3 = cuda_memory.view(dx, (b, n, c_in))
    dth3 = cuda_memory.view(dth, (pattern.n_params, c_out, c_in))
    if how == "materialize":
        _mat_grad(pattern, dyc, xc, tc, dx3, dth3, ks)
        return _wrap_like(template, dx), _wrap_like(template, dth)
    if c_in == 1 or c_out == 1:  # (P, a, 1) and (P, 1, a) lie alike in memory
        theta_t = cuda_memory.view(tc, (pattern.n_params, c_in, c_out))
    else:  # an allocation and a launch: 30 + 41 us of numba-cuda's overhead on an H200 host
        theta_t = cuda_memory.empty((pattern.n_params, c_in, c_out), dtype)
        ck._launch1(ks, "transpose_theta", theta_t.size, tc, theta_t)
    dy_tot = _forward(dyc, theta_t, pattern, dx3, how, True, ks)
    if how == "complement":
        _complement_dtheta(pattern, dyc, xc, dth3, ks, dy_tot)
    elif how == "scatter":
        _complement_dtheta(pattern, dyc, xc, dth3, ks)
    elif how == "csr":
        ck._dtheta_reduce(ks, "csr_dtheta", dth3.size, b * _longest_param(pattern),
                       dyc, xc, *_device_param_major(pattern), dth3)
    else:
        ck._gather_dtheta(_device_plan(pattern, False), dyc, xc, dth3, ks)
    return _wrap_like(template, dx), _wrap_like(template, dth)
