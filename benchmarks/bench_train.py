"""asv suite: one training step (forward, backward, Adam) of the demo's model.

The model is the digits demo's D4-invariant network (two dense
``EquivariantLinear`` layers on 64 pixels, 16 channels, orbit pooling, a
linear head) at batch 64, float32.  The peer is the same architecture in
PyTorch on the CPU, with the tied weights built by an index gather
``W = theta[idx]`` and differentiated by torch's autograd; it lives in the
same class, so a ratio comes from one run, and is skipped when torch is not
installed.  ``setup`` runs warm-up steps, so JIT compile time is excluded,
and checks that both models give the same loss from the same parameters.

Run ``python benchmarks/bench_train.py`` for a side-by-side table without
asv (``--threads 1,2``, ``--repeat``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import paramshare_nb as ps
from paramshare_nb import nn, optim
from paramshare_nb.demo import build_digit_models

try:  # optional peer
    import torch
except ImportError:  # pragma: no cover
    torch = None

BATCH = 64
CHANNELS = 16


def _data(rng):
    x = rng.random((BATCH, 64), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    return x, y


class _TorchTwin:
    """The demo's invariant model in torch, tied by index gather."""

    def __init__(self, model):
        layers = [model[0], model[2]]
        self.idx = [torch.as_tensor(layer.pattern.index()) for layer in layers]
        self.bidx = [torch.as_tensor(np.array(layer.bias_pattern.params)) for layer in layers]
        self.shapes = [(layer.pattern.shape, layer.c_in, layer.c_out) for layer in layers]
        pool = model[4]
        counts = np.bincount(pool.labels, minlength=pool.n_orbits)
        avg = np.zeros((pool.n_orbits, pool.n), np.float32)
        avg[pool.labels, np.arange(pool.n)] = 1.0 / counts[pool.labels]
        self.avg = torch.as_tensor(avg)
        self.params = [torch.nn.Parameter(torch.as_tensor(p.data.copy()))
                       for p in model.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=1e-3)

    def forward(self, x):
        h = x.reshape(x.shape[0], -1, 1)
        for k in range(2):
            (m, n), ci, co = self.shapes[k]
            theta, bias = self.params[2 * k], self.params[2 * k + 1]
            w = theta[self.idx[k]]  # (M, N, Co, Ci): the gather that ties the weights
            w = w.permute(0, 2, 1, 3).reshape(m * co, n * ci)
            h = (h.reshape(h.shape[0], -1) @ w.T).reshape(h.shape[0], m, co)
            h = torch.relu(h + bias[self.bidx[k]])
        h = torch.einsum("on,bnc->boc", self.avg, h).reshape(h.shape[0], -1)
        return h @ self.params[4].T + self.params[5]

    def loss(self, x, y):
        return torch.nn.functional.cross_entropy(self.forward(x), y)

    def step(self, x, y):
        self.opt.zero_grad()
        loss = self.loss(x, y)
        loss.backward()
        self.opt.step()
        return loss


class TrainStep:
    """Forward + backward + Adam of the digits demo's invariant model, batch 64."""

    params = [1, 2]
    param_names = ["threads"]
    timeout = 300

    def setup(self, threads):
        import numba

        self._old_threads = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._blas = None
        try:  # numpy's BLAS gets the same thread budget as numba and torch
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            pass
        else:
            self._blas = threadpool_limits(limits=threads, user_api="blas")
        rng = np.random.default_rng(0)
        self.model, _, _ = build_digit_models(channels=CHANNELS, seed=0)
        self.x, self.y = _data(rng)
        self.xin = self.x[:, :, None]
        self.opt = optim.Adam(self.model.parameters(), lr=1e-3)
        self.twin = None
        if torch is not None:
            self._old_torch = torch.get_num_threads()
            torch.set_num_threads(threads)
            self.twin = _TorchTwin(self.model)
            self.tx, self.ty = torch.as_tensor(self.x), torch.as_tensor(self.y)
            ours = nn.cross_entropy(self.model(ps.Tensor(self.xin)), self.y).item()
            theirs = float(self.twin.loss(self.tx, self.ty).detach())
            if not np.isclose(ours, theirs, rtol=1e-4):
                raise RuntimeError(f"torch twin disagrees: loss {theirs} vs {ours}")
        for _ in range(3):  # compile and warm up
            self.time_paramshare_nb(threads)
            if self.twin is not None:
                self.time_torch(threads)

    def teardown(self, threads):
        import numba

        numba.set_num_threads(self._old_threads)
        if self._blas is not None:
            self._blas.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(self._old_torch)

    def time_paramshare_nb(self, threads):
        loss = nn.cross_entropy(self.model(ps.Tensor(self.xin)), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def time_torch(self, threads):
        if self.twin is None:  # a skip: NotImplementedError counts as one only in setup
            from asv_runner.benchmarks.mark import SkipNotImplemented
            raise SkipNotImplemented("torch is not installed")
        self.twin.step(self.tx, self.ty)


def _median(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    """Print the step time of both implementations and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    print(f"training step, digits demo model ({CHANNELS} channels), batch {BATCH}, float32")
    print(f"torch: {torch.__version__ if torch is not None else 'not installed'}")
    for threads in [int(t) for t in args.threads.split(",")]:
        bench = TrainStep()
        bench.setup(threads)
        try:
            ours = _median(lambda b=bench, t=threads: b.time_paramshare_nb(t), args.repeat)
            line = f"threads={threads}: paramshare_nb {ours * 1e3:.2f} ms"
            if bench.twin is not None:
                theirs = _median(lambda b=bench, t=threads: b.time_torch(t), args.repeat)
                line += f", torch {theirs * 1e3:.2f} ms, ratio torch/ours {theirs / ours:.2f}"
            print(line)
        finally:
            bench.teardown(threads)


if __name__ == "__main__":
    main()
