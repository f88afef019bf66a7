"""Scratch arrays the tied multiply reuses from call to call.

A large array allocated afresh on every call comes back as new pages from
the kernel, and each page faults (and is zeroed) on its first write.  The
digits demo's model gathered a 4 MiB ``W`` and a 4 MiB ``dW`` for its
16 -> 16 channel layer on every step: 1,600-3,200 page faults a training
step, and 10.4-12.8 ms a step against 6.8-9.3 ms with both reused (batch
64, six pairs of alternating processes); ``compare.py``'s w2 and w3 took
5.8-6.3 and 24.2-24.7 ms against 3.3-4.2 and 16.0-17.0; ``"gather"``'s sums
for C_64 at 16 channels, batch 64, faulted 3,000 pages a call, now 49.  A :class:`Scratch`
hands out the same array again while nothing else holds it, and a fresh
one otherwise: a ``W`` kept for the backward, a view still alive, another
thread's call in flight.  Kept arrays are 256 KiB to 64 MiB each and 256 MiB
at most in all.
"""

from __future__ import annotations

import math
import sys

import numpy as np

#: Arrays smaller than this come from the allocator's free lists without page faults:
#: they are allocated each time, sparing the reference count check.
MIN_BYTES = 1 << 18
#: Arrays larger than this are allocated each time too: their page faults (about 1.5 us a
#: 4 KiB page here) cost little against products over them, and a kept array would hold
#: memory the caller may want back.
MAX_BYTES = 1 << 26
#: The most bytes all kept arrays together hold; past it new ones are not kept.
BUDGET_BYTES = 1 << 28

#: Where the interpreter has no GIL, two threads could both see an array unshared.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
#: Bytes held by kept arrays now (updated under the GIL; a soft bound).
_kept_bytes = 0
#: The reference count of an unshared array as :meth:`Scratch.take` sees it (measured
#: there, once, with no tracer or profiler running); None until then.
_alone = None


class Scratch:
    """An array of one shape and dtype, reused across calls while unshared.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    """

    __slots__ = ("shape", "dtype", "array", "__weakref__")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.array = None

    def take(self) -> np.ndarray:
        """The kept array if nothing else refers to it, else a new one (kept from now on,
        within :data:`BUDGET_BYTES`).

        "Nothing else" is a reference count equal to the one measured right
        after an allocation, in this same function: the interpreter counts the
        local and the call's argument the same way in both places.  The count
        is measured only with no tracer or profiler running (on CPython 3.12
        and older, a debugger that reads this frame's locals holds one more
        reference).  Race-free under the GIL, as no other thread runs between
        reading ``self.array`` and counting (nothing there calls out or
        releases the GIL): a second caller's own reference shows in the first
        one's count, or the first one's in the second's.
        """
        global _alone
        a = self.array
        if a is not None and sys.getrefcount(a) == _alone:
            return a
        a = np.empty(self.shape, self.dtype)
        if _alone is None and _GIL and sys.gettrace() is None and sys.getprofile() is None:
            _alone = sys.getrefcount(a) + 1  # + self.array, stored next
        self._keep(a)
        return a

    def _keep(self, a):
        """Keep ``a`` (dropping the kept one) if the budget allows, else keep nothing."""
        global _kept_bytes
        old = 0 if self.array is None else self.array.nbytes
        if _GIL and _kept_bytes - old + a.nbytes <= BUDGET_BYTES:
            self.array = a
            _kept_bytes += a.nbytes - old
        else:
            self.array = None
            _kept_bytes -= old

    def __del__(self):
        global _kept_bytes
        if self.array is not None and _kept_bytes is not None:  # (None at shutdown)
            _kept_bytes -= self.array.nbytes


def keeps(shape, dtype) -> bool:
    """Whether arrays of this shape and dtype are kept: :data:`MIN_BYTES` to
    :data:`MAX_BYTES`."""
    return MIN_BYTES <= math.prod(shape) * np.dtype(dtype).itemsize <= MAX_BYTES


def scratch(shape, dtype):
    """A :class:`Scratch` for arrays that :func:`keeps`, else ``None`` (allocate each
    time)."""
    return Scratch(shape, dtype) if keeps(shape, dtype) else None
