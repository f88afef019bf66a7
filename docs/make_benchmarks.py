"""Run ``benchmarks/compare.py`` and store its figures for the benchmarks page.

Usage, from the repository root::

    python docs/make_benchmarks.py            # all workloads, default repeats
    python docs/make_benchmarks.py --quick    # fewer repeats (a smoke run)
    python docs/make_benchmarks.py --figure-only   # redraw the figure, time nothing
    python docs/make_benchmarks.py --store-gpu OUT/gpu_check.json --tests-log OUT/tests.log

It records the machine (CPU model, cores, numba threads, library versions,
commit, date), runs ``compare.py`` in a fresh process, parses its per-workload
medians, and writes ``docs/_static/benchmarks.json`` and the side-by-side
figure ``docs/_static/benchmarks.png``.  Commit both: the docs build renders
them (:func:`render_rst`, called by ``conf.py``) without re-running anything,
so the published numbers are always a script's output, never typed by hand.

``--store-gpu`` does the same for a GPU: it stores what ``benchmarks/gpu_check.py``
wrote on a GPU machine (several JSON files merge, later keys first; the
``--profile`` run's numba primitives, say) with the commit and the device tests'
summary line, as ``docs/_static/gpu_check.json`` (:func:`render_gpu_rst`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "_static" / "benchmarks.json"
FIGURE = HERE / "_static" / "benchmarks.png"
GPU_RESULTS = HERE / "_static" / "gpu_check.json"
#: gpu_check.py's columns, in the order the page shows them
GPU_METHODS = ("auto", "materialize", "gather", "complement", "scatter", "csr")

_HEAD = re.compile(r"^(?P<key>[ws]\d+): (?P<desc>[^;]+);.*?forward (?:strategy )?(?P<strategy>\w+)")
_LINE = re.compile(r"^\s+(?P<name>[\w.\-]+)\s+(?P<ms>[\d.]+) ms\s+\(median of (?P<n>\d+)[,)]")
_RATIO = re.compile(r"vs fastest peer: (?P<ratio>[\d.]+)x \(target >= (?P<target>[\d.]+)x\)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Where the numbers come from."""
    import numba
    import numpy as np
    import scipy

    import paramshare_nb

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "paramshare_nb": paramshare_nb.__version__,
        "commit": _git_commit(),
        "load_average": (" ".join(f"{v:.2f}" for v in os.getloadavg())
                         if hasattr(os, "getloadavg") else "unknown"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parse(text: str) -> list[dict]:
    """Workloads and per-implementation medians from ``compare.py``'s output."""
    rows: list[dict] = []
    for line in text.splitlines():
        if m := _HEAD.match(line):
            rows.append({"key": m["key"], "description": m["desc"].strip(),
                         "strategy": m["strategy"], "times_ms": {}})
        elif rows and (m := _LINE.match(line)):
            rows[-1]["times_ms"][m["name"]] = float(m["ms"])
        elif rows and (m := _RATIO.search(line)):
            rows[-1]["ratio"] = float(m["ratio"])
            rows[-1]["target"] = float(m["target"])
    return rows


def run(args: list[str], expected: int) -> dict:
    """Run ``compare.py`` and return the record to store; a ``SystemExit`` saying why when
    the run is not one to publish: it failed, a peer disagreed with paramshare_nb, or it
    did not report the ``expected`` number of workloads."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), *args]
    mach = machine()  # before the run, so the load average is the machine's, not ours
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    rows = parse(proc.stdout)
    why = [line.strip() for line in proc.stdout.splitlines() if line.lstrip().startswith("!!")]
    if proc.returncode != 0 or why or len(rows) != expected:
        raise SystemExit(f"make_benchmarks: compare.py exited {proc.returncode} with "
                         f"{len(rows)} of {expected} workloads; nothing stored.\n"
                         + "\n".join(why) + (proc.stderr[-2000:] if proc.returncode else ""))
    return {"machine": mach, "command": " ".join(["python benchmarks/compare.py", *args]),
            "output": proc.stdout.rstrip(), "workloads": rows}


def figure(record: dict, path: Path = FIGURE) -> None:
    """Side-by-side bars: median time per implementation, per workload (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = record["workloads"]
    names = sorted({n for r in rows for n in r["times_ms"]},
                   key=lambda n: (n != "paramshare_nb", n))
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(rows))
    for j, name in enumerate(names):
        vals = [r["times_ms"].get(name, np.nan) for r in rows]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, vals, width, label=name)
    labels = [f"{r['key']}\n" + textwrap.fill(r["description"], 26) for r in rows]
    ax.set_xticks(x, labels=labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, median ms")
    ax.legend(fontsize=8)
    mach = record["machine"]
    ax.set_title(f"{mach['cpu']}, {mach['numba_threads']} threads", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_rst(path: Path = RESULTS) -> str:
    """reST for the benchmarks page from the stored record (no timing here)."""
    if not path.exists():
        return ("No results are stored yet.  Run ``python docs/make_benchmarks.py`` from the "
                "repository root, then rebuild the documentation.\n")
    record = json.loads(path.read_text())
    mach = record["machine"]
    out = ["Machine", "~~~~~~~", ""]
    out += [f"* **{k}**: {v}" for k, v in mach.items()]
    out += ["", f"Command: ``{record['command'].strip()}``", ""]
    rows = record["workloads"]
    if rows:
        names = sorted({n for r in rows for n in r["times_ms"]},
                       key=lambda n: (n != "paramshare_nb", n))
        out += ["Results", "~~~~~~~", "",
                "Median time of one forward and backward pass (``y``, ``dx``, ``dtheta``), "
                "in milliseconds, and the speed-up over the fastest peer.", "",
                ".. list-table::", "   :header-rows: 1", ""]
        out += ["   * - workload", "     - strategy"] + [f"     - {n}" for n in names]
        out += ["     - vs fastest peer"]
        for r in rows:
            out += [f"   * - {r['key']}: {r['description']}", f"     - ``{r['strategy']}``"]
            out += [f"     - {r['times_ms'][n]:.3f}" if n in r["times_ms"] else "     - n/a"
                    for n in names]
            ratio = r.get("ratio")
            out += [f"     - {ratio:.1f}x (target {r.get('target', 0):g}x)" if ratio else
                    "     - n/a"]
        out += [""]
        if FIGURE.exists():
            out += [".. image:: /_static/benchmarks.png",
                    "   :alt: median times per implementation and workload", ""]
    out += ["Full output", "~~~~~~~~~~~", "", ".. code-block:: text", ""]
    out += ["   " + line if line else "" for line in record["output"].splitlines()]
    return "\n".join(out) + "\n"


def store_gpu(paths, tests_log=None, path: Path = GPU_RESULTS) -> dict:
    """Merge ``gpu_check.py``'s JSON files, add the commit and the tests' last line, store."""
    record = {}
    for src in paths:
        record.update(json.loads(Path(src).read_text()))
    if not record.get("device"):  # a run without a GPU (or one that stopped at preflight)
        raise SystemExit(f"make_benchmarks: {', '.join(map(str, paths))} hold no device run "
                         f"({record.get('preflight') or 'no CUDA device'}); nothing stored")
    if not record.get("commit"):  # gpu_check.py records the commit it ran
        record["commit"] = f"{_git_commit()} (when stored; the run did not record one)"
    record["stored"] = _dt.date.today().isoformat()
    if isinstance(record.get("tests"), dict):  # gpu_check.py's own test run
        record["tests"] = record["tests"].get("summary", "no summary line")
    if tests_log:
        lines = [ln for ln in Path(tests_log).read_text().splitlines()
                 if re.search(r"\d+ (passed|failed)", ln)]
        record["tests"] = lines[-1].strip("= ") if lines else "no summary line"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _vs_peer(ours: float, peer: float) -> str:
    return f"{peer / ours:.2f}x faster" if ours <= peer else f"ours is {ours / peer:.1f}x slower"


def render_gpu_rst(path: Path = GPU_RESULTS) -> str:
    """reST for the GPU figures from the stored record (no timing here)."""
    if not path.exists():
        return ("No GPU results are stored yet.  Run ``python benchmarks/gpu_check.py`` on a "
                "GPU machine, then ``python docs/make_benchmarks.py --store-gpu ...``.\n")
    rec = json.loads(path.read_text())
    versions = ", ".join(f"{k} {v}" for k, v in rec.get("versions", {}).items())
    out = [f"* **device**: {rec.get('device', 'unknown')}", f"* **versions**: {versions}",
           f"* **commit**: {rec.get('commit', 'unknown')}, stored {rec.get('stored', '?')}"]
    if "tests" in rec:
        out.append(f"* **CUDA tests on the device**: {rec['tests']}")
    out += ["", "Median milliseconds of one forward and backward pass on device arrays "
            f"({rec.get('dtype', 'float32')}); every strategy was checked against the CPU "
            "first.  The peer "
            "materialises ``W`` and calls cuBLAS, with ``dtheta`` by a scatter-add; "
            "*GEMMs alone* is cuBLAS's three products with ``W`` given.", "",
            ".. list-table::", "   :header-rows: 1", ""]
    rows = rec.get("workloads", [])
    peers = list(dict.fromkeys(k for r in rows for k in r.get("ms", {})
                               if k not in GPU_METHODS))
    out += ["   * - workload"] + [f"     - {n}" for n in GPU_METHODS + tuple(peers)]
    out += ["     - auto vs the peer"]
    for r in rows:
        ms = r.get("ms", {})
        cells = [f"{ms[k]:.3f}" if _number(ms.get(k)) else str(ms.get(k, "n/a"))
                 for k in GPU_METHODS + tuple(peers)]
        out += [f"   * - {r.get('workload', '?')}: {r.get('desc', '')}"]
        out += [f"     - {c}" for c in cells]
        peer = ms.get(peers[0]) if peers else None
        out += [f"     - {_vs_peer(ms['auto'], peer)}" if _number(peer) and
                _number(ms.get("auto")) and peer > 0 and ms["auto"] > 0 else "     - n/a"]
    kernels = rec.get("kernels")
    if kernels:
        out += ["", "Where a call's time goes (``gpu_check.py --kernels``: the median wall time, "
                "and the device time between CUDA events around each launch, which takes in "
                "a launch's host overhead while the device idles; cuBLAS's products are not "
                "among the launches):", ""]
        for name, k in kernels.items():
            parts = ", ".join(f"{kn} {kv['device_ms'] * 1e3:.0f} us"
                              for kn, kv in sorted(k["kernels"].items(),
                                                   key=lambda kv: -kv[1]["device_ms"]))
            out += [f"* {name}: {k['wall_ms']:.3f} ms wall, {k['device_ms']:.3f} ms in "
                    f"kernels ({parts}); {k['allocs']:g} arrays allocated"]
    prim = rec.get("primitives_us")
    if prim:
        out += ["", "What launching and allocating cost on that machine (microseconds per "
                "call): numba-cuda's own calls, and the packed launch, cuBLAS call and "
                "allocation layers this library uses instead:", ""]
        out += [f"* {k}: {v:.1f}" for k, v in prim.items()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats per timing")
    ap.add_argument("--only", default=None, help="workloads, e.g. w1,w3")
    ap.add_argument("--figure-only", action="store_true",
                    help="redraw the figure from the stored results, timing nothing")
    ap.add_argument("--store-gpu", nargs="+", metavar="JSON",
                    help="store gpu_check.py's output (from a GPU machine) for the docs")
    ap.add_argument("--tests-log", help="with --store-gpu: the device tests' log")
    args = ap.parse_args(argv)
    if args.store_gpu:
        rec = store_gpu(args.store_gpu, args.tests_log)
        print(f"wrote {GPU_RESULTS.relative_to(ROOT)} ({len(rec.get('workloads', []))} workloads)")
        return 0
    if args.figure_only:
        figure(json.loads(RESULTS.read_text()))
        print(f"wrote {FIGURE.relative_to(ROOT)}")
        return 0
    try:  # the figure is drawn after the timing: refuse now, not after minutes
        import matplotlib  # noqa: F401
    except ImportError:
        ap.error("matplotlib is needed for the figure: pip install -e '.[plot]'")
    passthrough = ["--repeat", "3"] if args.quick else []
    if args.only:
        passthrough += ["--only", args.only]
    from paramshare_nb._bench import DEFAULT  # compare.py's default workloads

    only = args.only or DEFAULT
    record = run(passthrough, expected=len(set(only.split(","))))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    figure(record)
    print(f"wrote {RESULTS.relative_to(ROOT)} ({len(record['workloads'])} workloads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
