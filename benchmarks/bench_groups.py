"""asv suite for the group layer: pair orbits, closure, order.

Kernels compile in ``setup`` so timings exclude JIT time.  The scipy peer
(connected components over the same pair graph) lives in the same class so
that a ratio comes from one run.
"""

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

import paramshare_nb as ps
from paramshare_nb._bench import peak_bytes
from paramshare_nb._kernels.groups_cpu import _pair_orbits

# n points of D_n: n**2 pairs
PAIR_SIZES = {"1e4": 100, "1e6": 1000, "1e7": 3163}


def _pair_graph(gens):
    """Edges (pair, image of pair) of the diagonal action, as a scipy sparse graph."""
    n = gens.shape[1]
    src = np.arange(n * n)
    m, k = np.divmod(src, n)
    dst = np.concatenate([g[m] * n + g[k] for g in gens])
    src = np.tile(src, len(gens))
    return sp.coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n * n, n * n))


class PairOrbits:
    params = list(PAIR_SIZES)
    param_names = ["pairs"]
    timeout = 300

    def setup(self, pairs):
        self.gens = ps.groups.dihedral(PAIR_SIZES[pairs])
        self.act = ps.Action.same(self.gens)
        small = ps.groups.dihedral(3)
        _pair_orbits(small, small)  # compile outside the timing

    def time_pair_orbits(self, pairs):
        _pair_orbits(self.gens, self.gens)

    def time_dense_pattern(self, pairs):
        # the design is kept on its action: time building it, not the lookup (D_100 took
        # 0.3 ms to build and 2 us to find, and asv calls a fast benchmark many times)
        self.act.__dict__.pop("_paramshare_patterns", None)
        ps.dense_pattern(self.act)

    def track_dense_pattern_peak_bytes(self, pairs):
        self.act.__dict__.pop("_paramshare_patterns", None)
        return peak_bytes(lambda: ps.dense_pattern(self.act))  # not setup's RSS

    track_dense_pattern_peak_bytes.unit = "bytes"


class PairOrbitsScipyPeer:
    """The same pair orbits as connected components of the pair graph (scipy)."""

    params = ["1e4", "1e6"]  # the 1e7 graph alone takes several GiB
    param_names = ["pairs"]
    timeout = 300

    def setup(self, pairs):
        self.graph = _pair_graph(ps.groups.dihedral(PAIR_SIZES[pairs])).tocsr()

    def time_scipy_connected_components(self, pairs):
        connected_components(self.graph, directed=True, connection="weak")


class GroupOrder:
    params = ["rubik", "S30", "A12", "square64"]
    param_names = ["group"]

    def setup(self, group):
        if group == "rubik":
            self.gens = ps.groups.rubik_cube()
        elif group == "S30":
            self.gens = ps.groups.symmetric(30)
        elif group == "A12":
            self.gens = ps.groups.alternating(12)
        else:
            self.gens = ps.groups.square_symmetries(64)
        ps.order(self.gens)  # compiled outside the timing (the first call: 180-230 ms)
        ps.groups._CHAINS.clear()  # time the chain, not the memo

    def time_order(self, group):
        ps.groups._CHAINS.clear()
        ps.order(self.gens)


class Closure:
    params = ["S8", "regular_D50", "grid_16x16"]
    param_names = ["group"]

    def setup(self, group):
        self.gens = {"S8": ps.groups.symmetric(8),
                     "regular_D50": ps.regular(ps.groups.dihedral(50)),  # on its 100 elements
                     "grid_16x16": ps.groups.grid_translations((16, 16))}[group]
        ps.closure(self.gens)  # compiled outside the timing, on these sizes

    def time_closure(self, group):
        ps.closure(self.gens)
