"""The ``Function`` base class (forward, backward, saved values) and ``no_grad``.

A primitive is a subclass of :class:`Function` with two static methods,
``forward(ctx, *arrays, **options) -> array`` and
``backward(ctx, grad) -> tuple of arrays``; the instance doubles as the
context that carries saved values from one to the other (early tinygrad).
:meth:`Function.apply` records a graph node only when recording is on and some
input requires a gradient.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import numpy as np

from .._validate import has_cuda_interface

__all__ = ["Function", "no_grad", "enable_grad", "is_grad_enabled"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for backpropagation (per thread).

    Returns
    -------
    bool
        ``False`` inside :func:`no_grad`, else ``True``.
    """
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def _set_grad(enabled: bool):
    old = is_grad_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = old


def no_grad():
    """Context manager that turns graph recording off.

    Inside ``with no_grad():`` results never require gradients and no graph is
    kept: use it for evaluation and for optimizer updates.

    Returns
    -------
    contextlib.AbstractContextManager
        Restores the previous recording state on exit.

    Examples
    --------
    >>> import numpy as np, paramshare_nb as ps
    >>> w = ps.Tensor(np.ones(3), requires_grad=True)
    >>> with ps.no_grad():
    ...     y = (w * 2.0).sum()
    >>> y.requires_grad
    False
    """
    return _set_grad(False)


def enable_grad():
    """Context manager that turns graph recording back on (inside ``no_grad``).

    Returns
    -------
    contextlib.AbstractContextManager
        Restores the previous recording state on exit.
    """
    return _set_grad(True)


def is_cuda_array(a) -> bool:
    """Whether ``a`` is a CUDA device array.

    Anything with ``__cuda_array_interface__`` counts, and so do the
    simulator's arrays (``NUMBA_ENABLE_CUDASIM=1``), which lack it.  Never
    imports ``numba.cuda``: a device array exists only once it is imported.
    """
    if isinstance(a, np.ndarray) or a is None or isinstance(a, (int, float)):
        return False
    if has_cuda_interface(a):
        return True
    cuda = sys.modules.get("numba.cuda")
    if cuda is None:
        return False
    check = getattr(cuda, "is_cuda_array", None)
    if check is not None:
        return bool(check(a))
    try:  # the simulator has no is_cuda_array
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    except ImportError:  # pragma: no cover
        return False
    return isinstance(a, FakeCUDAArray)


def to_host(a):
    """``a`` as a numpy array (copied from the device when needed)."""
    return a.copy_to_host() if is_cuda_array(a) else a


def to_device(a):
    """Copy a numpy array to the current CUDA device (device arrays pass through)."""
    if a is None or is_cuda_array(a):
        return a
    from numba import cuda

    a = np.asarray(a)
    # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return cuda.to_device(a if a.flags.c_contiguous else a.copy(order="C"))


def device_of(a) -> str:
    """``"cuda"`` for a device array, ``"cpu"`` otherwise."""
    return "cuda" if is_cuda_array(a) else "cpu"


class Function:
    """Base class of differentiable primitives; an instance is the context.

    Subclasses define

    ``forward(ctx, *arrays, **options) -> array``
        Compute the result from plain arrays (numpy or device arrays); store
        what backward needs with :meth:`save_for_backward` or as attributes
        of ``ctx``.
    ``backward(ctx, grad) -> tuple``
        Given the gradient of the output, return one gradient per tensor
        input (``None`` for inputs that need none), each of the input's shape.

    Attributes
    ----------
    parents : tuple of Tensor
        The inputs (set only when a graph node is recorded).
    needs_input_grad : tuple of bool
        Which inputs require a gradient.
    saved_tensors : tuple
        Arrays saved by :meth:`save_for_backward`.
    """

    #: Whether all floating-point inputs must share one dtype.
    same_dtype = True
    #: Whether ``forward``/``backward`` accept CUDA arrays themselves.  Other
    #: primitives given device data run on host copies and return device
    #: arrays ("host fallback"), so models run unchanged on the GPU while
    #: only the tied multiply is a CUDA kernel.
    native_cuda = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        docs = {"forward": f"Forward of {cls.__name__}: the result from plain arrays.",
                "backward": f"Backward of {cls.__name__}: one gradient per input, from the "
                            f"output's gradient."}
        for name, doc in docs.items():  # primitives get a docstring stating the contract
            fn = vars(cls).get(name)
            fn = getattr(fn, "__func__", fn)
            if fn is not None and not fn.__doc__:
                fn.__doc__ = doc

    def __init__(self):
        self.parents = ()
        self.needs_input_grad = ()
        self.saved_tensors = ()
        self.host_fallback = False

    def save_for_backward(self, *arrays) -> None:
        """Keep arrays for :meth:`backward`."""
        self.saved_tensors = arrays

    @staticmethod
    def forward(ctx, *arrays, **options):  # pragma: no cover - abstract
        """Compute the op's result from plain arrays (override)."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - abstract
        """Return one gradient per input, given the output's gradient (override)."""
        raise NotImplementedError

    @classmethod
    def name(cls) -> str:
        """The op's name, as errors print it."""
        return cls.__name__.lstrip("_").lower()

    @classmethod
    def apply(cls, *inputs, **options):
        """Run the op on tensors and record a graph node if needed.

        Parameters
        ----------
        *inputs : Tensor
            The differentiable inputs.
        **options
            Non-differentiable arguments passed to ``forward``.

        Returns
        -------
        Tensor
        """
        tensor = _TENSOR[0] if _TENSOR else _tensor_class()
        arrays = []
        for i, t in enumerate(inputs):
            if not isinstance(t, tensor):
                raise TypeError(f"{cls.name()}: input {i} must be a Tensor, got "
                                f"{type(t).__name__}")
            arrays.append(t.data)
        # numpy data (a Tensor holds ndarrays on the CPU): no device checks to make
        on_host = all(type(a) is np.ndarray for a in arrays)
        _check_inputs(cls, inputs, on_host)
        ctx = cls()
        ctx.needs_input_grad = tuple(t.requires_grad for t in inputs)
        arrays = _with_float_dtype(cls, arrays)
        ctx.host_fallback = (not on_host and not cls.native_cuda
                             and any(is_cuda_array(a) for a in arrays))
        if ctx.host_fallback:
            arrays = [to_host(a) for a in arrays]
        data = cls.forward(ctx, *arrays, **options)
        if ctx.host_fallback:
            data = to_device(np.asarray(data))
        record = is_grad_enabled() and any(ctx.needs_input_grad)
        out = tensor(data, requires_grad=record)
        if record:
            ctx.parents = inputs
            out._ctx = ctx
        else:
            ctx.saved_tensors = ()
        return out


def _with_float_dtype(cls, arrays):
    """Integer and bool inputs beside a float one take its dtype, as constants do (numpy
    would make ``float32 * int64`` float64, and the float32 parameter a float64 gradient)."""
    if not cls.same_dtype or len(arrays) < 2:
        return arrays
    floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
    if not floats or len(floats) == len(arrays):
        return arrays
    return [a if a.dtype.kind not in "biu" else
            (a.astype(floats[0]) if not is_cuda_array(a) else a) for a in arrays]


_TENSOR: list = []


def _tensor_class():
    """The Tensor class (tensor.py imports this module, so it comes late, once)."""
    from .tensor import Tensor
    _TENSOR.append(Tensor)
    return Tensor


def _check_inputs(cls, inputs, on_host=False) -> None:
    if len(inputs) < 2:
        return
    cuda0 = False if on_host else is_cuda_array(inputs[0].data)
    if not on_host and any(is_cuda_array(t.data) != cuda0 for t in inputs[1:]):
        desc = ", ".join(f"{t.device}" for t in inputs)
        raise RuntimeError(f"{cls.name()}: inputs are on different devices ({desc}); move them "
                           f"to one device first (Tensor.to('cpu') or .to('cuda'))")
    if cls.same_dtype:
        floats = {t.data.dtype for t in inputs if t.data.dtype.kind == "f"}
        if len(floats) > 1:
            desc = ", ".join(str(t.dtype) for t in inputs)
            raise TypeError(f"{cls.name()}: inputs mix dtypes ({desc}); convert one side, e.g. "
                            f"x.astype(np.float32), or the model with model.astype(...)")
