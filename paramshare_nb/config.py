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

Threads.  numba's parallel kernels and OpenBLAS each keep a pool of worker
threads, and the tied multiply alternates between them (a BLAS product, then
a numba kernel).  OpenMP workers spin after each parallel region by default;
on cores that BLAS's own spinning threads also want, the next region then
waits for the scheduler, measured at about 7 ms per region on 2 cores (a
1-million-element numba kernel right after a 32768 x 32 x 32 GEMM: 7.3 ms
against 1.0 ms).  Importing paramshare_nb therefore sets
``OMP_WAIT_POLICY=PASSIVE`` when the variable is unset; OpenMP reads it when
numba first loads its OpenMP layer, at the first parallel kernel (Deep Sets
512 x 512, 32 channels, batch 512: forward 39 -> 22 ms, backward 68 -> 34 ms,
medians).  Set ``OMP_WAIT_POLICY`` yourself, before the import, to keep
another policy.
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


def _passive_openmp_waits() -> None:
    """Default ``OMP_WAIT_POLICY`` to ``PASSIVE`` (see the module docstring).

    OpenMP reads the variable when its runtime loads, which numba does at the
    first parallel kernel; a user's own setting always wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_passive_openmp_waits()

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
