"""Device arrays from paramshare_nb._kernels.cuda_memory: CuPy's pool and cheap views
on a device with CuPy, numba's own calls elsewhere; the same arrays either way."""

import numpy as np
import pytest

from paramshare_nb._kernels import cuda_memory as cm

cuda = pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device or simulator")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 1, 3), (0, 3), 7])
def test_empty_is_a_writable_c_contiguous_device_array(shape, dtype):
    a = cm.empty(shape, dtype)
    want = (shape,) if isinstance(shape, int) else shape
    assert tuple(a.shape) == want and np.dtype(a.dtype) == np.dtype(dtype)
    assert a.is_c_contiguous()
    host = np.arange(int(np.prod(want)), dtype=dtype).reshape(want)
    if host.size:
        a.copy_to_device(host)
    np.testing.assert_array_equal(a.copy_to_host(), host)


def test_pooled_memory_lives_as_long_as_its_array_and_views():
    kept = []
    for k in range(20):  # freed and reused in between: every kept array keeps its values
        a = cm.empty((64,), np.float32)
        a.copy_to_device(np.full(64, k, np.float32))
        kept.append(cm.view(a, (8, 8)))
        del a
        cm.empty((64,), np.float32)  # a neighbour that dies at once
    for k, v in enumerate(kept):
        np.testing.assert_array_equal(v.copy_to_host(), np.full((8, 8), k, np.float32))


def test_view_reshapes_like_numba():
    a = cuda.to_device(np.arange(24, dtype=np.float64))
    for shape in [(2, 3, 4), (24,), 24, (4, 6), (1, 24)]:
        v = cm.view(a, shape)
        np.testing.assert_array_equal(v.copy_to_host(), np.arange(24.0).reshape(shape))
        assert tuple(v.strides) == np.arange(24.0).reshape(shape).strides
    with pytest.raises(ValueError):
        cm.view(cuda.to_device(np.arange(24.0)), (5, 5))
    strided = cuda.to_device(np.arange(24.0).reshape(4, 6))[:, ::2]  # numba's reshape decides
    try:
        v = cm.view(strided, (12,))
    except NotImplementedError:  # a device: numba does not copy in a reshape
        return
    np.testing.assert_array_equal(v.copy_to_host(), np.arange(24.0).reshape(4, 6)[:, ::2].ravel())


def test_no_driver_leaves_numbas_allocation(monkeypatch):
    # on a machine with numba-cuda but no driver, importing the CUDA twin must not fail
    # here: its first call says how to get CUDA (found with the driver library missing)
    import numba

    def no_driver():
        raise RuntimeError("the NVIDIA driver library was not found")
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(cm.cuda_launch, "context_key", no_driver)
    assert cm._load() is None


def test_the_pool_takes_small_arrays_only_and_stops_when_it_cannot(monkeypatch):
    allocs = []

    class Cupy:
        class cuda:
            Stream = type("Stream", (), {"null": __import__("contextlib").nullcontext()})

            @staticmethod
            def alloc(n):
                allocs.append(n)
                return type("Memory", (), {"ptr": 4096})()

    class Driver:
        binding = type("binding", (), {"CUdeviceptr": staticmethod(int)})

        @staticmethod
        def MemoryPointer(ctx, ptr, n, owner):
            return ("memory", ctx, ptr, n, owner)

    monkeypatch.setattr(cm, "_LIB", (Cupy, Driver))
    monkeypatch.setattr(cm, "_ARRAY", lambda shape, strides, dtype, gpu_data: (
        "pooled", shape, strides, gpu_data[:4]))
    monkeypatch.setattr(cm.cuda_launch, "closed", False)
    monkeypatch.setattr(cm.cuda_launch, "current_context", lambda: (7, "ctx"))
    monkeypatch.setattr(cm.cuda, "device_array", lambda shape, dtype: ("numba", shape))
    assert cm.empty((4, 3), np.float32) == ("pooled", (4, 3), (12, 4), ("memory", "ctx", 4096, 48))
    assert cm.empty(cm.POOLED_BELOW // 4, np.float32) == ("numba", (cm.POOLED_BELOW // 4,))
    assert cm.empty((0, 3), np.float32)[0] == "numba"
    monkeypatch.setattr(cm.cuda_launch, "current_context", lambda: (0, None))  # none current
    assert cm.empty(5, np.float32)[0] == "numba"
    monkeypatch.setattr(cm.cuda_launch, "current_context", lambda: (7, "ctx"))
    monkeypatch.setattr(cm.cuda_launch, "closed", True)  # numba.cuda.close() freed the pool
    assert cm.empty(5, np.float32)[0] == "numba"
    monkeypatch.setattr(cm.cuda_launch, "closed", False)
    assert allocs == [48]

    def out_of_memory(n):
        raise MemoryError("out of memory allocating 20 bytes")
    monkeypatch.setattr(Cupy.cuda, "alloc", staticmethod(out_of_memory))
    with pytest.raises(MemoryError):
        cm.empty(5, np.float32)

    def broken(n):
        raise RuntimeError("cudaErrorInsufficientDriver")
    monkeypatch.setattr(Cupy.cuda, "alloc", staticmethod(broken))
    assert cm.empty(5, np.float32)[0] == "numba" and cm._LIB is None
