"""The documentation's code runs: user-guide examples, snippets, gallery, docstrings.

The full Sphinx build (``python -m sphinx -W -b html docs docs/_build/html``)
runs in CI; these tests check the same code quickly and say which page broke.
"""

import doctest
import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paramshare_nb as ps

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted([DOCS / "getting_started.rst", *(DOCS / "user_guide").glob("*.rst")])
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_user_guide_examples_run(page):
    if "scale_out" in page.name:
        pytest.importorskip("dask.array")
    result = doctest.testfile(str(page), module_relative=False, optionflags=FLAGS,
                              verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} example(s) failed in {page.name}"


def test_gather_snippet_numpy():
    runpy.run_path(str(DOCS / "snippets" / "gather_numpy.py"))


def test_gather_snippet_torch():
    pytest.importorskip("torch")
    runpy.run_path(str(DOCS / "snippets" / "gather_torch.py"))


def test_gather_snippet_jax():
    pytest.importorskip("jax")
    runpy.run_path(str(DOCS / "snippets" / "gather_jax.py"))


def _modules():
    """Every module of the package but the CUDA kernels and the command line's entry
    (a module listed by hand was missed: actions' example printed np.int64(2))."""
    import pkgutil

    import paramshare_nb
    return [m.name.removeprefix("paramshare_nb.")
            for m in pkgutil.walk_packages(paramshare_nb.__path__, "paramshare_nb.")
            if "cuda" not in m.name and not m.name.endswith("__main__")]


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples(module):
    if module == "plot":
        pytest.importorskip("matplotlib").use("Agg")
    if module == "dask":
        pytest.importorskip("dask.array")
    mod = __import__(f"paramshare_nb.{module}", fromlist=["_"])
    result = doctest.testmod(mod, optionflags=FLAGS, report=True)
    assert result.failed == 0


def test_claims_fallback_agrees():
    proc = subprocess.run([sys.executable, str(DOCS / "_claims_fallback.py")],
                          capture_output=True, text=True, check=True)
    rows = [line for line in proc.stdout.splitlines() if line.rstrip().endswith(("yes", "NO"))]
    assert rows and all(line.rstrip().endswith("yes") for line in rows)


def test_benchmarks_page_renders(tmp_path):
    spec = importlib.util.spec_from_file_location("make_benchmarks", DOCS / "make_benchmarks.py")
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    assert "make_benchmarks.py" in mb.render_rst(tmp_path / "missing.json")
    text = ("# header\n\nw1: Deep Sets S_8, 2->2, batch 4; pattern P; built in 0.1 s; first "
            "call 0.1 s; forward strategy csr\n  paramshare_nb       1.000 ms  (median of 6, "
            "a block of 3 before each peer and after the last)\n"
            "  numpy               4.000 ms  (median of 3)  ours is 4.0x faster\n"
            "  vs fastest peer: 4.0x (target >= 2x): MET\n")
    rows = mb.parse(text)
    assert rows == [{"key": "w1", "description": "Deep Sets S_8, 2->2, batch 4",
                     "strategy": "csr", "times_ms": {"paramshare_nb": 1.0, "numpy": 4.0},
                     "ratio": 4.0, "target": 2.0}]
    small = "s1: cyclic C_32, scalar, batch 1; pattern P; forward strategy csr\n"
    assert [r["key"] for r in mb.parse(small)] == ["s1"]  # the small calls are parsed too

    def finished(rc, stdout):
        return lambda *a, **k: __import__("subprocess").CompletedProcess(a, rc, stdout, "")
    for rc, out, expected, why in (
            (0, text, 1, None), (0, text, 2, "1 of 2 workloads"),
            (1, text + "  !! numpy disagrees on dtheta: left out\n", 1, "!! numpy disagrees"),
            (2, "", 1, "exited 2")):
        monkey = pytest.MonkeyPatch()
        monkey.setattr(mb.subprocess, "run", finished(rc, out))
        try:
            if why is None:
                assert mb.run([], expected)["workloads"] == rows
            else:
                with pytest.raises(SystemExit, match=why):
                    mb.run([], expected)
        finally:
            monkey.undo()
    record = {"machine": {"cpu": "test"}, "command": "c", "output": text, "workloads": rows}
    path = tmp_path / "b.json"
    path.write_text(__import__("json").dumps(record))
    rst = mb.render_rst(path)
    assert "list-table" in rst and "4.0x" in rst and "test" in rst


def test_gallery_examples_are_listed():
    examples = sorted(p.name for p in (DOCS / "examples").glob("*.py"))
    for name in ("plot_deep_sets.py", "plot_rotation_invariant_digits.py",
                 "plot_graph_convolution.py", "plot_tensor_layer.py",
                 "plot_sparse_cayley.py", "dask_out_of_core.py"):
        assert name in examples


def test_dask_out_of_core_example_small():
    """The Dask example, on 64 Ki samples instead of 2 Mi (the full run takes minutes)."""
    pytest.importorskip("distributed")
    spec = importlib.util.spec_from_file_location("dask_out_of_core",
                                                  DOCS / "examples" / "dask_out_of_core.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    assert ex.DATA_BYTES > ex.WORKER_MEMORY  # the claim the full run makes
    losses, mse = ex.main(samples=4 * 8192, chunk=4096, steps=4)
    assert len(losses) == 4 and np.isfinite(mse)
    assert losses[-1] < losses[0]


def test_api_reference_covers_public_names():
    """Every name in ``paramshare_nb.__all__`` is in the generated API page."""
    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    # conf.py writes api.rst when imported; the claims script is slow, so stub it
    conf = importlib.util.module_from_spec(spec)
    src = (DOCS / "conf.py").read_text().replace("write_claims_table()\n", "")
    exec(compile(src, str(DOCS / "conf.py"), "exec"), conf.__dict__)
    api = (DOCS / "api.rst").read_text()
    for name in ps.__all__:
        obj = getattr(ps, name)
        if callable(obj) and not isinstance(obj, type(ps)):
            assert f"   {name}\n" in api, name


def _conf_value(name):
    """A literal assigned in docs/conf.py (read without running conf.py)."""
    import ast

    tree = ast.parse((DOCS / "conf.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _public_objects():
    import inspect


    for _, modname, _ in _conf_value("API_SECTIONS"):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if obj is None or inspect.ismodule(obj) or not callable(obj):
                continue
            yield f"{modname}.{name}"  # class members are not validated (see conf.py)


def test_numpydoc_validation_of_public_api():
    """The docs build's numpydoc checks, on every public name, in one report."""
    validate = pytest.importorskip("numpydoc.validate")
    checks = _conf_value("numpydoc_validation_checks")
    excluded = checks - {"all"}
    problems = []
    for path in sorted(set(_public_objects())):
        try:
            result = validate.validate(path)
        except Exception as exc:  # noqa: BLE001 - report, do not stop at the first
            problems.append(f"{path}: cannot validate ({exc})")
            continue
        problems += [f"{path}: {code} {msg}" for code, msg in result["errors"]
                     if code not in excluded]
    assert not problems, "numpydoc validation failed:\n" + "\n".join(problems)


def test_gpu_benchmarks_render_and_store(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_benchmarks", DOCS / "make_benchmarks.py")
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    assert "gpu_check.py" in mb.render_gpu_rst(tmp_path / "missing.json")
    json = __import__("json")
    run = {"device": "Test GPU", "versions": {"numba": "0"},
           "workloads": [{"workload": "w1", "desc": "Deep Sets", "ms": dict(
               {m: 2.0 for m in mb.GPU_METHODS}, csr="MISMATCH", **{"cupy (cuBLAS)": 5.0})},
               {"workload": "w4", "desc": "Figure 1", "ms": dict(
                   {m: 3.0 for m in mb.GPU_METHODS}, **{"cupy (cuBLAS)": 1.0})}]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "prim.json").write_text(json.dumps({"primitives_us": {"launch": 41.5}, "kernels": {
        "w4 csr": {"wall_ms": 0.3, "device_ms": 0.1, "allocs": 3, "kernels": {
            "csr_forward": {"launches": 2, "device_ms": 0.06, "config": "(80, 256)"},
            "csr_dtheta": {"launches": 1, "device_ms": 0.04, "config": "(10, 256)"}}}}}))
    (tmp_path / "tests.log").write_text("....\n===== 7 passed in 3.1s =====\n")
    out = tmp_path / "gpu.json"
    rec = mb.store_gpu([tmp_path / "prim.json", tmp_path / "run.json"], tmp_path / "tests.log",
                       path=out)
    assert rec["tests"] == "7 passed in 3.1s" and rec["primitives_us"] == {"launch": 41.5}
    assert "when stored" in rec["commit"]  # the run named none
    rst = mb.render_gpu_rst(out)
    for text in ("Test GPU", "7 passed", "2.50x faster", "ours is 3.0x slower", "MISMATCH",
                 "launch: 41.5", "list-table", "(float32)",
                 "w4 csr: 0.300 ms wall, 0.100 ms in kernels (csr_forward 60 us, csr_dtheta "
                 "40 us); 3 arrays allocated"):
        assert text in rst, text
    # gpu_check.py's own record: its commit, dtype and test summary; integer times
    run.update(commit="abc1234", dtype="float64", tests={"summary": "9 passed in 1s", "tail": []})
    run["workloads"][1]["ms"]["auto"] = 2
    (tmp_path / "run.json").write_text(json.dumps(run))
    rec = mb.store_gpu([tmp_path / "run.json"], path=out)
    assert rec["commit"] == "abc1234" and rec["tests"] == "9 passed in 1s"
    rst = mb.render_gpu_rst(out)
    assert "(float64)" in rst and "ours is 2.0x slower" in rst and "{" not in rst
    out.write_text(json.dumps({"workloads": [{"ms": {"auto": 1.0}}]}))  # keys missing
    assert "n/a" in mb.render_gpu_rst(out)
    # a run without a device (it keeps the tests' summary) is not stored over the record
    (tmp_path / "none.json").write_text(json.dumps({"device": None, "tests": {"summary": "x"}}))
    kept = out.read_text()
    with pytest.raises(SystemExit, match="hold no device run .no CUDA device.; nothing stored"):
        mb.store_gpu([tmp_path / "none.json"], path=out)
    assert out.read_text() == kept
