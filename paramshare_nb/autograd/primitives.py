"""The differentiable primitives: each a short :class:`Function`.

Elementwise and shape primitives compute with numpy; :class:`TiedMatmul`
dispatches through :mod:`paramshare_nb.ops`, so it runs on whatever backend
the data lives on (numpy on the CPU, CUDA device arrays on the GPU).  Given
CUDA data, the other primitives run on host copies and hand back device
arrays (:attr:`Function.native_cuda`): correct and unchanged user code, with
a transfer per op until they get CUDA kernels of their own.
"""

from __future__ import annotations

import numpy as np

from .function import Function, is_cuda_array

__all__ = [
    "unbroadcast",
    "Add", "Sub", "Mul", "Div", "Neg", "Pow", "MatMul",
    "Sum", "Mean", "Max", "Reshape", "Transpose", "Concat", "GetItem",
    "Exp", "Log", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU",
    "Softmax", "LogSoftmax", "SegmentReduce", "TiedMatmul",
]


def unbroadcast(grad: np.ndarray, shape) -> np.ndarray:
    """Sum ``grad`` down to ``shape``, undoing numpy broadcasting.

    Parameters
    ----------
    grad : numpy.ndarray
        Gradient with the broadcast (output) shape.
    shape : tuple of int
        Shape of the input that was broadcast.

    Returns
    -------
    numpy.ndarray
        Of shape ``shape``.
    """
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _host(op: str, *arrays) -> None:
    # Function.apply hands non-native primitives host copies; this guards direct calls.
    for a in arrays:
        if is_cuda_array(a):
            raise RuntimeError(f"{op}: this primitive computes on numpy (CPU) arrays; call it "
                               f"through Function.apply, which stages CUDA data via the host")


# -- arithmetic ---------------------------------------------------------------------------
class Add(Function):
    """``a + b`` with broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        _host("add", a, b)
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(g, ctx.shapes[1])


class Sub(Function):
    """``a - b`` with broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        _host("sub", a, b)
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(-g, ctx.shapes[1])


class Mul(Function):
    """``a * b`` with broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        _host("mul", a, b)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    """``a / b`` with broadcasting."""

    @staticmethod
    def forward(ctx, a, b):
        _host("div", a, b)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    """``-a``."""

    @staticmethod
    def forward(ctx, a):
        _host("neg", a)
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    """``a ** p`` for a constant exponent ``p``."""

    @staticmethod
    def forward(ctx, a, p):
        _host("pow", a)
        ctx.save_for_backward(a)
        ctx.p = p
        # a float keeps its dtype; an integer base promotes as numpy does (4 ** 0.5 = 2.0)
        return a ** (a.dtype.type(p) if a.dtype.kind == "f" else p)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = a.dtype.type(ctx.p)
        if p == 0:  # d/da a**0 = 0 everywhere (p * a**-1 would be 0 * inf = nan at a = 0)
            return (np.zeros(np.broadcast_shapes(np.shape(g), a.shape),
                             dtype=np.result_type(g, a)),)
        if p == 1:  # d/da a = 1 (no a**0 needed)
            return (g * np.ones_like(a),)
        if p == 2:
            return (g * (p * a),)
        return (g * (p * a ** (p - 1)),)


class MatMul(Function):
    """``a @ b`` for arrays of two or more dimensions (batch dims broadcast)."""

    @staticmethod
    def forward(ctx, a, b):
        _host("matmul", a, b)
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul: operands need at least 2 dimensions, got shapes {a.shape} "
                             f"and {b.shape}; reshape 1-D operands first")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                             f"({a.shape[-1]} != {b.shape[-2]})")
        ctx.save_for_backward(a, b)
        return _c(a) @ _c(b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = _c(g)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g @ _c(np.swapaxes(b, -1, -2)), a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(_c(np.swapaxes(a, -1, -2)) @ g, b.shape)
        return ga, gb


def _c(a):
    # numpy's matmul is much slower on strided (e.g. transposed) float32 operands
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# -- reductions ---------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if _is_int(axis):
        axis = (int(axis),)
    elif not (isinstance(axis, (tuple, list)) and all(_is_int(ax) for ax in axis)):
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
    out = []
    for ax in axis:
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for an array of {ndim} dimensions")
        out.append(ax % ndim)
    if len(set(out)) != len(out):  # numpy refuses (1, -1) on 2-D too
        raise ValueError(f"axis {tuple(axis)} repeats an axis")
    return tuple(sorted(out))


def _expand(g, shape, axes, keepdims):
    """``g`` broadcast back over the reduced axes: a fresh C-contiguous array of ``shape``
    (also 0-d, which ``np.ascontiguousarray`` would make 1-d)."""
    if not keepdims:  # the reduced axes back as ones (one reshape, not an expand_dims each)
        g = g.reshape(tuple(1 if ax in axes else n for ax, n in enumerate(shape)))
    return np.broadcast_to(g, shape).copy()


class Sum(Function):
    """Sum over ``axis`` (``None``: all)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        _host("sum", a)
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _norm_axes(axis, a.ndim), keepdims
        return np.asarray(a.sum(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return (_expand(g, ctx.shape, ctx.axes, ctx.keepdims),)


class Mean(Function):
    """Mean over ``axis`` (``None``: all)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        _host("mean", a)
        ctx.shape, ctx.axes, ctx.keepdims = a.shape, _norm_axes(axis, a.ndim), keepdims
        ctx.count = int(np.prod([a.shape[ax] for ax in ctx.axes]))
        return np.asarray(a.mean(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        g = g / g.dtype.type(ctx.count)
        return (_expand(g, ctx.shape, ctx.axes, ctx.keepdims),)


class Max(Function):
    """Maximum over ``axis``; ties share the gradient equally."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        _host("max", a)
        axes = _norm_axes(axis, a.ndim)
        out = a.max(axis=axes, keepdims=True)
        mask = (a == out)
        ctx.mask = mask / mask.sum(axis=axes, keepdims=True).astype(a.dtype)
        ctx.kept_shape = out.shape
        return np.asarray(out if keepdims else out.reshape(
            [s for i, s in enumerate(a.shape) if i not in axes]))

    @staticmethod
    def backward(ctx, g):
        return (ctx.mask * g.reshape(ctx.kept_shape),)


# -- shapes -------------------------------------------------------------------------------
class Reshape(Function):
    """Reshape (a copy-free view where numpy allows)."""

    @staticmethod
    def forward(ctx, a, shape):
        _host("reshape", a)
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape an array of shape {a.shape} into "
                             f"{tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Transpose(Function):
    """Permute axes (``None``: reverse them)."""

    @staticmethod
    def forward(ctx, a, axes=None):
        _host("transpose", a)
        axes = tuple(range(a.ndim))[::-1] if axes is None else tuple(int(x) for x in axes)
        if sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of "
                             f"0..{a.ndim - 1}")
        ctx.inv = tuple(np.argsort([ax % a.ndim for ax in axes]))
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        return (np.transpose(g, ctx.inv),)


class Concat(Function):
    """Join tensors along ``axis``."""

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        _host("concat", *arrays)
        try:
            out = np.concatenate(arrays, axis=axis)
        except (ValueError, np.exceptions.AxisError) as exc:  # shapes, axis, 0-d inputs
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"concat: cannot join shapes {shapes} along axis {axis} "
                             f"({exc})") from None
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return out

    @staticmethod
    def backward(ctx, g):
        splits = np.cumsum(ctx.sizes)[:-1]
        return tuple(np.split(g, splits, axis=ctx.axis))


def _freeze_index(index):
    """Copy the mutable parts (arrays, lists; also inside tuples) of an index."""
    if isinstance(index, tuple):
        return tuple(_freeze_index(i) for i in index)
    if isinstance(index, list):
        return [_freeze_index(i) for i in index]
    if isinstance(index, np.ndarray):
        return index.copy()
    if hasattr(index, "numpy") and callable(index.numpy):  # a Tensor inside a tuple
        return np.array(index.numpy(), copy=True)
    return index


class GetItem(Function):
    """Indexing ``a[index]`` (basic or fancy); repeated indices sum their gradients."""

    @staticmethod
    def forward(ctx, a, index):
        _host("getitem", a)
        # a private copy: the caller may change its index array before backward
        index = _freeze_index(index)
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return np.asarray(a[index])

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=g.dtype)
        np.add.at(out, ctx.index, g)
        return (out,)


# -- elementwise --------------------------------------------------------------------------
class Exp(Function):
    """``exp(a)``."""

    @staticmethod
    def forward(ctx, a):
        _host("exp", a)
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.saved_tensors[0],)


class Log(Function):
    """Natural logarithm."""

    @staticmethod
    def forward(ctx, a):
        _host("log", a)
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        return (g / ctx.saved_tensors[0],)


class ReLU(Function):
    """``max(a, 0)``."""

    @staticmethod
    def forward(ctx, a):
        _host("relu", a)
        ctx.mask = a > 0
        return np.where(ctx.mask, a, a.dtype.type(0))

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.mask,)


class LeakyReLU(Function):
    """``a`` where positive, ``slope * a`` elsewhere."""

    @staticmethod
    def forward(ctx, a, slope=0.01):
        _host("leaky_relu", a)
        ctx.mask = a > 0
        ctx.slope = a.dtype.type(slope)
        return np.where(ctx.mask, a, a * ctx.slope)

    @staticmethod
    def backward(ctx, g):
        return (np.where(ctx.mask, g, g * ctx.slope),)


class Tanh(Function):
    """Hyperbolic tangent."""

    @staticmethod
    def forward(ctx, a):
        _host("tanh", a)
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return (g * (1 - t * t),)


def _sigmoid(a):
    # stable for large |a|, dtype-preserving
    e = np.exp(-np.abs(a))
    one = a.dtype.type(1)
    return np.where(a >= 0, one / (one + e), e / (one + e))


class Sigmoid(Function):
    """Logistic function ``1 / (1 + exp(-a))``."""

    @staticmethod
    def forward(ctx, a):
        _host("sigmoid", a)
        out = _sigmoid(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return (g * s * (1 - s),)


class GELU(Function):
    """Gaussian error linear unit (exact, erf form): ``a * Phi(a)``."""

    @staticmethod
    def forward(ctx, a):
        _host("gelu", a)
        ctx.save_for_backward(a)
        half = a.dtype.type(0.5)
        from scipy.special import erf  # lazy: scipy.special costs 0.2 s at import

        return (half * a * (1 + erf(a / a.dtype.type(np.sqrt(2))))).astype(a.dtype)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        from scipy.special import erf

        cdf = 0.5 * (1 + erf(a / np.sqrt(2)))
        pdf = np.exp(-0.5 * a * a) / np.sqrt(2 * np.pi)
        return ((g * (cdf + a * pdf)).astype(g.dtype),)


class Softmax(Function):
    """Softmax along ``axis`` (max-shifted for stability)."""

    @staticmethod
    def forward(ctx, a, axis=-1):
        _host("softmax", a)
        e = np.exp(a - a.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return (s * (g - (g * s).sum(axis=ctx.axis, keepdims=True)),)


class LogSoftmax(Function):
    """Log of the softmax along ``axis``, computed stably."""

    @staticmethod
    def forward(ctx, a, axis=-1):
        _host("log_softmax", a)
        shifted = a - a.max(axis=axis, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        (ls,) = ctx.saved_tensors
        return (g - np.exp(ls) * g.sum(axis=ctx.axis, keepdims=True),)


class SegmentReduce(Function):
    """Reduce axis 1 of ``(batch, n, ...)`` over segments given by labels.

    ``labels`` (``n`` int64 in ``0..n_segments-1``, checked by
    :func:`~paramshare_nb.autograd.segment_reduce`) group the entries; the
    result is ``(batch, n_segments, ...)`` holding their sum, mean or max (ties
    share the gradient).  Empty segments give 0 for sum and mean; max refuses
    them.
    """

    @staticmethod
    def forward(ctx, a, labels, n_segments, reduce="sum"):
        _host("segment_reduce", a)
        counts = np.bincount(labels, minlength=n_segments)
        full = counts.all()
        if not full and reduce == "max":
            empty = np.flatnonzero(counts == 0)
            raise ValueError(f"segment_reduce: segment {int(empty[0])} is empty (no label names "
                             f"it; {empty.size} empty of {n_segments}); 'max' needs every segment "
                             f"non-empty")
        ctx.labels, ctx.reduce, ctx.shape = labels, reduce, a.shape
        order = np.argsort(labels, kind="stable")
        sorted_a = np.take(a, order, axis=1)
        nonempty = counts > 0
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[nonempty]
        if reduce == "max":
            out = np.maximum.reduceat(sorted_a, starts, axis=1)
            mask = a == np.take(out, labels, axis=1)
            ties = np.add.reduceat(np.take(mask, order, axis=1).astype(a.dtype), starts, axis=1)
            ctx.weight = mask / np.take(ties, labels, axis=1)
            return out
        if full:
            out = np.add.reduceat(sorted_a, starts, axis=1)
        else:  # reduce the non-empty segments only; the empty ones stay 0
            # in the dtype reduceat sums in (bools and small ints count in int64, as
            # numpy's sum does), not a's: a bool buffer would turn 2 into True
            summed = np.add.reduce(np.zeros(1, a.dtype)).dtype
            out = np.zeros(a.shape[:1] + (n_segments,) + a.shape[2:], dtype=summed)
            if starts.size:
                out[:, nonempty] = np.add.reduceat(sorted_a, starts, axis=1)
        if reduce == "mean":
            inv = np.zeros(n_segments, dtype=np.float64)
            inv[nonempty] = 1 / counts[nonempty]
            # a float mean of ints and bools, as numpy's mean (1/2 in an int dtype is 0)
            fdt = a.dtype if a.dtype.kind in "fc" else np.dtype(np.float64)
            scale = inv.astype(fdt).reshape((1, -1) + (1,) * (a.ndim - 2))
            out = out * scale
            ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.reduce == "mean":
            g = g * ctx.scale
        ga = np.take(g, ctx.labels, axis=1)
        if ctx.reduce == "max":
            ga = ga * ctx.weight
        return (ga,)


# -- the tied multiply --------------------------------------------------------------------
class TiedMatmul(Function):
    """``y = tied_matmul(x, theta, pattern)`` with backward by ``tied_matmul_grad``.

    Both directions go through :mod:`paramshare_nb.ops`, which runs the CPU
    or the CUDA kernels according to where the arrays live.
    """

    native_cuda = True

    @staticmethod
    def forward(ctx, x, theta, pattern):
        from .. import ops

        ctx.pattern = pattern
        ctx.backend = "cuda" if is_cuda_array(x) else "cpu"
        ctx.save_for_backward(x, theta)
        return ops.tied_matmul(x, theta, pattern, backend=ctx.backend)

    @staticmethod
    def backward(ctx, g):
        from .. import ops

        x, theta = ctx.saved_tensors
        dx, dtheta = ops.tied_matmul_grad(g, x, theta, ctx.pattern, backend=ctx.backend)
        return (dx if ctx.needs_input_grad[0] else None,
                dtheta if ctx.needs_input_grad[1] else None)
