"""Jitted inner loops of the symmetry search: colour refinement and checks.

Private: :mod:`paramshare_nb.symmetry` validates inputs and drives the
search tree; these kernels only see plain C-contiguous int64 arrays.

The graph is a coloured directed multigraph on ``V`` vertices, given twice
in CSR form: out-edges (``optr``, ``oadj``, ``ow``) and in-edges (``iptr``,
``iadj``, ``iw``).  ``ow[e]`` / ``iw[e]`` are 64-bit weights, one per edge
colour and direction (a hash of the colour), so that the sum of the weights
of a vertex's edges into a cell is a hash of the multiset of their colours.

An *ordered partition* of the vertices is four arrays:

``lab``
    The vertices, cell after cell.
``pos``
    Inverse of ``lab``: ``lab[pos[v]] == v``.
``cell``
    ``cell[v]`` is the start (a position in ``lab``) of ``v``'s cell.
``csize``
    ``csize[s]`` is the size of the cell starting at ``s`` (valid at starts).

Every choice the kernels make depends only on positions of cells and on the
hash values, never on vertex labels, so refinement commutes with relabelling
the graph: that is what makes the search tree's pruning sound.  Hash
collisions can only leave a partition coarser than equitable (still
relabelling-invariant); they never make a result wrong, because leaves are
discrete partitions and every automorphism is verified exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# numba's on-disk cache keys a kernel on its own file: after editing _find or _link,
# clear this module's __pycache__ too, or the orbit kernels keep the old ones
from .groups_cpu import _find, _link

_MULT = 1099511628211  # FNV prime: trace mixing (int64 arithmetic wraps)


@njit(cache=True, nogil=True)
def _mix(h, x):
    h = (h ^ x) * _MULT
    return h ^ (h >> 29)


@njit(cache=True, nogil=True)
def _merge_sort(keys, items, n, kbuf, ibuf):
    """Stable sort of ``items[:n]`` by ``keys[:n]``, both permuted in place.

    Insertion sort on runs of 16, then bottom-up merging through the
    buffers.  Written out (rather than ``np.argsort``) because numba's sorts
    take seconds to compile each time a kernel uses them.
    """
    run = 16
    for lo in range(0, n, run):
        hi = min(lo + run, n)
        for i in range(lo + 1, hi):
            k = keys[i]
            it = items[i]
            j = i - 1
            while j >= lo and keys[j] > k:
                keys[j + 1] = keys[j]
                items[j + 1] = items[j]
                j -= 1
            keys[j + 1] = k
            items[j + 1] = it
    src_k, src_i, dst_k, dst_i = keys, items, kbuf, ibuf
    flipped = False
    width = run
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                if src_k[j] < src_k[i]:
                    dst_k[o] = src_k[j]
                    dst_i[o] = src_i[j]
                    j += 1
                else:
                    dst_k[o] = src_k[i]
                    dst_i[o] = src_i[i]
                    i += 1
                o += 1
            while i < mid:
                dst_k[o] = src_k[i]
                dst_i[o] = src_i[i]
                i += 1
                o += 1
            while j < hi:
                dst_k[o] = src_k[j]
                dst_i[o] = src_i[j]
                j += 1
                o += 1
        src_k, src_i, dst_k, dst_i = dst_k, dst_i, src_k, src_i
        flipped = not flipped
        width *= 2
    if flipped:
        for i in range(n):
            keys[i] = kbuf[i]
            items[i] = ibuf[i]


@njit(cache=True, nogil=True)
def _refine(lab, pos, cell, csize, ncells, queue_init, n_init,
            optr, oadj, ow, iptr, iadj, iw):
    """Refine the ordered partition in place to an equitable one.

    Splitter cells are taken from a FIFO queue (first ``n_init`` entries of
    ``queue_init``).  For a splitter ``W`` each vertex ``u`` gets
    ``val[u] = sum of weights of the edges between u and W`` (in and out
    separately weighted); every cell that some edge touches is sorted by
    ``val`` and split into fragments of equal value, in increasing value
    order.  Fragments join the queue by Hopcroft's rule (all of them when the
    cell was queued, otherwise all but the first largest).

    Returns
    -------
    ncells : int
        Number of cells afterwards.
    trace : int
        A hash of every split made: equal for isomorphic inputs.
    """
    nv = lab.shape[0]
    inq = np.zeros(nv, dtype=np.bool_)
    queue = np.empty(max(nv, 1), dtype=np.int64)
    head = 0
    qn = 0
    for j in range(n_init):
        s = queue_init[j]
        if not inq[s]:
            queue[(head + qn) % nv] = s
            qn += 1
            inq[s] = True
    val = np.zeros(nv, dtype=np.int64)
    hit = np.zeros(nv, dtype=np.bool_)
    touched = np.empty(nv, dtype=np.int64)
    cmark = np.zeros(nv, dtype=np.bool_)
    tcells = np.empty(nv, dtype=np.int64)
    keys = np.empty(nv, dtype=np.int64)
    items = np.empty(nv, dtype=np.int64)
    kbuf = np.empty(nv, dtype=np.int64)
    ibuf = np.empty(nv, dtype=np.int64)
    trace = np.int64(ncells) * _MULT
    while qn > 0 and ncells < nv:
        s = queue[head]
        head = (head + 1) % nv
        qn -= 1
        inq[s] = False
        nt = 0
        for i in range(s, s + csize[s]):
            w = lab[i]
            for e in range(optr[w], optr[w + 1]):
                u = oadj[e]
                if not hit[u]:
                    hit[u] = True
                    touched[nt] = u
                    nt += 1
                val[u] += ow[e]
            for e in range(iptr[w], iptr[w + 1]):
                u = iadj[e]
                if not hit[u]:
                    hit[u] = True
                    touched[nt] = u
                    nt += 1
                val[u] += iw[e]
        nc = 0
        for t in range(nt):
            c = cell[touched[t]]
            if csize[c] > 1 and not cmark[c]:
                cmark[c] = True
                tcells[nc] = c
                nc += 1
        for ci in range(nc):
            items[ci] = tcells[ci]
        _merge_sort(tcells, items, nc, kbuf, ibuf)  # canonical order: by position
        trace = _mix(trace, s)
        for ci in range(nc):
            c = tcells[ci]
            cmark[c] = False
            k = csize[c]
            lo = val[lab[c]]
            hi = lo
            for i in range(c, c + k):
                kv = val[lab[i]]
                keys[i - c] = kv
                items[i - c] = lab[i]
                if kv < lo:
                    lo = kv
                if kv > hi:
                    hi = kv
            if lo == hi:
                trace = _mix(_mix(trace, c), lo)
                continue
            _merge_sort(keys, items, k, kbuf, ibuf)
            for i in range(k):
                v = items[i]
                lab[c + i] = v
                pos[v] = c + i
            # fragments: runs of equal value, in increasing value order
            in_queue = inq[c]
            big_start = c
            big_size = 0
            start = c
            nfrag = 0
            trace = _mix(trace, c)
            for i in range(1, k + 1):
                if i == k or keys[i] != keys[i - 1]:
                    size = c + i - start
                    csize[start] = size
                    if start != c:
                        for j in range(start, c + i):
                            cell[lab[j]] = start
                    trace = _mix(_mix(trace, size), keys[i - 1])
                    if size > big_size:
                        big_size = size
                        big_start = start
                    nfrag += 1
                    start = c + i
            ncells += nfrag - 1
            # Hopcroft: queue every fragment, or all but the first largest one
            start = c
            while start < c + k:
                size = csize[start]
                if in_queue:
                    push = start != c
                else:
                    push = start != big_start
                if push and not inq[start]:
                    queue[(head + qn) % nv] = start
                    qn += 1
                    inq[start] = True
                start += size
        for t in range(nt):
            u = touched[t]
            val[u] = 0
            hit[u] = False
    return ncells, trace


@njit(cache=True, nogil=True)
def _first_nonsingleton(csize, nv):
    """Start of the first cell with more than one vertex, or -1 (discrete)."""
    i = 0
    while i < nv:
        if csize[i] > 1:
            return i
        i += csize[i]
    return -1


@njit(cache=True, nogil=True)
def _initial(colors, optr, oadj, ow, iptr, iadj, iw, lab, pos, cell, csize):
    """Unit partition split by vertex colour (increasing), then refined.

    Returns ``(ncells, trace, target)``; ``target`` is the first
    non-singleton cell (``-1`` when discrete).
    """
    nv = colors.shape[0]
    order = np.arange(nv)
    ckeys = colors.copy()
    _merge_sort(ckeys, order, nv, np.empty(nv, dtype=np.int64), np.empty(nv, dtype=np.int64))
    queue = np.empty(max(nv, 1), dtype=np.int64)
    nq = 0
    ncells = 0
    trace = np.int64(0)
    start = 0
    for i in range(nv):
        v = order[i]
        lab[i] = v
        pos[v] = i
    for i in range(1, nv + 1):
        if i == nv or colors[order[i]] != colors[order[i - 1]]:
            csize[start] = i - start
            for j in range(start, i):
                cell[lab[j]] = start
            queue[nq] = start
            nq += 1
            ncells += 1
            trace = _mix(_mix(trace, i - start), colors[order[i - 1]])
            start = i
    nc, tr = _refine(lab, pos, cell, csize, np.int64(ncells), queue, np.int64(nq), optr, oadj, ow,
                     iptr, iadj, iw)
    return nc, _mix(trace, tr), _first_nonsingleton(csize, nv)


@njit(cache=True, nogil=True)
def _child(src_lab, src_pos, src_cell, src_csize, lab, pos, cell, csize, ncells, v,
           optr, oadj, ow, iptr, iadj, iw):
    """Copy a partition, individualise vertex ``v`` and refine.

    ``v`` moves to the front of its cell and becomes a singleton cell, which
    is the only initial splitter.  Returns ``(ncells, trace, target)`` like
    :func:`_initial`.
    """
    nv = src_lab.shape[0]
    for i in range(nv):
        lab[i] = src_lab[i]
        pos[i] = src_pos[i]
        cell[i] = src_cell[i]
        csize[i] = src_csize[i]
    s = cell[v]
    k = csize[s]
    p = pos[v]
    u = lab[s]
    lab[s] = v
    pos[v] = s
    lab[p] = u
    pos[u] = p
    csize[s] = 1
    csize[s + 1] = k - 1
    for i in range(s + 1, s + k):
        cell[lab[i]] = s + 1
    queue = np.empty(1, dtype=np.int64)
    queue[0] = s
    nc, tr = _refine(lab, pos, cell, csize, np.int64(ncells + 1), queue, np.int64(1), optr, oadj,
                     ow, iptr, iadj, iw)
    return nc, _mix(tr, s), _first_nonsingleton(csize, nv)


@njit(cache=True, nogil=True)
def _is_automorphism(gamma, colors, optr, oadj, okey, ncol):
    """Exact check that ``gamma`` preserves vertex colours and the edge multiset.

    ``okey[e] = oadj[e] * ncol + colour[e]`` sorted within each row (the
    out-edges of a vertex).  For every vertex ``u`` the images
    ``(gamma[v], colour)`` of its out-edges must be, as a multiset, the
    out-edges of ``gamma[u]``; as ``gamma`` is a bijection this preserves
    the whole coloured edge multiset.
    """
    nv = gamma.shape[0]
    m = max(okey.shape[0], 1)
    buf = np.empty(m, dtype=np.int64)
    items = np.empty(m, dtype=np.int64)
    kbuf = np.empty(m, dtype=np.int64)
    ibuf = np.empty(m, dtype=np.int64)
    for u in range(nv):
        g = gamma[u]
        if colors[g] != colors[u]:
            return False
        d = optr[u + 1] - optr[u]
        if optr[g + 1] - optr[g] != d:
            return False
        for j in range(d):
            e = optr[u] + j
            buf[j] = gamma[oadj[e]] * ncol + okey[e] % ncol
        _merge_sort(buf, items, d, kbuf, ibuf)
        base = optr[g]
        for j in range(d):
            if buf[j] != okey[base + j]:
                return False
    return True


@njit(cache=True, nogil=True)
def _is_automorphism_simple(gamma, colors, optr, oadj, ocol):
    """:func:`_is_automorphism` for a graph without parallel edges (no two edges from one
    vertex to another), in one pass over the edges and no sorting.

    ``ocol[e]`` is edge ``e``'s colour.  Each vertex ``g = gamma[u]`` stamps
    its out-neighbours with ``u`` and the edge's colour; ``u``'s out-edges,
    mapped by ``gamma``, must land on exactly those stamps (as many, distinct
    since ``gamma`` is a bijection).
    Deep Sets on 512 points (262,144 edges): 1.3 against 6.1 ms a check (one run).
    """
    nv = gamma.shape[0]
    stamp = np.full(nv, -1, dtype=np.int64)
    mark = np.empty(nv, dtype=np.int64)
    for u in range(nv):
        g = gamma[u]
        if colors[g] != colors[u] or optr[g + 1] - optr[g] != optr[u + 1] - optr[u]:
            return False
        for e in range(optr[g], optr[g + 1]):
            stamp[oadj[e]] = u
            mark[oadj[e]] = ocol[e]
        for e in range(optr[u], optr[u + 1]):
            v = gamma[oadj[e]]
            if stamp[v] != u or mark[v] != ocol[e]:
                return False
    return True


@njit(cache=True, nogil=True)
def _is_permutation(g, n):
    """Whether ``g`` holds each of ``0 .. n - 1`` exactly once."""
    if g.size != n:
        return False
    seen = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        v = g[i]
        if v < 0 or v >= n or seen[v]:
            return False
        seen[v] = True
    return True


@njit(cache=True, nogil=True)
def _edges_land_on_their_own(index, rows, cols, params, g_in, g_out):
    """Whether every edge ``(r, c, p)`` moved to ``(g_out[r], g_in[c])`` finds ``p`` there in
    ``index`` (``W``'s parameter ids, ``-1`` for zeros): the pattern check of a pattern
    without multi-edges, one pass: 0.8 ms for Deep Sets' 262,144 edges, against 2.6
    for numpy's 2-D gather and 12.1 for sorting the edge keys (one run).

    Exact only for bijections (the moved edges are then distinct, as many as the
    edges): ``g_in`` and ``g_out`` are checked to be permutations of ``index``'s
    columns and rows first, so that this check also catches a search that went wrong.
    """
    if not (_is_permutation(g_in, index.shape[1]) and _is_permutation(g_out, index.shape[0])):
        return False
    for e in range(rows.size):
        if index[g_out[rows[e]], g_in[cols[e]]] != params[e]:
            return False
    return True


@njit(cache=True, nogil=True)
def _orbit_labels_fixing(gens, fixed, nfixed):
    """Union-find orbits of the generators that fix ``fixed[:nfixed]`` pointwise.

    Returns labels in ``0..V-1`` numbered by smallest point (canonical).
    """
    parent = np.arange(gens.shape[1])
    for g in range(gens.shape[0]):
        ok = True
        for j in range(nfixed):
            if gens[g, fixed[j]] != fixed[j]:
                ok = False
                break
        if ok:
            _union_orbits(parent, gens[g])
    return _orbit_labels(parent)


@njit(cache=True, nogil=True)
def _add_generator(parent, gen):
    """Join the orbits of union-find ``parent`` by ``gen``'s; the labels of the result.

    The search keeps the orbits of all its generators this way, one generator
    at a time: recomputing them from every generator at each one made it
    quadratic (``explain`` on the invariant layer of C_800: 1,600 generators over its two
    designs' searches, 3.2 s of its 8).
    """
    _union_orbits(parent, gen)
    return _orbit_labels(parent)


@njit(cache=True, nogil=True)
def _union_orbits(parent, gen):
    """Union-find ``parent``: join each point's set with its image's; roots are smallest."""
    for i in range(parent.size):
        _link(parent, i, gen[i])


@njit(cache=True, nogil=True)
def _orbit_labels(parent):
    """Each point's root in union-find ``parent`` (its smallest point)."""
    labels = np.empty(parent.size, dtype=np.int64)
    for i in range(parent.size):
        labels[i] = _find(parent, i)
    return labels
