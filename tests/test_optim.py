"""Optimizers and schedules against updates computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paramshare_nb import nn, optim
from paramshare_nb.autograd import Tensor


def _param(values, grad_values=None):
    p = nn.Parameter(np.array(values, dtype=np.float64))
    if grad_values is not None:
        p.grad = np.array(grad_values, dtype=np.float64)
    return p


def test_sgd_plain_and_weight_decay():
    p = _param([1.0, -2.0], [0.5, 0.25])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 - 0.025])
    p = _param([1.0, -2.0], [0.5, 0.25])
    optim.SGD([p], lr=0.1, weight_decay=0.01).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * (0.5 + 0.01), -2.0 - 0.1 * (0.25 - 0.02)])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum(nesterov):
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=nesterov)
    x, buf = 1.0, None
    for g in (1.0, 2.0, -1.0):
        p.grad = np.array([g])
        opt.step()
        buf = g if buf is None else 0.9 * buf + g
        x -= 0.1 * ((g + 0.9 * buf) if nesterov else buf)
        np.testing.assert_allclose(p.data, [x], rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_by_hand(decoupled):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p = _param([0.5, -1.0])
    cls = optim.AdamW if decoupled else optim.Adam
    opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x = np.array([0.5, -1.0])
    m = v = np.zeros(2)
    for k, g in enumerate(([0.3, -0.2], [0.1, 0.4], [-0.5, 0.0]), start=1):
        g = np.array(g)
        p.grad = g.copy()
        opt.step()
        if decoupled:
            x = x * (1 - lr * wd)
        else:
            g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + eps)
        np.testing.assert_allclose(p.data, x, rtol=1e-12)


def test_adam_keeps_float32():
    p = nn.Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 0.5, np.float32)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-6)  # first Adam step moves by lr


def test_skips_parameters_without_grad_and_zero_grad():
    a, b = _param([1.0], [1.0]), _param([2.0])
    opt = optim.SGD([a, b, a], lr=1.0)
    assert len(opt.params) == 2
    opt.step()
    assert a.data[0] == 0.0 and b.data[0] == 2.0
    opt.zero_grad()
    assert a.grad is None


def test_training_reduces_loss(rng):
    lin = nn.Linear(3, 1, rng=rng, dtype=np.float64)
    x = rng.standard_normal((64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    opt = optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(300):
        loss = nn.mse(lin(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4


def test_schedules():
    p = _param([0.0])
    opt = optim.SGD([p], lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [step.step() for _ in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt = optim.Adam([p], lr=0.1)
    cos = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    lrs = [cos.step() for _ in range(5)]
    ref = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (1, 2, 3, 4, 4)]
    np.testing.assert_allclose(lrs, ref)
    assert opt.lr == pytest.approx(0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        optim.Adam([_param([1.0])], lr=0.0)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        optim.SGD([_param([1.0])], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="requires_grad=True"):
        optim.SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([_param([1.0])], betas=(1.0, 0.9))


def test_bad_parameters_and_settings_refused():
    """One Tensor (it would iterate into its rows, which no step ever writes back), an
    op's result, and settings that would blow the weights up."""
    p = _param([1.0, 2.0, 3.0])
    for make in (optim.SGD, optim.Adam, optim.AdamW):
        with pytest.raises(TypeError, match="got one Tensor"):
            make(p, lr=0.1)
    with pytest.raises(TypeError, match="leaf"):
        optim.SGD([p * 2.0], lr=0.1)
    bad = [(optim.SGD, {"lr": math.inf}), (optim.SGD, {"lr": math.nan}),
           (optim.SGD, {"lr": 0.1, "momentum": math.nan}),
           (optim.SGD, {"lr": 0.1, "momentum": 5.0}),
           (optim.SGD, {"lr": 0.1, "weight_decay": math.inf}),
           (optim.Adam, {"eps": -1.0}), (optim.Adam, {"eps": 0.0}),
           (optim.Adam, {"weight_decay": -1.0}), (optim.AdamW, {"weight_decay": math.nan})]
    for make, kw in bad:
        with pytest.raises(ValueError, match=make.__name__):
            make([_param([1.0])], **kw)


def test_state_follows_the_parameter_dtype():
    """Moments and momentum live in the parameter's dtype: a float64 gradient for a float32
    parameter, and a model cast to float64 after some steps."""
    p = nn.Parameter(np.ones(3, np.float32))
    sgd = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.full(3, 0.5)  # float64
    sgd.step()
    assert p.data.dtype == sgd.state[id(p)]["momentum"].dtype == np.float32
    adam = optim.Adam([p], lr=0.1)
    p.grad = np.full(3, 0.5, np.float32)
    adam.step()
    p.data = p.data.astype(np.float64)  # what Module.astype does
    p.grad = np.full(3, 1e-9)
    adam.step()
    st = adam.state[id(p)]
    assert st["m"].dtype == st["v"].dtype == p.data.dtype == np.float64


def test_a_failed_step_changes_nothing():
    # one bad gradient (or a read-only parameter) must not leave the update half done
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad, b.grad = np.ones(3), np.ones(5)
    with pytest.raises(ValueError, match="a gradient of shape"):
        opt.step()
    np.testing.assert_array_equal(a.data, np.ones(3))
    assert opt.steps == 0 and opt.state == {}
    c = nn.Parameter(np.ones(2))
    c.data.flags.writeable = False
    opt = optim.SGD([a, c], lr=0.1, momentum=0.9)
    a.grad, c.grad = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match="read-only"):
        opt.step()
    np.testing.assert_array_equal(a.data, np.ones(3))
    assert opt.steps == 0 and opt.state == {}


def test_hyperparameters_set_between_steps_are_checked_when_set():
    """Schedules and users change lr (and the others) after construction: a bad value is
    refused when set, not found halfway through an update (Adam had changed its step count
    and moments before it read lr = None)."""
    p = nn.Parameter(np.ones(2, np.float32))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(2, np.float32)
    opt.step()
    before = (p.data.copy(), opt.state[id(p)]["m"].copy(), opt.steps)
    for name, bad, error in (("lr", None, TypeError), ("lr", float("nan"), ValueError),
                             ("lr", -1.0, ValueError), ("eps", 0.0, ValueError),
                             ("betas", {0.5, 0.9}, TypeError), ("betas", (0.9, 1.0), ValueError),
                             ("weight_decay", float("inf"), ValueError)):
        with pytest.raises(error, match=f"Adam: {name}"):
            setattr(opt, name, bad)
    assert opt.lr == 0.1 and opt.betas == (0.9, 0.999) and opt.eps == 1e-8
    np.testing.assert_array_equal(p.data, before[0])
    np.testing.assert_array_equal(opt.state[id(p)]["m"], before[1])
    assert opt.steps == before[2]
    opt.lr = 0  # a schedule may reach 0
    assert opt.lr == 0.0
    sgd = optim.SGD([p], lr=0.1, momentum=0.5, nesterov=True)
    with pytest.raises(TypeError, match="SGD: nesterov must be a bool"):
        sgd.nesterov = "no"
    sgd.momentum = 0.0  # each alone is fine; together they are checked by step
    with pytest.raises(ValueError, match="nesterov needs momentum > 0"):
        sgd.step()
    assert sgd.steps == 0 and sgd.state == {}


def test_gradients_that_a_cast_would_change_are_refused():
    """The cast to the parameter's dtype dropped .imag, made None a nan, and overflowed a
    float64 gradient to inf in a float32 parameter, all silently."""
    p = nn.Parameter(np.ones(2, np.float32))
    opt = optim.SGD([p], lr=1e-30)
    for grad, error, match in ((np.array([1j, 2j]), TypeError, "dtype complex128"),
                               (np.array([None, 1.0], dtype=object), TypeError, "dtype object"),
                               (np.array([1e39, 0.0]), ValueError,
                                r"shape \(2,\): float64 values overflow float32")):
        p.grad = grad
        with pytest.raises(error, match=match):
            opt.step()
        np.testing.assert_array_equal(p.data, np.ones(2, np.float32))
        assert opt.steps == 0
    p.grad = np.array([1e30, np.nan])  # non-finite already: passed on, as PyTorch does
    opt.step()
    assert opt.steps == 1 and np.isnan(p.data[1])


@pytest.mark.parametrize("make, error, match", [
    (lambda p: optim.SGD(p, lr="0.1"), TypeError, "SGD: lr must be a real number"),
    (lambda p: optim.SGD(p, lr=None), TypeError, "SGD: lr must be a real number"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=None), TypeError, "momentum must be a real"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov="yes"), TypeError, "nesterov must be a bool"),
    (lambda p: optim.Adam(p, betas=0.9), TypeError, r"betas must be a pair"),
    (lambda p: optim.Adam(p, betas=(0.9, 0.99, 0.9)), TypeError, r"betas must be a pair"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be finite"),
    (lambda p: optim.Adam(p, eps=None), TypeError, "eps must be a real number"),
    (lambda p: optim.StepLR(optim.SGD(p, lr=0.1), 1, gamma=float("nan")), ValueError,
     "gamma must be finite and >= 0"),
    (lambda p: optim.StepLR(optim.SGD(p, lr=0.1), 1, gamma=-1.0), ValueError, "gamma"),
    (lambda p: optim.StepLR(optim.SGD(p, lr=0.1), 1.5), TypeError, "step_size must be an int"),
    (lambda p: optim.CosineAnnealingLR(optim.SGD(p, lr=0.1), 3, eta_min=-1.0), ValueError,
     "eta_min must be finite and >= 0"),
    (lambda p: optim.CosineAnnealingLR(optim.SGD(p, lr=0.1), None), TypeError,
     "T_max must be an int"),
])
def test_hyperparameters_are_checked_by_name(make, error, match):
    with pytest.raises(error, match=match):
        make([nn.Parameter(np.ones(2))])


def test_a_schedule_that_overflows_is_refused_unchanged():
    opt = optim.SGD([nn.Parameter(np.ones(2))], lr=1.0)
    sched = optim.StepLR(opt, 1, gamma=1e200)
    assert sched.step() == 1e200
    with pytest.raises(ValueError, match="overflowed"):
        sched.step()
    assert opt.lr == 1e200 and sched.epoch == 1


def test_numbers_users_pass_are_still_taken():
    from decimal import Decimal
    from fractions import Fraction
    p = [nn.Parameter(np.ones(2))]
    assert optim.SGD(p, lr=Fraction(1, 10)).lr == 0.1
    assert optim.SGD(p, lr=Decimal("0.1")).lr == 0.1
    assert optim.SGD(p, lr=np.float32(0.5), momentum=0.5, nesterov=1).nesterov is True
    assert optim.Adam(p, betas=(b for b in (0.8, 0.9))).betas == (0.8, 0.9)
    assert optim.Adam(p, betas=np.array([0.8, 0.9])).betas == (0.8, 0.9)
    sched = optim.StepLR(optim.SGD(p, lr=1.0), 1, gamma=0)  # a rate of 0 after one epoch
    assert sched.step() == 0.0
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        optim.SGD(p, lr=0.1, momentum=0.5, nesterov=np.array([1, 0]))
    with pytest.raises(ValueError, match="non-negative int seed"):  # a ValueError, as numpy's
        nn.Dropout(0.5, rng=-1)


def test_a_model_stands_for_its_parameters():
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.ReLU(), nn.Linear(2, 1, rng=1))
    for make in (optim.SGD, optim.Adam, optim.AdamW):
        opt = make(model, lr=0.1)
        assert [id(p) for p in opt.params] == [id(p) for p in model.parameters()]
