"""``.npz`` files: the name a save writes, the name a load reads, and atomic writes.

Shared by :mod:`paramshare_nb.checkpoint` and the pattern files of
:mod:`paramshare_nb.patterns`, so that ``load(name)`` always reads what
``save(name)`` wrote.
"""

from __future__ import annotations

import os
import secrets
import stat

import numpy as np


def written_path(path) -> str:
    """Where a save of ``path`` writes: ``.npz`` appended when missing."""
    path = os.fsdecode(path)
    return path if path.endswith(".npz") else path + ".npz"


def read_path(path) -> str:
    """Where a load of ``path`` reads: what a save of the same name wrote (``path.npz``),
    unless only ``path`` itself is a file (one saved or renamed by other means)."""
    path = os.fsdecode(path)
    if path.endswith(".npz") or (os.path.isfile(path) and not os.path.exists(path + ".npz")):
        return path
    return path + ".npz"


def write_atomically(path: str, arrays: dict) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place.

    A failed write leaves no half file and no temporary behind.  The temporary is
    created with ``O_EXCL`` and mode 0666, so the user's umask applies as for any new
    file (``tempfile.mkstemp`` would make it 0600), and two writers never share one;
    a file written over keeps its mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}.npz")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if os.path.isfile(path):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
