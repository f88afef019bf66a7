"""Stabilizer chains by the Schreier–Sims algorithm (random first, then deterministic).

A stabilizer chain for ``G`` on ``n`` points is a base ``b_0, b_1, ...`` and,
per level ``l``, the orbit of ``b_l`` under ``G_l`` (the pointwise
stabilizer of ``b_0..b_{l-1}``) with a coset representative ``u`` for every
orbit point (``u[b_l] == point``).  Then ``|G| = prod |orbit_l|`` exactly,
membership is a sift through the levels, and a uniformly random element is a
product of random representatives.  The group is never enumerated.

A transitive group on 8 points or more is first tried by random
Schreier–Sims (:meth:`StabChain._random_phase`): the chain's order is
``|G|`` at most, so reaching ``n!`` (``n!/2``) proves the group is ``S_n``
(``A_n``) and the chain complete.  Every other chain is completed by the
deterministic algorithm, which checks every Schreier generator.

Permutations are int64 arrays; ``(p * q)[i] = p[q[i]]`` is ``p[q]``.
"""

from __future__ import annotations

import math

import numpy as np

from . import config
from ._kernels.groups_cpu import _orbits
from ._kernels.schreier_cpu import _fill_rows, _first_failure, _orbit_extend, _sift
from ._validate import bytes_text


def _inverse(p: np.ndarray) -> np.ndarray:
    inv = np.empty(p.shape[0], dtype=np.int64)
    inv[p] = np.arange(p.shape[0], dtype=np.int64)
    return inv


def _with_room(a: np.ndarray, rows: int, limit: int | None = None) -> np.ndarray:
    """``a``, or a copy of it with room for ``rows`` rows and, up to ``limit``, about as
    many again (so that growing row by row copies each row a bounded number of
    times); the rows past ``a``'s are uninitialised."""
    if a.shape[0] >= rows:
        return a
    cap = max(rows, 2 * a.shape[0], 4)
    if limit is not None:
        cap = max(rows, min(cap, limit))
    grown = np.empty((cap,) + a.shape[1:], dtype=a.dtype)
    grown[: a.shape[0]] = a
    return grown


def _cut(a: np.ndarray, rows: int) -> np.ndarray:
    """``a``'s first ``rows`` rows, copied only when ``a`` has more (a regular group's
    single level on 10,000 points is 800 MB, written in one step without spare rows)."""
    return a if a.shape[0] == rows else a[:rows].copy()


#: Points from which a transitive group's chain is first tried by random Schreier–Sims
#: (:meth:`StabChain._random_phase`), to stop when its order reaches ``n!`` (or ``n!/2``):
#: deterministic Schreier–Sims grows about as n**4 on S_n (S_128 0.5 s, S_256 8 s), where
#: ``S_n`` and ``A_n`` are proven by their order alone.  Smaller and intransitive groups
#: keep the chains they always had.
_RANDOM_FROM = 8
#: Random elements in a row that strip to the identity before the random phase gives up
#: (a group below the bound), and the seed that makes its chains reproducible.  A chain
#: short of S_n's by its last level (2 points) strips half of them: at 8 S_512 gave up
#: once in a while and took a minute to verify deterministically; at 32 it gives up
#: about once in 4 billion chains.  A group below the bound pays the 32 sifts and the
#: warm-up: 0.2 ms for D_8 (0.07 ms before).
_PATIENCE = 32
_SEED = 2017
_WARM_UP = 30  # product replacement steps before the first element


def _giant_bound(gens: np.ndarray) -> int | None:
    """``n!``, or ``n!/2`` when every generator is even: the order of a transitive group on
    ``n`` points at most, reached by ``S_n`` and ``A_n`` alone; ``None`` for a group that
    is not transitive."""
    n = gens.shape[1]
    if gens.shape[0] == 0 or _orbits(gens).max() != 0:
        return None
    # a permutation is even when n minus its number of cycles is
    even = all((n - int(_orbits(g[None]).max()) - 1) % 2 == 0 for g in gens)
    return math.factorial(n) // (2 if even else 1)


def _random_elements(gens: np.ndarray, rng: np.random.Generator):
    """Random elements of the group of ``gens``, by product replacement with an
    accumulator (Celler, Leedham-Green, Murray, Niemeyer and O'Brien 1995, with Leedham-
    Green's "rattle"): ten slots start as the generators, each step multiplies one slot by
    another or its inverse, and the accumulator by the new slot.  Close to uniform after
    the warm-up; randomness only sets the speed here, never the result.  The draws come
    64 steps at a time (one generator call each: 10 us per step drawn one by one)."""
    slots = [gens[i % len(gens)].copy() for i in range(max(10, len(gens)))]
    k = len(slots)
    acc = np.arange(gens.shape[1], dtype=np.int64)
    step = 0
    while True:
        # slot i, another slot j != i, and whether to take j's inverse
        draws = rng.integers(0, [k, k - 1, 2], size=(64, 3))
        for i, j, invert in draws.tolist():
            j += j >= i
            slots[i] = slots[i][_inverse(slots[j]) if invert else slots[j]]
            acc = acc[slots[i]]
            step += 1
            if step > _WARM_UP:
                yield acc


class _Level:
    """One level of the chain: base point, the strong generators fixing earlier points
    (indices into the chain's), and the orbit with each point's row in the chain's
    pool of inverse representatives ``u^-1`` (``u[b_l] == point``).

    Only ``u^-1`` is kept: sifting only ever applies it, and a ``u`` is one
    scatter away (:func:`_inverse`).  The orbit and its representatives
    only ever grow, and existing representatives never change: a Schreier
    generator verified once stays verified (the subgroup below only grows), so
    :meth:`StabChain._check_level` re-examines only new (point, generator)
    pairs.
    """

    __slots__ = ("point", "gen_ids", "orbit", "rows", "_built", "checked")

    def __init__(self, point: int, row: int):
        self.point = point
        self.gen_ids: list[int] = []
        self.orbit = np.array([point], dtype=np.int64)
        self.rows = np.array([row], dtype=np.int64)  # the identity's row
        self._built = (1, 0)  # (orbit points, generators) already expanded
        self.checked = (0, 0)  # (rows, generators) whose Schreier generators sift

    @property
    def orbit_size(self) -> int:
        return self.orbit.shape[0]


class StabChain:
    """Base and strong generating set of the group generated by ``gens``.

    The tables are packed for the jitted steps of
    :mod:`._kernels.schreier_cpu` (which lists them): one pool of ``u^-1``
    rows for all levels, one ``point -> row`` map per level.  Their size,
    ``8 n (sum |orbit| + levels)`` bytes, is bounded by ``config.max_bytes``
    (:meth:`_reserve`); while the chain is built the pool keeps spare rows
    (up to twice its rows, within the bound), and it is cut to size at the
    end.  (int32 rows would halve it, but numpy indexes with int32 indices
    1.6-4x slower than with int64, in :meth:`random_element`.)

    Parameters
    ----------
    gens : numpy.ndarray
        Validated ``(k, n)`` int64 generators.
    base_prefix : sequence of int, optional
        Points to put first in the base (``[i]`` makes level 1 the
        stabilizer of ``i``).
    """

    def __init__(self, gens: np.ndarray, base_prefix=()):
        n = self.n = int(gens.shape[1])
        self.identity = np.arange(n, dtype=np.int64)
        self.identity.setflags(write=False)  # chains are memoised and shared: never hand it out
        self.levels: list[_Level] = []
        self._rows = 0  # table rows reserved, over all levels
        self._pool = np.empty((0, n), dtype=np.int64)
        self._used = 0  # pool rows written
        self._gpos = np.empty((0, n), dtype=np.int64)
        self._points = np.empty(0, dtype=np.int64)
        self._first = np.empty(0, dtype=np.int64)
        self._strong = np.empty((0, n), dtype=np.int64)
        self._strong_inv = np.empty((0, n), dtype=np.int64)
        self._n_strong = 0
        self._scratch = np.empty((3, n), dtype=np.int64)  # orbit, parents, via
        self._room = None  # see _row_limit
        for b in base_prefix:
            self._new_level(int(b))
        for g in gens:
            if not np.array_equal(g, self.identity):
                self._add_strong(g, 0)
        for depth in range(len(self.levels)):
            self.rebuild(depth)
        bound = _giant_bound(gens) if n >= _RANDOM_FROM else None
        if bound is None or self.order() < bound and not self._random_phase(gens, bound):
            self._complete()
        self._cut_to_size()

    def _new_level(self, point: int) -> None:
        self._reserve(2)  # its point -> row map and its identity row, n int64 each
        depth = len(self.levels)
        self._gpos = _with_room(self._gpos, depth + 1)
        self._points = _with_room(self._points, depth + 1)
        self._first = _with_room(self._first, depth + 1)
        row = self._take_rows(1)
        self._pool[row] = self.identity
        self._gpos[depth] = -1
        self._gpos[depth, point] = row
        self._points[depth] = point
        self._first[depth] = row
        self.levels.append(_Level(point, row))

    def _take_rows(self, k: int) -> int:
        """The first of ``k`` new pool rows (reserved already)."""
        start = self._used
        if start + k > self._pool.shape[0] and self._looks_giant():
            # room for all the rows of S_n's chain at once, as untouched memory: grown by
            # doubling, S_512's took 1.5 s of copies and first touches of 1 GB
            limit = self._row_limit()
            try:
                self._pool = _with_room(self._pool, max(start + k, limit), limit)
            except MemoryError:  # more than the machine will map (a max_bytes set high)
                pass
        self._pool = _with_room(self._pool, start + k, self._row_limit())
        self._used += k
        return start

    def _looks_giant(self) -> bool:
        """In the random phase, whether the group acts 2-transitively so far, as S_n and
        A_n do (and few other groups; a regular one, say on 10,000 points, never)."""
        n, levels = self.n, self.levels
        return (self._room is not None and len(levels) > 1 and levels[0].orbit_size == n
                and levels[1].orbit_size == n - 1)

    def _row_limit(self) -> int:
        """Pool rows the spare ones stop at: within ``config.max_bytes``, and within
        the rows a giant's chain has while the random phase looks for one."""
        limit = config.max_bytes // (8 * max(self.n, 1))
        return limit if self._room is None else min(limit, self._room)

    def _reserve(self, rows: int) -> None:
        """Account for ``rows`` more rows of ``n`` int64; refuse past ``config.max_bytes``."""
        self._rows += rows
        need = self._rows * self.n * 8
        if need > config.max_bytes:
            raise MemoryError(
                f"the stabilizer chain of this group on {self.n} points needs at least "
                f"{bytes_text(need)} for its tables (a row of {self.n} points for each "
                f"orbit point of each level, and two more a level), over config.max_bytes = "
                f"{bytes_text(config.max_bytes)}; raise the bound with "
                f"config.override(max_bytes=...)")

    def _cut_to_size(self) -> None:
        """Release the spare rows the tables kept while the chain grew."""
        depth = len(self.levels)
        self._pool = _cut(self._pool, self._used)
        self._gpos = _cut(self._gpos, depth)
        self._points, self._first = _cut(self._points, depth), _cut(self._first, depth)
        self._strong = _cut(self._strong, self._n_strong)
        self._strong_inv = _cut(self._strong_inv, self._n_strong)
        self._scratch = None

    # -- construction -------------------------------------------------------
    def _moved_point(self, g: np.ndarray) -> int:
        return int(np.flatnonzero(g != self.identity)[0])

    def _add_strong(self, g: np.ndarray, start: int) -> None:
        """Add ``g`` (which fixes the base points before ``start``) to levels from ``start``."""
        gid = self._n_strong
        self._strong = _with_room(self._strong, gid + 1)
        self._strong_inv = _with_room(self._strong_inv, gid + 1)
        self._strong[gid] = g
        self._strong_inv[gid] = _inverse(g)
        self._n_strong += 1
        level = start
        while True:
            if level == len(self.levels):
                self._new_level(self._moved_point(g))
            self.levels[level].gen_ids.append(gid)
            if g[self.levels[level].point] != self.levels[level].point:
                return
            level += 1

    def rebuild(self, depth: int) -> None:
        """Extend level ``depth``'s orbit breadth-first with any new generators, and write
        the new points' rows (after reserving them: the orbit is found first, on points
        alone)."""
        level = self.levels[depth]
        old_rows, old_gens = level._built
        size = level.orbit_size
        orbit, parents, via = self._scratch
        orbit[:size] = level.orbit
        ids = np.array(level.gen_ids, dtype=np.int64)
        count = _orbit_extend(depth, orbit, size, old_rows, old_gens, ids, self._strong,
                              self._gpos, parents, via)
        level._built = (count, ids.shape[0])
        new = count - size
        if not new:
            return
        self._reserve(new)
        start = self._take_rows(new)
        _fill_rows(depth, orbit[size:count], level.rows, parents, via, self._strong_inv,
                   self._pool, start, self._gpos)
        level.orbit = np.concatenate([level.orbit, orbit[size:count]])
        level.rows = np.concatenate([level.rows, np.arange(start, start + new)])

    def sift(self, g: np.ndarray, start: int = 0) -> tuple[np.ndarray, int]:
        """Strip (a copy of) permutation ``g`` through the levels from ``start``; return
        the residue and the level reached."""
        h = np.array(g, dtype=np.int64)
        reached = _sift(h, np.empty_like(h), start, self._pool, self._gpos, self._points,
                        self._first, len(self.levels))
        return h, reached

    def _complete(self) -> None:
        """Make the generating set strong: every Schreier generator sifts to the identity."""
        depth = len(self.levels) - 1
        while depth >= 0:
            failed_at = self._check_level(depth)
            if failed_at is None:
                depth -= 1
            else:
                depth = failed_at

    def _check_level(self, depth: int):
        level = self.levels[depth]
        done_rows, done_gens = level.checked
        ids = np.array(level.gen_ids, dtype=np.int64)
        residue = np.empty(self.n, dtype=np.int64)
        reached = _first_failure(depth, level.orbit, level.rows, ids, done_rows, done_gens,
                                 self._strong, self._pool, self._gpos, self._points,
                                 self._first, len(self.levels), residue)
        if reached < 0:
            level.checked = (level.orbit_size, ids.shape[0])
            return None
        return self._insert(residue, depth + 1)  # it fixes the first `depth + 1` base points

    def _insert(self, g: np.ndarray, start: int, extend_from: int | None = None) -> int:
        """Add strong generator ``g``, which fixes the base points before ``start``, and
        extend the orbits of the levels it joins from ``extend_from`` (default ``start``)
        on; returns the last of them."""
        self._add_strong(g, start)
        top = start
        while top < len(self.levels) and g[self.levels[top].point] == self.levels[top].point:
            top += 1
        first = start if extend_from is None else min(extend_from, len(self.levels) - 1)
        for d in range(first, min(top, len(self.levels) - 1) + 1):
            self.rebuild(d)
        return min(top, len(self.levels) - 1)

    def _random_phase(self, gens: np.ndarray, bound: int) -> bool:
        """Random Schreier–Sims: sift random elements, keep each residue that does not
        strip as a strong generator, until the chain's order reaches ``bound`` (an upper
        bound on ``|G|``: then the chain is complete, as its order is ``|G|`` at most and
        grows to it only when complete) or :data:`_PATIENCE` elements in a row strip
        to the identity.  Whether the bound was reached; if not, :meth:`_complete`
        verifies from here."""
        # S_n's chain has orbits of n, n - 1, ..., 2 points (A_n's stop at 3): the pool
        # takes that many rows at once when the group looks like one (_take_rows), and
        # never more (_row_limit), so that a giant's is neither copied as it grows nor
        # cut at the end
        n = self.n
        giant_rows = n * (n + 1) // 2 - (1 if bound == math.factorial(n) else 3)
        self._room = giant_rows

        def proven() -> bool:
            # the product of 500 orbit sizes is no test to repeat 1000 times (0.26 s for
            # S_512): the order reaches the bound only with the giant's rows
            return self._used >= giant_rows and self.order() == bound

        elements = _random_elements(gens, np.random.default_rng(_SEED))
        misses = 0
        while True:
            if misses == _PATIENCE:  # first extend the orbits left behind (see below)
                rows = self._used
                for depth in range(len(self.levels)):
                    self.rebuild(depth)
                if self._used == rows:  # closed under their generators: give up
                    break
                misses = 0
                if proven():
                    break
            residue, reached = self.sift(next(elements))
            if reached == len(self.levels) and np.array_equal(residue, self.identity):
                misses += 1
                continue
            misses = 0
            # from level 1 (0 when it moves b_0), not from `reached`: every level from 1 on
            # must hold the generators of the levels below it, or the deterministic check
            # that follows a give-up can pass a chain short of the group (an 8-cycle and
            # (0 7) gave 34560 for S_8: its level 1 lacked residues held only lower down).
            # The orbits of the levels it joins above `reached` are extended when a sift
            # next stops there, or before giving up: S_512 made 197k extensions, most of
            # them finding nothing, where each residue needs one
            self._insert(residue, min(reached, 1), extend_from=reached)
            if proven():
                break
        self._room = None
        return misses < _PATIENCE  # else every orbit is closed, as _complete needs

    # -- queries -------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the levels' tables (what :meth:`_reserve` bounds)."""
        return 8 * self.n * (self._used + len(self.levels))

    @property
    def base(self) -> list[int]:
        return [lv.point for lv in self.levels]

    def order(self) -> int:
        """Exact group order as a Python int."""
        return math.prod(lv.orbit_size for lv in self.levels)

    def contains(self, g: np.ndarray) -> bool:
        """Membership by sifting: ``g`` is in the group iff it strips to the identity
        (anything but a permutation of the chain's points is not in it)."""
        g = np.asarray(g)
        if g.shape != (self.n,) or not np.array_equal(np.sort(g), self.identity):
            return False
        residue, reached = self.sift(g)
        return reached == len(self.levels) and bool(np.array_equal(residue, self.identity))

    def level_generators(self, depth: int) -> np.ndarray:
        """Strong generators of the stabilizer of the first ``depth`` base points."""
        ids = self.levels[depth].gen_ids if depth < len(self.levels) else []
        if not ids:
            return np.zeros((0, self.n), dtype=np.int64)
        unique = {g.tobytes(): g for g in self._strong[ids]}
        return np.array(list(unique.values()), dtype=np.int64)

    def random_element(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random element: one random coset representative per level.

        ``g = u_0 u_1 ... u_L`` is built as its inverse from the stored ``u^-1`` rows, then
        inverted once (a scatter per level made it twice as slow); the draws come in the
        order they always did, so seeded results do not change.
        """
        rows = [rng.integers(level.orbit_size) for level in reversed(self.levels)]
        g_inv = self.identity
        for level, row in zip(self.levels, reversed(rows)):
            g_inv = self._pool[level.rows[row]][g_inv]
        return _inverse(g_inv)
