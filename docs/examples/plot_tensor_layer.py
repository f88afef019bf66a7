"""
A tensor layer for the symmetric group
======================================

A graph on ``n`` unlabelled nodes is a 2-tensor (its ``n x n`` adjacency
matrix) on which ``S_n`` acts by relabelling rows and columns together.
:func:`paramshare_nb.tensor_power` builds that action; the dense design then
gives the equivariant layers between tensors of any orders, with parameter
counts given by Bell numbers: 2 (1 -> 1), 5 (1 -> 2), 15 (2 -> 2), 2 (2 -> 0).
"""

# sphinx_gallery_thumbnail_number = 2

import matplotlib.pyplot as plt
import numpy as np

import paramshare_nb as ps
from paramshare_nb import nn, optim

n = 6
s_n = ps.groups.symmetric(n)
edges = ps.tensor_power(s_n, 2)                      # S_6 on the 36 entries of a 6 x 6 matrix
for label, act in (("1 -> 1", ps.Action.same(s_n)),
                   ("1 -> 2", ps.Action(s_n, edges)),
                   ("2 -> 2", ps.Action.same(edges)),
                   ("2 -> 0", ps.Action.invariant(edges))):
    print(f"S_{n}, {label}: {ps.dense_pattern(act).n_params} parameters")

# %%
# The 15-parameter layer on 2-tensors of 4 nodes (16 x 16 entries).
small = ps.Action.same(ps.tensor_power(ps.groups.symmetric(4), 2))
ps.plot.pattern(ps.dense_pattern(small), view="matrix", title="S_4 on 2-tensors: 15 parameters")

# %%
# Learning a graph invariant: the number of paths of length two,
# ``sum_v deg(v) (deg(v) - 1) / 2``, from the adjacency matrix alone.
rng = np.random.default_rng(0)


def graphs(size):
    upper = np.triu(rng.random((size, n, n)) < rng.uniform(0.2, 0.8, (size, 1, 1)), 1)
    adj = (upper | upper.transpose(0, 2, 1)).astype(np.float32)
    deg = adj.sum(axis=2)
    paths = (deg * (deg - 1) / 2).sum(axis=1, keepdims=True) / 10.0
    return adj.reshape(size, n * n, 1), paths.astype(np.float32)


x_train, y_train = graphs(1024)
x_test, y_test = graphs(256)
act = ps.Action.same(edges)
model = nn.Sequential(
    nn.EquivariantLinear(act, 1, 8, rng=0), nn.ReLU(),
    nn.EquivariantLinear(act, 8, 8, rng=1), nn.ReLU(),
    nn.OrbitPool(edges, reduce="mean"), nn.Flatten(),  # 2 orbits: diagonal, off-diagonal
    nn.Linear(2 * 8, 1, rng=2))
opt = optim.Adam(model.parameters(), lr=1e-2)
losses = []
for _epoch in range(6):
    perm = rng.permutation(len(x_train))
    for start in range(0, len(perm), 128):
        idx = perm[start:start + 128]
        opt.zero_grad()
        loss = nn.mse(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.data))

with ps.no_grad():
    pred = model(x_test).data
    relabel = rng.permutation(n)
    moved = x_test.reshape(-1, n, n)[:, relabel][:, :, relabel].reshape(-1, n * n, 1)
    pred_moved = model(moved).data
print(f"test MSE {np.mean((pred - y_test) ** 2):.4f}; "
      f"largest change under relabelling the nodes {np.abs(pred - pred_moved).max():.1e}")

fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
a.semilogy(losses)
a.set_xlabel("step")
a.set_ylabel("training MSE")
b.scatter(10 * y_test[:, 0], 10 * pred[:, 0], s=5)
b.set_xlabel("paths of length two")
b.set_ylabel("predicted")
