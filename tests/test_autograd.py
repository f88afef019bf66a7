"""Autograd: every primitive against finite differences, the engine, errors."""

from __future__ import annotations

import numpy as np
import pytest

import paramshare_nb as ps
from paramshare_nb.autograd import Function, Tensor, concat, gradcheck, no_grad, segment_reduce
from paramshare_nb.autograd import tied_matmul as ag_tied_matmul
from paramshare_nb.autograd.engine import toposort
from paramshare_nb.autograd.primitives import unbroadcast


def t64(rng, *shape, positive=False):
    x = rng.standard_normal(shape)
    if positive:
        x = np.abs(x) + 0.5
    return Tensor(x, requires_grad=True)


# -- gradcheck on every primitive -----------------------------------------------------------
UNARY = {
    "neg": lambda a: -a,
    "pow": lambda a: a ** 3,
    "exp": lambda a: a.exp(),
    "tanh": lambda a: a.tanh(),
    "sigmoid": lambda a: a.sigmoid(),
    "gelu": lambda a: a.gelu(),
    "relu": lambda a: a.relu(),
    "leaky_relu": lambda a: a.leaky_relu(0.1),
    "softmax": lambda a: a.softmax(axis=-1),
    "log_softmax": lambda a: a.log_softmax(axis=0),
    "sum": lambda a: a.sum(axis=1),
    "sum_keep": lambda a: a.sum(axis=(0, 2), keepdims=True),
    "mean": lambda a: a.mean(axis=-1),
    "mean_all": lambda a: a.mean(),
    "max": lambda a: a.max(axis=1),
    "max_keep": lambda a: a.max(axis=(0, 2), keepdims=True),
    "reshape": lambda a: a.reshape(6, 4),
    "transpose": lambda a: a.transpose(2, 0, 1),
    "T": lambda a: a.T,
    "getitem_basic": lambda a: a[1:, ::2],
    "getitem_fancy": lambda a: a[np.array([0, 1, 0, 1]), np.array([2, 2, 0, 2])],
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_gradcheck_unary(name, rng):
    a = t64(rng, 2, 3, 4)
    if name in ("relu", "leaky_relu", "max", "max_keep"):
        a.data = a.data + np.sign(a.data) * 0.1  # stay away from kinks and ties
    assert gradcheck(UNARY[name], a, rng=rng)


def test_gradcheck_log(rng):
    assert gradcheck(lambda a: a.log(), t64(rng, 3, 4, positive=True), rng=rng)


@pytest.mark.parametrize("shapes", [((), ()), ((3,), (3,)), ((2, 3), (2, 3)), ((1, 3), (2, 1)),
                                    ((2, 3), (3,)), ((2, 1, 3), (4, 1))])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_gradcheck_binary_broadcast(op, shapes, rng):
    a = t64(rng, *shapes[0])
    b = t64(rng, *shapes[1], positive=(op == "div"))
    f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
         "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    assert gradcheck(f, a, b, rng=rng)


def test_scalar_operands_keep_dtype(rng):
    a = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    for out in (a + 1.5, 2.0 * a, 1.0 - a, a / 3.0, 3.0 / (a * a + 1.0), a ** 2):
        assert out.dtype == np.float32


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((5, 3, 4), (4, 2)),
                                    ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 2)), ((3, 4), (4,))])
def test_gradcheck_matmul(shapes, rng):
    assert gradcheck(lambda x, y: x @ y, t64(rng, *shapes[0]), t64(rng, *shapes[1]), rng=rng)


def test_gradcheck_concat(rng):
    a, b, c = t64(rng, 2, 3), t64(rng, 2, 1), t64(rng, 2, 2)
    assert gradcheck(lambda x, y, z: concat([x, y, z], axis=1) * 2.0, a, b, c, rng=rng)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_gradcheck_segment_reduce(reduce, rng):
    labels = np.array([0, 1, 0, 2, 1, 0])
    a = t64(rng, 3, 6, 2)
    assert gradcheck(lambda x: segment_reduce(x, labels, 3, reduce), a, rng=rng)
    out = segment_reduce(a, labels, 3, reduce).numpy()
    ref = np.stack([getattr(np, reduce)(a.data[:, labels == k], axis=1) for k in range(3)], 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


# -- the tied multiply ----------------------------------------------------------------------
def _reference(x, theta, pattern):
    w = pattern.materialize(theta)
    if theta.ndim == 1:
        return np.einsum("mn,...n->...m", w, x)
    return np.einsum("monc,...nc->...mo", w, x)


@pytest.fixture(scope="module")
def d4_action():
    return ps.Action.same(ps.groups.square_symmetries(3))


@pytest.mark.parametrize("design", ["dense", "sparse"])
@pytest.mark.parametrize("channels", [None, (2, 3)])
def test_tied_matmul_function(d4_action, design, channels, rng):
    pat = ps.dense_pattern(d4_action) if design == "dense" else ps.sparse_pattern(
        ps.Action.same(ps.groups.cyclic(6)))
    m, n = pat.shape
    if channels is None:
        x, th = t64(rng, 4, n), t64(rng, pat.n_params)
    else:
        x, th = t64(rng, 4, n, channels[1]), t64(rng, pat.n_params, channels[0], channels[1])
    y = ag_tied_matmul(x, th, pat)
    np.testing.assert_allclose(y.numpy(), _reference(x.data, th.data, pat), rtol=1e-10,
                               atol=1e-12)
    assert gradcheck(lambda a, b: ag_tied_matmul(a, b, pat), x, th, rng=rng)
    # the gradient with respect to theta, against the materialised reference
    u = rng.standard_normal(y.shape)
    x.grad = th.grad = None
    ag_tied_matmul(x, th, pat).backward(u)
    w = pat.materialize(th.data)
    if channels is None:
        dw = np.einsum("bm,bn->mn", u, x.data)
        ref_dth = np.bincount(pat.params, weights=dw[pat.rows, pat.cols],
                              minlength=pat.n_params)
        ref_dx = np.einsum("bm,mn->bn", u, w)
    else:
        dw = np.einsum("bmo,bnc->mnoc", u, x.data)
        ref_dth = np.zeros_like(th.data)
        np.add.at(ref_dth, pat.params, dw[pat.rows, pat.cols])
        ref_dx = np.einsum("bmo,monc->bnc", u, w)
    np.testing.assert_allclose(th.grad, ref_dth, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(x.grad, ref_dx, rtol=1e-10, atol=1e-10)


def test_float32_matches_float64(d4_action, rng):
    pat = ps.dense_pattern(d4_action)
    x = rng.standard_normal((3, 9, 2))
    th = rng.standard_normal((pat.n_params, 4, 2))
    y64 = (ag_tied_matmul(Tensor(x), Tensor(th), pat).relu().sum(axis=1)).numpy()
    y32 = (ag_tied_matmul(Tensor(x.astype(np.float32)), Tensor(th.astype(np.float32)), pat)
           .relu().sum(axis=1)).numpy()
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)


# -- the engine ----------------------------------------------------------------------------
def test_shared_tensor_accumulates(rng):
    a = t64(rng, 3)
    y = (a * a + a * 3.0 + a.exp()).sum()  # a used four times
    y.backward()
    np.testing.assert_allclose(a.grad, 2 * a.data + 3 + np.exp(a.data), rtol=1e-12)


def test_grad_accumulates_across_backward_calls(rng):
    a = t64(rng, 3)
    (a * 2.0).sum().backward()
    (a * 3.0).sum().backward()
    np.testing.assert_allclose(a.grad, np.full(3, 5.0))


def test_diamond_graph(rng):
    a = t64(rng, 4)
    b = a.tanh()
    c = b * b + b.sigmoid()  # b reached along two paths
    assert gradcheck(lambda x: (x.tanh() * x.tanh() + x.tanh().sigmoid()).sum(), a, rng=rng)
    c.sum().backward()
    t = np.tanh(a.data)
    s = 1 / (1 + np.exp(-t))
    np.testing.assert_allclose(a.grad, (2 * t + s * (1 - s)) * (1 - t * t), rtol=1e-12)


def test_deep_graph_no_recursion_limit():
    import sys

    a = Tensor(np.array([1.0]), requires_grad=True)
    y = a
    for _ in range(10_000):
        y = y * 1.0001
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        y.sum().backward()
    finally:
        sys.setrecursionlimit(old)
    np.testing.assert_allclose(a.grad, [1.0001 ** 10_000], rtol=1e-9)
    assert len(toposort(y)) == 10_001


def test_intermediate_nodes_untouched(rng):
    a = t64(rng, 3)
    b = a * 2.0
    (b * b).sum().backward()
    assert b.grad is None and a.grad is not None


def test_no_grad_and_detach(rng):
    a = t64(rng, 3)
    with no_grad():
        b = a * 2.0
    assert not b.requires_grad and b.is_leaf
    c = (a * 2.0).detach()
    assert not c.requires_grad
    d = (c * a).sum()
    d.backward()
    np.testing.assert_allclose(a.grad, 2 * a.data)
    assert ps.no_grad is no_grad


def test_unbroadcast():
    g = np.ones((4, 2, 3))
    assert unbroadcast(g, (2, 1)).tolist() == [[12.0], [12.0]]
    assert unbroadcast(g, ()).shape == ()
    assert unbroadcast(g, (1, 3)).tolist() == [[8.0, 8.0, 8.0]]


def test_custom_function():
    class Square(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return (2 * a * g,)

    a = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    assert gradcheck(lambda x: Square.apply(x), a)


# -- bad input ------------------------------------------------------------------------------
def test_backward_non_scalar_needs_grad(rng):
    a = t64(rng, 3)
    with pytest.raises(RuntimeError, match="not a scalar; pass grad="):
        (a * 2.0).backward()
    with pytest.raises(ValueError, match="grad has shape"):
        (a * 2.0).backward(np.ones(4))
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        Tensor(np.ones(2)).sum().backward()
    for bad in ([None, 1.0, 2.0], np.array([1j, 2j, 3j])):  # the cast made nan, dropped .imag
        with pytest.raises(TypeError, match="grad must hold real numbers"):
            (a * 2.0).backward(bad)
    assert a.grad is None
    f = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="backward: grad: float64 values overflow float32"):
        (f * 2.0).backward(np.full(3, 1e39))  # was [inf inf inf] with a numpy warning
    assert f.grad is None


def test_backward_checks_the_leaves_grads_before_writing_any():
    """A stale .grad of another shape was broadcast into (a (1,) one added to every entry),
    and a failed pass left the leaves before it already updated."""
    w = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    w.grad = np.array([10.0])
    with pytest.raises(ValueError, match=r"leaf of shape \(3,\) holds a .grad of shape \(1,\)"):
        (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, [10.0])
    a, b = Tensor(np.ones(2), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    a.grad, b.grad = np.zeros(2), "oops"
    loss = (a * 3.0).sum() + (b * 5.0).sum()
    with pytest.raises(TypeError, match="holds a .grad of type str"):
        loss.backward()
    np.testing.assert_array_equal(a.grad, [0.0, 0.0])
    b.grad = None
    loss.backward()
    np.testing.assert_array_equal(a.grad, [3.0, 3.0])
    np.testing.assert_array_equal(b.grad, [5.0, 5.0])


def test_arguments_past_range_or_of_the_wrong_type_are_named():
    t = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="pow: the exponent must be finite"):
        t ** 2**2000
    for axis in ("a", True, (0, "b"), 1.0):
        with pytest.raises(TypeError, match="axis must be None, an int or a tuple of ints"):
            t.sum(axis=axis)
    with pytest.raises(TypeError, match="reshape: the shape must be ints"):
        t.reshape("a")
    with pytest.raises(MemoryError, match="segment_reduce: n_segments"):
        segment_reduce(t, [0, 1, 0], 2**70)
    assert t.sum(axis=np.int64(1)).shape == (2,) and t.reshape(np.int64(6)).shape == (6,)


def test_mixed_dtypes_refused():
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    b = Tensor(np.ones(3, np.float64))
    with pytest.raises(TypeError, match="mul: inputs mix dtypes"):
        a * b


def test_integer_tensors_promote_like_numpy():
    """Constants follow a float tensor's dtype, not an integer one's (0.5 is not 0); an
    integer tensor beside a float one takes the float's dtype, gradients included."""
    i = Tensor(np.array([1, 4, 9]))
    for got, want in [(i * 0.5, [0.5, 2, 4.5]), (i ** 0.5, [1, 2, 3]),
                      (i + [0.5] * 3, [1.5, 4.5, 9.5]), (0.5 - i, [-0.5, -3.5, -8.5]),
                      (i / 2, [0.5, 2, 4.5])]:
        np.testing.assert_array_equal(got.data, want)
    w = Tensor(np.ones(3, np.float32), requires_grad=True)
    for out in (w * i, i * w, w + i, w @ i, ps.nn.mse(w, i)):
        assert out.dtype == np.float32
    (w * i).sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad, [1, 4, 9])
    h = Tensor(np.ones(3, np.float16))
    assert (h * 0.5).dtype == np.float16  # a float keeps its own dtype


def test_concat_bad_axis_or_scalars_raise_value_error():
    with pytest.raises(ValueError, match="concat: cannot join shapes.*along axis 3"):
        concat([Tensor(np.ones(2)), Tensor(np.ones(2))], axis=3)
    with pytest.raises(ValueError, match=r"concat: cannot join shapes \(\), \(\)"):
        concat([Tensor(np.array(1.0)), Tensor(np.array(2.0))])


def test_reductions_refuse_a_repeated_axis():
    t = Tensor(np.ones((2, 3)))
    for reduce in (t.sum, t.mean, t.max):
        with pytest.raises(ValueError, match="repeats an axis"):
            reduce(axis=(1, -1))


def test_reductions_of_a_scalar_keep_its_shape():
    # a 0-d parameter (a learned temperature), or .mean() of a loss that is already a scalar
    for reduce in ("sum", "mean", "max"):
        a = Tensor(np.array(0.5), requires_grad=True)
        getattr(a * 3.0, reduce)().backward()
        assert a.grad.shape == () and a.grad == 3.0
        b = Tensor(np.array([[1.0, 2.0]]), requires_grad=True)
        getattr(getattr(b, reduce)(), reduce)().backward()  # a reduction of a reduction
        assert b.grad.shape == (1, 2)


def test_mixing_with_numpy_never_loses_data_silently():
    t = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="does not support ufuncs"):
        np.exp(t)  # was an object array of Tensors
    assert type(np.ones(2) * t) is Tensor and (np.ones(2) * t).dtype == np.float32
    with pytest.raises(TypeError, match="complex constant with a float32 tensor"):
        t * 1j  # the cast to float32 dropped the imaginary part: [0, 0]
    assert (Tensor(np.ones(2, np.complex64)) * 1j).data.dtype.kind == "c"
    counts = t.astype(np.int64)  # an integer copy needs no gradient (was a TypeError)
    assert counts.dtype == np.int64 and not counts.requires_grad
    assert t.astype(np.float64).requires_grad
    # an integer prediction's float target is not truncated to integers
    assert ps.nn.mse(Tensor(np.array([1, 2])), [0.5, 0.5]).item() == 1.25


def test_matmul_of_vectors_needs_equal_lengths():
    with pytest.raises(ValueError, match="1-D operands of lengths 3 and 1"):
        Tensor(np.ones(3)) @ Tensor(np.ones(1))
    assert (Tensor(np.ones(3)) @ np.arange(3.0)).item() == 3.0


class _FakeDeviceArray:
    """Quacks like a CUDA array for the device checks (never computed on)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.__cuda_array_interface__ = {"shape": shape, "typestr": self.dtype.str,
                                         "data": (0, False), "version": 3}


def test_mixed_devices_refused():
    a = Tensor(np.ones(3))
    b = Tensor(_FakeDeviceArray((3,), np.float64))
    assert b.device == "cuda" and a.device == "cpu"
    with pytest.raises(RuntimeError, match="add: inputs are on different devices"):
        a + b


def test_shape_errors_name_the_op():
    with pytest.raises(ValueError, match="matmul: shapes"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="reshape: cannot reshape"):
        Tensor(np.ones(6)).reshape(4, 2)
    with pytest.raises(ValueError, match="concat"):
        concat([Tensor(np.ones((2, 3))), Tensor(np.ones((3, 2)))], axis=0)


def test_gradcheck_catches_a_wrong_backward():
    class Bad(Function):
        @staticmethod
        def forward(ctx, a):
            return a * a

        @staticmethod
        def backward(ctx, g):
            return (g,)

    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(AssertionError, match="gradcheck failed"):
        gradcheck(lambda x: Bad.apply(x), a)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2.0, Tensor(np.ones(2, np.float32), requires_grad=True))


def test_backward_names_an_op_whose_gradients_are_wrong():
    # the engine names the op only when something is wrong (a name for every node cost
    # time in every backward); both of its checks
    def doubling(name, backward):
        return type(name, (Function,), {"forward": staticmethod(lambda ctx, a: a * 2.0),
                                        "backward": staticmethod(backward)})
    _WrongShape = doubling("_WrongShape", lambda ctx, g: (g[:1],))
    _TooMany = doubling("_TooMany", lambda ctx, g: (g, g))

    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"backward of wrongshape: gradient of shape \(1,\) "
                                           r"for an input of shape \(2,\) .*a bug in that op"):
        _WrongShape.apply(a).sum().backward()
    with pytest.raises(RuntimeError, match="backward of toomany returned 2 gradients for 1 "
                                           "inputs"):
        _TooMany.apply(a).sum().backward()


@pytest.mark.parametrize("scale", [1e-7, 1e-12])
def test_gradcheck_scales_with_the_gradient_and_keeps_grads(scale):
    """A backward twice too large fails also for a tiny function (the tolerance once had a
    floor of 1, then an atol of 1e-9 that 1e-12 slipped under); gradcheck leaves every
    leaf's grad, and the very array it wraps, as it found them."""
    class Double(Function):
        @staticmethod
        def forward(ctx, a):
            return scale * a

        @staticmethod
        def backward(ctx, g):
            return (2 * scale * g,)

    arr = np.array([1.0, 2.0, 3.0])
    a = Tensor(arr, requires_grad=True)
    # atol=0 leaves only the rounding bound: the 1e-12 case slips under the default
    assert not gradcheck(lambda x: Double.apply(x), a, atol=0, raise_exception=False)
    assert a.data is arr  # restored to the caller's array, not a copy
    assert gradcheck(lambda x: scale * x * x, a)
    assert gradcheck(lambda x: 1e-7 * x * x, a)
    w = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)  # a leaf f closes over
    a.grad, w.grad = np.full(3, 7.0), np.full(3, 9.0)
    assert gradcheck(lambda x: (x * w).exp(), a)
    np.testing.assert_array_equal(a.grad, 7.0)
    np.testing.assert_array_equal(w.grad, 9.0)
    assert gradcheck(lambda x: x * 1e8, a)  # large values: rounding, not a wrong backward
    b = Tensor(np.ones(3), requires_grad=True)
    b.grad = np.full(3, 5.0)  # b is checked but unused: its stale grad must not count
    assert gradcheck(lambda x, y: x * 2.0, a, b)
    np.testing.assert_array_equal(b.grad, 5.0)


# -- CUDA data (numba's simulator under the test suite's conftest) ---------------------------
@pytest.fixture
def cuda():
    numba_cuda = pytest.importorskip("numba.cuda")
    if not numba_cuda.is_available():
        pytest.skip("no CUDA device or simulator")
    return numba_cuda


@pytest.fixture
def fake_cuda_ops(monkeypatch, cuda):
    from fake_cuda import install

    return install(monkeypatch)


def test_cuda_data_same_gradients_as_cpu(fake_cuda_ops, rng):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    x0 = rng.standard_normal((3, 4, 2))
    th0 = rng.standard_normal((pat.n_params, 3, 2))
    b0 = rng.standard_normal(3)

    def run(device):
        x = Tensor(x0, requires_grad=True).to(device)
        th = Tensor(th0, requires_grad=True).to(device)
        b = Tensor(b0, requires_grad=True).to(device)
        y = ag_tied_matmul(x, th, pat) + b
        h = (y.relu() * 2.0 + y.tanh()).sum(axis=1)
        loss = (h.log_softmax(axis=-1)[np.arange(3), np.array([0, 2, 1])]).mean() + (th * th).sum()
        loss.backward()
        return loss, [t.grad for t in (x, th, b)]

    loss_cpu, grads_cpu = run("cpu")
    loss_gpu, grads_gpu = run("cuda")
    assert loss_gpu.device == "cuda" and fake_cuda_ops == ["forward", "grad"]
    np.testing.assert_allclose(loss_gpu.item(), loss_cpu.item(), rtol=1e-12)
    for g_cpu, g_gpu in zip(grads_cpu, grads_gpu):
        assert not isinstance(g_gpu, np.ndarray)  # gradients stay on the device
        np.testing.assert_allclose(g_gpu.copy_to_host(), g_cpu, rtol=1e-12, atol=1e-14)


def test_cuda_tied_matmul_real_kernels(cuda, rng):
    from paramshare_nb import _dispatch

    try:
        _dispatch.cuda_module()
    except RuntimeError as exc:
        pytest.skip(f"CUDA tied multiply not available: {exc}")
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    x = Tensor(rng.standard_normal((2, 4, 2)), requires_grad=True)
    th = Tensor(rng.standard_normal((pat.n_params, 3, 2)), requires_grad=True)
    ag_tied_matmul(x, th, pat).sum().backward()
    xd, thd = x.to("cuda"), th.to("cuda")
    yd = ag_tied_matmul(xd, thd, pat)
    yd.sum().backward()
    np.testing.assert_allclose(yd.numpy(), ag_tied_matmul(x, th, pat).numpy(), rtol=1e-10)
    np.testing.assert_allclose(Tensor(thd.grad).numpy(), th.grad, rtol=1e-10)
    np.testing.assert_allclose(Tensor(xd.grad).numpy(), x.grad, rtol=1e-10)


def test_numpy_array_on_the_left(rng):
    a = t64(rng, 3)
    out = np.full(3, 2.0) * a - np.ones(3)
    assert isinstance(out, Tensor)
    out.sum().backward()
    np.testing.assert_allclose(a.grad, np.full(3, 2.0))


# -- regressions --------------------------------------------------------------------------
def test_segment_reduce_validates_labels():
    x = Tensor(np.arange(6.0).reshape(1, 3, 2), requires_grad=True)
    with pytest.raises(ValueError, match="label 5 at position 1"):
        segment_reduce(x, [0, 5, 1], 2)
    with pytest.raises(ValueError, match="label -1"):
        segment_reduce(x, [0, -1, 1], 2)
    with pytest.raises(TypeError, match="integers"):
        segment_reduce(x, [0.0, 1.0, 1.0], 2)
    with pytest.raises(TypeError, match="n_segments"):
        segment_reduce(x, [0, 1, 1], 2.0)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("labels", [[0, 0, 2], [0, 0, 1]])
def test_segment_reduce_empty_segments_are_zero(labels, reduce, rng):
    labels = np.array(labels)
    a = t64(rng, 2, 3, 2)
    out = segment_reduce(a, labels, 3, reduce).numpy()
    ref = np.stack([getattr(np, reduce)(a.data[:, labels == k], axis=1) if (labels == k).any()
                    else np.zeros((2, 2)) for k in range(3)], 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    assert gradcheck(lambda x: segment_reduce(x, labels, 3, reduce), a, rng=rng)
    with pytest.raises(ValueError, match="segment [12] is empty"):
        segment_reduce(a, labels, 3, "max")


def test_getitem_copies_the_index():
    idx = np.array([0, 0])
    a = Tensor(np.arange(3.0), requires_grad=True)
    y = a[idx].sum()
    idx[:] = 2
    y.backward()
    np.testing.assert_array_equal(a.grad, [2.0, 0.0, 0.0])
    rows, cols = np.array([1, 1]), [0, 0]
    b = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = b[rows, cols].sum()
    rows[:], cols[:] = 0, [2, 2]
    y.backward()
    np.testing.assert_array_equal(b.grad, [[0, 0, 0], [2, 0, 0]])


def test_pow_gradient_at_zero():
    for p, want in [(0, [0.0, 0.0]), (1, [1.0, 1.0]), (2, [0.0, 4.0]), (3, [0.0, 12.0])]:
        a = Tensor(np.array([0.0, 2.0]), requires_grad=True)
        (a ** p).sum().backward()
        np.testing.assert_array_equal(a.grad, want)


def test_segment_reduce_of_ints_and_bools_counts_like_numpy():
    ints = Tensor(np.array([[1, 2, 3, 4]]))
    np.testing.assert_allclose(segment_reduce(ints, [0, 0, 1, 1], 2, "mean").data, [[1.5, 3.5]])
    bools = Tensor(np.array([[True, True, False, True]]))
    np.testing.assert_array_equal(segment_reduce(bools, [0, 0, 2, 2], 3, "sum").data,
                                  [[2, 0, 1]])  # an empty segment: a bool buffer gave True
    np.testing.assert_allclose(segment_reduce(bools, [0, 0, 1, 1], 2, "mean").data, [[1, 0.5]])
    pooled = ps.nn.OrbitPool(ps.groups.cyclic(4), "mean")(np.arange(1, 5)[None, :, None])
    np.testing.assert_allclose(pooled.data, [[[2.5]]])


def test_gradcheck_passes_exact_zero_gradients_whose_intermediates_round():
    # x - mean(x) is exactly 0 but rounds at the scale of x: the default atol absorbs it
    # (with atol=0 every seed failed; the rounding bound sees only f's values)
    for seed in range(10):
        x = Tensor(np.random.default_rng(seed).standard_normal((4, 5)), requires_grad=True)
        assert gradcheck(lambda t: (t - t.mean(axis=1, keepdims=True)).sum(axis=1), x,
                         rng=seed)


def test_segment_reduce_and_dropout_keep_complex_dtypes():
    z = Tensor(np.ones((1, 3), np.complex64))
    assert segment_reduce(z, [0, 0, 1], 2, "mean").data.dtype == np.complex64
    assert ps.nn.Dropout(0.5, rng=0)(z).data.dtype == np.complex64
