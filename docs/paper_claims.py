"""The paper's claims, recomputed: prints a reStructuredText table.

Run by the docs build (``conf.py`` writes its output to
``docs/_generated/paper_claims.rst``; no section title, the including page has
it) and imported by ``tests/test_paper_claims.py``, so the table in the docs
and the test suite check the same constructions against the same expected
numbers (docs/theory.rst sections 3 and 4; Ravanbakhsh, Schneider & Poczos, ICML
2017).

Each claim builds a layer (or a stack of two layers) and an action, and
states what the library must find: parameter count, ``|G|``, ``|Aut(Omega)|``
and whether the layer is uniquely equivariant.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import paramshare_nb as ps

# -- constructions -----------------------------------------------------------

def figure1_usual():
    """D5 on a 4x5 image as usually described: commuting generators (C_10)."""
    pix = np.arange(20).reshape(4, 5)
    shift = np.empty(20, dtype=np.int64)
    flip = np.empty(20, dtype=np.int64)
    for r in range(4):
        for c in range(5):
            shift[pix[r, c]] = pix[r, (c + 1) % 5]
            flip[pix[r, c]] = pix[3 - r, c]
    out_shift = (np.arange(5) + 1) % 5
    return ps.Action([shift, flip], [out_shift, np.arange(5)])


def figure1_d5():
    """A genuine D5 reading: rows 0-1 rotate right, rows 2-3 left; flip rows; pentagon outputs."""
    pix = np.arange(20).reshape(4, 5)
    rot = np.empty(20, dtype=np.int64)
    ref = np.empty(20, dtype=np.int64)
    for r in range(4):
        step = 1 if r < 2 else -1
        for c in range(5):
            rot[pix[r, c]] = pix[r, (c + step) % 5]
            ref[pix[r, c]] = pix[3 - r, c]
    out_rot = (np.arange(5) + 1) % 5
    out_ref = (-np.arange(5)) % 5  # a reflection of the pentagon: c -> -c
    return ps.Action([rot, ref], [out_rot, out_ref])


def regular_d5():
    return ps.Action.same(ps.regular(ps.groups.dihedral(5)))


def drop_identity_offset(pattern):
    """The sparse design without its identity-offset parameter (id 0), renumbered."""
    keep = pattern.params != 0
    return ps.Pattern(pattern.shape, pattern.rows[keep], pattern.cols[keep],
                      pattern.params[keep] - 1, n_params=pattern.n_params - 1)


def _quiet_sparse(act):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ps.sparse_pattern(act)


def cycle_graph(n):
    a = np.zeros((n, n), dtype=np.int64)
    i = np.arange(n)
    a[i, (i + 1) % n] = a[(i + 1) % n, i] = 1
    return a


def path_graph(n):
    a = np.zeros((n, n), dtype=np.int64)
    i = np.arange(n - 1)
    a[i, i + 1] = a[i + 1, i] = 1
    return a


def complete_graph(n):
    return np.ones((n, n), dtype=np.int64) - np.eye(n, dtype=np.int64)


def petersen_graph():
    a = np.zeros((10, 10), dtype=np.int64)
    for i in range(5):
        for u, v in ((i, (i + 1) % 5), (i, i + 5), (5 + i, 5 + (i + 2) % 5)):
            a[u, v] = a[v, u] = 1
    return a


def frucht_graph():
    """The Frucht graph (12 vertices, cubic, no symmetry but the identity), from LCF notation."""
    lcf = [-5, -2, -4, 2, 5, -2, 2, 5, -2, -5, 4, 2]
    a = cycle_graph(12)
    for i, k in enumerate(lcf):
        j = (i + k) % 12
        a[i, j] = a[j, i] = 1
    return a


# -- the table -----------------------------------------------------------------

@dataclass
class Claim:
    """One claim: a construction and the numbers the paper (docs/theory.rst) states."""

    name: str
    build: Callable  # -> (list of patterns, list of actions or None)
    n_params: int | None  # first layer's parameter count
    group_order: int | None
    symmetry_order: int
    unique: bool | None

    def compute(self):
        """Recompute: returns ``(n_params, group_order, symmetry_order, unique, result)``."""
        pats, acts = self.build()
        if acts is None:
            sym = ps.symmetry_group_layers(pats)
            return pats[0].n_params, None, sym.order, None, sym
        if len(pats) == 1:
            res = ps.is_uniquely_equivariant(pats[0], acts[0])
        else:
            res = ps.is_uniquely_equivariant_layers(pats, acts)
        return pats[0].n_params, res.group_order, res.symmetry_order, res.unique, res


def _one(pattern_fn, act_fn):
    def build():
        act = act_fn()
        return [pattern_fn(act)], [act]
    return build


def _lifted(act_fn):
    def build():
        a1, a2 = ps.lift(act_fn())
        return [ps.dense_pattern(a1), ps.dense_pattern(a2)], [a1, a2]
    return build


def _graph(adj_fn):
    def build():
        return [ps.graph_convolution_pattern(adj_fn())], None
    return build


def _deep_sets(n):
    return _one(ps.dense_pattern, lambda: ps.Action.same(ps.groups.symmetric(n)))


A4 = lambda: ps.Action.same(ps.groups.alternating(4))  # noqa: E731
C5_INV = lambda: ps.Action.invariant(ps.groups.cyclic(5))  # noqa: E731

CLAIMS = [
    Claim("Deep Sets, S_6 on 6 points (dense)", _deep_sets(6), 2, 720, 720, True),
    Claim("A_4 on 4 points (dense)", _one(ps.dense_pattern, A4), 2, 12, 24, False),
    Claim("A_4 through a regular hidden layer, 4 -> 12 -> 4", _lifted(A4), 4, 12, 12, True),
    Claim("C_5 invariance in one layer, 5 -> 1", _one(ps.dense_pattern, C5_INV), 1, 5, 120,
          False),
    Claim("C_5 invariance through a regular hidden layer, 5 -> 5 -> 1", _lifted(C5_INV), 5, 5,
          5, True),
    Claim("regular D5, dense", _one(ps.dense_pattern, regular_d5), 10, 10, 10, True),
    Claim("regular D5, sparse (Cayley)", _one(_quiet_sparse, regular_d5), 3, 10, 10, True),
    Claim("regular D5, sparse without the identity offset",
          _one(lambda a: drop_identity_offset(_quiet_sparse(a)), regular_d5), 2, 10, 3840,
          False),
    Claim("Figure 1, usual reading (commuting generators), dense",
          _one(ps.dense_pattern, figure1_usual), 10, 10, 5 * 2**10, False),
    Claim("Figure 1, genuine D5 reading, dense", _one(ps.dense_pattern, figure1_d5), 10, 10, 10,
          True),
    Claim("graph convolution aI + bA, Petersen graph", _graph(petersen_graph), 2, None, 120,
          None),
    Claim("graph convolution aI + bA, 6-cycle", _graph(lambda: cycle_graph(6)), 2, None, 12,
          None),
    Claim("graph convolution aI + bA, path on 4 vertices", _graph(lambda: path_graph(4)), 2,
          None, 2, None),
    Claim("graph convolution aI + bA, K4", _graph(lambda: complete_graph(4)), 2, None, 24, None),
    Claim("graph convolution aI + bA, Frucht graph", _graph(frucht_graph), 2, None, 1, None),
    Claim("dense design for Aut(Petersen)",
          lambda: ([ps.graph_convolution_pattern(petersen_graph(), design="dense")], None),
          3, None, 120, None),
]


def _fmt(v):
    if v is None:
        return "--"
    if isinstance(v, bool):
        return "unique" if v else "not unique"
    return str(v) if v < 10**9 else f"{float(v):.4g}"


def table_rst() -> str:
    """The claims as a reStructuredText list-table, recomputed now."""
    lines = [
        ".. list-table:: The paper's claims, recomputed by paramshare_nb",
        "   :header-rows: 1",
        "",
        "   * - layer",
        "     - parameters",
        "     - :math:`|G|`",
        "     - :math:`|\\mathrm{Aut}(\\Omega)|`",
        "     - expected",
        "     - uniquely equivariant",
        "     - check",
    ]
    for claim in CLAIMS:
        n_params, g, aut, unique, _ = claim.compute()
        ok = (n_params == claim.n_params and g == claim.group_order
              and aut == claim.symmetry_order and unique == claim.unique)
        lines += [
            f"   * - {claim.name}",
            f"     - {n_params}",
            f"     - {_fmt(g)}",
            f"     - {_fmt(aut)}",
            f"     - {_fmt(claim.symmetry_order)}",
            f"     - {_fmt(unique)}",
            f"     - {'ok' if ok else 'MISMATCH'}",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    print("Every number below is recomputed when the documentation is built: exact")
    print(":math:`\\mathrm{Aut}(\\Omega)` from :func:`paramshare_nb.symmetry_group`,")
    print(":math:`|G|` from a stabilizer chain.  Graph convolutions list the order of the")
    print("symmetry group of :math:`W = aI + bA`, which is the graph's automorphism group.")
    print(f"The Deep Sets row uses n = 6 (order n! = {math.factorial(6)}).")
    print()
    print(table_rst())
    return 0


if __name__ == "__main__":
    sys.exit(main())
