"""Side-by-side timing of the tied multiply against what a user would write instead.

Run ``python benchmarks/compare.py`` (options: ``--repeat``, ``--only w1,w3`` (the
small-call workloads ``s1,s2,s3`` run only when named),
``--dtype float64``).  In one process, for each workload, it times forward +
backward (``y``, ``dx``, ``dtheta``) of

- **paramshare_nb**: ``tied_matmul`` + ``tied_matmul_grad`` (planner's choice),
- **numpy**: materialise ``W = theta[idx]``, matmul, ``bincount`` for ``dtheta``,
- **scipy.sparse**: one 0/1 CSR matrix ``B_k`` per parameter, ``sum_k theta_k B_k x``,
- **torch** (when installed): index, matmul, autograd,

checks that every peer agrees with paramshare_nb, and prints medians, the
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

if __name__ == "__main__" and "--threads" in sys.argv:
    # thread counts of numba, OpenBLAS and OpenMP are fixed when they load: set them first
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        os.environ[_var] = _n

# time the checkout this script lives in, not whatever copy happens to be installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paramshare_nb import _bench, config  # noqa: E402

# the names the asv suites, gpu_check.py and the tests take from here
from paramshare_nb._bench import NumpyPeer, figure1_d5, workloads  # noqa: E402, F401

try:  # optional peer
    import torch
except ImportError:  # pragma: no cover
    torch = None


class TorchPeer:
    name = "torch"

    def __init__(self, pat, scalar):
        self.idx = torch.from_numpy(pat.index())
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", default="w1,w2,w3,w4")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for numba, BLAS and torch (default: all cores)")
    ap.add_argument("--planner", choices=config.PLANNERS, default=config.planner,
                    help="how method='auto' chooses: the cost model's estimates, or "
                         "timing the candidates on each workload's first call "
                         f"(default {config.planner!r}, from PARAMSHARE_PLANNER)")
    args = ap.parse_args(argv)
    with config.override(planner=args.planner):
        _compare(args)


def _compare(args):
    import numba

    with_torch = torch is not None and not args.no_torch
    if with_torch:
        torch.set_num_threads(numba.get_num_threads())
    _bench.compare(workloads(), args.only, args.repeat, args.dtype,
                   peers=[TorchPeer] if with_torch else [], title="compare",
                   about=f", torch {'yes ' + torch.__version__ if torch else 'not installed'}")


if __name__ == "__main__":
    main()
