"""The prepared GPU script (benchmarks/gpu_check.py) on the simulator, tiny sizes.

Checks its plumbing: every strategy runs on device arrays, is compared with
the CPU, and is timed (timing itself is stubbed: the simulator's times mean
nothing).
"""

import os
import sys

import pytest

import paramshare_nb as ps

cuda = pytest.importorskip("numba.cuda")
pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device or simulator")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import compare  # noqa: E402
import gpu_check  # noqa: E402


def test_gpu_check_times_every_strategy_after_checking_it(monkeypatch):
    tiny = {"w1": ("Deep Sets S_4, 2->1, batch 2",
                   lambda: ps.dense_pattern(ps.Action.same(ps.groups.symmetric(4))),
                   2, 2, 1, 50.0)}
    monkeypatch.setattr(compare, "workloads", lambda: tiny)
    monkeypatch.setattr(gpu_check, "_median", lambda fn, sync, **kw: (fn(), sync(), 1e-3)[2])
    with ps.config.override(cuda_threads=16, cuda_max_blocks=4):
        rows = gpu_check.time_workloads(["w1"], "float32")
    assert [r["workload"] for r in rows] == ["w1"]
    for row in rows:
        assert set(ps.ops.METHODS) <= set(row["ms"])
        assert all(v == 1.0 for k, v in row["ms"].items() if k in ps.ops.METHODS), row
