"""cuBLAS's GEMM for ``"materialize"`` on the GPU, through CuPy when it is installed.

The CPU's ``"materialize"`` hands its products to BLAS; this is the GPU's twin.  On an
H200 the three products of w2 (C_64, 16 -> 16 channels, batch 64) took 0.54 ms in the
tiled numba kernel (``cuda.gemm``) and 0.11 ms in cuBLAS (``gpu_check.py``).  CuPy is
optional: without it (and in the simulator) the numba kernel does the products.  The
call goes straight to CuPy's thin cuBLAS binding with the arrays' device pointers, on
the legacy default stream where the numba kernels run, so no array is wrapped.
"""

from __future__ import annotations

import numba
import numpy as np

from . import cuda_launch

#: cuBLAS's operation codes
_N, _T = 0, 1
_INT_MAX = 2**31 - 1


def _load():
    """``(cublas module, cupy module)``, or None without CuPy, in the simulator and under
    per-thread default streams (kept apart from them, as :mod:`.cuda_memory` is)."""
    from .cuda_memory import _per_thread_streams
    if numba.config.ENABLE_CUDASIM or _per_thread_streams():
        return None
    try:
        import cupy
        from cupy_backends.cuda.libs import cublas
    except Exception:  # noqa: BLE001 - not installed, or no CUDA for it: the numba GEMM
        return None
    return cublas, cupy


_LIB = _load()
#: alpha = 1 and beta = 0 per dtype, host memory cuBLAS reads by pointer
_SCALARS = {np.dtype(t): (np.ones(1, t), np.zeros(1, t)) for t in (np.float32, np.float64)}


def available() -> bool:
    """Whether :func:`gemm` can run (CuPy importable and working, a real device, and no
    ``numba.cuda.close()`` since: it destroys CuPy's cuBLAS handle with the context)."""
    return _LIB is not None and not cuda_launch.closed


def gemm(a, b, c, ta, tb) -> bool:
    """``c = op(a) @ op(b)`` by cuBLAS for row-major, C-contiguous 2-D device arrays of
    one float dtype; ``op`` transposes when ``ta``/``tb``.  Returns False, having done
    nothing, where cuBLAS cannot take it (no CuPy, other layouts, 32-bit overflow).

    Row-major ``c`` is column-major ``c.T``, and ``c.T = op(b).T @ op(a).T``: cuBLAS
    multiplies ``b`` then ``a``, each with its row length as the leading dimension.
    """
    global _LIB
    if not available() or not (a.is_c_contiguous() and b.is_c_contiguous()
                               and c.is_c_contiguous()):
        return False
    dtype = np.dtype(c.dtype)
    if dtype not in _SCALARS or not (np.dtype(a.dtype) == np.dtype(b.dtype) == dtype):
        return False
    nr, ns = c.shape
    nk = a.shape[0] if ta else a.shape[1]
    if nr == 0 or ns == 0:
        return True
    if nk == 0:  # c = 0: the numba kernel writes it
        return False
    if max(nr, ns, nk, a.shape[1], b.shape[1]) > _INT_MAX:
        return False
    cublas, cupy = _LIB
    one, zero = _SCALARS[dtype]
    call = cublas.sgemm if dtype == np.float32 else cublas.dgemm
    ptr = cuda_launch.pointer
    try:
        with cupy.cuda.Stream.null:  # the legacy default stream, as the numba launches
            call(cupy.cuda.device.get_cublas_handle(), _T if tb else _N, _T if ta else _N,
                 ns, nr, nk, one.ctypes.data, ptr(b), max(1, b.shape[1]),
                 ptr(a), max(1, a.shape[1]), zero.ctypes.data, ptr(c), ns)
    except Exception:  # noqa: BLE001 - CuPy imports but its cuBLAS fails: numba's GEMM
        _LIB = None  # from now on (beta = 0: whatever reached c is overwritten)
        return False
    return True
