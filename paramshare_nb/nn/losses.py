"""Loss functions: ``cross_entropy`` and ``mse``."""

from __future__ import annotations

import numpy as np

from .._validate import refuse_masked
from ..autograd.tensor import Tensor

__all__ = ["cross_entropy", "mse"]


def cross_entropy(logits, target, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of class scores against integer labels.

    Parameters
    ----------
    logits : Tensor
        ``(batch, n_classes)`` unnormalised scores.
    target : array_like of int
        ``(batch,)`` class ids in ``0..n_classes-1``.
    reduction : {"mean", "sum", "none"}, optional

    Returns
    -------
    Tensor
        A scalar (or ``(batch,)`` for ``reduction="none"``).
    """
    if not isinstance(logits, Tensor):
        logits = Tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (batch, n_classes), got {logits.shape}")
    refuse_masked(target, "cross_entropy: target", "target")
    target = np.asarray(target.numpy() if isinstance(target, Tensor) else target)
    if target.dtype.kind not in "iu":  # timedelta64 is an np.integer subtype
        raise TypeError(f"cross_entropy: target must hold integer class ids, got dtype "
                        f"{target.dtype}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy: target must have shape ({logits.shape[0]},), got "
                         f"{target.shape}")
    k = logits.shape[1]
    if target.size and (target.min() < 0 or target.max() >= k):
        raise ValueError(f"cross_entropy: target ids must lie in 0..{k - 1}")
    picked = logits.log_softmax(axis=1)[np.arange(target.shape[0]), target]
    return _reduce(-picked, reduction, "cross_entropy")


def mse(pred, target, reduction: str = "mean") -> Tensor:
    """Mean squared error ``mean((pred - target) ** 2)``.

    Parameters
    ----------
    pred : Tensor
    target : Tensor or array_like
        Same shape as ``pred`` (no broadcasting, to catch shape slips).
    reduction : {"mean", "sum", "none"}, optional

    Returns
    -------
    Tensor
    """
    if not isinstance(pred, Tensor):
        pred = Tensor(pred)
    if not isinstance(target, Tensor):
        # a float pred's dtype and device; an integer pred's target keeps its own dtype (cast
        # to the pred's, [0.5] against integers became [0])
        target = pred._lift(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred has shape {pred.shape}, target {target.shape}; they must "
                         f"match")
    diff = pred - target
    return _reduce(diff * diff, reduction, "mse")


def _reduce(x: Tensor, reduction: str, name: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
