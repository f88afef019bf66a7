"""Tests of the measuring planner (``config.planner = "measure"``)."""

import subprocess
import sys
import time

import numpy as np
import pytest
import reference_ops as ref

import paramshare_nb as ps
from paramshare_nb import _dispatch, _measure, config


@pytest.fixture(autouse=True)
def _estimating():
    """Each test starts from the estimates, whatever PARAMSHARE_PLANNER says."""
    with config.override(planner="estimate"):
        yield


def assert_close(actual, expected):
    tol = 2e-5 if actual.dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def test_candidates_within_span_cheapest_first():
    costs = {"a": 5.0, "b": 1.0, "c": 3.9, "d": 4.1, "e": 2.0}
    assert _measure.candidates(costs, span=4.0) == ["b", "e", "c"]
    assert _measure.candidates(costs, span=10.0, most=2) == ["b", "e"]
    assert _measure.candidates({"only": 7.0}) == ["only"]


def _sleeper(seconds, value, calls):
    def run(out):
        calls.append(value)
        time.sleep(seconds)
        out[0] = value
    return run


def test_fastest_picks_the_quick_runner_and_drops_hopeless_ones():
    calls = []
    runners = [_sleeper(0.02, 0, calls), _sleeper(0.0, 1, calls), _sleeper(0.005, 2, calls)]
    assert _measure.fastest(runners, (np.zeros(1),)) == 1
    # once untimed, then twice a round (the second call timed); after one round, 20 ms
    # against ~0 is past HOPELESS: dropped
    assert calls.count(0) == 3
    assert calls.count(1) == 1 + 2 * _measure.ROUNDS


def test_fastest_keeps_the_models_choice_in_a_near_tie(monkeypatch):
    clock = iter(range(10_000))
    monkeypatch.setattr(_measure.time, "perf_counter", lambda: next(clock) * 1e-6)

    def runner(cost):
        def run():
            for _ in range(cost):  # each tick of the fake clock is one microsecond
                next(clock)
        return run
    # 10 % faster than the model's choice (index 0): not enough; 20 %: taken
    assert _measure.fastest([runner(100), runner(90)], ()) == 0
    assert _measure.fastest([runner(100), runner(80)], ()) == 1
    assert _measure.fastest([runner(80), runner(100)], ()) == 0


def test_planned_measures_once_and_leaves_the_winners_result():
    calls, built = [], []
    speeds = {"slow": 0.01, "quick": 0.0}

    def build(option):
        built.append(option)
        return _sleeper(speeds[option], option, calls)
    memo = {}
    run = _measure.planned(memo, "k", ["slow", "quick"], build)
    assert built == []  # nothing built before the first call
    out = np.zeros(1, dtype=object)
    run(out)
    assert memo == {"k": "quick"} and out[0] == "quick"
    assert calls[-1] == "quick"  # the winner wrote last
    del calls[:]
    run(out)
    assert calls == ["quick"]
    # a new runner for the same key builds the kept choice at once, measuring nothing
    del built[:]
    _measure.planned(memo, "k", ["slow", "quick"], build)(out)
    assert built == ["quick"] and calls == ["quick", "quick"]


def _cases():
    s6 = ps.Action.same(ps.groups.symmetric(6))
    cayley = ps.sparse_pattern(ps.Action.same(ps.regular(ps.groups.dihedral(3))))
    return [(ps.dense_pattern(s6), (3,), 1, 1, np.float64),
            (ps.dense_pattern(s6), (4,), 2, 3, np.float32),
            (cayley, (2, 3), 3, 2, np.float64),
            (ps.dense_pattern(ps.Action.same(ps.groups.cyclic(5))), (), 1, 4, np.float32)]


@pytest.mark.parametrize("case", range(4))
def test_measured_results_match_the_reference(case, monkeypatch):
    """Under ``planner="measure"``: the oracle's results on the measuring call and after it,
    one measurement per signature (spied), the choice among the model's candidates."""
    pat, batch, c_in, c_out, dtype = _cases()[case]
    rng = np.random.default_rng(case)
    m, n = pat.shape
    scalar = c_in == c_out == 1
    theta = rng.standard_normal((pat.n_params,) if scalar else (pat.n_params, c_out, c_in))
    x = rng.standard_normal(batch + ((n,) if scalar else (n, c_in)))
    dy = rng.standard_normal(batch + ((m,) if scalar else (m, c_out)))
    theta, x, dy = (a.astype(dtype) for a in (theta, x, dy))
    timed = []
    monkeypatch.setattr(_measure, "fastest", lambda r, a, f=_measure.fastest:
                        timed.append(len(r)) or f(r, a))
    with config.override(planner="measure"):
        for _ in range(2):
            assert_close(ps.tied_matmul(x, theta, pat), ref.forward(x, theta, pat))
            for got, want in zip(ps.tied_matmul_grad(dy, x, theta, pat),
                                 ref.grad(dy, x, theta, pat)):
                assert got.dtype == dtype
                assert_close(got, want)
    nb = int(np.prod(batch))
    itemsize = np.dtype(dtype).itemsize
    chosen = _dispatch._plans(pat)["measured"]
    forward = _measure.candidates(_dispatch.choose(pat, nb, c_in, c_out, itemsize)[1])
    pairs = _measure.candidates(_dispatch._grad_pairs(pat, nb, c_in, c_out, itemsize))
    assert chosen[_dispatch.measured_key(pat, "forward", nb, c_in, c_out, itemsize)] in forward
    assert chosen[_dispatch.measured_key(pat, "grad", nb, c_in, c_out, itemsize)] in pairs
    assert timed == [k for k in (len(forward), len(pairs)) if k > 1]


def test_the_planner_is_part_of_a_calls_signature(monkeypatch):
    """A call replayed under ``"estimate"`` is planned again under ``"measure"``."""
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(7)))
    x = np.random.default_rng(0).standard_normal((3, 7, 2))
    theta = np.random.default_rng(1).standard_normal((pat.n_params, 2, 2))
    ps.tied_matmul(x, theta, pat)
    ps.tied_matmul_grad(np.ones((3, 7, 2)), x, theta, pat)
    assert "measured" not in _dispatch._plans(pat)
    with config.override(planner="measure"):
        ps.tied_matmul(x, theta, pat)
        ps.tied_matmul_grad(np.ones((3, 7, 2)), x, theta, pat)
    kinds = sorted(k[0] for k in _dispatch._plans(pat)["measured"])
    assert kinds == ["forward", "grad"]


def test_planner_setting_is_validated():
    with pytest.raises(ValueError, match="planner must be one of"):
        with config.override(planner="fast"):
            pass
    with pytest.raises(ValueError, match="planner must be one of"):
        with config.override(planner=1):
            pass
    assert config.planner == "estimate"
    code = "import paramshare_nb"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PARAMSHARE_PLANNER": "quick", "PATH": ""})
    assert "PARAMSHARE_PLANNER='quick' must be one of" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-c", code + "; print(paramshare_nb.config.planner)"],
        capture_output=True, text=True, env={"PARAMSHARE_PLANNER": "measure", "PATH": ""})
    assert good.stdout.strip() == "measure", good.stderr


def test_compare_script_reports_the_measured_strategies(monkeypatch, capsys):
    """``benchmarks/compare.py --planner measure`` runs the workloads under the measuring
    planner and prints the strategies it measured, not the estimates'."""
    import os
    bench = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
    monkeypatch.syspath_prepend(bench)
    import compare

    from paramshare_nb import _bench
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(6)))
    monkeypatch.setattr(_bench, "workloads", lambda: {  # compare.py runs bench's table
        "w9": ("C_6, 2->3, batch 4", lambda: pat, 4, 2, 3, 1.0)})
    # "measuring" that picks the model's last candidate: never the estimates' choice
    monkeypatch.setattr(_measure, "fastest", lambda runners, args: len(runners) - 1)
    assert compare.main(["--only", "w9", "--repeat", "2", "--no-torch", "--planner",
                         "measure"]) == 0
    out = capsys.readouterr().out
    assert "planner measure" in out and config.planner == "estimate"
    chosen = _dispatch._plans(pat)["measured"]
    forward = chosen[_dispatch.measured_key(pat, "forward", 4, 2, 3, 4)]
    hx, ht = chosen[_dispatch.measured_key(pat, "grad", 4, 2, 3, 4)]
    assert forward != _dispatch.choose(pat, 4, 2, 3, 4)[0]
    assert (hx, ht) != _dispatch._choose_grad(pat, 4, 2, 3, 4)
    assert f"forward {forward}, dx {hx}, dtheta {ht}" in out


def test_a_forward_whose_w_the_backward_takes_is_not_measured(monkeypatch):
    """The estimates' materialised forward keeps ``W`` for their backward's ``dx``; timed
    alone it would pay for that shared gather, so the measuring planner keeps it."""
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(64)))
    assert _dispatch._feeds_backward(pat, 64, 16, 16, 4, "materialize")
    assert not _dispatch._feeds_backward(pat, 64, 16, 16, 4, "csr")
    assert not _dispatch._feeds_backward(pat, 1, 1, 1, 4, "materialize")  # streamed: no W kept
    timed = []
    monkeypatch.setattr(_measure, "fastest", lambda r, a: timed.append(len(r)) or 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 64, 16)).astype(np.float32)
    theta = rng.standard_normal((pat.n_params, 16, 16)).astype(np.float32)
    with config.override(planner="measure"):
        y = ps.tied_matmul(x, theta, pat)
    assert_close(y, ref.forward(x, theta, pat))
    assert timed == [] and "measured" not in _dispatch._plans(pat)


def _c16_data(nb, seed=5):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(16)))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nb, 16, 8)).astype(np.float32)
    theta = rng.standard_normal((pat.n_params, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((nb, 16, 8)).astype(np.float32)
    return pat, x, theta, dy


def test_a_losing_materialize_leaves_no_w_behind(monkeypatch):
    """A materialised forward keeps ``W`` for its backward; when it loses the measurement
    (here csr, the model's choice at batch 4, wins), that ``W`` is dropped."""
    pat, x, theta, _ = _c16_data(4)
    options = _measure.candidates(_dispatch.choose(pat, 4, 8, 8, 4)[1])
    assert options[0] != "materialize" and "materialize" in options
    monkeypatch.setattr(_measure, "fastest", lambda runners, args: [
        r(*args) for r in runners] and 0)  # every candidate runs once; the first wins
    with config.override(planner="measure"):
        assert_close(ps.tied_matmul(x, theta, pat), ref.forward(x, theta, pat))
    assert "last_w" not in _dispatch._plans(pat)


def test_the_backward_of_a_kept_forward_measures_only_dtheta(monkeypatch):
    pat, x, theta, dy = _c16_data(16)
    assert _dispatch._feeds_backward(pat, 16, 8, 8, 4, "materialize")
    timed = []
    monkeypatch.setattr(_measure, "fastest", lambda r, a: timed.append(len(r)) or 0)
    with config.override(planner="measure"):
        for got, want in zip(ps.tied_matmul_grad(dy, x, theta, pat),
                             ref.grad(dy, x, theta, pat)):
            assert_close(got, want)
    pairs = _dispatch._grad_pairs(pat, 16, 8, 8, 4)
    keep = _measure.candidates({p: c for p, c in pairs.items() if p[0] == "materialize"})
    assert timed == [len(keep)] and len(keep) < len(_measure.candidates(pairs))


@pytest.mark.parametrize("kind", ["forward", "grad"])
def test_every_candidate_gives_the_reference(kind, monkeypatch):
    """Each candidate in turn made the winner (the measured choice is one of them)."""
    for pat, batch, c_in, c_out, dtype in _cases():
        nb = int(np.prod(batch))
        m, n = pat.shape
        rng = np.random.default_rng(nb)
        theta = rng.standard_normal((pat.n_params, c_out, c_in)).astype(dtype)
        x = rng.standard_normal((nb, n, c_in)).astype(dtype)
        dy = rng.standard_normal((nb, m, c_out)).astype(dtype)
        costs = (_dispatch.choose(pat, nb, c_in, c_out, np.dtype(dtype).itemsize)[1]
                 if kind == "forward" else
                 _dispatch._grad_pairs(pat, nb, c_in, c_out, np.dtype(dtype).itemsize))
        for i in range(len(_measure.candidates(costs))):
            monkeypatch.setattr(_measure, "fastest", lambda r, a, i=i: i)
            _dispatch._plans(pat).pop("measured", None)
            with config.override(planner="measure"):
                if kind == "forward":
                    y = np.full((nb, m, c_out), np.nan, dtype)
                    _dispatch.forward_runner(pat, nb, c_in, c_out, np.dtype(dtype))(x, theta, y)
                    assert_close(y, ref.forward(x, theta, pat))
                    continue
                dx, dth = np.full_like(x, np.nan), np.full_like(theta, np.nan)
                _dispatch.grad_runner(pat, nb, c_in, c_out, np.dtype(dtype))(
                    dy, x, theta, dx, dth)
                for got, want in zip((dx, dth), ref.grad(dy, x, theta, pat)):
                    assert_close(got, want)


def test_threads_share_one_measurement(monkeypatch):
    import threading
    pat, x, theta, _ = _c16_data(4, seed=6)
    timed = []
    gate = threading.Barrier(4)

    def slow_fastest(runners, args):
        timed.append(len(runners))
        time.sleep(0.05)  # the others arrive meanwhile
        return 0
    monkeypatch.setattr(_measure, "fastest", slow_fastest)
    with config.override(planner="measure"):
        run = _dispatch.forward_runner(pat, 4, 8, 8, x.dtype)
    outs = [np.full((4, 16, 8), np.nan, np.float32) for _ in range(4)]

    def call(k):
        gate.wait()
        run(x, theta, outs[k])
    workers = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(timed) == 1
    for y in outs:
        assert_close(y, ref.forward(x, theta, pat))


def test_the_key_holds_the_thread_count(monkeypatch):
    import numba
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    one = _dispatch.measured_key(pat, "grad", 2, 1, 1, 8)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    assert _dispatch.measured_key(pat, "grad", 2, 1, 1, 8) != one


def test_a_misspelt_planner_is_an_error(monkeypatch):
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))
    with pytest.raises(ValueError, match="config.planner must be one of"):
        config.planner = "Measure"
    assert config.planner == "estimate"
    monkeypatch.setitem(vars(config), "planner", "Measure")  # past the check, and still
    with pytest.raises(ValueError, match="config.planner must be one of"):
        ps.tied_matmul(np.ones((2, 4)), np.ones(pat.n_params), pat)


def test_tunables_are_checked_however_they_are_set():
    """Assigned directly, a NaN bound compared False everywhere (no bound at all) and a
    string failed inside the first call that read it; numpy integers are ints."""
    before = {k: getattr(config, k) for k in ("max_bytes", "search_nodes", "cuda_threads")}
    for name, bad in (("max_bytes", "1GiB"), ("max_bytes", float("nan")),
                      ("max_bytes", True), ("search_nodes", 2.7), ("search_nodes", 0),
                      ("cuda_threads", 2048)):
        with pytest.raises(ValueError, match=f"config.{name} must be"):
            setattr(config, name, bad)
        with pytest.raises(ValueError, match=f"config.{name} must be"):
            with config.override(planner="measure", **{name: bad}):  # nothing applied
                pass
        assert {k: getattr(config, k) for k in before} == before
        assert config.planner == "estimate"
    with config.override(max_bytes=np.int64(1 << 20)):
        assert config.max_bytes == 1 << 20 and type(config.max_bytes) is int
    with pytest.raises(ValueError, match="unknown config value"):
        with config.override(max_byte=1):
            pass
