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
``PARAMSHARE_PLANNER``
    How ``method="auto"`` picks a CPU strategy of the tied multiply:
    ``estimate`` (default) or ``measure``; see :data:`planner`.

Values can also be assigned (``config.max_bytes = 1 << 28``) or changed for
a block with :func:`override`; either way they are checked (positive ints,
``cuda_threads`` at most 1024, ``planner`` one of :data:`PLANNERS`), and a
bad one raises ``ValueError`` with nothing changed.

Threads.  numba's parallel kernels and OpenBLAS each keep a pool of worker
threads, and the tied multiply alternates between them (a BLAS product, then
a numba kernel).  GNU OpenMP's workers spin for 300,000 rounds after each
parallel region by default, several milliseconds: on cores that BLAS's own
threads also want, a numba kernel next to a BLAS call then waited for the
scheduler (Deep Sets 512 x 512, 32 channels, batch 64, after a 32768 x 32 x
32 GEMM: 8.0 ms a pair against 0.8 + 0.8 ms apart).  Never spinning
(``OMP_WAIT_POLICY=PASSIVE``) costs a wake-up of 50-190 us on every
parallel region instead, and the setting reaches other libraries' OpenMP
too (PyTorch's runtime reads the same variables, and shares numba's
``libgomp`` when numba's loads first): the digits demo's PyTorch twin
trained 1.2-1.5x slower once paramshare_nb was imported
(``benchmarks/bench_train.py``, 2 threads).  Importing paramshare_nb
therefore bounds the spin when neither ``OMP_WAIT_POLICY`` nor
``GOMP_SPINCOUNT`` is set: ``GOMP_SPINCOUNT=10000`` (about 0.3 ms here) and
``KMP_BLOCKTIME=1`` (milliseconds, for Intel's and LLVM's OpenMP).  The
same pair then took 3.0-3.8 ms (PASSIVE: 2.3-3.3), the Deep Sets forward
alone 0.77-0.82 ms (PASSIVE: 0.82-1.48), and PyTorch keeps its speed.
OpenMP reads the variables when its library loads (numba's at the first
parallel kernel): set them yourself, before the import, to choose another
policy.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import types

__all__ = ["max_bytes", "cuda_threads", "cuda_max_blocks", "search_nodes", "planner",
           "PLANNERS", "override"]

#: The values :data:`planner` takes.
PLANNERS = ("estimate", "measure")


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


def _env_choice(name: str, choices: tuple, default: str) -> str:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ValueError(f"environment variable {name}={raw!r} must be one of {choices}")
    return raw


#: Rounds a GNU OpenMP worker spins after a parallel region before it sleeps.
_SPIN_ROUNDS = "10000"


def _bounded_openmp_spin() -> None:
    """Bound OpenMP's spinning after each parallel region (see the module docstring).

    OpenMP reads the variables as its library loads (numba's at the first
    parallel kernel); a user's own wait policy always wins.
    """
    if os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT"):
        return  # (an empty value counts as unset, as OpenMP reads it)
    os.environ["GOMP_SPINCOUNT"] = _SPIN_ROUNDS
    os.environ.setdefault("KMP_BLOCKTIME", "1")


_bounded_openmp_spin()

#: Memory bound (bytes) for closures, materialised matrices and the symmetry search's
#: graph and partitions.
max_bytes: int = _env_int("PARAMSHARE_MAX_BYTES", 1 << 30)
#: Threads per block for CUDA kernels (1 to 1024).  The tiled and block-reduction kernels
#: use the largest square tile that fits (16 x 16 at 256, 32 x 32 at 1024) and are compiled
#: with that block size as their launch bound, so that 1024 threads fit the registers; a
#: change takes effect at the next call (each call reads it once).
cuda_threads: int = _env_int("PARAMSHARE_CUDA_THREADS", 256)
#: Maximum number of blocks per CUDA launch.
cuda_max_blocks: int = _env_int("PARAMSHARE_CUDA_MAX_BLOCKS", 4096)
#: Node budget of the individualisation-refinement search.
search_nodes: int = _env_int("PARAMSHARE_SEARCH_NODES", 1_000_000)
#: How ``method="auto"`` picks the tied multiply's CPU strategy.  ``"estimate"``
#: (default): a cost model from the pattern's statistics and the sizes, the same
#: choice on every run and machine.  ``"measure"``: on the first call of each
#: signature (pattern, sizes, dtype, threads), time the candidates the model
#: rates within a factor of the cheapest on the call's own arrays, and keep the
#: fastest for that pattern, as FFTW's ``FFTW_MEASURE`` does.  That first call
#: runs every candidate and compiles those not in numba's cache yet (seconds);
#: the choice, so the rounding of the results, can differ between runs and
#: machines.  CUDA arrays keep the estimates.
planner: str = _env_choice("PARAMSHARE_PLANNER", PLANNERS, "estimate")


@contextlib.contextmanager
def override(**values):
    """Temporarily change tunables, restoring them on exit.

    Parameters
    ----------
    **values
        New values, by name (``max_bytes=..., cuda_threads=..., planner=...``).

    Examples
    --------
    >>> from paramshare_nb import config
    >>> with config.override(max_bytes=1 << 20):
    ...     config.max_bytes
    1048576
    """
    g = globals()
    unknown = [k for k in values if k not in _TUNABLES]
    if unknown:
        raise ValueError(f"unknown config value(s) {unknown}; known: {list(_TUNABLES)}")
    new = {k: _checked(k, v) for k, v in values.items()}  # all checked before any is set
    old = {k: g[k] for k in values}
    g.update(new)
    try:
        yield
    finally:
        g.update(old)


_TUNABLES = ("max_bytes", "cuda_threads", "cuda_max_blocks", "search_nodes", "planner")


def _checked(name, value):
    """``value`` for tunable ``name``, or a ValueError saying what it must be."""
    if name == "planner":
        if not (isinstance(value, str) and value in PLANNERS):
            raise ValueError(f"config.planner must be one of {PLANNERS}, got {value!r}")
        return value
    # numbers.Integral takes numpy's integers; a bool is one too, and is refused
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config.{name} must be a positive int, got {value!r}")
    if name == "cuda_threads" and value > 1024:
        raise ValueError(f"config.cuda_threads must be at most 1024 (CUDA's threads "
                         f"per block), got {value}")
    return int(value)


class _Config(types.ModuleType):
    """This module, checking tunables assigned directly (``config.max_bytes = ...``) as
    :func:`override` does: a NaN bound compared False everywhere (no bound at all), and a
    string failed deep inside the first call that read it."""

    def __setattr__(self, name, value):
        if name in _TUNABLES:
            value = _checked(name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Config
