"""``python -m paramshare_nb demo``: train an invariant network on real digits.

Two tasks:

``digits`` (default)
    scikit-learn's bundled 8 x 8 handwritten digits.  A network invariant to
    the eight symmetries of the square (D4 acting on the 64 pixels, dense
    design, orbit pooling to an invariant head) is trained next to an
    unconstrained MLP, both on upright digits only, and both are tested on the
    upright test set and on all eight transformed copies of it.
``sets``
    Deep Sets regression: predict the standard deviation of a set of 16
    numbers.  A permutation-invariant network (two Deep Sets layers, mean
    pooling) against an MLP on the flattened sets, both trained on sets listed
    in sorted order and tested on the same order and on shuffled sets.

The table reports parameters, training time, accuracy (or error) on the
training arrangement and on transformed inputs, and the measured invariance
error ``max |f(g . x) - f(x)|`` of each model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time

import numpy as np

__all__ = ["add_arguments", "check_args", "run", "build_digit_models", "build_set_models"]

#: Settings per task: (full run, --quick run).
_SETTINGS = {
    "digits": ({"epochs": 30, "channels": 16, "hidden": 256, "batch": 64, "lr": 3e-3,
                "n_train": None},
               {"epochs": 2, "channels": 4, "hidden": 32, "batch": 64, "lr": 3e-3,
                "n_train": 256}),
    "sets": ({"epochs": 30, "channels": 16, "hidden": 64, "batch": 64, "lr": 3e-3,
              "n_train": 4000, "set_size": 16},
             {"epochs": 2, "channels": 4, "hidden": 16, "batch": 64, "lr": 3e-3,
              "n_train": 256, "set_size": 8}),
}


class NonFiniteLoss(RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


def add_arguments(parser) -> None:
    """Add the demo's options to an ``argparse`` parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument("--task", choices=("digits", "sets"), default="digits",
                        help="digits: D4-invariant classifier vs MLP (default); sets: Deep Sets "
                             "regression vs MLP")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and data: seconds, for CI")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (default cpu)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument("--threads", type=int, default=1,
                        help="numba and BLAS threads while training, at most numba's "
                             "NUMBA_NUM_THREADS (default 1: a batch-64 step is too small to "
                             "gain from splitting across cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="also save the digits accuracy table as a bar chart, in the "
                             "format of its extension (.png, .pdf, .svg, ...; needs matplotlib: "
                             "pip install 'paramshare_nb[plot]')")


def check_args(args) -> None:
    """Refuse bad demo options before anything is trained.

    Parameters
    ----------
    args : argparse.Namespace
        Options as added by :func:`add_arguments`.

    Raises
    ------
    ValueError
        Naming the option, what was wrong and what is accepted.
    """
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0 (numpy seeds are non-negative), got {args.seed}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive finite number, got {args.lr}")
    if args.plot is not None:
        _check_plot_path(args.plot, args.task)
    _check_device(args.device)


def _check_plot_path(path, task):
    if task != "digits":
        raise ValueError("--plot draws the digits accuracy chart; use it with --task digits")
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'paramshare_nb[plot]'")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())  # what savefig can write
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in formats:
        raise ValueError(f"--plot {path!r}: end the file name with one of .png, .pdf, .svg "
                         f"(or {', '.join('.' + f for f in formats)}) to pick the image format")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--plot {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--plot {path!r} is a folder; give a file name in it")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--plot {path!r}: the folder {folder!r} is not writable")
    _check_plot_format(path, ext)


def _check_plot_format(path, ext):
    """Draw a word in ``ext`` to memory: formats that need other programs (``.pgf``: LaTeX,
    for its text) fail now, not after training."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.text(0.5, 0.5, "D4")
    try:
        fig.savefig(io.BytesIO(), format=ext)
    except Exception as exc:  # the backends raise RuntimeError, OSError, ...
        raise ValueError(f"--plot {path!r}: matplotlib cannot write .{ext} files here "
                         f"({exc}); use .png, .pdf or .svg") from exc


# -- progress ----------------------------------------------------------------------------
class _PlainBar:
    """A minimal progress bar on stderr, used when tqdm is not installed."""

    def __init__(self, total, desc, disable=False):
        self.total, self.desc, self.n, self.disable = total, desc, 0, disable
        self.postfix = ""
        self._draw()

    def _draw(self):
        if self.disable:
            return
        width = 24
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.desc:<14} [{'#' * done}{'.' * (width - done)}] "
                         f"{self.n}/{self.total} {self.postfix}")
        sys.stderr.flush()

    def set_postfix_str(self, text):
        self.postfix = text

    def update(self, n=1):
        self.n += n
        self._draw()

    def close(self):
        if not self.disable:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _progress(total, desc, disable):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total, desc, disable)
    return tqdm(total=total, desc=desc, unit="epoch", disable=disable, leave=True,
                file=sys.stderr)


# -- models --------------------------------------------------------------------------------
def build_digit_models(channels=8, hidden=128, seed=0, h=8):
    """The D4-invariant network and the MLP peer for ``h x h`` digits.

    Parameters
    ----------
    channels : int
        Channels of the two equivariant layers.
    hidden : int
        Width of the MLP's two hidden layers.
    seed : int
    h : int
        Image side.

    Returns
    -------
    invariant, mlp : nn.Module
        ``invariant`` takes ``(batch, h*h, 1)``, ``mlp`` takes ``(batch, h*h)``;
        both give ``(batch, 10)`` logits.
    gens : numpy.ndarray
        Generators of D4 on the pixels.
    """
    from . import nn
    from .actions import Action
    from .groups import orbits, square_symmetries

    gens = square_symmetries(h)
    act = Action.same(gens)
    n_orbits = int(orbits(gens).max()) + 1
    rng = np.random.default_rng(seed)
    invariant = nn.Sequential(
        nn.EquivariantLinear(act, 1, channels, rng=rng), nn.ReLU(),
        nn.EquivariantLinear(act, channels, channels, rng=rng), nn.ReLU(),
        nn.OrbitPool(gens, reduce="mean"), nn.Flatten(),
        nn.Linear(n_orbits * channels, 10, gain=1.0, rng=rng))
    mlp = nn.Sequential(
        nn.Linear(h * h, hidden, rng=rng), nn.ReLU(),
        nn.Linear(hidden, hidden, rng=rng), nn.ReLU(),
        nn.Linear(hidden, 10, gain=1.0, rng=rng))
    return invariant, mlp, gens


def build_set_models(set_size=16, channels=16, hidden=64, seed=0):
    """A Deep Sets regressor and an MLP on flattened sets.

    Parameters
    ----------
    set_size : int
    channels : int
        Channels of the two permutation-equivariant layers.
    hidden : int
        Width of the heads and of the MLP.
    seed : int

    Returns
    -------
    invariant, mlp : nn.Module
        ``invariant`` takes ``(batch, set_size, 1)``, ``mlp``
        ``(batch, set_size)``; both give ``(batch, 1)``.
    gens : numpy.ndarray
        Generators of the symmetric group on the set.
    """
    from . import nn
    from .actions import Action
    from .groups import symmetric

    gens = symmetric(set_size)
    act = Action.same(gens)
    rng = np.random.default_rng(seed)
    invariant = nn.Sequential(
        nn.EquivariantLinear(act, 1, channels, rng=rng), nn.ReLU(),
        nn.EquivariantLinear(act, channels, channels, rng=rng), nn.ReLU(),
        nn.OrbitPool(gens, reduce="mean"), nn.Flatten(),
        nn.Linear(channels, hidden, rng=rng), nn.ReLU(),
        nn.Linear(hidden, 1, gain=1.0, rng=rng))
    mlp = nn.Sequential(
        nn.Linear(set_size, hidden, rng=rng), nn.ReLU(),
        nn.Linear(hidden, hidden, rng=rng), nn.ReLU(),
        nn.Linear(hidden, 1, gain=1.0, rng=rng))
    return invariant, mlp, gens


# -- training ------------------------------------------------------------------------------
def _train(model, x, y, loss_fn, epochs, batch, lr, rng, desc, quiet, device="cpu"):
    """Adam with a cosine schedule; returns (seconds, final epoch's mean loss)."""
    from . import optim
    from .autograd import Tensor

    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    model.train()
    bar = _progress(epochs, desc, quiet)
    start = time.perf_counter()
    mean_loss = float("nan")
    try:
        for epoch in range(epochs):
            order = rng.permutation(len(x))
            total, count = 0.0, 0
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                loss = loss_fn(model(Tensor(x[idx]).to(device)), y[idx])
                value = loss.item()
                if not np.isfinite(value):
                    raise NonFiniteLoss(f"{desc}: the loss became {value} at epoch {epoch + 1}, "
                                        f"step {i // batch + 1}; lower --lr or check the data")
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += value * len(idx)
                count += len(idx)
            sched.step()
            mean_loss = total / count
            bar.set_postfix_str(f"loss {mean_loss:.4f}")
            bar.update(1)
    finally:
        bar.close()
    return time.perf_counter() - start, mean_loss


def _predict(model, x, batch=512, device="cpu"):
    from .autograd import Tensor, no_grad

    model.eval()
    with no_grad():
        return np.concatenate([model(Tensor(x[i:i + batch]).to(device)).numpy()
                               for i in range(0, len(x), batch)])


def _check_device(device):
    """A ValueError, as for any other bad option (the command line prints it, no traceback),
    when ``--device cuda`` cannot run."""
    if device == "cpu":
        return
    try:
        from numba import cuda
    except ImportError:
        raise ValueError("--device cuda: numba's CUDA support is not installed; install "
                           "the extra: pip install 'paramshare_nb[cuda]'") from None
    if not cuda.is_available():
        raise ValueError("--device cuda: no usable CUDA GPU was found (see "
                           "`python -m paramshare_nb info`); use --device cpu")


@contextlib.contextmanager
def _threads(n):
    """Limit numba's and (when threadpoolctl is installed) BLAS's threads, then restore."""
    import numba

    old = numba.get_num_threads()
    # numba cannot go past NUMBA_NUM_THREADS (the cores, by default), and BLAS should not
    # either: --threads 64 on 2 cores ran BLAS on 64 threads, training 10x slower
    if n > numba.config.NUMBA_NUM_THREADS:
        print(f"note: --threads {n} is more than the {numba.config.NUMBA_NUM_THREADS} numba "
              f"may use (NUMBA_NUM_THREADS); training on {numba.config.NUMBA_NUM_THREADS}",
              file=sys.stderr)
        n = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=n, user_api="blas")
        with limits:
            yield
    finally:
        numba.set_num_threads(old)


def _table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


# -- tasks ---------------------------------------------------------------------------------
def _digits(args, cfg):
    from . import nn
    from .groups import closure
    from .perm import apply

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("the digits demo needs scikit-learn: pip install 'paramshare_nb[demo]'",
              file=sys.stderr)
        return 2
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    if cfg["n_train"]:
        train = train[:cfg["n_train"]]
    xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]

    invariant, mlp, gens = build_digit_models(cfg["channels"], cfg["hidden"], args.seed)
    group = closure(gens)  # the 8 elements of D4 on the pixels
    print(f"digits: {len(xtr)} upright training images, {len(xte)} test images x "
          f"{len(group)} symmetries of the square; {cfg['epochs']} epochs, Adam lr {cfg['lr']}")
    models = [("D4-invariant (dense, orbit pool)", "D4-invariant", invariant,
               lambda a: a[:, :, None]),
              ("MLP (unconstrained)", "MLP", mlp, lambda a: a)]
    rows, chart = [], {}
    for name, tag, model, shape in models:
        model.to(args.device)
        seconds, _ = _train(model, shape(xtr), ytr, nn.cross_entropy, cfg["epochs"],
                            cfg["batch"], cfg["lr"], rng, tag, args.no_progress, args.device)
        base = _predict(model, shape(xte), device=args.device)
        accs, err = [], 0.0
        for g in group:
            out = _predict(model, shape(apply(g, xte, axis=1)), device=args.device)
            accs.append(float(np.mean(out.argmax(1) == yte)))
            err = max(err, float(np.max(np.abs(out - base))))
        upright = float(np.mean(base.argmax(1) == yte))
        rows.append([name, model.n_parameters(), f"{seconds:.1f} s", f"{upright:.3f}",
                     f"{np.mean(accs):.3f} (worst {min(accs):.3f})", f"{err:.1e}"])
        chart[tag] = {"upright": upright, "mean of 8": float(np.mean(accs)),
                      "worst of 8": min(accs)}
    print()
    print(_table(["model", "parameters", "training time", "accuracy upright",
                  "accuracy, 8 transforms", "invariance error"], rows))
    print("\ninvariance error: max |logits(g . x) - logits(x)| over the test set and the 8 "
          "symmetries")
    if args.plot:
        from . import plot

        try:  # the path was checked before training; the disk can still refuse
            plot.accuracy(chart, title="upright training, tested on the 8 symmetries").savefig(
                args.plot, dpi=100)
        except (OSError, RuntimeError) as exc:
            print(f"demo: error: the accuracy chart could not be saved: {exc}", file=sys.stderr)
            return 1
        print(f"accuracy chart saved to {args.plot}")
    return 0


def _make_sets(n, size, rng):
    mu = rng.uniform(-1, 1, (n, 1))
    sigma = rng.uniform(0.1, 1.0, (n, 1))
    x = mu + sigma * rng.standard_normal((n, size))
    y = x.std(axis=1, keepdims=True)
    return np.sort(x, axis=1).astype(np.float32), y.astype(np.float32)


def _sets(args, cfg):
    from . import nn

    rng = np.random.default_rng(args.seed)
    size = cfg["set_size"]
    xtr, ytr = _make_sets(cfg["n_train"], size, rng)
    xte, yte = _make_sets(max(cfg["n_train"] // 4, 64), size, rng)
    shuffled = np.take_along_axis(xte, np.argsort(rng.random(xte.shape), axis=1), axis=1)
    invariant, mlp, _ = build_set_models(size, cfg["channels"], cfg["hidden"], args.seed)
    print(f"sets: predict the standard deviation of {size} numbers; {len(xtr)} training sets "
          f"listed in sorted order, {len(xte)} test sets; {cfg['epochs']} epochs")
    baseline = float(np.mean((yte - ytr.mean()) ** 2))
    models = [("Deep Sets (S_n-invariant)", "Deep Sets", invariant, lambda a: a[:, :, None]),
              ("MLP on flattened sets", "MLP", mlp, lambda a: a)]
    rows = []
    for name, tag, model, shape in models:
        model.to(args.device)
        seconds, _ = _train(model, shape(xtr), ytr, nn.mse, cfg["epochs"], cfg["batch"],
                            cfg["lr"], rng, tag, args.no_progress, args.device)
        sorted_out = _predict(model, shape(xte), device=args.device)
        shuffled_out = _predict(model, shape(shuffled), device=args.device)
        rows.append([name, model.n_parameters(), f"{seconds:.1f} s",
                     f"{np.mean((sorted_out - yte) ** 2):.4f}",
                     f"{np.mean((shuffled_out - yte) ** 2):.4f}",
                     f"{np.max(np.abs(shuffled_out - sorted_out)):.1e}"])
    print()
    print(_table(["model", "parameters", "training time", "test MSE, sorted",
                  "test MSE, shuffled", "invariance error"], rows))
    print(f"\n(predicting the mean target gives MSE {baseline:.4f}; invariance error: max "
          f"|f(shuffled) - f(sorted)|)")
    return 0


def run(args) -> int:
    """Run the demo for parsed arguments (see :func:`add_arguments`).

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        Exit status: 0 on success, 2 when scikit-learn is missing, 3 when a
        loss became NaN or infinite.

    Raises
    ------
    ValueError
        For bad options (see :func:`check_args`), also ``--device cuda`` when
        CUDA is not usable.

    Notes
    -----
    With ``--device cuda`` the parameters and batches live on the GPU and
    the tied multiplies run as CUDA kernels; the other primitives and the
    optimizer update run on host copies (see
    :attr:`paramshare_nb.autograd.Function.native_cuda`).
    """
    check_args(args)
    cfg = dict(_SETTINGS[args.task][1 if args.quick else 0])
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.lr is not None:
        cfg["lr"] = args.lr
    try:
        with _threads(args.threads):
            return _digits(args, cfg) if args.task == "digits" else _sets(args, cfg)
    except NonFiniteLoss as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 3
