"""Permutations as integer arrays.

A permutation of ``{0..n-1}`` is an int array ``p`` with ``p[i]`` the image
of ``i``.  Composition applies the right factor first,
``compose(p, q)[i] == p[q[i]]``, and a permutation moves the entries of an
array: ``apply(p, x)[p[i]] == x[i]`` (a left action).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ._validate import INDEX, as_axis, as_degree, as_perm, as_positive_int, as_rng, axis_hint

__all__ = [
    "identity", "compose", "inverse", "apply", "from_cycles", "to_cycles", "random",
    "is_identity", "order_of",
]


def identity(n: int) -> np.ndarray:
    """Identity permutation of ``n`` points.

    Parameters
    ----------
    n : int
        Number of points (``>= 0``).

    Returns
    -------
    numpy.ndarray
        ``arange(n)`` as int64.
    """
    return np.arange(as_degree(n), dtype=INDEX)


def compose(p, q) -> np.ndarray:
    """Product ``p * q``: apply ``q`` first, then ``p``.

    Parameters
    ----------
    p, q : array_like of int
        Permutations of the same length.

    Returns
    -------
    numpy.ndarray
        ``r`` with ``r[i] = p[q[i]]``.

    Examples
    --------
    >>> compose([1, 2, 0], [1, 0, 2]).tolist()
    [2, 1, 0]
    """
    p = as_perm(p, "p")
    q = as_perm(q, "q", n=p.shape[0])
    return p[q]


def inverse(p) -> np.ndarray:
    """Inverse permutation: ``inverse(p)[p[i]] == i``.

    Parameters
    ----------
    p : array_like of int
        A permutation.

    Returns
    -------
    numpy.ndarray
        The inverse, int64.
    """
    p = as_perm(p, "p")
    inv = np.empty_like(p)
    inv[p] = np.arange(p.shape[0], dtype=INDEX)
    return inv


def apply(p, x, axis: int = -1) -> np.ndarray:
    """Move the entries of ``x`` along ``axis`` by ``p``: ``out[p[i]] = x[i]``.

    Parameters
    ----------
    p : array_like of int
        Permutation of ``x.shape[axis]`` points.
    x : array_like
        Array to permute; not modified.
    axis : int, optional
        Axis that the points index (default last).

    Returns
    -------
    numpy.ndarray
        ``x`` with entries moved, equal to ``x.take(inverse(p), axis)``; a masked
        array's mask moves with its entries.
    """
    x = x if isinstance(x, np.ma.MaskedArray) else np.asarray(x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension to permute")
    given, axis = axis, as_axis(axis, x.ndim)
    if isinstance(p, (np.ndarray, list, tuple)) and np.ndim(p) == 1 and len(p) != x.shape[axis]:
        raise ValueError(f"p permutes {len(p)} points but x has {x.shape[axis]} entries along "
                         f"axis {given} (shape {x.shape}){axis_hint(x.shape, len(p))}")
    p = as_perm(p, "p", n=x.shape[axis])
    inv = np.empty_like(p)
    inv[p] = np.arange(p.shape[0], dtype=INDEX)
    return np.take(x, inv, axis=axis)


_CYCLE = re.compile(r"\(([^()]*)\)")


def from_cycles(cycles, n: int) -> np.ndarray:
    """Build a permutation from cycle notation.

    Parameters
    ----------
    cycles : str or sequence of sequences of int
        ``"(0 1 2)(3 4)"`` (spaces or commas between points) or
        ``[[0, 1, 2], [3, 4]]``.  Cycles are composed right to left as in
        the usual convention; disjoint cycles commute.  ``"()"`` or ``[]``
        is the identity.
    n : int
        Number of points.

    Returns
    -------
    numpy.ndarray
        The permutation, ``p[c[j]] = c[j + 1]`` along each cycle ``c``.

    Examples
    --------
    >>> from_cycles("(0 1 2)(3 4)", n=5).tolist()
    [1, 2, 0, 4, 3]
    """
    n = as_degree(n)
    if isinstance(cycles, str):
        text = cycles.strip()
        if _CYCLE.sub("", text).strip():
            raise ValueError(f"cannot parse cycle notation {cycles!r}; write e.g. '(0 1 2)(3 4)'")
        parsed = []
        for body in _CYCLE.findall(text):
            tokens = body.replace(",", " ").split()
            try:
                parsed.append([int(t) for t in tokens])
            except ValueError:
                raise ValueError(f"cycle ({body}) in {cycles!r} holds a non-integer") from None
        cycles = parsed
    try:
        cycles = [list(c) for c in cycles]
    except TypeError:
        raise TypeError(f"cycles must be a string like '(0 1 2)(3 4)' or a list of cycles "
                        f"like [[0, 1, 2], [3, 4]], got {cycles!r}") from None
    p = np.arange(n, dtype=INDEX)
    for c in reversed(cycles):  # rightmost cycle acts first
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
               for v in c):
            raise TypeError(f"cycle {tuple(c)} must hold integer points")
        c = [int(v) for v in c]
        if len(set(c)) != len(c):
            raise ValueError(f"cycle {tuple(c)} repeats a point")
        for v in c:
            if not 0 <= v < n:
                raise ValueError(f"point {v} in cycle {tuple(c)} is out of range 0..{n - 1}")
        step = np.arange(n, dtype=INDEX)
        for a, b in zip(c, c[1:] + c[:1]):
            step[a] = b
        p = step[p]
    return p


def to_cycles(p, singletons: bool = False) -> str:
    """Cycle notation of a permutation.

    Parameters
    ----------
    p : array_like of int
        A permutation.
    singletons : bool, optional
        Also write fixed points as 1-cycles.

    Returns
    -------
    str
        Cycles each starting at their smallest point, ordered by it;
        ``"()"`` for the identity.

    Examples
    --------
    >>> to_cycles([1, 2, 0, 4, 3])
    '(0 1 2)(3 4)'
    """
    p = as_perm(p, "p")
    seen = np.zeros(p.shape[0], dtype=bool)
    parts = []
    for start in range(p.shape[0]):
        if seen[start]:
            continue
        cycle = [start]
        seen[start] = True
        j = int(p[start])
        while j != start:
            cycle.append(j)
            seen[j] = True
            j = int(p[j])
        if len(cycle) > 1 or singletons:
            parts.append("(" + " ".join(map(str, cycle)) + ")")
    return "".join(parts) or "()"


def random(n: int, size: int | None = None, rng=None) -> np.ndarray:
    """Uniformly random permutation(s).

    Parameters
    ----------
    n : int
        Number of points.
    size : int, optional
        Number of permutations; ``None`` returns one 1-D permutation.
    rng : int or numpy.random.Generator, optional
        Seed or generator.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)`` or ``(size, n)``, int64.
    """
    size = None if size is None else as_positive_int(size, "size", minimum=0)
    n = as_degree(n, arrays=2 * (1 if size is None else size),  # the keys and the result
                  call=f"random(n={n}, size={size})")
    rng = as_rng(rng)
    if size is None:
        return rng.permutation(n).astype(INDEX)
    return np.argsort(rng.random((size, n)), axis=1).astype(INDEX)


def is_identity(p) -> bool:
    """Whether ``p`` fixes every point.

    Parameters
    ----------
    p : array_like of int
        A permutation.

    Returns
    -------
    bool
    """
    p = as_perm(p, "p")
    return bool(np.array_equal(p, np.arange(p.shape[0])))


def order_of(p) -> int:
    """Order of one permutation: the lcm of its cycle lengths.

    Parameters
    ----------
    p : array_like of int
        A permutation.

    Returns
    -------
    int
        Smallest ``k >= 1`` with ``p**k`` the identity.
    """
    p = as_perm(p, "p")

    seen = np.zeros(p.shape[0], dtype=bool)
    result = 1
    for start in range(p.shape[0]):
        if seen[start]:
            continue
        length, j = 0, start
        while not seen[j]:
            seen[j] = True
            j = int(p[j])
            length += 1
        result = math.lcm(result, length)
    return result

