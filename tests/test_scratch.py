"""Reused scratch arrays: handed out again only while nothing else holds them."""

import sys
import threading
import weakref

import numpy as np
import pytest
import reference_ops as ref

import paramshare_nb as ps
from paramshare_nb import _dispatch, _scratch
from paramshare_nb._scratch import Scratch

#: Under a tracer (coverage, a debugger) no count is measured and nothing is reused.
needs_no_tracer = pytest.mark.skipif(sys.gettrace() is not None or sys.getprofile() is not None,
                                     reason="a tracer or profiler is running: nothing is reused")


def _address(a):
    return a.__array_interface__["data"][0]


@needs_no_tracer
def test_take_reuses_only_an_unshared_array():
    s = Scratch((3, 4), np.float32)
    a = s.take()
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous
    address = _address(a)
    del a
    assert _address(s.take()) == address  # nothing else holds it: the same one
    held = s.take()
    other = s.take()  # still held here: a new one, kept from now on
    assert not np.shares_memory(other, held)
    assert s.array is other
    del other
    view = s.take()[1:]  # a view keeps its base
    assert not np.shares_memory(s.take(), view)
    kept = [s.take()]
    assert not np.shares_memory(s.take(), kept[0])
    assert not np.shares_memory(s.take(), held)


def test_scratch_only_for_large_arrays():
    assert _scratch.scratch((10, 10), np.float64) is None
    big = _scratch.scratch((_scratch.MIN_BYTES // 4,), np.float32)
    assert isinstance(big, Scratch) and big.take().nbytes == _scratch.MIN_BYTES
    assert _scratch.scratch((_scratch.MAX_BYTES // 4 + 1,), np.float32) is None


def test_without_the_gil_nothing_is_kept(monkeypatch):
    monkeypatch.setattr(_scratch, "_GIL", False)
    s = Scratch((4,), np.float64)
    s.take()
    assert s.array is None


@needs_no_tracer
def test_no_count_is_measured_under_a_tracer(monkeypatch):
    """A debugger reading take()'s locals holds one more reference (CPython <= 3.12): the
    count of an unshared array is measured only with no tracer running."""
    monkeypatch.setattr(_scratch, "_alone", None)
    s = Scratch((4,), np.float64)
    sys.settrace(lambda frame, event, arg: None)
    try:
        s.take()
    finally:
        sys.settrace(None)
    assert _scratch._alone is None
    s.take()
    assert _scratch._alone is not None
    address = _address(s.take())
    assert _address(s.take()) == address


def test_kept_arrays_stay_within_the_budget(monkeypatch):
    monkeypatch.setattr(_scratch, "_kept_bytes", 0)
    monkeypatch.setattr(_scratch, "BUDGET_BYTES", 1000)
    a, b = Scratch((100,), np.float64), Scratch((100,), np.float64)
    a.take()
    b.take()
    assert a.array is not None and b.array is None  # 800 + 800 bytes: the second not kept
    assert _scratch._kept_bytes == 800
    del a
    assert _scratch._kept_bytes == 0
    b.take()
    assert b.array is not None and _scratch._kept_bytes == 800


def _pattern(n):
    """A fresh dense pattern (its runners and scratch are its own)."""
    return ps.dense_pattern(ps.Action.same(ps.groups.cyclic(n)))


@needs_no_tracer
@pytest.mark.parametrize("channels", [1, 3], ids=["scalar", "channels"])
def test_materialize_gathers_w_into_the_same_pages(monkeypatch, channels):
    """A training step's pattern: forward (W kept for the backward), backward, update;
    the next forward gathers W into the same array, also at another batch size, and the
    results stay right, also when a forward's W is still kept (no backward)."""
    monkeypatch.setattr(_scratch, "MIN_BYTES", 0)
    n = 65 if channels == 1 else 24  # W past the small and streamed sizes: BLAS
    pat = _pattern(n)
    rng = np.random.default_rng(1)
    shape = (pat.n_params,) if channels == 1 else (pat.n_params, channels, channels)
    theta = rng.standard_normal(shape)
    lead = (n,) if channels == 1 else (n, channels)
    plans = _dispatch._plans(pat)
    arrays = []
    for batch in (4, 4, 4, 7):
        x, dy = rng.standard_normal((batch,) + lead), rng.standard_normal((batch,) + lead)
        y = ps.tied_matmul(x, theta, pat, method="materialize")
        w_scratch = plans[("scratch", "w", "<f8")]
        assert np.shares_memory(plans["last_w"][1], w_scratch.array)
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method="materialize")
        dw_scratch = plans[("scratch", "dw", "<f8")]
        assert w_scratch.shape == (n, channels, n, channels)
        assert dw_scratch.shape == (n * channels, n * channels)
        arrays.append((weakref.ref(w_scratch.array), weakref.ref(dw_scratch.array)))
        np.testing.assert_allclose(y, ref.forward(x, theta, pat), rtol=1e-12, atol=1e-12)
        for got, want in zip((dx, dth), ref.grad(dy, x, theta, pat)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        theta = theta - 0.1 * dth  # a new theta, as an optimiser's step
    # weak references: a strong one here would make the arrays shared
    assert all(w() is w_scratch.array and dw() is dw_scratch.array for w, dw in arrays)
    # forwards alone (evaluation) reuse W too; then the first one's backward: not the
    # second's W
    kept = weakref.ref(w_scratch.array)
    ps.tied_matmul(x, theta, pat, method="materialize")
    y2 = ps.tied_matmul(x, 2 * theta, pat, method="materialize")
    assert w_scratch.array is kept()
    np.testing.assert_allclose(y2, ref.forward(x, 2 * theta, pat), rtol=1e-12, atol=1e-12)
    dx, _ = ps.tied_matmul_grad(dy, x, theta, pat, method="materialize")
    np.testing.assert_allclose(dx, ref.grad(dy, x, theta, pat)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method, channels", [("materialize", 2), ("gather", 4)])
def test_threads_sharing_a_pattern_get_their_own_scratch(monkeypatch, method, channels):
    """Calls of one prepared signature from several threads (Dask's threaded scheduler):
    each one's W and dW (gather: group sums and products) are its own while it runs; and
    the batch sizes alternate."""
    monkeypatch.setattr(_scratch, "MIN_BYTES", 0)
    pat = _pattern(16)
    rng = np.random.default_rng(2)
    c = channels
    jobs = [(rng.standard_normal((pat.n_params, c, c)), rng.standard_normal((b, 16, c)),
             rng.standard_normal((b, 16, c))) for b in (8, 8, 8, 5, 8, 8)]
    want = [(ref.forward(x, t, pat),) + ref.grad(dy, x, t, pat) for t, x, dy in jobs]
    errors = []

    def work(k):
        try:
            for i in range(40):
                t, x, dy = jobs[(k + i) % len(jobs)]
                got = (ps.tied_matmul(x, t, pat, method=method),) + \
                    ps.tied_matmul_grad(dy, x, t, pat, method=method)
                for g, w in zip(got, want[(k + i) % len(jobs)]):
                    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        except AssertionError as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    if method == "gather":  # the sums went through kept arrays
        assert ("scratch", "g_sums", "<f8") in _dispatch.plan_of(pat).scratch
