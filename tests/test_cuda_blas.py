"""cuBLAS through CuPy (paramshare_nb._kernels.cuda_blas) against a column-major GEMM
written here in numpy: the row-major to column-major mapping, and the fallbacks.

On a device with CuPy, test_cuda.py's GEMM test runs the real thing."""

import contextlib

import numpy as np
import pytest

from paramshare_nb._kernels import cuda_blas as cb


class Buf:
    """A device array as cuda_blas reads it; its "pointer" names a numpy buffer."""

    registry: dict = {}

    def __init__(self, a):
        self.host = np.ascontiguousarray(a)
        self.shape, self.dtype = self.host.shape, self.host.dtype
        ptr = 4096 * (len(Buf.registry) + 1)
        Buf.registry[ptr] = self.host.reshape(-1)
        self.gpu_data = type("Ptr", (), {"device_pointer": ptr})()

    def is_c_contiguous(self):
        return True


def _colmajor(flat, ld, rows, cols):
    """The ``rows x cols`` column-major matrix at ``flat`` with leading dimension ``ld``."""
    return flat[:ld * cols].reshape(cols, ld).T[:rows]


def _gemm(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    assert lda >= max(1, k if transa else m) and ldb >= max(1, n if transb else k)
    assert ldc >= max(1, m)
    op_a = _colmajor(Buf.registry[a], lda, k, m).T if transa else \
        _colmajor(Buf.registry[a], lda, m, k)
    op_b = _colmajor(Buf.registry[b], ldb, n, k).T if transb else \
        _colmajor(Buf.registry[b], ldb, k, n)
    _colmajor(Buf.registry[c], ldc, m, n)[...] = op_a @ op_b


def _fake_lib(sgemm=_gemm):
    cublas = type("cublas", (), {"sgemm": staticmethod(sgemm), "dgemm": staticmethod(sgemm)})
    cupy = type("cupy", (), {})()
    cupy.cuda = type("cuda", (), {})()
    cupy.cuda.Stream = type("Stream", (), {"null": contextlib.nullcontext()})
    cupy.cuda.device = type("device", (), {"get_cublas_handle": staticmethod(lambda: 1)})
    return cublas, cupy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_major_products_map_onto_column_major_gemm(monkeypatch, dtype):
    monkeypatch.setattr(cb, "_LIB", _fake_lib())
    monkeypatch.setattr(cb.cuda_launch, "closed", False)
    rng = np.random.default_rng(0)
    for r, k, s in [(7, 5, 9), (1, 3, 4), (6, 1, 1)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, r) if ta else (r, k)).astype(dtype)
                b = rng.standard_normal((s, k) if tb else (k, s)).astype(dtype)
                c = Buf(np.full((r, s), np.nan, dtype))
                assert cb.gemm(Buf(a), Buf(b), c, ta, tb)
                want = (a.T if ta else a) @ (b.T if tb else b)
                np.testing.assert_allclose(c.host, want, rtol=1e-5, atol=1e-5)


def test_what_cublas_is_not_given(monkeypatch):
    monkeypatch.setattr(cb, "_LIB", _fake_lib())
    monkeypatch.setattr(cb.cuda_launch, "closed", False)
    f32, f64 = np.ones((2, 2), np.float32), np.ones((2, 2))
    assert not cb.gemm(Buf(f32), Buf(f64), Buf(f32), 0, 0)  # mixed dtypes
    assert not cb.gemm(Buf(np.ones((2, 0), np.float32)), Buf(np.ones((0, 2), np.float32)),
                       Buf(f32), 0, 0)  # k = 0: the numba kernel writes the zeros
    assert cb.gemm(Buf(np.ones((0, 2), np.float32)), Buf(f32), Buf(np.ones((0, 2), np.float32)),
                   0, 0)  # nothing to write
    monkeypatch.setattr(cb.cuda_launch, "closed", True)  # numba.cuda.close() took the handle
    assert not cb.available() and not cb.gemm(Buf(f32), Buf(f32), Buf(f32), 0, 0)


def test_a_failing_cublas_hands_over_to_numba_for_good(monkeypatch):
    def broken(*args):
        raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")
    monkeypatch.setattr(cb, "_LIB", _fake_lib(broken))
    monkeypatch.setattr(cb.cuda_launch, "closed", False)
    f32 = np.ones((2, 2), np.float32)
    assert not cb.gemm(Buf(f32), Buf(f32), Buf(f32), 0, 0)
    assert cb._LIB is None and not cb.available()


def test_per_thread_default_streams_leave_cupy_alone(monkeypatch):
    import numba
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    monkeypatch.setenv("CUDA_PYTHON_CUDA_PER_THREAD_DEFAULT_STREAM", "1")
    from paramshare_nb._kernels import cuda_memory
    assert cb._load() is None and cuda_memory._load() is None
