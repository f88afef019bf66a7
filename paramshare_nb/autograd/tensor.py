"""The :class:`Tensor`: an array, its gradient, and the op that made it."""

from __future__ import annotations

import math
import operator

import numpy as np

from .._validate import as_degree, refuse_masked
from . import primitives as P
from .engine import backward as _backward
from .function import device_of, is_cuda_array, to_device

__all__ = ["Tensor", "concat", "tied_matmul", "segment_reduce"]


def _reduction(op, name, summary):
    """The method ``name`` reducing by the Function ``op`` (one signature and docstring for
    ``sum``, ``mean`` and ``max``)."""
    def reduce(self, axis=None, keepdims: bool = False) -> Tensor:
        return op.apply(self, axis=axis, keepdims=keepdims)

    reduce.__name__, reduce.__qualname__ = name, f"Tensor.{name}"
    reduce.__doc__ = f"""{summary}

        Parameters
        ----------
        axis : int or tuple of int, optional
            Axes to reduce; ``None`` reduces all.
        keepdims : bool, optional
            Keep the reduced axes with length one.

        Returns
        -------
        Tensor
        """
    return reduce


class Tensor:
    """An array that records the operations applied to it.

    Parameters
    ----------
    data : array_like, Tensor or CUDA device array
        The values.  A numpy array of the requested dtype is wrapped without a
        copy; CUDA arrays (anything with ``__cuda_array_interface__``) are
        kept on the device.
    requires_grad : bool, optional
        Whether gradients with respect to this tensor are wanted; only for
        floating-point data.
    dtype : numpy dtype, optional
        Convert to this dtype (numpy data only).
    copy : bool, optional
        Copy numpy data instead of wrapping it (parameters own their values).

    Attributes
    ----------
    data : numpy.ndarray or device array
    grad : numpy.ndarray or device array or None
        Filled (and accumulated) by :meth:`backward` on leaves.
    requires_grad : bool

    Examples
    --------
    >>> import numpy as np, paramshare_nb as ps
    >>> w = ps.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> (w * w).sum().backward()
    >>> w.grad
    array([2., 4.])
    """

    # ndarray (op) Tensor defers to Tensor's reflected op, and a numpy ufunc on a Tensor
    # (np.exp(t)) is a TypeError rather than an object array of Tensors
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False, dtype=None, copy: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if is_cuda_array(data):
            if dtype is not None and np.dtype(dtype) != np.dtype(data.dtype):
                raise TypeError("Tensor: cannot change the dtype of CUDA data here; convert it "
                                "before wrapping")
        else:
            refuse_masked(data, "Tensor: data", "data")
            data = np.array(data, dtype=dtype, copy=True) if copy else np.asarray(data, dtype)
        if requires_grad and np.dtype(data.dtype).kind != "f":
            raise TypeError(f"Tensor: requires_grad needs floating-point data, got dtype "
                            f"{data.dtype}; use .astype(np.float32)")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None

    # -- properties -------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """Shape of the data."""
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.data.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """dtype of the data."""
        return np.dtype(self.data.dtype)

    @property
    def device(self) -> str:
        """``"cpu"`` for numpy data, ``"cuda"`` for device arrays."""
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """Whether the tensor was created by the user rather than by an op."""
        return self._ctx is None

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d Tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        if self.device == "cpu":
            return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"
        return f"Tensor(<cuda {self.shape} {self.dtype}>{grad})"

    # -- conversion -------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a numpy array (copied from the device if needed)."""
        return self.data.copy_to_host() if self.device == "cuda" else self.data

    def __bool__(self) -> bool:
        """Truth of a one-element tensor; ambiguous for more, as for numpy arrays."""
        return bool(self.numpy())

    def __float__(self) -> float:
        """``float(loss)``: the value of a one-element tensor (:meth:`item`)."""
        return float(self.item())

    def __int__(self) -> int:
        """``int(t)`` of a one-element tensor, truncated as ``int`` of a float."""
        return int(self.item())

    def item(self) -> float:
        """The single value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item: the tensor has {self.size} elements, not one")
        return self.numpy().reshape(()).item()

    def detach(self) -> Tensor:
        """The same data, cut from the graph (never requires a gradient)."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        """A copy with another dtype, cut from the graph (keeps ``requires_grad`` for a float
        dtype; an integer or bool copy needs no gradient).

        Parameters
        ----------
        dtype : numpy dtype
            The copy's dtype.

        Returns
        -------
        Tensor
            A new leaf tensor on the host.
        """
        if self.device == "cuda":
            raise RuntimeError("astype: convert CUDA tensors on the host (Tensor.to('cpu'))")
        data = self.data.astype(dtype)
        return Tensor(data, requires_grad=self.requires_grad and data.dtype.kind == "f")

    def to(self, device: str) -> Tensor:
        """A copy on ``device`` (``"cpu"`` or ``"cuda"``), cut from the graph; the tensor
        itself when it is already there (as ``torch.Tensor.to``).

        Parameters
        ----------
        device : {"cpu", "cuda"}

        Returns
        -------
        Tensor

        Raises
        ------
        RuntimeError
            When CUDA is requested but not usable.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"to: device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        if device == "cpu":
            return Tensor(self.data.copy_to_host(), requires_grad=self.requires_grad)
        try:
            from numba import cuda
        except ImportError:  # pragma: no cover
            cuda = None
        if cuda is None or not cuda.is_available():
            raise RuntimeError("to('cuda'): no usable CUDA device (install the 'cuda' extra "
                               "and check `python -m paramshare_nb info`)")
        return Tensor(to_device(self.data), requires_grad=self.requires_grad)

    # -- autograd ---------------------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Backpropagate from this tensor; see :func:`paramshare_nb.autograd.engine.backward`.

        Parameters
        ----------
        grad : array_like, optional
            Required unless the tensor has one element.
        """
        _backward(self, grad)

    def zero_grad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    # -- operand coercion -------------------------------------------------------------
    def _lift(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if is_cuda_array(other):
            return Tensor(other)
        refuse_masked(other, "Tensor arithmetic: an operand", "it")
        arr = np.asarray(other)
        if arr.dtype.kind == "c" and self.dtype.kind == "f":  # the cast below drops .imag
            raise TypeError(f"a complex constant with a {self.dtype} tensor: convert the tensor "
                            f"first (.astype(np.complex64)), got {other!r}")
        if self.dtype.kind == "f" and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            # constants follow a float tensor's dtype (float32 stays float32); an integer
            # tensor's constants keep their own, and the op promotes as numpy does
            arr = arr.astype(self.dtype, copy=False)
        const = Tensor(arr)
        return const.to("cuda") if self.device == "cuda" else const  # ...and its device

    # -- arithmetic -------------------------------------------------------------------
    def __add__(self, other):
        return P.Add.apply(self, self._lift(other))

    def __radd__(self, other):
        return P.Add.apply(self._lift(other), self)

    def __sub__(self, other):
        return P.Sub.apply(self, self._lift(other))

    def __rsub__(self, other):
        return P.Sub.apply(self._lift(other), self)

    def __mul__(self, other):
        return P.Mul.apply(self, self._lift(other))

    def __rmul__(self, other):
        return P.Mul.apply(self._lift(other), self)

    def __truediv__(self, other):
        return P.Div.apply(self, self._lift(other))

    def __rtruediv__(self, other):
        return P.Div.apply(self._lift(other), self)

    def __neg__(self):
        return P.Neg.apply(self)

    def __pow__(self, p):
        if isinstance(p, Tensor) or np.ndim(p) != 0:
            raise TypeError("pow: only a constant scalar exponent is supported")
        try:
            if isinstance(p, (str, bytes)):  # float("2") would take one
                raise TypeError
            p = float(p)
        except TypeError:
            raise TypeError(f"pow: the exponent must be a number, got {p!r}") from None
        except OverflowError:  # an int past float range
            raise ValueError("pow: the exponent must be finite, got an int past float "
                             "range") from None
        return P.Pow.apply(self, p=p)

    def __matmul__(self, other):
        return self.matmul(other)

    def __rmatmul__(self, other):
        return self._lift(other).matmul(self)

    def matmul(self, other) -> Tensor:
        """Matrix product ``self @ other`` (1-D operands are promoted, as in numpy).

        Parameters
        ----------
        other : Tensor or array_like
            The right operand; its leading dimensions broadcast with ``self``'s.

        Returns
        -------
        Tensor
        """
        other = self._lift(other)
        a, b = self, other
        if a.ndim == 1 and b.ndim == 1:
            if a.shape != b.shape:  # (a * b) would broadcast a length-1 side
                raise ValueError(f"matmul: 1-D operands of lengths {a.shape[0]} and "
                                 f"{b.shape[0]}; they must be equal")
            return (a * b).sum()
        if a.ndim == 1:
            return P.MatMul.apply(a.reshape(1, -1), b).reshape(*b.shape[:-2], b.shape[-1])
        if b.ndim == 1:
            return P.MatMul.apply(a, b.reshape(-1, 1)).reshape(*a.shape[:-1])
        return P.MatMul.apply(a, b)

    # -- reductions -------------------------------------------------------------------
    sum = _reduction(P.Sum, "sum", "Sum over ``axis`` (all axes by default).")
    mean = _reduction(P.Mean, "mean", "Mean over ``axis`` (all axes by default).")
    max = _reduction(P.Max, "max",
                     "Maximum over ``axis``; tied maxima share the gradient equally.")

    # -- shapes -----------------------------------------------------------------------
    def reshape(self, *shape) -> Tensor:
        """Reshape; accepts ``reshape(2, 3)`` or ``reshape((2, 3))``.

        Parameters
        ----------
        *shape : int or tuple of int
            The new shape (one ``-1`` is inferred, as in numpy).

        Returns
        -------
        Tensor
        """
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not all(P._is_int(s) for s in shape):
            raise TypeError(f"reshape: the shape must be ints, got {shape!r}")
        return P.Reshape.apply(self, shape=tuple(int(s) for s in shape))

    def transpose(self, *axes) -> Tensor:
        """Permute axes (reverse them when none are given).

        Parameters
        ----------
        *axes : int or tuple of int, optional
            The new order of the axes.

        Returns
        -------
        Tensor
        """
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return P.Transpose.apply(self, axes=axes or None)

    @property
    def T(self) -> Tensor:
        """The tensor with its axes reversed."""
        return self.transpose()

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, Tensor):
            index = index.numpy()
        return P.GetItem.apply(self, index=index)

    # -- elementwise ------------------------------------------------------------------
    def exp(self) -> Tensor:
        """Elementwise ``exp``."""
        return P.Exp.apply(self)

    def log(self) -> Tensor:
        """Elementwise natural logarithm."""
        return P.Log.apply(self)

    def relu(self) -> Tensor:
        """Elementwise ``max(x, 0)``."""
        return P.ReLU.apply(self)

    def leaky_relu(self, slope: float = 0.01) -> Tensor:
        """Elementwise ``x`` if positive else ``slope * x``.

        Parameters
        ----------
        slope : float, optional
            The slope for negative inputs.

        Returns
        -------
        Tensor
        """
        return P.LeakyReLU.apply(self, slope=slope)

    def tanh(self) -> Tensor:
        """Elementwise hyperbolic tangent."""
        return P.Tanh.apply(self)

    def sigmoid(self) -> Tensor:
        """Elementwise logistic function."""
        return P.Sigmoid.apply(self)

    def gelu(self) -> Tensor:
        """Elementwise GELU (exact erf form)."""
        return P.GELU.apply(self)

    def softmax(self, axis: int = -1) -> Tensor:
        """Softmax along ``axis``.

        Parameters
        ----------
        axis : int, optional
            The axis that sums to one.

        Returns
        -------
        Tensor
        """
        return P.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        """Log-softmax along ``axis``.

        Parameters
        ----------
        axis : int, optional
            The axis normalised over.

        Returns
        -------
        Tensor
        """
        return P.LogSoftmax.apply(self, axis=axis)


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis.

    Parameters
    ----------
    tensors : sequence of Tensor
    axis : int, optional

    Returns
    -------
    Tensor
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: need at least one tensor")
    return P.Concat.apply(*tensors, axis=axis)


def tied_matmul(x: Tensor, theta: Tensor, pattern) -> Tensor:
    """Differentiable :func:`paramshare_nb.tied_matmul`.

    Parameters
    ----------
    x : Tensor
        ``(..., N)`` with scalar ``theta``, ``(..., N, C_in)`` with channels.
    theta : Tensor
        ``(P,)`` or ``(P, C_out, C_in)``.
    pattern : Pattern
        Shape ``(M, N)``.

    Returns
    -------
    Tensor
        ``(..., M)`` or ``(..., M, C_out)``.
    """
    return P.TiedMatmul.apply(x, theta, pattern=pattern)


def segment_reduce(x: Tensor, labels, n_segments: int, reduce: str = "sum") -> Tensor:
    """Reduce axis 1 of ``x`` over the segments that ``labels`` name.

    Parameters
    ----------
    x : Tensor
        ``(batch, n, ...)``.
    labels : array_like of int, shape (n,)
        Segment id of each entry, each in ``0..n_segments-1``.  Segments that no
        entry names are empty.
    n_segments : int
    reduce : {"sum", "mean", "max"}
        An empty segment reduces to 0 for ``"sum"`` and ``"mean"``; ``"max"``
        has no value for an empty segment and refuses it (``ValueError``).

    Returns
    -------
    Tensor
        ``(batch, n_segments, ...)``.

    Raises
    ------
    TypeError
        ``labels`` are not integers (floats are not truncated), or
        ``n_segments`` is not an integer.
    ValueError
        A label outside ``0..n_segments-1``, labels that are not 1-D or do not
        match axis 1 of ``x``, or an empty segment with ``reduce="max"``.
    """
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"segment_reduce: reduce must be 'sum', 'mean' or 'max', got {reduce!r}")
    labels = _segment_labels(labels, n_segments)
    n_segments = as_degree(n_segments, call="segment_reduce: n_segments")  # the output's axis
    if x.ndim < 2 or x.shape[1] != labels.shape[0]:
        raise ValueError(f"segment_reduce: x must be (batch, {labels.shape[0]}, ...), got shape "
                         f"{x.shape}")
    return P.SegmentReduce.apply(x, labels=labels, n_segments=n_segments, reduce=reduce)


def _segment_labels(labels, n_segments) -> np.ndarray:
    """Checked int64 copy of ``labels``: 1-D integers in ``0..n_segments-1``."""
    try:
        n_segments = operator.index(n_segments)
    except TypeError:
        raise TypeError(f"segment_reduce: n_segments must be an integer, got "
                        f"{type(n_segments).__name__}") from None
    if n_segments < 0:
        raise ValueError(f"segment_reduce: n_segments must be >= 0, got {n_segments}")
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    refuse_masked(labels, "segment_reduce: labels", "labels")
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"segment_reduce: labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind in "f"):
        raise TypeError(f"segment_reduce: labels must be integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= n_segments:
            pos = int(np.flatnonzero((arr < 0) | (arr >= n_segments))[0])
            raise ValueError(f"segment_reduce: label {arr[pos]} at position {pos} is outside "
                             f"0..{n_segments - 1} (n_segments={n_segments})")
    return np.array(arr, dtype=np.int64, copy=True)
