"""The paper's claims (THEORY.md sections 3-4), recomputed exactly.

The constructions and expected numbers live in ``docs/paper_claims.py``, so
the docs table and these tests check the same things; the extra tests below
check witnesses and the constructions themselves.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import paramshare_nb as ps

_PATH = Path(__file__).resolve().parents[1] / "docs" / "paper_claims.py"
_spec = importlib.util.spec_from_file_location("paper_claims", _PATH)
claims = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("paper_claims", claims)  # dataclasses look their module up
_spec.loader.exec_module(claims)


@pytest.mark.parametrize("claim", claims.CLAIMS, ids=lambda c: c.name)
def test_claim(claim):
    n_params, g, aut, unique, _ = claim.compute()
    assert n_params == claim.n_params
    assert g == claim.group_order
    assert aut == claim.symmetry_order
    assert unique == claim.unique


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 12])
def test_deep_sets(n):
    act = ps.Action.same(ps.groups.symmetric(n))
    pat = ps.dense_pattern(act)
    res = ps.is_uniquely_equivariant(pat, act)
    assert pat.n_params == 2
    assert res.symmetry_order == math.factorial(n) == res.group_order
    assert res.unique and res.witness is None


def test_deep_sets_64_order():
    # |G| of S_64 from the core's Schreier-Sims takes seconds; Aut alone is fast
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(64)))
    sym = ps.symmetry_group(pat)
    assert pat.n_params == 2 and sym.order == math.factorial(64)
    assert ps.is_equivariant(pat, sym.action)


def _parity(p):
    p = np.asarray(p)
    seen = np.zeros(p.size, bool)
    swaps = 0
    for i in range(p.size):
        j, length = i, 0
        while not seen[j]:
            seen[j] = True
            j = p[j]
            length += 1
        swaps += max(length - 1, 0)
    return swaps % 2


def test_a4_witness_is_an_odd_permutation():
    act = claims.A4()
    pat = ps.dense_pattern(act)
    res = ps.is_uniquely_equivariant(pat, act)
    assert (pat.n_params, res.group_order, res.symmetry_order) == (2, 12, 24)
    assert res.equivariant and not res.unique
    w_in, w_out = res.witness
    assert _parity(w_in) == 1
    assert not act.contains(w_in, w_out)
    assert ps.is_equivariant(pat, ps.Action(w_in[None], w_out[None]))


def test_c5_invariant_witness_fixes_the_output():
    act = claims.C5_INV()
    res = ps.is_uniquely_equivariant(ps.dense_pattern(act), act)
    w_in, w_out = res.witness
    assert w_out.tolist() == [0] and not act.contains(w_in, w_out)


def test_lifted_layers_have_the_group_on_every_part():
    a1, a2 = ps.lift(claims.A4())
    assert (a1.n_in, a1.n_out, a2.n_in, a2.n_out) == (4, 12, 12, 4)
    res = ps.check_lift(claims.A4())
    assert res.unique and res.symmetry_order == 12
    sym = res.symmetry
    assert sym.sizes == (4, 12, 4)
    assert sym.order_of(1) == 12  # regular on the hidden layer


def test_figure1_actions():
    usual, genuine = claims.figure1_usual(), claims.figure1_d5()
    assert usual.order() == 10 and genuine.order() == 10
    s, f = usual.gens_in
    assert np.array_equal(s[f], f[s])  # the usual reading commutes: C_10, not D5
    r, t = genuine.gens_in
    assert not np.array_equal(r[t], t[r])
    assert genuine.order_in() == 10 and genuine.order_out() == 10  # faithful on the pentagon
    # D5 on the image paired with plain shifts on the outputs: not a function of the input
    mixed = ps.Action(genuine.gens_in, [(np.arange(5) + 1) % 5, (np.arange(5) + 1) % 5])
    assert mixed.order() == 50


def test_figure1_sparse_genuine_reading_is_unique():
    """THEORY.md section 4: 4 or 6 parameters by the output base point, unique either way."""
    act = claims.figure1_d5()
    counts = set()
    for m in range(5):
        with pytest.warns(UserWarning, match="not free"):
            pat = ps.sparse_pattern(act, base_out=[m])
        counts.add(pat.n_params)
        assert ps.is_uniquely_equivariant(pat, act).unique
    assert counts == {4, 6}


def test_sparse_regular_a4_to_points_depends_on_the_base_point():
    """THEORY.md section 4: regular A_4 to 4 points: order 12 or 24 by the base point."""
    a4 = ps.groups.alternating(4)
    act = ps.Action(ps.regular(a4), a4)
    orders = {}
    for m in range(4):
        with pytest.warns(UserWarning, match="not free"):
            pat = ps.sparse_pattern(act, base_out=[m])
        assert ps.is_equivariant(pat, act)
        orders[m] = ps.is_uniquely_equivariant(pat, act).symmetry_order
    assert set(orders.values()) == {12, 24}


@pytest.mark.parametrize("name, adj_fn, order", [
    ("petersen", claims.petersen_graph, 120),
    ("6-cycle", lambda: claims.cycle_graph(6), 12),
    ("4-path", lambda: claims.path_graph(4), 2),
    ("K4", lambda: claims.complete_graph(4), 24),
    ("frucht", claims.frucht_graph, 1),
])
def test_graph_automorphism_orders(name, adj_fn, order):
    adj = adj_fn()
    assert (adj == adj.T).all() and not adj.diagonal().any()
    gens = ps.groups.graph_automorphisms(adj)
    assert ps.order(gens, n=adj.shape[0]) == order
    for g in gens:
        assert np.array_equal(adj[np.ix_(g, g)], adj)
    sym = ps.symmetry_group(ps.graph_convolution_pattern(adj))
    assert sym.order == order
    # the convolution's symmetries act diagonally: the same permutation on inputs and outputs
    assert np.array_equal(sym.gens_in, sym.gens_out)


def test_graph_sizes():
    assert claims.petersen_graph().sum() == 30 and claims.frucht_graph().sum() == 36
    assert (claims.frucht_graph().sum(axis=0) == 3).all()
