"""Test-session set-up.

The CUDA tests run on numba's CUDA simulator unless the caller says
otherwise (``NUMBA_ENABLE_CUDASIM=0`` on a machine with a GPU).  The variable
must be set before numba is first imported, hence here, at the very top.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A seeded generator, so every failure reproduces."""
    return np.random.default_rng(12345)


@pytest.fixture
def tampered_zips(tmp_path):
    """``make(path)``: copies of the ``.npz`` at ``path`` whose zip headers claim an
    encrypted member, a patched-data or strong-encryption flag, or an unknown compression
    method (``zipfile`` raises RuntimeError or NotImplementedError on these)."""
    import struct

    def make(path):
        raw = bytes(open(path, "rb").read())
        central, local = raw.find(b"PK\x01\x02"), raw.find(b"PK\x03\x04")
        edits = {f"flag{bit}": [(central + 8, 1 << bit, True), (local + 6, 1 << bit, True)]
                 for bit in (0, 5, 6)}
        edits["method99"] = [(central + 10, 99, False), (local + 8, 99, False)]
        out = []
        for name, fields in edits.items():
            b = bytearray(raw)
            for offset, value, is_flag in fields:
                old = struct.unpack_from("<H", b, offset)[0]
                struct.pack_into("<H", b, offset, old | value if is_flag else value)
            out.append(tmp_path / f"tampered_{name}.npz")
            out[-1].write_bytes(bytes(b))
        return out
    return make
