"""The asv suite's shape: asv takes every ``time_``/``track_``/``peakmem_``/``mem_``
function in ``benchmarks/`` for a benchmark and calls it with one argument per
parameter, so a helper named like one (gpu_check's ``time_workloads`` was) fails
``asv check``.  This checks the same rule without asv."""

import importlib
import inspect
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
PREFIXES = ("time_", "track_", "peakmem_", "mem_", "timeraw_")


def _modules():
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def _required(fn):
    return [p for p in inspect.signature(fn).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@pytest.mark.parametrize("name", _modules())
def test_benchmarks_take_their_parameters(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    before = set(sys.modules)
    mod = importlib.import_module(name)
    try:
        for attr, obj in vars(mod).items():
            if inspect.isfunction(obj) and attr.startswith(PREFIXES) and obj.__module__ == name:
                assert not _required(obj), f"{name}.{attr}: asv calls it without arguments"
            if inspect.isclass(obj) and obj.__module__ == name:
                params = getattr(obj, "params", [])
                n = len(params) if params and isinstance(params[0], (list, tuple)) else int(
                    bool(params))
                for meth, fn in vars(obj).items():
                    if meth.startswith(PREFIXES + ("setup",)) and inspect.isfunction(fn):
                        assert len(_required(fn)) == 1 + n, f"{name}.{attr}.{meth}: {n} params"
    finally:
        # forget only the benchmark modules this test imported: other tests hold them by
        # name, and a compiled package imported twice (torch, which compare.py and
        # bench_train import) crashes the interpreter
        for new in set(sys.modules) - before:
            path = getattr(sys.modules.get(new), "__file__", None)
            if path and BENCH in pathlib.Path(path).resolve().parents:
                sys.modules.pop(new, None)
