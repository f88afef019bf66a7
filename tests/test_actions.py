import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import brute_closure, brute_pair_orbits, burnside_pair_count, labels_to_partition

import paramshare_nb as ps
from paramshare_nb import groups, perm


def figure1_usual():
    """D5 as usually described on a 4x5 image: commuting shift and flip (order 10)."""
    img = np.arange(20).reshape(4, 5)
    # np.argsort of a transformed index image: pixel -> where the transform puts it
    shift = np.argsort(np.roll(img, 1, axis=1).ravel())  # every row one column right
    flip = np.argsort(img[::-1].ravel())
    out_shift = (np.arange(5) + 1) % 5
    return ps.Action([shift, flip], [out_shift, np.arange(5)])


def figure1_genuine():
    """The genuine D5 reading of THEORY.md section 3."""
    img = np.arange(20).reshape(4, 5)
    rot_img = img.copy()
    rot_img[:2] = np.roll(img[:2], 1, axis=1)
    rot_img[2:] = np.roll(img[2:], -1, axis=1)
    rot = np.argsort(rot_img.ravel())
    refl = np.argsort(img[::-1].ravel())
    d5 = groups.dihedral(5)
    return ps.Action([rot, refl], d5)


def test_figure1_readings():
    usual = figure1_usual()
    assert usual.order() == 10 and usual.is_free_in()
    assert ps.dense_pattern(usual).n_params == 10
    genuine = figure1_genuine()
    assert genuine.order() == 10
    assert genuine.is_free_in() and not genuine.is_free_out()
    assert genuine.order_out() == 10  # faithful on the outputs
    assert ps.dense_pattern(genuine).n_params == 10


def test_inconsistent_pairs_are_reported():
    # D5 on the genuine image paired with plain shifts on 5 outputs: order 50
    genuine = figure1_genuine()
    bad = ps.Action(genuine.gens_in, [np.roll(np.arange(5), 1), np.arange(5)])
    with pytest.warns(UserWarning, match="not a function"):
        text = bad.describe()
    assert bad.order() == 50 and bad.order_in() == 10
    assert "order 50" in text


def test_describe_reports_sizes():
    act = ps.Action.invariant(groups.cyclic(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = act.describe()
    assert "order 5" in text and "N=5" in text and "M=1" in text
    assert "not faithful (kernel of order 5)" in text


@pytest.mark.parametrize("act", [
    ps.Action.same(groups.dihedral(5)),
    ps.Action.same(groups.alternating(4)),
    ps.Action(groups.symmetric(3), ps.tensor_power(groups.symmetric(3), 2)),
    ps.Action.invariant(groups.square_symmetries(3)),
    ps.product(ps.Action.same(groups.cyclic(3)), ps.Action.same(groups.symmetric(2))),
], ids=["D5", "A4", "S3_1to2", "square3_inv", "C3xS2"])
def test_pair_orbits_against_brute_force(act):
    ein, eout = act.closure()
    assert len(ein) == act.order()
    ref = brute_pair_orbits(ein, eout, act.n_out, act.n_in)
    assert labels_to_partition(act.pair_orbits()) == labels_to_partition(ref)
    assert act.pair_orbits().max() + 1 == burnside_pair_count(ein, eout)


def test_closure_pairs_match_brute_force():
    act = ps.Action(groups.dihedral(4), groups.cyclic(2).repeat(2, axis=0))
    ein, eout = act.closure()
    joint = {tuple(a.tolist()) + tuple((b + 4).tolist()) for a, b in zip(ein, eout)}
    assert joint == brute_closure(act.joint, 6)


def test_product_and_tensor_power():
    a = ps.product(ps.Action.same(groups.cyclic(3)), ps.Action.same(groups.cyclic(4)))
    assert a.n_in == 12 and a.order() == 12 and ps.is_regular(a.gens_in)
    t = ps.tensor_power(groups.symmetric(3), 2)
    assert t.shape == (2, 9)
    # (i, j) -> (g i, g j) row-major
    g = groups.symmetric(3)[1]
    for i in range(3):
        for j in range(3):
            assert t[1, i * 3 + j] == g[i] * 3 + g[j]


def test_regular_action():
    reg = ps.regular(groups.dihedral(5))
    assert reg.shape == (2, 10)
    assert ps.is_regular(reg) and ps.order(reg) == 10
    elems = ps.closure(groups.dihedral(5))
    # generator s sends element h to s*h
    s = groups.dihedral(5)[0]
    for j, h in enumerate(elems):
        assert np.array_equal(elems[reg[0, j]], s[h])


def test_random_elements_are_members():
    act = ps.Action.same(groups.dihedral(7))
    gi, go = act.random_elements(5, rng=0)
    for a, b in zip(gi, go):
        assert act.contains(a, b)
    assert not act.contains(perm.from_cycles("(0 1)", 7), perm.from_cycles("(0 1)", 7))


def test_bad_actions():
    with pytest.raises(ValueError, match="one output permutation per input"):
        ps.Action(groups.dihedral(5), groups.cyclic(5))
    with pytest.raises(ValueError, match=r"gens_out\[0\]"):
        ps.Action([[1, 0]], [[0, 0]])
    with pytest.raises(TypeError):
        ps.product(ps.Action.same(groups.cyclic(2)), groups.cyclic(2))
    with pytest.raises(ValueError):
        ps.tensor_power(groups.cyclic(3), 0)
    with pytest.raises(MemoryError, match=r"tensor_power: 2 generators on 10\*\*30 points"):
        ps.tensor_power(groups.symmetric(10), 30)  # was an out-of-memory kill
    with ps.config.override(max_bytes=1 << 20):
        with pytest.raises(MemoryError, match="config.max_bytes"):
            ps.tensor_power(groups.symmetric(10), 6)
    for make in (ps.Action.same, ps.Action.invariant):
        with pytest.raises(ValueError, match="n must be >= 0, got -1"):
            make([], n=-1)
        for n in (2.5, True):
            with pytest.raises(TypeError, match="n must be an int"):
                make([], n=n)
    with pytest.raises(ValueError, match="params must be parameter ids >= 0, got -1"):
        ps.Pattern((2, 2), [1], [0], [-1])


pair_actions = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 2)).flatmap(
    lambda t: st.tuples(
        st.lists(st.permutations(list(range(t[0]))), min_size=t[2], max_size=t[2]),
        st.lists(st.permutations(list(range(t[1]))), min_size=t[2], max_size=t[2])))


@given(pair_actions)
@settings(max_examples=40, deadline=None)
def test_random_pair_orbits_match_burnside(gens):
    act = ps.Action(np.array(gens[0]), np.array(gens[1]))
    ein, eout = act.closure()
    labels = act.pair_orbits()
    assert labels_to_partition(labels) == labels_to_partition(
        brute_pair_orbits(ein, eout, act.n_out, act.n_in))
    assert labels.max() + 1 == burnside_pair_count(ein, eout)
    assert ps.is_equivariant(ps.dense_pattern(act), act)


def test_empty_generator_sets_and_point_sets():
    t = ps.tensor_power(groups.trivial(3), 2)
    assert t.shape == (0, 9)
    p = ps.product(ps.Action.same(groups.trivial(0)), ps.Action.same(groups.trivial(3)))
    assert (p.n_in, p.n_out, p.order()) == (0, 0, 1)


def test_pair_orbits_checks_the_memory_bound():
    act = ps.Action.same(ps.groups.cyclic(64))  # 4096 pairs: 64 KiB of union-find
    assert act.pair_orbits().shape == (64, 64)
    with ps.config.override(max_bytes=32 * 1024):
        with pytest.raises(MemoryError, match=r"64 x 64 pairs need 64.0 KiB, over"):
            act.pair_orbits()


def test_tensor_power_refuses_before_computing_n_to_the_k():
    # a float division of the size overflowed (k=700), n**k ran for minutes (k=10**8), and
    # without generators the bound never fired
    from paramshare_nb.actions import tensor_power
    for gens, k in ((ps.groups.symmetric(3), 700), (ps.groups.symmetric(3), 10**8),
                    (np.zeros((0, 3), dtype=np.int64), 30)):
        with pytest.raises(MemoryError, match=r"tensor_power: .* points need"):
            tensor_power(gens, k)
    assert tensor_power(ps.groups.symmetric(3), 3).shape == (2, 27)
    # one point or none: the answer at once, not after a loop of 10**12 steps
    np.testing.assert_array_equal(tensor_power(np.zeros((2, 1), dtype=np.int64), 10**12),
                                  np.zeros((2, 1)))
    assert tensor_power(np.zeros((1, 0), dtype=np.int64), 10**12).shape == (1, 0)
    for n, k in ((1, 1), (1, 3), (0, 1), (0, 2)):  # as the loop gives for small k
        assert tensor_power(np.zeros((1, n), dtype=np.int64), k).shape == (1, n**k)


def test_grids_check_their_size_before_allocating():
    with pytest.raises(MemoryError, match=r"shape=\(4294967296, 4294967296\)"):
        ps.groups.grid_translations((2**32, 2**32))  # np.prod wrapped to 0
    with pytest.raises(MemoryError, match="h=1000000"):
        ps.groups.square_symmetries(10**6)
    with ps.config.override(max_bytes=10_000):
        with pytest.raises(MemoryError, match="config.max_bytes"):
            ps.groups.grid_translations((100, 100))


def test_size_messages_count_what_is_built():
    from paramshare_nb.actions import tensor_power
    with ps.config.override(max_bytes=2**20):  # 1 generator x 3**20 points x 8 bytes
        with pytest.raises(MemoryError, match=r"about 2\*\*35 bytes"):  # it said 2**32
            tensor_power(ps.groups.cyclic(3), 20)
    with ps.config.override(max_bytes=90_000):  # (1 + 2) x 4096 x 8 = 98304 bytes
        with pytest.raises(MemoryError, match="1 generators on 4096 points"):
            ps.groups.square_symmetries(64, rotations_only=True)


def test_a_same_action_orders_its_group_with_one_chain(monkeypatch):
    # G_{N,M}, G_N and G_M are one group when outputs move like inputs: one chain on N
    # points, not a joint one on 2N and a second on N (S_64: 1 s each)
    from paramshare_nb import groups
    built = []
    real = groups.StabChain
    monkeypatch.setattr(groups, "_CHAINS", type(groups._CHAINS)())  # none memoised yet
    monkeypatch.setattr(groups, "StabChain",
                        lambda gens, *a, **k: built.append(gens.shape[1]) or real(gens, *a, **k))
    act = ps.Action.same(ps.groups.symmetric(7))
    assert act.order() == act.order_in() == act.order_out() == 5040
    assert built == [7]
    pair = ps.Action(ps.groups.symmetric(7), ps.groups.cyclic(7)[[0, 0]])  # not the same
    assert (pair.order(), pair.order_in(), pair.order_out()) == (5040 * 7, 5040, 7)
