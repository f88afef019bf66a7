"""The symmetry search's engine: generators and order of the automorphism group of a
vertex- and edge-coloured directed multigraph.

Below the groups layer, so that :func:`~paramshare_nb.groups.graph_automorphisms`
and :mod:`paramshare_nb.symmetry` (a tying pattern as a graph) share it.
The method is the individualisation-refinement of nauty and Traces, written
afresh here:

1. **Colour refinement.**  Starting from the partition ``{N, M}`` (or the
   vertex colours of a graph), cells are split until the partition is
   equitable: every vertex of a cell has the same multiset of edge colours
   into every cell.  Splitters come from a queue (Hopcroft's rule), so a
   refinement costs about the number of edges it looks at
   (:mod:`paramshare_nb._kernels.refine_cpu`).
2. **Search tree.**  A node individualises one vertex of the first
   non-singleton cell and refines again; leaves are discrete partitions,
   i.e. orderings of the vertices.  The first leaf ``zeta`` is kept; another
   leaf ``lambda`` gives the candidate ``gamma = lambda o zeta^-1``, an
   automorphism exactly when it maps every coloured edge onto one.
3. **Pruning.**  Nodes whose refinement trace differs from the first path's
   node at the same depth cannot hold a leaf equivalent to ``zeta``; children
   in one orbit of the automorphisms found so far that fix the node's
   individualised vertices have equivalent subtrees, and only one is
   explored.  The first path is processed bottom-up, so at level ``l`` every
   automorphism found fixes the first ``l`` base points.  At an inner node
   whose trace matches, the position-by-position map from the first path's
   node is tried first: when it is an automorphism (checked exactly) it is
   as good as a leaf, and symmetric structures such as Deep Sets need no
   descent at all.
4. **Order.**  The first path's vertices are a base and the automorphisms
   found a strong generating set for it: ``|Aut|`` is the product over
   levels of the orbit of the base point under the generators found at or
   below that level -- the orbit lengths of a stabilizer chain, exact,
   without sampling.  (:mod:`paramshare_nb.symmetry` re-derives it by
   Schreier-Sims from the generators, as a cross-check, when they are few.)

A search that would visit more nodes than ``config.search_nodes`` stops with
:class:`SearchBudgetError`, and one whose graph or first path would pass
``config.max_bytes`` with a ``MemoryError`` before allocating them: never a
wrong order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import config
from ._kernels.refine_cpu import (
    _add_generator,
    _child,
    _initial,
    _is_automorphism,
    _is_automorphism_simple,
    _orbit_labels_fixing,
)
from ._validate import INDEX, as_int_array, bytes_text

__all__ = ["SearchBudgetError"]


class SearchBudgetError(RuntimeError):
    """The symmetry search needed more nodes than ``config.search_nodes`` allows."""


# ---------------------------------------------------------------------------
# the coloured graph the engine works on
# ---------------------------------------------------------------------------

def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x.view(np.int64)


class _Graph:
    """A vertex-coloured, edge-coloured directed multigraph in CSR form (internal)."""

    def __init__(self, nv: int, src, dst, col, colors):
        self.nv = int(nv)
        src = np.asarray(src, dtype=INDEX)
        dst = np.asarray(dst, dtype=INDEX)
        col = np.asarray(col, dtype=INDEX)
        if col.size and (col.min() < 0 or col.max() >= max(4 * col.size, 1024)):
            _, col = np.unique(col, return_inverse=True)  # sparse or negative ids: compact
            col = col.astype(INDEX).ravel()
        self.ncol = int(col.max()) + 1 if col.size else 1
        _, colors = np.unique(np.asarray(colors, dtype=INDEX), return_inverse=True)
        self.colors = np.ascontiguousarray(colors.astype(INDEX).ravel())
        w_out = _splitmix(2 * np.arange(self.ncol, dtype=INDEX) + 1)
        w_in = _splitmix(2 * np.arange(self.ncol, dtype=INDEX) + 2)
        self.optr, self.oadj, self.ow, c = self._side(src, dst, col, w_out)
        self.okey = self.oadj * self.ncol + c
        self.iptr, self.iadj, self.iw, _ = self._side(dst, src, col, w_in)

    def _side(self, first, second, col, weights):
        """The edges grouped by ``first`` (CSR): row pointers, the ``second`` ends, the
        colours' ``weights``, and the colours."""
        order = self._edge_order(first, second, col)
        c = col[order]
        ptr = np.zeros(self.nv + 1, dtype=INDEX)
        np.cumsum(np.bincount(first, minlength=self.nv), out=ptr[1:])
        return ptr, second[order], weights[c], c

    def _edge_order(self, first, second, col):
        """Permutation sorting edges by ``(first, second, col)``; identity when already sorted."""
        if first.size == 0:
            return np.zeros(0, dtype=INDEX)
        if self.nv * self.nv * self.ncol < 2**62:
            key = (first * self.nv + second) * self.ncol + col
            if bool(np.all(key[1:] >= key[:-1])):
                return np.arange(key.size, dtype=INDEX)
            return np.argsort(key, kind="stable")
        return np.lexsort((col, second, first))

    @property
    def nbytes(self) -> int:
        """Bytes the graph holds, counting the edge colours that :attr:`ocol` caches."""
        arrays = (self.colors, self.optr, self.oadj, self.ow, self.okey, self.iptr, self.iadj,
                  self.iw)
        return sum(a.nbytes for a in arrays) + self.okey.nbytes

    @property
    def csr(self):
        return self.optr, self.oadj, self.ow, self.iptr, self.iadj, self.iw

    @cached_property
    def simple(self) -> bool:
        """No two edges from one vertex to another (``oadj`` is sorted within each row)."""
        same = self.oadj[1:] == self.oadj[:-1]
        starts = self.optr[1:-1]
        same[starts[(starts > 0) & (starts < self.oadj.size)] - 1] = False  # across two rows
        return not bool(same.any())

    @cached_property
    def ocol(self):
        """Each out-edge's colour (``okey % ncol``, divided once, not at every check)."""
        return self.okey % self.ncol

    def is_automorphism(self, gamma: np.ndarray) -> bool:
        if self.simple:
            return bool(_is_automorphism_simple(gamma, self.colors, self.optr, self.oadj,
                                                self.ocol))
        return bool(_is_automorphism(gamma, self.colors, self.optr, self.oadj, self.okey,
                                     self.ncol))


@dataclass
class _SearchResult:
    generators: np.ndarray
    order: int
    base: list
    nodes: int


def _new_partition(nv):
    return tuple(np.empty(nv, dtype=INDEX) for _ in range(4))


def _search(g: _Graph, budget: int) -> _SearchResult:
    """Individualisation-refinement search: generators and order of Aut(g)."""
    nv = g.nv
    csr = g.csr
    if nv == 0:
        return _SearchResult(np.zeros((0, 0), dtype=INDEX), 1, [], 0)
    root = _new_partition(nv)
    nc, tr, tgt = _initial(g.colors, *csr, *root)
    nodes = 1
    fp = [root]
    fp_nc, fp_tr, fp_tgt, fp_v = [nc], [tr], [tgt], []
    while tgt >= 0:
        _check_path_memory(len(fp) + 1, nv, g.nbytes)
        v = int(fp[-1][0][tgt])
        nxt = _new_partition(nv)
        nc, tr, tgt = _child(*fp[-1], *nxt, fp_nc[-1], v, *csr)
        nodes += 1
        _check_budget(nodes, budget)
        fp.append(nxt)
        fp_v.append(v)
        fp_nc.append(nc)
        fp_tr.append(tr)
        fp_tgt.append(tgt)
    depth = len(fp_v)
    zeta = fp[depth][0]
    gens: list[np.ndarray] = []
    gens_arr = np.zeros((0, nv), dtype=INDEX)  # gens stacked: built again only when read
    orbits = np.arange(nv, dtype=INDEX)  # union-find of the orbits of all of gens
    labels = orbits.copy()
    work = [None] * (depth + 1)  # scratch partitions for the other subtrees

    def scratch(d):
        if work[d] is None:
            work[d] = _new_partition(nv)
        return work[d]

    def leaf_automorphism(leaf_lab):
        gamma = np.empty(nv, dtype=INDEX)
        gamma[zeta] = leaf_lab
        return gamma if g.is_automorphism(gamma) else None

    def aligned_automorphism(d, node_lab, level, w):
        # Cheap try at an inner node whose trace matches the first path's: map the first
        # path's node at depth d onto this one position by position.  When that is an
        # automorphism it fixes the first `level` base points (their singleton cells sit at
        # the same positions in both) and sends fp_v[level] to this subtree's root vertex,
        # which is all that the search needs from a leaf equivalent to zeta.
        gamma = np.empty(nv, dtype=INDEX)
        gamma[fp[d][0]] = node_lab
        prefix = fp_v[:level]
        if gamma[fp_v[level]] != w or (prefix and not np.array_equal(gamma[prefix], prefix)):
            return None
        return gamma if g.is_automorphism(gamma) else None

    def candidates(part, d, fixed):
        nonlocal gens_arr
        t = fp_tgt[d]
        members = np.sort(part[0][t:t + part[3][t]])
        fx = np.asarray(fixed, dtype=INDEX)
        if gens_arr.shape[0] < len(gens):
            gens_arr = np.array(gens, dtype=INDEX)
        fixing = _orbit_labels_fixing(gens_arr, fx, fx.size)
        _, first = np.unique(fixing[members], return_index=True)
        return members[np.sort(first)].tolist()

    def explore(level, w):
        """Search the subtree of child ``w`` of first-path node ``level`` for a leaf like zeta."""
        nonlocal nodes
        dst = scratch(level + 1)
        res = _child(*fp[level], *dst, fp_nc[level], w, *csr)
        nodes += 1
        _check_budget(nodes, budget)
        d = level + 1
        if res != (fp_nc[d], fp_tr[d], fp_tgt[d]):
            return None
        if res[2] < 0:
            return leaf_automorphism(dst[0])
        gamma = aligned_automorphism(d, dst[0], level, w)
        if gamma is not None:
            return gamma
        fixed = fp_v[:level] + [w]
        stack = [[d, candidates(dst, d, fixed), 0]]
        while stack:
            frame = stack[-1]
            d, cands, i = frame
            if i == len(cands):
                stack.pop()
                fixed.pop()
                continue
            frame[2] = i + 1
            x = cands[i]
            dst = scratch(d + 1)
            res = _child(*work[d], *dst, fp_nc[d], x, *csr)
            nodes += 1
            _check_budget(nodes, budget)
            if res != (fp_nc[d + 1], fp_tr[d + 1], fp_tgt[d + 1]):
                continue
            if res[2] < 0:
                gamma = leaf_automorphism(dst[0])
                if gamma is not None:
                    return gamma
                continue
            gamma = aligned_automorphism(d + 1, dst[0], level, w)
            if gamma is not None:
                return gamma
            fixed.append(x)
            stack.append([d + 1, candidates(dst, d + 1, fixed), 0])
        return None

    order = 1
    for level in range(depth - 1, -1, -1):
        part = fp[level]
        t = fp_tgt[level]
        members = np.sort(part[0][t:t + part[3][t]])
        v = fp_v[level]
        # every generator so far fixes the prefix: the orbits of them all are the ones here.
        # Each member in turn whose orbit holds no point done yet is explored; the skipped
        # ones are found by numpy, not one by one in Python (the invariant layer of C_1700:
        # 1.4 million skips a search)
        done = [v]
        pos = 0
        while True:
            seen = np.zeros(nv, dtype=bool)
            seen[labels[done]] = True
            fresh = np.flatnonzero(~seen[labels[members[pos:]]])
            if fresh.size == 0:
                break
            pos += int(fresh[0])
            w = int(members[pos])
            pos += 1
            gamma = explore(level, w)
            if gamma is not None:
                gens.append(gamma)
                labels = _add_generator(orbits, gamma)
                if labels[w] != labels[v]:  # gamma maps fp_v[level] to w by construction
                    raise AssertionError("internal error: an automorphism from the subtree of "
                                         f"{w} does not map {v} to it; please report this")
            else:
                done.append(w)
        order *= int(np.count_nonzero(labels == labels[v]))
    gens_arr = np.array(gens, dtype=INDEX).reshape(len(gens), nv)
    return _SearchResult(gens_arr, order, fp_v, nodes)


def _check_path_memory(depth, nv, graph_bytes=0):
    # the first path and the scratch path each keep one partition (4 int64 arrays) per level,
    # and the generators found (about one a level, in a list and stacked): 10 int64 arrays of
    # nv a level, beside the graph (Deep Sets on 512 points: 41.9 MB and a graph of 10.5)
    need = 10 * depth * nv * 8 + graph_bytes
    if need > config.max_bytes:
        with_graph = f" with its graph's {bytes_text(graph_bytes)}" if graph_bytes else ""
        raise MemoryError(
            f"the symmetry search's first path is {depth} level{'s' * (depth != 1)} deep on {nv} "
            f"points and would "
            f"need about {bytes_text(need)}{with_graph}, over config.max_bytes = "
            f"{bytes_text(config.max_bytes)}; raise it with config.override(max_bytes=...)"
        )


#: Bytes per pattern entry that building the search's graph peaks at (its sorted copies and
#: edge weights, both ways round), with a margin: tracemalloc measured 112.0-112.1 for
#: ``symmetry_group`` of dense cyclic patterns of 1 and 4.2 million entries.
_GRAPH_BYTES_PER_EDGE = 120


def _check_graph_memory(edges):
    need = _GRAPH_BYTES_PER_EDGE * edges
    if need > config.max_bytes:
        raise MemoryError(
            f"the symmetry search's graph has {edges} edges (one per pattern entry) and would "
            f"need about {bytes_text(need)}, over config.max_bytes = "
            f"{bytes_text(config.max_bytes)}; raise it with config.override(max_bytes=...)"
        )


def _check_budget(nodes, budget):
    if nodes > budget:
        raise SearchBudgetError(
            f"the symmetry search stopped after {budget} nodes of its search tree without "
            f"finishing; no result is returned rather than a possibly wrong group. Raise the "
            f"budget: max_nodes=... where the call takes it (it was given, or "
            f"config.search_nodes = {config.search_nodes} applies), "
            f"paramshare_nb.config.override(search_nodes=...) or the environment variable "
            f"PARAMSHARE_SEARCH_NODES"
        )


def _budget(max_nodes):
    if max_nodes is None:
        return int(config.search_nodes)
    if isinstance(max_nodes, (bool, np.bool_)) or not isinstance(max_nodes, (int, np.integer)):
        raise TypeError(f"max_nodes must be an int, got {type(max_nodes).__name__}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    return int(max_nodes)


def _as_adjacency(adjacency) -> np.ndarray:
    arr = np.asarray(adjacency)
    if arr.dtype == object:
        raise ValueError("adjacency is ragged or holds non-numbers; give a square integer or "
                         "boolean array")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"adjacency must be a square (n, n) matrix, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(INDEX)
    if arr.dtype.kind not in "iu":  # timedelta64 is an np.integer subtype
        if arr.size == 0:
            return arr.astype(INDEX)
        raise TypeError(f"adjacency must hold integers or booleans (edge colours, 0 for no "
                        f"edge), got dtype {arr.dtype}; convert with .astype(int) if the values "
                        f"are whole numbers")
    return np.ascontiguousarray(arr, dtype=INDEX)


def _graph_search(adjacency, colors, max_nodes=None):
    adj = _as_adjacency(adjacency)
    n = adj.shape[0]
    if colors is None:
        cols = np.zeros(n, dtype=INDEX)
    else:
        cols = as_int_array(colors, "colors", ndim=1)
        if cols.shape[0] != n:
            raise ValueError(f"colors has {cols.shape[0]} entries, the graph {n} vertices")
    src, dst = np.nonzero(adj)
    graph = _Graph(n, src, dst, adj[src, dst], cols)
    res = _search(graph, _budget(max_nodes))
    for gamma in res.generators:
        if not graph.is_automorphism(gamma):
            raise AssertionError("internal error: a found automorphism does not preserve the "
                                 "graph; please report this")
    return res, n


def _graph_automorphisms(adjacency, colors=None) -> np.ndarray:
    """Generators of ``Aut`` of a (coloured, directed) graph (engine of groups.graph_automorphisms).

    Parameters
    ----------
    adjacency : array_like of int or bool, shape (n, n)
        Entry values are edge colours, 0 for no edge; asymmetric means
        directed.  The diagonal holds loops.
    colors : array_like of int, shape (n,), optional
        Vertex colours to preserve.

    Returns
    -------
    numpy.ndarray
        ``(k, n)`` int64 generators.
    """
    res, n = _graph_search(adjacency, colors)
    return res.generators.copy()
