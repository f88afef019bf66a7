"""The SIMD intrinsics of the CPU kernels (``_kernels.simd``) against plain numpy."""

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from paramshare_nb._kernels.simd import (
    lanes,
    store8,
    vadd,
    vbcast,
    vfma,
    vload,
    vload_n,
    vstore,
    vstore_n,
    vsum,
    vzero,
)


@njit(cache=True)
def _partial_copy(src, i, n, dst, j):
    """``dst[j : j + n] = src[i : i + n]`` through one vector; returns the lane count."""
    vstore_n(dst, j, vload_n(src, i, n), n)
    return lanes(src)


@njit(cache=True)
def _axpy_plus(a, x, y, z, out):
    """``out[:L] = a[0] * x[:L] + y[:L] + z[:L]`` (one vector of each); returns ``sum(x[:L])``."""
    vstore(out, 0, vadd(vfma(vbcast(a, 0), vload(x, 0), vload(y, 0)),
                        vadd(vload(z, 0), vzero(z))))
    return vsum(vload(x, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_loads_and_stores_touch_only_n_lanes(dtype):
    src = np.arange(1, 21, dtype=dtype)
    lane_count = 32 // np.dtype(dtype).itemsize
    for n in (-1, 0, 1, 3, lane_count - 1, lane_count, lane_count + 3):
        dst = np.full(20, -7, dtype)
        assert _partial_copy(src, 2, n, dst, 5) == lane_count
        k = min(max(n, 0), lane_count)
        expected = np.full(20, -7, dtype)
        expected[5:5 + k] = src[2:2 + k]
        np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fma_broadcast_add(dtype):
    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal(8).astype(dtype) for _ in range(3))
    a = np.array([1.5], dtype)
    out = np.zeros(8, dtype)
    total = _axpy_plus(a, x, y, z, out)
    n = 32 // np.dtype(dtype).itemsize
    np.testing.assert_allclose(total, x[:n].sum(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[:n], 1.5 * x[:n] + y[:n] + z[:n], rtol=1e-6, atol=1e-6)
    assert not out[n:].any()


@njit(cache=True)
def _tile_rows(src, dst, step, n):
    """Rows ``j = 0..7`` of ``dst`` (flat offsets ``j * step``) from vector ``j`` of ``src``."""
    L = lanes(src)
    store8(dst, 0, step, n, vload(src, 0), vload(src, L), vload(src, 2 * L), vload(src, 3 * L),
           vload(src, 4 * L), vload(src, 5 * L), vload(src, 6 * L), vload(src, 7 * L))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store8_writes_n_values_per_row(dtype):
    lane_count = 32 // np.dtype(dtype).itemsize
    src = np.arange(1, 8 * lane_count + 1, dtype=dtype)
    for n in (1, lane_count - 1, lane_count):
        dst = np.full((8, lane_count + 2), -7, dtype)
        _tile_rows(src, dst, lane_count + 2, n)
        expected = np.full((8, lane_count + 2), -7, dtype)
        expected[:, :n] = src.reshape(8, lane_count)[:, :n]
        np.testing.assert_array_equal(dst, expected)


@njit(cache=True)
def _store_zero_like(src, dst):
    vstore(dst, 0, vzero(src))


@njit(cache=True)
def _store_zero_like_n(src, dst):
    vstore_n(dst, 0, vzero(src), 2)


def test_refuses_integer_and_non_contiguous_arrays():
    with pytest.raises((TypeError, TypingError), match="C-contiguous float32/float64"):
        _partial_copy(np.arange(8), 0, 2, np.zeros(8, np.int64), 0)
    with pytest.raises((TypeError, TypingError), match="C-contiguous float32/float64"):
        _partial_copy(np.zeros(16)[::2], 0, 2, np.zeros(8), 0)
    for store in (_store_zero_like, _store_zero_like_n):
        with pytest.raises((TypeError, TypingError), match="C-contiguous float32/float64"):
            store(np.zeros(8), np.zeros(16)[::2])
        with pytest.raises((TypeError, TypingError), match="C-contiguous float32/float64"):
            store(np.zeros(8), np.zeros(8, np.int64))
        with pytest.raises((TypeError, TypingError), match="must match the array's dtype"):
            store(np.zeros(8), np.zeros(8, np.float32))
