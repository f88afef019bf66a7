import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import brute_closure, brute_orbits, labels_to_partition, sympy_group
from sympy.combinatorics import Permutation

import paramshare_nb as ps
from paramshare_nb import groups, perm

ZOO = {
    "trivial5": groups.trivial(5),
    "cyclic7": groups.cyclic(7),
    "dihedral6": groups.dihedral(6),
    "dihedral1": groups.dihedral(1),
    "dihedral2": groups.dihedral(2),
    "symmetric1": groups.symmetric(1),
    "symmetric2": groups.symmetric(2),
    "symmetric5": groups.symmetric(5),
    "alternating4": groups.alternating(4),
    "alternating5": groups.alternating(5),
    "alternating6": groups.alternating(6),
    "grid3x4": groups.grid_translations((3, 4)),
    "grid2x2x3": groups.grid_translations((2, 2, 3)),
    "square4": groups.square_symmetries(4),
    "square3rot": groups.square_symmetries(3, rotations_only=True),
    "two_orbits": np.array([perm.from_cycles("(0 1 2)(3 4)", 6)]),
}

EXPECTED_ORDER = {
    "trivial5": 1, "cyclic7": 7, "dihedral6": 12, "dihedral1": 1, "dihedral2": 2,
    "symmetric1": 1, "symmetric2": 2, "symmetric5": 120, "alternating4": 12, "alternating5": 60,
    "alternating6": 360, "grid3x4": 12, "grid2x2x3": 12, "square4": 8, "square3rot": 4,
    "two_orbits": 6,
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_against_sympy(name):
    gens = ZOO[name]
    n = gens.shape[1]
    ref = sympy_group(gens, n)
    assert ps.order(gens, n=n) == ref.order() == EXPECTED_ORDER[name]
    assert labels_to_partition(ps.orbits(gens, n=n)) == {frozenset(o) for o in ref.orbits()}
    elems = ps.closure(gens, n=n)
    assert {tuple(r) for r in elems.tolist()} == brute_closure(gens, n)
    assert elems[0].tolist() == list(range(n))
    assert ps.is_transitive(gens, n=n) == ref.is_transitive()
    # semi-regular <=> every orbit has |G| points
    assert ps.is_semiregular(gens, n=n) == all(len(o) == ref.order() for o in ref.orbits())
    assert ps.is_regular(gens, n=n) == (ref.is_transitive() and ref.order() == n)


def test_freeness_needs_no_stabilizer_chain(monkeypatch):
    # |G| against the orbit size by a walk of at most s + 1 elements: S_128's chain took 10 s
    monkeypatch.setattr(groups, "_chain", lambda *a, **k: pytest.fail("built a chain"))
    assert not ps.is_semiregular(groups.symmetric(128))
    assert not ps.is_regular(groups.symmetric(128))
    assert ps.is_regular(groups.cyclic(128)) and ps.is_semiregular(groups.cyclic(128))
    two_sizes = np.array([[1, 0, 3, 4, 2]])  # orbits of 2 and 3 points: not free
    assert not ps.is_semiregular(two_sizes)
    act = ps.Action.same(groups.grid_translations((4, 4)))
    assert act.is_free_in() and act.is_free_out()
    assert not ps.Action.same(groups.dihedral(4)).is_free_in()


def test_freeness_keeps_the_memory_bound():
    # the walk holds s + 1 elements of n points: past config.max_bytes the chain decides,
    # and refuses (a 4096-point regular group held 281 MiB under a 16 MiB bound)
    with ps.config.override(max_bytes=1 << 24):
        with pytest.raises(MemoryError, match="config.max_bytes"):
            ps.is_regular(groups.cyclic(4096))
        assert ps.is_regular(groups.cyclic(512))


def test_closure_is_deterministic_bfs():
    a = ps.closure(groups.dihedral(5))
    b = ps.closure(groups.dihedral(5))
    np.testing.assert_array_equal(a, b)
    assert len({r.tobytes() for r in a}) == 10


def test_canonical_orbit_numbering():
    gens = [perm.from_cycles("(1 3)(2 4)", 5)]
    assert ps.orbits(gens).tolist() == [0, 1, 2, 1, 2]
    assert ps.groups.orbit_sizes(gens).tolist() == [1, 2, 2]


def test_regular_and_semiregular():
    assert ps.is_regular(groups.cyclic(6))
    assert not ps.is_regular(groups.dihedral(6))
    assert ps.is_semiregular(groups.grid_translations((2, 3)))
    assert not ps.is_semiregular(groups.symmetric(3))


# from 8 points a transitive group's chain starts with random Schreier-Sims, proven by the
# order n! (n!/2) or else completed deterministically: random generators give S_n and A_n
# mostly, other transitive groups and intransitive ones now and then
transitive_sized = st.integers(8, 11).flatmap(
    lambda n: st.lists(st.permutations(list(range(n))), min_size=1, max_size=3))


@given(transitive_sized)
@settings(max_examples=25, deadline=None)
def test_random_schreier_sims_against_sympy(gens):
    _check_chain_against_sympy(np.array(gens))


@pytest.mark.parametrize("gens", [
    groups.dihedral(10),  # transitive, far below 10!: the random phase gives up
    np.array([perm.from_cycles("(0 1 2 3 4 5 6)", 8), perm.from_cycles("(1 2 4)(3 6 5)", 8),
              perm.from_cycles("(0 7)(1 3)(2 6)(4 5)", 8)]),  # AGammaL(1, 8): order 168
    groups.symmetric(9)[[1, 0]],  # S_9, generators in the other order
    groups.alternating(10),
], ids=["dihedral10", "agammal1_8", "symmetric9", "alternating10"])
def test_random_phase_giving_up_anywhere_is_completed(gens, monkeypatch):
    from paramshare_nb import _schreier
    for patience in (1, 2, 32):  # 1: it gives up at the first element that strips
        monkeypatch.setattr(_schreier, "_PATIENCE", patience)
        groups._CHAINS.clear()
        _check_chain_against_sympy(np.asarray(gens))


@pytest.mark.parametrize("n, moved", [(8, (0, 7)), (36, (0, 35)), (51, (1, 2))])
def test_an_n_cycle_and_a_transposition_generate_s_n(n, moved):
    # the random phase gave these up one level short, and the deterministic check that
    # followed passed chains of 34560 for S_8 (its residues were missing from level 1)
    gens = np.array([np.roll(np.arange(n), -1), perm.from_cycles(f"({moved[0]} {moved[1]})", n)])
    assert ps.order(gens) == math.factorial(n)
    assert ps.order(ps.stabilizer(gens, 3), n=n) == math.factorial(n - 1)
    rng = np.random.default_rng(1)
    assert all(ps.contains(gens, perm.random(n, rng=rng)) for _ in range(20))
    if n == 8:
        _check_chain_against_sympy(gens)


def _check_chain_against_sympy(gens):
    n = gens.shape[1]
    ref = sympy_group(gens, n)
    assert ps.order(gens) == ref.order()
    rng = np.random.default_rng(0)
    for g in [perm.random(n, rng=rng) for _ in range(3)] + list(groups.random_element(gens, 3, 1)):
        assert ps.contains(gens, g) == ref.contains(Permutation(list(map(int, g))))
    for i in (0, n - 1):  # the stabilizer's strong generators generate all of it
        assert ps.order(ps.stabilizer(gens, i), n=n) == ref.stabilizer(i).order()


def test_stabilizer_and_membership():
    s5 = groups.symmetric(5)
    st_ = ps.stabilizer(s5, 3)
    assert ps.order(st_) == 24
    assert np.all(st_[:, 3] == 3)
    assert ps.contains(groups.alternating(5), perm.from_cycles("(0 1 2)", 5))
    assert not ps.contains(groups.alternating(5), perm.from_cycles("(0 1)", 5))
    assert ps.stabilizer(groups.cyclic(5), 0).shape == (0, 5)


def test_rubik_order_without_enumeration():
    assert ps.order(groups.rubik_cube()) == 43252003274489856000


def test_large_symmetric_order_is_exact():
    assert ps.order(groups.symmetric(30)) == math.factorial(30)


def test_closure_memory_guard():
    with pytest.raises(MemoryError, match=r"order 3628800"):
        ps.closure(groups.symmetric(10), max_bytes=1 << 20)


def test_random_element_in_group():
    g = groups.alternating(6)
    for h in groups.random_element(g, size=10, rng=1):
        assert ps.contains(g, h)


def test_square_symmetries_match_numpy():
    h = 4
    img = np.arange(h * h).reshape(h, h)
    rot, flip = groups.square_symmetries(h)
    np.testing.assert_array_equal(perm.apply(rot, img.ravel()).reshape(h, h), np.rot90(img))
    np.testing.assert_array_equal(perm.apply(flip, img.ravel()).reshape(h, h), np.fliplr(img))


def test_grid_translation_moves_one_step():
    (g,) = groups.grid_translations(5)
    assert g.tolist() == [1, 2, 3, 4, 0]
    g0, g1 = groups.grid_translations((2, 3))
    img = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(perm.apply(g1, img.ravel()).reshape(2, 3),
                                  np.roll(img, 1, axis=1))
    np.testing.assert_array_equal(perm.apply(g0, img.ravel()).reshape(2, 3),
                                  np.roll(img, 1, axis=0))


gen_sets = st.integers(2, 7).flatmap(
    lambda n: st.lists(st.permutations(list(range(n))), min_size=1, max_size=3))


@given(gen_sets)
@settings(max_examples=40, deadline=None)
def test_random_generator_sets_against_sympy(gens):
    gens = np.array(gens)
    n = gens.shape[1]
    ref = sympy_group(gens, n)
    assert ps.order(gens) == ref.order()
    assert labels_to_partition(ps.orbits(gens)) == brute_orbits(gens, n)
    elems = ps.closure(gens)
    assert len(elems) == ref.order()
    assert all(ref.contains(Permutation(list(map(int, r)))) for r in elems[:20])
    outsider = perm.random(n, rng=len(elems))
    assert ps.contains(gens, outsider) == ref.contains(Permutation(list(map(int, outsider))))
    i = n - 1
    assert ps.order(ps.stabilizer(gens, i), n=n) == ref.stabilizer(i).order()


@pytest.mark.parametrize("call", [
    lambda: ps.orbits([[0, 1], [1, 1]]),
    lambda: ps.order([[0.0, 1.0]]),
    lambda: ps.stabilizer(groups.cyclic(3), 3),
    lambda: ps.stabilizer(groups.cyclic(3), -1),
    lambda: ps.orbits([]),
    lambda: groups.grid_translations(()),
    lambda: groups.cyclic(0),
])
def test_bad_input_is_refused(call):
    with pytest.raises((ValueError, TypeError)):
        call()


def test_grid_shapes_are_named_when_wrong():
    # an int, a 0-d array or a sequence; they gave "'float' object is not iterable" and
    # "iteration over a 0-d array"
    assert groups.grid_translations(np.array(3)).shape == (1, 3)
    assert groups.grid_translations(s for s in (3, 4)).shape == (2, 12)  # any iterable
    for bad, match in ((3.0, "shape entry must be an int, got float"),
                       ("ab", "shape must be an int or a tuple of ints"),
                       ((2, None), "shape entry must be an int, got NoneType")):
        with pytest.raises(TypeError, match=match):
            groups.grid_translations(bad)


@pytest.mark.parametrize("call, name", [
    (lambda: perm.identity(2**63), "n=9223372036854775808"),
    (lambda: perm.from_cycles([[0]], n=2**63), "n=9223372036854775808"),
    (lambda: perm.random(2**40, rng=0), r"random\(n=1099511627776, size=None\)"),
    (lambda: perm.random(8, size=2**60, rng=0), r"random\(n=8, size=1152921504606846976\)"),
    (lambda: groups.cyclic(2**63), "n=9223372036854775808"),
    (lambda: groups.dihedral(2**40), "n=1099511627776"),
    (lambda: groups.symmetric(2**63), "n=9223372036854775808"),
    (lambda: groups.alternating(2**40), "n=1099511627776"),
    (lambda: groups.random_element([[1, 0]], size=2**62, rng=0),
     r"random_element\(size=4611686018427387904\)"),
    (lambda: ps.Action.same([[1, 0]]).random_elements(2**63, rng=0),
     r"random_elements\(size=9223372036854775808\)"),
])
def test_sizes_past_the_memory_bound_are_refused_by_name(call, name):
    """numpy made ``arange(2**63)`` an empty permutation, failed on ranges or overflowed,
    and ``random_elements`` listed its elements until the machine ran out of memory."""
    with pytest.raises(MemoryError, match=name + ": .* over config.max_bytes = 1.0 GiB"):
        with ps.config.override(max_bytes=2**30):
            call()


def test_contains_blames_the_argument_that_is_wrong():
    with pytest.raises(ValueError, match="g has length 2, but gens act on 3 points"):
        ps.contains([[1, 0, 2]], [1, 0])
    assert ps.contains([], [0, 1]) and not ps.contains([], [1, 0])  # no generators: g's n
    with pytest.raises(ValueError, match="g has length 2, but gens act on 3 points"):
        ps.contains(np.zeros((0, 3), int), [1, 0])
    with pytest.raises(TypeError, match="rng must be None, a non-negative int seed"):
        groups.random_element([[1, 0]], rng="seed")


def test_error_names_the_generator():
    with pytest.raises(ValueError, match=r"gens\[1\]"):
        ps.order([[1, 0, 2], [0, 0, 2]])


def test_trivial_group_elements_are_private_copies():
    """A memoised chain must not hand out its own identity (review finding)."""
    e = groups.random_element(groups.trivial(4))
    e[:] = [1, 0, 2, 3]
    act = ps.Action(groups.trivial(3), groups.trivial(1))
    assert act.contains([0, 1, 2], [0])
    assert groups.random_element(groups.trivial(4)).tolist() == [0, 1, 2, 3]


def test_empty_point_set_is_regular_like_transitive_and_free():
    assert ps.is_transitive(groups.trivial(0)) and ps.is_semiregular(groups.trivial(0))
    assert ps.is_regular(groups.trivial(0))


def test_chain_memory_is_bounded_and_refusal_leaves_nothing_behind():
    # 900 points, transitive: the first level alone holds 900 rows of 900 int64
    gens = groups.grid_translations((30, 30))
    with ps.config.override(max_bytes=1 << 20):
        with pytest.raises(MemoryError, match=r"stabilizer chain .* 900 points .*config.max_bytes"):
            groups.order(gens)
        with pytest.raises(MemoryError, match="stabilizer chain"):  # not memoised half-built
            groups.contains(gens, gens[0])
    assert groups.order(gens) == 900
    chain = groups._chain(np.ascontiguousarray(gens, dtype=np.int64))
    # one int64 row of n points per orbit point, and its point -> row map (no forward reps)
    assert chain.nbytes == 8 * 900 * (900 + 1)


def test_chain_memory_counts_every_level():
    # 150 disjoint transpositions on 2000 points: 150 levels of 2 rows plus each level's map,
    # 7.3 MiB; counting orbit points past the first alone said 2.3 MiB
    n, k = 2000, 150
    gens = np.tile(np.arange(n), (k, 1))
    j = np.arange(k)
    gens[j, 2 * j], gens[j, 2 * j + 1] = 2 * j + 1, 2 * j
    with ps.config.override(max_bytes=5 << 20):
        with pytest.raises(MemoryError, match="stabilizer chain"):
            groups.order(gens)
    with ps.config.override(max_bytes=8 << 20):
        assert groups.order(gens) == 2**k
        chain = groups._chain(np.ascontiguousarray(gens))
        assert chain.nbytes == 8 * n * 3 * k <= 8 << 20


def test_chain_holds_no_spare_rows_once_built():
    # the tables grow with room to spare while the chain is built; nbytes, which the memo
    # and the bound count, is what they hold afterwards
    from paramshare_nb._schreier import StabChain
    for gens in (groups.symmetric(12), groups.dihedral(9), groups.grid_translations((5, 4))):
        chain = StabChain(np.ascontiguousarray(gens, dtype=np.int64))
        assert chain._pool.nbytes + chain._gpos.nbytes == chain.nbytes
        assert chain._strong.shape[0] == len({i for lv in chain.levels for i in lv.gen_ids})


def test_chain_of_large_symmetric_groups_and_membership_of_non_permutations():
    from paramshare_nb._schreier import StabChain
    chain = StabChain(np.ascontiguousarray(groups.symmetric(40), dtype=np.int64))
    assert chain.order() == math.factorial(40)
    assert chain.contains(np.random.default_rng(0).permutation(40))
    # the jitted sift would read out of bounds: anything but a permutation is not a member
    assert not chain.contains(np.zeros(40, dtype=np.int64))
    assert not chain.contains(np.arange(39))
    assert not chain.contains(np.arange(1, 41))


def test_chain_memo_holds_at_most_max_bytes():
    big = groups.grid_translations((20, 20))  # 400 rows of 400 int64: 1.2 MiB
    cases = [(big, 400)] + [(groups.cyclic(n), n) for n in range(3, 9)]
    cases.append((groups.grid_translations((21, 19)), 399))  # another 1.2 MiB
    with ps.config.override(max_bytes=2 << 20):
        for g, order in cases:
            assert groups.order(g) == order
            assert sum(c.nbytes for c in groups._CHAINS.values()) <= 2 << 20
        assert big.tobytes() not in [k[1] for k in groups._CHAINS]  # the oldest went first
