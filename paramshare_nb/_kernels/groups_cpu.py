"""Jitted combinatorial kernels for groups: union-find orbits and closure.

Private: the public, validated wrappers live in :mod:`paramshare_nb.groups`.
Every kernel takes C-contiguous int64 arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _find(parent, i):
    # Path halving: every visited node points two steps up, keeping trees flat.
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, nogil=True)
def _union_labels(parent):
    """Canonical labels from a union-find forest: orbits numbered by smallest point."""
    n = parent.shape[0]
    labels = np.empty(n, dtype=np.int64)
    root_label = np.full(n, -1, dtype=np.int64)
    count = 0
    for i in range(n):  # increasing i: an orbit's first visit is its smallest point
        r = _find(parent, i)
        if root_label[r] < 0:
            root_label[r] = count
            count += 1
        labels[i] = root_label[r]
    return labels


@njit(cache=True, nogil=True)
def _link(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra != rb:
        # Keep the smaller root: cheap and keeps roots stable for the labelling pass.
        if ra < rb:
            parent[rb] = ra
        else:
            parent[ra] = rb


@njit(cache=True, nogil=True)
def _orbits(gens):
    """Orbit label of every point under the generators (union-find, no enumeration)."""
    k, n = gens.shape
    parent = np.arange(n, dtype=np.int64)
    for g in range(k):
        for i in range(n):
            _link(parent, i, gens[g, i])
    return _union_labels(parent)


@njit(cache=True, nogil=True)
def _pair_orbits(gens_in, gens_out):
    """Orbits of the diagonal action on pairs ``(m, n)``, flattened row-major.

    Pair ``(m, n)`` is point ``m * N + n``; generator ``k`` maps it to
    ``gens_out[k, m] * N + gens_in[k, n]``.
    """
    k, n_in = gens_in.shape
    m_out = gens_out.shape[1]
    parent = np.arange(m_out * n_in, dtype=np.int64)
    for g in range(k):
        for m in range(m_out):
            base = gens_out[g, m] * n_in
            row = m * n_in
            for n in range(n_in):
                _link(parent, row + n, base + gens_in[g, n])
    return _union_labels(parent)


@njit(cache=True, nogil=True)
def _hash_row(row):
    h = np.uint64(1469598103934665603)
    for v in row:
        h = (h ^ np.uint64(v)) * np.uint64(1099511628211)
    return h


@njit(cache=True, nogil=True)
def _closure(gens, order):
    """All ``order`` elements, breadth-first from the identity.

    New elements are ``g * h`` (apply ``h`` first) for each generator ``g`` in
    order, so the listing is deterministic.  ``order`` must be the exact
    group order (from the stabilizer chain): it sizes the arrays up front.
    """
    k, n = gens.shape
    elems = np.empty((order, n), dtype=np.int64)
    for i in range(n):
        elems[0, i] = i
    size = 1
    while size < 2 * order:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    table[_hash_row(elems[0]) & np.uint64(mask)] = 0
    count = 1
    cand = np.empty(n, dtype=np.int64)
    head = 0
    while head < count:
        for g in range(k):
            for i in range(n):
                cand[i] = gens[g, elems[head, i]]
            slot = _hash_row(cand) & np.uint64(mask)
            found = False
            while table[slot] >= 0:
                j = table[slot]
                same = True
                for i in range(n):
                    if elems[j, i] != cand[i]:
                        same = False
                        break
                if same:
                    found = True
                    break
                slot = (slot + np.uint64(1)) & np.uint64(mask)
            if not found:
                if count == order:  # cannot happen with an exact order
                    return elems[:0]
                elems[count] = cand
                table[slot] = count
                count += 1
        head += 1
    return elems[:count]


@njit(cache=True, nogil=True)
def _first_appearance_ids(seen, n_labels):
    """``ids[label]``: the rank of ``label``'s first appearance in ``seen`` (-1 where it
    never appears), and the number of distinct labels.  One pass, where ``np.unique``
    with ``return_index`` sorted 8.4M labels (0.75 s)."""
    ids = np.full(n_labels, -1, dtype=np.int64)
    count = 0
    for lab in seen:
        if ids[lab] < 0:
            ids[lab] = count
            count += 1
    return ids, count
