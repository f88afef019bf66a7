"""Layers, models and checkpoints: gradients, equivariance, initialisation, errors."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

import paramshare_nb as ps
from paramshare_nb import checkpoint, nn
from paramshare_nb.autograd import Tensor, gradcheck


@pytest.fixture(scope="module")
def d4():
    gens = ps.groups.square_symmetries(4)
    return gens, ps.Action.same(gens)


def _grad_inputs(model, x):
    model.astype(np.float64)
    return Tensor(np.asarray(x, np.float64), requires_grad=True), model.parameters()


# -- gradients of every layer ----------------------------------------------------------------
@pytest.mark.parametrize("design", ["dense", "sparse"])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (2, 3)])
def test_equivariant_linear_gradcheck(design, c_in, c_out, rng):
    act = ps.Action.same(ps.groups.cyclic(5))
    layer = nn.EquivariantLinear(act, c_in, c_out, design=design, rng=rng)
    layer.bias.data = rng.standard_normal(layer.bias.shape).astype(np.float32)
    x, params = _grad_inputs(layer, rng.standard_normal((3, 5, c_in)))
    assert gradcheck(lambda a, *p: layer(a), x, *params, rng=rng)


def test_equivariant_linear_matches_materialized(d4, rng):
    gens, act = d4
    layer = nn.EquivariantLinear(act, 2, 3, rng=rng, dtype=np.float64)
    layer.bias.data = rng.standard_normal(layer.bias.shape)
    x = rng.standard_normal((5, 16, 2))
    w = layer.pattern.materialize(layer.weight.data)  # (M, c_out, N, c_in)
    b = layer.bias.data[ps.orbits(gens)]  # one bias per output orbit
    np.testing.assert_allclose(layer(x).numpy(), np.einsum("monc,bnc->bmo", w, x) + b,
                               rtol=1e-10, atol=1e-12)
    assert layer.bias.shape == (3, 3)  # D4 on a 4x4 grid: 3 orbits of pixels


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_orbit_pool_gradcheck(d4, reduce, rng):
    gens, _ = d4
    pool = nn.OrbitPool(gens, reduce)
    x = Tensor(rng.standard_normal((2, 16, 3)), requires_grad=True)
    assert gradcheck(lambda a: pool(a), x, rng=rng)
    assert pool(x).shape == (2, 3, 3)


def test_linear_flatten_losses_gradcheck(rng):
    lin = nn.Linear(6, 4, rng=rng)
    x, params = _grad_inputs(lin, rng.standard_normal((3, 2, 3)))
    f = nn.Flatten()
    target = np.array([0, 3, 1])
    assert gradcheck(lambda a, *p: nn.cross_entropy(lin(f(a)), target), x, *params, rng=rng)
    y = rng.standard_normal((3, 4))
    assert gradcheck(lambda a, *p: nn.mse(lin(f(a)), y), x, *params, rng=rng)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.2), nn.Tanh(), nn.Sigmoid(),
                                 nn.GELU(), nn.Identity()])
def test_activation_modules_gradcheck(act, rng):
    x = Tensor(rng.standard_normal((3, 4)) + 0.05, requires_grad=True)
    assert gradcheck(lambda a: act(a) * 1.0, x, rng=rng)


def test_losses_against_numpy(rng):
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 3, 2, 2, 1])
    lse = np.log(np.exp(logits).sum(1))
    ref = np.mean(lse - logits[np.arange(5), target])
    np.testing.assert_allclose(nn.cross_entropy(Tensor(logits), target).item(), ref, rtol=1e-12)
    pred, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    np.testing.assert_allclose(nn.mse(Tensor(pred), y).item(), np.mean((pred - y) ** 2))
    with pytest.raises(ValueError, match="cross_entropy: target ids"):
        nn.cross_entropy(Tensor(logits), np.array([0, 4, 0, 0, 0]))
    with pytest.raises(ValueError, match="mse: pred has shape"):
        nn.mse(Tensor(pred), y[:, :1])


def test_dropout_train_and_eval(rng):
    drop = nn.Dropout(0.5, rng=0)
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = drop(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < np.mean(y == 0) < 0.6
    drop.eval()
    assert drop(x) is x
    drop.train()
    assert drop.training


# -- equivariance of layers and whole models -------------------------------------------------
def test_layer_equivariance(d4, rng):
    _, act = d4
    layer = nn.EquivariantLinear(act, 2, 3, rng=rng, dtype=np.float64)
    layer.bias.data = rng.standard_normal(layer.bias.shape)
    x = rng.standard_normal((4, 16, 2))
    err = ps.equivariance_error(lambda a: layer(a).numpy(), act, x, axis=1, rng=rng)
    assert err < 1e-12


@pytest.mark.parametrize("design", ["dense", "sparse"])
def test_model_equivariance_and_invariance(design, rng):
    gens = ps.groups.cyclic(6)
    act = ps.Action.same(gens)
    body = nn.Sequential(nn.EquivariantLinear(act, 1, 4, design=design, rng=rng), nn.ReLU(),
                         nn.EquivariantLinear(act, 4, 4, design=design, rng=rng), nn.Tanh())
    model = nn.Sequential(body, nn.OrbitPool(gens, "max"), nn.Flatten(), nn.Linear(4, 3, rng=rng))
    x = rng.standard_normal((5, 6, 1)).astype(np.float32)
    assert ps.equivariance_error(lambda a: body(a).numpy(), act, x, axis=1, rng=rng) < 1e-5
    base = model(x).numpy()
    for g in ps.closure(gens):
        np.testing.assert_allclose(model(ps.perm.apply(g, x, axis=1)).numpy(), base, atol=1e-5)


def test_digit_model_invariant_to_d4(rng):
    from paramshare_nb.demo import build_digit_models

    inv, mlp, gens = build_digit_models(channels=3, hidden=8, seed=1)
    x = rng.random((4, 64)).astype(np.float32)
    base = inv(x[:, :, None]).numpy()
    moved = [np.abs(inv(ps.perm.apply(g, x, axis=1)[:, :, None]).numpy() - base).max()
             for g in ps.closure(gens)]
    assert max(moved) < 1e-5
    mlp_moved = [np.abs(mlp(ps.perm.apply(g, x, axis=1)).numpy() - mlp(x).numpy()).max()
                 for g in ps.closure(gens)]
    assert max(mlp_moved) > 1e-3  # the MLP is not invariant


# -- initialisation -------------------------------------------------------------------------
def test_cuda_tensor_that_will_not_share_is_refused_by_name():
    """A PyTorch CUDA tensor that requires grad raises RuntimeError from its
    ``__cuda_array_interface__``; every place that probes for one says to detach it."""
    class Tracked:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires "
                               "grad")
    for make in (Tensor, nn.Parameter, nn.Linear(2, 2)):
        with pytest.raises(TypeError, match=r"would not share its memory .*tensor\.detach\(\)"):
            make(Tracked())


def test_masked_arrays_are_refused_not_unmasked():
    """np.asarray drops a mask, and the arithmetic would use the values under it."""
    x = np.ma.masked_array(np.ones((2, 2)), mask=[[False, True], [False, False]])
    for make in (Tensor, nn.Parameter, nn.Linear(2, 2, dtype=np.float64),
                 lambda a: Tensor(np.ones(2)) * a, lambda a: a + Tensor(np.ones(2))):
        with pytest.raises(TypeError, match=r"is a masked array, whose mask would be ignored"):
            make(x)
    act = ps.Action.same(ps.groups.cyclic(2))
    with pytest.raises(TypeError, match=r"x is a masked array.*np\.ma\.getdata\(x\)"):
        ps.equivariance_error(lambda a: a, act, x)
    with pytest.raises(TypeError, match="pattern_or_matrix is a masked array"):
        ps.is_equivariant(x, act)
    m = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    a = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match=r"backward: grad is a masked array.*grad\.filled"):
        (a * 2.0).backward(m)
    p = nn.Parameter(np.ones(3))
    p.grad = m
    with pytest.raises(TypeError, match=r"SGD.step: the gradient .* masked array.*p\.grad"):
        ps.optim.SGD([p], lr=1.0).step()
    np.testing.assert_array_equal(p.data, np.ones(3))
    lin = nn.Linear(3, 1, dtype=np.float64, bias=False)
    with pytest.raises(ValueError, match="load_state_dict: 'weight' is a masked array"):
        lin.load_state_dict({"weight": np.ma.masked_array(np.ones((1, 3)), mask=[[0, 1, 0]])})
    labels = np.ma.masked_array([0, 1, 0], mask=[0, 1, 0])
    with pytest.raises(TypeError, match="segment_reduce: labels is a masked array"):
        ps.autograd.segment_reduce(Tensor(np.ones((1, 3, 2))), labels, 2)
    with pytest.raises(TypeError, match="cross_entropy: target is a masked array"):
        nn.cross_entropy(Tensor(np.zeros((2, 3))), np.ma.masked_array([0, 2], mask=[0, 1]))
    with pytest.raises(TypeError, match="an operand is a masked array"):
        nn.mse(Tensor(np.zeros(3)), m)


def test_module_to_and_astype_are_all_or_nothing(monkeypatch):
    """to and astype made every change before the one that failed (numba's simulator)."""
    cuda = pytest.importorskip("numba.cuda")
    if not cuda.is_available():
        pytest.skip("no CUDA device or simulator")
    model = nn.Sequential(nn.Linear(2, 3, rng=0), nn.Linear(3, 1, rng=1))
    for p in model.parameters():
        p.grad = np.ones(p.shape, np.float32)
    before = model.state_dict()
    copies = []
    real = cuda.to_device

    def third_copy_fails(*args, **kwargs):  # the device runs out of memory
        copies.append(1)
        if len(copies) == 3:
            raise MemoryError("out of device memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(cuda, "to_device", third_copy_fails)
    with pytest.raises(MemoryError):
        model.to("cuda")
    monkeypatch.undo()
    assert all(p.device == "cpu" and p.grad is not None for p in model.parameters())
    model.to("cpu").astype(np.float32)  # nothing to do: the gradients stay
    assert all(p.grad is not None for p in model.parameters())
    model[1].to("cuda")
    with pytest.raises(RuntimeError, match="move the model to the CPU first"):
        model.astype(np.float64)
    assert model[0].weight.dtype == np.float32
    model.to("cpu")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_module_changes_are_checked_before_any_is_made():
    """extend appended the items before the one that failed; a Parameter could be replaced
    by anything (then not trained, saved or moved)."""
    model = nn.Sequential(nn.Linear(2, 3, rng=0))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got None"):
        model.astype(None)  # np.dtype(None) is float64
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got None"):
        nn.Linear(2, 2, dtype=None)
    blocks = nn.ModuleList([nn.ReLU()])
    with pytest.raises(TypeError, match="item 2 is a int, not a Module"):
        blocks.extend([nn.Tanh(), 3])
    assert len(blocks) == 1
    layer = nn.Linear(2, 2)
    for bad in ("abc", np.zeros((2, 2), np.float32)):
        with pytest.raises(TypeError, match=r"Linear\.weight is a Parameter; assign a Parameter"):
            layer.weight = bad
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    layer.bias = None  # dropping a bias is allowed, as PyTorch's
    assert layer(np.ones((1, 2), np.float32)).shape == (1, 2)
    with pytest.raises(TypeError, match="state must be a mapping"):
        layer.load_state_dict(["weight"], strict=False)
    for call in (lambda: layer.load_state_dict({}, strict="no"), lambda: layer.train("no")):
        with pytest.raises(TypeError, match="must be a bool, got 'no'"):
            call()
    with pytest.raises(ValueError, match="Flatten: expected input of shape"):
        nn.Flatten()(Tensor(1.0))


def test_sizes_and_numbers_past_range_are_named():
    """numpy's and Python's own errors (OverflowError, 'Maximum allowed dimension
    exceeded', a raw 16 TiB allocation) did not say which argument."""
    act = ps.Action.same(ps.groups.cyclic(4))
    for make in (lambda: nn.EquivariantLinear(act, 2**70, 5), lambda: nn.Linear(2**70, 5),
                 lambda: nn.Linear(2**40, 2)):
        with pytest.raises(MemoryError, match=r"(Linear): a weight of shape .* over "
                                              r"config.max_bytes"):
            make()
    with pytest.raises(ValueError, match="gain must be a finite number >= 0, got an int past"):
        nn.Linear(3, 5, gain=2**2000)
    for make in (lambda: nn.Linear(3, 5, bias="no"), lambda: nn.EquivariantLinear(act, 1, 1,
                                                                                  bias="no")):
        with pytest.raises(TypeError, match="bias must be a bool, got 'no'"):
            make()
    with pytest.raises(MemoryError, match="over config.max_bytes"):
        ps.Action.same([], n=2**70)
    with pytest.raises(TypeError, match="SGD: params must be an iterable of parameters"):
        ps.optim.SGD(None, lr=0.1)


def test_init_variance_uses_true_fan_in():
    # rows with 3, 1, 2 and 4 non-zeros; every parameter sits in one row
    index = np.array([[0, 1, 2, -1], [3, -1, -1, -1], [4, -1, 5, -1], [6, 7, 8, 9]])
    pat = ps.Pattern.from_index(index)
    act = ps.Action.same(ps.groups.trivial(4))
    c_in = 40
    layer = nn.EquivariantLinear(act, c_in, 300, design=pat, rng=0, dtype=np.float64)
    row_of = pat.rows[np.argsort(pat.params)]
    nnz = np.bincount(pat.rows)
    np.testing.assert_array_equal(layer.fan_in, nnz * c_in)
    std = layer.weight.data.reshape(pat.n_params, -1).std(axis=1)
    np.testing.assert_allclose(std, np.sqrt(2.0 / (nnz[row_of] * c_in)), rtol=0.05)


def test_init_output_variance(d4, rng):
    _, act = d4
    layer = nn.EquivariantLinear(act, 8, 64, rng=rng, gain=1.0, dtype=np.float64)
    y = layer(rng.standard_normal((400, 16, 8))).numpy()
    assert 0.7 < y.var() < 1.3


# -- modules: parameters, state, modes, errors ---------------------------------------------
def test_parameters_and_state_dict(d4, rng):
    _, act = d4
    model = nn.Sequential(nn.EquivariantLinear(act, 1, 2, rng=rng), nn.ReLU(),
                          nn.OrbitPool(d4[0]), nn.Flatten(), nn.Linear(6, 3, rng=rng))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert model.n_parameters() == sum(p.size for p in model.parameters())
    state = model.state_dict()
    other = nn.Sequential(nn.EquivariantLinear(act, 1, 2, rng=7), nn.ReLU(),
                          nn.OrbitPool(d4[0]), nn.Flatten(), nn.Linear(6, 3, rng=7))
    other.load_state_dict(state)
    x = rng.random((2, 16, 1)).astype(np.float32)
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())
    state["4.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match="'4.bias' has shape"):
        other.load_state_dict(state)
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({})
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    assert "EquivariantLinear(N=16" in repr(model)


def test_shared_parameter_counted_once(rng):
    lin = nn.Linear(3, 3, rng=rng)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    assert len(model.parameters()) == 2
    x = Tensor(rng.standard_normal((2, 3)))
    model.astype(np.float64)
    assert gradcheck(lambda *p: model(x), *model.parameters(), rng=rng)


def test_layer_errors(d4):
    gens, act = d4
    layer = nn.EquivariantLinear(act, 2, 3)
    with pytest.raises(ValueError, match=r"EquivariantLinear\(N=16.*expected input of shape "
                                         r"\(batch, 16, 2\)"):
        layer(np.ones((4, 9, 2), np.float32))
    with pytest.raises(ValueError, match="expected input of shape"):
        layer(np.ones((4, 16, 3), np.float32))
    with pytest.raises(TypeError, match="EquivariantLinear.*dtype float64 does not match"):
        layer(np.ones((4, 16, 2)))
    with pytest.raises(TypeError, match=r"use np.asarray\(x, dtype=np.float32\) \(x.astype for "
                                        r"a Tensor\)$"):  # no model.astype(int)
        layer(Tensor(np.ones((4, 16, 2), np.int64)))
    with pytest.raises(TypeError, match=r"EquivariantLinear\(N=16.*must be a Tensor or an "
                                        r"array, got str"):
        layer("x")
    with pytest.raises(ValueError, match=r"Linear\(2 -> 3, bias=True\): expected input of "
                                         r"shape \(\.\.\., 2\), got \(4, 5\)"):
        nn.Linear(2, 3)(np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match=r"Linear\(2 -> 3, bias=True\): input dtype float64"):
        nn.Linear(2, 3)(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"OrbitPool\(n=16, n_orbits=3, reduce='mean'\): "
                                         r"expected input of shape \(batch, 16, \.\.\.\)"):
        nn.OrbitPool(gens, "mean")(np.ones((4, 9, 2), np.float32))
    with pytest.raises(ValueError, match="design must be"):
        nn.EquivariantLinear(act, 1, 1, design="diagonal")
    identity = ps.Pattern.from_index(np.where(np.eye(16, dtype=bool), 0, -1))
    assert ps.is_equivariant(identity, act)  # a custom pattern that fits is taken
    nn.EquivariantLinear(act, 1, 1, design=identity)
    shifted = ps.Pattern.from_index(np.where(np.eye(16, k=1, dtype=bool), 0, -1))
    with pytest.raises(ValueError, match="not equivariant to the action"):
        nn.EquivariantLinear(act, 1, 1, design=shifted)
    for dtype in (np.float16, np.int64, "complex128", "no such dtype"):
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            nn.EquivariantLinear(act, 1, 1, dtype=dtype)
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            nn.Linear(2, 2, dtype=dtype)
    for gain in (-1.0, np.nan, np.inf, "2"):
        with pytest.raises(ValueError, match="gain must be a finite number"):
            nn.EquivariantLinear(act, 1, 1, gain=gain)
        with pytest.raises(ValueError, match="gain must be a finite number"):
            nn.Linear(2, 2, gain=gain)
    lin = nn.Linear(2, 2, rng=0)
    before = lin.weight.data.copy()
    with pytest.raises(TypeError, match=r"Linear.astype: dtype must be float32 or float64"):
        lin.astype(np.int64)
    np.testing.assert_array_equal(lin.weight.data, before)  # refused before touching anything
    with pytest.raises(TypeError, match="must be a paramshare_nb.Action"):
        nn.EquivariantLinear(ps.groups.cyclic(4), 1, 1)
    with pytest.raises(ValueError, match="c_out must be an integer"):
        nn.EquivariantLinear(act, 1, 0)
    with pytest.raises(ValueError, match=r"Linear\(4 -> 2.*\(\.\.\., 4\)"):
        nn.Linear(4, 2)(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="OrbitPool.*expected input"):
        nn.OrbitPool(d4[0])(np.ones((2, 15, 1)))
    with pytest.raises(TypeError, match="Sequential: item 1"):
        nn.Sequential(nn.ReLU(), "relu")


# -- checkpoints ----------------------------------------------------------------------------
def _model(action, seed, design="dense"):
    return nn.Sequential(nn.EquivariantLinear(action, 1, 2, design=design, rng=seed),
                         nn.ReLU(), nn.Linear(2, 2, rng=seed))


def test_checkpoint_round_trip(tmp_path, rng):
    act = ps.Action.same(ps.groups.cyclic(5))
    a, b = _model(act, 1), _model(act, 2)
    path = checkpoint.save(tmp_path / "model", a)
    assert path.endswith(".npz") and os.path.exists(path)
    checkpoint.load(path, b)
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    with np.load(path, allow_pickle=False) as data:
        assert str(data["pattern/0.weight"]) == a[0].pattern.fingerprint()


def test_checkpoint_save_refuses_what_load_would(tmp_path):
    """A model with a nan saved a file that no load could read; a folder as the path was
    reported under the temporary file's name."""
    act = ps.Action.same(ps.groups.cyclic(5))
    model = _model(act, 1)
    model[0].weight.data[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"parameter '0.weight' holds non-finite values"):
        checkpoint.save(tmp_path / "m", model)
    assert os.listdir(tmp_path) == []
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.npz.*is a folder"):
        checkpoint.save(tmp_path / "d", _model(act, 2))
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_checkpoint_refuses_other_pattern(tmp_path):
    path = checkpoint.save(tmp_path / "m.npz", _model(ps.Action.same(ps.groups.cyclic(5)), 1))
    other = _model(ps.Action.same(ps.groups.dihedral(5)), 1)  # different tying, same names
    before = other.state_dict()
    with pytest.raises(ValueError, match="layer pattern '0.weight' differs"):
        checkpoint.load(path, other)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing loaded
    sparse = _model(ps.Action.same(ps.groups.cyclic(5)), 1, design="sparse")
    with pytest.raises(ValueError, match="differs"):
        checkpoint.load(path, sparse)


def test_checkpoint_refuses_foreign_files(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(5))
    np.savez(tmp_path / "x.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a paramshare_nb checkpoint"):
        checkpoint.load(tmp_path / "x.npz", _model(act, 1))
    np.savez(tmp_path / "obj.npz", __format__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        checkpoint.load(tmp_path / "obj.npz", _model(act, 1))


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    act = ps.Action.same(ps.groups.cyclic(5))
    good = _model(act, 1)
    path = checkpoint.save(tmp_path / "m.npz", good)
    saved = open(path, "rb").read()

    def broken(fh, **arrays):
        fh.write(b"half a file")
        raise KeyboardInterrupt  # the write is interrupted

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, _model(act, 2))
    assert open(path, "rb").read() == saved
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary left behind


# -- the same model on CUDA data (numba's simulator; stand-in tied multiply) -----------------
@pytest.mark.parametrize("kernels", ["stand-in", "real"])
def test_training_step_on_cuda_matches_cpu(kernels, monkeypatch, rng):
    from fake_cuda import install

    from paramshare_nb import _dispatch, optim

    if kernels == "real":
        cuda = pytest.importorskip("numba.cuda")
        try:
            _dispatch.cuda_module()
        except RuntimeError as exc:
            pytest.skip(f"CUDA tied multiply not available: {exc}")
        if not cuda.is_available():
            pytest.skip("no CUDA device or simulator")
        calls = None
    else:
        calls = install(monkeypatch)
    gens = ps.groups.cyclic(6)
    act = ps.Action.same(gens)
    x = rng.standard_normal((4, 6, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 1])

    def step(device):
        model = nn.Sequential(nn.EquivariantLinear(act, 1, 3, rng=5), nn.ReLU(),
                              nn.OrbitPool(gens, "mean"), nn.Flatten(), nn.Linear(3, 3, rng=6))
        model.to(device)
        opt = optim.Adam(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = nn.cross_entropy(model(Tensor(x).to(device)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    cpu, gpu = step("cpu"), step("cuda")
    if calls is not None:
        assert calls.count("forward") == 2 and calls.count("grad") == 2
    assert all(p.device == "cuda" for p in gpu.parameters())
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(gpu.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="EquivariantLinear.*input is on cpu"):
        gpu(x)


# -- checkpoint loading: refused without touching the model -------------------------------
def _saved_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("bad", [
    "shape", "structured", "structured2", "datetime", "complex", "overflow", "nan", "string"])
def test_checkpoint_load_is_atomic_and_checks_dtypes(tmp_path, bad):
    act = ps.Action.same(ps.groups.cyclic(5))
    path = checkpoint.save(tmp_path / "m.npz", _model(act, 1))
    arrays = _saved_arrays(path)
    last = sorted(k for k in arrays if k.startswith("param/"))[-1]  # the first one stays valid
    shape = arrays[last].shape
    arrays[last] = {
        "shape": np.zeros(shape + (1,)),
        "structured": np.zeros(shape, dtype=[("a", "f8")]),
        "structured2": np.zeros(shape, dtype=[("a", "f8"), ("b", "f8")]),
        "datetime": np.zeros(shape, dtype="datetime64[s]"),
        "complex": np.ones(shape, dtype=complex),
        "overflow": np.full(shape, 1e300),
        "nan": np.full(shape, np.nan),
        "string": np.full(shape, "1.0"),
    }[bad]
    np.savez(tmp_path / "bad.npz", **arrays)
    model = _model(act, 2)
    before = model.state_dict()
    with pytest.raises(ValueError, match=f"'{last[len('param/'):]}'"):
        checkpoint.load(tmp_path / "bad.npz", model)
    _assert_unchanged(model, before)


def test_checkpoint_load_refuses_tampered_zip_headers(tmp_path, tampered_zips):
    act = ps.Action.same(ps.groups.cyclic(5))
    path = checkpoint.save(tmp_path / "m.npz", _model(act, 1))
    model = _model(act, 2)
    before = model.state_dict()
    for bad in tampered_zips(path):
        with pytest.raises(ValueError, match="is not a readable checkpoint"):
            checkpoint.load(bad, model)
    _assert_unchanged(model, before)


def test_checkpoint_load_refuses_unreadable_files(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(5))
    path = checkpoint.save(tmp_path / "m.npz", _model(act, 1))
    np.save(tmp_path / "plain.npy", np.ones(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all" * 8)
    with zipfile.ZipFile(path) as src, \
            zipfile.ZipFile(tmp_path / "deflate.npz", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    raw = bytearray((tmp_path / "deflate.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "deflate.npz") as z:
        info = z.infolist()[-1]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start:start + info.compress_size] = b"\xff" * info.compress_size  # corrupt deflate data
    (tmp_path / "deflate.npz").write_bytes(bytes(raw))
    model = _model(act, 2)
    before = model.state_dict()
    why = {"plain.npy": "a single .npy array", "junk.npz": r"no zip header",  # not "pickled"
           "deflate.npz": "is not a readable checkpoint"}
    for name, match in why.items():
        with pytest.raises(ValueError, match=match):
            checkpoint.load(tmp_path / name, model)
    _assert_unchanged(model, before)


def test_flatten_keeps_an_empty_batch():
    out = nn.Flatten()(np.ones((0, 3, 4), np.float32))
    assert out.shape == (0, 12)


def test_tensors_where_arrays_are_expected():
    """equivariance_error takes a layer (it returns a Tensor), load_state_dict takes
    another model's parameters, and a Tensor's truth is numpy's."""
    act = ps.Action.same(ps.groups.cyclic(3))
    layer = nn.EquivariantLinear(act, 1, 2, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 1)).astype(np.float32)
    assert ps.equivariance_error(layer, act, x, axis=-2) < 1e-5
    other = nn.EquivariantLinear(act, 1, 2, rng=1)
    # with as many channels as points, the default axis was the channels': 7.75 measured
    # for this exactly equivariant layer; a layer's default is its index axis
    six = ps.Action.same(ps.groups.symmetric(6))
    square = nn.EquivariantLinear(six, 6, 6, rng=0)
    x6 = np.random.default_rng(1).standard_normal((8, 6, 6)).astype(np.float32)
    assert ps.equivariance_error(square, six, x6, rng=0) < 1e-5
    assert ps.equivariance_error(square, six, x6, axis=-1, rng=0) > 0.1  # the channels
    assert ps.equivariance_error(lambda a: square(a).numpy(), six, x6, axis=-1, rng=0) > 0.1
    layer.load_state_dict(dict(other.named_parameters()))
    np.testing.assert_array_equal(layer.weight.data, other.weight.data)
    assert bool(ps.Tensor(np.ones(1))) and not bool(ps.Tensor(np.zeros(())))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(ps.Tensor(np.zeros(3)))


def test_checkpoint_loads_from_the_name_given_to_save(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(5))
    written = checkpoint.save(tmp_path / "model", _model(act, 1))
    assert written.endswith("model.npz")
    model = _model(act, 2)
    checkpoint.load(tmp_path / "model", model)
    np.testing.assert_array_equal(model.state_dict()["0.weight"],
                                  _model(act, 1).state_dict()["0.weight"])
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "other", model)


def test_checkpoint_and_pattern_files_read_what_save_wrote(tmp_path):
    # a folder or file named like the checkpoint must not shadow the .npz that save wrote
    act = ps.Action.same(ps.groups.cyclic(5))
    (tmp_path / "model").mkdir()
    checkpoint.save(tmp_path / "model", _model(act, 1))
    model = _model(act, 2)
    checkpoint.load(tmp_path / "model", model)
    np.testing.assert_array_equal(model.state_dict()["0.weight"],
                                  _model(act, 1).state_dict()["0.weight"])
    pat = ps.dense_pattern(act)
    ps.save_pattern(tmp_path / "pat", pat)
    assert ps.load_pattern(tmp_path / "pat") == pat  # save_pattern wrote pat.npz


def test_files_written_over_keep_their_mode_and_bytes_paths_work(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(5))
    path = checkpoint.save(tmp_path / "m", _model(act, 1))
    os.chmod(path, 0o600)
    checkpoint.save(tmp_path / "m", _model(act, 2))
    assert os.stat(path).st_mode & 0o777 == 0o600  # os.replace would have reset it
    pat = ps.dense_pattern(act)
    ps.save_pattern(os.fsencode(tmp_path / "b"), pat)
    assert ps.load_pattern(os.fsencode(tmp_path / "b")) == pat


def test_checkpoint_and_pattern_files_follow_the_umask(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(5))
    old = os.umask(0o022)
    try:
        written = checkpoint.save(tmp_path / "m", _model(act, 1))
        ps.save_pattern(tmp_path / "p", ps.dense_pattern(act))
    finally:
        os.umask(old)
    for name in (written, tmp_path / "p.npz"):
        assert os.stat(name).st_mode & 0o777 == 0o644, name  # mkstemp made 0600
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "p.npz"]


def test_dropout_and_leaky_relu_check_their_numbers():
    with pytest.raises(TypeError, match="Dropout: p must be a real number"):
        nn.Dropout("0.5")
    with pytest.raises(ValueError, match=r"Dropout: p must be finite and in \[0, 1\)"):
        nn.Dropout(1.0)
    with pytest.raises(TypeError, match="LeakyReLU: slope must be a real number"):
        nn.LeakyReLU("a")
    with pytest.raises(ValueError, match="LeakyReLU: slope must be finite"):
        nn.LeakyReLU(float("nan"))
    with pytest.raises(TypeError, match="Dropout: rng must be None, a non-negative int seed"):
        nn.Dropout(0.5, rng="x")
    with pytest.raises(TypeError, match="EquivariantLinear: rng must be None"):
        nn.EquivariantLinear(ps.Action.same(ps.groups.cyclic(3)), 1, 1, rng="x")
    # integer inputs are scaled in float64, as numpy promotes (an int scale would be 1)
    drop = nn.Dropout(0.3, rng=0)
    out = drop(np.full((4, 50), 10, dtype=np.int64)).data
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.unique(out), [0.0, 10 / 0.7])


def test_sequential_slices_share_modules():
    act = ps.Action.same(ps.groups.cyclic(5))
    model = _model(act, 0)
    head = model[0:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is model[0]
    x = np.ones((1, 5, 1), np.float32)
    np.testing.assert_array_equal(model(x).data, model[2](head(x)).data)
    assert len(model[::-1]) == 3 and model[-1] is model[2]
    with pytest.raises(TypeError, match="0-d"):
        len(ps.Tensor(np.float64(1.0)))


class _Blocks(nn.Module):
    def __init__(self, act, container):
        super().__init__()
        self.blocks = container(nn.EquivariantLinear(act, 1, 1, rng=k) for k in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_module_list_registers_its_modules_and_a_plain_list_warns(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(4))
    model = _Blocks(act, nn.ModuleList)
    names = [name for name, _ in model.named_parameters()]
    assert names == [f"blocks.{k}.{p}" for k in range(3) for p in ("weight", "bias")]
    x = np.ones((2, 4, 1), np.float32)
    expected = model.blocks[2](model.blocks[1](model.blocks[0](x))).data
    np.testing.assert_array_equal(model(x).data, expected)
    assert isinstance(model.blocks[1:], nn.ModuleList) and model.blocks[1:][0] is model.blocks[1]
    checkpoint.load(checkpoint.save(tmp_path / "m", model), _Blocks(act, nn.ModuleList))
    with pytest.raises(TypeError, match="ModuleList: item 3 is a int, not a Module"):
        model.blocks.append(3)
    with pytest.raises(TypeError, match=r"an iterable of modules, got one Linear; pass \[module\]"):
        nn.ModuleList(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ModuleList has no forward"):
        model.blocks(x)
    listed = _Blocks(act, list)  # the silent miss: an optimizer would skip these layers
    with pytest.warns(UserWarning, match="_Blocks.blocks is a plain list holding modules"):
        assert listed.parameters() == []


def test_user_mistakes_get_messages_that_say_the_fix(tmp_path):
    act = ps.Action.same(ps.groups.cyclic(4))
    model = _model(act, 0)
    with pytest.raises(TypeError, match=r"checkpoint.save: model must be an nn.Module, got str "
                                         r"\(the path comes first"):
        checkpoint.save(model, str(tmp_path / "m.npz"))
    with pytest.raises(TypeError, match=r"checkpoint.load: .* \(the path comes first"):
        checkpoint.load(model, str(tmp_path / "m.npz"))
    with pytest.raises(TypeError, match=r"np.asarray\(x, dtype=np.float32\)"):
        model([[[1.0]] * 4])  # a list of float64
    loss = nn.mse(model(np.ones((1, 4, 1), np.float32)), np.zeros((1, 4, 2), np.float32))
    assert float(loss) == loss.item() and isinstance(float(loss), float)
    assert int(ps.Tensor(np.array([2.7]))) == 2
    with pytest.raises(ValueError, match="has 2 elements, not one"):
        float(ps.Tensor(np.ones(2)))
