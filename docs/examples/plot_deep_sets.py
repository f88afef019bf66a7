"""
Deep Sets: learning on sets
===========================

A function of a *set* must not depend on the order in which its elements are
listed.  The symmetric group ``S_n`` permuting the elements gives, through the
dense design, the two-parameter Deep Sets layer ``lambda I + gamma 11^T``.
We stack two such layers with channels, pool over the set, and learn to
predict the **range** (max - min) of a set of numbers.
"""

# sphinx_gallery_thumbnail_number = 2

import matplotlib.pyplot as plt
import numpy as np

import paramshare_nb as ps
from paramshare_nb import nn, optim

n = 10
gens = ps.groups.symmetric(n)
act = ps.Action.same(gens)
pat = ps.dense_pattern(act)
print(pat, "uniquely equivariant:", ps.is_uniquely_equivariant(pat, act).unique)

# %%
# The tying pattern: one colour on the diagonal, one everywhere else.
ps.plot.pattern(pat, view="matrix", title="Deep Sets: S_10 acting on a set of 10")

# %%
# Data: sets of 10 numbers; the target is their range.
rng = np.random.default_rng(0)


def make(size):
    x = rng.uniform(-1, 1, (size, n, 1)) * rng.uniform(0.2, 1, (size, 1, 1))
    y = (x.max(axis=(1, 2)) - x.min(axis=(1, 2)))[:, None]
    return x.astype(np.float32), y.astype(np.float32)


x_train, y_train = make(1024)
x_test, y_test = make(512)

# %%
# The model: equivariant layers, then an invariant pooling head.
model = nn.Sequential(
    nn.EquivariantLinear(act, 1, 16, rng=0), nn.ReLU(),
    nn.EquivariantLinear(act, 16, 16, rng=1), nn.ReLU(),
    nn.OrbitPool(gens, reduce="max"), nn.Flatten(),
    nn.Linear(16, 1, rng=2),
)
print(model)
print("parameters:", model.n_parameters())
opt = optim.Adam(model.parameters(), lr=1e-2)

losses = []
for _epoch in range(10):
    order = rng.permutation(len(x_train))
    for start in range(0, len(order), 128):
        idx = order[start:start + 128]
        opt.zero_grad()
        loss = nn.mse(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.data))

with ps.no_grad():
    pred = model(x_test).data
    shuffled = model(x_test[:, rng.permutation(n)]).data
print(f"test mean squared error: {np.mean((pred - y_test) ** 2):.4f}")
print(f"largest change under a permutation: {np.abs(pred - shuffled).max():.2e}")

# %%
# Training curve and predictions.
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
a.semilogy(losses)
a.set_xlabel("step")
a.set_ylabel("training MSE")
b.scatter(y_test[:, 0], pred[:, 0], s=4)
b.plot([0, 2], [0, 2], "k--", lw=1)
b.set_xlabel("true range")
b.set_ylabel("predicted range")
