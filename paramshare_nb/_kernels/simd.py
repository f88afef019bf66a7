"""Explicit SIMD vectors for numba kernels: one vector type and a few intrinsics.

LLVM does not vectorise numba loops whose arrays it cannot prove disjoint,
and a small matrix product written as scalar loops runs at a fraction of the
core's rate.  With these intrinsics a kernel keeps a register tile of vectors
as ordinary local variables and says exactly which loads, broadcasts and
fused multiply-adds it wants; LLVM allocates the registers.

A vector is 32 bytes of the array's float dtype (8 float32 or 4 float64: one
AVX register).  On CPUs with narrower registers LLVM splits each operation,
and without FMA hardware it calls ``fma``: slower, never wrong.

Every index is a *flat* element offset into a C-contiguous array and is not
bounds-checked: the calling kernel guarantees ``i + lanes(arr) <= arr.size``
for :func:`vload`/:func:`vstore`, and ``i + n <= arr.size`` for the partial
:func:`vload_n`/:func:`vstore_n`, which touch only the first ``n`` lanes
(none when ``n <= 0``).

numba's on-disk cache keys a kernel on its own file only: after editing this
module, touch the kernel modules that use it (or clear their ``__pycache__``)
so that they are compiled again.
"""

from __future__ import annotations

import llvmlite.binding as ll
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, register_model

#: Bytes per vector (one AVX register).
WIDTH = 32


def _registers():
    """Vector registers the kernels are compiled for: 32 with AVX-512 (its VL extension
    gives the 32-byte vectors the upper 16), else 16."""
    features = config.CPU_FEATURES or ll.get_host_cpu_features().flatten()
    return 32 if "+avx512vl" in features.split(",") else 16


#: Vector registers of the CPU the kernels are compiled for (:func:`_registers`).
REGISTERS = _registers()

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class Vector(types.Type):
    """``lanes`` values of ``dtype`` held in one SIMD register."""

    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vector({dtype} x {lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _vector_of(arr):
    if not (isinstance(arr, types.Array) and arr.layout == "C"
            and arr.dtype in (types.float32, types.float64)):
        raise TypeError(f"SIMD intrinsics take C-contiguous float32/float64 arrays, got {arr}")
    return Vector(arr.dtype, WIDTH // (arr.dtype.bitwidth // 8))


def _store_checked(arr, v):
    """The vector type of ``arr``; a TypeError unless ``v`` is exactly it."""
    vt = _vector_of(arr)
    if v != vt:
        raise TypeError(f"cannot store a {v} into {arr}; vectors must match the array's dtype")
    return vt


def _align(arr):
    return arr.dtype.bitwidth // 8


def _address(context, builder, arrty, arr, i, vt=None):
    """Pointer to flat element ``i`` of ``arr`` (as a vector pointer when ``vt`` is given)."""
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.gep(data, [i])
    return ptr if vt is None else builder.bitcast(ptr, context.get_value_type(vt).as_pointer())


def _splat(builder, llvt, scalar):
    one = builder.insert_element(ir.Constant(llvt, None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, llvt.count),
                                                        [0] * llvt.count))


def _mangled(llvt):
    """LLVM's name suffix for a float vector type: ``v8f32``, ``v4f64``."""
    return f"v{llvt.count}f{32 if isinstance(llvt.element, ir.FloatType) else 64}"


@intrinsic
def lanes(typingctx, arr):
    """Lanes per vector of ``arr``'s dtype, a compile-time constant."""
    n = _vector_of(arr).lanes
    return types.intp(arr), lambda context, builder, sig, args: ir.Constant(_I64, n)


@intrinsic
def vzero(typingctx, arr):
    """A vector of zeros in ``arr``'s dtype."""
    vt = _vector_of(arr)
    return vt(arr), lambda context, builder, sig, args: ir.Constant(
        context.get_value_type(vt), None)


@intrinsic
def vload(typingctx, arr, i):
    """``arr.flat[i : i + lanes]``."""
    vt = _vector_of(arr)

    def codegen(context, builder, sig, args):
        return builder.load(_address(context, builder, sig.args[0], args[0], args[1], vt),
                            align=_align(arr))
    return vt(arr, types.intp), codegen


@intrinsic
def vload_n(typingctx, arr, i, n):
    """``arr.flat[i : i + n]`` in the first ``n`` lanes, zeros in the rest (nothing else read)."""
    vt = _vector_of(arr)

    def codegen(context, builder, sig, args):
        # one guarded scalar load per lane (LLVM folds the slot into registers); no
        # masked-load intrinsic, whose name depends on the LLVM version's pointer types
        slot = cgutils.alloca_once_value(builder, ir.Constant(context.get_value_type(vt), None))
        for lane in range(vt.lanes):
            with builder.if_then(builder.icmp_signed(">", args[2], ir.Constant(_I64, lane))):
                ptr = _address(context, builder, sig.args[0], args[0],
                               builder.add(args[1], ir.Constant(_I64, lane)))
                value = builder.load(ptr, align=_align(arr))
                builder.store(builder.insert_element(builder.load(slot), value,
                                                     ir.Constant(_I32, lane)), slot)
        return builder.load(slot)
    return vt(arr, types.intp, types.intp), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """``arr.flat[i : i + lanes] = v``."""
    _store_checked(arr, v)

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], sig.args[2])
        builder.store(args[2], ptr, align=_align(arr))
        return context.get_dummy_value()
    return types.none(arr, types.intp, v), codegen


@intrinsic
def vstore_n(typingctx, arr, i, v, n):
    """``arr.flat[i : i + n] = v[:n]`` (nothing else written)."""
    _store_checked(arr, v)

    def codegen(context, builder, sig, args):
        for lane in range(v.lanes):
            with builder.if_then(builder.icmp_signed(">", args[3], ir.Constant(_I64, lane))):
                ptr = _address(context, builder, sig.args[0], args[0],
                               builder.add(args[1], ir.Constant(_I64, lane)))
                builder.store(builder.extract_element(args[2], ir.Constant(_I32, lane)), ptr,
                              align=_align(arr))
        return context.get_dummy_value()
    return types.none(arr, types.intp, v, types.intp), codegen


@intrinsic
def vbcast(typingctx, arr, i):
    """``arr.flat[i]`` in every lane."""
    vt = _vector_of(arr)

    def codegen(context, builder, sig, args):
        scalar = builder.load(_address(context, builder, sig.args[0], args[0], args[1]),
                              align=_align(arr))
        return _splat(builder, context.get_value_type(vt), scalar)
    return vt(arr, types.intp), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c``, fused (one rounding)."""
    if not (isinstance(a, Vector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        llvt = args[0].type
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(llvt, [llvt] * 3),
            f"llvm.fma.{_mangled(llvt)}")
        return builder.call(fn, list(args))
    return a(a, b, c), codegen


@intrinsic
def vsum(typingctx, a):
    """The sum of the lanes of ``a`` (in lane order)."""
    if not isinstance(a, Vector):
        return None

    def codegen(context, builder, sig, args):
        total = builder.extract_element(args[0], ir.Constant(_I32, 0))
        for lane in range(1, a.lanes):
            total = builder.fadd(total, builder.extract_element(args[0], ir.Constant(_I32, lane)))
        return total
    return a.dtype(a), codegen


@intrinsic
def vadd(typingctx, a, b):
    """``a + b``."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, sig, args: builder.fadd(*args)


@intrinsic
def vsub(typingctx, a, b):
    """``a - b``."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), lambda context, builder, sig, args: builder.fsub(*args)


def _pairwise(pick):
    """An intrinsic ``f(a, b)`` that picks lanes of ``a`` (``0 .. lanes - 1``) and ``b``
    (``lanes ..``) by the list ``pick(lanes)``."""
    @intrinsic
    def f(typingctx, a, b):
        if not (isinstance(a, Vector) and a == b):
            return None

        def codegen(context, builder, sig, args):
            mask = pick(a.lanes)
            return builder.shuffle_vector(args[0], args[1], ir.Constant(
                ir.VectorType(_I32, len(mask)), mask))
        return a(a, b), codegen
    return f


#: Even lanes of each pair, ``a``'s then ``b``'s, per 16 bytes: with :data:`_odds`, the
#: two halves of x86's ``hadd`` (``vhaddps``: ``[a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, ...]``).
_evens = _pairwise(lambda n: [0, 2, 8, 10, 4, 6, 12, 14] if n == 8 else [0, 4, 2, 6])
_odds = _pairwise(lambda n: [1, 3, 9, 11, 5, 7, 13, 15] if n == 8 else [1, 5, 3, 7])
#: The low halves of ``a`` and ``b``, and their high halves.
vlows = _pairwise(lambda n: list(range(n // 2)) + list(range(n, n + n // 2)))
vhighs = _pairwise(lambda n: list(range(n // 2, n)) + list(range(n + n // 2, 2 * n)))


@intrinsic
def vkeep(typingctx, a, n):
    """``a`` with its lanes from ``n`` on set to zero (a select: no multiply, so ``inf``
    and ``nan`` there do not leak)."""
    if not isinstance(a, Vector):
        return None

    def codegen(context, builder, sig, args):
        count = a.lanes
        index = ir.Constant(ir.VectorType(_I64, count), list(range(count)))
        bound = _splat(builder, ir.VectorType(_I64, count), args[1])
        inside = builder.icmp_signed("<", index, bound)
        return builder.select(inside, args[0], ir.Constant(args[0].type, None))
    return a(a, types.intp), codegen


# ---------------------------------------------------------------------------
# helpers for kernels built on these intrinsics
# ---------------------------------------------------------------------------
#: Decorator of helpers that kernels inline: compiled without NRT, like the kernels
#: (``cpu.kernel(nrt=False)``), since reference counting the arrays handed to an
#: inlined helper puts atomic calls into the innermost loops (measured 4x slower).
inline = njit(nogil=True, inline="always", _nrt=False)


@inline
def load(a, i, n):
    """The ``n`` values at flat ``i`` (every lane when ``n >= lanes``), zeros after."""
    if n >= lanes(a):
        return vload(a, i)
    return vload_n(a, i, n)


@inline
def store(a, i, v, n):
    """Flat ``a[i : i + n] = v[:n]`` (a full vector when ``n >= lanes``)."""
    if n >= lanes(a):
        vstore(a, i, v)
    else:
        vstore_n(a, i, v, n)


@inline
def store_over(a, i, v, n, end):
    """Flat ``a[i : i + n] = v[:n]``, as one whole vector when it ends by flat ``end``.

    For kernels that write the rows of ``a`` in increasing order and the
    columns of each block of rows from the last vector down: the lanes past
    ``n`` land in the next rows' first values, which are written afterwards,
    and never past ``end`` (the first value that the calling thread does not
    own).  One compare instead of :func:`vstore_n`'s lane-by-lane stores.
    """
    if i + lanes(a) <= end:
        vstore(a, i, v)
    else:
        store(a, i, v, n)


@inline
def store8(a, i, step, n, v0, v1, v2, v3, v4, v5, v6, v7):
    """An 8-row register tile: ``v_j``'s first ``n`` values at flat ``i + j * step``."""
    store(a, i, v0, n)
    store(a, i + step, v1, n)
    store(a, i + 2 * step, v2, n)
    store(a, i + 3 * step, v3, n)
    store(a, i + 4 * step, v4, n)
    store(a, i + 5 * step, v5, n)
    store(a, i + 6 * step, v6, n)
    store(a, i + 7 * step, v7, n)


@inline
def vhadd(a, b):
    """x86's ``hadd``: sums of adjacent lanes, per 16 bytes ``a``'s then ``b``'s."""
    return vadd(_evens(a, b), _odds(a, b))


@inline
def vsums(buf, i):
    """The lane sums of the ``lanes`` vectors at flat ``i`` of ``buf``, as one vector
    (``[sum(v0), sum(v1), ...]``): 6 ``hadd``s, 2 shuffles and an add for 8 sums (2, 2
    and 1 for 4), instead of 8 lane-by-lane sums of 7 additions each."""
    L = lanes(buf)
    if L == 8:
        a = vhadd(vhadd(vload(buf, i), vload(buf, i + L)),
                  vhadd(vload(buf, i + 2 * L), vload(buf, i + 3 * L)))
        b = vhadd(vhadd(vload(buf, i + 4 * L), vload(buf, i + 5 * L)),
                  vhadd(vload(buf, i + 6 * L), vload(buf, i + 7 * L)))
    else:
        a = vhadd(vload(buf, i), vload(buf, i + L))
        b = vhadd(vload(buf, i + 2 * L), vload(buf, i + 3 * L))
    return vadd(vlows(a, b), vhighs(a, b))


@inline
def aligned(raw, rows, cols):
    """The first ``rows x cols`` values of the 1-D ``raw`` from its first :data:`WIDTH`-byte
    boundary on, as a C-contiguous matrix (``raw`` holds ``lanes - 1`` values to spare).

    numpy allocates at 16-byte boundaries, so half of the vectors of a scratch
    matrix can straddle two cache lines: the fused backward, which loads
    ``W``'s vectors on every row, took 20.8-21.4 us with ``W`` 16 bytes off
    the boundary against 18.5 us on it.
    """
    skip = (-raw.ctypes.data % WIDTH) // raw.itemsize
    return raw[skip:skip + rows * cols].reshape((rows, cols))
