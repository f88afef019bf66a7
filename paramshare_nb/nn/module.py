"""``Module`` and ``Parameter``: containers of trainable tensors."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .._validate import as_flag, has_cuda_interface
from ..autograd.tensor import Tensor


def float_dtype(dtype, where: str) -> np.dtype:
    """``dtype`` as float32 or float64 (what the layers compute in), else a TypeError."""
    try:
        dt = None if dtype is None else np.dtype(dtype)  # np.dtype(None) is float64
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}")
    return dt

__all__ = ["Module", "Parameter"]


def _holds_module(container) -> bool:
    items = container.values() if isinstance(container, dict) else container
    return any(isinstance(v, Module) for v in items)


class Parameter(Tensor):
    """A trainable tensor: a copy of ``data`` that requires a gradient.

    Parameters
    ----------
    data : array_like
        Initial values (floating point); copied.
    """

    def __init__(self, data):
        on_device = has_cuda_interface(data)
        super().__init__(data, requires_grad=True, copy=not on_device)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class Module:
    """Base class of layers and models.

    Subclasses set their :class:`Parameter` and sub-``Module`` attributes in
    ``__init__`` (after calling ``super().__init__()``) and define
    ``forward``.  Parameters are found by walking the attributes in the order
    they were set, so names are stable (``"0.weight"`` in a ``Sequential``).

    Attributes
    ----------
    training : bool
        Whether the module is in training mode (dropout active).
    index_axis : int
        The axis of the data that a group permutes: ``-2``, as equivariant
        data is ``(batch, N, channels)``; :func:`paramshare_nb.equivariance_error`
        permutes it by default.
    """

    index_axis = -2

    def __init__(self):
        self.training = True

    def forward(self, x):  # pragma: no cover - abstract
        """Compute the module's output (override in subclasses).

        Parameters
        ----------
        x : Tensor or array_like
            The input; a module's ``__call__`` passes its arguments here.

        Returns
        -------
        Tensor
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __setattr__(self, name, value):
        # a Parameter replaced by an array or anything else would silently stop being
        # trained, saved and moved, and the forward would fail far from here
        if isinstance(self.__dict__.get(name), Parameter) and not (
                value is None or isinstance(value, Parameter)):
            raise TypeError(f"{type(self).__name__}.{name} is a Parameter; assign a Parameter "
                            f"(nn.Parameter(array)) or None, got {type(value).__name__}")
        object.__setattr__(self, name, value)

    # -- traversal --------------------------------------------------------------------
    def named_children(self):
        """Yield ``(name, module)`` for the direct sub-modules."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple, dict)) and _holds_module(value):
                warnings.warn(f"{type(self).__name__}.{name} is a plain {type(value).__name__} "
                              f"holding modules: their parameters are not found (not "
                              f"trained, saved or moved); hold them in an nn.ModuleList",
                              UserWarning, stacklevel=3)

    def named_modules(self, prefix: str = ""):
        """Yield ``(name, module)`` for this module and every sub-module.

        Parameters
        ----------
        prefix : str, optional
            Put before every name (``"0."`` for the first layer of a
            ``Sequential``); this module itself is named ``prefix``.

        Yields
        ------
        (str, Module)
        """
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}{name}." if prefix else f"{name}.")

    def named_parameters(self):
        """Yield ``(name, parameter)`` pairs, each parameter once."""
        seen = set()
        for mod_name, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield mod_name + name, value

    def parameters(self) -> list:
        """All parameters (each once), in a stable order."""
        return [p for _, p in self.named_parameters()]

    def n_parameters(self) -> int:
        """Total number of trainable scalars."""
        return int(sum(p.size for p in self.parameters()))

    def named_patterns(self):
        """Yield ``(name, Pattern)`` for every tying pattern the model uses."""
        for mod_name, module in self.named_modules():
            for name, pat in getattr(module, "_patterns", lambda: {})().items():
                yield mod_name + name, pat

    # -- modes and grads --------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``True``) or evaluation mode on every sub-module.

        Parameters
        ----------
        mode : bool, optional

        Returns
        -------
        Module
            This module.
        """
        as_flag(mode, f"{type(self).__name__}.train: mode")
        for _, module in self.named_modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (dropout off)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget the accumulated gradients of every parameter."""
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype) -> Module:
        """Convert every parameter to ``dtype`` (float32 or float64) in place (e.g. float64
        for gradcheck).  A converted parameter's gradient is dropped; one already of
        ``dtype`` keeps it.  Every parameter is checked first: on an error the model is
        unchanged.

        Parameters
        ----------
        dtype : numpy dtype
            float32 or float64.

        Returns
        -------
        Module
            This module.

        Raises
        ------
        TypeError
            Another dtype.
        RuntimeError
            A parameter on a CUDA device (move the model to the CPU first).
        """
        dtype = float_dtype(dtype, f"{type(self).__name__}.astype")
        params = [p for p in self.parameters() if p.dtype != dtype]
        if any(p.device != "cpu" for p in params):
            raise RuntimeError("astype: move the model to the CPU first (model.to('cpu'))")
        _assign([(p, p.data.astype(dtype)) for p in params])
        return self

    @property
    def dtype(self):
        """dtype of the first parameter (``None`` for a module without any)."""
        params = self.parameters()
        return params[0].dtype if params else None

    def to(self, device: str) -> Module:
        """Move every parameter to ``"cpu"`` or ``"cuda"`` in place.

        A moved parameter's gradient is dropped; one already there keeps it.
        Every copy is made before any parameter is changed: when one fails
        (the device out of memory), the model is unchanged.

        Parameters
        ----------
        device : {"cpu", "cuda"}

        Returns
        -------
        Module
            This module.

        Raises
        ------
        RuntimeError
            When CUDA is requested but not usable.
        """
        moved = []
        for p in self.parameters():
            data = Tensor(p.data).to(device).data
            if data is not p.data:
                moved.append((p, data))
        _assign(moved)
        return self

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Copies of every parameter's values (numpy arrays), by name."""
        return OrderedDict((name, np.array(Tensor(p.data).numpy(), copy=True))
                           for name, p in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Set parameter values from ``state`` (as :meth:`state_dict` gives).

        Parameters
        ----------
        state : mapping of str to array (or Tensor)
        strict : bool, optional
            Refuse missing and unexpected names (default).

        Raises
        ------
        KeyError
            Missing or unexpected names (with ``strict``).
        ValueError
            A shape that differs from the parameter's, a dtype that is not
            bool, integer or float (structured, datetime, complex, object,
            strings), or a value that is not finite once cast to the
            parameter's dtype.

        Every value is checked before any parameter is assigned: a refused
        state leaves the model unchanged.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays (as "
                            f"state_dict() gives), got {type(state).__name__}")
        as_flag(strict, "load_state_dict: strict")
        params = dict(self.named_parameters())
        if strict:
            missing = [k for k in params if k not in state]
            unexpected = [k for k in state if k not in params]
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        staged = []
        for name, p in params.items():
            if name not in state:
                continue
            staged.append((p, _checked_value(name, state[name], p)))
        # all values are valid: move them (a device copy may still fail, so move all first)
        _assign([(p, v if p.device == "cpu" else Tensor(v).to(p.device).data)
                 for p, v in staged])

    def extra_repr(self) -> str:
        """Settings shown by ``repr`` (override in subclasses)."""
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, child in children:
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"


def _assign(pairs) -> None:
    """Give each parameter its new data (made beforehand, so nothing here can fail halfway)
    and drop its gradient, which belongs to the old data."""
    for p, data in pairs:
        p.data = data
        p.grad = None


def _checked_value(name: str, raw, p) -> np.ndarray:
    """``raw`` as a fresh array of ``p``'s dtype, or ValueError saying why it cannot be."""
    if isinstance(raw, Tensor):  # a Tensor or Parameter of another model
        raw = raw.numpy()
    if isinstance(raw, np.ma.MaskedArray):  # np.asarray would load the values under the mask
        raise ValueError(f"load_state_dict: '{name}' is a masked array; give its values "
                         f"(np.ma.getdata) or fill the masked ones (.filled(0)) first")
    try:
        value = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"load_state_dict: '{name}' is not an array ({exc})") from None
    if value.dtype.kind not in "biuf":
        raise ValueError(f"load_state_dict: '{name}' has dtype {value.dtype}; expected a bool, "
                         f"integer or float array")
    if value.shape != p.shape:
        raise ValueError(f"load_state_dict: '{name}' has shape {value.shape} in the "
                         f"state, {p.shape} in the model")
    target = np.dtype(p.dtype)
    if value.dtype.kind == "f" and target.kind != "f" and not np.isfinite(value).all():
        raise ValueError(f"load_state_dict: '{name}' holds non-finite values")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(target, copy=True)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():
        raise ValueError(f"load_state_dict: '{name}' holds values that are not finite as "
                         f"{target} (nan, inf, or overflow from {value.dtype})")
    return cast
