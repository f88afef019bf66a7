"""Kernel launches with the arguments packed here rather than by numba-cuda.

On an H200 host, numba-cuda 0.30 took 41 us to launch a kernel of four device-array
arguments, and cuda.core's ``launch`` of the same kernel 7.3 us once given the packed
arguments (``benchmarks/gpu_check.py --kernels``, the primitives): the difference is
numba turning each array into a strided memory view and back into integers.  Every
small multiply makes several launches, so that was most of its time.

This module's kernels take only C-contiguous device arrays and Python ints, whose
packing numba's data model fixes: an array is ``(meminfo, parent, size, itemsize, data
pointer, *shape, *strides)`` with the first two null, an int a C ``int64``.  The first
launch of each argument signature goes through numba (which compiles, types and
launches), and records the compiled function for the current context; later ones pack
their arguments here.  Anything else (the simulator, another numba-cuda whose internals
are missing, a host array or a non-contiguous view, no current context, a debug or
cooperative kernel) takes numba's own path.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numba

#: (context handle, dispatcher, signature key) -> cuda.core kernel, or None for numba's path
_COMPILED: dict = {}
_CONFIGS: dict = {}
#: numba's Context per context handle: a context numba reset (``numba.cuda.close()``) gets
#: a new Context object, while its handle can come back
_CONTEXTS: dict = {}
#: Whether numba has reset a context this module used.  Everything made in it is gone,
#: CuPy's pooled memory and cuBLAS handle included, so :mod:`.cuda_memory` and
#: :mod:`.cuda_blas` leave CuPy alone from then on.
closed = False


class _Internals(NamedTuple):
    """What a packed launch needs of cuda.core, cuda.bindings and numba-cuda."""

    binding: Any  # cuda.bindings.driver
    handle_of: Any  # cuda.bindings.utils.get_cuda_native_handle
    config: Any  # cuda.core.LaunchConfig
    launch: Any  # cuda.core.launch
    array_type: type  # numba-cuda's DeviceNDArray
    stream: Any  # the legacy default stream, as cuda.core takes it


def _internals():
    """cuda.core's launch pieces and numba-cuda's device-array type, or None."""
    if numba.config.ENABLE_CUDASIM:
        return None
    try:
        from cuda.bindings import driver as binding
        from cuda.bindings.utils import get_cuda_native_handle
        from cuda.core import LaunchConfig, launch
        from numba.cuda.cudadrv import driver
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        stream = driver._to_core_stream(0)
    except Exception:  # noqa: BLE001 - another numba-cuda, or no driver: numba's path
        return None
    return _Internals(binding, get_cuda_native_handle, LaunchConfig, launch, DeviceNDArray,
                      stream)


_FAST = _internals()


def _key(args, array_type):
    """The arguments' signature (dtype and rank per array, ``int`` per int), or None when
    one is neither a C-contiguous, non-broadcast device array nor a Python int."""
    key = []
    for a in args:
        if type(a) is int:
            key.append(int)
        elif (type(a) is array_type and a.is_c_contiguous()
              and (a.size == 0 or 0 not in a.strides)):
            key.append((a.dtype, a.ndim))
        else:
            return None
    return tuple(key)


def _compiled(dispatcher, args):
    """The cuda.core kernel numba compiled for ``args`` on the current device, if the
    signature it typed ``args`` with is the one packed here (C-layout arrays, int64)."""
    from numba.cuda import types
    sig = tuple(dispatcher.typeof_pyval(a) for a in args)
    if not all(t == types.int64 or (isinstance(t, types.Array) and t.layout == "C")
               for t in sig):
        return None
    overload = dispatcher.overloads.get(sig)
    if overload is None or tuple(overload.argument_types) != sig:
        return None
    # numba's launch does more for these: checks a debug kernel's error flag after it,
    # launches a cooperative one as such, and lets extensions convert the arguments
    if getattr(overload, "debug", True) or getattr(overload, "cooperative", True) \
            or getattr(overload, "extensions", None):
        return None
    return overload._codelibrary.get_cufunc().kernel


def _config(grid, block):
    hit = _CONFIGS.get((grid, block))
    if hit is None:
        dims = [tuple(d) + (1,) * (3 - len(d)) if isinstance(d, tuple) else (d, 1, 1)
                for d in (grid, block)]
        hit = _CONFIGS[grid, block] = _FAST.config(grid=dims[0], block=dims[1], shmem_size=0)
    return hit


def pointer(a) -> int:
    """The device address of a numba device array's data (0 for no memory)."""
    data = a.gpu_data
    return 0 if data is None else int(data.device_pointer)


def _packed(args):
    out = []
    for a in args:
        if type(a) is int:
            out.append(ctypes.c_int64(a))
        else:
            out += (0, 0, a.size, a.dtype.itemsize, pointer(a))
            out += a.shape
            out += a.strides
    return out


def context_key():
    """The current CUDA context's handle (an int; 0 with none), or None in the simulator
    and where the bindings are missing: a cheap key for per-device caches."""
    if _FAST is None:
        return None
    return _FAST.handle_of(_FAST.binding.cuCtxGetCurrent()[1])


def _numba_context():
    from numba.cuda.cudadrv import devices
    return devices.get_context()


def current_context():
    """``(handle, numba Context)`` of this thread's current CUDA context: ``(0, None)``
    with none current, ``(None, None)`` where :func:`context_key` is None.

    Caches keyed by the handle stay valid while numba's Context for it is its device's
    primary context; once numba has reset it, they are cleared and :data:`closed` set.
    """
    key = context_key()
    if not key:
        return key, None
    ctx = _CONTEXTS.get(key)
    if ctx is None or ctx.device.primary_context is not ctx:
        if ctx is not None:
            _forget_all()
        ctx = _CONTEXTS[key] = _numba_context()
    return key, ctx


def _forget_all():
    global closed
    closed = True
    _COMPILED.clear()
    _CONTEXTS.clear()


def launch(dispatcher, grid, block, *args):
    """``dispatcher[grid, block](*args)`` on the default stream, packed here when it can be."""
    if _FAST is None:
        dispatcher[grid, block](*args)
        return
    sig = _key(args, _FAST.array_type)
    if sig is None:
        dispatcher[grid, block](*args)
        return
    key, _ = current_context()
    if not key:  # no context current yet: numba's launch makes one, and nothing is kept
        dispatcher[grid, block](*args)
        return
    where = (key, dispatcher, sig)
    kernel = _COMPILED.get(where, False)
    if kernel is False:  # first launch here: numba compiles, types and launches it
        dispatcher[grid, block](*args)
        _COMPILED[where] = _compiled(dispatcher, args)
        return
    if kernel is None:
        dispatcher[grid, block](*args)
        return
    _FAST.launch(_FAST.stream, _config(grid, block), kernel, *_packed(args))
