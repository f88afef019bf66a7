"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (step, cosine).

Updates are done in place on each parameter's numpy data, in the
parameter's own dtype (float32 stays float32), outside the autograd graph.
Parameters on a CUDA device are updated on a host copy that is written back
(the optimizer state stays on the host).
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import as_flag, as_positive_int, as_real, as_real_array
from .autograd.function import no_grad, to_host

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR"]


def _rate(lo_open=False):
    return lambda v, name: as_real(v, name, lo=0.0, lo_open=lo_open)


def _fraction(v, name):
    return as_real(v, name, 0.0, 1.0, hi_open=True)


class Optimizer:
    """Base class: holds the parameters, the learning rate and per-parameter state.

    Parameters
    ----------
    params : iterable of Parameter, or Module
        Tensors to update (duplicates are kept once); a model stands for its
        ``parameters()``.
    lr : float
        Learning rate, > 0.  Schedules change :attr:`lr` (0 allowed there);
        every hyper-parameter is checked again whenever it is set.
    """

    #: Hyper-parameter -> its check, run whenever it is set (not only by the constructor:
    #: schedules and users change them between steps, and a bad value found in the middle
    #: of an update would leave some parameters and their state updated and others not).
    #: A check on assignment, not a property: reading them stays a plain attribute lookup.
    _checks = {"lr": _rate()}

    def __setattr__(self, name, value):
        check = self._checks.get(name)
        if check is not None:
            value = check(value, f"{type(self).__name__}: {name}")
        object.__setattr__(self, name, value)

    def __init__(self, params, lr: float):
        name = type(self).__name__
        if hasattr(params, "requires_grad"):  # one Tensor would iterate into its rows
            raise TypeError(f"{name}: params must be an iterable of parameters, got one "
                            f"Tensor; pass [p] or model.parameters()")
        if callable(getattr(params, "parameters", None)):  # a model: its parameters
            params = params.parameters()
        try:
            params = list(params)
        except TypeError:  # not iterable
            raise TypeError(f"{name}: params must be an iterable of parameters or a model, "
                            f"got {type(params).__name__}") from None
        seen, unique = set(), []
        for p in params:
            if not getattr(p, "requires_grad", False):
                raise TypeError(f"{name}: every parameter must be a Tensor with "
                                f"requires_grad=True")
            if not p.is_leaf:  # an op's result: updating its data changes nothing upstream
                raise TypeError(f"{name}: parameters must be leaf tensors (created by the "
                                f"user, not by an operation)")
            if id(p) not in seen:
                seen.add(id(p))
                unique.append(p)
        if not unique:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        self.params = unique
        self.lr = as_real(lr, f"{name}: lr", lo=0.0, lo_open=True)  # > 0 to start with
        self.state = {}
        self.steps = 0

    def zero_grad(self) -> None:
        """Forget every parameter's gradient."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient.

        Every gradient and hyper-parameter is checked first, so a bad one (a
        wrong shape or dtype, a read-only parameter, Nesterov without momentum)
        raises before any parameter, state or step count changes.
        """
        self._check()
        grads = [(p, self._checked_grad(p)) for p in self.params if p.grad is not None]
        self.steps += 1
        with no_grad():
            for p, g in grads:
                st = self.state.setdefault(id(p), {})
                for key, value in st.items():  # after Module.astype the state follows
                    if isinstance(value, np.ndarray) and value.dtype != p.dtype:
                        st[key] = value.astype(p.dtype)
                if p.device == "cpu":
                    self._update(p.data, g, st)
                else:  # CUDA: update a host copy, write it back
                    w = p.data.copy_to_host()
                    self._update(w, g, st)
                    p.data.copy_to_device(w)

    def _checked_grad(self, p) -> np.ndarray:
        """``p``'s gradient on the host in ``p``'s dtype, refused before any update."""
        name = f"{type(self).__name__}.step"
        g = to_host(p.grad)
        if not (type(g) is np.ndarray and g.dtype == p.dtype):  # else as it is, no copy
            g = as_real_array(g, p.dtype, f"{name}: the gradient of a parameter of shape "
                                          f"{p.shape}", "p.grad")
        if g.shape != p.shape:
            raise ValueError(f"{name}: a gradient of shape {g.shape} for a parameter of shape "
                             f"{p.shape}")
        if p.device == "cpu" and not p.data.flags.writeable:
            raise ValueError(f"{name}: a parameter of shape {p.shape} is read-only; give "
                             f"parameters writeable arrays (np.array(..., copy=True))")
        return g

    def _check(self):
        """Checks that involve several hyper-parameters (each alone is checked when set)."""

    def _update(self, w, g, state):  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov and weight decay.

    With ``g = grad + weight_decay * p``: ``buf = momentum * buf + g``
    (``buf = g`` at the first step); the update is ``p -= lr * buf``, or with
    Nesterov ``p -= lr * (g + momentum * buf)`` (PyTorch's convention).

    Parameters
    ----------
    params : iterable of Parameter, or Module
    lr : float
    momentum : float, optional
        In ``[0, 1)``.
    nesterov : bool, optional
    weight_decay : float, optional
        L2 penalty coefficient.
    """

    _checks = {**Optimizer._checks, "momentum": _fraction, "nesterov": as_flag,
               "weight_decay": _rate()}

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self._check()

    def _check(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")

    def _update(self, w, g, state):
        t = w.dtype.type
        if self.weight_decay:
            g = g + t(self.weight_decay) * w
        if self.momentum:
            buf = state.get("momentum")
            buf = g.copy() if buf is None else t(self.momentum) * buf + g
            state["momentum"] = buf
            g = g + t(self.momentum) * buf if self.nesterov else buf
        w -= t(self.lr) * g


def _betas(v, name):
    pair = None
    if not isinstance(v, (str, bytes, set, frozenset, dict)):  # a set's order is not theirs
        try:
            pair = tuple(v)
        except TypeError:  # not iterable
            pass
    if pair is None or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {v!r}")
    return tuple(_fraction(b, f"{name}[{i}]") for i, b in enumerate(pair))


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is an L2 term.

    Parameters
    ----------
    params : iterable of Parameter, or Module
    lr : float, optional
    betas : (float, float), optional
    eps : float, optional
    weight_decay : float, optional
        Added to the gradient (``g + weight_decay * p``); see :class:`AdamW`
        for decoupled decay.
    """

    decoupled = False
    _checks = {**Optimizer._checks, "betas": _betas, "eps": _rate(lo_open=True),
               "weight_decay": _rate()}

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, w, g, state):
        t = w.dtype.type
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                w *= t(1 - self.lr * self.weight_decay)
            else:
                g = g + t(self.weight_decay) * w
        k = state.get("step", 0) + 1
        state["step"] = k
        m = state.get("m")
        v = state.get("v")
        if m is None:
            m = np.zeros_like(w)
            v = np.zeros_like(w)
        m *= t(b1)
        m += t(1 - b1) * g
        v *= t(b2)
        v += t(1 - b2) * (g * g)
        state["m"], state["v"] = m, v
        step = self.lr / (1 - b1 ** k)
        denom = np.sqrt(v / t(1 - b2 ** k))
        denom += t(self.eps)
        w -= t(step) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * weight_decay`` before the step.

    Parameters
    ----------
    params : iterable of Parameter, or Module
    lr : float, optional
    betas : (float, float), optional
    eps : float, optional
    weight_decay : float, optional
        Default 0.01.
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


class _Schedule:
    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def step(self) -> float:
        """Advance one epoch and set the optimizer's learning rate; returns it."""
        self.epoch += 1
        try:
            lr = self.get_lr()
        except OverflowError:  # Python's float ** int raises where numpy gives inf
            lr = math.inf
        if not math.isfinite(lr):  # gamma > 1 for long enough: refuse, change nothing
            self.epoch -= 1
            raise ValueError(f"{type(self).__name__}: the learning rate overflowed to {lr} at "
                             f"epoch {self.epoch + 1}")
        self.optimizer.lr = lr
        return lr

    def get_lr(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class StepLR(_Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
    gamma : float, optional
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = as_positive_int(step_size, "StepLR: step_size")
        self.gamma = as_real(gamma, "StepLR: gamma", lo=0.0)

    def get_lr(self) -> float:
        """``base_lr * gamma ** (epoch // step_size)``."""
        return self.base_lr * self.gamma ** (self.epoch // self.step_size)


class CosineAnnealingLR(_Schedule):
    """Cosine decay from the initial rate to ``eta_min`` over ``T_max`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Epochs from ``base_lr`` down to ``eta_min``; the rate stays at
        ``eta_min`` after them (PyTorch's rises again, as a cosine of period
        ``2 T_max``: restart explicitly if you want that).
    eta_min : float, optional
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803
        super().__init__(optimizer)
        self.T_max = as_positive_int(T_max, "CosineAnnealingLR: T_max")
        self.eta_min = as_real(eta_min, "CosineAnnealingLR: eta_min", lo=0.0)

    def get_lr(self) -> float:
        """``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` with
        ``t = min(epoch, T_max)``."""
        t = min(self.epoch, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t
                                                                            / self.T_max)) / 2
