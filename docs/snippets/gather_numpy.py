"""The tied multiply from a pattern's index arrays, in plain numpy.

The same three arrays drive the PyTorch and JAX versions: every stored entry
``e`` adds ``theta[params[e]] @ x[:, cols[e]]`` to output row ``rows[e]``.
"""

import numpy as np

import paramshare_nb as ps

act = ps.Action.same(ps.regular(ps.groups.dihedral(5)))   # D5 acting on its 10 elements
pat = ps.sparse_pattern(act)                                # 3 parameters, proved unique
rows, cols, params = pat.rows, pat.cols, pat.params         # int64 edge arrays, (nnz,)

rng = np.random.default_rng(0)
theta = rng.standard_normal((pat.n_params, 4, 2))           # (P, C_out, C_in)
x = rng.standard_normal((8, pat.shape[1], 2))               # (batch, N, C_in)

contrib = np.einsum("eoi,bei->beo", theta[params], x[:, cols])   # (batch, nnz, C_out)
y = np.zeros((x.shape[0], pat.shape[0], theta.shape[1]))
np.add.at(y, (slice(None), rows), contrib)                       # scatter-add by output row

assert np.allclose(y, ps.tied_matmul(x, theta, pat))
