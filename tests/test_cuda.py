"""CUDA twins against the numpy oracle and the CPU path.

Run in numba's CUDA simulator by default (``NUMBA_ENABLE_CUDASIM=1``, set in
``conftest.py`` before numba is imported): every GPU thread is a Python
thread, so grids are patched tiny (4 x 4 tiles, at most 4 blocks) and the
arrays are small.  On a GPU machine run with ``NUMBA_ENABLE_CUDASIM=0``.
"""

import numpy as np
import pytest
import reference_ops as ref

import paramshare_nb as ps
from paramshare_nb import config
from paramshare_nb.patterns import Pattern

cuda = pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device or simulator")


@pytest.fixture(autouse=True)
def tiny_grids():
    with config.override(cuda_threads=16, cuda_max_blocks=4):
        yield


def _patterns():
    # row 2 empty, a multi-edge at (0, 1)
    multi = Pattern((4, 3), [0, 0, 0, 1, 3, 3], [1, 1, 2, 0, 0, 2], [0, 2, 1, 1, 2, 2])
    return {
        "deepsets": ps.dense_pattern(ps.Action.same(ps.groups.symmetric(4))),
        "multi": multi,
    }


PATTERNS = _patterns()


def _close(a, b, dtype):
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-11
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max(initial=0)))


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("method", ["gather", "csr"])
@pytest.mark.parametrize("dtype,scalar", [(np.float32, False), (np.float64, True)])
def test_cuda_matches_reference_and_cpu(name, method, dtype, scalar):
    pat = PATTERNS[name]
    m, n = pat.shape
    rng = np.random.default_rng(11)
    batch = (2,)
    if scalar:
        theta, x, dy = (rng.standard_normal(s).astype(dtype)
                        for s in ((pat.n_params,), batch + (n,), batch + (m,)))
    else:
        theta, x, dy = (rng.standard_normal(s).astype(dtype)
                        for s in ((pat.n_params, 5, 3), batch + (n, 3), batch + (m, 5)))
    xd, td, dyd = cuda.to_device(x), cuda.to_device(theta), cuda.to_device(dy)
    y = ps.tied_matmul(xd, td, pat, method=method)
    assert ps.ops._is_cuda_array(y) and y.dtype == dtype
    _close(y.copy_to_host(), ref.forward(x, theta, pat), dtype)
    _close(y.copy_to_host(), ps.tied_matmul(x, theta, pat), dtype)
    dx, dth = ps.tied_matmul_grad(dyd, xd, td, pat, method=method)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    _close(dx.copy_to_host(), rdx, dtype)
    _close(dth.copy_to_host(), rdth, dtype)
    np.testing.assert_array_equal(xd.copy_to_host(), x)  # inputs never modified


def test_cuda_out_batches_and_host_inputs():
    pat = PATTERNS["multi"]
    rng = np.random.default_rng(5)
    theta = rng.standard_normal((pat.n_params, 2, 2)).astype(np.float32)
    x = rng.standard_normal((3, 1, 3, 2)).astype(np.float32)
    out = cuda.device_array((3, 1, 4, 2), np.float32)
    got = ps.tied_matmul(cuda.to_device(x), cuda.to_device(theta), pat, out=out)
    assert got is out
    _close(out.copy_to_host(), ref.forward(x, theta, pat), np.float32)
    host = ps.tied_matmul(x, theta, pat, backend="cuda")  # numpy in, forced CUDA: numpy out
    assert isinstance(host, np.ndarray)
    _close(host, ref.forward(x, theta, pat), np.float32)
    mixed = ps.tied_matmul(cuda.to_device(x), cuda.to_device(theta.astype(np.float64)), pat)
    assert mixed.dtype == np.float64
    empty = ps.tied_matmul(cuda.to_device(x[:0]), cuda.to_device(theta), pat)
    assert empty.shape == (0, 1, 4, 2)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 1, 4, 2\)"):
        ps.tied_matmul(cuda.to_device(x), cuda.to_device(theta), pat,
                       out=cuda.device_array((3, 4, 2), np.float32))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        ps.tied_matmul(cuda.to_device(x.astype(np.int32)), cuda.to_device(theta), pat)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., N, C_in\)"):
        ps.tied_matmul(cuda.to_device(x[..., :2, :].copy()), cuda.to_device(theta), pat)


def test_cuda_unusable_raises_with_a_hint(monkeypatch):
    from paramshare_nb._kernels import cuda as ck
    monkeypatch.setattr(ck.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install paramshare_nb\[cuda\]"):
        ps.tied_matmul(np.ones(4), np.ones(2), PATTERNS["deepsets"], backend="cuda")
