"""A paramshare_nb pattern as a PyTorch layer: the library designs and proves,
PyTorch trains.  Needs ``torch``."""

import numpy as np
import torch

import paramshare_nb as ps

act = ps.Action.same(ps.regular(ps.groups.dihedral(5)))
pat = ps.sparse_pattern(act)
assert ps.is_uniquely_equivariant(pat, act).unique       # proved before training


class TiedLinear(torch.nn.Module):
    """``y[b, m] = sum_e theta[params[e]] @ x[b, cols[e]]`` over entries ``e`` of row ``m``."""

    def __init__(self, pattern, c_in, c_out):
        super().__init__()
        self.m = pattern.shape[0]
        self.register_buffer("rows", torch.tensor(pattern.rows))
        self.register_buffer("cols", torch.tensor(pattern.cols))
        self.register_buffer("params", torch.tensor(pattern.params))
        fan_in = max(1, pattern.nnz // max(self.m, 1)) * c_in
        self.theta = torch.nn.Parameter(torch.randn(pattern.n_params, c_out, c_in) / fan_in**0.5)

    def forward(self, x):                                  # (batch, N, C_in)
        contrib = torch.einsum("eoi,bei->beo", self.theta[self.params], x[:, self.cols])
        y = x.new_zeros(x.shape[0], self.m, contrib.shape[-1])
        return y.index_add(1, self.rows, contrib)          # gradients flow to shared theta


layer = TiedLinear(pat, c_in=2, c_out=4).double()
x = torch.randn(8, pat.shape[1], 2, dtype=torch.float64)
y = layer(x)
y.sum().backward()                                         # theta.grad sums over shared entries

# the same numbers from the library, crossing over with DLPack (zero-copy on the CPU)
theta = np.from_dlpack(layer.theta.detach())
y_ps = ps.tied_matmul(np.from_dlpack(x), theta, pat)
assert torch.allclose(y, torch.from_dlpack(y_ps))
