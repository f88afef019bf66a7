"""Layers: the equivariant linear map, its unconstrained peer, pooling, activations."""

from __future__ import annotations

import math

import numpy as np

from .._validate import as_flag, as_real, as_rng, check_bytes, has_cuda_interface, refuse_masked
from ..actions import Action
from ..autograd.tensor import Tensor, segment_reduce, tied_matmul
from ..equivariance import is_equivariant
from ..groups import orbits
from ..patterns import Pattern, bias_pattern, dense_pattern, sparse_pattern
from .module import Module, Parameter, float_dtype

__all__ = ["EquivariantLinear", "Linear", "Sequential", "OrbitPool", "Flatten", "Dropout",
           "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "Identity"]


def _label(layer) -> str:
    """How errors name ``layer``: a string as given, a module as its class and settings
    (built only when an error needs it: a layer's every call would pay for it)."""
    if isinstance(layer, str):
        return layer
    return f"{type(layer).__name__}({layer.extra_repr()})"


def _as_tensor(x, layer) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple)) or has_cuda_interface(x):
        refuse_masked(x, f"{_label(layer)}: input", "x")
        return Tensor(x)
    raise TypeError(f"{_label(layer)}: input must be a Tensor or an array, got "
                    f"{type(x).__name__}")


def _check_dtype(x: Tensor, layer: Module, weight) -> None:
    """``x`` on the device and of the dtype of the layer's ``weight`` (its parameters
    share both: ``model.to`` and ``model.astype`` move and convert them together)."""
    data, want = x.data, weight.data
    if type(data) is np.ndarray and type(want) is np.ndarray and data.dtype == want.dtype:
        return  # the usual case, without the device and dtype properties
    if x.device != weight.device:
        raise RuntimeError(f"{_label(layer)}: input is on {x.device}, the layer's parameters "
                           f"on {weight.device}; use Tensor(x).to('{weight.device}') or "
                           f"model.to('{x.device}')")
    if x.dtype != weight.dtype:
        fix = f"np.asarray(x, dtype=np.{weight.dtype}) (x.astype for a Tensor)"
        if x.dtype in (np.float32, np.float64):  # a model holds float32 or float64 only
            fix += f" or model.astype(np.{x.dtype})"
        raise TypeError(f"{_label(layer)}: input dtype {x.dtype} does not match the layer's "
                        f"{weight.dtype}; use {fix}")


def _check_gain(gain, layer: str) -> float:
    number = not isinstance(gain, bool) and isinstance(gain, (int, float, np.integer,
                                                                np.floating))
    shown = repr(gain)
    try:
        f = float(gain) if number else math.nan
    except OverflowError:  # an int past float range
        f, shown = math.inf, "an int past float range"
    if not 0 <= f < math.inf:
        raise ValueError(f"{layer}: gain must be a finite number >= 0, got {shown}")
    return f


def _check_int(value, name: str, layer: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class EquivariantLinear(Module):
    """A linear layer whose weights are tied so that it commutes with a group.

    ``y[b, m, :] = sum_n theta[idx[m, n]] @ x[b, n, :] + bias[orbit(m)]``:
    the weight is one ``(c_out, c_in)`` block per parameter of the tying
    pattern, the bias one ``c_out`` vector per orbit of the group on the
    outputs.

    Parameters
    ----------
    action : Action
        The group acting on the ``N`` inputs and ``M`` outputs.
    c_in, c_out : int
        Channels in and out.
    design : {"dense", "sparse"} or Pattern, optional
        The tying pattern: the dense design (most expressive), the sparse
        Cayley design (free actions), or a ready-made ``(M, N)`` pattern
        (it must be equivariant to ``action``: a ValueError otherwise).
    bias : bool, optional
        Add the tied bias.
    gain : float, optional
        Initial weights have variance ``gain / fan_in`` where ``fan_in`` is the
        true fan-in of the outputs the parameter feeds (non-zeros in their
        pattern row times ``c_in``): 2 (He) suits ReLU.  Finite, ``>= 0``.
    rng : int or numpy.random.Generator, optional
        Seed or generator of the initial weights.
    dtype : numpy dtype, optional
        float32 (default) or float64.

    Attributes
    ----------
    weight : Parameter
        ``(P, c_out, c_in)``.
    bias : Parameter or None
        ``(n_output_orbits, c_out)``.
    pattern, bias_pattern : Pattern

    Examples
    --------
    >>> import numpy as np, paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.symmetric(4))
    >>> layer = ps.nn.EquivariantLinear(act, 3, 5, rng=0)
    >>> layer.weight.shape, layer(np.ones((2, 4, 3), np.float32)).shape
    ((2, 5, 3), (2, 4, 5))
    """

    def __init__(self, action, c_in: int, c_out: int, design="dense", bias: bool = True,
                 gain: float = 2.0, rng=None, dtype=np.float32):
        super().__init__()
        if not isinstance(action, Action):
            raise TypeError(f"EquivariantLinear: action must be a paramshare_nb.Action, got "
                            f"{type(action).__name__}; wrap generators with Action.same(gens)")
        self.c_in = _check_int(c_in, "c_in", "EquivariantLinear")
        self.c_out = _check_int(c_out, "c_out", "EquivariantLinear")
        as_flag(bias, "EquivariantLinear: bias")
        gain = _check_gain(gain, "EquivariantLinear")
        dtype = float_dtype(dtype, "EquivariantLinear")
        if isinstance(design, Pattern):
            if design.shape != (action.n_out, action.n_in):
                raise ValueError(f"EquivariantLinear: pattern shape {design.shape} does not "
                                 f"match the action ({action.n_out}, {action.n_in})")
            if not is_equivariant(design, action):
                raise ValueError("EquivariantLinear: the pattern is not equivariant to the "
                                 "action (ps.is_equivariant(pattern, action) is False); build "
                                 "it with ps.dense_pattern(action) or ps.sparse_pattern(action)")
            pattern = design
        elif design == "dense":
            pattern = dense_pattern(action)
        elif design == "sparse":
            pattern = sparse_pattern(action)
        else:
            raise ValueError(f"EquivariantLinear: design must be 'dense', 'sparse' or a "
                             f"Pattern, got {design!r}")
        self.action = action
        self.design = design if isinstance(design, str) else "custom"
        self.pattern = pattern
        # the weight is drawn in float64: past the bound, an error before numpy's own
        shape = (pattern.n_params, self.c_out, self.c_in)
        check_bytes(8 * math.prod(shape), f"EquivariantLinear: a weight of shape {shape}")
        self.bias_pattern = bias_pattern(action)
        self._bias_index = np.asarray(self.bias_pattern.params)  # row m -> its orbit id
        rng = as_rng(rng, "EquivariantLinear: rng")
        self.fan_in = np.bincount(pattern.rows, minlength=pattern.shape[0]) * self.c_in
        self.weight = Parameter(self._init(pattern, self.fan_in, gain, rng, dtype))
        if bias:
            self.bias = Parameter(np.zeros((self.bias_pattern.n_params, self.c_out), dtype))
        else:
            self.bias = None

    def _init(self, pattern, fan_in, gain, rng, dtype):
        p = pattern.n_params
        uses = np.bincount(pattern.params, minlength=p)
        # each parameter: mean true fan-in of the rows it appears in
        fan = np.bincount(pattern.params, weights=fan_in[pattern.rows], minlength=p)
        fan = np.where(uses > 0, fan / np.maximum(uses, 1), 1.0)
        std = np.sqrt(gain / np.maximum(fan, 1.0))
        theta = rng.standard_normal((p, self.c_out, self.c_in)) * std[:, None, None]
        return theta.astype(dtype)

    def _patterns(self):
        out = {"weight": self.pattern}
        if self.bias is not None:
            out["bias"] = self.bias_pattern
        return out

    def extra_repr(self) -> str:
        """Shape, channels, design and parameter count, for ``repr``."""
        m, n = self.pattern.shape
        return (f"N={n}, M={m}, c_in={self.c_in}, c_out={self.c_out}, design={self.design!r}, "
                f"params={self.pattern.n_params}, bias={self.bias is not None}")

    def forward(self, x):
        """Apply the layer to ``x`` of shape ``(batch, N, c_in)`` -> ``(batch, M, c_out)``."""
        x = _as_tensor(x, self)
        m, n = self.pattern.shape
        shape = x.shape  # a tuple: some device arrays' shapes take no negative index
        if len(shape) < 2 or shape[-2] != n or shape[-1] != self.c_in:
            raise ValueError(f"{_label(self)}: expected input of shape (batch, {n}, "
                             f"{self.c_in}) (N inputs of the action, c_in channels), got "
                             f"{x.shape}")
        _check_dtype(x, self, self.weight)
        y = tied_matmul(x, self.weight, self.pattern)
        if self.bias is not None:
            y = y + self.bias[self._bias_index]
        return y


class Linear(Module):
    """Unconstrained affine map ``y = x @ weight.T + bias`` on the last axis.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, optional
    gain : float, optional
        Initial weights have variance ``gain / in_features`` (finite, ``>= 0``).
    rng : int or numpy.random.Generator, optional
    dtype : numpy dtype, optional
        float32 (default) or float64.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gain: float = 2.0, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features = _check_int(in_features, "in_features", "Linear")
        self.out_features = _check_int(out_features, "out_features", "Linear")
        as_flag(bias, "Linear: bias")
        shape = (self.out_features, self.in_features)  # drawn in float64, as above
        check_bytes(8 * math.prod(shape), f"Linear: a weight of shape {shape}")
        gain = _check_gain(gain, "Linear")
        dtype = float_dtype(dtype, "Linear")
        rng = as_rng(rng, "Linear: rng")
        w = rng.standard_normal((out_features, in_features)) * np.sqrt(gain / in_features)
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if bias else None

    def extra_repr(self) -> str:
        """Features in and out, for ``repr``."""
        return f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        """Apply to ``x`` of shape ``(..., in_features)``."""
        x = _as_tensor(x, self)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{_label(self)}: expected input of shape (..., "
                             f"{self.in_features}), got {x.shape}")
        _check_dtype(x, self, self.weight)
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y


class ModuleList(Module):
    """Sub-modules held by position, registered as a model's own.

    A plain Python list of layers on a model is not walked:
    ``parameters()``, the optimizers, checkpoints and ``to`` would miss
    theirs (the model warns).  Iterate over a ``ModuleList`` in ``forward``;
    :class:`Sequential` is one that feeds each module's output to the next.

    Parameters
    ----------
    modules : iterable of Module, optional

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> blocks = ps.nn.ModuleList(ps.nn.Linear(4, 4) for _ in range(3))
    >>> len(blocks), len(blocks.parameters())
    (3, 6)
    """

    def __init__(self, modules=()):
        super().__init__()
        self._n = 0
        if isinstance(modules, Module) and not isinstance(modules, ModuleList):
            raise TypeError(f"ModuleList takes an iterable of modules, got one "
                            f"{type(modules).__name__}; pass [module]")
        self.extend(modules)

    def append(self, module: Module):
        """Add ``module`` at the end.

        Parameters
        ----------
        module : Module

        Returns
        -------
        ModuleList
            This container.
        """
        return self.extend([module])

    def extend(self, modules):
        """Add each of ``modules`` at the end.  Every item is checked first: on an error
        nothing is added.

        Parameters
        ----------
        modules : iterable of Module

        Returns
        -------
        ModuleList
            This container.
        """
        modules = list(modules)
        for k, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"{type(self).__name__}: item {self._n + k} is a "
                                f"{type(m).__name__}, not a Module")
        for m in modules:
            setattr(self, str(self._n), m)
            self._n += 1
        return self

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i) -> Module:
        """The ``i``-th module; a slice gives a container of the same (shared) modules."""
        if isinstance(i, slice):
            return self._of([self[k] for k in range(self._n)[i]])
        return getattr(self, str(range(self._n)[i]))

    def __iter__(self):
        return (self[i] for i in range(self._n))

    @staticmethod
    def _of(modules):
        return ModuleList(modules)

    def forward(self, x):
        """A list has no forward of its own: iterate over it, or use :class:`Sequential`."""
        raise TypeError("ModuleList has no forward: call its modules in your model's forward, "
                        "or use nn.Sequential to chain them")


class Sequential(ModuleList):
    """Apply modules one after the other.

    Parameters
    ----------
    *modules : Module
    """

    def __init__(self, *modules):
        super().__init__(modules)

    @staticmethod
    def _of(modules):
        return Sequential(*modules)

    def forward(self, x):
        """Feed ``x`` through every module in turn."""
        for m in self:
            x = m(x)
        return x


class OrbitPool(Module):
    """Pool axis 1 over the orbits of a group: the invariant head.

    ``(batch, n, channels) -> (batch, n_orbits, channels)``; each output is
    the sum, mean or max of one orbit's entries, so the result is invariant to
    the group (and, for a subgroup, to that subgroup).

    Parameters
    ----------
    gens : array_like of int, shape (k, n), or Action
        Generators whose orbits are pooled (an Action: its output orbits).
    reduce : {"sum", "mean", "max"}, optional
    """

    def __init__(self, gens, reduce: str = "mean"):
        super().__init__()
        if reduce not in ("sum", "mean", "max"):
            raise ValueError(f"OrbitPool: reduce must be 'sum', 'mean' or 'max', got {reduce!r}")
        labels = gens.orbits_out() if isinstance(gens, Action) else orbits(gens)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n = int(self.labels.shape[0])
        self.n_orbits = int(self.labels.max()) + 1 if self.n else 0
        self.reduce = reduce

    def extra_repr(self) -> str:
        """Points, orbits and reduction, for ``repr``."""
        return f"n={self.n}, n_orbits={self.n_orbits}, reduce={self.reduce!r}"

    def forward(self, x):
        """Pool ``x`` of shape ``(batch, n, channels)``."""
        x = _as_tensor(x, self)
        if x.ndim < 2 or x.shape[1] != self.n:
            raise ValueError(f"{_label(self)}: expected input of shape (batch, {self.n}, ...), "
                             f"got {x.shape}")
        return segment_reduce(x, self.labels, self.n_orbits, self.reduce)


class Flatten(Module):
    """Flatten every axis after the first: ``(batch, ...) -> (batch, prod(...))``."""

    def forward(self, x):
        """Flatten ``x``."""
        x = _as_tensor(x, "Flatten")
        if x.ndim < 1:
            raise ValueError("Flatten: expected input of shape (batch, ...), got a 0-d one")
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # -1 is ambiguous at batch 0


class Identity(Module):
    """Return the input unchanged."""

    def forward(self, x):
        """Return ``x``."""
        return x


class Dropout(Module):
    """Zero each entry with probability ``p`` in training mode (scaling the rest).

    Parameters
    ----------
    p : float, optional
        Drop probability in ``[0, 1)``.
    rng : int or numpy.random.Generator, optional
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        self.p = as_real(p, "Dropout: p", 0.0, 1.0, hi_open=True)
        self.rng = as_rng(rng, "Dropout: rng")

    def extra_repr(self) -> str:
        """Drop probability, for ``repr``."""
        return f"p={self.p}"

    def forward(self, x):
        """Drop entries of ``x`` (training mode only)."""
        x = _as_tensor(x, "Dropout")
        if not self.training or self.p == 0:
            return x
        keep = self.rng.random(x.shape) >= self.p
        # the scale in x's float dtype (float64 for ints and bools, as numpy promotes):
        # cast to an int dtype, 1 / 0.7 would be 1
        fdt = x.dtype if np.dtype(x.dtype).kind in "fc" else np.dtype(np.float64)
        return x * (keep / (1 - self.p)).astype(fdt)


class ReLU(Module):
    """Elementwise ``max(x, 0)``."""

    def forward(self, x):
        """Apply to ``x``."""
        return _as_tensor(x, "ReLU").relu()


class LeakyReLU(Module):
    """Elementwise ``x`` if positive else ``slope * x``.

    Parameters
    ----------
    slope : float, optional
    """

    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = as_real(slope, "LeakyReLU: slope")

    def forward(self, x):
        """Apply to ``x``."""
        return _as_tensor(x, "LeakyReLU").leaky_relu(self.slope)


class Tanh(Module):
    """Elementwise hyperbolic tangent."""

    def forward(self, x):
        """Apply to ``x``."""
        return _as_tensor(x, "Tanh").tanh()


class Sigmoid(Module):
    """Elementwise logistic function."""

    def forward(self, x):
        """Apply to ``x``."""
        return _as_tensor(x, "Sigmoid").sigmoid()


class GELU(Module):
    """Elementwise Gaussian error linear unit."""

    def forward(self, x):
        """Apply to ``x``."""
        return _as_tensor(x, "GELU").gelu()
