"""The same gather in JAX with ``jax.ops.segment_sum``.  Needs ``jax``."""

import jax
import jax.numpy as jnp
import numpy as np

import paramshare_nb as ps

pat = ps.sparse_pattern(ps.Action.same(ps.regular(ps.groups.dihedral(5))))
rows, cols, params = (jnp.asarray(a) for a in (pat.rows, pat.cols, pat.params))


def tied_linear(theta, x):                                 # theta (P, C_out, C_in), x (B, N, C_in)
    contrib = jnp.einsum("eoi,bei->ebo", theta[params], x[:, cols])
    y = jax.ops.segment_sum(contrib, rows, num_segments=pat.shape[0])   # (M, B, C_out)
    return jnp.transpose(y, (1, 0, 2))


theta = np.random.default_rng(0).standard_normal((pat.n_params, 4, 2)).astype(np.float32)
x = np.random.default_rng(1).standard_normal((8, pat.shape[1], 2)).astype(np.float32)
y = jax.jit(tied_linear)(theta, x)
assert np.allclose(np.asarray(y), ps.tied_matmul(x, theta, pat), atol=1e-5)
