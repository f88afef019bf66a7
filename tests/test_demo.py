"""The demo in --quick mode (seconds) and its failure paths."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from paramshare_nb.__main__ import main  # noqa: E402


def _rows(out):
    return {line.split("  ")[0]: line for line in out.splitlines() if "  " in line}


def test_digits_quick(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    chart = tmp_path / "accuracy.png"
    assert main(["demo", "--quick", "--no-progress", "--plot", str(chart)]) == 0
    out = capsys.readouterr().out
    assert chart.stat().st_size > 1000 and chart.read_bytes()[:4] == b"\x89PNG"
    assert "invariance error" in out
    rows = _rows(out)
    inv = rows["D4-invariant (dense, orbit pool)"].split()
    assert float(inv[-1]) < 1e-4  # invariant to float precision
    mlp = rows["MLP (unconstrained)"].split()
    assert float(mlp[-1]) > 1e-2


def test_sets_quick(capsys):
    assert main(["demo", "--task", "sets", "--quick", "--no-progress", "--seed", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert float(rows["Deep Sets (S_n-invariant)"].split()[-1]) < 1e-4


def test_nan_loss_is_reported(monkeypatch, capsys):
    from paramshare_nb import nn
    from paramshare_nb.autograd import Tensor

    monkeypatch.setattr(nn, "cross_entropy",
                        lambda logits, y: Tensor(np.array(np.nan, np.float32)))
    assert main(["demo", "--quick", "--no-progress"]) == 3
    assert "loss became nan" in capsys.readouterr().err


def test_cuda_unusable_is_a_clear_error(monkeypatch, capsys):
    cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:  # a usage error, as for other bad options
        main(["demo", "--quick", "--device", "cuda"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "--device cuda: no usable CUDA GPU" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("options, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--lr", "-0.1"], "--lr must be a positive finite number"),
    (["--plot", "chart"], "end the file name with one of .png"),
    (["--plot", "no/such/folder/a.png"], "does not exist"),
    (["--task", "sets", "--plot", "a.png"], "use it with --task digits"),
])
def test_bad_options_are_refused_before_training(capsys, options, message):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--quick", "--no-progress", *options])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # nothing was trained


def test_plot_paths_refused_before_training(capsys, tmp_path, monkeypatch):
    """A folder, and a format matplotlib cannot write here (``.pgf`` without LaTeX, faked by
    a failing ``savefig``): refused before anything trains."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from paramshare_nb import demo as demo_module

    (tmp_path / "a.png").mkdir()
    cases = [(str(tmp_path / "a.png"), "is a folder"), (str(tmp_path / "b.pgf"), "cannot write")]

    def no_latex(self, *args, **kwargs):
        if kwargs.get("format") == "pgf":
            raise RuntimeError("'xelatex' not found")
    monkeypatch.setattr(Figure, "savefig", no_latex)
    cases.append((str(tmp_path / "c.png"), "is not writable"))  # os.access patched: not root
    for path, message in cases:
        if message == "is not writable":
            monkeypatch.setattr(demo_module.os, "access", lambda path, mode: False)
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--quick", "--no-progress", "--plot", path])
        assert exit_.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""


def test_chart_that_cannot_be_saved_is_an_error_not_a_traceback(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from paramshare_nb import plot

    class Chart:
        def savefig(self, *args, **kwargs):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(plot, "accuracy", lambda *args, **kwargs: Chart())
    assert main(["demo", "--quick", "--no-progress", "--plot", str(tmp_path / "a.png")]) == 1
    captured = capsys.readouterr()
    assert "could not be saved" in captured.err and "No space left" in captured.err
    assert "invariance error" in captured.out  # the results were printed first


def test_run_checks_options_too():
    import argparse

    from paramshare_nb import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    with pytest.raises(ValueError, match="--epochs"):
        demo.run(parser.parse_args(["--quick", "--epochs", "0"]))


def test_threads_never_exceed_numbas_cap(capsys):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba

    from paramshare_nb import demo

    cap = numba.config.NUMBA_NUM_THREADS
    with demo._threads(cap + 62):  # --threads 64 on 2 cores ran BLAS on 64 threads
        assert numba.get_num_threads() == cap
        assert f"--threads {cap + 62} is more than the {cap} numba may use" in \
            capsys.readouterr().err
        blas = threadpoolctl.threadpool_info()
        assert all(p["num_threads"] <= cap for p in blas if p["user_api"] == "blas")
