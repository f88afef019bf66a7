"""``.npz`` files: the name a save writes, the name a load reads, and atomic writes.

Shared by :mod:`paramshare_nb.checkpoint` and the pattern files of
:mod:`paramshare_nb.patterns`, so that ``load(name)`` always reads what
``save(name)`` wrote.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
import zipfile

import numpy as np

from . import config
from ._validate import UNREADABLE_ARCHIVE, bytes_text

#: How an .npz (a zip archive) starts: a member's header, or an empty archive's end record.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


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


def read_arrays(path: str) -> dict:
    """Every array of the ``.npz`` at ``path``, read with ``allow_pickle=False``.

    Raises ``FileNotFoundError``, or a ``ValueError`` whose message says why the file is
    not a readable archive: a file that is not a zip archive at all is named so, where
    ``np.load`` would call anything it does not recognise "pickled (object) data".
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
        if head[:4] not in _ZIP_MAGIC:
            raise ValueError("a single .npy array, not an .npz archive"
                             if head == _NPY_MAGIC else "not an .npz archive (no zip header)")
        _check_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    # ValueError: pickled members too; MemoryError: whatever a crafted header still
    # makes numpy allocate (the sizes are checked first)
    except UNREADABLE_ARCHIVE + (KeyError, MemoryError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}"
                         if type(exc) is not ValueError else str(exc)) from None


def _check_sizes(path: str) -> None:
    """Refuse members whose header claims another size than they hold, or that hold more
    than ``config.max_bytes`` in all, before anything is allocated: a header of a few
    bytes claiming a shape of 10**12 made ``np.load`` raise ``MemoryError``, and a small
    compressed member can expand to gigabytes."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as fh:
                # np.load parses any member that starts so, whatever its name, and hands
                # the others over as raw bytes
                if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    if info.filename.endswith(".npy"):  # what np.save wrote, damaged
                        raise ValueError(f"member {info.filename!r} is not an .npy array "
                                         f"(its magic string is not correct)")
                    total += info.file_size
                    continue
                version = tuple(fh.read(2))
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):  # 3.0 is 2.0 with a utf-8 header (np.save
                    # writes it for non-latin-1 field names); decoded as latin-1 here, the
                    # names may differ but the sizes do not
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:  # np.load refuses other versions
                    continue
                if dtype.hasobject:  # np.load refuses these (allow_pickle=False)
                    continue
                held = info.file_size - fh.tell()
            claimed = math.prod(shape) * dtype.itemsize
            if claimed != held:
                raise ValueError(f"member {info.filename!r} claims shape {shape} of {dtype} "
                                 f"({bytes_text(claimed)}) but holds {bytes_text(held)}")
            total += held
    if total > config.max_bytes:
        raise ValueError(f"its arrays hold {bytes_text(total)}, over config.max_bytes = "
                         f"{bytes_text(config.max_bytes)}; raise the bound with "
                         f"config.override(max_bytes=...) if the file is trusted")


def write_atomically(path: str, arrays: dict) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place.

    A failed write leaves no half file and no temporary behind.  The temporary is
    created with ``O_EXCL`` and mode 0666, so the user's umask applies as for any new
    file (``tempfile.mkstemp`` would make it 0600), and two writers never share one;
    a file written over keeps its mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):  # else the error would name the temporary file
        raise FileNotFoundError(f"cannot write {path!r}: its folder {directory!r} does not "
                                f"exist")
    if os.path.isdir(path):  # else the rename's error would name the temporary file
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder; give a file name")
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
