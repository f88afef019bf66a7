"""Proofs on demand: the full symmetry group of a tying pattern.

A tying pattern ``Omega`` is a coloured, multi-edged bipartite graph on the
inputs ``N`` and outputs ``M`` (:doc:`/theory`, *Equivariance through
parameter sharing*).  Its symmetry group
``Aut(Omega)`` is the set of pairs ``(s_in, s_out)`` in ``Sym(N) x Sym(M)``
that map every coloured edge onto an edge of the same colour (multi-edges
counted, structural zeros kept zero).  A layer is equivariant to ``G`` iff
``G <= Aut(Omega)`` and *uniquely* so iff ``G == Aut(Omega)``.

:func:`symmetry_group` computes ``Aut(Omega)`` exactly, with the search
engine of ``paramshare_nb._search`` (colour refinement and an
individualisation-refinement search tree with automorphism pruning, as in
nauty and Traces, written afresh), which
:func:`~paramshare_nb.groups.graph_automorphisms` shares a layer down.
Every generator returned is checked to preserve the edge multiset exactly.
A search that would visit more nodes than ``config.search_nodes`` stops with
:class:`SearchBudgetError`: never a wrong order.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import groups, perm
from ._arrays import sorted_unique
from ._kernels.groups_cpu import _orbits
from ._schreier import StabChain
from ._search import (
    SearchBudgetError,
    _as_adjacency,
    _budget,
    _check_graph_memory,
    _check_path_memory,
    _Graph,
    _graph_automorphisms,
    _search,
    _SearchResult,
)
from ._validate import (
    INDEX,
    as_axis,
    as_gens,
    as_point,
    as_positive_int,
    frozen,
)
from .actions import Action, regular
from .equivariance import _preserver, is_equivariant
from .patterns import Pattern, dense_pattern, sparse_pattern

__all__ = [
    "SymmetryGroup", "UniquenessResult", "SearchBudgetError",
    "symmetry_group", "symmetry_group_layers", "is_uniquely_equivariant",
    "is_uniquely_equivariant_layers", "lift", "check_lift", "graph_convolution_pattern",
    "graph_action", "explain",
]


_CROSS_CHECK_GENS = 4  # up to this many generators, Schreier-Sims re-derives the order


def _checked_order(res: _SearchResult) -> int:
    """The search's order, re-derived by Schreier-Sims when that is cheap (few generators).

    The search's order is the product of the orbit lengths of the stabilizer
    chain it proves (base = first path); the core's Schreier-Sims on the
    generators computes the order of the group they generate independently.
    """
    k = res.generators.shape[0]
    if 0 < k <= _CROSS_CHECK_GENS:
        chain = StabChain(np.ascontiguousarray(res.generators), base_prefix=res.base)
        if chain.order() != res.order:
            raise AssertionError(f"internal error: the search found order {res.order} but its "
                                 f"generators generate a group of order {chain.order()}; "
                                 f"please report this")
    return res.order


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

def _frozen(arr):
    # an array of its own (generators, orbits: small), so that the view handed out cannot
    # be made writeable again
    return frozen(np.array(arr, dtype=INDEX, order="C", copy=True))


def _sequence(obj, name):
    """``obj`` as a tuple, or a ``TypeError`` naming ``name`` (a string is not a sequence of
    numbers here)."""
    if isinstance(obj, (str, bytes)) or not np.iterable(obj):
        raise TypeError(f"{name} must be a sequence of ints, got {type(obj).__name__}")
    return tuple(obj)


def _canonical_labels(labels):
    """Renumber labels by first appearance (0, 1, ...)."""
    if labels.size == 0:
        return labels.astype(INDEX)
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=INDEX)
    rank[np.argsort(first)] = np.arange(first.size, dtype=INDEX)
    return rank[inv.ravel()]


class SymmetryGroup:
    """The symmetry group of a tying pattern (or of a stack of layers).

    Points are the layers' index sets one after the other: for one pattern,
    the ``N`` inputs then the ``M`` outputs (outputs shifted by ``N``).
    Made by :func:`symmetry_group` and :func:`symmetry_group_layers`; the
    parameters are kept as attributes of the same names.

    Parameters
    ----------
    generators : numpy.ndarray
        ``(k, sum(sizes))`` generators, stored read-only; ``k = 0`` for the
        trivial group.
    order : int
        Exact order (Python int).
    sizes : tuple of int
        Sizes of the parts: ``(N, M)`` for one pattern, ``(N, H, M)`` for two
        layers.
    base : tuple of int, optional
        The search's first path: a base for which the generators are a strong
        generating set.
    nodes : int, optional
        Search-tree nodes visited.

    Raises
    ------
    TypeError, ValueError
        Fewer than two parts; generators that are not permutations of
        ``sum(sizes)`` points, or that move a point to another part; an
        ``order`` other than the order of the group they generate; a base
        point out of range.  The order is checked on the stabilizer chain
        that :meth:`contains` uses, built here (Schreier-Sims: about a second
        for Deep Sets on 128 points, 15 s on 256; :func:`symmetry_group`'s
        results skip this).
    """

    def __init__(self, generators, order: int, sizes, base=(), nodes: int = 0):
        sizes, base = _sequence(sizes, "sizes"), _sequence(base, "base")
        sizes = tuple(as_positive_int(s, "sizes entry", minimum=0) for s in sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must name at least two parts (inputs and outputs), got "
                             f"{sizes}")
        gens = as_gens(generators, "generators", n=sum(sizes))
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=INDEX)])
        for i in range(len(sizes)):
            part = gens[:, offsets[i]:offsets[i + 1]]
            if part.size and (part.min() < offsets[i] or part.max() >= offsets[i + 1]):
                raise ValueError(f"generators move points of part {i} (points {offsets[i]}.."
                                 f"{offsets[i + 1] - 1}) into another part; each part must be "
                                 f"mapped onto itself")
        order = as_positive_int(order, "order")
        base = tuple(as_point(b, gens.shape[1], "base point") for b in base)
        self._set(gens, order, sizes, base, as_positive_int(nodes, "nodes", minimum=0))
        if self.chain.order() != order:  # the chain stays: contains() needs it
            raise ValueError(f"order is {order}, but the generators generate a group of order "
                             f"{self.chain.order()}")

    @classmethod
    def _of(cls, generators, order, sizes, base=(), nodes=0):
        """A group the search built and checked itself: no second check."""
        group = cls.__new__(cls)
        group._set(generators, int(order), tuple(int(s) for s in sizes),
                   tuple(int(b) for b in base), int(nodes))
        return group

    def _set(self, generators, order, sizes, base, nodes):
        # written past __setattr__, which refuses: order, orbits and the chain are facts
        # about these generators
        self.__dict__.update(generators=_frozen(generators), order=order, sizes=sizes,
                             base=base, nodes=nodes,
                             _offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(INDEX))

    def __setattr__(self, name, value):
        raise AttributeError(f"SymmetryGroup is immutable: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"SymmetryGroup is immutable: cannot delete {name!r}")

    def __setstate__(self, state):
        # unpickled and deep-copied arrays (the generators, cached orbits) come back
        # writeable: read-only again
        self.__dict__.update({k: frozen(np.array(v, copy=True)) if isinstance(v, np.ndarray)
                              else v for k, v in state.items()})

    # -- sizes and projections -------------------------------------------------
    @property
    def n_in(self) -> int:
        """Number of inputs ``N`` (the first part)."""
        return self.sizes[0]

    @property
    def n_out(self) -> int:
        """Number of outputs ``M`` (the last part)."""
        return self.sizes[-1]

    @property
    def degree(self) -> int:
        """Number of points acted on (all parts)."""
        return int(self._offsets[-1])

    def _part(self, part) -> int:
        """``part`` as an index into :attr:`sizes` (negative counts from the end)."""
        k = len(self.sizes)
        return as_axis(part, k, "part", within=f"a group acting on {k} parts of sizes "
                       f"{tuple(self.sizes)} (0..{k - 1}, or -1 for the outputs)")

    def projection(self, part: int) -> np.ndarray:
        """Generators restricted to one part, renumbered from 0.

        Parameters
        ----------
        part : int
            Index into :attr:`sizes` (``0`` inputs, ``-1`` outputs).

        Returns
        -------
        numpy.ndarray
            ``(k, sizes[part])``: generators of the projection of the group
            on that part (row ``j`` is the image of generator ``j``).
        """
        part = self._part(part)
        lo, hi = self._offsets[part], self._offsets[part + 1]
        return _frozen(self.generators[:, lo:hi] - lo)

    @property
    def gens_in(self) -> np.ndarray:
        """Projection on the inputs ``N``: ``(k, N)``."""
        return self.projection(0)

    @property
    def gens_out(self) -> np.ndarray:
        """Projection on the outputs ``M``: ``(k, M)``."""
        return self.projection(-1)

    @property
    def action(self) -> Action:
        """The group as an :class:`~paramshare_nb.Action` on inputs and outputs.

        For a stack of layers the hidden parts are left out (the pairs then
        generate the projection of the group on ``N x M``).
        """
        return Action(self.gens_in, self.gens_out, n_in=self.n_in, n_out=self.n_out)

    @cached_property
    def orbits(self) -> np.ndarray:
        """Orbit id of every point (all parts), canonical numbering."""
        if self.generators.shape[0] == 0:
            return _frozen(np.arange(self.degree))
        return _frozen(_orbits(np.ascontiguousarray(self.generators)))

    def orbits_of(self, part: int) -> np.ndarray:
        """Orbit ids of one part's points, renumbered by first appearance.

        Parameters
        ----------
        part : int
            Index into :attr:`sizes` (``0`` inputs, ``-1`` outputs).

        Returns
        -------
        numpy.ndarray
            ``(sizes[part],)`` int64 orbit ids.
        """
        part = self._part(part)
        lo, hi = self._offsets[part], self._offsets[part + 1]
        return _frozen(_canonical_labels(self.orbits[lo:hi]))

    @property
    def orbits_in(self) -> np.ndarray:
        """Orbit id of each input (canonical numbering)."""
        return self.orbits_of(0)

    @property
    def orbits_out(self) -> np.ndarray:
        """Orbit id of each output (canonical numbering)."""
        return self.orbits_of(-1)

    def order_of(self, part: int) -> int:
        """Order of the projection of the group on one part (exact).

        Parameters
        ----------
        part : int
            Index into :attr:`sizes` (``0`` inputs, ``-1`` outputs).

        Returns
        -------
        int
            Order of the group the projected generators generate.
        """
        gens = self.projection(part)
        if gens.shape[0] == 0:
            return 1
        return StabChain(np.ascontiguousarray(gens)).order()

    def order_in(self) -> int:
        """Order of the projection on the inputs.

        Returns
        -------
        int
        """
        return self.order_of(0)

    def order_out(self) -> int:
        """Order of the projection on the outputs.

        Returns
        -------
        int
        """
        return self.order_of(-1)

    # -- membership ----------------------------------------------------------------
    @cached_property
    def chain(self) -> StabChain:
        """Schreier-Sims stabilizer chain on the search's base (built on first use)."""
        return StabChain(np.ascontiguousarray(self.generators),
                         base_prefix=self.base)

    def contains(self, *parts) -> bool:
        """Whether a tuple of permutations (one per part) lies in the group.

        Parameters
        ----------
        *parts : array_like of int
            ``(s_in, s_out)`` for one pattern, one permutation per part in
            general; or a single permutation of all :attr:`degree` points.

        Returns
        -------
        bool
        """
        g = _join_parts(parts, self.sizes)
        if self.generators.shape[0] == 0:
            return bool(np.array_equal(g, np.arange(self.degree)))
        return self.chain.contains(g)

    def __repr__(self) -> str:
        return (f"SymmetryGroup(order={self.order}, sizes={self.sizes}, "
                f"n_generators={self.generators.shape[0]})")


def _join_parts(parts, sizes) -> np.ndarray:
    total = int(sum(sizes))
    if len(parts) == 1:
        return _as_full_perm(parts[0], total)
    if len(parts) != len(sizes):
        raise ValueError(f"give one permutation per part ({len(sizes)} parts of sizes {sizes}), "
                         f"or one permutation of all {total} points")
    out, off = [], 0
    for j, (p, s) in enumerate(zip(parts, sizes)):
        out.append(_as_full_perm(p, s, name=f"part {j}") + off)
        off += s
    return np.concatenate(out) if out else np.zeros(0, dtype=INDEX)


def _as_full_perm(p, n, name="permutation"):
    from ._validate import as_perm

    return as_perm(p, name, n=n)


@dataclass
class UniquenessResult:
    """Outcome of :func:`is_uniquely_equivariant`.

    The parameters are kept as attributes of the same names; the result is
    truthy iff ``unique``.

    Parameters
    ----------
    unique : bool
        ``G == Aut(Omega)``: equivariant, and to nothing more.
    equivariant : bool
        ``G <= Aut(Omega)``.
    group_order : int
        ``|G|`` (the group the action's generators generate).
    symmetry_order : int
        ``|Aut(Omega)|``.
    witness : tuple of numpy.ndarray or None
        When not unique: an element of ``Aut(Omega)`` outside ``G``, one
        permutation per part (``(s_in, s_out)`` for one layer), checked with
        the stabilizer chain of ``G``.  ``None`` when unique, or when not
        equivariant and ``Aut(Omega)`` lies inside ``G``.
    symmetry : SymmetryGroup
        ``Aut(Omega)`` itself.
    """

    unique: bool
    equivariant: bool
    group_order: int
    symmetry_order: int
    witness: tuple | None
    symmetry: SymmetryGroup = field(repr=False)

    def __bool__(self) -> bool:
        return self.unique

    def witness_cycles(self) -> str | None:
        """The witness in cycle notation, one part after the other.

        Returns
        -------
        str or None
            ``"inputs (...); outputs (...)"``, or ``None`` without a witness.
        """
        if self.witness is None:
            return None
        names = ["inputs", "outputs"] if len(self.witness) == 2 else \
            [f"part {j}" for j in range(len(self.witness))]
        return "; ".join(f"{nm} {perm.to_cycles(w)}" for nm, w in zip(names, self.witness))


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------

def _as_pattern(pattern, name="pattern") -> Pattern:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"{name} must be a paramshare_nb.Pattern, got {type(pattern).__name__}; "
                        f"build one with Pattern(shape, rows, cols, params) or "
                        f"Pattern.from_index(index)")
    return pattern


def _as_action(action, name="action") -> Action:
    if not isinstance(action, Action):
        raise TypeError(f"{name} must be a paramshare_nb.Action, got {type(action).__name__}; "
                        f"wrap generators with Action.same(gens) or Action(gens_in, gens_out)")
    return action


def _layers_graph(patterns):
    sizes = [patterns[0].shape[1]] + [p.shape[0] for p in patterns]
    # the root's partitions alone, before any array of that many points (a pattern of 2**61
    # rows got numpy's "array is too big")
    _check_path_memory(1, sum(sizes))
    _check_graph_memory(sum(p.nnz for p in patterns))
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(INDEX)
    src, dst, col = [], [], []
    coff = 0
    for i, p in enumerate(patterns):
        src.append(offs[i] + p.cols)
        dst.append(offs[i + 1] + p.rows)
        col.append(coff + p.params)
        coff += max(p.n_params, 1)
    colors = np.repeat(np.arange(len(sizes), dtype=INDEX), sizes)
    return (_Graph(int(offs[-1]), np.concatenate(src), np.concatenate(dst), np.concatenate(col),
                   colors), tuple(sizes))


def symmetry_group(pattern, max_nodes: int | None = None) -> SymmetryGroup:
    """``Aut(Omega)``: every joint relabelling of inputs and outputs that fixes the pattern.

    Exact: colour refinement and an individualisation-refinement search tree
    with automorphism pruning (nauty/Traces style); the order comes from the
    stabilizer chain that the search builds.  No sampling.

    Parameters
    ----------
    pattern : Pattern
        The tying pattern; multi-edges and structural zeros count.
    max_nodes : int, optional
        Search-tree node budget (default ``config.search_nodes``).

    Returns
    -------
    SymmetryGroup
        ``.generators`` on ``N + M`` points (inputs first, outputs shifted by
        ``N``), ``.order``, ``.orbits_in``, ``.orbits_out``, ``.gens_in``,
        ``.gens_out`` (the projections).

    Raises
    ------
    TypeError
        When ``pattern`` is not a :class:`~paramshare_nb.Pattern`.
    SearchBudgetError
        When the search would need more than the node budget.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.symmetric(5))
    >>> ps.symmetry_group(ps.dense_pattern(act)).order
    120
    """
    pat = _as_pattern(pattern)
    graph, sizes = _layers_graph([pat])
    res = _search(graph, _budget(max_nodes))
    n = pat.shape[1]
    preserves = _preserver(pat)
    for gamma in res.generators:  # belt and braces: the pattern-level check
        if not preserves(gamma[:n], gamma[n:] - n):
            raise AssertionError("internal error: a found symmetry does not preserve the "
                                 "pattern; please report this")
    return SymmetryGroup._of(res.generators, _checked_order(res), sizes, res.base,
                             res.nodes)


def symmetry_group_layers(patterns, max_nodes: int | None = None) -> SymmetryGroup:
    """Symmetry group of a stack of layers ``N -> H_1 -> ... -> M``.

    The structure is the coloured multipartite graph ``N ⊔ H_1 ⊔ ... ⊔ M``
    with layer ``i``'s edges between its inputs and outputs, coloured by
    its parameter ids; different layers' colours never match.  Its
    automorphisms permute each part separately (hidden units too) and
    preserve every layer's pattern.

    Parameters
    ----------
    patterns : sequence of Pattern
        Layer ``i`` has shape ``(n_{i+1}, n_i)``: each pattern's inputs are
        the previous pattern's outputs.
    max_nodes : int, optional
        Search-tree node budget (default ``config.search_nodes``).

    Returns
    -------
    SymmetryGroup
        On ``n_0 + n_1 + ... + n_L`` points, parts in layer order;
        ``.projection(i)`` restricts to part ``i``.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> a1, a2 = ps.lift(ps.Action.invariant(ps.groups.cyclic(5)))
    >>> ps.symmetry_group_layers([ps.dense_pattern(a1), ps.dense_pattern(a2)]).order
    5
    """
    pats = _as_pattern_list(patterns)
    graph, sizes = _layers_graph(pats)
    res = _search(graph, _budget(max_nodes))
    offs = np.concatenate([[0], np.cumsum(sizes)])
    checks = [_preserver(p) for p in pats]
    for gamma in res.generators:
        for i, preserves in enumerate(checks):
            g_in = gamma[offs[i]:offs[i + 1]] - offs[i]
            g_out = gamma[offs[i + 1]:offs[i + 2]] - offs[i + 1]
            if not preserves(g_in, g_out):
                raise AssertionError("internal error: a found symmetry does not preserve "
                                     f"layer {i}; please report this")
    return SymmetryGroup._of(res.generators, _checked_order(res), sizes,
                             res.base, res.nodes)


def _as_pattern_list(patterns):
    if isinstance(patterns, Pattern):
        patterns = [patterns]
    pats = list(patterns)
    if not pats:
        raise ValueError("patterns is empty; give at least one Pattern")
    for i, p in enumerate(pats):
        _as_pattern(p, f"patterns[{i}]")
    for i in range(1, len(pats)):
        if pats[i].shape[1] != pats[i - 1].shape[0]:
            raise ValueError(
                f"layer {i} has {pats[i].shape[1]} inputs but layer {i - 1} has "
                f"{pats[i - 1].shape[0]} outputs: shapes must chain (n_{i+1}, n_i)")
    return pats


def _find_witness(sym: SymmetryGroup, contains):
    """A generator of ``sym`` outside ``G`` (per part), or None; ``contains`` tests a
    permutation of all parts' points for membership of ``G`` (None: ``G`` is trivial)."""
    offs = sym._offsets
    for gamma in sym.generators:
        if contains is None or not contains(np.asarray(gamma)):
            return tuple(np.array(gamma[offs[i]:offs[i + 1]] - offs[i])
                         for i in range(len(sym.sizes)))
    return None


def _group_chain(joint: np.ndarray):
    """The memoised chain of ``G`` on the ``N + M`` points (a fresh one per call cost A_64
    0.9 s on every repeat)."""
    if joint.shape[0] == 0:
        return None
    return groups._chain(np.ascontiguousarray(joint, dtype=INDEX))


def is_uniquely_equivariant(pattern, action, max_nodes: int | None = None) -> UniquenessResult:
    """Whether the layer is equivariant to ``G`` and to nothing more.

    Parameters
    ----------
    pattern : Pattern
        Shape ``(M, N)``.
    action : Action
        ``G`` acting on the ``N`` inputs and ``M`` outputs.
    max_nodes : int, optional
        Search-tree node budget (default ``config.search_nodes``).

    Returns
    -------
    UniquenessResult
        ``.unique``, ``.equivariant``, ``.group_order``, ``.symmetry_order``
        and ``.witness`` (a pair ``(s_in, s_out)`` in ``Aut(Omega)`` but not
        in ``G``, when there is one).  The result is truthy iff unique.

    Raises
    ------
    ValueError
        When the pattern's shape does not match the action.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.alternating(4))
    >>> res = ps.is_uniquely_equivariant(ps.dense_pattern(act), act)
    >>> res.unique, res.group_order, res.symmetry_order
    (False, 12, 24)
    """
    pat = _as_pattern(pattern)
    act = _as_action(action)
    if pat.shape != (act.n_out, act.n_in):
        raise ValueError(f"pattern has shape {pat.shape} but the action acts on M={act.n_out} "
                         f"outputs and N={act.n_in} inputs: expected ({act.n_out}, {act.n_in})")
    equivariant = is_equivariant(pat, act)
    sym = symmetry_group(pat, max_nodes=max_nodes)
    g_order = act.order()
    unique = equivariant and sym.order == g_order
    witness = None if unique else _find_witness(sym, act._contains_joint)
    return UniquenessResult(unique, equivariant, g_order, sym.order, witness, sym)


def is_uniquely_equivariant_layers(patterns, actions,
                                   max_nodes: int | None = None) -> UniquenessResult:
    """Uniqueness of a stack of layers: ``G`` equals the stack's symmetry group.

    ``G`` acts on every part at once (inputs, hidden units, outputs): the
    generator tuples are the actions' generators, which must agree on the
    shared parts (``actions[i].gens_out == actions[i + 1].gens_in``).

    Parameters
    ----------
    patterns : sequence of Pattern
        As for :func:`symmetry_group_layers`.
    actions : sequence of Action
        One per layer, same generator count.
    max_nodes : int, optional
        Search-tree node budget.

    Returns
    -------
    UniquenessResult
        ``.witness`` has one permutation per part.
    """
    pats = _as_pattern_list(patterns)
    acts = [_as_action(a, f"actions[{i}]") for i, a in enumerate(actions)]
    if len(acts) != len(pats):
        raise ValueError(f"give one action per layer: {len(pats)} patterns, {len(acts)} actions")
    for i, (p, a) in enumerate(zip(pats, acts)):
        if p.shape != (a.n_out, a.n_in):
            raise ValueError(f"layer {i}: pattern shape {p.shape} does not match its action "
                             f"({a.n_out}, {a.n_in})")
    for i in range(1, len(acts)):
        if not np.array_equal(acts[i].gens_in, acts[i - 1].gens_out):
            raise ValueError(f"actions[{i}].gens_in must equal actions[{i - 1}].gens_out (the "
                             f"same group elements acting on the shared layer)")
    parts = [acts[0].gens_in] + [a.gens_out for a in acts]
    offs = np.concatenate([[0], np.cumsum([p.shape[1] for p in parts])])
    joint = np.concatenate([p + o for p, o in zip(parts, offs[:-1])], axis=1)
    equivariant = all(is_equivariant(p, a) for p, a in zip(pats, acts))
    sym = symmetry_group_layers(pats, max_nodes=max_nodes)
    chain = _group_chain(joint)
    g_order = 1 if chain is None else chain.order()
    unique = equivariant and sym.order == g_order
    witness = None if unique else _find_witness(sym, None if chain is None else chain.contains)
    return UniquenessResult(unique, equivariant, g_order, sym.order, witness, sym)


def lift(action, max_bytes: int | None = None) -> tuple[Action, Action]:
    """Route a layer through a hidden layer on which ``G`` acts regularly.

    The remedy for layers that cannot be uniquely equivariant in one step
    (:doc:`/theory`, *The designs*): ``N -> G -> M``, the hidden units being the
    elements of ``G = G_{N,M}`` permuted by left multiplication.

    Parameters
    ----------
    action : Action
        ``G`` acting on the inputs and outputs.
    max_bytes : int, optional
        Memory bound for listing the elements of ``G``.

    Returns
    -------
    (Action, Action)
        ``N -> G`` and ``G -> M``; generator ``k`` of both is the same group
        element.  Use :func:`paramshare_nb.dense_pattern` on each and
        :func:`check_lift` to verify the two-layer structure.
    """
    act = _as_action(action)
    reg = regular(act.joint, max_bytes=max_bytes) if act.n_gens else \
        np.zeros((0, 1), dtype=INDEX)
    h = reg.shape[1]
    first = Action(act.gens_in, reg, n_in=act.n_in, n_out=h)
    second = Action(reg, act.gens_out, n_in=h, n_out=act.n_out)
    return first, second


def check_lift(action, design: str = "dense", max_nodes: int | None = None) -> UniquenessResult:
    """Uniqueness of the two-layer structure ``N -> G -> M`` of :func:`lift`.

    Builds both layers with the chosen design and compares ``G`` (acting on
    inputs, hidden units and outputs at once) with the symmetry group of the
    coloured 3-partite graph ``N ⊔ G ⊔ M`` (:func:`symmetry_group_layers`).

    Parameters
    ----------
    action : Action
        ``G`` acting on the inputs and outputs.
    design : {"dense", "sparse"}, optional
        Design of both layers (default dense).
    max_nodes : int, optional
        Search-tree node budget.

    Returns
    -------
    UniquenessResult
        Witness parts: ``(s_in, s_hidden, s_out)``.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> res = ps.check_lift(ps.Action.same(ps.groups.alternating(4)))
    >>> res.unique, res.symmetry_order
    (True, 12)
    """
    if design not in ("dense", "sparse"):
        raise ValueError(f"design must be 'dense' or 'sparse', got {design!r}")
    a1, a2 = lift(action)
    build = dense_pattern if design == "dense" else sparse_pattern
    return is_uniquely_equivariant_layers([build(a1), build(a2)], [a1, a2],
                                          max_nodes=max_nodes)


# ---------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------

def graph_action(adjacency, colors=None) -> Action:
    """The automorphism group of a graph acting on its vertices (inputs = outputs).

    Parameters
    ----------
    adjacency : array_like of int or bool, shape (n, n)
        Edge colours, 0 for no edge (see
        :func:`paramshare_nb.groups.graph_automorphisms`).
    colors : array_like of int, shape (n,), optional
        Vertex colours to preserve.

    Returns
    -------
    Action
        ``Action.same(graph_automorphisms(adjacency, colors))``: its
        :func:`~paramshare_nb.dense_pattern` is the most expressive layer
        equivariant to the graph's symmetries.
    """
    gens = _graph_automorphisms(adjacency, colors)
    return Action.same(gens, n=gens.shape[1])


def graph_convolution_pattern(adjacency, nonedge: bool = False,
                              design: str = "conv") -> Pattern:
    """The pattern of a graph convolution ``W = a I + b A``.

    Parameters
    ----------
    adjacency : array_like of int or bool, shape (n, n)
        ``A``; ``W[m, n]`` gets the edge parameter when ``A[m, n] != 0``.
        Distinct non-zero values (edge colours) get distinct parameters;
        a loop adds its parameter to the diagonal's (a multi-edge).
    nonedge : bool, optional
        Also give the off-diagonal non-edges a parameter of their own
        (``W = a I + b A + c (J - I - A)``).
    design : {"conv", "dense"}, optional
        ``"conv"`` (default) is the convolution above, whose symmetry group
        is the graph's automorphism group; ``"dense"`` is the dense design
        for that group (one parameter per orbit of vertex pairs), the most
        expressive layer with the same symmetries.

    Returns
    -------
    Pattern
        Shape ``(n, n)``.

    Examples
    --------
    >>> import numpy as np, paramshare_nb as ps
    >>> cycle = np.roll(np.eye(6, dtype=int), 1, axis=1); cycle = cycle + cycle.T
    >>> ps.symmetry_group(ps.graph_convolution_pattern(cycle)).order
    12
    """
    adj = _as_adjacency(adjacency)
    if design not in ("conv", "dense"):
        raise ValueError(f"design must be 'conv' or 'dense', got {design!r}")
    if design == "dense":
        return dense_pattern(graph_action(adj))
    n = adj.shape[0]
    diag = np.arange(n, dtype=INDEX)
    r, c = np.nonzero(adj)
    vals = sorted_unique(adj[r, c]) if r.size else np.zeros(0, dtype=INDEX)
    edge_param = 1 + np.searchsorted(vals, adj[r, c])
    rows, cols, params = [diag, r], [diag, c], [np.zeros(n, dtype=INDEX), edge_param]
    if nonedge:
        mask = (adj == 0)
        np.fill_diagonal(mask, False)
        r0, c0 = np.nonzero(mask)
        rows.append(r0)
        cols.append(c0)
        params.append(np.full(r0.size, 1 + vals.size, dtype=INDEX))
    return Pattern((n, n), np.concatenate(rows), np.concatenate(cols),
                   np.concatenate(params).astype(INDEX),
                   n_params=1 + vals.size + (1 if nonedge else 0))


# ---------------------------------------------------------------------------
# explanation
# ---------------------------------------------------------------------------

def _sizes_text(labels, limit=8):
    if labels.size == 0:
        return "none"
    sizes = np.bincount(labels)
    vals, counts = np.unique(sizes, return_counts=True)
    parts = [f"{c} x {v}" if c > 1 else f"{v}" for v, c in zip(vals[::-1], counts[::-1])]
    shown = ", ".join(parts[:limit]) + (", ..." if len(parts) > limit else "")
    return f"{sizes.size} orbit(s), sizes {shown}"


def _big(n: int) -> str:
    """A group order for people: exact up to 30 digits, else ``about 1.23e+4567 (4568
    digits)`` (Python refuses to print ints past 4300 digits, and ``S_1800``'s order has
    5000)."""
    if n < 10**30:
        return str(n)
    digits = int(n.bit_length() * math.log10(2))  # within one of the true count
    if n >= 10**digits:
        digits += 1
    lead = n // 10 ** (digits - 3)  # the first three digits
    return f"about {lead / 100:.2f}e+{digits - 1} ({digits} digits)"


def explain(pattern, action=None, file=None, max_nodes: int | None = None) -> None:
    """Print what a pattern is and what it is equivariant to.

    Shows the parameters, non-zeros, compression against a dense ``W``, the
    orbits of ``Aut(Omega)``, equivariance to ``action``, uniqueness with a
    witness in cycle notation, and a suggestion when the layer is not
    uniquely equivariant.

    Parameters
    ----------
    pattern : Pattern
        The tying pattern to describe.
    action : Action, optional
        The group the layer is meant for; without it only the pattern and
        its symmetry group are described.
    file : file-like, optional
        Where to print (default ``sys.stdout``).
    max_nodes : int, optional
        Search-tree node budget.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.cyclic(4))
    >>> ps.explain(ps.dense_pattern(act), act)  # doctest: +ELLIPSIS
    Pattern of shape (4, 4): ...
    Uniquely equivariant: yes ...
    """
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"file must be a writable text stream (with a write method), got "
                        f"{type(file).__name__}")
    print(_explain_text(pattern, action, max_nodes), file=file or sys.stdout)


def _explain_text(pattern, action=None, max_nodes=None) -> str:
    pat = _as_pattern(pattern)
    act = None if action is None else _as_action(action)
    m, n = pat.shape
    out = io.StringIO()

    def say(line=""):
        out.write(line + "\n")

    entries = m * n
    say(f"Pattern of shape ({m}, {n}): M={m} outputs, N={n} inputs")
    ratio = f"{entries / pat.n_params:.3g}x compression" if pat.n_params else "nothing to learn"
    say(f"  parameters : {pat.n_params} (a dense W has {entries} entries: {ratio})")
    density = pat.nnz / entries if entries else 0.0
    say(f"  non-zeros  : {pat.nnz} of {entries} entries ({100 * density:.3g}% dense)"
        + (", with multi-edges" if pat.has_multi_edges else ""))
    if pat.nnz:
        # counts of the parameters used, not a bincount over all n_params (up to 2**62)
        uses = np.unique(pat.params, return_counts=True)[1]
        fewest = uses.min() if uses.size == pat.n_params else 0
        say(f"  edges per parameter: min {fewest}, max {uses.max()}")
    if act is None:
        sym = symmetry_group(pat, max_nodes=max_nodes)
        say(f"Symmetry group Aut(Omega): order {_big(sym.order)}")
        say(f"  inputs : {_sizes_text(sym.orbits_in)}")
        say(f"  outputs: {_sizes_text(sym.orbits_out)}")
        return out.getvalue().rstrip("\n")
    if pat.shape != (act.n_out, act.n_in):
        raise ValueError(f"pattern has shape {pat.shape} but the action acts on M={act.n_out} "
                         f"outputs and N={act.n_in} inputs")
    res = is_uniquely_equivariant(pat, act, max_nodes=max_nodes)
    sym = res.symmetry
    say(f"Symmetry group Aut(Omega): order {_big(sym.order)}")
    say(f"  inputs : {_sizes_text(sym.orbits_in)}")
    say(f"  outputs: {_sizes_text(sym.orbits_out)}")
    g_in, g_out = act.order_in(), act.order_out()
    say(f"Group G: order {_big(res.group_order)} (on inputs {_big(g_in)}, on outputs "
        f"{_big(g_out)})")
    say(f"  inputs : {_sizes_text(act.orbits_in())}")
    say(f"  outputs: {_sizes_text(act.orbits_out())}")
    if not res.equivariant:
        preserves = _preserver(pat)
        bad = [k for k, (a, b) in enumerate(zip(act.gens_in, act.gens_out))
               if not preserves(a, b)]
        say(f"Equivariant: NO -- generator pair(s) {bad[:8]} move the pattern")
        say("Suggestion: build the layer with ps.dense_pattern(action) (always equivariant) or "
            "ps.sparse_pattern(action) for a free action")
        return out.getvalue().rstrip("\n")
    say("Equivariant: yes (G <= Aut(Omega))")
    if res.unique:
        say(f"Uniquely equivariant: yes (Aut(Omega) = G, order {_big(res.group_order)}): the layer "
            f"is sensitive to every permutation outside G")
        return out.getvalue().rstrip("\n")
    say(f"Uniquely equivariant: NO -- |Aut(Omega)| = {_big(res.symmetry_order)} > |G| = "
        f"{_big(res.group_order)} (index {_big(res.symmetry_order // max(res.group_order, 1))})")
    if res.witness is not None:
        say(f"  witness (in Aut(Omega), not in G): inputs {perm.to_cycles(res.witness[0])}; "
            f"outputs {perm.to_cycles(res.witness[1])}")
    say("Suggestion: " + _suggest(pat, act, res, max_nodes))
    return out.getvalue().rstrip("\n")


def _suggest(pat, act, res, max_nodes) -> str:
    """Exact advice: every G-equivariant pattern is a union of the dense pattern's orbits of
    pairs, so its symmetry group contains the dense pattern's.  A single layer can be
    uniquely equivariant iff the dense pattern is."""
    dense = dense_pattern(act)
    finest = res if pat == dense else is_uniquely_equivariant(dense, act, max_nodes=max_nodes)
    if finest.unique:
        fewer = (" (ps.sparse_pattern(action) too, with fewer non-zeros)"
                 if act.is_free_in() and act.is_free_out() else "")
        return f"ps.dense_pattern(action) is uniquely equivariant{fewer}: build the layer with it"
    return (f"no single layer can be uniquely equivariant: even ps.dense_pattern(action), the "
            f"finest equivariant pattern, has a symmetry group of order "
            f"{_big(finest.symmetry_order)} > |G|, and every equivariant pattern's contains "
            f"it; add a hidden layer on which G acts regularly: a1, a2 = ps.lift(action), with "
            f"ps.dense_pattern on each (verify with ps.check_lift(action))")
