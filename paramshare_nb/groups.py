"""Permutation groups given by generators.

A group is a ``(k, n)`` int array of generators, each row a permutation of
``n`` points.  Orbits come from union-find over the generators; order,
membership and stabilizers from a stabilizer chain (Schreier–Sims); only
:func:`closure` lists the elements.  Both refuse with a ``MemoryError`` when
they would not fit in ``config.max_bytes``.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from . import config
from ._kernels.groups_cpu import _closure, _orbits
from ._schreier import StabChain
from ._search import _graph_automorphisms
from ._validate import (
    INDEX,
    as_degree,
    as_gens,
    as_int_array,
    as_perm,
    as_point,
    as_positive_int,
    as_rng,
    bytes_text,
)

__all__ = [
    "orbits", "orbit_sizes", "closure", "order", "contains", "stabilizer",
    "is_transitive", "is_semiregular", "is_regular", "random_element",
    "cyclic", "dihedral", "symmetric", "alternating", "trivial",
    "grid_translations", "square_symmetries", "rubik_cube", "graph_automorphisms",
]


def _degree_hint(n):
    return None if n is None else as_positive_int(n, "n", minimum=0)


def orbits(gens, n: int | None = None) -> np.ndarray:
    """Orbit id of every point, by union-find over the generators.

    The group is never enumerated: the orbits are the connected components
    of the graph ``i -> g[i]``.  Orbits are numbered by their smallest point,
    so point 0 is in orbit 0 and ids grow with first appearance.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators, one permutation per row.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 orbit ids.

    Examples
    --------
    >>> orbits([[1, 0, 2, 4, 3]]).tolist()
    [0, 0, 1, 2, 2]
    """
    gens = as_gens(gens, "gens", n=_degree_hint(n))
    return _orbits(gens)


def orbit_sizes(gens, n: int | None = None) -> np.ndarray:
    """Size of each orbit, indexed by the orbit ids of :func:`orbits`.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    numpy.ndarray
        ``(n_orbits,)`` int64.
    """
    return np.bincount(orbits(gens, n)).astype(INDEX)


_CHAINS: dict = {}
_CHAINS_LOCK = threading.Lock()
_CHAINS_KEPT = 16


def _chain(gens, base_prefix=()) -> StabChain:
    """Stabilizer chain of validated generators, memoised on their bytes.

    Reports and CLI commands ask several questions of one group in a row;
    the chain is the expensive part, so the last few are kept: at most
    ``_CHAINS_KEPT``, holding together at most ``config.max_bytes`` (the
    newest is always kept).
    """
    key = (gens.shape, gens.tobytes(), tuple(base_prefix))
    with _CHAINS_LOCK:
        chain = _CHAINS.pop(key, None)
    if chain is None:
        chain = StabChain(gens, base_prefix)  # outside the lock: it can take a while
    with _CHAINS_LOCK:
        _CHAINS[key] = chain  # most recent last
        held = sum(c.nbytes for c in _CHAINS.values())
        while len(_CHAINS) > 1 and (len(_CHAINS) > _CHAINS_KEPT or held > config.max_bytes):
            held -= _CHAINS.pop(next(iter(_CHAINS))).nbytes
    return chain


def order(gens, n: int | None = None) -> int:
    """Exact order of the generated group, without enumerating it.

    Uses a stabilizer chain (Schreier–Sims); the Rubik's cube group on 48
    points takes a fraction of a second.  A transitive group on 8 points or
    more is first tried by random Schreier–Sims, which stops when the order
    reaches ``n!`` (``n!/2`` for even generators): a proof that the group
    is ``S_n`` (``A_n``), in 1.7 s for ``S_512``.  Any other group's chain
    is completed and verified deterministically, which grows about as
    ``n**4`` where the levels are many (0.9 s for ``S_128`` acting on 256
    points, not transitively; 14 s for ``S_256`` on 512).  The chain holds
    one int64 row of ``n`` points per orbit point of each level: ``8 n sum
    |orbit|`` bytes, ``8 n^2`` for a regular group (800 MB and 3 s for the
    translations of a 100 x 100 grid), about ``4 n^3`` for ``S_n``.
    :func:`contains`, :func:`stabilizer` and :func:`random_element` build
    the same chain.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    int
        ``|G|`` as a Python int (exact for any size).

    Raises
    ------
    MemoryError
        When the chain would exceed ``config.max_bytes``.

    Examples
    --------
    >>> order(symmetric(10))
    3628800
    """
    gens = as_gens(gens, "gens", n=_degree_hint(n))
    return _chain(gens).order()


def contains(gens, g) -> bool:
    """Whether permutation ``g`` lies in the group generated by ``gens``.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    g : array_like of int, shape (n,)
        Candidate permutation.

    Returns
    -------
    bool
    """
    g = as_perm(g, "g")
    gens = as_int_array(gens, "gens")
    # a (0, n) array states its degree; an empty list takes g's
    gens = as_gens(gens, "gens", n=None if gens.ndim == 2 else g.shape[0])
    if gens.shape[1] != g.shape[0]:  # g is the odd one out: the generators agree
        raise ValueError(f"g has length {g.shape[0]}, but gens act on {gens.shape[1]} points")
    return _chain(gens).contains(g)


def stabilizer(gens, i: int) -> np.ndarray:
    """Generators of the stabilizer of point ``i``.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    i : int
        The point to fix.

    Returns
    -------
    numpy.ndarray
        ``(k', n)`` strong generators of ``G_i`` (``k' = 0`` when trivial).

    Examples
    --------
    >>> order(stabilizer(symmetric(5), 0))
    24
    """
    gens = as_gens(gens, "gens")
    i = as_point(i, gens.shape[1], "i")
    return _chain(gens, base_prefix=[i]).level_generators(1)


def _is_free(gens, labels) -> bool:
    """Whether the group of ``gens`` acts freely on the points its orbits ``labels`` cover:
    every orbit has ``|G|`` points.  Orbits of unequal sizes cannot; equal ones of size
    ``s`` need ``|G| == s``, which a walk over at most ``s + 1`` elements settles without a
    stabilizer chain (S_128 acting on 256 points: 0.9 s)."""
    sizes = np.bincount(labels)
    if sizes.size == 0:
        return True
    s = int(sizes[0])
    if not np.all(sizes == s):
        return False
    if 8 * gens.shape[1] * (s + 1) > config.max_bytes:  # the walk's elements would not fit:
        return _chain(gens).order() == s  # the chain, which refuses past the bound
    return _order_up_to(gens, s) == s


def is_transitive(gens, n: int | None = None) -> bool:
    """Whether the group has a single orbit (an empty point set counts as transitive).

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    bool
    """
    labels = orbits(gens, n)
    return labels.size == 0 or int(labels.max()) == 0


def is_semiregular(gens, n: int | None = None) -> bool:
    """Whether the action is free: only the identity fixes any point.

    Equivalent to every orbit having ``|G|`` points, which is how it is
    checked: orbits of unequal sizes cannot, and for equal ones of size
    ``s`` at most ``s + 1`` elements are listed to compare ``|G|`` with ``s``
    (no stabilizer chain).

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    bool
    """
    gens = as_gens(gens, "gens", n=_degree_hint(n))
    return _is_free(gens, _orbits(gens))


def is_regular(gens, n: int | None = None) -> bool:
    """Whether the action is transitive and free (``|G| == n``, one orbit).

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.

    Returns
    -------
    bool
    """
    gens = as_gens(gens, "gens", n=_degree_hint(n))
    if gens.shape[1] == 0:  # no points: vacuously transitive and free, like the helpers above
        return True
    labels = _orbits(gens)
    return int(labels.max()) == 0 and _is_free(gens, labels)


def closure(gens, n: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Every element of the generated group, in a deterministic order.

    Breadth-first search from the identity (row 0), multiplying by the
    generators in their given order, with hashing to detect repeats.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    n : int, optional
        Number of points; needed only when ``gens`` is empty.
    max_bytes : int, optional
        Refuse when the result would take more memory than this
        (default ``config.max_bytes``).

    Returns
    -------
    numpy.ndarray
        ``(|G|, n)`` int64 elements; row 0 is the identity.

    Raises
    ------
    MemoryError
        When ``|G| * n`` entries exceed the bound; the message gives the
        order and the memory it would take.
    """
    gens = as_gens(gens, "gens", n=_degree_hint(n))
    size = _chain(gens).order()
    _check_closure_memory(size, gens.shape[1], max_bytes)
    return _closure(gens, size)


def _check_closure_memory(size: int, n: int, max_bytes) -> None:
    bound = config.max_bytes if max_bytes is None else as_positive_int(max_bytes, "max_bytes")
    # elements plus the hash table (two int64 slots per element at most)
    need = size * max(n, 1) * 8 + size * 32
    if need > bound:
        raise MemoryError(
            f"the group has order {size}; listing its elements on {n} points needs about "
            f"{bytes_text(need)}, over the bound of {bytes_text(bound)}. Work with "
            f"generators (orbits, order, contains need no listing) or raise "
            f"max_bytes / config.max_bytes"
        )


def random_element(gens, size: int | None = None, rng=None) -> np.ndarray:
    """Uniformly random group element(s), from the stabilizer chain.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    size : int, optional
        Number of elements; ``None`` returns one ``(n,)`` permutation.
    rng : int or numpy.random.Generator, optional
        Seed or generator.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` or ``(size, n)`` int64.
    """
    gens = as_gens(gens, "gens")
    rng = as_rng(rng)
    if size is not None:  # checked before the chain is built
        size = as_positive_int(size, "size", minimum=0)
        as_degree(gens.shape[1], arrays=size, call=f"random_element(size={size})")
    chain = _chain(gens)
    if size is None:
        return chain.random_element(rng)
    out = np.empty((size, gens.shape[1]), dtype=INDEX)
    for j in range(size):
        out[j] = chain.random_element(rng)
    return out


# -- named groups ------------------------------------------------------------

def _cycle_perm(points, n):
    p = np.arange(n, dtype=INDEX)
    pts = np.asarray(points, dtype=INDEX)
    p[pts] = np.roll(pts, -1)
    return p


def trivial(n: int) -> np.ndarray:
    """The trivial group on ``n`` points: no generators, shape ``(0, n)``.

    Parameters
    ----------
    n : int
        Number of points.

    Returns
    -------
    numpy.ndarray
        ``(0, n)`` int64.
    """
    return np.zeros((0, as_positive_int(n, "n", minimum=0)), dtype=INDEX)


def cyclic(n: int) -> np.ndarray:
    """Cyclic group ``C_n`` rotating ``n`` points: ``i -> i + 1 mod n``.

    Parameters
    ----------
    n : int
        Number of points (``>= 1``).

    Returns
    -------
    numpy.ndarray
        ``(1, n)`` generator.
    """
    n = as_degree(n, minimum=1)
    return _cycle_perm(range(n), n)[None, :]


def dihedral(n: int) -> np.ndarray:
    """Dihedral group ``D_n`` (order ``2n``) on the vertices of an n-gon.

    For ``n <= 2`` the action on ``n`` points cannot be faithful: the group
    generated has order 1 (``n = 1``) or 2 (``n = 2``).

    Parameters
    ----------
    n : int
        Number of vertices (``>= 1``).

    Returns
    -------
    numpy.ndarray
        ``(2, n)``: the rotation ``i -> i + 1`` and the reflection ``i -> -i``
        (mod ``n``).
    """
    n = as_degree(n, arrays=3, minimum=1)  # the points and two generators
    i = np.arange(n, dtype=INDEX)
    return np.stack([(i + 1) % n, (-i) % n])


def symmetric(n: int) -> np.ndarray:
    """Symmetric group ``S_n``: a transposition and an ``n``-cycle.

    Parameters
    ----------
    n : int
        Number of points (``>= 1``).

    Returns
    -------
    numpy.ndarray
        ``(k, n)`` generators; ``k = 0`` for ``n = 1``.
    """
    n = as_degree(n, arrays=2, minimum=1)
    if n == 1:
        return trivial(1)
    if n == 2:
        return _cycle_perm([0, 1], 2)[None, :]
    return np.stack([_cycle_perm([0, 1], n), _cycle_perm(range(n), n)])


def alternating(n: int) -> np.ndarray:
    """Alternating group ``A_n`` of even permutations.

    Parameters
    ----------
    n : int
        Number of points (``>= 1``).

    Returns
    -------
    numpy.ndarray
        ``(0, n)`` for ``n < 3``; otherwise ``(0 1 2)`` and an ``n``- or
        ``(n - 1)``-cycle, whichever is even.
    """
    n = as_degree(n, arrays=2, minimum=1)
    if n < 3:
        return trivial(n)
    long_cycle = range(n) if n % 2 == 1 else range(1, n)
    return np.stack([_cycle_perm([0, 1, 2], n), _cycle_perm(long_cycle, n)])


def grid_translations(shape) -> np.ndarray:
    """Periodic unit shifts of a grid, one generator per axis, row-major points.

    Parameters
    ----------
    shape : int or sequence of int
        Grid shape, e.g. ``(h, w)``.

    Returns
    -------
    numpy.ndarray
        ``(len(shape), prod(shape))``; generator ``a`` moves each point one
        step along axis ``a`` (wrapping around).
    """
    if isinstance(shape, (str, bytes)):
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}")
    if isinstance(shape, np.ndarray) and shape.ndim == 0:
        shape = shape.item()
    if not hasattr(shape, "__iter__"):  # 5, np.int64(5); 5.0 or None: named as an entry
        shape = (shape,)
    shape = tuple(shape)
    if not shape:
        raise ValueError("shape must have at least one axis")
    shape = tuple(as_positive_int(s, "shape entry") for s in shape)
    points = _points_that_fit(math.prod(shape), len(shape), f"shape={shape}")
    idx = np.arange(points, dtype=INDEX).reshape(shape)
    gens = []
    for axis in range(len(shape)):
        # np.roll puts the point at coordinate c at c + 1 along `axis`
        gens.append(_from_image_map(np.roll(idx, 1, axis=axis)))
    return np.stack(gens)


def square_symmetries(h: int, rotations_only: bool = False) -> np.ndarray:
    """Symmetries of the square acting on the pixels of an ``h x h`` image.

    Parameters
    ----------
    h : int
        Image side; pixel ``(r, c)`` is point ``r * h + c``.
    rotations_only : bool, optional
        ``True`` gives ``C_4`` (rotations by 90 degrees) instead of ``D_4``.

    Returns
    -------
    numpy.ndarray
        ``(1, h*h)`` (rotation) or ``(2, h*h)`` (rotation, left-right flip).
    """
    h = as_positive_int(h, "h")
    n_gens = 1 if rotations_only else 2
    idx = np.arange(_points_that_fit(h * h, n_gens, f"h={h}"), dtype=INDEX).reshape(h, h)
    # np.rot90 moves the pixel value at idx[r, c] to a new place; reading the
    # rotated grid back gives, for each destination, its source: invert it.
    rot = _from_image_map(np.rot90(idx))
    gens = [rot]
    if not rotations_only:
        gens.append(_from_image_map(np.fliplr(idx)))
    return np.stack(gens)


def _points_that_fit(points: int, n_gens: int, what: str) -> int:
    """``points``, after checking that ``n_gens`` generators on them, and the index and
    moved grids that build them, fit ``config.max_bytes`` (a Python int: no overflow)."""
    need = (n_gens + 2) * points * 8
    if need > config.max_bytes:
        raise MemoryError(f"{what}: {n_gens} generators on {points} points need "
                          f"{bytes_text(need)}, over config.max_bytes = "
                          f"{bytes_text(config.max_bytes)}; use a smaller grid or raise "
                          f"the bound with config.override(max_bytes=...)")
    return points


def _order_up_to(gens, limit: int) -> int:
    """The group's order when it is at most ``limit``, else ``limit + 1``.

    A breadth-first walk over the elements that stops past ``limit``: a
    stabilizer chain says "2^300" for 300 disjoint transpositions on 20000
    points only after 19 s, and its widest orbit (2) says nothing.
    """
    gens = np.asarray(gens, dtype=INDEX)
    identity = np.arange(gens.shape[1], dtype=INDEX)
    seen, frontier = {identity.tobytes()}, [identity]
    while frontier:
        found = []
        for h in frontier:
            for s in gens:
                g = s[h]
                key = g.tobytes()
                if key not in seen:
                    if len(seen) == limit:
                        return limit + 1
                    seen.add(key)
                    found.append(g)
        frontier = found
    return len(seen)


def _from_image_map(moved: np.ndarray) -> np.ndarray:
    """Permutation sending each source pixel to where a numpy transform puts it."""
    src = moved.ravel()
    p = np.empty_like(src)
    p[src] = np.arange(src.size, dtype=INDEX)
    return p


_RUBIK_FACE_TURNS = (
    "(0 2 7 5)(1 4 6 3)(8 32 24 16)(9 33 25 17)(10 34 26 18)",
    "(8 10 15 13)(9 12 14 11)(0 16 40 39)(3 19 43 36)(5 21 45 34)",
    "(16 18 23 21)(17 20 22 19)(5 24 42 15)(6 27 41 12)(7 29 40 10)",
    "(24 26 31 29)(25 28 30 27)(2 37 42 18)(4 35 44 20)(7 32 47 23)",
    "(32 34 39 37)(33 36 38 35)(2 8 45 31)(1 11 46 28)(0 13 47 26)",
    "(40 42 47 45)(41 44 46 43)(13 21 29 37)(14 22 30 38)(15 23 31 39)",
)


def rubik_cube() -> np.ndarray:
    """The Rubik's cube group on its 48 movable facelets (order about 4.3e19).

    A classic test of stabilizer-chain code: ``order(rubik_cube())`` is
    43252003274489856000 and is computed without listing any element.

    Returns
    -------
    numpy.ndarray
        ``(6, 48)``: the six quarter turns of the faces (facelets numbered
        as in GAP's well-known example, from 0).
    """
    from .perm import from_cycles

    return np.stack([from_cycles(c, 48) for c in _RUBIK_FACE_TURNS])


def graph_automorphisms(adjacency, colors=None) -> np.ndarray:
    """Generators of the automorphism group of a (coloured, directed) graph.

    Parameters
    ----------
    adjacency : array_like, shape (n, n)
        Integer or boolean adjacency; entry values are edge colours (0 is
        no edge).  Asymmetric matrices are directed graphs.
    colors : array_like of int, shape (n,), optional
        Vertex colours that automorphisms must preserve.

    Returns
    -------
    numpy.ndarray
        ``(k, n)`` generators (``k = 0`` when the group is trivial).
    """
    return _graph_automorphisms(adjacency, colors)
