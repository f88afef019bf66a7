"""
Training on data larger than a worker's memory
==============================================

A :mod:`dask.distributed` cluster of two worker processes, each limited to
400 MiB, trains an invariant model on a data set of 500 MiB that is never
held whole anywhere: it is generated lazily, chunk by chunk (it could as well
be read from files), and every training step computes per-chunk gradients
with the library's kernels on the workers, sums them in a tree and applies
them once (:func:`paramshare_nb.dask.train_step`).

The data are signals on a cycle of 64 points; the target, the largest sum of
two neighbouring values, does not depend on where the cycle starts, so the
model is built from the sparse Cayley layer for ``C_64``.

This example is not run while the documentation builds (one pass over 500
MiB takes minutes on two cores); run it with ``python
docs/examples/dask_out_of_core.py``.  The test suite runs it on a small data
set (``tests/test_docs.py``).
"""

import logging

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

import paramshare_nb as ps
from paramshare_nb import nn, optim

N = 64                                   # points on the cycle
WORKER_MEMORY = 400 * 2**20              # bytes, per worker process
DATA_BYTES = 500 * 2**20                 # the whole data set, larger than a worker's limit
SAMPLES = DATA_BYTES // (N * 4)          # float32 signals
CHUNK = 8192                             # samples per chunk: 2 MiB


def target(x):
    """Largest sum of two neighbours on the cycle: invariant under rotations."""
    return (x[:, :, 0] + np.roll(x[:, :, 0], 1, axis=1)).max(axis=1, keepdims=True)


def main(samples=SAMPLES, chunk=CHUNK, steps=16):
    """Start a two-process cluster on this machine, train, and shut it down."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None,
                           memory_limit=WORKER_MEMORY, silence_logs=logging.CRITICAL)
    client = Client(cluster)
    try:
        return train(client, samples, chunk, steps)
    finally:
        client.close()
        cluster.close()


def train(client, samples, chunk, steps):
    """One pass over the data in ``steps`` data-parallel steps; returns the losses."""
    rng = da.random.default_rng(0)
    x = rng.standard_normal((samples, N, 1), chunks=(chunk, N, 1), dtype=np.float32)
    y = x.map_blocks(target, drop_axis=2, chunks=(x.chunks[0], (1,)), dtype=np.float32)
    print(f"data set: {x.nbytes / 2**20:.0f} MiB in {x.npartitions} chunks; "
          f"worker memory limit: {WORKER_MEMORY / 2**20:.0f} MiB each")

    gens = ps.groups.cyclic(N)
    act = ps.Action.same(gens)
    model = nn.Sequential(
        nn.EquivariantLinear(act, 1, 2, design="sparse", rng=0), nn.ReLU(),
        nn.OrbitPool(gens, reduce="max"), nn.Flatten(), nn.Linear(2, 1, rng=1))
    opt = optim.Adam(model.parameters(), lr=5e-2)

    # one pass over the data, each step on its own slice of it
    step_size = samples // steps
    losses = []
    for step in range(steps):
        sl = slice(step * step_size, (step + 1) * step_size)
        losses.append(ps.dask.train_step(model, nn.mse, opt, x[sl], y[sl], client=client))
        print(f"step {step:2d}: mean squared error {losses[-1]:.4f}")

    # evaluate blockwise on a fresh lazily generated test set
    x_test = da.random.default_rng(1).standard_normal((65536, N, 1), chunks=(chunk, N, 1),
                                                      dtype=np.float32)
    pred = client.compute(ps.dask.apply(model, x_test)).result()
    truth = target(x_test.compute())
    mse = float(np.mean((pred - truth) ** 2))
    print(f"test mean squared error: {mse:.4f} (predicting the mean would give "
          f"{truth.var():.4f})")
    return losses, mse


if __name__ == "__main__":
    losses, _ = main()
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    ax.plot(losses, marker="o")
    ax.set_xlabel("training step (1/16 of the data each)")
    ax.set_ylabel("mean squared error")
    ax.set_yscale("log")
