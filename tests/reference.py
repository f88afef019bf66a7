"""Obviously-correct references for the core: brute force and SymPy.

Nothing here is clever; each function says what it computes in the most
direct way, so the library's fast paths can be checked against it.
"""

from __future__ import annotations

import itertools

import numpy as np
from sympy.combinatorics import Permutation, PermutationGroup


def sympy_group(gens, n):
    """SymPy group from ``(k, n)`` generators (``p[i]`` = image of ``i``, as in SymPy)."""
    gens = np.asarray(gens).reshape(-1, n)
    perms = [Permutation(list(map(int, g)), size=n) for g in gens]
    return PermutationGroup(perms or [Permutation(list(range(n)), size=n)])


def brute_closure(gens, n):
    """All elements by naive BFS over Python tuples."""
    ident = tuple(range(n))
    seen = {ident}
    frontier = [ident]
    gens = [tuple(map(int, g)) for g in np.asarray(gens).reshape(-1, n)]
    while frontier:
        nxt = []
        for h in frontier:
            for g in gens:
                gh = tuple(g[h[i]] for i in range(n))
                if gh not in seen:
                    seen.add(gh)
                    nxt.append(gh)
        frontier = nxt
    return seen


def brute_orbits(gens, n):
    """Orbit partition as a set of frozensets, by following generators to a fixpoint."""
    gens = np.asarray(gens).reshape(-1, n)
    orbits = []
    seen = set()
    for start in range(n):
        if start in seen:
            continue
        orb = {start}
        stack = [start]
        while stack:
            i = stack.pop()
            for g in gens:
                j = int(g[i])
                if j not in orb:
                    orb.add(j)
                    stack.append(j)
        seen |= orb
        orbits.append(frozenset(orb))
    return set(orbits)


def labels_to_partition(labels):
    """Partition (set of frozensets) from a label array."""
    parts = {}
    for i, lab in enumerate(np.asarray(labels).ravel()):
        parts.setdefault(int(lab), set()).add(i)
    return {frozenset(p) for p in parts.values()}


def brute_pair_orbits(elems_in, elems_out, m, n):
    """Orbits of the diagonal action on (m, n) pairs from listed group elements."""
    label = -np.ones((m, n), dtype=int)
    count = 0
    for a in range(m):
        for b in range(n):
            if label[a, b] >= 0:
                continue
            for gi, go in zip(elems_in, elems_out):
                label[go[a], gi[b]] = count
            count += 1
    return label


def brute_sparse_index(elems_in, elems_out, gens_out, m, n):
    """The sparse design's index (-1 for zeros), from listed group elements: for the
    smallest point ``i`` of each input orbit, ``j`` of each output orbit and ``h`` in
    ``{e} ∪ gens_out``, in that order, the orbit of the pair ``(h[j], i)`` gets the next
    parameter unless it has one."""
    first = [int(np.min(np.unique([g[b] for g in elems_in]))) for b in range(n)]
    reps_in = sorted(set(first))
    reps_out = sorted({int(np.min([g[a] for g in elems_out])) for a in range(m)})
    index = -np.ones((m, n), dtype=int)
    count = 0
    for i in reps_in:
        for j in reps_out:
            for h in [np.arange(m), *gens_out]:
                a = int(h[j])
                if index[a, i] >= 0:
                    continue
                for gi, go in zip(elems_in, elems_out):
                    index[go[a], gi[i]] = count
                count += 1
    return index


def burnside_pair_count(elems_in, elems_out):
    """Number of pair orbits by Burnside: mean over g of fix_N(g) * fix_M(g)."""
    total = 0
    for gi, go in zip(elems_in, elems_out):
        total += int(np.sum(gi == np.arange(gi.size))) * int(np.sum(go == np.arange(go.size)))
    assert total % len(elems_in) == 0
    return total // len(elems_in)


def all_perms(n):
    """Every permutation of n points as arrays."""
    return [np.array(p) for p in itertools.permutations(range(n))]
