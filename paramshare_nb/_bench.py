"""``python -m paramshare_nb bench``: the tied multiply side by side with what a user would
write instead, on this machine.

For each workload, in one process: forward + backward (``y``, ``dx``, ``dtheta``) of
paramshare_nb (``tied_matmul`` + ``tied_matmul_grad``, the planner's choice) against

- **numpy**: materialise ``W = theta[idx]``, matmul, ``bincount`` for ``dtheta``,
- **scipy.sparse**: one 0/1 CSR matrix ``B_k`` per parameter, ``sum_k theta_k B_k x``,

after checking that every peer agrees.  It prints medians, the ratio to each peer, the
issue's target, and the achieved GFLOP/s against plain BLAS matmuls of the same dense
shape.  paramshare_nb is timed in a block of calls before each peer and after the last,
and its median is taken over all blocks: the ratios then compare medians over the same
minutes of a machine whose speed drifts.  ``benchmarks/compare.py`` runs the same with
PyTorch as a third peer.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from . import config
from . import ops as _ops
from .actions import Action
from .groups import cyclic, square_symmetries, symmetric
from .patterns import dense_pattern

__all__ = ["add_arguments", "run", "workloads", "compare"]

DEFAULT = "w1,w2,w3,w4"


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------

def figure1_d5():
    """The genuine D5 reading of the paper's Figure 1 (:doc:`/theory`, *The paper's claims,
    reproduced*).

    Pixels of a 4 x 5 image, row-major; the rotation shifts rows 0-1 right
    and rows 2-3 left, the reflection swaps row i with row 3 - i.  Outputs:
    D5 on the 5 vertices of a pentagon.
    """
    r, c = np.divmod(np.arange(20), 5)
    rot_in = np.where(r < 2, r * 5 + (c + 1) % 5, r * 5 + (c - 1) % 5)
    ref_in = (3 - r) * 5 + c
    v = np.arange(5)
    rot_out, ref_out = (v + 1) % 5, (-v) % 5
    # (p . x)[p[i]] = x[i]: a generator array lists the image of each point
    return Action([rot_in, ref_in], [rot_out, ref_out])


def workloads():
    """``name -> (description, pattern, batch, c_in, c_out, target ratio)``."""
    return {
        "w1": ("Deep Sets S_512, 32->32, batch 64",
               lambda: dense_pattern(Action.same(symmetric(512))),
               64, 32, 32, 50.0),
        "w2": ("cyclic C_64 regular, 16->16, batch 64",
               lambda: dense_pattern(Action.same(cyclic(64))),
               64, 16, 16, 1.0),
        "w3": ("D4 on 16x16 image, 8->8, batch 64",
               lambda: dense_pattern(Action.same(square_symmetries(16))),
               64, 8, 8, 1.0),
        "w4": ("Figure-1 D5 (4x5 -> 5), scalar, batch 4096",
               lambda: dense_pattern(figure1_d5()),
               4096, None, None, 3.0),
        # small calls, where fixed costs decide ("never slower than materialise + BLAS");
        # run with --only s1,s2,s3
        "s1": ("cyclic C_32, scalar, batch 1",
               lambda: dense_pattern(Action.same(cyclic(32))),
               1, None, None, 1.0),
        "s2": ("cyclic C_32, scalar, batch 16",
               lambda: dense_pattern(Action.same(cyclic(32))),
               16, None, None, 1.0),
        "s3": ("cyclic C_64, scalar, batch 64",
               lambda: dense_pattern(Action.same(cyclic(64))),
               64, None, None, 1.0),
    }


# ---------------------------------------------------------------------------
# peers (each returns y, dx, dtheta in the library's layout)
# ---------------------------------------------------------------------------

def peak_bytes(call) -> int:
    """The most bytes ``call()`` holds allocated at once, its result included (tracemalloc,
    which sees numpy's allocations): a call's own memory, where a process's maximum RSS
    (asv's ``peakmem_``) keeps whatever the setup and the compiler reached before it."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def dense_index(pat) -> np.ndarray:
    """``pat.index()`` for the peers, which gather ``W = theta[index]``: a ValueError for a
    pattern with structural zeros, whose ``-1`` ids would gather ``theta[-1]`` (every
    workload here is dense; a peer for sparse patterns would mask them)."""
    idx = pat.index()
    zeros = int(np.count_nonzero(idx < 0))
    if zeros:
        raise ValueError(f"the peers gather W = theta[index] and take dense patterns only; "
                         f"this one has {zeros} structural zeros")
    return idx


class NumpyPeer:
    name = "numpy"

    def __init__(self, pat, scalar):
        self.idx = dense_index(pat)
        self.flat = self.idx.ravel()
        self.pat, self.scalar = pat, scalar

    def __call__(self, x, theta, dy):
        m, n = self.pat.shape
        P = self.pat.n_params
        if self.scalar:
            w = theta[self.idx]
            y = x @ w.T
            dx = dy @ w
            dw = dy.T @ x
            dth = np.bincount(self.flat, weights=dw.ravel(), minlength=P).astype(theta.dtype)
            return y, dx, dth
        nb, _, ci = x.shape
        co = theta.shape[1]
        w = theta[self.idx].transpose(0, 2, 1, 3).reshape(m * co, n * ci)
        x2, dy2 = x.reshape(nb, -1), dy.reshape(nb, -1)
        y = (x2 @ w.T).reshape(nb, m, co)
        dx = (dy2 @ w).reshape(nb, n, ci)
        dw = (dy2.T @ x2).reshape(m, co, n, ci).transpose(0, 2, 1, 3).reshape(m * n, co * ci)
        dth = np.stack([np.bincount(self.flat, weights=dw[:, k], minlength=P)
                        for k in range(co * ci)], axis=1)
        return y, dx, dth.reshape(P, co, ci).astype(theta.dtype)


class ScipyPeer:
    name = "scipy.sparse"

    def __init__(self, pat, scalar):
        import scipy.sparse as sp
        m, n = pat.shape
        self.mats = []
        for k in range(pat.n_params):
            sel = pat.params == k
            b = sp.csr_matrix((np.ones(int(sel.sum()), np.float32), (pat.rows[sel], pat.cols[sel])),
                              shape=(m, n))
            self.mats.append((b, b.T.tocsr()))
        self.pat, self.scalar = pat, scalar

    def __call__(self, x, theta, dy):
        m, n = self.pat.shape
        x3 = x[..., None] if self.scalar else x
        dy3 = dy[..., None] if self.scalar else dy
        t3 = theta[:, None, None] if self.scalar else theta
        nb, _, ci = x3.shape
        co = t3.shape[1]
        xs = x3.transpose(1, 0, 2).reshape(n, nb * ci)  # (N, B*Ci)
        dys = dy3.transpose(1, 0, 2).reshape(m * nb, co)  # (M*B, Co)
        y = np.zeros((m * nb, co), x.dtype)
        dx = np.zeros((n, nb * ci), x.dtype)
        dth = np.empty_like(t3)
        for k, (b, bt) in enumerate(self.mats):
            z = (b @ xs).reshape(m * nb, ci)
            y += z @ t3[k].T
            dth[k] = dys.T @ z
            dx += bt @ (dys @ t3[k]).reshape(m, nb * ci)
        y = y.reshape(m, nb, co).transpose(1, 0, 2)
        dx = dx.reshape(n, nb, ci).transpose(1, 0, 2)
        if self.scalar:
            return y[..., 0], dx[..., 0], dth[:, 0, 0]
        return y, dx, dth


class Ours:
    name = "paramshare_nb"

    def __init__(self, pat, scalar):
        self.pat = pat

    def __call__(self, x, theta, dy):
        y = _ops.tied_matmul(x, theta, self.pat)
        dx, dth = _ops.tied_matmul_grad(dy, x, theta, self.pat)
        return y, dx, dth


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def _warm(fn, args, seconds=0.25):
    """Untimed calls of ``fn(*args)`` for ``seconds`` (at least one); returns the first's time.

    A block of short calls timed straight after a pause, or after a peer, ran
    1.5x slower for its first 30-50 ms (w1: 5.5-6 ms against 3.5): clocks
    ramping up, and OpenBLAS's threads still spinning from the peer's last
    product.  A peer's first call alone is usually past ``seconds``.
    """
    start = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - start
    while time.perf_counter() - start < seconds:
        fn(*args)
    return first


def _median_time(fn, args, repeat, budget=20.0):
    warm = _warm(fn, args)  # also compiles, builds plans, fills caches
    if warm > budget / 4:  # a peer taking many seconds: two more samples are enough
        repeat = 2
    times = _samples(fn, args, repeat, budget)
    return statistics.median(times), len(times)


def _warm_samples(fn, args, repeat):
    """:func:`_samples` after :func:`_warm`."""
    _warm(fn, args)
    return _samples(fn, args, repeat)


def _samples(fn, args, repeat, budget=20.0):
    """Seconds of up to ``repeat`` calls of ``fn(*args)`` (at least 3 past ``budget``)."""
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return times


def _blas_time(pat, x, theta, dy, repeat):
    """Plain BLAS on the dense shape: forward, dx and dW matmuls."""
    m, n = pat.shape
    nb = x.shape[0]
    ci = 1 if theta.ndim == 1 else theta.shape[2]
    co = 1 if theta.ndim == 1 else theta.shape[1]
    w = np.random.default_rng(0).standard_normal((m * co, n * ci)).astype(x.dtype)
    x2, dy2 = x.reshape(nb, -1), dy.reshape(nb, -1)

    def run():
        x2 @ w.T
        dy2 @ w
        dy2.T @ x2
    t, _ = _median_time(run, (), repeat)
    return t, 3 * 2.0 * nb * m * n * ci * co


def _strategies(pat, nb, c_in, c_out, itemsize):
    """``(forward, dx, dtheta)`` as ``"auto"`` runs them: the estimates' choice, or under
    ``config.planner == "measure"`` the measured one (kept once a first call has run)."""
    from paramshare_nb import _dispatch
    hf = _dispatch.choose(pat, nb, c_in, c_out, itemsize)[0]
    hx, ht = _dispatch._choose_grad(pat, nb, c_in, c_out, itemsize)
    if config.planner == "measure":
        measured = _dispatch._plans(pat).get("measured", {})
        hf = measured.get(_dispatch.measured_key(pat, "forward", nb, c_in, c_out, itemsize), hf)
        hx, ht = measured.get(_dispatch.measured_key(pat, "grad", nb, c_in, c_out, itemsize),
                              (hx, ht))
    return hf, hx, ht


def compare(table=None, only=DEFAULT, repeat=15, dtype="float32", peers=(), title="bench",
            about=""):
    """Time each workload of ``table`` (default :func:`workloads`) named in ``only`` against
    the numpy and scipy.sparse peers and ``peers`` (classes like :class:`NumpyPeer`), and
    print the figures; ``title`` and ``about`` go in the first line.

    Every peer's ``(y, dx, dtheta)`` is checked against ours first.  A peer that
    disagrees is reported on stdout (``!! ... disagrees``), left out of the
    comparison with the fastest peer, and counted: returns how many disagreed
    (a run with any is not a valid comparison).
    """
    import numba

    table = workloads() if table is None else table
    dtype = np.dtype(dtype)
    threads = numba.get_num_threads()
    peers = [NumpyPeer, ScipyPeer, *peers]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# paramshare_nb {title}: dtype {dtype}, numba threads {threads}, "
          f"planner {config.planner}, "
          f"cpus {os.cpu_count()}, load average {load:.1f} at start{about}; "
          f"paramshare_nb from {os.path.dirname(os.path.abspath(__file__))}")
    rng = np.random.default_rng(0)
    wrong = 0
    for key, (desc, make, nb, ci, co, target) in table.items():
        if key not in only.split(","):
            continue
        t0 = time.perf_counter()
        pat = make()
        t_build = time.perf_counter() - t0
        m, n = pat.shape
        scalar = ci is None
        if scalar:
            theta = rng.standard_normal(pat.n_params).astype(dtype)
            x = rng.standard_normal((nb, n)).astype(dtype)
            dy = rng.standard_normal((nb, m)).astype(dtype)
        else:
            theta = (rng.standard_normal((pat.n_params, co, ci)) / np.sqrt(n * ci)).astype(dtype)
            x = rng.standard_normal((nb, n, ci)).astype(dtype)
            dy = rng.standard_normal((nb, m, co)).astype(dtype)
        c_in, c_out = (1, 1) if scalar else (ci, co)
        ours = Ours(pat, scalar)
        t_first = time.perf_counter()
        ref = ours(x, theta, dy)
        t_first = time.perf_counter() - t_first
        hf, hx, ht = _strategies(pat, nb, c_in, c_out, dtype.itemsize)
        # ours is timed in a block of calls before each peer and its median is over all
        # blocks: this machine's speed drifts by up to 2x within seconds, and the ratios
        # should compare medians over the same minutes
        ours_times = []
        print(f"\n{key}: {desc}; pattern {pat}; built in {t_build:.2f} s; "
              f"first call (plans + compile or cache load) {t_first:.2f} s; strategies: "
              f"forward {hf}, dx {hx}, dtheta {ht}")
        peer_times = []
        for cls in peers:
            peer = cls(pat, scalar)
            differs = _disagreement(peer(x, theta, dy), ref, dtype)
            if differs:
                wrong += 1
                print(f"  !! {peer.name} disagrees on {differs}: left out of the comparison")
            ours_times += _warm_samples(ours, (x, theta, dy), repeat)
            t, k = _median_time(peer, (x, theta, dy), repeat)
            peer_times.append((peer.name, t, k, not differs))
        ours_times += _warm_samples(ours, (x, theta, dy), repeat)
        t_ours = statistics.median(ours_times)
        print(f"  {'paramshare_nb':14s} {t_ours * 1e3:10.3f} ms  (median of {len(ours_times)}, "
              f"a block of {repeat} before each peer and after the last)")
        for name, t, k, _ in peer_times:
            verdict = (f"{t / t_ours:8.1f}x faster" if t >= t_ours
                       else f"{t_ours / t:8.2f}x slower")
            print(f"  {name:14s} {t * 1e3:10.3f} ms  (median of {k})  ours is {verdict}")
        valid = [t for _, t, _, agrees in peer_times if agrees]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        if valid:
            ratio = round(min(valid) / t_ours, 2)  # judged on the digits printed
            verdict = "MET" if ratio >= target else "MISSED"
            print(f"  vs fastest peer: {ratio:.2f}x (target >= {target:g}x): {verdict}  "
                  f"(load average {load:.1f})")
        t_blas, flops = _blas_time(pat, x, theta, dy, repeat)
        print(f"  dense-equivalent GFLOP/s: ours {flops / t_ours / 1e9:.1f}, plain BLAS "
              f"matmuls of the dense shape {flops / t_blas / 1e9:.1f} ({t_blas * 1e3:.3f} ms)")
    if wrong:
        print(f"\n!! {wrong} peer result(s) disagreed with paramshare_nb: this run is not a "
              f"valid comparison")
    return wrong


def _disagreement(out, ref, dtype) -> str:
    """Which of ``y``, ``dx``, ``dtheta`` a peer's ``out`` gets wrong against ours (shape,
    or values beyond float32's or float64's tolerance); ``""`` when none."""
    tol = 1e-3 if dtype == np.float32 else 1e-9
    if len(out) != len(ref):
        return f"its outputs ({len(out)} of {len(ref)})"
    bad = []
    for a, b, what in zip(out, ref, ("y", "dx", "dtheta")):
        a = np.asarray(a, np.float64)
        scale = max(1.0, float(np.abs(b).max(initial=0.0)))
        if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * scale):
            bad.append(what)
    return ", ".join(bad)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """Add ``bench``'s options to an ``argparse`` parser."""
    parser.add_argument("--only", default=DEFAULT, metavar="W1,W2",
                        help=f"workloads, comma-separated (default {DEFAULT}; also s1,s2,s3: "
                             f"small calls); --list names them")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--repeat", type=int, default=15,
                        help="calls per block of samples (default 15)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="numba and BLAS threads, at most numba's NUMBA_NUM_THREADS "
                             "(default: all cores)")
    parser.add_argument("--planner", choices=config.PLANNERS, default=None,
                        help="how method='auto' chooses: the cost model's estimates, or "
                             "timing the candidates on each workload's first call (default: "
                             "config.planner, from PARAMSHARE_PLANNER)")


def check_args(args) -> None:
    """Refuse bad options before anything is timed: a ``ValueError`` naming the option."""
    if args.list:  # nothing is timed
        return
    table = workloads()
    unknown = [w for w in args.only.split(",") if w not in table]
    if unknown:
        raise ValueError(f"--only: unknown workload(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(table)}")
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def run(args, peers=(), title="bench", about="") -> int:
    """Run ``bench`` for parsed arguments (see :func:`add_arguments`), with ``peers`` beside
    numpy and scipy.sparse; 1 when a peer disagreed with paramshare_nb, else 0."""
    import contextlib

    from .demo import _threads

    if args.list:
        for key, (desc, *_rest, target) in workloads().items():
            print(f"{key}  {desc} (target: {target:g}x the fastest peer)")
        return 0
    check_args(args)
    threads = contextlib.nullcontext() if args.threads is None else _threads(args.threads)
    planner = args.planner or config.planner
    with threads, config.override(planner=planner):
        wrong = compare(only=args.only, repeat=args.repeat, dtype=args.dtype, peers=peers,
                        title=title, about=about + _blas_threads(args.threads))
    return 1 if wrong else 0


def _blas_threads(requested) -> str:
    """What ``--threads`` did to BLAS, for the header: limited only where threadpoolctl is
    installed (BLAS's pool is fixed when numpy loads, before this runs)."""
    if requested is None:
        return ""
    if os.environ.get("OPENBLAS_NUM_THREADS") == str(requested):  # compare.py sets it first
        return f", BLAS threads {requested}"
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return (", BLAS threads not limited (pip install threadpoolctl, or set "
                "OPENBLAS_NUM_THREADS before starting)")
    return f", BLAS threads {requested}"
