"""asv suite for the tied multiply: forward, backward, peak memory per call, compile time.

Workloads are those of ``compare.py`` (w1-w4).  Kernels compile and plans are
built in ``setup`` (a warm call), so timings exclude JIT time; compile time is
tracked separately in a fresh subprocess.  The numpy peer (materialised ``W``,
matmul, ``bincount``) runs in the same suite on the same data, so a ratio
comes from one run (w1's takes tens of seconds a call and shows as n/a).
"""

import os
import subprocess
import sys

import numpy as np

import paramshare_nb as ps

sys.path.insert(0, os.path.dirname(__file__))
from compare import NumpyPeer, workloads  # noqa: E402

from paramshare_nb._bench import peak_bytes  # noqa: E402

WORKLOADS = workloads()
METHODS = ["auto", "materialize", "gather", "complement", "scatter", "csr"]


def _data(key, dtype):
    desc, make, nb, ci, co, _ = WORKLOADS[key]
    pat = make()
    rng = np.random.default_rng(0)
    m, n = pat.shape
    if ci is None:
        shapes = ((pat.n_params,), (nb, n), (nb, m))
    else:
        shapes = ((pat.n_params, co, ci), (nb, n, ci), (nb, m, co))
    theta, x, dy = (rng.standard_normal(s).astype(dtype) for s in shapes)
    return pat, theta, x, dy


class TiedMatmul:
    """Forward and backward per workload and dtype, planner's choice."""

    params = (list(WORKLOADS), ["float32", "float64"])
    param_names = ["workload", "dtype"]
    timeout = 600

    def setup(self, key, dtype):
        import numba
        self.threads = numba.get_num_threads()
        self.pat, self.theta, self.x, self.dy = _data(key, np.dtype(dtype))
        ps.tied_matmul(self.x, self.theta, self.pat)
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat)

    def time_forward(self, key, dtype):
        ps.tied_matmul(self.x, self.theta, self.pat)

    def time_backward(self, key, dtype):
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat)

    def time_forward_backward(self, key, dtype):
        ps.tied_matmul(self.x, self.theta, self.pat)
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat)

    # Peak memory of one call (_bench.peak_bytes): asv's peakmem_ is the process's maximum
    # RSS, which setup's warm forward and backward (and numba's compiler) had already set,
    # so it showed ~380 MB for every workload, forward and backward alike.
    def track_forward_peak_bytes(self, key, dtype):
        return peak_bytes(lambda: ps.tied_matmul(self.x, self.theta, self.pat))

    track_forward_peak_bytes.unit = "bytes"

    def track_backward_peak_bytes(self, key, dtype):
        return peak_bytes(lambda: ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat))

    track_backward_peak_bytes.unit = "bytes"


class MeasuredTiedMatmul:
    """Forward + backward under ``config.planner = "measure"`` (float32): beside
    :class:`TiedMatmul`'s, what timing the candidates buys on this machine."""

    params = (list(WORKLOADS),)
    param_names = ["workload"]
    timeout = 600

    def setup(self, key):
        self.planner = ps.config.planner
        ps.config.planner = "measure"  # (teardown restores it)
        self.pat, self.theta, self.x, self.dy = _data(key, np.dtype("float32"))
        ps.tied_matmul(self.x, self.theta, self.pat)  # measures the candidates
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat)

    def teardown(self, key):
        ps.config.planner = self.planner

    def time_forward_backward(self, key):
        ps.tied_matmul(self.x, self.theta, self.pat)
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat)


class NumpyPeerTiedMatmul:
    """The numpy peer (materialised ``W``, matmul, ``bincount``) on the same data."""

    params = TiedMatmul.params
    param_names = TiedMatmul.param_names
    timeout = 600

    def setup(self, key, dtype):
        if key == "w1":
            # tens of seconds per call (1024 bincounts of 262144): skipped (n/a); compare.py
            # times it a few times instead
            raise NotImplementedError
        self.pat, self.theta, self.x, self.dy = _data(key, np.dtype(dtype))
        self.peer = NumpyPeer(self.pat, self.theta.ndim == 1)

    def time_forward_backward(self, key, dtype):
        self.peer(self.x, self.theta, self.dy)


class Strategies:
    """Every strategy forced on the small workloads (w2 and w4), float32."""

    params = (["w2", "w4"], METHODS)
    param_names = ["workload", "method"]
    timeout = 300

    def setup(self, key, method):
        self.pat, self.theta, self.x, self.dy = _data(key, np.float32)
        ps.tied_matmul(self.x, self.theta, self.pat, method=method)
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat, method=method)

    def time_forward(self, key, method):
        ps.tied_matmul(self.x, self.theta, self.pat, method=method)

    def time_backward(self, key, method):
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat, method=method)


class FewChannelStrategies:
    """Every strategy forced with at most 3 channels a side (the batch tiles of gather and
    complement): D4 on an 8 x 8 image, batch 256, float32."""

    params = (["1->1", "3->1", "2->3"], METHODS)
    param_names = ["channels", "method"]
    timeout = 300

    def setup(self, channels, method):
        c_in, c_out = (int(c) for c in channels.split("->"))
        self.pat = ps.dense_pattern(ps.Action.same(ps.groups.square_symmetries(8)))
        rng = np.random.default_rng(0)
        m, n = self.pat.shape
        scalar = c_in == c_out == 1
        shapes = (((self.pat.n_params,), (256, n), (256, m)) if scalar else
                  ((self.pat.n_params, c_out, c_in), (256, n, c_in), (256, m, c_out)))
        self.theta, self.x, self.dy = (rng.standard_normal(s).astype(np.float32) for s in shapes)
        self.time_forward(channels, method)
        self.time_backward(channels, method)

    def time_forward(self, channels, method):
        ps.tied_matmul(self.x, self.theta, self.pat, method=method)

    def time_backward(self, channels, method):
        ps.tied_matmul_grad(self.dy, self.x, self.theta, self.pat, method=method)


def track_compile_seconds():
    """First forward + backward in a fresh process with an empty numba cache dir."""
    code = ("import time, numpy as np, paramshare_nb as ps\n"
            "pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(6)))\n"
            "x = np.ones((2, 6, 3), np.float32); th = np.ones((2, 4, 3), np.float32)\n"
            "t = time.perf_counter()\n"
            "for m in ('materialize', 'gather', 'complement', 'scatter', 'csr'):\n"
            "    y = ps.tied_matmul(x, th, pat, method=m)\n"
            "    ps.tied_matmul_grad(y, x, th, pat, method=m)\n"
            "print(time.perf_counter() - t)\n")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


track_compile_seconds.unit = "seconds"
track_compile_seconds.timeout = 600
