"""Tunables of paramshare_nb, with environment overrides.

Every value here is read by Python-level wrappers and launchers and passed
into kernels as an argument: numba freezes module globals at compile time, so
kernels never read this module.

Environment variables (read once, at import):

``PARAMSHARE_MAX_BYTES``
    Memory bound, in bytes, for results that the library materialises on
    request (group closures, dense ``W`` matrices).  Default 1 GiB.
``PARAMSHARE_CUDA_THREADS``
    Threads per block for CUDA launches.  Default 256.
``PARAMSHARE_CUDA_MAX_BLOCKS``
    Upper bound on blocks per CUDA launch (kernels use grid-stride loops).
``PARAMSHARE_SEARCH_NODES``
    Node budget of the symmetry search tree.  Default 1_000_000.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["max_bytes", "cuda_threads", "cuda_max_blocks", "search_nodes", "override"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be positive")
    return value


#: Memory bound (bytes) for closures and materialised matrices.
max_bytes: int = _env_int("PARAMSHARE_MAX_BYTES", 1 << 30)
#: Threads per block for CUDA kernels.
cuda_threads: int = _env_int("PARAMSHARE_CUDA_THREADS", 256)
#: Maximum number of blocks per CUDA launch.
cuda_max_blocks: int = _env_int("PARAMSHARE_CUDA_MAX_BLOCKS", 4096)
#: Node budget of the individualisation-refinement search.
search_nodes: int = _env_int("PARAMSHARE_SEARCH_NODES", 1_000_000)


@contextlib.contextmanager
def override(**values):
    """Temporarily change tunables, restoring them on exit.

    Parameters
    ----------
    **values
        New values, by name (``max_bytes=..., cuda_threads=...``).

    Examples
    --------
    >>> from paramshare_nb import config
    >>> with config.override(max_bytes=1 << 20):
    ...     config.max_bytes
    1048576
    """
    g = globals()
    unknown = [k for k in values if k not in __all__ or k == "override"]
    if unknown:
        raise ValueError(f"unknown config value(s) {unknown}; known: {__all__[:-1]}")
    old = {k: g[k] for k in values}
    for k, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"config.{k} must be a positive int, got {v!r}")
    g.update(values)
    try:
        yield
    finally:
        g.update(old)
