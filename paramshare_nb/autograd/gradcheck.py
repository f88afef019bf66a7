"""Vector–Jacobian check of a backward pass against finite differences."""

from __future__ import annotations

import numpy as np

from .._validate import as_rng
from .engine import toposort
from .function import no_grad

__all__ = ["gradcheck"]


def gradcheck(f, *inputs, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9,
              n_checks: int = 2, rng=None, raise_exception: bool = True) -> bool:
    """Check the gradients of ``f`` at ``inputs`` by finite differences.

    For random directions ``v`` (one per input) and a random output covector
    ``u``, the central difference ``<u, (f(x + eps v) - f(x - eps v)) / 2eps>``
    must equal ``sum_i <grad_i, v_i>`` where ``grad_i`` is what
    :meth:`Tensor.backward` gives for ``f(x)`` with output gradient ``u``
    (the test of HIPS autograd's ``check_vjp``).

    Parameters
    ----------
    f : callable
        Maps the input tensors to one output tensor.
    *inputs : Tensor
        float64 tensors; those with ``requires_grad=True`` are checked.
    eps : float, optional
        Finite-difference step.
    rtol, atol : float, optional
        Tolerance on the two scalars: ``|fd - vjp| <= atol + rtol * max(|fd|,
        |vjp|) + noise``, where ``noise = 2**-52 * sum|u f(x +- eps v)| / eps``
        bounds the rounding error of the difference itself.  That bound sees
        only ``f``'s values, not its intermediates: ``x - mean(x)`` is exactly
        0 yet rounds at the scale of ``x``.  So a check that fails is retried
        once with the step ``100 eps``, where such rounding is 100 times
        smaller, and passes if that one agrees; a wrong backward fails both.
        A backward off by a factor is caught when the directional derivative
        exceeds about ``atol``; for tiny gradients (``1e-12 * x``) pass
        ``atol=0``.
    n_checks : int, optional
        Number of random ``(u, v)`` pairs.
    rng : int or numpy.random.Generator, optional
    raise_exception : bool, optional
        Raise ``AssertionError`` on failure (default) instead of returning False.

    Returns
    -------
    bool
        True when every check passes.  The ``grad`` of every leaf in ``f``'s
        graph is left as it was before the call.

    Raises
    ------
    TypeError
        When an input is not a float64 tensor (float32 differences are too
        coarse for a meaningful check).
    """
    from .tensor import Tensor

    rng = as_rng(rng)
    checked = []
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck: input {i} must be a Tensor")
        if t.requires_grad:
            if t.dtype != np.float64:
                raise TypeError(f"gradcheck: input {i} has dtype {t.dtype}; use float64 "
                                f"(Tensor(x.astype(np.float64), requires_grad=True))")
            checked.append(t)
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")

    def value():
        with no_grad():
            return np.array(f(*inputs).numpy(), dtype=np.float64)

    saved = {}  # every leaf of f's graph -> (leaf, its grad before the call)
    try:
        for _ in range(n_checks):
            out = f(*inputs)
            # the checked inputs too: f may not use one (its gradient is then zero)
            for node in [*checked, *toposort(out)]:
                if node.is_leaf:
                    saved.setdefault(id(node), (node, node.grad))
                    node.grad = None
            u = rng.standard_normal(out.shape)
            out.backward(u)
            vs = [rng.standard_normal(t.shape) for t in checked]
            vjp = sum(float(np.sum(np.asarray(t.grad if t.grad is not None else 0.0) * v))
                      for t, v in zip(checked, vs))
            fd, noise = _difference(value, checked, vs, u, eps)
            agrees = abs(fd - vjp) <= atol + rtol * max(abs(fd), abs(vjp)) + noise
            if not agrees:
                # rounding inside f (x - mean(x) is 0 but rounds at the scale of x) shrinks
                # as the step grows; a wrong backward does not: retry once at 100 eps
                fd2, noise2 = _difference(value, checked, vs, u, 100 * eps)
                agrees = abs(fd2 - vjp) <= atol + rtol * max(abs(fd2), abs(vjp)) + noise2
            if not agrees:
                if raise_exception:
                    raise AssertionError(f"gradcheck failed: finite differences give {fd!r}, "
                                         f"backward gives {vjp!r} (difference "
                                         f"{abs(fd - vjp):.3g})")
                return False
        return True
    finally:
        for leaf, grad in saved.values():
            leaf.grad = grad


def _difference(value, checked, vs, u, eps):
    """``<u, (f(x + eps v) - f(x - eps v)) / 2 eps>`` and the rounding bound of that
    difference (the values' own magnitudes, divided by the step)."""
    plus, minus = _shifted_values(value, checked, vs, eps)
    fd = float(np.sum(u * (plus - minus))) / (2 * eps)
    noise = np.finfo(np.float64).eps * float(np.sum(np.abs(u) * (np.abs(plus)
                                                                + np.abs(minus)))) / eps
    return fd, noise


def _shifted_values(value, checked, vs, eps):
    """``f`` at ``x + eps v`` and ``x - eps v`` (inputs restored afterwards: the very
    arrays they held, so a tensor still wraps its caller's array)."""
    originals = [t.data for t in checked]
    try:
        for t, x0, v in zip(checked, originals, vs):
            t.data = x0 + eps * v
        plus = value()
        for t, x0, v in zip(checked, originals, vs):
            t.data = x0 - eps * v
        minus = value()
    finally:
        for t, x0 in zip(checked, originals):
            t.data = x0
    return plus, minus
