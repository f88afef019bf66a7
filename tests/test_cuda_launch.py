"""The launcher that packs kernel arguments itself (paramshare_nb._kernels.cuda_launch).

Its packing is checked against numba-cuda's own on a real device; everywhere, its
choice between numba's path and its own is checked with stand-ins for cuda.core.
"""

import ctypes

import numpy as np
import pytest

from paramshare_nb._kernels import cuda_launch as cl

cuda = pytest.importorskip("numba.cuda")


class FakeArray:
    """What the launcher reads of a numba device array."""

    def __init__(self, shape, dtype=np.float32, ptr=4096, strides=None, contiguous=True):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim, self.size = len(self.shape), int(np.prod(self.shape))
        self.strides = strides or tuple(np.empty(self.shape, self.dtype).strides)
        self.gpu_data = type("Ptr", (), {"device_pointer": ptr})()
        self._contiguous = contiguous

    def is_c_contiguous(self):
        return self._contiguous


class FakeDispatcher:
    """A compiled kernel: ``d[grid, block](*args)`` is numba's path, logged."""

    def __init__(self, log):
        self.log, self.overloads = log, {}

    def typeof_pyval(self, a):
        from numba.cuda import types
        if type(a) is int:
            return types.int64
        return types.Array(types.float32, a.ndim, "C") if type(a) is FakeArray else type(a)

    def __getitem__(self, cfg):
        def run(*args):
            self.log.append(("numba", cfg, args))
            sig = tuple(self.typeof_pyval(a) for a in args)
            lib = type("Lib", (), {"get_cufunc": lambda s: type("F", (), {"kernel": "K"})()})
            self.overloads[sig] = type("O", (), {"argument_types": sig, "_codelibrary": lib(),
                                                 "debug": self.debug, "cooperative": False,
                                                 "extensions": []})
        return run

    debug = False


class FakeContext:
    """numba's Context: its device's primary context until numba resets it."""

    def __init__(self):
        self.device = type("Device", (), {})()
        self.device.primary_context = self


@pytest.fixture
def fake(monkeypatch):
    log = []
    binding = type("B", (), {"cuCtxGetCurrent": staticmethod(lambda: (0, 7))})
    monkeypatch.setattr(cl, "_FAST", cl._Internals(
        binding, lambda h: h, lambda **kw: kw, lambda *a: log.append(("core",) + a), FakeArray,
        "stream"))
    monkeypatch.setattr(cl, "_COMPILED", {})
    monkeypatch.setattr(cl, "_CONFIGS", {})
    monkeypatch.setattr(cl, "_CONTEXTS", {})
    monkeypatch.setattr(cl, "closed", False)
    monkeypatch.setattr(cl, "_numba_context", FakeContext)
    return log, FakeDispatcher(log)


def test_first_launch_goes_through_numba_then_packs_as_numbas_data_model(fake):
    log, d = fake
    x, y = FakeArray((2, 3), ptr=1000), FakeArray((5,), ptr=2000)
    cl.launch(d, 4, (8, 8), x, 3, y)
    assert [e[0] for e in log] == ["numba"]
    cl.launch(d, 4, (8, 8), x, 3, y)
    kind, stream, config, kernel, *args = log[-1]
    assert (kind, stream, kernel) == ("core", "stream", "K")
    assert config == {"grid": (4, 1, 1), "block": (8, 8, 1), "shmem_size": 0}
    i64 = [a for a in args if isinstance(a, ctypes.c_int64)]
    assert len(i64) == 1 and i64[0].value == 3
    plain = [a.value if isinstance(a, ctypes.c_int64) else a for a in args]
    assert plain == [0, 0, 6, 4, 1000, 2, 3, 12, 4, 3, 0, 0, 5, 4, 2000, 5, 4]


def test_other_arguments_and_other_devices_take_numbas_path(fake, monkeypatch):
    log, d = fake
    x = FakeArray((4,))
    for args in [(FakeArray((4,), contiguous=False),), (FakeArray((4,), strides=(0,)),),
                 (np.zeros(4, np.float32),), (x, np.int64(2)), (x, 2.0)]:
        cl.launch(d, 1, 1, *args)
        cl.launch(d, 1, 1, *args)
    assert all(e[0] == "numba" for e in log)
    cl.launch(d, 1, 1, x)
    cl.launch(d, 1, 1, x)
    assert log[-1][0] == "core"
    monkeypatch.setattr(cl._FAST.binding, "cuCtxGetCurrent", staticmethod(lambda: (0, 8)))
    cl.launch(d, 1, 1, x)  # another context: numba loads the kernel there first
    assert log[-1][0] == "numba"


def test_a_signature_numba_typed_otherwise_stays_on_numbas_path(fake):
    log, d = fake
    d.typeof_pyval = lambda a: "A-layout"  # e.g. an existing overload that numba reused
    x = FakeArray((4,))
    for _ in range(3):
        cl.launch(d, 1, 1, x)
    assert [e[0] for e in log] == ["numba"] * 3


def test_no_current_context_and_debug_kernels_take_numbas_path(fake, monkeypatch):
    log, d = fake
    x = FakeArray((4,))
    monkeypatch.setattr(cl._FAST.binding, "cuCtxGetCurrent", staticmethod(lambda: (0, 0)))
    for _ in range(3):  # numba's launch makes the context; nothing is kept for handle 0
        cl.launch(d, 1, 1, x)
    assert [e[0] for e in log] == ["numba"] * 3 and not cl._COMPILED
    monkeypatch.setattr(cl._FAST.binding, "cuCtxGetCurrent", staticmethod(lambda: (0, 7)))
    d.debug = True  # numba checks a debug kernel's error flag after each launch
    for _ in range(3):
        cl.launch(d, 1, 1, x)
    assert [e[0] for e in log] == ["numba"] * 6


def test_a_context_numba_reset_is_forgotten(fake):
    # numba.cuda.close() resets the primary context; its handle can come back, its numba
    # Context does not: the kernels cached for it go, and CuPy is left alone from then on
    log, d = fake
    x = FakeArray((4,))
    cl.launch(d, 1, 1, x)
    cl.launch(d, 1, 1, x)
    assert log[-1][0] == "core" and not cl.closed
    key, ctx = cl.current_context()
    assert key == 7 and cl.current_context()[1] is ctx
    ctx.device.primary_context = None  # what numba's Device.reset does
    cl.launch(d, 1, 1, x)
    assert cl.closed and log[-1][0] == "numba"  # compiled again in the new context
    assert cl.current_context()[1] is not ctx
    cl.launch(d, 1, 1, x)
    assert log[-1][0] == "core"


def test_the_simulator_uses_numbas_path_only():
    from numba import config
    if config.ENABLE_CUDASIM:
        assert cl._FAST is None


@pytest.mark.skipif(not cuda.is_available() or cl._FAST is None,
                    reason="needs a real CUDA device")
def test_packing_matches_numba_cuda_on_the_device():
    @cuda.jit
    def add(a, k, b):
        i = cuda.grid(1)
        if i < b.size:
            b[i] = a[i] + k

    a = cuda.to_device(np.arange(12, dtype=np.float32).reshape(3, 4)[1:])
    b = cuda.device_array(8, np.float32)
    flat_a = a.reshape(8)
    cl.launch(add, 1, 32, flat_a, 5, b)
    cl.launch(add, 1, 32, flat_a, 5, b)
    assert any(v is not None for k, v in cl._COMPILED.items() if k[1] is add)
    np.testing.assert_array_equal(b.copy_to_host(), np.arange(4, 12) + 5)
    kernel = next(iter(add.overloads.values()))
    want = []
    for t, v in zip(kernel.argument_types, (flat_a, 5, b)):
        kernel._prepare_args(t, v, cl._FAST.stream, [], want)
    got = cl._packed((flat_a, 5, b))
    as_int = [int(v.value) if isinstance(v, ctypes._SimpleCData) else int(v) for v in want]
    assert [int(v.value) if isinstance(v, ctypes.c_int64) else v for v in got] == as_int


def test_without_a_driver_the_first_cuda_call_says_how_to_get_it():
    # a fresh process off the simulator: where no GPU is usable (this machine, in CI),
    # importing the CUDA twin and its launch and memory layers must end in the
    # RuntimeError with the hint, not in an error of the driver bindings
    import subprocess
    import sys
    code = """if True:
        import numpy as np
        from numba import cuda
        import paramshare_nb as ps
        if cuda.is_available():
            print("AVAILABLE")
        else:
            pat = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(3)))
            try:
                ps.tied_matmul(np.ones((2, 3)), np.ones(pat.n_params), pat, backend="cuda")
            except RuntimeError as exc:
                print("HINT" if "pip install" in str(exc) else repr(exc))
    """
    import os
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    if "AVAILABLE" in out.stdout:
        pytest.skip("a CUDA device is usable here")
    assert out.stdout.strip() == "HINT", out.stdout + out.stderr[-2000:]
