"""One short GPU session: the CUDA tests on the device, then timings.

Run on a machine with an NVIDIA GPU (about 2 minutes on an H200 machine with
16 cores, most of it numba compiling the kernels)::

    python3 benchmarks/gpu_check.py            # tests + timings, w1-w4
    python3 benchmarks/gpu_check.py --no-tests --only w1,w4
    python3 benchmarks/gpu_check.py --no-tests --kernels auto,csr --only w2,w4

paramshare_nb need not be installed: the script imports it from this tree.
numba-cuda 0.30.4 cannot compile kernels under numpy 2.5; on such a machine
install numpy<2.5 first (offline: ``pip download numpy==2.4.6 --no-deps -d
.whl`` here, then ``pip install --no-index --target /tmp/site .whl/*.whl`` and
``PYTHONPATH=/tmp/site`` there).  The script checks this before anything else
and says so.

1. ``NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_cuda.py
   tests/test_cuda_launch.py tests/test_cuda_memory.py tests/test_cuda_blas.py
   tests/test_gpu_check.py`` in a subprocess (the real device, not the simulator;
   each test at tiny and at the default grids; in parallel processes when
   pytest-xdist is there, since compiling the kernels is most of the time).
2. For each workload of ``compare.py``: forward + backward of
   ``tied_matmul`` on device arrays, per strategy and ``"auto"``, against
   what a user would write on the GPU: materialise ``W`` and call cuBLAS
   (CuPy, or PyTorch when CuPy is missing), with ``dtheta`` by a
   scatter-add; and cuBLAS's three GEMMs alone on the dense shape, ``W``
   given.  Results are checked against the CPU before timing.  Times are
   medians of synchronised wall-clock runs after a warm-up call; GFLOP/s
   count the dense work, ``6 B M N C_in C_out`` for forward + backward.

The record names the commit (``$PARAMSHARE_COMMIT`` where the machine's copy
of the repository has no ``.git``) and the dtype.  Prints a table and, when
``$OUT`` is set, writes ``$OUT/gpu_check.json``
(after every workload, so a run cut short keeps what it measured) and the
tests' whole log to ``$OUT/tests.log``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tests() -> dict:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "tests/test_cuda.py",
           "tests/test_cuda_launch.py", "tests/test_cuda_memory.py", "tests/test_cuda_blas.py",
           "tests/test_gpu_check.py"]
    try:
        import xdist  # noqa: F401
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    except ImportError:
        pass
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    _save("tests.log", log)
    tail = log.strip().splitlines()[-25:]
    print("\n".join(tail))
    summary = [ln.strip("= ") for ln in tail if " passed" in ln or " failed" in ln]
    return {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
            "summary": summary[-1] if summary else "no summary line", "tail": tail}


def _save(name, text):
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, name), "w") as fh:
            fh.write(text)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict:
    """Versions of what the timings depend on."""
    from importlib import metadata
    got = {}
    for dist in ("numba", "numba-cuda", "numpy", "cupy-cuda13x", "cupy-cuda12x", "torch"):
        try:
            got[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return got


def _median(fn, sync, repeat=20, budget=10.0):
    fn()
    sync()
    times, start = [], time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times)


def _materialise_and_multiply(pat, scalar, idx, permute, scatter_add):
    """The peer's forward + backward, written once for CuPy and PyTorch arrays.

    ``permute(a, axes)`` transposes; ``scatter_add(idx, rows, shape, dtype)``
    sums ``rows`` into a zero array of ``shape`` at ``idx`` (``dtheta``).
    """
    m, n = pat.shape

    def fn(x, theta, dy):
        nb = x.shape[0]
        ci = 1 if scalar else x.shape[2]
        co = 1 if scalar else theta.shape[1]
        t3 = theta.reshape(-1, co, ci)
        w = permute(t3[idx].reshape(m, n, co, ci), (0, 2, 1, 3)).reshape(m * co, n * ci)
        x2, dy2 = x.reshape(nb, -1), dy.reshape(nb, -1)
        y, dx = x2 @ w.T, dy2 @ w
        dw = permute((dy2.T @ x2).reshape(m, co, n, ci), (0, 2, 1, 3)).reshape(m * n, -1)
        return y, dx, scatter_add(idx, dw, (t3.shape[0], co * ci), x.dtype)
    return fn


def _peer(pat, scalar):
    """``(name, to_device, fn(x, theta, dy) -> (y, dx, dtheta), sync)`` for cuBLAS."""
    from paramshare_nb._bench import dense_index

    flat = dense_index(pat).ravel()
    try:
        import cupy as cp

        def cp_scatter(idx, rows, shape, dtype):
            out = cp.zeros(shape, dtype=dtype)
            cp.add.at(out, idx, rows)
            return out
        fn = _materialise_and_multiply(pat, scalar, cp.asarray(flat),
                                       lambda a, axes: a.transpose(axes), cp_scatter)
        return "cupy (cuBLAS)", cp.asarray, fn, cp.cuda.Device().synchronize
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def torch_scatter(idx, rows, shape, dtype):
        return torch.zeros(shape, dtype=dtype, device="cuda").index_add_(0, idx, rows)
    fn = _materialise_and_multiply(pat, scalar, torch.as_tensor(flat, device="cuda"),
                                   lambda a, axes: a.permute(*axes), torch_scatter)
    return ("torch (cuBLAS)", lambda a: torch.as_tensor(a, device="cuda"), fn,
            torch.cuda.synchronize)


def _ours(ps, pat, dev, method):
    """Forward + backward on device arrays; ``(y, dx, dtheta)``."""
    x, theta, dy = dev
    y = ps.tied_matmul(x, theta, pat, method=method)
    return (y,) + tuple(ps.tied_matmul_grad(dy, x, theta, pat, method=method))


def _time_workload(ps, cuda, pat, host, scalar) -> dict:
    """Milliseconds per strategy and for the cuBLAS peer, after checking each against the CPU."""
    import numpy as np
    x, theta, dy = host
    ref = (ps.tied_matmul(x, theta, pat),) + tuple(ps.tied_matmul_grad(dy, x, theta, pat))
    tol = 1e-3 * max(1.0, float(np.abs(ref[2]).max()))
    dev = [cuda.to_device(a) for a in host]
    ms = {}
    for method in ps.ops.METHODS:
        run = functools.partial(_ours, ps, pat, dev, method)
        try:
            got = [a.copy_to_host() for a in run()]
        except (MemoryError, ValueError, RuntimeError) as exc:
            ms[method] = f"skipped: {exc}"[:80]
            continue
        ok = all(np.allclose(g.reshape(r.shape), r, rtol=1e-3, atol=tol)
                 for g, r in zip(got, ref))
        ms[method] = 1e3 * _median(run, cuda.synchronize) if ok else "MISMATCH"
    peer = _peer(pat, scalar)
    if peer is not None:
        name, put, fn, sync = peer
        ms[name] = 1e3 * _median(functools.partial(fn, *(put(a) for a in host)), sync)
        ms["cuBLAS GEMMs alone"] = 1e3 * _median(_gemms_alone(pat, host, put), sync)
    return ms


def _gemms_alone(pat, host, put):
    """The three dense products of forward + backward, ``W`` already materialised."""
    x, theta, dy = host
    nb = x.shape[0]
    w = put(pat.materialize(theta).reshape(dy[0].size, x[0].size))
    x2, dy2 = put(x.reshape(nb, -1)), put(dy.reshape(nb, -1))

    def fn():
        return x2 @ w.T, dy2 @ w, dy2.T @ x2
    return fn


def measure_workloads(only, dtype, report=None) -> list:
    """Time the workloads of ``compare.py`` named in ``only``; a row per workload.

    With ``report`` given, ``$OUT/gpu_check.json`` is rewritten after each workload.
    """
    import numpy as np
    from numba import cuda

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from compare import workloads

    import paramshare_nb as ps

    rows = []
    for key, (desc, make, nb, ci, co, _) in workloads().items():
        if key not in only:
            continue
        pat = make()
        m, n = pat.shape
        scalar = ci is None
        shapes = (((pat.n_params,), (nb, n), (nb, m)) if scalar else
                  ((pat.n_params, co, ci), (nb, n, ci), (nb, m, co)))
        rng = np.random.default_rng(0)
        theta, x, dy = (rng.standard_normal(s).astype(dtype) for s in shapes)
        host = (x, theta, dy)
        ms = _time_workload(ps, cuda, pat, host, scalar)
        flops = 6.0 * nb * m * n * (ci or 1) * (co or 1)
        gflops = {k: flops / v / 1e6 for k, v in ms.items() if isinstance(v, float)}
        rows.append({"workload": key, "desc": desc, "ms": ms, "dense_gflop_per_s": gflops})
        print(f"{key} ({desc}), dense work {flops / 1e9:.3f} GFLOP:")
        for k, v in ms.items():
            cell = f"{v:10.4f} ms  {gflops[k]:10.1f} GFLOP/s" if k in gflops else v
            print(f"    {k:22s} {cell}")
        if report is not None:
            report["workloads"] = rows
            _save("gpu_check.json", json.dumps(report, indent=1, default=str))
    return rows


def primitives() -> dict:
    """Microseconds per call of numba's primitives on this device (the per-call floor)."""
    import numpy as np
    global cuda  # a module global, not a closure cell: the simulator swaps globals only
    from numba import cuda

    @cuda.jit
    def touch(a, b, c, d):
        i = cuda.grid(1)
        if i < a.size:
            d[i] = a[i] + b[i] + c[i]

    a = cuda.to_device(np.ones(1024, np.float32))
    one = np.zeros(1, np.int32)
    dev_one = cuda.to_device(one)
    cases = {
        "launch, 4 array args": lambda: touch[4, 256](a, a, a, a),
        "device_array(1024)": lambda: cuda.device_array(1024, np.float32),
        "to_device(1 int)": lambda: cuda.to_device(one),
        "copy_to_host(1 int), a sync": lambda: dev_one.copy_to_host(),
        "reshape(32, 32)": lambda: a.reshape(32, 32),
        "current_context()": cuda.current_context,
        "get_current_device() + 2 attributes": lambda: (
            cuda.get_current_device().MULTIPROCESSOR_COUNT,
            cuda.get_current_device().MAX_THREADS_PER_MULTIPROCESSOR),
    }
    try:  # the layers under a launch: typing skipped, then argument packing skipped too
        from cuda.core import LaunchConfig, launch
        from numba.cuda.cudadrv import driver
        touch[4, 256](a, a, a, a)
        kernel = next(iter(touch.overloads.values()))
        stream = driver._to_core_stream(0)
        cases["launch, overload.launch (no typing)"] = lambda: kernel.launch(
            (a, a, a, a), (4, 1, 1), (256, 1, 1), stream, 0)
        packed = []
        for t, v in zip(kernel.argument_types, (a, a, a, a)):
            kernel._prepare_args(t, v, stream, [], packed)
        config = LaunchConfig(grid=(4, 1, 1), block=(256, 1, 1), shmem_size=0)
        cufunc = kernel._codelibrary.get_cufunc().kernel
        cases["launch, cuda.core with packed args"] = lambda: launch(stream, config, cufunc,
                                                                     *packed)
    except Exception as exc:  # internals differ between numba-cuda versions
        print("    (launch layers not timed:", repr(exc)[:120], ")")
    try:  # this library's launch and GEMM, and the layers under an allocation
        from numba.cuda.cudadrv import devicearray, devices

        from paramshare_nb._kernels import cuda_blas, cuda_launch
        cases["cuda_launch.launch, 4 array args"] = lambda: cuda_launch.launch(
            touch, 4, 256, a, a, a, a)
        sq, out = (cuda.device_array((32, 32), np.float32) for _ in range(2))
        if cuda_blas.available():
            cases["cuda_blas.gemm 32 x 32"] = lambda: cuda_blas.gemm(sq, sq, out, 0, 1)
        ctx = devices.get_context()
        cases["context memalloc(4096)"] = lambda: ctx.memalloc(4096)
        mem = ctx.memalloc(4096)
        cases["DeviceNDArray on memory"] = lambda: devicearray.DeviceNDArray(
            (1024,), (4,), np.float32, gpu_data=mem)
    except Exception as exc:
        print("    (library primitives not timed:", repr(exc)[:120], ")")
    got = {}
    for name, fn in cases.items():
        try:  # numba internals: another numba-cuda may lack one of them
            fn()
        except Exception as exc:
            print(f"    {name:30s} not timed: {exc!r}"[:120])
            continue
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2000):
            fn()
        cuda.synchronize()
        got[name] = (time.perf_counter() - t0) / 2000 * 1e6
        print(f"    {name:30s} {got[name]:8.1f} us")
    return got


def _device_workloads(only):
    """``(key, pattern, (x, theta, dy))`` on the device, float32, for the workloads of
    ``compare.py`` named in ``only``."""
    import numpy as np
    from numba import cuda

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from compare import workloads

    for key, (_, make, nb, ci, co, _) in workloads().items():
        if key not in only:
            continue
        pat = make()
        m, n = pat.shape
        shapes = (((nb, n), (pat.n_params,), (nb, m)) if ci is None else
                  ((nb, n, ci), (pat.n_params, co, ci), (nb, m, co)))
        rng = np.random.default_rng(0)
        yield key, pat, tuple(cuda.to_device(rng.standard_normal(s).astype(np.float32))
                              for s in shapes)


def profile_calls(only, methods, calls=100) -> str:
    """cProfile of ``calls`` forward + backward calls per method on the named workloads."""
    import cProfile
    import io
    import pstats

    from numba import cuda

    import paramshare_nb as ps
    text = io.StringIO()
    for key, pat, dev in _device_workloads(only):
        for method in methods:
            run = functools.partial(_ours, ps, pat, dev, method)
            run()
            cuda.synchronize()
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for _ in range(calls):
                run()
            cuda.synchronize()
            prof.disable()
            per = (time.perf_counter() - t0) / calls * 1e3
            text.write(f"\n===== {key} {method}: {per:.3f} ms per call under cProfile\n")
            stats = pstats.Stats(prof, stream=text)
            stats.sort_stats("tottime").print_stats(18)
            stats.sort_stats("cumulative").print_stats(30)
            print(f"    {key} {method}: {per:.3f} ms per call under cProfile")
    return text.getvalue()


def _timed_launch(plain, log, cuda, ks, name, grid, block, *args):
    """``_launch`` between two CUDA events: ``log`` gets ``(name, (grid, block), start,
    end)`` per launch (device time; a launch's host overhead too while the GPU idles)."""
    start, end = cuda.event(), cuda.event()
    start.record()
    plain(ks, name, grid, block, *args)
    end.record()
    log.append((name, (grid, block), start, end))


def _counted(alloc, allocs, *args, **kwargs):
    allocs.append(1)
    return alloc(*args, **kwargs)


def kernel_times(only, methods, calls=20) -> dict:
    """Per workload and method: wall ms per forward + backward, and each kernel's launches
    and device ms (CUDA events), and the device allocations per call."""
    from numba import cuda

    import paramshare_nb as ps
    from paramshare_nb._kernels import cuda as cu
    plain_launch, plain_alloc = cu._launch, cu.cuda_memory.empty
    got = {}
    for key, pat, dev in _device_workloads(only):
        for method in methods:
            run = functools.partial(_ours, ps, pat, dev, method)
            wall = _median(run, cuda.synchronize, repeat=calls, budget=5.0)
            log, allocs = [], []
            cu._launch = functools.partial(_timed_launch, plain_launch, log, cuda)
            cu.cuda_memory.empty = functools.partial(_counted, plain_alloc, allocs)
            try:
                for _ in range(calls):
                    run()
                cuda.synchronize()
            finally:
                cu._launch, cu.cuda_memory.empty = plain_launch, plain_alloc
            per = {}
            for name, cfg, start, end in log:
                row = per.setdefault(name, {"launches": 0, "device_ms": 0.0, "config": str(cfg)})
                row["launches"] += 1
                row["device_ms"] += start.elapsed_time(end)
            for row in per.values():
                row["launches"] /= calls
                row["device_ms"] /= calls
            device = sum(r["device_ms"] for r in per.values())
            got[f"{key} {method}"] = {"wall_ms": wall * 1e3, "device_ms": device,
                                      "allocs": len(allocs) / calls, "kernels": per}
            print(f"    {key} {method}: wall {wall * 1e3:.3f} ms, kernels {device:.3f} ms on the "
                  f"device, {len(allocs) / calls:g} allocations")
            for name, r in sorted(per.items(), key=lambda kv: -kv[1]["device_ms"]):
                print(f"        {name:22s} x{r['launches']:<4g} {r['device_ms']:8.4f} ms  "
                      f"{r['config']}")
    return got


def _preflight() -> str | None:
    """Why the kernels cannot compile here (a numpy that this numba-cuda cannot use), or
    ``None``."""
    try:
        from paramshare_nb._kernels.cuda import _check_numpy_compat
        _check_numpy_compat()
    except RuntimeError as exc:
        return f"preflight: {exc}"
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="w1,w2,w3,w4")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--no-tests", action="store_true")
    ap.add_argument("--profile", metavar="METHODS",
                    help="instead of timing: cProfile these methods (comma-separated) on the "
                         "--only workloads, and time numba's primitives; $OUT/profile.txt")
    ap.add_argument("--kernels", metavar="METHODS",
                    help="instead of timing: each kernel's device time (CUDA events) for these "
                         "methods on the --only workloads; $OUT/kernels.json")
    args = ap.parse_args(argv)
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    if ROOT not in sys.path:  # this tree's paramshare_nb, installed or not
        sys.path.insert(0, ROOT)
    # the device's copy of the tree may have no .git: the caller can name the commit
    report = {"versions": versions(), "dtype": args.dtype,
              "commit": os.environ.get("PARAMSHARE_COMMIT") or _commit()}
    print("versions:", report["versions"])
    problem = _preflight()
    if problem:
        print(problem)
        report["preflight"] = problem
        _save("gpu_check.json", json.dumps(report, indent=1, default=str))
        return 1
    if not args.no_tests:
        report["tests"] = run_tests()
    from numba import cuda
    if not cuda.is_available():
        print("no CUDA device: nothing to time")
        report["device"] = None  # the tests' summary is kept all the same
        _save("gpu_check.json", json.dumps(report, indent=1, default=str))
        return 1
    name = cuda.get_current_device().name
    report["device"] = name.decode() if isinstance(name, bytes) else str(name)
    print("device:", report["device"])
    _save("gpu_check.json", json.dumps(report, indent=1, default=str))
    if args.kernels:
        report["primitives_us"] = primitives()
        report["kernels"] = kernel_times(args.only.split(","), args.kernels.split(","))
        _save("kernels.json", json.dumps(report, indent=1, default=str))
        return 0
    if args.profile:
        report["primitives_us"] = primitives()
        _save("profile.txt", profile_calls(args.only.split(","), args.profile.split(",")))
        _save("gpu_check.json", json.dumps(report, indent=1, default=str))
        return 0
    report["workloads"] = measure_workloads(args.only.split(","), args.dtype, report)
    return 0 if report.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
