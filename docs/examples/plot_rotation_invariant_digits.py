"""
Rotation-invariant digits
=========================

Handwritten digits (scikit-learn's 8 x 8 images, bundled with the package: no
download) are classified by a network whose layers are equivariant to the
rotations of the square, ``C_4`` acting on the 64 pixels, followed by pooling
over pixel orbits.  Its prediction cannot change when an image is turned by
90 degrees, so it scores the same on upright and rotated test images — a plain
MLP trained on the same upright data does not.
"""

# sphinx_gallery_thumbnail_number = 2

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import paramshare_nb as ps
from paramshare_nb import nn, optim

digits = load_digits()
x = (digits.images / 16.0).astype(np.float32)           # (1797, 8, 8)
y = digits.target
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
train, test = order[:1400], order[1400:]

gens = ps.groups.square_symmetries(8, rotations_only=True)   # C_4 on 64 pixels
act = ps.Action.same(gens)
pat = ps.dense_pattern(act)
print(pat, "| uniquely equivariant:", ps.is_uniquely_equivariant(pat, act).unique)

# %%
# The tying pattern of the first layer: entries in one orbit share a colour.
ps.plot.pattern(pat, view="matrix", title="C_4 on the pixels of an 8 x 8 image")


# %%
# Two models, trained the same way on upright images only.
def fit(model, inputs, epochs=4):
    opt = optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(epochs):
        perm = rng.permutation(len(train))
        for start in range(0, len(perm), 100):
            idx = train[perm[start:start + 100]]
            opt.zero_grad()
            loss = nn.cross_entropy(model(inputs(x[idx])), y[idx])
            loss.backward()
            opt.step()
    return model


def as_pixels(images):                                    # (b, 8, 8) -> (b, 64, 1)
    return images.reshape(len(images), 64, 1)


def as_vectors(images):                                   # (b, 8, 8) -> (b, 64)
    return images.reshape(len(images), 64)


equivariant = fit(nn.Sequential(
    nn.EquivariantLinear(act, 1, 8, rng=0), nn.ReLU(),
    nn.EquivariantLinear(act, 8, 8, rng=1), nn.ReLU(),
    nn.OrbitPool(gens, reduce="mean"), nn.Flatten(),        # 16 orbits x 8 channels
    nn.Linear(16 * 8, 10, rng=2)), as_pixels)
mlp = fit(nn.Sequential(nn.Linear(64, 64, rng=3), nn.ReLU(), nn.Linear(64, 10, rng=4)),
          as_vectors)

# %%
# Accuracy on upright and rotated test images.
table = {}
for name, model, inputs in (("MLP", mlp, as_vectors), ("C_4-equivariant", equivariant,
                                                        as_pixels)):
    row = {}
    for k in range(4):
        imgs = np.rot90(x[test], k, axes=(1, 2)).copy()
        with ps.no_grad():
            pred = model(inputs(imgs)).data.argmax(axis=1)
        row[f"{90 * k} deg"] = float((pred == y[test]).mean())
    table[name] = row
    print(name, {k: f"{v:.3f}" for k, v in row.items()})

ps.plot.accuracy(table, title="test accuracy, trained on upright digits only")
plt.show()
