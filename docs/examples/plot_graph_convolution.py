"""
Graph convolution on a fixed graph
==================================

On a fixed graph, the layer ``W = a I + b A`` (``A`` the adjacency) has
exactly the graph's automorphism group as its symmetry group.  The dense
design for that group is the most expressive layer with the same symmetry.
We compare both on the Petersen graph (120 automorphisms) and on the Frucht
graph (none but the identity), then fit a node-level function with a
two-layer graph network.
"""

# sphinx_gallery_thumbnail_number = 2

import matplotlib.pyplot as plt
import numpy as np

import paramshare_nb as ps
from paramshare_nb import nn, optim


def petersen():
    adj = np.zeros((10, 10), dtype=int)
    for i in range(5):
        for j, k in ((i, (i + 1) % 5), (i, i + 5), (i + 5, (i + 2) % 5 + 5)):
            adj[j, k] = adj[k, j] = 1
    return adj


def frucht():
    adj = np.zeros((12, 12), dtype=int)
    lcf = [-5, -2, -4, 2, 5, -2, 2, 5, -2, -5, 4, 2]       # LCF notation of the Frucht graph
    for i in range(12):
        for j in ((i + 1) % 12, (i + lcf[i]) % 12):
            adj[i, j] = adj[j, i] = 1
    return adj


for name, adj in (("Petersen", petersen()), ("Frucht", frucht())):
    conv = ps.graph_convolution_pattern(adj)
    aut = ps.groups.graph_automorphisms(adj)
    act = ps.Action.same(aut, n=len(adj))
    dense = ps.dense_pattern(act)
    print(f"{name}: |Aut| = {ps.symmetry_group(conv).order}; a I + b A has {conv.n_params} "
          f"parameters, the dense design for Aut has {dense.n_params}; dense is uniquely "
          f"equivariant: {ps.is_uniquely_equivariant(dense, act).unique}")

# %%
# The Petersen graph's two layers side by side: ``a I + b A`` and the dense
# design, which adds a parameter for pairs at distance two.
adj = petersen()
act = ps.Action.same(ps.groups.graph_automorphisms(adj), n=10)
fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
ps.plot.pattern(ps.graph_convolution_pattern(adj), ax=axes[0], view="matrix", title="")
ps.plot.pattern(ps.dense_pattern(act), ax=axes[1], view="matrix",
                title="Petersen graph: a I + b A (left), dense design for Aut (right)")

# %%
# Learning a linear node function — the number of nodes at distance two
# carrying a signal — with one layer of each kind.  Distance two is outside
# what ``a I + b A`` sees but inside the dense design's reach.
rng = np.random.default_rng(0)
x = (rng.random((512, 10, 1)) < 0.4).astype(np.float32)
dist2 = ((adj @ adj > 0) & (adj == 0) & ~np.eye(10, dtype=bool)).astype(np.float32)
target = np.einsum("mn,bnc->bmc", dist2, x)

curves = {}
for design_name, design in (("a I + b A", ps.graph_convolution_pattern(adj)),
                            ("dense for Aut", "dense")):
    model = nn.EquivariantLinear(act, 1, 1, design=design, rng=0)
    opt = optim.Adam(model.parameters(), lr=5e-2)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = nn.mse(model(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    curves[design_name] = losses
    print(f"{design_name}: final mean squared error {losses[-1]:.4f}")

fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
for label, losses in curves.items():
    ax.semilogy(losses, label=label)
ax.set_xlabel("step")
ax.set_ylabel("training MSE")
ax.legend()
