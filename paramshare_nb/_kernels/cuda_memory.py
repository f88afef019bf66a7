"""Device arrays for the CUDA kernels: allocated from CuPy's memory pool where CuPy is
installed, and reshaped without numba-cuda's general machinery.

On an H200 host (``gpu_check.py --kernels``, the primitives) ``cuda.device_array`` took
45 us, 21 us of it numba's allocation, and each array it frees later costs a
``cuMemFree``, which waits for the device; a numba ``DeviceNDArray`` around memory that
is already there took 2.9 us and ``reshape`` 9.3 us.  A w2 forward + backward made six
arrays and sixteen reshapes.  CuPy's pool hands out memory in microseconds and takes
it back without freeing it; the arrays are numba's ``DeviceNDArray`` as before, on
memory that CuPy owns.

Only arrays under :data:`POOLED_BELOW` come from the pool: CuPy keeps what it is given
back (``cupy.get_default_memory_pool().free_all_blocks()`` returns it to the device),
and a large array's allocation is small beside the work on it.  numba allocates the
rest, and everything without CuPy, in the simulator, under per-thread default streams
(the pool's reuse follows one stream), and after ``numba.cuda.close()`` (which frees
CuPy's pooled memory behind its back).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np

from . import cuda_launch

try:
    from numba import cuda
except ImportError:  # pragma: no cover - numba without its CUDA part
    cuda = None

#: Bytes from which arrays come from numba's allocator rather than CuPy's pool.
POOLED_BELOW = 64 << 20


def _per_thread_streams() -> bool:
    """Whether the default stream is each thread's own (cuda-python's or numba's flag)."""
    flags = (os.environ.get("CUDA_PYTHON_CUDA_PER_THREAD_DEFAULT_STREAM", "0"),
             os.environ.get("NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM", "0"))
    return any(f.strip() not in ("", "0") for f in flags)


def _load():
    """What a pooled allocation needs, or None (no CuPy, the simulator, another
    numba-cuda, per-thread default streams)."""
    if numba.config.ENABLE_CUDASIM or _per_thread_streams():
        return None
    try:
        if cuda_launch.context_key() is None:  # no packed launches: no bindings either
            return None
        import cupy
        from numba.cuda.cudadrv import driver
    except Exception:  # noqa: BLE001 - not installed, or not usable here
        return None
    return cupy, driver


def _array_type():
    """numba-cuda's ``DeviceNDArray`` on a real device, else None (the simulator)."""
    if numba.config.ENABLE_CUDASIM or cuda is None:
        return None
    try:
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
    except ImportError:  # pragma: no cover - another numba-cuda
        return None
    return DeviceNDArray


_LIB = _load()
_ARRAY = _array_type()


def _strides(shape, itemsize):
    out, step = [], itemsize
    for s in reversed(shape):
        out.append(step)
        step *= max(s, 1)
    return tuple(reversed(out))


def empty(shape, dtype):
    """An uninitialised C-contiguous device array (``cuda.device_array``'s contract)."""
    global _LIB
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if _LIB is None or not 0 < nbytes < POOLED_BELOW or cuda_launch.closed:
        return cuda.device_array(shape, dtype=dtype)
    _, ctx = cuda_launch.current_context()
    if ctx is None:  # no context current yet: numba's allocation makes one
        return cuda.device_array(shape, dtype=dtype)
    cupy, driver = _LIB
    try:
        with cupy.cuda.Stream.null:  # reused in the order of the stream the kernels run on
            mem = cupy.cuda.alloc(nbytes)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - CuPy imports but cannot allocate: numba from now on
        _LIB = None
        return cuda.device_array(shape, dtype=dtype)
    data = driver.MemoryPointer(ctx, driver.binding.CUdeviceptr(mem.ptr), nbytes, owner=mem)
    return _ARRAY(shape, _strides(shape, dtype.itemsize), dtype, gpu_data=data)


def view(a, shape):
    """``a.reshape(shape)`` for a C-contiguous device array, without numba's general
    reshape where ``a`` is a plain ``DeviceNDArray`` (the sizes must agree)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if _ARRAY is None or type(a) is not _ARRAY or a.size == 0 or not a.is_c_contiguous():
        return a.reshape(shape)
    if math.prod(shape) != a.size:
        raise ValueError(f"cannot view {a.size} entries as shape {shape}")
    return _ARRAY(shape, _strides(shape, a.dtype.itemsize), a.dtype, gpu_data=a.gpu_data)
