"""Command line: ``python -m paramshare_nb {info,demo,explain,bench}``."""

from __future__ import annotations

import argparse
import os
import sys


def _info(args) -> int:
    import numba
    import numpy as np
    import scipy

    from . import __version__, config

    print(f"paramshare_nb {__version__}")
    print(f"python        {sys.version.split()[0]}")
    print(f"numpy         {np.__version__}")
    print(f"scipy         {scipy.__version__}")
    print(f"numba         {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads, "
          f"layer {numba.threading_layer() if _threads_started() else 'not started'})")
    print(f"cpu cores     {os.cpu_count()}")
    print(f"max_bytes     {config.max_bytes}")
    print(f"cuda          {_cuda_status()}")
    return 0


def _threads_started() -> bool:
    import numba

    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def _cuda_status() -> str:
    try:
        from numba import cuda
    except ImportError:
        return "not installed (pip install 'paramshare_nb[cuda]')"
    import numba
    if numba.config.ENABLE_CUDASIM:
        return "numba's simulator (NUMBA_ENABLE_CUDASIM=1): kernels run in Python, for tests"
    try:
        if cuda.is_available():
            dev = cuda.get_current_device()
            name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
            from ._kernels import cuda_blas
            how = ("cuBLAS and a memory pool through CuPy" if cuda_blas.available() else
                   "no CuPy: numba's GEMM and allocator (pip install cupy for cuBLAS and a "
                   "memory pool)")
            return f"usable: {name}; {how}"
    except Exception as exc:  # a broken driver must not break `info`
        return f"not usable ({exc})"
    return "installed, no usable GPU"


def main(argv=None) -> int:
    """Entry point of ``python -m paramshare_nb``."""
    parser = argparse.ArgumentParser(prog="python -m paramshare_nb",
                                     description="Equivariant layers through parameter sharing.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads, whether CUDA is usable")
    demo = sub.add_parser("demo", help="train an invariant network on real digits")
    try:
        from .demo import add_arguments
    except ImportError:
        add_arguments = None
    if add_arguments is not None:
        add_arguments(demo)
    from . import _cli_explain

    explain = sub.add_parser(
        "explain", help="explain the dense and sparse designs of a named group",
        description="Build a group action from a short spec (e.g. dihedral:5, square:8, "
                    "grid:4x5) and explain its dense and sparse tying patterns.")
    _cli_explain.add_arguments(explain)
    from . import _bench

    bench = sub.add_parser(
        "bench", help="time the tied multiply against numpy and scipy.sparse on this machine",
        description="Forward + backward of the tied multiply on four reference workloads "
                    "(w1-w4: Deep Sets, a cyclic group, D4 on an image, Figure 1; --list), "
                    "side by side with "
                    "numpy (materialise W + BLAS) and scipy.sparse, in one process.")
    _bench.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    if args.command == "demo":
        if add_arguments is None:
            demo.error("the demo is not available in this build")
        from .demo import check_args, run

        try:
            check_args(args)
        except ValueError as exc:
            demo.error(str(exc))
        return run(args)
    if args.command == "bench":
        try:
            _bench.check_args(args)
        except ValueError as exc:
            bench.error(str(exc))
        return _bench.run(args)
    if args.command == "explain":
        spec = args.spec if len(args.spec) <= 60 else args.spec[:57] + "..."
        try:
            return _cli_explain.run(args)
        except _cli_explain.SpecError as exc:
            explain.error(f"{spec}: {exc}")
        except (MemoryError, RuntimeError) as exc:  # the memory bound, the search budget
            hint = " (from the command line: PARAMSHARE_MAX_BYTES=...)" \
                if isinstance(exc, MemoryError) else ""
            print(f"explain {spec}: {exc}{hint}", file=sys.stderr)
            return 1
    return 2


def _quiet_on_closed_pipe(entry):
    """Run ``entry``; a reader that closed the pipe early (``| head``) ends it quietly."""
    try:
        code = entry()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # stdout is gone: point it at devnull so the interpreter's final flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(_quiet_on_closed_pipe(main))
