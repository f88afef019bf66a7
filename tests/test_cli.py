"""``python -m paramshare_nb``: commands exit 0 and print what they promise."""

import subprocess
import sys

import pytest

import paramshare_nb as ps
from paramshare_nb.__main__ import main
from paramshare_nb._cli_explain import SpecError, build_action, parse_spec


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info(capsys):
    code, out, _ = _run(capsys, "info")
    assert code == 0
    for word in ("paramshare_nb", "numpy", "numba", "cuda"):
        assert word in out


@pytest.mark.parametrize("cupy", [True, False])
def test_info_on_a_gpu_says_what_does_the_products(monkeypatch, cupy):
    numba = pytest.importorskip("numba")
    cuda = pytest.importorskip("numba.cuda")
    from paramshare_nb import __main__ as cli
    from paramshare_nb._kernels import cuda_blas
    if numba.config.ENABLE_CUDASIM:
        assert "simulator" in cli._cuda_status()
    device = type("Device", (), {"name": b"NVIDIA H200"})()
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "get_current_device", lambda: device)
    monkeypatch.setattr(cuda_blas, "available", lambda: cupy)
    status = cli._cuda_status()
    assert status.startswith("usable: NVIDIA H200; ")
    assert ("through CuPy" in status) == cupy and ("pip install cupy" in status) != cupy


def test_explain_dihedral(capsys):
    code, out, _ = _run(capsys, "explain", "dihedral:5")
    assert code == 0
    assert "order 10" in out
    assert "dense design" in out and "sparse design" in out
    assert "n_params=3" in out  # D5 on 5 points: 3 orbits of pairs
    assert out.count("Uniquely equivariant: yes") == 2  # both designs, proved
    assert "None" not in out


def test_explain_square_sparse_only(capsys):
    code, out, _ = _run(capsys, "explain", "square:4", "--design", "sparse")
    assert code == 0
    assert "sparse design" in out and "dense design" not in out
    assert "not free" in out  # D4 fixes the diagonal pixels: the note says so


@pytest.mark.parametrize("spec, n, order", [
    ("cyclic:6", 6, 6), ("deepsets:4", 4, 24), ("alternating:4", 4, 12),
    ("rotations:3", 9, 4), ("grid:3x4", 12, 12), ("regular:dihedral:3", 6, 6),
    ("symmetric:1", 1, 1),
])
def test_parse_spec(spec, n, order):
    _, gens = parse_spec(spec)
    assert gens.shape[1] == n
    assert ps.order(gens) == order if gens.shape[0] else order == 1


def test_build_action_invariant():
    desc, act = build_action("cyclic:5", out="invariant")
    assert (act.n_in, act.n_out) == (5, 1)
    assert "invariant" in desc
    assert ps.dense_pattern(act).n_params == 1


def test_explain_invariant_regular(capsys):
    code, out, _ = _run(capsys, "explain", "regular:cyclic:4", "--out", "invariant")
    assert code == 0
    assert "M=1 outputs" in out


@pytest.mark.parametrize("spec, message", [
    ("bogus:3", "unknown group spec"), ("dihedral", "unknown group spec"),
    ("dihedral:x", "whole number"), ("cyclic:0", ">= 1"), ("grid:4x", "whole number"),
    ("square:100", "more than"), ("grid:2x2x2x2", "1 to 3 axes"),
    ("grid:100000x100000", "more than 4096"),  # refused before the generators are built
])
def test_bad_specs(capsys, spec, message):
    with pytest.raises(SystemExit) as exc:
        main(["explain", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and spec in err
    # the usage shown is the subcommand's, whose options the user can fix
    assert err.startswith("usage: python -m paramshare_nb explain")
    if spec.startswith("grid:"):
        assert "(e.g. grid:4x5)" in err or "whole number" not in err


def test_parse_spec_errors_are_value_errors():
    with pytest.raises(ValueError, match="unknown group spec"):
        parse_spec("nope:1")
    assert issubclass(SpecError, ValueError)
    with pytest.raises(TypeError, match="str"):
        parse_spec(5)
    with pytest.raises(ValueError, match="out must be"):
        build_action("cyclic:3", out="other")


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "paramshare_nb", "explain", "cyclic:4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dense design" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "paramshare_nb", "explain", "nope:1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown group spec" in proc.stderr


def test_output_into_a_closed_pipe_is_quiet():
    """``explain ... | head -1``: the reader closes the pipe early; no traceback."""
    proc = subprocess.run(f"{sys.executable} -m paramshare_nb explain dihedral:6 | head -c 1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_help_lists_all_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "demo", "explain", "bench"):
        assert cmd in out


@pytest.mark.parametrize("spec, match", [
    ("cyclic:" + "9" * 5000, "5000-digit size"),  # int() refuses past 4300 digits
    ("regular:symmetric:600", "up to 512 points"),  # its order alone took minutes
    ("regular:symmetric:7", "more than 4096 elements"),  # counted up to the bound only
    ("symmetric:4096", "up to 512 points"),  # a MemoryError traceback after 13 s
    ("alternating:513", "up to 512 points"),
    ("regular:" * 1200 + "cyclic:3", "nested regular"),  # a RecursionError
])
def test_explain_refuses_large_specs_at_once(spec, match):
    import time
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=match):
        parse_spec(spec)
    assert time.perf_counter() - t0 < 5  # a guard against the minutes-long paths, not a timing


def test_explain_reports_the_memory_bound_without_a_traceback(capsys, monkeypatch):
    from paramshare_nb import _cli_explain

    def too_big(args):
        raise MemoryError("the chain needs 9 GiB, over config.max_bytes")
    monkeypatch.setattr(_cli_explain, "run", too_big)
    assert main(["explain", "cyclic:5"]) == 1
    err = capsys.readouterr().err
    assert "explain cyclic:5: the chain needs 9 GiB" in err and "Traceback" not in err
    assert "PARAMSHARE_MAX_BYTES" in err  # the command line's knob, not config.override


def test_bench_times_against_the_peers(capsys, monkeypatch):
    from paramshare_nb import _bench
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(6)))
    tiny = {"t1": ("C_6, 2->3, batch 4", lambda: pat, 4, 2, 3, 1.0),
            "t2": ("C_6, scalar, batch 5", lambda: pat, 5, None, None, 1.0)}
    monkeypatch.setattr(_bench, "workloads", lambda: tiny)
    monkeypatch.setattr(_bench, "_warm", lambda fn, args, seconds=0: (fn(*args), 0.0)[1])
    code, out, err = _run(capsys, "bench", "--only", "t1,t2", "--repeat", "2", "--threads", "1",
                          "--planner", "estimate", "--dtype", "float64")
    assert code == 0 and "disagrees" not in out + err  # the peers checked against ours
    assert "# paramshare_nb bench: dtype float64, numba threads 1, planner estimate" in out
    for line in ("t1: C_6, 2->3, batch 4", "t2: C_6, scalar, batch 5", "  numpy ",
                 "  scipy.sparse ", "vs fastest peer", "dense-equivalent GFLOP/s"):
        assert line in out
    code, out, _ = _run(capsys, "bench", "--list")
    assert code == 0 and out.splitlines() == [
        "t1  C_6, 2->3, batch 4 (target: 1x the fastest peer)",
        "t2  C_6, scalar, batch 5 (target: 1x the fastest peer)"]


def test_bench_leaves_out_a_peer_that_disagrees_and_fails(capsys, monkeypatch):
    """A wrong peer was reported on stderr only, still counted as the fastest, and the run
    exited 0: make_benchmarks stored its figures as valid."""
    from paramshare_nb import _bench
    pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(6)))
    monkeypatch.setattr(_bench, "workloads", lambda: {
        "t1": ("C_6, scalar, batch 5", lambda: pat, 5, None, None, 1.0)})
    monkeypatch.setattr(_bench, "_warm", lambda fn, args, seconds=0: (fn(*args), 0.0)[1])

    class Doubled(_bench.NumpyPeer):  # twice the right dtheta
        def __call__(self, x, theta, dy):
            y, dx, dth = super().__call__(x, theta, dy)
            return y, dx, 2 * dth

    class Short(_bench.NumpyPeer):
        name = "short"

        def __call__(self, x, theta, dy):
            return super().__call__(x, theta, dy)[:2]

    monkeypatch.setattr(_bench, "NumpyPeer", Doubled)
    monkeypatch.setattr(_bench, "ScipyPeer", Short)
    code, out, _ = _run(capsys, "bench", "--only", "t1", "--repeat", "2")
    assert code == 1
    assert "!! numpy disagrees on dtheta: left out of the comparison" in out
    assert "!! short disagrees on its outputs (2 of 3)" in out
    assert "vs fastest peer" not in out  # no valid peer is left to compare with
    assert "2 peer result(s) disagreed with paramshare_nb" in out
    sparse = ps.sparse_pattern(ps.Action.same(ps.regular(ps.groups.dihedral(5))))
    with pytest.raises(ValueError, match="dense patterns only; this one has 70 structural"):
        _bench.NumpyPeer(sparse, True)  # theta[-1] would have filled W's zeros


@pytest.mark.parametrize("options, message", [
    (["--only", "w1,w9"], "unknown workload(s) w9; choose from w1, w2, w3, w4, s1, s2, s3"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bench_refuses_bad_options_before_timing(capsys, options, message):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *options])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("usage: python -m paramshare_nb bench")
