"""The prepared GPU script (benchmarks/gpu_check.py) on the simulator, tiny sizes.

Checks its plumbing: every strategy runs on device arrays, is compared with
the CPU, and is timed (timing itself is stubbed: the simulator's times mean
nothing).
"""

import functools
import os
import sys

import pytest

import paramshare_nb as ps

cuda = pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device or simulator")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import compare  # noqa: E402
import gpu_check  # noqa: E402


def test_gpu_check_times_every_strategy_after_checking_it(monkeypatch):
    tiny = {"w1": ("Deep Sets S_4, 2->1, batch 2",
                   lambda: ps.dense_pattern(ps.Action.same(ps.groups.symmetric(4))),
                   2, 2, 1, 50.0)}
    monkeypatch.setattr(compare, "workloads", lambda: tiny)
    monkeypatch.setattr(gpu_check, "_median", lambda fn, sync, **kw: (fn(), sync(), 1e-3)[2])
    with ps.config.override(cuda_threads=16, cuda_max_blocks=4):
        rows = gpu_check.measure_workloads(["w1"], "float32")
    assert [r["workload"] for r in rows] == ["w1"]
    for row in rows:
        assert set(ps.ops.METHODS) <= set(row["ms"])
        assert all(v == 1.0 for k, v in row["ms"].items() if k in ps.ops.METHODS), row


@pytest.mark.parametrize("scalar", [True, False])
def test_gpu_check_peer_formula_matches_the_reference(scalar):
    # the cuBLAS peer's arithmetic, run with numpy arrays in place of CuPy / PyTorch
    import numpy as np
    import reference_ops as ref

    def np_scatter(idx, rows, shape, dtype):
        out = np.zeros(shape, dtype=dtype)
        np.add.at(out, idx, rows)
        return out

    pat = ps.dense_pattern(compare.figure1_d5())
    fn = gpu_check._materialise_and_multiply(pat, scalar, pat.index().ravel(),
                                             lambda a, axes: a.transpose(axes), np_scatter)
    rng = np.random.default_rng(3)
    m, n = pat.shape
    shapes = (((pat.n_params,), (4, n), (4, m)) if scalar else
              ((pat.n_params, 3, 2), (4, n, 2), (4, m, 3)))
    theta, x, dy = (rng.standard_normal(s) for s in shapes)
    y, dx, dth = fn(x, theta, dy)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    np.testing.assert_allclose(y.reshape(dy.shape), ref.forward(x, theta, pat), atol=1e-12)
    np.testing.assert_allclose(dx.reshape(x.shape), rdx, atol=1e-12)
    np.testing.assert_allclose(dth.reshape(theta.shape), rdth, atol=1e-12)


@pytest.mark.parametrize("scalar", [True, False])
def test_gpu_check_gemms_alone_are_the_dense_products(scalar):
    # the "cuBLAS GEMMs alone" line: y, dx and dW of the dense shape, W given
    import numpy as np
    import reference_ops as ref

    pat = ps.dense_pattern(compare.figure1_d5())
    m, n = pat.shape
    rng = np.random.default_rng(4)
    shapes = (((pat.n_params,), (3, n), (3, m)) if scalar else
              ((pat.n_params, 3, 2), (3, n, 2), (3, m, 3)))
    theta, x, dy = (rng.standard_normal(s) for s in shapes)
    y, dx, dw = gpu_check._gemms_alone(pat, (x, theta, dy), np.asarray)()
    np.testing.assert_allclose(y.reshape(dy.shape), ref.forward(x, theta, pat), atol=1e-12)
    np.testing.assert_allclose(dx.reshape(x.shape), ref.grad(dy, x, theta, pat)[0], atol=1e-12)
    np.testing.assert_allclose(dw, dy.reshape(3, -1).T @ x.reshape(3, -1), atol=1e-12)


def test_gpu_check_kernel_times_count_each_launch(monkeypatch):
    tiny = {"w4": ("Figure-1 D5, scalar, batch 3", lambda: ps.dense_pattern(compare.figure1_d5()),
                   3, None, None, 3.0)}
    monkeypatch.setattr(compare, "workloads", lambda: tiny)
    monkeypatch.setattr(gpu_check, "_median", lambda fn, sync, **kw: (fn(), sync(), 1e-3)[2])
    with ps.config.override(cuda_threads=16, cuda_max_blocks=4):
        got = gpu_check.kernel_times(["w4"], ["csr"], calls=2)
    row = got["w4 csr"]
    # forward: one csr_forward; gradient: csr_forward (dx) and a dtheta reduction
    assert row["kernels"]["csr_forward"]["launches"] == 2
    assert sum(r["launches"] for r in row["kernels"].values()) == 3
    assert row["allocs"] == 3  # y, dx, dtheta
    from paramshare_nb._kernels import cuda_memory
    assert not isinstance(cuda_memory.empty, functools.partial)  # restored


def test_gpu_check_stops_first_on_a_numpy_its_kernels_cannot_use(monkeypatch, tmp_path, capsys):
    """A numba-cuda that cannot compile under the installed numpy: the script says so and
    what to install, records it, and runs neither the tests nor the timings."""
    from paramshare_nb._kernels import cuda as kcuda

    def refuse():
        raise RuntimeError("numba-cuda 0.30.4 cannot compile kernels with numpy 2.5.2; "
                           "install numpy<2.5")
    monkeypatch.setattr(kcuda, "_check_numpy_compat", refuse)
    monkeypatch.setattr(gpu_check, "run_tests", lambda: pytest.fail("tests ran"))
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")  # main sets it to 0 for its subprocess
    assert gpu_check.main([]) == 1
    assert "preflight: numba-cuda 0.30.4 cannot compile" in capsys.readouterr().out
    assert "install numpy<2.5" in (tmp_path / "gpu_check.json").read_text()
    monkeypatch.undo()
    assert gpu_check._preflight() is None  # this machine's numpy is one numba-cuda can use
