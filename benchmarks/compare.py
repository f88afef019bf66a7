"""Side-by-side timing of the tied multiply against what a user would write instead.

Run ``python benchmarks/compare.py`` (the options of ``python -m paramshare_nb
bench``: ``--repeat``, ``--only w1,w3`` (the small-call workloads ``s1,s2,s3``
run only when named), ``--dtype float64``, ``--threads``, ``--planner``,
``--list``; and ``--no-torch``).  In one process, for each workload, it times forward +
backward (``y``, ``dx``, ``dtheta``) of

- **paramshare_nb**: ``tied_matmul`` + ``tied_matmul_grad`` (planner's choice),
- **numpy**: materialise ``W = theta[idx]``, matmul, ``bincount`` for ``dtheta``,
- **scipy.sparse**: one 0/1 CSR matrix ``B_k`` per parameter, ``sum_k theta_k B_k x``,
- **torch** (when installed): index, matmul, autograd,

checks that every peer agrees with paramshare_nb (one that does not is
reported, left out of the comparison, and the script exits with status 1),
and prints medians, the
ratio to each peer, the target, and the achieved GFLOP/s against plain BLAS
matmuls of the same dense shape.  Compile time is excluded (warm-up calls).
paramshare_nb is timed in a block of ``--repeat`` calls before each peer and
after the last, and its median is taken over all blocks: the ratios then
compare medians over the same minutes of a machine whose speed drifts.

The workloads, the numpy and scipy.sparse peers and the timing live in the
package (``paramshare_nb._bench``, which ``python -m paramshare_nb bench``
runs without PyTorch); this script adds the PyTorch peer.
"""

from __future__ import annotations

import argparse
import os
import sys


def _early_threads(argv):
    """``--threads N`` (or ``--threads=N``) into the environment: the thread counts of numba,
    OpenBLAS and OpenMP are fixed when they load, before the options are parsed."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int)
    known, _ = pre.parse_known_args(argv)
    if known.threads is not None and known.threads >= 1:
        for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS"):
            os.environ[var] = str(known.threads)


if __name__ == "__main__":
    _early_threads(sys.argv[1:])

# time the checkout this script lives in, not whatever copy happens to be installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paramshare_nb import _bench  # noqa: E402

# the names the asv suites, gpu_check.py and the tests take from here
from paramshare_nb._bench import NumpyPeer, figure1_d5, workloads  # noqa: E402, F401

try:  # optional peer
    import torch
except ImportError:  # pragma: no cover
    torch = None


class TorchPeer:
    name = "torch"

    def __init__(self, pat, scalar):
        self.idx = torch.from_numpy(_bench.dense_index(pat))
        self.pat, self.scalar = pat, scalar

    def __call__(self, x, theta, dy):
        m, n = self.pat.shape
        xt = torch.from_numpy(x).requires_grad_(True)
        tt = torch.from_numpy(theta).requires_grad_(True)
        if self.scalar:
            w = tt[self.idx]
            y = xt @ w.T
        else:
            nb, _, ci = x.shape
            co = theta.shape[1]
            w = tt[self.idx].permute(0, 2, 1, 3).reshape(m * co, n * ci)
            y = (xt.reshape(nb, -1) @ w.T).reshape(nb, m, co)
        y.backward(torch.from_numpy(dy))
        return y.detach().numpy(), xt.grad.numpy(), tt.grad.numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_arguments(ap)  # the options of ``python -m paramshare_nb bench``
    ap.add_argument("--no-torch", action="store_true", help="leave the PyTorch peer out")
    args = ap.parse_args(argv)
    try:
        _bench.check_args(args)
    except ValueError as exc:
        ap.error(str(exc))
    with_torch = torch is not None and not args.no_torch
    if with_torch:
        import numba

        torch.set_num_threads(numba.get_num_threads())
    used = ("not installed" if torch is None else
            f"yes {torch.__version__}" if with_torch else "not used (--no-torch)")
    # 1 when a peer disagreed with paramshare_nb: the run is no valid comparison
    return _bench.run(args, peers=[TorchPeer] if with_torch else [], title="compare",
                      about=f", torch {used}")


if __name__ == "__main__":
    sys.exit(main())
