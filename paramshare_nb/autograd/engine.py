"""Reverse-mode sweep: iterative topological sort and gradient accumulation.

The sort is an explicit-stack post-order walk, so graphs of any depth
backpropagate without touching Python's recursion limit.  Gradients flowing
into a node are summed in a table keyed by the node (HIPS autograd's
``outgrads``): a tensor used several times gets the sum of its uses, and
intermediate tensors are never mutated.  Only leaves that require a gradient
receive ``.grad`` (accumulated with ``+=`` across calls, as parameters need).
"""

from __future__ import annotations

import numpy as np

from .._validate import as_real_array
from .function import device_of, is_cuda_array, no_grad, to_device, to_host

__all__ = ["backward", "toposort"]


def toposort(root) -> list:
    """Nodes reachable from ``root`` that require gradients, inputs first.

    Parameters
    ----------
    root : Tensor

    Returns
    -------
    list of Tensor
        Every node appears after all of its parents; ``root`` is last.
    """
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        ctx = node._ctx
        if ctx is not None:
            for parent in ctx.parents:
                if parent.requires_grad and id(parent) not in seen:
                    stack.append((parent, False))
    return order


def _ones_like(data):
    ones = np.ones(data.shape, dtype=data.dtype)
    return to_device(ones) if device_of(data) == "cuda" else ones


def _accumulate(table, node, grad, op):
    """Add ``grad`` into ``node``'s entry; ``op`` is the Function class that made it."""
    if tuple(grad.shape) != tuple(node.data.shape):
        raise RuntimeError(f"backward of {op.name()}: gradient of shape {tuple(grad.shape)} "
                           f"for an input of shape {node.shape} (the input's .data replaced "
                           f"after the forward, or a bug in that op)")
    key = id(node)
    old = table.get(key)
    if old is None:
        table[key] = grad
    else:
        table[key] = _add(old, grad)


def _add(a, b):
    if not (is_cuda_array(a) or is_cuda_array(b)):
        return a + b
    # CUDA gradients: summed on the host (see Function.native_cuda)
    return to_device(np.asarray(to_host(a)) + np.asarray(to_host(b)))


def _check_leaf_grad(node):
    """A leaf's ``.grad`` (public, so set by anyone) must be ``None`` or an array of the
    leaf's shape: numpy would broadcast a stale ``(1,)`` one into every entry."""
    old = node.grad
    if old is None:
        return
    if not (isinstance(old, np.ndarray) or is_cuda_array(old)):
        raise TypeError(f"backward: a leaf of shape {node.shape} holds a .grad of type "
                        f"{type(old).__name__}, not an array; set .grad = None (zero_grad()) "
                        f"first")
    if tuple(old.shape) != node.shape or np.dtype(old.dtype).kind != "f":
        raise ValueError(f"backward: a leaf of shape {node.shape} holds a .grad of shape "
                         f"{tuple(old.shape)} and dtype {old.dtype}; set .grad = None "
                         f"(zero_grad()) first")


def backward(root, grad=None) -> None:
    """Backpropagate from ``root``, filling ``.grad`` of the leaves.

    Parameters
    ----------
    root : Tensor
        The output to differentiate; it must require a gradient.
    grad : array_like, optional
        Gradient of some scalar with respect to ``root`` (same shape).
        Required unless ``root`` has exactly one element.

    Raises
    ------
    RuntimeError
        When ``root`` does not require a gradient, or is not a scalar and no
        ``grad`` is given.

    Notes
    -----
    Gradients accumulate in the leaves' ``.grad``, and the graph is kept: a
    second ``backward`` from the same root adds the same gradients again
    (PyTorch frees the graph and refuses unless ``retain_graph=True``).
    Call ``zero_grad()`` between steps.
    """
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require a gradient (no input had "
                           "requires_grad=True, or it was computed under no_grad())")
    if grad is None:
        if root.size != 1:
            raise RuntimeError(f"backward: the tensor has shape {root.shape}, not a scalar; pass "
                               f"grad= (an array of that shape) or reduce it first, e.g. .sum()")
        grad = _ones_like(root.data)
    else:
        from .tensor import Tensor

        if isinstance(grad, Tensor):
            grad = grad.data
        if device_of(grad) == "cpu":
            grad = as_real_array(grad, root.dtype, "backward: grad", "grad")
            if root.device == "cuda":
                grad = to_device(grad)
        if tuple(grad.shape) != tuple(root.shape):
            raise ValueError(f"backward: grad has shape {tuple(grad.shape)}, the tensor "
                             f"{tuple(root.shape)}")
    order = toposort(root)
    table = {id(root): grad}
    leaves = []  # (leaf, its gradient): written once the whole pass has succeeded
    with no_grad():
        for node in reversed(order):
            g = table.pop(id(node), None)
            if g is None:
                continue
            ctx = node._ctx
            if ctx is None:
                if node.requires_grad:  # .grad keeps a copy (g may be shared), made now
                    _check_leaf_grad(node)
                    fresh = node.grad is None and isinstance(g, np.ndarray)
                    leaves.append((node, g.copy() if fresh else g))
                continue
            if ctx.host_fallback:
                g = to_host(g)
            grads = type(ctx).backward(ctx, g)
            if not isinstance(grads, tuple):
                grads = (grads,)
            if ctx.host_fallback:
                grads = tuple(None if x is None else to_device(x) for x in grads)
            op = type(ctx)
            if len(grads) != len(ctx.parents):
                raise RuntimeError(f"backward of {op.name()} returned {len(grads)} gradients "
                                   f"for {len(ctx.parents)} inputs")
            for parent, pg in zip(ctx.parents, grads):
                if pg is None or not parent.requires_grad:
                    continue
                _accumulate(table, parent, pg, op)
    for node, g in leaves:
        node.grad = g if node.grad is None else _add(node.grad, g)
