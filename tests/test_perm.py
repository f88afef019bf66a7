import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import paramshare_nb as ps
from paramshare_nb import perm

perms = st.integers(1, 9).flatmap(lambda n: st.permutations(list(range(n))))


@given(perms, st.data())
@settings(max_examples=60, deadline=None)
def test_compose_inverse_and_left_action(p, data):
    p = np.array(p)
    q = np.array(data.draw(st.permutations(list(range(p.size)))))
    pq = perm.compose(p, q)
    assert [int(pq[i]) for i in range(p.size)] == [int(p[q[i]]) for i in range(p.size)]
    assert perm.is_identity(perm.compose(p, perm.inverse(p)))
    x = np.arange(p.size) * 10.0
    # left action: p . (q . x) == (p q) . x
    np.testing.assert_array_equal(perm.apply(p, perm.apply(q, x)), perm.apply(pq, x))
    moved = perm.apply(p, x)
    for i in range(p.size):
        assert moved[p[i]] == x[i]


@given(perms)
@settings(max_examples=60, deadline=None)
def test_cycles_round_trip(p):
    p = np.array(p)
    text = perm.to_cycles(p)
    np.testing.assert_array_equal(perm.from_cycles(text, p.size), p)


def test_cycle_examples():
    assert perm.from_cycles("(0 1 2)(3 4)", 5).tolist() == [1, 2, 0, 4, 3]
    assert perm.from_cycles("(0,1)", 3).tolist() == [1, 0, 2]
    assert perm.from_cycles([[0, 1, 2]], 3).tolist() == [1, 2, 0]
    assert perm.from_cycles("()", 3).tolist() == [0, 1, 2]
    assert perm.to_cycles([0, 1, 2]) == "()"
    assert perm.to_cycles([1, 0, 2], singletons=True) == "(0 1)(2)"
    # cycles that share points compose right to left, like permutations
    assert perm.from_cycles("(0 1)(1 2)", 3).tolist() == perm.compose(
        perm.from_cycles("(0 1)", 3), perm.from_cycles("(1 2)", 3)).tolist()


def test_apply_axis_and_order():
    p = perm.from_cycles("(0 1 2)", 3)
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(perm.apply(p, x, axis=0), x[perm.inverse(p)])
    assert perm.order_of(perm.from_cycles("(0 1)(2 3 4)", 5)) == 6


def test_apply_moves_a_mask_with_its_entries():
    p = perm.from_cycles("(0 1 2)", 3)
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    out = perm.apply(p, x)
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), np.ma.getmaskarray(x)[perm.inverse(p)])
    np.testing.assert_array_equal(out.data, x.data[perm.inverse(p)])
    with pytest.raises(TypeError, match="p is a masked array; give a plain integer array"):
        perm.apply(np.ma.masked_array([1, 2, 0]), x)


def test_random_is_permutation():
    ps_ = perm.random(7, size=5, rng=0)
    assert ps_.shape == (5, 7)
    assert all(sorted(r) == list(range(7)) for r in ps_.tolist())
    np.testing.assert_array_equal(perm.random(7, rng=3), perm.random(7, rng=3))


@pytest.mark.parametrize("bad, exc, words", [
    ([0, 0, 1], ValueError, "^p is not a permutation of 0..2: 0 appears more than once"),
    ([0, 3, 1], ValueError, "^p is not a permutation of 0..2: entry 1 is 3, out of range"),
    ([-1, 0, 1], ValueError, "out of range"),
    ([0.0, 1.0, 2.0], TypeError, "integers"),
    ([True, False], TypeError, "integers"),
    (np.array([1, 0], "m8[s]"), TypeError, "timedelta64"),  # an np.integer subtype
    ([[0, 1], [0]], ValueError, "ragged"),
])
def test_bad_permutations(bad, exc, words):
    with pytest.raises(exc, match=words):
        perm.inverse(bad)


def test_bad_cycles():
    with pytest.raises(ValueError, match="repeats"):
        perm.from_cycles("(0 1 0)", 3)
    with pytest.raises(ValueError, match="out of range"):
        perm.from_cycles("(0 5)", 3)
    with pytest.raises(ValueError, match="parse"):
        perm.from_cycles("0 1", 3)
    with pytest.raises(ValueError, match="length"):
        perm.compose([1, 0], [0, 1, 2])


@pytest.mark.parametrize("cycles", [5, [1, 2], None])
def test_from_cycles_refuses_what_is_not_cycles(cycles):
    with pytest.raises(TypeError, match=r"cycles must be a string like '\(0 1 2\)\(3 4\)'"):
        perm.from_cycles(cycles, 3)


@pytest.mark.parametrize("axis, exc, words", [
    (0.5, TypeError, "axis must be an int, got float"),
    (True, TypeError, "axis must be an int, got bool"),
    ("0", TypeError, "axis must be an int, got str"),
    (2, ValueError, "axis=2 is out of range for an array of 2 dimensions"),
])
def test_apply_validates_axis(axis, exc, words):
    with pytest.raises(exc, match=words):
        perm.apply([1, 0], np.ones((2, 2)), axis=axis)


def test_uint64_generators_past_int64_are_named_not_wrapped():
    with pytest.raises(ValueError, match="18446744073709551615, too large"):
        ps.order(np.array([[2**64 - 1, 0, 1]], dtype=np.uint64))
    assert ps.order(np.array([[2, 0, 1]], dtype=np.uint64)) == 3


def test_from_cycles_refuses_float_points():
    with pytest.raises(TypeError, match="integer"):
        perm.from_cycles([[0, 1.7]], 3)
