"""``_arrays.sorted_unique`` against ``np.unique``."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paramshare_nb._arrays import sorted_unique


@given(st.lists(st.integers(-2**62, 2**62), max_size=50), st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_sorted_unique_is_np_unique(values, repeat):
    a = np.array(values * repeat, dtype=np.int64)
    got = sorted_unique(a)
    np.testing.assert_array_equal(got, np.unique(a))
    assert got.dtype == np.int64


def test_sorted_unique_flattens_like_np_unique():
    a = np.array([[3, 1], [3, 2]])
    np.testing.assert_array_equal(sorted_unique(a), [1, 2, 3])
    assert sorted_unique(np.zeros(0, np.int64)).shape == (0,)
