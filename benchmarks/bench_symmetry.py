"""asv suite for the symmetry search: Aut(Omega) of tying patterns and graphs.

Targets (THEORY/issue 4, on the development machine): dense patterns of
``D_100`` on 100 points (10^4 pairs) and ``C_200`` (4 * 10^4 pairs) under
0.1 s after compilation; Deep Sets ``n = 64`` and ``D_4`` on a 16 x 16 image
under 1 s.  Large symmetric groups (Deep Sets on 512 points, the invariant
layer of ``C_1700``: one generator per level) and ``D_4`` on 32 x 32 track
the incremental orbits and one-pass checks (1.1, 0.64 and 0.21 s in one run;
9.1, 23.2 and 0.41 s before).  Kernels compile in ``setup`` (one small
search), so timings exclude JIT time; :class:`Compile` tracks compile time
separately in a fresh process with an empty numba cache.

The peer is nauty through pynauty (optional: ``pip install pynauty``), in
the same class so a ratio comes from one run.  nauty colours vertices, not
edges, so the peer subdivides every edge with a vertex coloured by the
edge's parameter: the usual encoding, with ``N + M + nnz`` vertices.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np

import paramshare_nb as ps
from paramshare_nb._bench import peak_bytes

try:
    import pynauty
except ImportError:  # the peer is optional
    pynauty = None


def _pattern(name):
    g = ps.groups
    if name == "D100_dense":
        return ps.dense_pattern(ps.Action.same(g.dihedral(100)))
    if name == "C200_dense":
        return ps.dense_pattern(ps.Action.same(g.cyclic(200)))
    if name == "deepsets64":
        return ps.dense_pattern(ps.Action.same(g.symmetric(64)))
    if name == "deepsets512":
        return ps.dense_pattern(_action(name))
    if name == "C1700_invariant":
        return ps.dense_pattern(_action(name))
    if name == "D4_32x32":
        return ps.dense_pattern(_action(name))
    if name == "D4_16x16":
        return ps.dense_pattern(ps.Action.same(g.square_symmetries(16)))
    if name == "regularD5_sparse":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ps.sparse_pattern(ps.Action.same(ps.regular(g.dihedral(5))))
    raise ValueError(name)


def _action(name):
    g = ps.groups
    return {"deepsets512": lambda: ps.Action.same(g.symmetric(512)),
            "C1700_invariant": lambda: ps.Action.invariant(g.cyclic(1700)),
            "D4_32x32": lambda: ps.Action.same(g.square_symmetries(32))}[name]()


def _nauty_graph(pat):
    """The pattern as a vertex-coloured graph: every edge subdivided by a coloured vertex."""
    m, n = pat.shape
    e = pat.nnz
    ids = np.arange(e) + n + m
    adj = {v: [] for v in range(n + m + e)}
    for k, (r, c) in enumerate(zip(pat.cols.tolist(), (pat.rows + n).tolist())):
        adj[int(ids[k])] = [r, c]
    classes = [set(range(n)), set(range(n, n + m))]
    order = np.argsort(pat.params, kind="stable")
    bounds = np.flatnonzero(np.diff(pat.params[order])) + 1
    for chunk in np.split(ids[order], bounds):
        if chunk.size:
            classes.append(set(chunk.tolist()))
    return pynauty.Graph(n + m + e, directed=False, adjacency_dict=adj,
                         vertex_coloring=classes)


# nauty on the subdivided graph takes tens of seconds for these two and longer
# for the others (D4_16x16 has 65536 subdivision vertices): peer only where the
# issue quotes a figure
NAUTY_PEER = ("D100_dense", "C200_dense", "regularD5_sparse")


def _warm():
    ps.symmetry_group(ps.dense_pattern(ps.Action.same(ps.groups.dihedral(4))))


class SymmetryGroup:
    params = ["D100_dense", "C200_dense", "deepsets64", "D4_16x16", "regularD5_sparse",
              "deepsets512", "C1700_invariant", "D4_32x32"]
    param_names = ["pattern"]
    timeout = 300

    def setup(self, name):
        _warm()
        self.pat = _pattern(name)

    def time_symmetry_group(self, name):
        ps.symmetry_group(self.pat)

    def track_search_nodes(self, name):
        return ps.symmetry_group(self.pat).nodes

    track_search_nodes.unit = "nodes"

    def track_symmetry_group_peak_bytes(self, name):
        return peak_bytes(lambda: ps.symmetry_group(self.pat))  # not setup's RSS

    track_symmetry_group_peak_bytes.unit = "bytes"


class IsEquivariant:
    """The exact equivariance check on the generators (W's index table, one pass)."""

    params = ["deepsets512", "D4_32x32"]
    param_names = ["pattern"]

    def setup(self, name):
        _warm()
        self.act = _action(name)
        self.pat = ps.dense_pattern(self.act)
        ps.is_equivariant(self.pat, self.act)  # compiles the check

    def time_is_equivariant(self, name):
        ps.is_equivariant(self.pat, self.act)


class NautyPeer:
    """paramshare_nb against nauty (pynauty) on the same patterns, for a ratio."""

    params = list(NAUTY_PEER)
    param_names = ["pattern"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, name):
        if pynauty is None:
            raise NotImplementedError("pynauty is not installed (pip install pynauty)")
        _warm()
        self.pat = _pattern(name)
        self.nauty = _nauty_graph(self.pat)

    def time_symmetry_group(self, name):
        ps.symmetry_group(self.pat)

    def time_pynauty_autgrp(self, name):
        pynauty.autgrp(self.nauty)


def _hypercube(d):
    n = 2 ** d
    a = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for b in range(d):
            a[i, i ^ (1 << b)] = 1
    return a


def _torus(k):
    c = np.zeros((k, k), dtype=np.int64)
    i = np.arange(k)
    c[i, (i + 1) % k] = c[(i + 1) % k, i] = 1
    eye = np.eye(k, dtype=np.int64)
    return np.kron(c, eye) + np.kron(eye, c)


class GraphAutomorphisms:
    params = ["hypercube8", "torus30x30"]
    param_names = ["graph"]
    timeout = 300

    def setup(self, name):
        _warm()
        self.adj = _hypercube(8) if name == "hypercube8" else _torus(30)

    def time_graph_automorphisms(self, name):
        ps.groups.graph_automorphisms(self.adj)

    def time_graph_convolution_symmetry(self, name):
        ps.symmetry_group(ps.graph_convolution_pattern(self.adj))


class Compile:
    """First-call time of the search kernels in a fresh process with an empty cache."""

    timeout = 600
    number = 1
    repeat = 1

    def track_compile_seconds(self):
        import tempfile

        code = textwrap.dedent("""
            import time
            t = time.perf_counter()
            import paramshare_nb as ps
            ps.symmetry_group(ps.dense_pattern(ps.Action.same(ps.groups.dihedral(4))))
            print(time.perf_counter() - t)
        """)
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    track_compile_seconds.unit = "seconds"
