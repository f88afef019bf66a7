"""Tests of paramshare_nb.symmetry: Aut(Omega) against brute force and invariants."""

import copy
import io
import itertools
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paramshare_nb as ps
from paramshare_nb import config
from paramshare_nb.symmetry import SearchBudgetError

# -- brute-force oracle ------------------------------------------------------------

def _entry_codes(pat):
    """(M, N) int codes: one per distinct multiset of parameters, -1 for a zero."""
    m, n = pat.shape
    cells = {}
    for r, c, p in zip(pat.rows.tolist(), pat.cols.tolist(), pat.params.tolist()):
        cells.setdefault((r, c), []).append(p)
    codes = np.full((m, n), -1, dtype=np.int64)
    table = {}
    for (r, c), ps_ in cells.items():
        key = tuple(sorted(ps_))
        codes[r, c] = table.setdefault(key, len(table))
    return codes


def brute_force_aut(pat):
    """All pairs (s_in, s_out) with W[s_out[m], s_in[n]] == W[m, n]: (count, elements)."""
    m, n = pat.shape
    codes = _entry_codes(pat)
    p_out = np.array(list(itertools.permutations(range(m))), dtype=np.int64).reshape(-1, m)
    found = []
    for s_in in itertools.permutations(range(n)):
        s_in = np.array(s_in, dtype=np.int64)
        # moved[k][m, n] = W[p_out[k][m], s_in[n]] must equal W[m, n]
        moved = codes[p_out][:, :, s_in] if n else np.zeros((len(p_out), m, 0))
        ok = (moved == codes[None]).reshape(len(p_out), -1).all(axis=1)
        for k in np.flatnonzero(ok):
            found.append((s_in, p_out[k]))
    return len(found), found


def random_pattern(rng, m, n, n_params, density=0.7, multi=0.0):
    rows, cols, params = [], [], []
    for r in range(m):
        for c in range(n):
            if rng.random() < density:
                rows.append(r)
                cols.append(c)
                params.append(int(rng.integers(n_params)))
                if rng.random() < multi:
                    rows.append(r)
                    cols.append(c)
                    params.append(int(rng.integers(n_params)))
    return ps.Pattern((m, n), rows, cols, params, n_params=n_params)


def _check_against_oracle(pat):
    sym = ps.symmetry_group(pat)
    count, elems = brute_force_aut(pat)
    assert sym.order == count
    m, n = pat.shape
    for s_in, s_out in elems:
        assert sym.contains(s_in, s_out)
    # orbits agree with the oracle's
    if elems:
        ins = np.array([e[0] for e in elems]).reshape(len(elems), n)
        outs = np.array([e[1] for e in elems]).reshape(len(elems), m)
        for i in range(n):
            same = set(ins[:, i].tolist())
            assert same == set(np.flatnonzero(sym.orbits_in == sym.orbits_in[i]).tolist())
        for j in range(m):
            same = set(outs[:, j].tolist())
            assert same == set(np.flatnonzero(sym.orbits_out == sym.orbits_out[j]).tolist())
    return sym


@pytest.mark.parametrize("seed", range(12))
def test_random_patterns_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    pat = random_pattern(rng, m, n, n_params=int(rng.integers(1, 4)),
                         density=float(rng.uniform(0.3, 1.0)), multi=0.3 * (seed % 2))
    _check_against_oracle(pat)


@pytest.mark.parametrize("gens_fn", [
    lambda: ps.groups.cyclic(5), lambda: ps.groups.dihedral(5), lambda: ps.groups.dihedral(4),
    lambda: ps.groups.alternating(4), lambda: ps.groups.symmetric(4),
    lambda: ps.groups.alternating(5),
])
def test_dense_designs_match_brute_force(gens_fn):
    act = ps.Action.same(gens_fn())
    sym = _check_against_oracle(ps.dense_pattern(act))
    assert sym.order % act.order() == 0  # G <= Aut


def test_multi_edges_count():
    # entry (0, 0) holds {0, 1}, entry (1, 1) holds {0}, entry (1, 0) holds {1}: no symmetry
    # would map (0,0) to (1,1); with the multi-edge replaced both diagonals look alike
    pat = ps.Pattern((2, 2), [0, 0, 1, 1], [0, 0, 1, 0], [0, 1, 0, 1])
    assert _check_against_oracle(pat).order == 1
    same = ps.Pattern((2, 2), [0, 1], [0, 1], [0, 0])
    assert _check_against_oracle(same).order == 2
    doubled = ps.Pattern((2, 2), [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0])
    assert _check_against_oracle(doubled).order == 2
    uneven = ps.Pattern((2, 2), [0, 0, 1], [0, 0, 1], [0, 0, 0])
    assert _check_against_oracle(uneven).order == 1


def test_empty_and_edgeless_patterns():
    assert ps.symmetry_group(ps.Pattern((2, 3), [], [], [])).order == 12
    assert ps.symmetry_group(ps.Pattern((3, 0), [], [], [])).order == 6
    assert ps.symmetry_group(ps.Pattern((0, 0), [], [], [])).order == 1
    sym = ps.symmetry_group(ps.Pattern((1, 1), [0], [0], [0]))
    assert sym.order == 1 and sym.generators.shape == (0, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 4), n=st.integers(1, 5), n_params=st.integers(1, 3),
       density=st.floats(0.2, 1.0), multi=st.sampled_from([0.0, 0.4]),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_against_brute_force(m, n, n_params, density, multi, seed):
    pat = random_pattern(np.random.default_rng(seed), m, n, n_params, density, multi)
    _check_against_oracle(pat)



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 4), n=st.integers(1, 5), n_params=st.integers(1, 3),
       density=st.floats(0.2, 1.0), multi=st.sampled_from([0.0, 0.4]),
       seed=st.integers(0, 2**32 - 1))
def test_pattern_and_graph_checks_against_entry_codes(m, n, n_params, density, multi, seed):
    """The search's automorphism checks (sorting, and one pass for graphs without parallel
    edges) and the pattern-level check (index table, or sorted keys; also under a tiny
    memory bound) against the entries' parameter multisets, on symmetries (brute force)
    and random pairs."""
    from paramshare_nb._kernels.refine_cpu import _is_automorphism, _is_automorphism_simple
    from paramshare_nb.symmetry import _layers_graph, _preserver

    rng = np.random.default_rng(seed)
    pat = random_pattern(rng, m, n, n_params, density, multi)
    codes = _entry_codes(pat)
    graph, _ = _layers_graph([pat])
    assert graph.simple == (not pat.has_multi_edges)
    _, symmetries = brute_force_aut(pat)
    pairs = [symmetries[i] for i in rng.integers(len(symmetries), size=3)]
    pairs += [(rng.permutation(n), rng.permutation(m)) for _ in range(5)]
    checks = [_preserver(pat)]
    with config.override(max_bytes=8):  # no room for the index table: the sorted keys
        checks.append(_preserver(pat))
    for s_in, s_out in pairs:
        want = bool(np.array_equal(codes[np.ix_(s_out, s_in)], codes))
        gamma = np.concatenate([s_in, np.asarray(s_out) + n]).astype(np.int64)
        assert graph.is_automorphism(gamma) == want
        assert bool(_is_automorphism(gamma, graph.colors, graph.optr, graph.oadj, graph.okey,
                                     graph.ncol)) == want
        if graph.simple:
            assert bool(_is_automorphism_simple(gamma, graph.colors, graph.optr, graph.oadj,
                                                graph.ocol)) == want
        assert [check(s_in, s_out) for check in checks] == [want, want]

# -- invariants -------------------------------------------------------------------------

def _relabel(pat, pi_in, pi_out):
    return ps.Pattern(pat.shape, pi_out[pat.rows], pi_in[pat.cols], pat.params,
                      n_params=pat.n_params)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from(["d6", "a4", "fig", "rand"]))
def test_conjugate_patterns_have_conjugate_groups(seed, which):
    rng = np.random.default_rng(seed)
    if which == "rand":
        pat = random_pattern(rng, 6, 7, 3, density=0.6, multi=0.2)
    else:
        gens = {"d6": ps.groups.dihedral(6), "a4": ps.groups.alternating(4),
                "fig": ps.groups.square_symmetries(3)}[which]
        pat = ps.dense_pattern(ps.Action.same(gens))
    m, n = pat.shape
    pi_in, pi_out = rng.permutation(n), rng.permutation(m)
    sym = ps.symmetry_group(pat)
    conj = ps.symmetry_group(_relabel(pat, pi_in, pi_out))
    assert conj.order == sym.order
    inv_in, inv_out = np.argsort(pi_in), np.argsort(pi_out)
    for g_in, g_out in zip(sym.gens_in, sym.gens_out):
        # pi g pi^-1 lies in the relabelled pattern's group
        assert conj.contains(pi_in[g_in[inv_in]], pi_out[g_out[inv_out]])


@pytest.mark.parametrize("gens_fn", [
    lambda: ps.groups.dihedral(12), lambda: ps.groups.square_symmetries(4),
    lambda: ps.groups.grid_translations((3, 4)), lambda: ps.groups.symmetric(6),
])
def test_generators_preserve_the_pattern(gens_fn):
    act = ps.Action.same(gens_fn())
    pat = ps.dense_pattern(act)
    sym = ps.symmetry_group(pat)
    assert sym.generators.shape[1] == 2 * act.n_in
    assert ps.is_equivariant(pat, sym.action)
    for g_in, g_out in zip(act.gens_in, act.gens_out):
        assert sym.contains(g_in, g_out)  # G <= Aut


def test_orders_against_sympy():
    from sympy.combinatorics import Permutation, PermutationGroup

    for gens in (ps.groups.dihedral(7), ps.groups.square_symmetries(4),
                 ps.groups.alternating(5)):
        act = ps.Action.same(gens)
        sym = ps.symmetry_group(ps.dense_pattern(act))
        group = PermutationGroup([Permutation(g.tolist()) for g in sym.generators])
        assert group.order() == sym.order
        assert ps.order(sym.generators) == sym.order  # the core's Schreier-Sims agrees


def test_two_closure_of_a4_is_s4_and_c_n_is_two_closed():
    res = ps.is_uniquely_equivariant(*_dense(ps.groups.alternating(4)))
    assert (res.group_order, res.symmetry_order, res.unique) == (12, 24, False)
    for n in (3, 8, 13):
        assert ps.is_uniquely_equivariant(*_dense(ps.groups.cyclic(n))).unique
    for n in (5, 10):
        assert ps.is_uniquely_equivariant(*_dense(ps.groups.dihedral(n))).unique


def _dense(gens):
    act = ps.Action.same(gens)
    return ps.dense_pattern(act), act


def test_tensor_layers():
    # S_4 on 2-tensors: 15 parameters (Bell B(4)), Aut = S_4
    g = ps.groups.symmetric(4)
    act = ps.Action.same(ps.tensor_power(g, 2))
    pat = ps.dense_pattern(act)
    assert pat.n_params == 15
    assert ps.is_uniquely_equivariant(pat, act).unique


def test_product_action_orbits_and_projections():
    act = ps.product(ps.Action.same(ps.groups.cyclic(3)), ps.Action.same(ps.groups.cyclic(4)))
    sym = ps.symmetry_group(ps.dense_pattern(act))
    assert sym.order == 12 and sym.order_in() == 12 and sym.order_out() == 12
    assert sym.orbits_in.tolist() == [0] * 12 and sym.orbits_out.tolist() == [0] * 12
    assert sym.gens_in.shape == (sym.generators.shape[0], 12)
    assert "SymmetryGroup(order=12" in repr(sym)
    # built by hand from the search's result: the same group
    again = ps.SymmetryGroup(sym.generators, 12, sym.sizes, sym.base)
    assert again.order == 12 and again.orbits_in.tolist() == [0] * 12
    assert "chain" in again.__dict__  # the order's check built what contains() uses
    for twin in (pickle.loads(pickle.dumps(again)), copy.deepcopy(again)):
        assert not twin.generators.flags.writeable
        assert twin.order == 12 and twin.contains(again.gens_in[0], again.gens_out[0])
        with pytest.raises(ValueError, match="WRITEABLE"):
            twin.generators.setflags(write=True)
        with pytest.raises(ValueError, match="read-only"):  # cached with the group, kept so
            twin.orbits[:] = 0
    for name, value in (("order", 7), ("generators", sym.generators[:1]), ("base", ())):
        with pytest.raises(AttributeError, match="SymmetryGroup is immutable: cannot set"):
            setattr(sym, name, value)
    with pytest.raises(AttributeError, match="SymmetryGroup is immutable: cannot delete"):
        del sym.order
    assert sym.order == 12 and "SymmetryGroup(order=12" in repr(sym)


@pytest.mark.parametrize("args, exc, match", [
    (([[1.7, 0.2]], 7, (1, 1)), TypeError, "generators must hold integers"),
    (([[3, 0]], 2, (1, 1)), ValueError, r"generators\[0\] is not a permutation"),
    (([[1, 0]], 2, (1, 1)), ValueError, "move points of part 0 .* into another part"),
    (([[1, 0, 2]], 3, (2, 1)), ValueError, "order is 3, but the generators generate a group "
                                           "of order 2"),
    (([[1, 0, 2]], 2, (2, 2)), ValueError, "act on 3 points, expected 4"),
    (([[1, 0, 2]], 2, (2, 1), (3,)), ValueError, "base point=3 is out of range"),
    (([[1, 0, 2]], 2, "ab"), TypeError, "sizes must be a sequence of ints"),
    (([[1, 0, 2]], 2, (2, 1), 3), TypeError, "base must be a sequence of ints"),
    (([], 1, ()), ValueError, "sizes must name at least two parts"),
    (([[1, 0, 2]], 2.0, (2, 1)), TypeError, "order must be an int"),
])
def test_symmetry_group_checks_what_it_is_given(args, exc, match):
    """Unchecked, a generator out of range made ``.orbits`` read outside its arrays (a
    segfault) and ``order`` was taken on trust (found by review)."""
    with pytest.raises(exc, match=match):
        ps.SymmetryGroup(*args)


# -- uniqueness ------------------------------------------------------------------------

def test_not_equivariant_pattern():
    act = ps.Action.same(ps.groups.cyclic(4))
    pat = ps.Pattern.from_index(np.arange(16).reshape(4, 4))  # all parameters free
    res = ps.is_uniquely_equivariant(pat, act)
    assert not res.equivariant and not res.unique and res.symmetry_order == 1
    assert res.witness is None  # Aut is trivial: nothing outside G to show


def test_witness_is_in_aut_and_outside_g():
    act = ps.Action.invariant(ps.groups.dihedral(5))
    pat = ps.dense_pattern(act)
    res = ps.is_uniquely_equivariant(pat, act)
    assert res.symmetry_order == 120 and not res
    w_in, w_out = res.witness
    assert ps.is_equivariant(pat, ps.Action(w_in[None], w_out[None]))
    assert not act.contains(w_in, w_out)
    assert res.witness_cycles().startswith("inputs (")


def test_witness_of_a_same_action_comes_from_the_inputs_chain(monkeypatch):
    # outputs move like inputs: membership of G on the N + M points is tested on the N
    # inputs (A_n's joint chain took 1.1 s at 128 points); the joint chain is never built
    act = ps.Action.same(ps.groups.alternating(5))
    monkeypatch.setattr(type(act), "_chain", property(lambda self: pytest.fail("joint chain")))
    res = ps.is_uniquely_equivariant(ps.dense_pattern(act), act)
    assert res.symmetry_order == 120 and res.group_order == 60 and not res
    w_in, w_out = res.witness
    assert ps.is_equivariant(ps.dense_pattern(act), ps.Action(w_in[None], w_out[None]))
    assert not act.contains(w_in, w_out) and np.array_equal(w_in, w_out)  # an odd (g, g)
    assert not ps.contains(ps.groups.alternating(5), w_in)
    elements = {g.tobytes() for g in ps.closure(ps.groups.alternating(5))}
    rng = np.random.default_rng(3)
    for _ in range(40):  # against the listed group: (g, g) with g in A_5, nothing else
        g, h = rng.permutation(5), rng.permutation(5)
        for pair in ((g, g), (g, h)):
            expect = pair[0].tobytes() in elements and np.array_equal(*pair)
            assert act.contains(*pair) == expect


def test_layers_and_lift():
    act = ps.Action.invariant(ps.groups.cyclic(5))
    a1, a2 = ps.lift(act)
    p1, p2 = ps.dense_pattern(a1), ps.dense_pattern(a2)
    sym = ps.symmetry_group_layers([p1, p2])
    assert sym.sizes == (5, 5, 1) and sym.order == 5
    assert ps.is_uniquely_equivariant_layers([p1, p2], [a1, a2]).unique
    # the single invariant layer is not unique: the hidden layer is the remedy
    assert not ps.is_uniquely_equivariant(ps.dense_pattern(act), act).unique
    with pytest.warns(UserWarning, match="not free"):
        assert ps.check_lift(act, design="sparse").equivariant
    # a layer stack of one pattern is the pattern's own group
    assert ps.symmetry_group_layers([p1]).order == ps.symmetry_group(p1).order


def test_layers_reject_bad_stacks():
    act = ps.Action.same(ps.groups.cyclic(3))
    pat = ps.dense_pattern(act)
    other = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    with pytest.raises(ValueError, match="chain"):
        ps.symmetry_group_layers([pat, other])
    with pytest.raises(ValueError, match="empty"):
        ps.symmetry_group_layers([])
    with pytest.raises(ValueError, match="one action per layer"):
        ps.is_uniquely_equivariant_layers([pat, pat], [act])
    a4 = ps.Action.same(ps.groups.dihedral(3))
    with pytest.raises(ValueError, match="gens_in must equal"):
        ps.is_uniquely_equivariant_layers([pat, pat], [act, a4])
    with pytest.raises(ValueError, match="design"):
        ps.check_lift(act, design="wide")


# -- graphs --------------------------------------------------------------------------------

def brute_force_graph_order(adj, colors=None):
    n = adj.shape[0]
    colors = np.zeros(n, int) if colors is None else np.asarray(colors)
    count = 0
    for p in itertools.permutations(range(n)):
        p = np.array(p)
        # adjacency[p[u], p[v]] == adjacency[u, v]
        if (colors[p] == colors).all() and np.array_equal(adj[np.ix_(p, p)], adj):
            count += 1
    return count


@pytest.mark.parametrize("seed", range(8))
def test_graph_automorphisms_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    adj = (rng.random((n, n)) < 0.4).astype(np.int64) * rng.integers(1, 3, (n, n))
    if seed % 2:
        adj = np.maximum(adj, adj.T)  # undirected half the time
    colors = rng.integers(0, 2, n) if seed % 3 == 0 else None
    gens = ps.groups.graph_automorphisms(adj, colors)
    assert gens.shape[1] == n
    order = ps.order(gens, n=n) if gens.shape[0] else 1
    assert order == brute_force_graph_order(adj, colors)


def test_directed_cycle_and_colours():
    n = 7
    adj = np.roll(np.eye(n, dtype=bool), 1, axis=1)  # directed cycle, boolean input
    assert ps.order(ps.groups.graph_automorphisms(adj)) == n
    undirected = adj | adj.T
    assert ps.order(ps.groups.graph_automorphisms(undirected)) == 2 * n
    colors = np.zeros(n, int)
    colors[0] = 5
    assert ps.order(ps.groups.graph_automorphisms(undirected, colors)) == 2
    assert ps.groups.graph_automorphisms(adj, colors).shape == (0, n)


def test_graph_convolution_pattern_variants():
    adj = np.zeros((4, 4), int)
    for i in range(3):
        adj[i, i + 1] = adj[i + 1, i] = 1
    pat = ps.graph_convolution_pattern(adj)
    assert pat.n_params == 2 and pat.nnz == 4 + 6
    full = ps.graph_convolution_pattern(adj, nonedge=True)
    assert full.n_params == 3 and full.nnz == 16
    assert ps.symmetry_group(full).order == 2
    dense = ps.graph_convolution_pattern(adj, design="dense")
    assert ps.symmetry_group(dense).order == 2
    act = ps.graph_action(adj)
    assert ps.is_uniquely_equivariant(pat, act).unique
    coloured = adj * np.array([[0, 1, 0, 0], [1, 0, 2, 0], [0, 2, 0, 1], [0, 0, 1, 0]])
    assert ps.graph_convolution_pattern(coloured).n_params == 3
    loops = adj + np.eye(4, dtype=int) * np.array([1, 0, 0, 0])
    assert ps.graph_convolution_pattern(loops).has_multi_edges
    assert ps.symmetry_group(ps.graph_convolution_pattern(loops)).order == 1
    with pytest.raises(ValueError, match="design"):
        ps.graph_convolution_pattern(adj, design="sparse")


def test_graph_edge_colours_may_be_large_or_negative():
    adj = claims_cycle(5) * (10**12)
    adj[0, 1] = adj[1, 0] = -3  # one distinguished edge: only the reflection through it is left
    gens = ps.groups.graph_automorphisms(adj)
    assert ps.order(gens) == 2
    assert brute_force_graph_order(adj) == 2


def claims_cycle(n):
    a = np.zeros((n, n), dtype=np.int64)
    i = np.arange(n)
    a[i, (i + 1) % n] = a[(i + 1) % n, i] = 1
    return a


def test_merge_sort_kernel_is_a_stable_sort():
    from paramshare_nb._kernels.refine_cpu import _merge_sort

    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 16, 17, 100, 1000):
        keys = rng.integers(-5, 5, n)
        items = np.arange(n)
        expect = np.argsort(keys, kind="stable")
        k2, i2 = keys.copy(), items.copy()
        _merge_sort(k2, i2, n, np.empty(n, np.int64), np.empty(n, np.int64))
        assert np.array_equal(i2, expect) and np.array_equal(k2, keys[expect])



@settings(max_examples=60, deadline=None)
@given(nv=st.integers(1, 12), k=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_orbits_added_one_generator_at_a_time(nv, k, seed):
    """The search's running orbits (``_add_generator``, one generator at a time) equal the
    orbits of all the generators at once, and a plain breadth-first orbit count."""
    from paramshare_nb._kernels.refine_cpu import _add_generator, _orbit_labels_fixing

    rng = np.random.default_rng(seed)
    gens = np.array([rng.permutation(nv) for _ in range(k)], dtype=np.int64).reshape(k, nv)
    parent = np.arange(nv)
    labels = parent.copy()
    for g in gens:
        labels = _add_generator(parent, g)
    assert np.array_equal(labels, _orbit_labels_fixing(gens, np.zeros(0, np.int64), 0))
    want = np.full(nv, -1)
    for start in range(nv):  # breadth-first, labelled by the smallest point reached first
        if want[start] < 0:
            want[start], todo = start, [start]
            while todo:
                a = todo.pop()
                for g in gens:
                    if want[g[a]] < 0:
                        want[g[a]] = start
                        todo.append(int(g[a]))
    assert np.array_equal(labels, want)


def test_symmetric_groups_on_many_points():
    """An invariant layer of C_300 and Deep Sets on 120 points: Aut is S_300 (x 1) and
    S_120: the search keeps its orbits one generator at a time (it used to recompute them)."""
    inv = ps.symmetry_group(ps.dense_pattern(ps.Action.invariant(ps.groups.cyclic(300))))
    assert inv.order == math.factorial(300)
    deep = ps.symmetry_group(ps.dense_pattern(ps.Action.same(ps.groups.symmetric(120))))
    assert deep.order == math.factorial(120)

# -- bad input and the budget ------------------------------------------------------------

def test_bad_inputs():
    act = ps.Action.same(ps.groups.cyclic(3))
    pat = ps.dense_pattern(act)
    with pytest.raises(TypeError, match="Pattern"):
        ps.symmetry_group(np.zeros((3, 3), int))
    with pytest.raises(TypeError, match="Action"):
        ps.is_uniquely_equivariant(pat, ps.groups.cyclic(3))
    with pytest.raises(ValueError, match="shape"):
        ps.is_uniquely_equivariant(pat, ps.Action.same(ps.groups.cyclic(4)))
    with pytest.raises(ValueError, match="params must lie"):
        ps.Pattern((2, 2), [0], [0], [3], n_params=2)
    with pytest.raises(ValueError, match="rows must lie"):
        ps.Pattern((2, 2), [2], [0], [0])
    with pytest.raises(ValueError, match="square"):
        ps.groups.graph_automorphisms(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="square"):
        ps.groups.graph_automorphisms(np.zeros(3, int))
    with pytest.raises(TypeError, match="integers or booleans"):
        ps.groups.graph_automorphisms(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="colors"):
        ps.groups.graph_automorphisms(np.zeros((3, 3), int), colors=[0, 1])
    with pytest.raises(TypeError, match="colors"):
        ps.groups.graph_automorphisms(np.zeros((3, 3), int), colors=[0.5, 1, 2])
    with pytest.raises(TypeError, match="max_nodes"):
        ps.symmetry_group(pat, max_nodes=2.5)
    with pytest.raises(ValueError, match="max_nodes"):
        ps.symmetry_group(pat, max_nodes=0)
    with pytest.raises(TypeError, match="atol must be a real number, got str"):
        ps.is_equivariant(np.ones((3, 3)), act, atol="x")
    for atol in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="atol must be finite and >= 0"):
            ps.is_equivariant(pat, act, atol=atol)


def test_node_budget_stops_with_a_clear_error():
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(12)))
    with config.override(search_nodes=20):
        with pytest.raises(SearchBudgetError, match="search_nodes"):
            ps.symmetry_group(pat)
    # a budget given as max_nodes is not config.search_nodes (it said "config.search_nodes =
    # 20" while that stayed 1000000): the message names both
    with pytest.raises(SearchBudgetError, match=r"20 nodes .* max_nodes=\.\.\. .* "
                                                r"config.search_nodes = \d+ applies"):
        ps.symmetry_group(pat, max_nodes=20)
    assert ps.symmetry_group(pat).order == math.factorial(12)  # default budget suffices


def test_search_memory_bound():
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(40)))
    with config.override(max_bytes=100_000):
        with pytest.raises(MemoryError, match="max_bytes"):
            ps.symmetry_group(pat)
    # sizes alone allocate nothing, until the search: its bound, not numpy's "too big"
    huge = ps.Pattern((2**62 - 1, 1), [0], [0], [0], n_params=2**62 - 1)
    with pytest.raises(MemoryError, match=r"1 level deep on 4611686018427387904 points and "
                                          r"would need about 327680.0 PiB, over config"):
        ps.symmetry_group(huge)
    with pytest.raises(MemoryError, match="over config.max_bytes"):
        _explain(huge)  # its counts per parameter: no array of n_params entries
    unused = ps.Pattern((2, 2), [0, 1], [0, 1], [0, 0], n_params=3)
    assert "edges per parameter: min 0, max 2" in _explain(unused)


def test_search_graph_memory_bound():
    """The search's bound covers what it takes: tracemalloc's peak for a pattern whose graph
    dominates (C_128 dense, 16384 edges) and one whose first path does (Deep Sets on 128
    points, 127 levels) is refused at 10% under it, and runs at twice it."""
    import tracemalloc

    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(128)))
    with config.override(max_bytes=1 << 20):
        with pytest.raises(MemoryError, match=r"graph has 16384 edges .* about 1\.9 MiB, over"):
            ps.symmetry_group(pat)
    ps.symmetry_group(ps.dense_pattern(ps.Action.same(ps.groups.cyclic(8))))  # compiled first
    for act, order in ((ps.Action.same(ps.groups.cyclic(128)), 128),
                       (ps.Action.same(ps.groups.symmetric(128)), math.factorial(128))):
        pat = ps.dense_pattern(act)
        tracemalloc.start()
        try:
            assert ps.symmetry_group(pat).order == order
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        with config.override(max_bytes=int(peak / 1.1)):
            with pytest.raises(MemoryError, match="over config.max_bytes"):
                ps.symmetry_group(pat)
        with config.override(max_bytes=2 * peak):
            assert ps.symmetry_group(pat).order == order


# -- explain --------------------------------------------------------------------------------

def _explain(*args):
    buf = io.StringIO()
    assert ps.explain(*args, file=buf) is None
    return buf.getvalue()


def test_explain_unique_and_not():
    act = ps.Action.same(ps.groups.cyclic(6))
    text = _explain(ps.dense_pattern(act), act)
    assert "parameters : 6" in text and "Uniquely equivariant: yes" in text
    a4 = ps.Action.same(ps.groups.alternating(4))
    text = _explain(ps.dense_pattern(a4), a4)
    assert "Uniquely equivariant: NO" in text and "witness" in text and "ps.lift" in text
    inv = ps.Action.invariant(ps.groups.cyclic(5))
    text = _explain(ps.dense_pattern(inv), inv)
    assert "no single layer" in text
    bad = ps.Pattern.from_index(np.arange(36).reshape(6, 6))
    assert "Equivariant: NO" in _explain(bad, act)
    assert "Symmetry group Aut(Omega): order" in _explain(ps.dense_pattern(act))
    with pytest.raises(ValueError, match="shape"):
        _explain(ps.dense_pattern(act), a4)


@pytest.mark.parametrize("act, dense_unique", [
    # S2 x S2 on inputs {0, 1} and {2, 3}, one invariant output: unfaithful on the output
    # side, yet the dense pattern (2 parameters) is uniquely equivariant
    (ps.Action([[1, 0, 2, 3], [0, 1, 3, 2]], [[0], [0]]), True),
    (ps.Action.invariant(ps.groups.cyclic(5)), False),  # its dense pattern has order 120
    (ps.Action.same(ps.groups.alternating(4)), False),  # Deep Sets, order 24
    (ps.Action.same(ps.groups.dihedral(5)), True),
], ids=["s2xs2-invariant", "c5-invariant", "a4", "d5"])
def test_explain_suggests_the_dense_pattern_exactly_when_it_is_unique(act, dense_unique):
    assert ps.is_uniquely_equivariant(ps.dense_pattern(act), act).unique == dense_unique
    coarse = ps.Pattern.from_index(np.zeros((act.n_out, act.n_in), dtype=np.int64))
    text = _explain(coarse, act)
    assert ("dense_pattern(action) is uniquely equivariant" in text) == dense_unique
    assert ("no single layer" in text) == (not dense_unique)


def test_explain_prints_orders_past_pythons_digit_limit():
    from paramshare_nb.symmetry import _big
    assert _big(10**30 - 1) == "9" * 30
    for k in (30, 31, 299, 4299, 5000):  # Python refuses str() past 4300 digits
        assert _big(10**k) == f"about 1.00e+{k} ({k + 1} digits)"
        assert _big(10 ** (k + 1) - 1) == f"about 9.99e+{k} ({k + 1} digits)"
        assert _big(123 * 10 ** (k - 2) + 7) == f"about 1.23e+{k} ({k + 1} digits)"
    act = ps.Action.invariant(ps.groups.cyclic(30))  # Aut is S_30: 30! = 2.65e+32
    text = _explain(ps.dense_pattern(act), act)
    assert "Aut(Omega): order about 2.65e+32 (33 digits)" in text and "|G| = 30" in text


def test_explain_prints_to_stdout(capsys):
    act = ps.Action.same(ps.groups.cyclic(3))
    ps.explain(ps.dense_pattern(act), act)
    assert "Pattern of shape (3, 3)" in capsys.readouterr().out


def test_symmetry_group_parts_are_checked_by_name():
    sg = ps.symmetry_group(ps.dense_pattern(ps.Action.same(ps.groups.cyclic(3))))
    for method in (sg.projection, sg.orbits_of):
        with pytest.raises(ValueError, match="part=5 is out of range"):
            method(5)  # a bare IndexError from range() before
        with pytest.raises(TypeError, match="part must be an int"):
            method(0.5)
    np.testing.assert_array_equal(sg.orbits_of(-1), sg.orbits_out)


def test_explain_checks_its_file_before_the_search():
    act = ps.Action.same(ps.groups.cyclic(3))
    with pytest.raises(TypeError, match="file must be a writable text stream"):
        ps.explain(ps.dense_pattern(act), act, file=3)  # an AttributeError from print before


def test_uniqueness_reuses_the_groups_chain(monkeypatch):
    # the witness search took a fresh stabilizer chain of G on every call (A_64: 0.9 s each)
    from paramshare_nb import groups
    from paramshare_nb import symmetry as symmetry_module
    act = ps.Action.same(ps.groups.alternating(6))
    pat = ps.dense_pattern(act)
    first = ps.is_uniquely_equivariant(pat, act)
    built = []
    real = groups.StabChain
    for module in (groups, symmetry_module):
        monkeypatch.setattr(module, "StabChain", lambda *a, **k: built.append(1) or real(*a, **k))
    again = ps.is_uniquely_equivariant(pat, act)
    assert not again.unique and again.witness is not None and not built
    assert (first.group_order, first.symmetry_order) == (again.group_order, again.symmetry_order)
