"""A stand-in for the CUDA tied multiply, for testing the autograd's device plumbing.

Under the test suite numba runs its CUDA simulator, whose device arrays the
autograd must keep on the "device".  The stand-in checks that it is asked for
``backend="cuda"`` with device arrays, computes on host copies with the CPU
kernels and returns device arrays; CPU calls go to the real functions.
"""

from __future__ import annotations

import pytest


def install(monkeypatch):
    """Patch ``paramshare_nb.ops`` in place; returns the list of CUDA calls made."""
    cuda = pytest.importorskip("numba.cuda")
    if not cuda.is_available():
        pytest.skip("no CUDA device or simulator")
    from paramshare_nb import ops
    from paramshare_nb.autograd.function import is_cuda_array

    real_fwd, real_grad = ops.tied_matmul, ops.tied_matmul_grad
    calls = []

    def fwd(x, theta, pattern, backend=None, **kw):
        if backend == "cpu":
            return real_fwd(x, theta, pattern, **kw)
        calls.append("forward")
        assert backend == "cuda" and is_cuda_array(x) and is_cuda_array(theta)
        return cuda.to_device(real_fwd(x.copy_to_host(), theta.copy_to_host(), pattern))

    def grad(dy, x, theta, pattern, backend=None, **kw):
        if backend == "cpu":
            return real_grad(dy, x, theta, pattern, **kw)
        calls.append("grad")
        assert backend == "cuda" and is_cuda_array(dy) and is_cuda_array(x)
        dx, dth = real_grad(dy.copy_to_host(), x.copy_to_host(), theta.copy_to_host(), pattern)
        return cuda.to_device(dx), cuda.to_device(dth)

    monkeypatch.setattr(ops, "tied_matmul", fwd)
    monkeypatch.setattr(ops, "tied_matmul_grad", grad)
    return calls
