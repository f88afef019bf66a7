"""CUDA twins against the numpy oracle and the CPU path.

Run in numba's CUDA simulator by default (``NUMBA_ENABLE_CUDASIM=1``, set in
``conftest.py`` before numba is imported): every GPU thread is a Python
thread, so grids are patched tiny (4 x 4 tiles, at most 4 blocks) and the
arrays are small.  On a GPU machine run with ``NUMBA_ENABLE_CUDASIM=0``.
"""

import contextlib

import numpy as np
import pytest
import reference_ops as ref

import paramshare_nb as ps
from paramshare_nb import config
from paramshare_nb.patterns import Pattern

cuda = pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device or simulator")

from paramshare_nb import _dispatch_cuda as dc  # noqa: E402 -- after numba.cuda is known
from paramshare_nb._kernels import cuda as ck  # noqa: E402


def _simulated() -> bool:
    from numba import config as numba_config
    return bool(numba_config.ENABLE_CUDASIM)


#: The simulator runs tiny grids only; a real GPU runs every test at tiny grids (the
#: grid-stride loops wrap many times) and at the defaults (real tile and block sizes).
GRIDS = ["tiny"] if _simulated() else ["tiny", "default"]


@pytest.fixture(autouse=True, params=GRIDS)
def grids(request):
    if request.param == "default":
        yield
        return
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


METHODS = ["auto", "materialize", "gather", "complement", "scatter", "csr"]
#: (dtype, scalar theta, batch shape): both dtypes, both theta layouts, three batch shapes
CASES = [pytest.param(np.float32, False, (3, 2), id="f32-channels-batch3x2"),
         pytest.param(np.float64, True, (), id="f64-scalar-nobatch"),
         pytest.param(np.float64, False, (0,), id="f64-channels-emptybatch")]


def _data(pat, dtype, scalar, batch, seed=11):
    """``theta, x, dy`` for ``pat`` (channels: C_out = 3, C_in = 2)."""
    m, n = pat.shape
    rng = np.random.default_rng(seed)
    shapes = (((pat.n_params,), batch + (n,), batch + (m,)) if scalar else
              ((pat.n_params, 3, 2), batch + (n, 2), batch + (m, 3)))
    return (rng.standard_normal(s).astype(dtype) for s in shapes)


def _cuda_run(pat, method, theta, x, dy):
    """Forward and gradients on the device, copied back."""
    xd, td = cuda.to_device(x), cuda.to_device(theta)
    y = ps.tied_matmul(xd, td, pat, method=method)
    assert dc.is_cuda_array(y) and y.dtype == x.dtype
    dx, dth = ps.tied_matmul_grad(cuda.to_device(dy), xd, td, pat, method=method)
    np.testing.assert_array_equal(xd.copy_to_host(), x)  # inputs never modified
    np.testing.assert_array_equal(td.copy_to_host(), theta)
    return y.copy_to_host(), dx.copy_to_host(), dth.copy_to_host()


def _device_plans(pat, method):
    """Device plans that ``method`` must upload: complement splits (where the CPU finds
    one) for the complement sums, the scatter order's plans for ``"scatter"``."""
    from paramshare_nb import _dispatch
    if method not in ("complement", "scatter"):
        return []
    fwd, bwd = (_dispatch.plan_of(pat, t).split() is not None for t in (False, True))
    keys = ["cuda_split"] if fwd else []  # dtheta by complement sums, for both methods
    if method == "complement" and bwd:
        keys.append("cuda_split_t")  # dx
    if method == "scatter":
        keys += ["cuda_zplan", "cuda_zplan_t"]  # forward and dx
    return keys


@contextlib.contextmanager
def _uploaded(pat, keys):
    """Assert that the block builds the device plans ``keys`` (so their strategy ran)."""
    from paramshare_nb import _dispatch
    for k in keys:
        _dispatch._plans(pat).pop(k, None)  # built by an earlier test: forget it
    yield
    for k in keys:
        assert k in _dispatch._plans(pat), k


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,scalar,batch", CASES)
def test_cuda_matches_reference_and_cpu(name, method, dtype, scalar, batch):
    pat = PATTERNS[name]
    theta, x, dy = _data(pat, dtype, scalar, batch)
    keys = _device_plans(pat, method) if x.size else []
    with _uploaded(pat, keys):
        y, dx, dth = _cuda_run(pat, method, theta, x, dy)
    assert y.shape == dy.shape and dx.shape == x.shape and dth.shape == theta.shape
    _close(y, ref.forward(x, theta, pat), dtype)
    _close(y, ps.tied_matmul(x, theta, pat, method=method), dtype)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    _close(dx, rdx, dtype)
    _close(dth, rdth, dtype)



@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("method", METHODS)
def test_cuda_writes_all_it_allocates(monkeypatch, name, method):
    # every device buffer starts as NaN: a kernel that reads an entry nobody wrote (W of a
    # complete pattern is stored, not zeroed and added) shows in the result
    plain = ck.cuda_memory.empty

    def nan_filled(shape, dtype):
        a = plain(shape, dtype)
        if a.size:
            a.copy_to_device(np.full(a.shape, np.nan, dtype))
        return a
    monkeypatch.setattr(ck.cuda_memory, "empty", nan_filled)
    pat = PATTERNS[name]
    theta, x, dy = _data(pat, np.float32, False, (3, 2))
    y, dx, dth = _cuda_run(pat, method, theta, x, dy)
    _close(y, ref.forward(x, theta, pat), np.float32)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    _close(dx, rdx, np.float32)
    _close(dth, rdth, np.float32)

@pytest.mark.parametrize("c_out,c_in", [(3, 1), (1, 2)])
def test_cuda_grad_with_one_channel_on_a_side(c_out, c_in):
    """With one channel on a side, dx reads theta transposed as a reshape (no copy kernel):
    every strategy but materialize (whose gradient has its own path) against the
    reference."""
    pat = PATTERNS["multi"]
    m, n = pat.shape
    rng = np.random.default_rng(8)
    theta = rng.standard_normal((pat.n_params, c_out, c_in))
    x, dy = rng.standard_normal((4, n, c_in)), rng.standard_normal((4, m, c_out))
    rdx, rdth = ref.grad(dy, x, theta, pat)
    for method in ("auto", "csr", "gather", "complement", "scatter"):
        y, dx, dth = _cuda_run(pat, method, theta, x, dy)
        _close(y, ref.forward(x, theta, pat), np.float64)
        _close(dx, rdx, np.float64)
        _close(dth, rdth, np.float64)

def test_cuda_complement_on_deep_sets_and_an_empty_residual():
    from paramshare_nb import _dispatch
    deep = PATTERNS["deepsets"]
    # Deep Sets: one base per row and a diagonal residual, in both directions
    assert _dispatch.plan_of(deep).split() is not None
    assert _dispatch.plan_of(deep, True).split() is not None
    assert _dispatch.plan_of(deep).zplan()[2].uses_blocks  # scatter adds by block totals
    # one parameter everywhere: the base is all of W, the residual has no entries
    ones = Pattern((3, 3), np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3), np.zeros(9, int))
    sp = _dispatch.plan_of(ones).split()
    assert sp is not None and sp.n_derived == 0
    theta, x, dy = _data(ones, np.float64, False, (2,))
    with _uploaded(ones, ["cuda_split"]):
        y, dx, dth = _cuda_run(ones, "complement", theta, x, dy)
    _close(y, ref.forward(x, theta, ones), np.float64)
    rdx, rdth = ref.grad(dy, x, theta, ones)
    _close(dx, rdx, np.float64)
    _close(dth, rdth, np.float64)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's inf arithmetic
@pytest.mark.parametrize("method", ["complement", "scatter"])
def test_cuda_non_finite_falls_back_like_the_cpu(method):
    pat = PATTERNS["deepsets"]
    theta, x, dy = _data(pat, np.float64, False, (2,))
    x_inf, dy_inf = x.copy(), dy.copy()
    x_inf[0, 1] = [np.inf, -np.inf]  # with theta's signs: inf, -inf and nan outputs
    dy_inf[1, 2, :2] = [np.inf, -np.inf]
    for xx, dd in ((x_inf, dy_inf), (x_inf, dy), (x, dy_inf)):
        got = _cuda_run(pat, method, theta, xx, dd)
        want = (ps.tied_matmul(xx, theta, pat, method=method),
                *ps.tied_matmul_grad(dd, xx, theta, pat, method=method))
        assert not all(np.isfinite(w).all() for w in want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11, equal_nan=True)
    assert np.isnan(want[0]).any() or np.isnan(want[1]).any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cuda_materialize_skips_structural_zeros_like_the_cpu():
    """An inf in x (dy) in a column (row) with structural zeros: the dense W's 0 * inf would
    be nan in outputs that do not sum it; both backends run "csr" there instead."""
    pat = PATTERNS["multi"]  # (1, 0) and all of row 2 hold no edge
    theta, x, dy = _data(pat, np.float64, False, (2,))
    x[1, 0, 1], dy[0, 2, 0] = np.inf, np.inf
    got = _cuda_run(pat, "materialize", theta, x, dy)
    want = (ps.tied_matmul(x, theta, pat, method="csr"),
            *ps.tied_matmul_grad(dy, x, theta, pat, method="csr"))
    assert np.isfinite(want[0]).any() and np.isfinite(want[1]).any()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11, equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cuda_materialize_meets_each_entry_summed_like_the_cpu():
    """Multi-edges in the sparse fallback: entry (0, 0) holds 1 - 2, so inf in x[0] gives
    -inf (the dense product's answer), not the edge-by-edge nan."""
    pat = Pattern((2, 2), [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 0])
    theta, ones = np.float32([1, -2]), np.ones((1, 2), np.float32)
    inf_first = np.float32([[np.inf, 1]])
    y = ps.tied_matmul(cuda.to_device(inf_first), cuda.to_device(theta), pat,
                       method="materialize")
    np.testing.assert_array_equal(y.copy_to_host(), [[-np.inf, 1]])
    got = ps.tied_matmul_grad(cuda.to_device(inf_first), cuda.to_device(ones),
                              cuda.to_device(theta), pat, method="materialize")
    want = ps.tied_matmul_grad(inf_first, ones, theta, pat, method="materialize")
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.copy_to_host(), w)
    np.testing.assert_array_equal(want[0], [[-np.inf, np.inf]])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cuda_complement_needs_finite_theta_and_differences():
    """As on the CPU: theta_0 - theta_1 overflowing float32, or a nan on no edge, sends the
    complement sums to "gather" (finite outputs stay finite)."""
    ds = PATTERNS["deepsets"]
    x = np.zeros((2, 4, 2), np.float32)
    x[:, 0] = 1.0
    dy = np.ones((2, 4, 2), np.float32)
    big = np.stack([2e38 * np.eye(2), -2e38 * np.eye(2)]).astype(np.float32)
    unused = Pattern(ds.shape, ds.rows, ds.cols, ds.params, n_params=3)
    nan_theta = np.concatenate([np.eye(2)[None], 0.5 * np.eye(2)[None],
                                np.full((1, 2, 2), np.nan)]).astype(np.float32)
    for pat, theta in ((ds, big), (unused, nan_theta)):
        got = _cuda_run(pat, "complement", theta, x, dy)
        want = (ps.tied_matmul(x, theta, pat, method="csr"),
                *ps.tied_matmul_grad(dy, x, theta, pat, method="csr"))
        assert np.isfinite(want[0]).all()
        for g, w in zip(got[:2], want[:2]):
            np.testing.assert_allclose(g, w, rtol=1e-6, equal_nan=True)


def test_cuda_materialize_respects_max_bytes():
    pat = PATTERNS["multi"]
    theta, x, dy = _data(pat, np.float32, False, (2,))
    w_bytes = 4 * 3 * 3 * 2 * 4  # M N C_out C_in float32
    xd, td = cuda.to_device(x), cuda.to_device(theta)
    with ps.config.override(max_bytes=w_bytes - 1):
        with pytest.raises(MemoryError, match=r"materialize needs W of shape \(12, 6\)") as cu:
            ps.tied_matmul(xd, td, pat, method="materialize")
        with pytest.raises(MemoryError) as cpu:
            ps.tied_matmul(x, theta, pat, method="materialize")
        assert str(cu.value) == str(cpu.value)
        with pytest.raises(MemoryError, match="config.max_bytes"):
            ps.tied_matmul_grad(cuda.to_device(dy), xd, td, pat, method="materialize")
    with ps.config.override(max_bytes=w_bytes):  # exactly at the bound: allowed
        y = ps.tied_matmul(xd, td, pat, method="materialize")
    _close(y.copy_to_host(), ref.forward(x, theta, pat), np.float32)
    x[0, 0, 0], dy[0, 0, 0] = np.inf, np.inf  # the csr fallbacks must not skip the bound
    with ps.config.override(max_bytes=w_bytes - 1):
        with pytest.raises(MemoryError, match="materialize needs W"):
            ps.tied_matmul(cuda.to_device(x), td, pat, method="materialize")
        with pytest.raises(MemoryError, match="materialize needs W"):  # before any work
            ps.tied_matmul_grad(cuda.to_device(dy), xd, td, pat, method="materialize")


def test_cuda_csr_dtheta_multiplies_each_edge_first():
    # two inputs near float32's largest share a parameter: summing them first (the gather
    # strategies, as documented) overflows, csr's per-edge products do not
    method = "csr"
    pat = Pattern((1, 2), [0, 0], [0, 1], [0, 0])
    x = np.float32([[3e38, 3e38]])
    theta, dy = np.float32([1e-10]), np.float32([[1e-10]])
    dx, dth = ps.tied_matmul_grad(cuda.to_device(dy), cuda.to_device(x), cuda.to_device(theta),
                                  pat, method=method)
    np.testing.assert_allclose(dth.copy_to_host(), [6e28], rtol=1e-6)
    np.testing.assert_allclose(ps.tied_matmul_grad(dy, x, theta, pat, method="csr")[1], [6e28],
                               rtol=1e-6)
    np.testing.assert_allclose(dx.copy_to_host(), [[1e-20, 1e-20]], rtol=1e-6)


def test_cuda_host_inputs_keep_their_family():
    with pytest.raises(ValueError, match="x is ragged"):
        ps.tied_matmul([[1.0, 2.0], [1.0]], np.ones(1), PATTERNS["deepsets"], backend="cuda")
    masked = np.ma.masked_array(np.ones((2, 4)), mask=np.eye(2, 4, dtype=bool))
    with pytest.raises(TypeError, match="x is a masked array, whose mask would be ignored"):
        ps.tied_matmul(masked, np.ones(2), PATTERNS["deepsets"], backend="cuda")
    with pytest.raises(TypeError, match="theta is a masked array"):
        ps.tied_matmul_grad(np.ones((2, 4)), np.ones((2, 4)), np.ma.masked_array(np.ones(2)),
                            PATTERNS["deepsets"], backend="cuda")
    torch = pytest.importorskip("torch")
    pat = PATTERNS["deepsets"]
    x = torch.ones((2, 4), dtype=torch.float32)
    y = ps.tied_matmul(x, torch.tensor([1.0, 2.0]), pat, backend="cuda")  # CPU tensors in
    assert isinstance(y, torch.Tensor) and not y.is_cuda
    np.testing.assert_allclose(y.numpy(), np.full((2, 4), 7.0))


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
    with pytest.raises(ValueError, match="C-contiguous on the device; pass a contiguous"):
        ps.tied_matmul(cuda.to_device(x), cuda.to_device(theta), pat,
                       out=cuda.device_array((3, 1, 4, 4), np.float32)[..., ::2])
    with pytest.raises(TypeError, match="out must be a CUDA array when the multiply runs on the "
                                        "GPU .CUDA inputs or backend='cuda'., got ndarray"):
        ps.tied_matmul(x, theta, pat, backend="cuda", out=np.empty((3, 1, 4, 2), np.float32))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        ps.tied_matmul(cuda.to_device(x.astype(np.int32)), cuda.to_device(theta), pat)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., N, C_in\)"):
        ps.tied_matmul(cuda.to_device(x[..., :2, :].copy()), cuda.to_device(theta), pat)


def test_cuda_threads_past_the_block_limit_are_refused():
    with pytest.raises(ValueError, match="at most 1024"):
        with config.override(cuda_threads=2048):
            pass
    monkeypatch = pytest.MonkeyPatch()
    try:  # as PARAMSHARE_CUDA_THREADS=2048 would set it, past override's check
        monkeypatch.setitem(vars(config), "cuda_threads", 2048)
        with pytest.raises(ValueError, match="PARAMSHARE_CUDA_THREADS"):
            ck.require()
    finally:
        monkeypatch.undo()


def test_cuda_unusable_raises_with_a_hint(monkeypatch):
    monkeypatch.setattr(ck.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install paramshare_nb\[cuda\]"):
        ps.tied_matmul(np.ones(4), np.ones(2), PATTERNS["deepsets"], backend="cuda")


def test_cuda_out_aliasing_x_goes_through_a_temporary():
    # out=x in place (a square pattern): the kernels must not read entries of x that
    # other threads have already overwritten with outputs (the CPU uses a temporary)
    pat = PATTERNS["deepsets"]
    theta, x, _ = _data(pat, np.float64, True, (2,))
    xd = cuda.to_device(x)
    assert ps.tied_matmul(xd, cuda.to_device(theta), pat, out=xd, method="csr") is xd
    _close(xd.copy_to_host(), ref.forward(x, theta, pat), np.float64)


def test_cuda_device_plans_are_rebuilt_in_a_new_context(monkeypatch):
    # after cuda.close() or on another GPU, cached device arrays must not be reused
    from paramshare_nb import _dispatch
    pat = PATTERNS["multi"]
    theta, x, dy = _data(pat, np.float64, False, (2,))
    first = _cuda_run(pat, "csr", theta, x, dy)
    old = _dispatch._plans(pat)["cuda_plan"]
    monkeypatch.setattr(ck.cuda, "current_context", lambda: object())  # a fresh context
    again = _cuda_run(pat, "csr", theta, x, dy)
    new = _dispatch._plans(pat)["cuda_plan"]
    assert new[0] is not old[0] and new[1]["indptr"] is not old[1]["indptr"]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_cuda_strided_and_reversed_device_inputs():
    # non-contiguous device views (a step, a reversed axis) are copied on the device
    pat = PATTERNS["multi"]
    theta, x, dy = _data(pat, np.float32, False, (4,))
    xd, td, dyd = cuda.to_device(x), cuda.to_device(theta), cuda.to_device(dy)
    views = (xd[::-2], td[:, ::-1], dyd[::-2])
    hosts = (x[::-2], theta[:, ::-1], dy[::-2])
    y = ps.tied_matmul(views[0], views[1], pat).copy_to_host()
    dx, dth = ps.tied_matmul_grad(views[2], views[0], views[1], pat)
    _close(y, ref.forward(hosts[0], hosts[1], pat), np.float32)
    rdx, rdth = ref.grad(hosts[2], hosts[0], hosts[1], pat)
    _close(dx.copy_to_host(), rdx, np.float32)
    _close(dth.copy_to_host(), rdth, np.float32)


@pytest.mark.skipif(_simulated(), reason="the simulator has no CuPy or PyTorch interop")
@pytest.mark.parametrize("family", ["cupy", "torch"])
def test_cuda_cupy_and_torch_arrays_stay_on_the_device(family):
    # anything exposing __cuda_array_interface__ runs on the GPU and comes back in its family
    pat = PATTERNS["multi"]
    theta, x, dy = _data(pat, np.float32, False, (3,))
    if family == "cupy":
        cp = pytest.importorskip("cupy")
        put, back, kind = cp.asarray, cp.asnumpy, cp.ndarray
    else:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("PyTorch without CUDA")
        put, back, kind = (lambda a: torch.as_tensor(a, device="cuda"),
                           lambda t: t.cpu().numpy(), torch.Tensor)
    xd, td, dyd = put(x), put(theta), put(dy)
    y = ps.tied_matmul(xd, td, pat)
    dx, dth = ps.tied_matmul_grad(dyd, xd, td, pat)
    for got in (y, dx, dth):
        assert isinstance(got, kind)
    assert family == "cupy" or all(t.is_cuda for t in (y, dx, dth))
    _close(back(y), ref.forward(x, theta, pat), np.float32)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    _close(back(dx), rdx, np.float32)
    _close(back(dth), rdth, np.float32)
    np.testing.assert_array_equal(back(xd), x)  # inputs never modified


def test_cuda_dtheta_steps_through_batch_and_bases():
    """The (edge or base, batch) items that csr's and the complement's dtheta threads step
    through without dividing: a parameter with two bases (it fills most of both input
    blocks), batches that do and do not divide the 4-thread stride, a thread's batch
    index wrapping into its next base."""
    rows, cols, params = [], [], []
    for m in range(6):
        for j in range(12):
            rows.append(m)
            cols.append(j)
            params.append(0 if j == m else 2 if j == m + 6 else 1)
    pat = Pattern((6, 12), rows, cols, params, n_params=3)
    split = ps._dispatch.plan_of(pat).split()
    assert np.diff(np.asarray(split.q_ptr)).max() == 2  # parameter 1: a base in each block
    with config.override(cuda_threads=4, cuda_max_blocks=3):
        for batch in ((1,), (3,), (5,), (9,)):
            for scalar in (True, False):
                theta, x, dy = _data(pat, np.float64, scalar, batch)
                rdx, rdth = ref.grad(dy, x, theta, pat)
                for method in ("complement", "csr"):
                    dx, dth = ps.tied_matmul_grad(cuda.to_device(dy), cuda.to_device(x),
                                                  cuda.to_device(theta), pat, method=method)
                    _close(dx.copy_to_host(), rdx, np.float64)
                    _close(dth.copy_to_host(), rdth, np.float64)


@pytest.mark.parametrize("per_thread,splits", [(False, 1), (True, 1), (False, 7)],
                         ids=["block-per-item", "thread-per-item", "7-blocks-per-item"])
@pytest.mark.parametrize("method", ["csr", "materialize"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_cuda_dtheta_reductions_agree_either_way(monkeypatch, name, method, per_thread, splits):
    # csr_dtheta / reduce_dw run a block or a thread per (p, co, ci), and csr's also
    # several blocks per item (7: some parts past the last term); all give dtheta
    if method == "materialize" and splits > 1:
        pytest.skip("reduce_dw runs one block per item")
    monkeypatch.setattr(ck, "_thread_per_item", lambda items, work, tile: per_thread)
    monkeypatch.setattr(ck, "_splits", lambda items, work, tile: splits)
    pat = PATTERNS[name]
    for scalar, dtype in ((False, np.float32), (True, np.float64)):
        theta, x, dy = _data(pat, dtype, scalar, (5,))
        _, dx, dth = _cuda_run(pat, method, theta, x, dy)
        rdx, rdth = ref.grad(dy, x, theta, pat)
        _close(dx, rdx, dtype)
        _close(dth, rdth, dtype)


def test_cuda_reduction_shape_and_auto_rule(monkeypatch):
    # the figures in _thread_per_item's and _choose's docstrings, on an H200-sized device
    monkeypatch.setattr(ck, "_resident_threads", lambda: 132 * 2048)
    with config.override(cuda_threads=256, cuda_max_blocks=4096):
        assert ck._thread_per_item(8256 * 64, 8 * 64, 16)  # D4 on a 16 x 16 image, csr
        assert not ck._thread_per_item(2 * 32 * 32, 131072 * 64, 16)  # Deep Sets S_512
        assert ck._splits(2 * 32 * 32, 131072 * 64, 16) == 1  # 2048 items fill 1056 blocks
        assert ck._splits(10, 10 * 4096, 16) == 20  # w4: 8 terms a thread
        assert ck._splits(10, 10 ** 8, 16) == 106  # 1056 resident blocks
        assert ck._splits(10, 100, 16) == 1
    # the longest parameter counts, not the mean: one orbit of 12 edges among 1-edge ones
    lopsided = Pattern((4, 4), np.repeat(np.arange(4), 4), np.tile(np.arange(4), 4),
                       [0, 4, 4, 4, 4, 1, 4, 4, 4, 4, 2, 4, 4, 4, 4, 3])
    assert dc._longest_param(lopsided) == 12 and dc._longest_param(PATTERNS["multi"]) == 3
    deepsets = PATTERNS["deepsets"]  # 2 groups of 8 edges, and complement sums
    assert dc._choose(deepsets, "auto", dc._CSR_BELOW, 4, 4) == "scatter"
    assert dc._choose(deepsets, "auto", dc._CSR_BELOW, 2, 3) == "complement"
    assert dc._choose(deepsets, "auto", dc._CSR_BELOW - 1) == "csr"  # launches dominate
    # D5 on a 4 x 5 image to a pentagon: 50 groups of 100 edges, no complement sums
    r, c = np.divmod(np.arange(20), 5)
    v = np.arange(5)
    d5 = ps.Action([np.where(r < 2, r * 5 + (c + 1) % 5, r * 5 + (c - 1) % 5), (3 - r) * 5 + c],
                   [(v + 1) % 5, (-v) % 5])
    assert dc._choose(ps.dense_pattern(d5), "auto", dc._CSR_BELOW) == "gather"
    regular = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(5)))  # a parameter per entry
    assert dc._choose(regular, "auto", 10 * dc._CSR_BELOW) == "csr"
    assert dc._choose(regular, "scatter", 1) == "scatter"


def test_cuda_auto_takes_cublas_for_long_dense_rows(monkeypatch):
    monkeypatch.setattr(ck.cuda_blas, "available", lambda: True)
    c16 = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(16)))  # rows of 16 edges
    assert dc._choose(c16, "auto", 1, 16, 16) == "materialize"  # 256 terms an output
    assert dc._choose(c16, "auto", 1, 16, 1) == "materialize"  # dx's columns: 256 terms
    assert dc._choose(c16, "auto", 1, 8, 8) == "csr"  # 128 terms: csr's one launch
    with config.override(max_bytes=16 * 16 * 16 * 16 * 4):  # W in float32 just fits
        assert dc._choose(c16, "auto", 1, 16, 16) == "materialize"
        assert dc._choose(c16, "auto", 1, 16, 16, itemsize=8) == "csr"
    half = Pattern((2, 512), np.zeros(256, int), np.arange(256), np.arange(256))
    assert dc._choose(half, "auto", 1, 1, 1) == "csr"  # W a quarter filled
    monkeypatch.setattr(ck.cuda_blas, "available", lambda: False)
    assert dc._choose(c16, "auto", 1, 16, 16) == "csr"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_gemm_both_ways_against_numpy(monkeypatch, dtype):
    # cuBLAS (a device with CuPy) and the tiled numba kernel, every transpose, odd sizes
    rng = np.random.default_rng(5)
    ks = ck.kernels(dtype, ck._tile())
    blas = [True, False] if ck.cuda_blas.available() else [False]
    for use_blas in blas:
        if not use_blas:
            monkeypatch.setattr(ck.cuda_blas, "gemm", lambda *a: False)
        for ta in (False, True):
            for tb in (False, True):
                r, k, s_ = 7, 5, 9
                a = rng.standard_normal((k, r) if ta else (r, k)).astype(dtype)
                b = rng.standard_normal((s_, k) if tb else (k, s_)).astype(dtype)
                c = cuda.device_array((r, s_), dtype)
                ck._gemm(cuda.to_device(a), cuda.to_device(b), c, ta, tb, ks)
                want = (a.T if ta else a) @ (b.T if tb else b)
                _close(c.copy_to_host(), want, dtype)
    if not ck.cuda_blas.available():
        assert not ck.cuda_blas.gemm(cuda.to_device(a), cuda.to_device(b), c, ta, tb)


def test_cuda_launches_keep_the_tile_their_kernels_were_built_for(monkeypatch):
    # another thread's config.override(cuda_threads=...) between building a kernel set and
    # launching it: the blocks must stay the set's (the shared arrays are sized for them)
    monkeypatch.setattr(ck.cuda_blas, "gemm", lambda *a: False)  # the tiled kernel
    rng = np.random.default_rng(6)
    with config.override(cuda_threads=4):
        ks = ck.kernels(np.float32, ck._tile())
    assert ks["tile"] == 2
    a = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.standard_normal((3, 7)).astype(np.float32)
    c = cuda.device_array((5, 7), np.float32)
    with config.override(cuda_threads=64):  # tile 8
        ck._gemm(cuda.to_device(a), cuda.to_device(b), c, False, False, ks)
        ck._reduce(ks, "csr_dtheta", 0)  # no items: no launch
    _close(c.copy_to_host(), a @ b, np.float32)


def test_cuda_block_kernels_are_compiled_for_their_block_size(monkeypatch):
    if ck.numba.config.ENABLE_CUDASIM:
        assert ck._jit_for_blocks(1024) is ck.cuda.jit  # the simulator's jit has no bounds
    monkeypatch.setattr(ck.numba.config, "ENABLE_CUDASIM", False)
    assert ck._jit_for_blocks(1024).keywords == {"launch_bounds": 1024}


def test_cuda_nonfinite_flag_is_reset_and_per_thread(monkeypatch):
    import threading

    ctx = ck.cuda.current_context()
    monkeypatch.setattr(ck.cuda, "current_context", lambda: ctx)  # the simulator: one context
    monkeypatch.setattr(ck._FLAGS, "hit", None, raising=False)
    ks = ck.kernels(np.float32, ck._tile())
    bad = cuda.to_device(np.array([1.0, np.inf, 2.0], np.float32))
    good = cuda.to_device(np.ones(3, np.float32))
    assert ck._nonfinite(bad, ks) and not ck._nonfinite(good, ks)  # reset between checks
    assert ck._nonfinite(cuda.to_device(np.array([np.nan], np.float32)), ks)
    mine, theirs = ck._flag(), []
    assert ck._flag() is mine  # kept, not made again
    worker = threading.Thread(target=lambda: theirs.append(ck._flag()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine


def test_cuda_numba_cuda_that_fails_under_this_numpy_is_refused(monkeypatch):
    # numba-cuda 0.30.4 under numpy 2.5: an AttributeError at the first compilation,
    # turned into a RuntimeError that says what to install
    import importlib

    import numba


    def broken(name):
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")
    monkeypatch.delattr(np, "row_stack", raising=False)
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(RuntimeError, match=r"install numpy<2.5 .*row_stack|row_stack.*numpy<2.5"):
        ck._check_numpy_compat()

    def missing(name):
        raise ImportError(name)
    monkeypatch.setattr(importlib, "import_module", missing)
    assert ck._check_numpy_compat() is None  # another layout: nothing known to fail
