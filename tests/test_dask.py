"""Scale-out: blockwise results and data-parallel gradients equal in-process ones.

The cluster tests start one ``LocalCluster`` (2 worker processes on
127.0.0.1) for the whole module and close it at the end.
"""

import copy
import logging
import sys
import warnings

import numpy as np
import pytest

import paramshare_nb as ps

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
psd = ps.dask


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       worker_dashboard_address=None, memory_limit="2GiB",
                                       silence_logs=logging.ERROR)
    cl = distributed.Client(cluster, set_as_default=False)
    try:
        yield cl
    finally:
        cl.close()
        cluster.close()


def _model(act, gens, seed=0):
    nn = ps.nn
    return nn.Sequential(nn.EquivariantLinear(act, 2, 4, rng=seed), nn.ReLU(),
                         nn.EquivariantLinear(act, 4, 4, rng=seed + 1), nn.ReLU(),
                         nn.OrbitPool(gens, reduce="mean"), nn.Flatten(),
                         nn.Linear(4, 3, rng=seed + 2))


@pytest.fixture
def problem(rng):
    gens = ps.groups.dihedral(6)
    act = ps.Action.same(gens)
    x = rng.standard_normal((120, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    return act, gens, x, y


# -- tied_matmul -------------------------------------------------------------------

@pytest.mark.parametrize("channels", [False, True])
def test_tied_matmul_blockwise_equals_in_process(rng, channels):
    pat = ps.sparse_pattern(ps.Action.same(ps.groups.cyclic(8)))
    if channels:
        x = rng.standard_normal((3, 50, 8, 2))
        theta = rng.standard_normal((pat.n_params, 5, 2))
        chunks = (1, 20, 8, 2)
    else:
        x = rng.standard_normal((100, 8))
        theta = rng.standard_normal(pat.n_params)
        chunks = (30, 8)
    xd = da.from_array(x, chunks=chunks)
    yd = psd.tied_matmul(xd, theta, pat)
    assert yd.chunks[: x.ndim - (2 if channels else 1)] == xd.chunks[: x.ndim - (2 if channels
                                                                                  else 1)]
    np.testing.assert_allclose(yd.compute(), ps.tied_matmul(x, theta, pat), rtol=1e-12)


def test_tied_matmul_is_lazy_and_keeps_float32(rng):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    calls = []
    xd = da.from_array(rng.standard_normal((40, 4)).astype(np.float32), chunks=(10, 4))
    xd = xd.map_blocks(lambda b: calls.append(b.size) or b, dtype=np.float32,
                       meta=np.empty((0, 0), np.float32))
    yd = psd.tied_matmul(xd, np.ones(4, np.float32), pat)
    assert not calls and yd.dtype == np.float32
    assert yd.compute().dtype == np.float32 and calls == [40] * 4


def test_index_axis_chunks_are_rechunked_with_warning(rng):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(6)))
    x = rng.standard_normal((20, 6))
    xd = da.from_array(x, chunks=(10, 3))
    with pytest.warns(psd.ChunkingWarning, match="axis 1"):
        yd = psd.tied_matmul(xd, np.ones(6), pat)
    np.testing.assert_allclose(yd.compute(), ps.tied_matmul(x, np.ones(6), pat))
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        psd.tied_matmul(xd, np.ones(6), pat, max_chunk_bytes=64)


def test_tied_matmul_bad_input(rng):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    xd = da.ones((8, 4), chunks=(4, 4))
    with pytest.raises(TypeError, match="dask array"):
        psd.tied_matmul(np.ones((8, 4)), np.ones(4), pat)
    with pytest.raises(TypeError, match="Pattern"):
        psd.tied_matmul(xd, np.ones(4), "pattern")
    with pytest.raises(ValueError, match="theta must have shape"):
        psd.tied_matmul(xd, np.ones(3), pat)
    with pytest.raises(TypeError, match="float"):
        psd.tied_matmul(xd, np.ones(4, dtype=int), pat)
    with pytest.raises(TypeError, match="compute"):
        psd.tied_matmul(xd, da.ones(4, chunks=2), pat)
    with pytest.raises(ValueError, match="end with shape"):
        psd.tied_matmul(da.ones((8, 5), chunks=(4, 5)), np.ones(4), pat)
    with pytest.raises(TypeError, match="float"):
        psd.tied_matmul(da.ones((8, 4), chunks=(4, 4), dtype=int), np.ones(4), pat)
    with pytest.raises(ValueError, match="method"):
        psd.tied_matmul(xd, np.ones(4), pat, method="fastest")
    with pytest.raises(TypeError, match="float32 or float64"):  # refused lazily, not later
        psd.tied_matmul(da.ones((8, 4), chunks=(4, 4), dtype=np.longdouble), np.ones(4), pat)
    masked = da.ma.masked_equal(xd, 0.0)  # chunks whose masks np.asarray would drop
    with pytest.raises(TypeError, match=r"masked-array chunks.*dask\.array\.ma\.filled\(x, 0\)"):
        psd.tied_matmul(masked, np.ones(4), pat)
    with pytest.raises(TypeError, match="theta is a masked array"):
        psd.tied_matmul(xd, np.ma.masked_array(np.ones(4)), pat)
    half = psd.tied_matmul(xd.astype(np.float16), np.ones(4, np.float16), pat)
    assert half.dtype == half.compute().dtype == np.float32  # as ops: float16 computes in 32


# -- apply and gradients, in process ---------------------------------------------------

def test_apply_equals_in_process(problem):
    act, gens, x, _ = problem
    model = _model(act, gens)
    out = psd.apply(model, da.from_array(x, chunks=(25, 6, 2)))
    assert out.shape == (120, 3) and out.chunks[0] == (25, 25, 25, 25, 20)
    np.testing.assert_allclose(out.compute(), model(x).data, rtol=1e-5, atol=1e-6)


def test_apply_same_rank_output(problem):
    act, _, x, _ = problem
    layer = ps.nn.EquivariantLinear(act, 2, 5, rng=3)
    out = psd.apply(layer, da.from_array(x, chunks=(50, 6, 2)))
    np.testing.assert_allclose(out.compute(), layer(x).data, rtol=1e-5, atol=1e-6)


def test_graphs_keep_theta_and_the_model_as_they_were_built(problem, rng):
    act, gens, x, _ = problem
    pat = ps.dense_pattern(act)
    theta = rng.standard_normal((pat.n_params, 3, 2)).astype(np.float32)
    expect = ps.tied_matmul(x, theta, pat)
    yd = psd.tied_matmul(da.from_array(x, chunks=(50, 6, 2)), theta, pat)
    model = _model(act, gens)
    before = model(x).data
    out = psd.apply(model, da.from_array(x, chunks=(50, 6, 2)))
    theta += 1  # an optimizer's in-place step, before the graphs run
    for p in model.parameters():
        p.data += 1
    np.testing.assert_array_equal(yd.compute(), expect)
    np.testing.assert_allclose(out.compute(), before, rtol=1e-5, atol=1e-6)


def test_gradients_equal_full_batch(problem):
    act, gens, x, y = problem
    model = _model(act, gens)
    loss, grads = psd.gradients(model, ps.nn.cross_entropy,
                                da.from_array(x, chunks=(16, 6, 2)), y, split_every=2)
    ref = copy.deepcopy(model)
    full = ps.nn.cross_entropy(ref(x), y)
    full.backward()
    assert loss == pytest.approx(float(full.data), rel=1e-5)
    for p, g in zip(ref.parameters(), grads, strict=True):
        np.testing.assert_allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the model is not touched


def test_a_loss_summed_over_the_batch_is_refused(problem):
    # the chunks are combined weighted by their share: a sum gave 27.8 for a total of 117
    act, gens, x, y = problem
    model = _model(act, gens)
    xd = da.from_array(x[:103], chunks=(25, 6, 2))

    def summed(o, t):
        return ps.nn.cross_entropy(o, t, reduction="sum")
    with pytest.raises(ValueError, match=r"loss_fn must be the mean of per-sample losses.* "
                                         r"same sample twice \(a sum gives twice as much\)"):
        psd.gradients(model, summed, xd, y[:103])
    opt = ps.optim.SGD(model, lr=0.1)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="mean of per-sample losses"):
        psd.train_step(model, summed, opt, xd, y[:103])
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))

    def mean_plus_penalty(o, t):  # a mean and a constant: still decomposes by chunk share
        return ps.nn.cross_entropy(o, t) + 0.5
    loss, _ = psd.gradients(model, mean_plus_penalty, xd, y[:103])
    assert loss == pytest.approx(float(ps.nn.cross_entropy(model(x[:103]), y[:103]).data) + 0.5,
                                 rel=1e-5)


def test_dropout_draws_new_masks_per_chunk_and_step():
    """Chunks copy the model: each must draw its own dropout masks, and the model's
    generator must advance, as in one process (every chunk and step reused one mask)."""
    model = ps.nn.Sequential(ps.nn.Dropout(0.5, rng=0), ps.nn.Linear(6, 1, rng=0))
    x = da.from_array(np.ones((4, 6), np.float32), chunks=(2, 6))
    y = np.zeros((4, 1), np.float32)
    state = model[0].rng.bit_generator.state
    steps = [psd.gradients(model, ps.nn.mse, x, y)[1][0] for _ in range(3)]
    assert model[0].rng.bit_generator.state != state
    assert not np.array_equal(steps[0], steps[1]) and not np.array_equal(steps[1], steps[2])
    # one chunk's gradient from the same seeds as the graph: chunk 0's masks alone
    seeds = psd._chunk_seeds(copy.deepcopy(model), 2)
    halves = [psd._chunk_gradients(model, np.ones((2, 6), np.float32), y[:2], ps.nn.mse,
                                   0.5, seed)[1][0] for seed in seeds]
    assert not np.array_equal(halves[0], halves[1])


def test_bad_model_and_targets(problem):
    act, gens, x, y = problem
    model = _model(act, gens)
    xd = da.from_array(x, chunks=(40, 6, 2))
    with pytest.raises(TypeError, match="Module"):
        psd.apply(lambda a: a, xd)
    with pytest.raises(ValueError, match="batch size"):
        psd.gradients(model, ps.nn.cross_entropy, xd, y[:10])
    with pytest.raises(ValueError, match="split_every"):
        psd.gradients(model, ps.nn.cross_entropy, xd, y, split_every=1)
    with pytest.raises(TypeError, match="callable"):
        psd.gradients(model, "cross_entropy", xd, y)
    opt = ps.optim.SGD(_model(act, gens).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not the model's"):
        psd.train_step(model, ps.nn.cross_entropy, opt, xd, y)
    with pytest.raises(TypeError, match="Optimizer"):
        psd.train_step(model, ps.nn.cross_entropy, "adam", xd, y)


# -- on a distributed cluster -------------------------------------------------------------

def test_cluster_tied_matmul_and_apply(client, problem, rng):
    act, gens, x, _ = problem
    pat = ps.dense_pattern(act)
    theta = rng.standard_normal((pat.n_params, 3, 2)).astype(np.float32)
    xd = da.from_array(x, chunks=(30, 6, 2))
    y = client.compute(psd.tied_matmul(xd, theta, pat)).result()
    np.testing.assert_allclose(y, ps.tied_matmul(x, theta, pat), rtol=1e-5, atol=1e-6)
    model = _model(act, gens)
    out = client.compute(psd.apply(model, xd)).result()
    np.testing.assert_allclose(out, model(x).data, rtol=1e-5, atol=1e-6)


def test_cluster_train_steps_equal_single_process(client, problem):
    act, gens, x, y = problem
    model = _model(act, gens)
    ref = copy.deepcopy(model)
    opt = ps.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = ps.optim.Adam(ref.parameters(), lr=1e-2)
    xd = da.from_array(x, chunks=(20, 6, 2))
    for _ in range(3):
        loss = psd.train_step(model, ps.nn.cross_entropy, opt, xd, da.from_array(y, chunks=20),
                              client=client)
        ref_opt.zero_grad()
        ref_loss = ps.nn.cross_entropy(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        assert loss == pytest.approx(float(ref_loss.data), rel=1e-4)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(3)))
    with pytest.raises(ImportError, match=r"paramshare_nb\[dask\]"):
        psd.tied_matmul(np.ones((2, 3)), np.ones(3), pat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psd.__all__  # the module itself imported without dask


# -- bad input: refused at once, naming the argument and the fix -------------------------

class _FirstRow(ps.nn.Module):
    """Drops the batch axis to one row: a model that does not keep the batch."""

    def forward(self, a):
        return a[:1]


@pytest.fixture
def bad(problem):
    act, gens, x, y = problem
    return {"pat": ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4))),
            "model": _model(act, gens), "x": x, "y": y,
            "xd": da.from_array(x, chunks=(40, 6, 2)), "yd": da.from_array(y, chunks=40)}


def _dz(shape, chunks=None, dtype=np.float32):
    """A zero dask array, chunked by 4 along the batch only unless told."""
    return da.zeros(shape, chunks=chunks or (4,) + tuple(shape[1:]), dtype=dtype)


def _grad(b, x=None, y=None, loss=ps.nn.cross_entropy, **kw):
    return psd.gradients(b["model"], loss, b["xd"] if x is None else x,
                         b["y"] if y is None else y, **kw)


def _tm(x, theta=None, **kw):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    return psd.tied_matmul(x, np.ones(4) if theta is None else theta, pat, **kw)


BAD_INPUTS = [  # (id, call, exception, message fragment); each failed or misled before
    ("tm-numpy-x-3d", lambda b: _tm(np.ones((8, 4, 2)), np.ones((4, 3, 2))), TypeError,
     r"chunks=\(batch_chunk, -1, -1\)"),
    ("tm-numpy-x-1d", lambda b: _tm(np.ones(4)), TypeError, r"chunks=\(-1,\)"),
    ("tm-1d-sample-too-big", lambda b: _tm(_dz(4, chunks=2, dtype=float), max_chunk_bytes=16),
     ValueError, "max_chunk_bytes=32 or more"),
    ("tm-two-batch-axes-hint",
     lambda b: _tm(_dz((10, 100, 4), (10, 100, 2), float), max_chunk_bytes=1000),
     ValueError, r"rechunk\(\{0: 1, 1: 31, 2: -1\}\)"),
    ("tm-max-chunk-bytes-str", lambda b: _tm(_dz((8, 4)), max_chunk_bytes="1"), TypeError,
     "max_chunk_bytes must be an int"),
    ("apply-numpy-x-1d", lambda b: psd.apply(b["model"], np.ones(4)), TypeError,
     r"chunks=\(batch_chunk,\)"),
    ("apply-wrong-sample-shape", lambda b: psd.apply(b["model"], _dz((8, 6, 3))), ValueError,
     r"refuses samples of x \(x has shape \(8, 6, 3\)"),
    ("apply-wrong-dtype", lambda b: psd.apply(b["model"], _dz((8, 6, 2), dtype=np.float64)),
     TypeError, "refuses samples of x"),
    ("apply-drops-batch", lambda b: psd.apply(_FirstRow(), b["xd"]), ValueError,
     "keep the batch axis"),
    ("grad-0d-y", lambda b: _grad(b, y=np.int64(1)), ValueError, "one target per sample of x"),
    ("grad-0d-dask-y", lambda b: _grad(b, y=da.from_array(np.int64(1))), ValueError,
     "one target per sample of x"),
    ("grad-y-unknown-chunks", lambda b: _grad(b, y=b["yd"][b["yd"] >= 0]), ValueError,
     r"y has unknown chunk sizes.*y.compute_chunk_sizes\(\)"),
    ("grad-y-ragged", lambda b: _grad(b, y=[[0], [0, 1]]), ValueError, "y is ragged"),
    ("grad-y-none", lambda b: _grad(b, y=[None] * 120), TypeError, "y must hold numbers"),
    ("grad-split-every-float", lambda b: _grad(b, split_every=2.0), TypeError,
     "split_every must be an int"),
    ("grad-client-str", lambda b: _grad(b, client="local"), TypeError,
     "client must be a distributed.Client"),
    ("grad-wrong-sample-shape", lambda b: _grad(b, x=_dz((120, 6, 3))), ValueError,
     "refuses samples of x"),
    ("grad-loss-not-tensor", lambda b: _grad(b, loss=lambda out, t: 1.0), TypeError,
     "loss_fn must return a scalar Tensor"),
    ("grad-loss-not-scalar", lambda b: _grad(b, loss=lambda out, t: out), ValueError,
     "loss_fn must return a scalar Tensor"),
    ("train-step-0d-y", lambda b: psd.train_step(
        b["model"], ps.nn.cross_entropy, ps.optim.SGD(b["model"].parameters(), lr=0.1),
        b["xd"], np.int64(1)), ValueError, "one target per sample of x"),
]


@pytest.mark.parametrize("call, exc, match", [pytest.param(*c[1:], id=c[0])
                                              for c in BAD_INPUTS])
def test_bad_input_is_refused_clearly(bad, call, exc, match):
    import dask

    with dask.config.set(scheduler="synchronous"), pytest.raises(exc, match=match):
        call(bad)


def test_chunking_warning_gives_the_rechunk(problem):
    x = problem[2]
    model = _model(*problem[:2])
    with pytest.warns(psd.ChunkingWarning, match=r"x.rechunk\(\{1: -1, 2: -1\}\)"):
        psd.apply(model, da.from_array(x, chunks=(40, 6, 1)))
