"""One group acting on a layer's inputs and outputs at once.

An :class:`Action` is a list of generator pairs ``(gens_in[k], gens_out[k])``;
the group ``G_{N,M}`` is the subgroup of ``Sym(N) x Sym(M)`` they generate.
Internally it is one permutation group on ``N + M`` points (inputs first,
outputs shifted by ``N``), so every algorithm of :mod:`paramshare_nb.groups`
applies to it unchanged.
"""

from __future__ import annotations

import math
import warnings
from functools import cached_property

import numpy as np

from . import config, groups
from ._kernels.groups_cpu import _closure, _orbits, _pair_orbits
from ._schreier import StabChain
from ._validate import (
    INDEX,
    as_degree,
    as_gens,
    as_perm,
    as_positive_int,
    as_rng,
    bytes_text,
    frozen,
)

__all__ = ["Action", "product", "tensor_power", "regular"]


class Action:
    """A group acting on the inputs ``N`` and outputs ``M`` of a layer.

    Parameters
    ----------
    gens_in : array_like of int, shape (k, N)
        Input permutations.
    gens_out : array_like of int, shape (k, M)
        Output permutations; row ``k`` acts together with ``gens_in[k]``.
    n_in, n_out : int, optional
        Sizes, needed only when there are no generators (``k = 0``).

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.symmetric(4))
    >>> act.order(), int(act.pair_orbits().max()) + 1
    (24, 2)
    """

    def __init__(self, gens_in, gens_out, n_in: int | None = None, n_out: int | None = None):
        n_in = None if n_in is None else as_positive_int(n_in, "n_in", minimum=0)
        n_out = None if n_out is None else as_positive_int(n_out, "n_out", minimum=0)
        gin = as_gens(gens_in, "gens_in", n=n_in)
        gout = as_gens(gens_out, "gens_out", n=n_out)
        if gin.shape[0] != gout.shape[0]:
            raise ValueError(
                f"gens_in has {gin.shape[0]} generators but gens_out has {gout.shape[0]}; "
                f"give one output permutation per input permutation (the k-th belong together)"
            )
        self._set(gin, gout)

    def _set(self, gens_in, gens_out):
        # written past __setattr__, which refuses: the patterns kept for this action (and
        # the layers built on them) are only right for these generators
        self.__dict__.update(gens_in=frozen(gens_in), gens_out=frozen(gens_out))

    def __setattr__(self, name, value):
        raise AttributeError(f"Action is immutable: cannot set {name!r}; build a new Action")

    def __delattr__(self, name):
        raise AttributeError(f"Action is immutable: cannot delete {name!r}")

    def __getstate__(self):
        """The generators only (for pickle and copy): the caches (its chain, the patterns
        built from it) are rebuilt where the copy is used."""
        return {"gens_in": self.gens_in, "gens_out": self.gens_out}

    def __setstate__(self, state):
        self._set(np.array(state["gens_in"], dtype=INDEX), np.array(state["gens_out"], dtype=INDEX))

    # -- constructors ----------------------------------------------------------
    @classmethod
    def same(cls, gens, n: int | None = None) -> Action:
        """Outputs transform exactly like inputs (``M == N``).

        Parameters
        ----------
        gens : array_like of int, shape (k, n)
            Generators.
        n : int, optional
            Number of points, needed only when ``gens`` is empty.

        Returns
        -------
        Action
        """
        g = as_gens(gens, "gens", n=n)
        return cls(g, g, n_in=g.shape[1], n_out=g.shape[1])

    @classmethod
    def invariant(cls, gens, n: int | None = None) -> Action:
        """One output that every group element fixes (an invariant layer).

        Parameters
        ----------
        gens : array_like of int, shape (k, n)
            Input generators.
        n : int, optional
            Number of inputs, needed only when ``gens`` is empty.

        Returns
        -------
        Action
        """
        g = as_gens(gens, "gens", n=n)
        return cls(g, np.zeros((g.shape[0], 1), dtype=INDEX), n_in=g.shape[1], n_out=1)

    # -- sizes -----------------------------------------------------------------
    @property
    def n_in(self) -> int:
        """Number of inputs ``N``."""
        return int(self.gens_in.shape[1])

    @property
    def n_out(self) -> int:
        """Number of outputs ``M``."""
        return int(self.gens_out.shape[1])

    @property
    def n_gens(self) -> int:
        """Number of generator pairs."""
        return int(self.gens_in.shape[0])

    @cached_property
    def joint(self) -> np.ndarray:
        """Generators on ``N + M`` points: inputs first, outputs shifted by ``N``."""
        return frozen(np.concatenate([self.gens_in, self.gens_out + self.n_in], axis=1))

    @cached_property
    def _chain(self) -> StabChain:
        return groups._chain(self.joint)

    # -- group queries -----------------------------------------------------------
    @cached_property
    def _same(self) -> bool:
        """Whether outputs move like inputs (:meth:`same`): then ``G_{N,M}``, ``G_N`` and
        ``G_M`` are one group, whose order one chain on ``N`` points gives (S_64: the joint
        chain on 128 points and the inputs' took 1 s each)."""
        return np.array_equal(self.gens_in, self.gens_out)

    def order(self) -> int:
        """Order of ``G_{N,M}``, the group the pairs generate (exact int)."""
        return self.order_in() if self._same else self._chain.order()

    def order_in(self) -> int:
        """Order of ``G_N``, the group the input permutations generate."""
        return groups._chain(self.gens_in).order()

    def order_out(self) -> int:
        """Order of ``G_M``, the group the output permutations generate."""
        return self.order_in() if self._same else groups._chain(self.gens_out).order()

    def contains(self, g_in, g_out) -> bool:
        """Whether the pair ``(g_in, g_out)`` belongs to ``G_{N,M}``.

        Parameters
        ----------
        g_in : array_like of int, shape (N,)
        g_out : array_like of int, shape (M,)

        Returns
        -------
        bool
        """
        g_in = as_perm(g_in, "g_in", n=self.n_in)
        g_out = as_perm(g_out, "g_out", n=self.n_out)
        return self._contains_joint(np.concatenate([g_in, g_out + self.n_in]))

    def _contains_joint(self, gamma: np.ndarray) -> bool:
        """Membership of ``gamma``, a permutation of the ``N + M`` joint points.  When
        outputs move like inputs, by the chain on the ``N`` inputs: A_128's joint chain on
        256 points took 1.1 s to build (the witness of a non-unique design needs it)."""
        if self._same:
            n = self.n_in
            return (bool(np.array_equal(gamma[:n], gamma[n:] - n))
                    and groups._chain(self.gens_in).contains(gamma[:n]))
        return self._chain.contains(gamma)

    def closure(self, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All elements of ``G_{N,M}`` as pairs.

        Parameters
        ----------
        max_bytes : int, optional
            Memory bound (default ``config.max_bytes``).

        Returns
        -------
        elems_in : numpy.ndarray
            ``(|G|, N)``; row ``j`` pairs with ``elems_out[j]``.
        elems_out : numpy.ndarray
            ``(|G|, M)``.
        """
        size = self.order()
        groups._check_closure_memory(size, self.n_in + self.n_out, max_bytes)
        elems = _closure(self.joint, size)
        return elems[:, : self.n_in], elems[:, self.n_in:] - self.n_in

    def random_elements(self, size: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """Uniformly random elements of ``G_{N,M}`` as pairs.

        Parameters
        ----------
        size : int
            How many.
        rng : int or numpy.random.Generator, optional

        Returns
        -------
        elems_in, elems_out : numpy.ndarray
            ``(size, N)`` and ``(size, M)``.
        """
        size = as_positive_int(size, "size", minimum=0)
        # the elements, and their two halves
        as_degree(self.n_in + self.n_out, arrays=2 * size, call=f"random_elements(size={size})")
        rng = as_rng(rng)
        elems = np.empty((size, self.n_in + self.n_out), dtype=INDEX)
        for j in range(size):
            elems[j] = self._chain.random_element(rng)
        return elems[:, : self.n_in], elems[:, self.n_in:] - self.n_in

    def orbits_in(self) -> np.ndarray:
        """Orbit id of each input (canonical numbering)."""
        return _orbits(self.gens_in)

    def orbits_out(self) -> np.ndarray:
        """Orbit id of each output (canonical numbering)."""
        return _orbits(self.gens_out)

    def pair_orbits(self) -> np.ndarray:
        """Orbit id of every pair ``(m, n)``: an ``(M, N)`` array.

        Ids are numbered by first appearance in row-major order.  Computed
        by union-find on ``M * N`` points, never by enumerating the group.

        Raises
        ------
        MemoryError
            When the union-find over the pairs would exceed ``config.max_bytes``.
        """
        need = self.n_out * self.n_in * 16  # parents and labels, int64 each
        if need > config.max_bytes:
            raise MemoryError(f"pair_orbits: {self.n_out} x {self.n_in} pairs need "
                              f"{bytes_text(need)}, over config.max_bytes = "
                              f"{bytes_text(config.max_bytes)}; raise it with "
                              f"config.override(max_bytes=...)")
        return _pair_orbits(self.gens_in, self.gens_out).reshape(self.n_out, self.n_in)

    def is_free_in(self) -> bool:
        """Whether ``G_{N,M}`` acts freely on the inputs (every input orbit has ``|G|`` points)."""
        return groups._is_free(self.joint, self.orbits_in())

    def is_free_out(self) -> bool:
        """Whether ``G_{N,M}`` acts freely on the outputs."""
        return groups._is_free(self.joint, self.orbits_out())

    # -- report ------------------------------------------------------------------
    def describe(self, warn: bool = True) -> str:
        """A short report on the action.

        Gives ``|G_{N,M}|``, ``|G_N|``, ``|G_M|``, orbit counts and sizes, and
        whether each side is free and faithful.  When ``|G_{N,M}| > |G_N|``
        the outputs are not a function of the inputs' permutation (the pairs
        generate more than the input group): a warning says so.

        Parameters
        ----------
        warn : bool, optional
            Issue the warning above (default ``True``).

        Returns
        -------
        str
        """
        g, g_in, g_out = self.order(), self.order_in(), self.order_out()
        lines = [f"Action of G_{{N,M}} of order {g} on N={self.n_in} inputs and "
                 f"M={self.n_out} outputs ({self.n_gens} generator pairs)"]
        for side, size, labels, free in (
            ("inputs ", g_in, self.orbits_in(), self.is_free_in()),
            ("outputs", g_out, self.orbits_out(), self.is_free_out()),
        ):
            sizes = np.bincount(labels) if labels.size else np.zeros(0, dtype=INDEX)
            shown = ", ".join(map(str, sizes[:8])) + (", ..." if sizes.size > 8 else "")
            lines.append(
                f"  {side}: |G| = {size}, {sizes.size} orbit(s) of size {shown}; "
                f"{'free' if free else 'not free'}, "
                f"{'faithful' if size == g else f'not faithful (kernel of order {g // size})'}"
            )
        if g > g_in:
            msg = (f"the generator pairs generate a group of order {g}, larger than the "
                   f"input group (order {g_in}): the output permutation is not a function of "
                   f"the input permutation; check that the pairs belong together")
            lines.append("  warning: " + msg)
            if warn:
                warnings.warn(msg, stacklevel=2)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Action(n_in={self.n_in}, n_out={self.n_out}, n_gens={self.n_gens})"


def product(act1: Action, act2: Action) -> Action:
    """Direct product ``G1 x G2`` acting on ``N1 x N2`` and ``M1 x M2``.

    Index sets are row-major: input ``(i1, i2)`` is ``i1 * N2 + i2``.

    Parameters
    ----------
    act1, act2 : Action

    Returns
    -------
    Action
        Generators of ``act1`` acting on the first factor, then those of
        ``act2`` on the second.

    Notes
    -----
    Like every :class:`Action`, the result is the group of permutations it
    induces: when a factor has no points on a side (``N2 = 0``, say), that
    side has no points either, and with no points on both sides the product
    is the trivial group (``order() == 1``), whatever the factors' orders.
    """
    for name, a in (("act1", act1), ("act2", act2)):
        if not isinstance(a, Action):
            raise TypeError(f"{name} must be an Action, got {type(a).__name__}")

    def lift(gens1, gens2):
        n1, n2 = gens1.shape[1], gens2.shape[1]
        i1 = np.arange(n1, dtype=INDEX)[:, None]
        i2 = np.arange(n2, dtype=INDEX)[None, :]
        first = [(g[i1] * n2 + i2).ravel() for g in gens1]
        second = [(i1 * n2 + g[i2]).ravel() for g in gens2]
        return np.array(first + second, dtype=INDEX).reshape(len(first) + len(second), n1 * n2)

    return Action(
        lift(act1.gens_in, act2.gens_in), lift(act1.gens_out, act2.gens_out),
        n_in=act1.n_in * act2.n_in, n_out=act1.n_out * act2.n_out,
    )


def tensor_power(gens, k: int) -> np.ndarray:
    """The action on ``k``-tensors: ``g`` moves every index of ``(i_1, ..., i_k)``.

    Parameters
    ----------
    gens : array_like of int, shape (g, n)
        Generators on ``n`` points.
    k : int
        Tensor order (``>= 1``).

    Returns
    -------
    numpy.ndarray
        ``(g, n**k)`` generators on row-major multi-indices.

    Raises
    ------
    MemoryError
        When the result would exceed ``config.max_bytes``.
    """
    gens = as_gens(gens, "gens")
    k = as_positive_int(k, "k")
    n = gens.shape[1]
    # the points alone must fit (also with no generators); n**k only once k is known to
    # be small, since 3**(10**8) takes minutes to compute
    rows = max(gens.shape[0], 1)
    fits = n <= 1 or k * math.log2(n) + math.log2(rows * 8) <= math.log2(config.max_bytes) + 1
    need = rows * n**k * 8 if fits else None
    if need is None or need > config.max_bytes:
        size = (bytes_text(need) if need is not None else
                f"about 2**{k * math.log2(n) + math.log2(rows * 8):.0f} bytes")
        raise MemoryError(f"tensor_power: {gens.shape[0]} generators on {n}**{k} points need "
                          f"{size}, over config.max_bytes = {bytes_text(config.max_bytes)}; "
                          f"lower k or raise the bound with config.override(max_bytes=...)")
    if n <= 1:  # one multi-index (0, ..., 0), or none: no loop over k, which may be huge
        return np.zeros((gens.shape[0], n), dtype=INDEX)
    out = np.zeros((gens.shape[0], 1), dtype=INDEX)
    for j in range(1, k + 1):
        out = (out[:, :, None] * n + gens[:, None, :]).reshape(gens.shape[0], n**j)
    return out


def regular(gens, max_bytes: int | None = None) -> np.ndarray:
    """The group acting on its own elements by left multiplication.

    Element ``j`` is row ``j`` of :func:`paramshare_nb.closure` (row 0 is
    the identity); generator ``s`` sends element ``h`` to ``s * h``.

    Parameters
    ----------
    gens : array_like of int, shape (k, n)
        Generators.
    max_bytes : int, optional
        Memory bound for listing the elements.

    Returns
    -------
    numpy.ndarray
        ``(k, |G|)`` generators of the regular action.
    """
    gens = as_gens(gens, "gens")
    elems = groups.closure(gens, max_bytes=max_bytes)
    where = {row.tobytes(): j for j, row in enumerate(elems)}
    out = np.empty((gens.shape[0], elems.shape[0]), dtype=INDEX)
    for g, s in enumerate(gens):
        moved = s[elems]  # row j is s * elems[j]
        out[g] = [where[row.tobytes()] for row in moved]
    return out
