"""Jitted steps of the Schreier–Sims algorithm on packed tables.

Private: :class:`paramshare_nb._schreier.StabChain` owns the tables and
calls these.  The chain's state, all C-contiguous int64:

- ``pool (R, n)``: the inverse coset representatives ``u^-1`` of every
  level, one row each, in the order they were found;
- ``gpos (L, n)``: ``gpos[l, p]``, the pool row of orbit point ``p`` at
  level ``l``, or -1;
- ``points (L,)`` the base points and ``first (L,)`` each level's
  identity row (sifting skips it);
- ``strong (S, n)`` and ``strong_inv``: the strong generators and their
  inverses; a level lists the ones it holds by index (``gen_ids``).

A Python loop over these made 78k sifts of 64-point arrays for ``S_64``'s
chain, a microsecond of numpy per level each.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _sift(h, tmp, start, pool, gpos, points, first, n_levels):
    """Strip ``h`` in place through levels ``start..n_levels - 1``; the level reached
    (``n_levels`` when ``h`` passed them all)."""
    n = h.shape[0]
    for d in range(start, n_levels):
        r = gpos[d, h[points[d]]]
        if r < 0:
            return d
        if r != first[d]:
            t = pool[r]
            for i in range(n):
                tmp[i] = t[h[i]]
            h[:] = tmp
    return n_levels


@njit(cache=True, nogil=True)
def _is_identity(h):
    for i in range(h.shape[0]):
        if h[i] != i:
            return False
    return True


@njit(cache=True, nogil=True)
def _first_failure(depth, orbit, rows, gen_ids, done_rows, done_gens, strong,
                   pool, gpos, points, first, n_levels, residue):
    """Sift the Schreier generators ``u_{s b}^-1 s u_b`` of level ``depth`` not checked
    yet (those of a row before ``done_rows`` and a generator before ``done_gens``
    were), rows first; at the first that does not strip to the identity, leave
    its residue in ``residue`` and return the level its sift reached.  -1 when
    all strip."""
    n = pool.shape[1]
    u = np.empty(n, dtype=np.int64)
    tmp = np.empty(n, dtype=np.int64)
    n_gens = gen_ids.shape[0]
    for row in range(orbit.shape[0]):
        if row < done_rows and n_gens <= done_gens:
            continue
        u_inv = pool[rows[row]]
        for i in range(n):
            u[u_inv[i]] = i
        b = orbit[row]
        for g in range(n_gens):
            if row < done_rows and g < done_gens:
                continue
            s = strong[gen_ids[g]]
            t = pool[gpos[depth, s[b]]]
            for i in range(n):
                residue[i] = t[s[u[i]]]
            reached = _sift(residue, tmp, depth + 1, pool, gpos, points, first, n_levels)
            if reached < n_levels or not _is_identity(residue):
                return reached
    return -1


@njit(cache=True, nogil=True)
def _orbit_extend(level, orbit, n_orbit, old_rows, old_gens, gen_ids, strong, gpos,
                  parents, via):
    """Extend level ``level``'s orbit breadth-first, as far as its generators take it.

    ``orbit[:n_orbit]`` holds it so far; points before ``old_rows`` have seen
    the generators before ``old_gens`` already.  New points are appended to
    ``orbit`` and marked -2 in ``gpos[level]``; ``parents[j]`` (an orbit index)
    and ``via[j]`` (a strong generator) say how new point ``j`` was reached.
    Returns the orbit's new size.
    """
    count = n_orbit
    head = 0
    while head < count:
        b = orbit[head]
        for j in range(old_gens if head < old_rows else 0, gen_ids.shape[0]):
            c = strong[gen_ids[j], b]
            if gpos[level, c] == -1:
                gpos[level, c] = -2
                parents[count - n_orbit] = head
                via[count - n_orbit] = gen_ids[j]
                orbit[count] = c
                count += 1
        head += 1
    return count


@njit(cache=True, nogil=True)
def _fill_rows(level, new_points, rows, parents, via, strong_inv, pool, next_row, gpos):
    """Write the ``u^-1`` rows of the orbit points ``new_points`` (found by
    :func:`_orbit_extend`) from pool row ``next_row`` on: ``(s u)^-1 = u^-1 s^-1``,
    the parent's row taken through the inverse generator.  ``rows`` are the pool
    rows of the points found before; a parent found now comes earlier, so its
    row is written."""
    n = pool.shape[1]
    old = rows.shape[0]
    for j in range(new_points.shape[0]):
        p = parents[j]
        parent_row = pool[rows[p] if p < old else next_row + p - old]
        s_inv = strong_inv[via[j]]
        r = next_row + j
        for i in range(n):
            pool[r, i] = parent_row[s_inv[i]]
        gpos[level, new_points[j]] = r
