"""Array helpers shared by the layers."""

from __future__ import annotations

import numpy as np


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` by a sort: numpy 2.4 answers a plain ``np.unique`` call from a hash
    table, 10-15x slower than sorting when most values differ (1M int64 keys: 0.79-0.95
    against 0.06-0.08 s; a D4 layer on 32 x 32 pixels spent 0.74 s of its first forward
    there)."""
    s = np.sort(a, axis=None)
    keep = np.empty(s.size, dtype=bool)
    keep[:1] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]
