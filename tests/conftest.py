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
