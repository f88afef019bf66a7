"""The tied multiply: ``y = W(theta) x`` without ever needing ``W``.

Public, numpy-style wrappers.  They validate every argument (errors name the
argument and the expected shape), resolve the dtype once (float32 stays
float32, float64 stays float64, mixed floats follow numpy's promotion,
float16 computes and returns in float32, integers are refused), copy inputs
only when the layout or dtype requires it (inputs are never modified), reshape
to canonical 3-D arrays and hand them to
:mod:`paramshare_nb._dispatch`, which picks the backend and the strategy.

Shapes, with ``pattern.shape == (M, N)`` and ``P == pattern.n_params``:

====================  ======================  =========================
theta                 x                       y = tied_matmul(x, ...)
====================  ======================  =========================
``(P,)``              ``(..., N)``            ``(..., M)``
``(P, C_out, C_in)``  ``(..., N, C_in)``      ``(..., M, C_out)``
====================  ======================  =========================

``y[..., m, :] = sum_n sum_{p on (m, n)} theta[p] @ x[..., n, :]``: entries
with several parameters (multi-edges) sum them, structural zeros cost
nothing.

Strategies (``method=``; ``"auto"`` lets a cost model pick from the pattern's
statistics, the batch size and the channels, or, under ``config.planner =
"measure"``, times the model's best candidates on a signature's first call;
the forward is planned alone, the backward's ``dx`` (the transposed
multiply, planned on ``pattern.T``) and ``dtheta`` as a pair):

``"materialize"``
    Gather ``W`` (bounded by ``config.max_bytes``) and call BLAS; ``dtheta``
    reduces the dense ``dW`` by parameter.  A small ``W`` with a thin side
    (``M * C_out`` or ``N * C_in`` within 2 SIMD vectors, the other within
    6: Figure 1's 5 x 20) skips BLAS: one call gathers ``W`` and streams the
    batch through SIMD register tiles, and the backward computes ``dx``,
    ``dW`` and ``dtheta`` in one more.
``"gather"``
    Gather-contract: per output row and distinct parameter, sum the inputs
    that share it, then one small product per (row, parameter) group,
    in SIMD register tiles or one BLAS call per parameter across rows.
    With at most 3 channels a side (scalar layers too), each group's sums
    are formed along a tile of 64 batch elements (vectorised) and used at
    once, like the scalar ``"csr"`` kernels.
``"complement"``
    Complement sums: ``W`` = a block-constant base per (row, input block)
    plus a residual tied pattern over derived parameters (differences such as
    ``theta_0 - theta_1``).  Deep Sets costs O(N) per row pair; when the
    residual is one matrix on the diagonal (Deep Sets) the CPU runs the
    block totals, the bases and the diagonal product in one pass per batch
    element, on explicit SIMD register tiles.  Falls back
    to ``"gather"`` when no block is dominated by one parameter, or when a
    block total is not finite (``inf``/``nan`` inputs).  Its rounding error
    scales with the whole block's magnitudes (see ``tied_matmul``'s Notes).
``"scatter"``
    The transposed order: contract each (input, parameter) pair first, then
    scatter-add to the outputs (with complement sums over blocks); its
    ``dtheta`` uses ``"complement"``.
``"csr"``
    One pass over the edges (sparse patterns): with channels, register tiles
    of 4 batch elements x 2 SIMD vectors of output channels; scalar patterns
    use fused, batch-tiled kernels that compute ``dx`` and ``dtheta`` together.

On CUDA every strategy is available, as ``numba.cuda`` kernels over the same
plans (``"gather"`` and ``"scatter"`` contract through shared-memory tiles,
``"materialize"`` gathers ``W`` on the device under the same
``config.max_bytes`` bound and runs a tiled GEMM); there ``"auto"`` picks only
between ``"gather"`` and ``"csr"`` (the cost model is calibrated for CPUs).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _dispatch, config
from ._layouts import is_cuda_array, nothing_to_sum, out_shape, theta_layout, x_layout
from ._validate import refuse_masked
from .patterns import Pattern

__all__ = ["tied_matmul", "tied_matmul_grad", "materialize", "METHODS"]

#: Strategies accepted by ``method=`` (``"auto"`` lets the cost model choose).
METHODS = _dispatch.METHODS


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------

def _check_pattern(pattern) -> Pattern:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a paramshare_nb.Pattern, got {type(pattern).__name__}; "
                        f"build one with ps.dense_pattern(action) or ps.Pattern(shape, rows, "
                        f"cols, params)")
    return pattern


def _check_method(method) -> str:
    if method is None:
        return "auto"
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _as_float(obj, name: str) -> np.ndarray:
    """``obj`` as an ndarray (no copy yet), refusing non-float dtypes."""
    if obj is None:
        raise TypeError(f"{name} must be a float32 or float64 array, got None")
    refuse_masked(obj, name)
    try:
        arr = np.asarray(obj)
    except ValueError as exc:
        raise ValueError(f"{name} is ragged ({exc}); give a rectangular float array") from None
    except RuntimeError as exc:  # PyTorch, for a tensor that requires grad
        raise TypeError(f"{name} would not convert to a numpy array ({exc}); for PyTorch, "
                        f"pass tensor.detach()") from exc
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        hint = ".astype(np.float32)" if arr.dtype.kind in "biu" else ".astype(np.float64)"
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}; "
                        f"convert with {hint}")
    return arr


def _result_dtype(*arrays) -> np.dtype:
    dt = arrays[0].dtype
    same = dt.isnative
    for a in arrays[1:]:  # a loop, not any(generator): this runs on every call
        same = same and a.dtype == dt
    if not same:
        dt = np.result_type(*arrays)  # promotes, and gives native byte order
    return np.dtype(np.float32) if dt.itemsize < 4 else dt  # float16 computes in float32


def _canonical(arr: np.ndarray, dtype, shape) -> np.ndarray:
    """C-contiguous, writeable, ``dtype``, reshaped: one kernel signature per dtype.

    Copies only when needed; kernels never write their inputs.
    """
    flags = arr.flags  # a new object on each access
    if arr.dtype != dtype or not (flags.c_contiguous and flags.writeable):
        arr = np.array(arr, dtype=dtype, order="C", copy=True)
    return arr.reshape(shape)


def _cuda_like(*objs) -> bool:
    # numpy arrays and None (the common case) skip the attribute probes
    for o in objs:
        if o is not None and type(o) is not np.ndarray and is_cuda_array(o):
            return True
    return False


def _check_backend(backend, *objs) -> str:
    if backend is None:
        return "cuda" if _cuda_like(*objs) else "cpu"
    if not isinstance(backend, str) or backend not in ("cpu", "cuda"):  # no == on an array
        raise ValueError(f"backend must be None, 'cpu' or 'cuda', got {backend!r}")
    return backend


# ---------------------------------------------------------------------------
# prepared calls
# ---------------------------------------------------------------------------
# Validation, layouts and the strategy depend only on the shapes, dtypes and
# method of a call (and on SERIAL_WORK, config.max_bytes and, for work split over
# threads, numba's thread count): a call with plain numpy arrays that need no copy
# (backend None or "cpu", as autograd's TiedMatmul passes) is prepared once per such
# signature and replayed, which takes the per-call overhead of a small multiply from
# about 10 us to about 2 (Figure 1's forward).

#: Prepared calls kept per pattern and kind, forward or gradient (each memo is cleared when
#: it grows past this).
_MAX_CALLS = 64


#: Where a pattern keeps its prepared calls, by kind (in its ``__dict__``, which pickling
#: and copying leave out).
_FORWARD_CALLS = "_paramshare_forward_calls"
_GRAD_CALLS = "_paramshare_grad_calls"


def _cpu_backend(backend) -> bool:
    """``backend`` None or ``"cpu"``, the calls that may be replayed (no ``==`` on an
    arbitrary object, which may be an array)."""
    return backend is None or (type(backend) is str and backend == "cpu")


def _ready(a) -> bool:
    """A plain numpy array the kernels can take as it is (C-contiguous, writeable)."""
    if type(a) is not np.ndarray:
        return False
    flags = a.flags  # a new object on each access
    return flags.c_contiguous and flags.writeable


def _remember(pattern, kind, key, work, call):
    """Keep ``call`` for ``key``, with the thread count its chunks were planned for
    (``None`` for work that runs on one thread)."""
    calls = pattern.__dict__.setdefault(kind, {})
    if len(calls) >= _MAX_CALLS:
        calls.clear()
    calls[key] = (call, None if work < _dispatch.SERIAL_WORK else numba.get_num_threads())


def _replay(pattern, kind, key, *arrays):
    """The call kept for ``key``, or ``None``: none kept, an array the kernels cannot take
    as it is (the key fixes type, shape and dtype, not layout), or numba's thread count
    changed.  One function and no helpers: this is the whole cost of a replayed call's
    checks (a C_16 forward at batch 1, one run: 2.3 against 4.6 us for the checks and
    lookup it replaced, on top of the prepared call's 3.2)."""
    calls = pattern.__dict__.get(kind)
    hit = None if calls is None else calls.get(key)
    if hit is None:
        return None
    for a in arrays:
        flags = a.flags  # a new object on each access
        if not (flags.c_contiguous and flags.writeable):
            return None
    if hit[1] is not None and hit[1] != numba.get_num_threads():
        return None
    return hit[0]


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def tied_matmul(x, theta, pattern, *, out=None, method="auto", backend=None):
    """The tied multiply ``y = W(theta) x`` over any leading batch dimensions.

    Parameters
    ----------
    x : array_like of float, shape (..., N) or (..., N, C_in)
        Inputs; ``(..., N)`` with scalar ``theta``, ``(..., N, C_in)`` with
        channel ``theta``.  Any number of leading batch dimensions (also
        none, also empty).  numpy inputs run on the CPU; CUDA arrays (numba
        device arrays, or anything with ``__cuda_array_interface__``) run on
        the GPU and the result stays there.
    theta : array_like of float, shape (P,) or (P, C_out, C_in)
        One scalar or one ``C_out x C_in`` matrix per parameter,
        ``P == pattern.n_params``.
    pattern : Pattern
        The tying pattern, shape ``(M, N)``.
    out : numpy.ndarray or CUDA array, optional
        Where to write the result: shape ``(..., M)`` or ``(..., M, C_out)``,
        the result dtype, writeable.  On the CPU any layout (when it is not
        C-contiguous or overlaps an input the result goes through a
        temporary); on the GPU a C-contiguous device array.
    method : str, optional
        Force a strategy (one of :data:`METHODS`); ``"auto"`` (default) lets
        the cost model choose, or measurement under ``config.planner =
        "measure"``.  Every strategy gives the same result up to
        floating-point reassociation.
    backend : {None, "cpu", "cuda"}, optional
        ``None`` (default) picks ``"cuda"`` for CUDA arrays, else ``"cpu"``.

    Returns
    -------
    ndarray
        ``(..., M)`` or ``(..., M, C_out)``; dtype ``numpy.result_type(x,
        theta)`` (float32 stays float32; float16 computes and returns in
        float32).  ``out`` when given.  Empty sums (``N``, ``C_in``, ``P``
        or ``pattern.nnz`` zero) give zeros.

    Raises
    ------
    TypeError
        Non-float inputs, ``pattern`` not a :class:`Pattern`, ``out`` of the
        wrong type or dtype, a CUDA array that will not share its memory (a
        PyTorch tensor that requires grad: pass ``tensor.detach()``), a numpy
        masked array (its mask would be ignored: pass ``x.filled(0)``).
    ValueError
        Shape or channel mismatch with the pattern; wrong ``out`` shape.
    MemoryError
        ``method="materialize"`` on a pattern whose ``W`` exceeds
        ``config.max_bytes``.
    RuntimeError
        CUDA asked for where it is not usable.

    Notes
    -----
    Accuracy.  ``"gather"``, ``"csr"`` and ``"materialize"`` sum each
    output's own terms, so the forward error is about ``eps`` times the sum
    of ``|W[m, n]| |x[n]|`` over the row's own entries, as for a dense
    product.  ``"complement"`` (and ``"scatter"``, which uses complement
    sums) computes a row as a block total minus the row's exceptions, and
    ``"auto"`` often picks it (Deep Sets: ``theta_1 @ sum_n x_n + (theta_0 -
    theta_1) @ x_m``).  Its forward error is about ``eps`` times the sum of
    ``|x|`` over the *whole block* (times ``|theta|``), like a plain
    summation of the block, rather than over the row's own entries: Deep
    Sets on 64 points in float32 with ``theta_0 = 0``, ``theta_1 = I`` and
    one input of ``1e8`` among ones gives ``56`` instead of ``63`` for the
    row that excludes the large input (``(1e8 + 63) - 1e8``, where float32
    values near ``1e8`` are 8 apart).  When inputs
    span many orders of magnitude use ``method="gather"`` or
    ``"materialize"``, or float64.  ``"gather"`` (and the complement sums)
    add the inputs that share a parameter before multiplying: inputs near
    the dtype's largest value (float32: 3.4e38) whose sum overflows give
    ``inf`` where ``"csr"``, which multiplies first, stays finite.
    Non-finite inputs (``inf``, ``nan``, or a block total that overflows)
    are detected on the block totals, and a non-finite ``theta`` or derived
    parameter (``theta_0 - theta_1`` can overflow) on those small arrays;
    either sends ``"complement"`` and ``"scatter"`` to ``"gather"``, so an
    ``inf`` input gives ``inf`` as the dense product does, not ``inf - inf =
    nan``.  The gradients follow the same rules (``dy`` takes the place of
    ``x``), except that ``dtheta`` of the strategies that sum inputs before
    multiplying (``"gather"``, ``"complement"``, ``"scatter"``) can be
    ``inf`` where the dense product has ``inf - inf = nan``: both
    non-finite, not the same; so can their outputs when ``theta`` itself is
    not finite (``inf * (2 - 1) = inf`` against ``inf * 2 - inf * 1 =
    nan``).  Structural zeros take no part in the sums:
    ``"materialize"``, whose dense ``W`` would make ``0 * inf = nan`` in
    outputs that do not sum the ``inf``, runs ``"csr"`` over ``W``'s stored
    entries instead when ``W`` has structural zeros and the input holds an
    ``inf`` or ``nan`` (each entry valued by the sum of its parameters, so an
    entry ``1 - 2`` times ``inf`` is ``-inf`` as in the dense product).
    ``method="csr"`` itself multiplies a multi-edge's parameters one by one:
    ``inf - 2 inf = nan`` there, and ``"gather"`` adds the inputs of each
    parameter first, with the same effect; ``"auto"`` may choose either, so
    with multi-edges and non-finite inputs it can give ``nan`` where the
    dense product gives ``inf``: force ``"materialize"`` for the dense
    product's values.

    Examples
    --------
    >>> import numpy as np, paramshare_nb as ps
    >>> pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(3)))
    >>> ps.tied_matmul(np.array([1.0, 2.0, 3.0]), np.array([1.0, 10.0]), pat)
    array([51., 42., 33.])
    """
    pattern = _check_pattern(pattern)
    method = _check_method(method)
    key = None
    if (out is None and _cpu_backend(backend) and type(x) is np.ndarray
            and type(theta) is np.ndarray):
        key = (method, x.shape, x.dtype, theta.shape, theta.dtype, _dispatch.SERIAL_WORK,
               config.max_bytes, config.planner)
        call = _replay(pattern, _FORWARD_CALLS, key, x, theta)
        if call is not None:
            return call(x, theta)
    if _check_backend(backend, x, theta, out) == "cuda":
        return _dispatch.cuda_tied_matmul(x, theta, pattern, out=out, method=method)
    x = _as_float(x, "x")
    theta = _as_float(theta, "theta")
    scalar, c_out, c_in = theta_layout(theta, pattern)
    lead = x_layout(x, pattern, scalar, c_in)
    dtype = _result_dtype(x, theta)
    m, n = pattern.shape
    b = math.prod(lead)
    shape = out_shape(lead, pattern, scalar, c_out)
    y = _prepare_out(out, shape, dtype)
    if y.size and nothing_to_sum(pattern, n, c_in):
        y[...] = 0  # an empty sum: no kernel, no cost model (it divides by these sizes)
    elif y.size:
        xc = _canonical(x, dtype, (b, n, c_in))
        tc = _canonical(theta, dtype, (pattern.n_params, c_out, c_in))
        # a subclass (np.matrix, a masked array) goes through a temporary: the kernels take
        # plain arrays, and np.matrix's reshape stays 2-D
        direct = out is None or (type(out) is np.ndarray and out.flags.c_contiguous
                                 and not np.may_share_memory(out, x)
                                 and not np.may_share_memory(out, theta))
        target = y if direct else np.empty(shape, dtype)
        run = _dispatch.forward_runner(pattern, b, c_in, c_out, dtype, method)
        run(xc, tc, target.reshape(b, m, c_out))
        if target is not y:
            y[...] = target
        if key is not None and _ready(x) and _ready(theta) and x.dtype == theta.dtype == dtype:
            _remember(pattern, _FORWARD_CALLS, key, b * m * n * c_in * c_out, _forward_call(
                run, shape, dtype, xc.shape, tc.shape, (b, m, c_out)))
    return y


def _forward_call(run, shape, dtype, x3, theta3, y3):
    # a runner that reshapes x and y itself takes them as they are: 2 fewer calls
    flat = getattr(run, "any_batch_shape", False)

    def call(x, theta):
        y = np.empty(shape, dtype)
        run(x if flat else x.reshape(x3), theta.reshape(theta3), y if flat else y.reshape(y3))
        return y
    return call


def _prepare_out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray for CPU inputs, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        order = (" in native byte order" if out.dtype.kind == dtype.kind
                 and out.dtype.itemsize == dtype.itemsize else "")
        raise TypeError(f"out must have dtype {dtype} (the result dtype){order}, got "
                        f"{out.dtype.str if order else out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only; give a writeable array")
    return out


def tied_matmul_grad(dy, x, theta, pattern, *, method="auto", backend=None):
    """Gradients of ``tied_matmul(x, theta, pattern)`` against an upstream ``dy``.

    Parameters
    ----------
    dy : array_like of float, shape (..., M) or (..., M, C_out)
        Gradient of the loss with respect to the output ``y``.
    x : array_like of float, shape (..., N) or (..., N, C_in)
        The forward inputs (same leading batch shape as ``dy``).
    theta : array_like of float, shape (P,) or (P, C_out, C_in)
        The forward parameters.
    pattern : Pattern
        The tying pattern, shape ``(M, N)``.
    method : str, optional
        Force a strategy (one of :data:`METHODS`) for both gradients;
        ``"auto"`` (default) lets the cost model (or, under
        ``config.planner = "measure"``, measurement) choose.
    backend : {None, "cpu", "cuda"}, optional
        As in :func:`tied_matmul`.

    Returns
    -------
    dx : ndarray
        Shape of ``x``: ``dx[..., n, :] = sum_m W[m, n]^T dy[..., m, :]``,
        the transposed multiply.
    dtheta : ndarray
        Shape of ``theta``: ``dtheta[p] = sum over every entry (m, n) that
        holds ``p`` and every batch element of dy[..., m, :] x[..., n, :]^T``.
        Exactly ``P``-sized; never a dense ``W``-sized gradient.

    Both in ``numpy.result_type(dy, x, theta)`` (float16 computes and
    returns in float32).  Empty sums give zeros.  Accuracy and non-finite
    inputs as in :func:`tied_matmul`'s Notes, with ``dy`` in the role of
    ``x``.

    Raises
    ------
    TypeError, ValueError, RuntimeError
        As in :func:`tied_matmul`; ``dy`` must have the output's shape.
    """
    pattern = _check_pattern(pattern)
    method = _check_method(method)
    key = None
    if (_cpu_backend(backend) and type(dy) is np.ndarray and type(x) is np.ndarray
            and type(theta) is np.ndarray):
        key = (method, dy.shape, dy.dtype, x.shape, x.dtype, theta.shape, theta.dtype,
               _dispatch.SERIAL_WORK, config.max_bytes, config.planner)
        call = _replay(pattern, _GRAD_CALLS, key, dy, x, theta)
        if call is not None:
            return call(dy, x, theta)
    if _check_backend(backend, dy, x, theta) == "cuda":
        return _dispatch.cuda_tied_matmul_grad(dy, x, theta, pattern, method=method)
    dy = _as_float(dy, "dy")
    x = _as_float(x, "x")
    theta = _as_float(theta, "theta")
    scalar, c_out, c_in = theta_layout(theta, pattern)
    lead = x_layout(x, pattern, scalar, c_in)
    shape = out_shape(lead, pattern, scalar, c_out)
    if dy.shape != shape:
        raise ValueError(f"dy must have the output's shape {shape} (batch of x, then "
                         f"{'M' if scalar else 'M, C_out'}), got {dy.shape}")
    dtype = _result_dtype(dy, x, theta)
    m, n = pattern.shape
    b = math.prod(lead)
    dx = np.empty(x.shape, dtype=dtype)
    dtheta = np.empty(theta.shape, dtype=dtype)
    if b == 0 or m == 0 or c_out == 0 or nothing_to_sum(pattern, n, c_in):
        dx[...] = 0
        dtheta[...] = 0
        return dx, dtheta
    dyc = _canonical(dy, dtype, (b, m, c_out))
    xc = _canonical(x, dtype, (b, n, c_in))
    tc = _canonical(theta, dtype, (pattern.n_params, c_out, c_in))
    run = _dispatch.grad_runner(pattern, b, c_in, c_out, dtype, method)
    run(dyc, xc, tc, dx.reshape(b, n, c_in), dtheta.reshape(tc.shape))
    if (key is not None and _ready(dy) and _ready(x) and _ready(theta)
            and dy.dtype == x.dtype == theta.dtype == dtype):  # no copy was made
        _remember(pattern, _GRAD_CALLS, key, b * m * n * c_in * c_out, _grad_call(
            run, dtype, dyc.shape, xc.shape, tc.shape))
    return dx, dtheta


def _grad_call(run, dtype, dy3, x3, theta3):
    flat = getattr(run, "any_batch_shape", False)  # as in _forward_call

    def call(dy, x, theta):
        dx = np.empty(x.shape, dtype)
        dtheta = np.empty(theta.shape, dtype)
        if flat:
            run(dy, x, theta.reshape(theta3), dx, dtheta.reshape(theta3))
        else:
            run(dy.reshape(dy3), x.reshape(x3), theta.reshape(theta3), dx.reshape(x3),
                dtheta.reshape(theta3))
        return dx, dtheta
    return call


def materialize(theta, pattern):
    """The dense weight matrix ``W(theta)`` of a pattern.

    Parameters
    ----------
    theta : array_like of float, shape (P,) or (P, C_out, C_in)
    pattern : Pattern
        Shape ``(M, N)``.

    Returns
    -------
    ndarray
        ``(M, N)`` for scalar ``theta``, ``(M, C_out, N, C_in)`` for channels
        (reshape to ``(M * C_out, N * C_in)`` for a plain matrix); dtype of
        ``theta``, except that float16 computes and returns in float32 (as
        ``tied_matmul`` does; ``Pattern.materialize`` keeps float16).
        Multi-edges are summed.

    Raises
    ------
    MemoryError
        When ``W`` would exceed ``config.max_bytes``.
    """
    pattern = _check_pattern(pattern)
    theta = _as_float(theta, "theta")
    scalar, c_out, c_in = theta_layout(theta, pattern)
    dtype = _result_dtype(theta)
    tc = _canonical(theta, dtype, (pattern.n_params, c_out, c_in))
    w = _dispatch.materialize(tc, pattern)
    m, n = pattern.shape
    return w.reshape(m, n) if scalar else w
