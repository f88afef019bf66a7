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
thread's call in flight.
"""

from __future__ import annotations

import sys

import numpy as np

#: Arrays smaller than this come from the allocator's free lists without page faults:
#: they are allocated each time, sparing the reference count check.
MIN_BYTES = 1 << 18
#: Arrays larger than this are allocated each time too: their page faults (about 1.5 us a
#: 4 KiB page here) cost little against products over them, and a kept array would hold
#: memory the caller may want back.
MAX_BYTES = 1 << 26

#: Where the interpreter has no GIL, two threads could both see an array unshared.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


class Scratch:
    """An array of one shape and dtype, reused across calls while unshared.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    """

    __slots__ = ("shape", "dtype", "array", "_alone")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.array = None
        self._alone = None  # the reference count of an unshared array, measured in take()

    def take(self) -> np.ndarray:
        """The kept array if nothing else refers to it, else a new one (kept from now on).

        The count is compared with the one measured right after an allocation,
        in this same function (so the interpreter's way of counting a local
        and the call's argument is the same in both).  Under the GIL it is
        race-free: a second caller's own reference shows in the first one's
        count, or the first one's in the second's, so at most one of them
        takes the kept array.
        """
        a = self.array
        if a is not None and sys.getrefcount(a) == self._alone:
            return a
        a = self.array = np.empty(self.shape, self.dtype)
        if self._alone is None and _GIL:
            self._alone = sys.getrefcount(a)
        return a


def scratch(shape, dtype):
    """A :class:`Scratch` for arrays of :data:`MIN_BYTES` to :data:`MAX_BYTES`, else
    ``None`` (allocate each time)."""
    size = np.dtype(dtype).itemsize
    for s in shape:
        size *= s
    return Scratch(shape, dtype) if MIN_BYTES <= size <= MAX_BYTES else None
