"""Input checks shared by the public wrappers.

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (right kind, wrong content) with a message that names the
argument, says what was wrong and how to fix it; sizes whose arrays would not
fit ``config.max_bytes`` are a ``MemoryError`` (:func:`as_degree`), as
elsewhere in the package.  Checks return a fresh,
C-contiguous array of a fixed dtype so that jitted kernels compile for one
signature only and never alias the caller's data.
"""

from __future__ import annotations

import decimal
import math
import numbers
import zipfile
import zlib

import numpy as np

from . import config

INDEX = np.int64

#: What ``np.load`` and ``zipfile`` raise on a damaged or unsupported ``.npz``: besides the
#: usual, ``RuntimeError`` for an encrypted member and ``NotImplementedError`` for an unknown
#: compression method or flag.  Loaders turn these into a ``ValueError`` naming the file.
UNREADABLE_ARCHIVE = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, TypeError,
                      RuntimeError, NotImplementedError)


def bytes_text(n: int) -> str:
    """A size for an error message: ``"96 bytes"``, ``"12.5 KiB"``, ``"3.0 GiB"``... (a
    bound under a MiB printed as ``0.0 MiB`` told the user nothing)."""
    if n < 2**10:
        return f"{n} bytes"
    if n.bit_length() > 1000:  # a claim from a hostile file: past a float's range
        return f"about 2**{n.bit_length() - 1} bytes"
    units = ("KiB", "MiB", "GiB", "TiB", "PiB")
    k = 0
    n /= 2**10
    while round(n, 1) >= 2**10 and k < len(units) - 1:  # 2**20 - 1 bytes: "1.0 MiB"
        n /= 2**10
        k += 1
    return f"{n:.1f} {units[k]}"


def as_int_array(obj, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``obj`` as a fresh C-contiguous int64 array, refusing non-integers."""
    if isinstance(obj, np.ma.MaskedArray):  # np.asarray would drop the mask
        raise TypeError(f"{name} is a masked array; give a plain integer array "
                        f"(np.ma.getdata({name}) if no entry is masked)")
    try:
        arr = np.asarray(obj)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} is ragged ({exc}); give equal-length rows") from None
    if arr.dtype == object:
        raise ValueError(f"{name} is ragged or holds non-numbers; give an integer array")
    if arr.dtype.kind not in "iu":  # not np.issubdtype(..., np.integer): timedelta64 passes
        if arr.size == 0 and arr.dtype == np.float64:
            arr = arr.astype(INDEX)  # np.asarray([]) is float64: an empty list is fine
        else:
            raise TypeError(
                f"{name} must hold integers, got dtype {arr.dtype}; "
                f"convert with .astype(int) if the values are whole numbers"
            )
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(INDEX).max:
        # int64 conversion would wrap it to a negative number and the message would show that
        raise ValueError(f"{name} holds {arr.max()}, too large for an index (int64)")
    return np.array(arr, dtype=INDEX, order="C", copy=True)


def _check_rows_are_perms(arr: np.ndarray, name: str, one: bool = False) -> None:
    """Each row of ``arr`` a permutation; errors name the row (``name[g]``), or ``name``
    alone when ``one`` permutation was given."""
    k, n = arr.shape
    if k == 0 or n == 0:
        return
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        g, i = np.argwhere(bad)[0]
        raise ValueError(
            f"{name if one else f'{name}[{g}]'} is not a permutation of 0..{n - 1}: entry {i} "
            f"is {arr[g, i]}, out of range"
        )
    counts = np.zeros((k, n), dtype=INDEX)
    np.add.at(counts, (np.repeat(np.arange(k), n), arr.ravel()), 1)
    missing = counts == 0
    if missing.any():
        g, v = np.argwhere(missing)[0]
        dup = int(np.flatnonzero(counts[g] > 1)[0])
        raise ValueError(
            f"{name if one else f'{name}[{g}]'} is not a permutation of 0..{n - 1}: {dup} "
            f"appears more than once and {v} never"
        )


def as_perm(p, name: str = "p", n: int | None = None) -> np.ndarray:
    """Validate one permutation (1-D) and return it as int64."""
    arr = as_int_array(p, name, ndim=1)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    _check_rows_are_perms(arr[None, :], name, one=True)
    return arr


def as_gens(gens, name: str = "gens", n: int | None = None) -> np.ndarray:
    """Validate generators: a ``(k, n)`` array whose rows are permutations.

    A single 1-D permutation is accepted as one generator.  ``n`` is required
    when ``gens`` is empty (``k == 0``) and cannot tell the degree itself.
    """
    if n is not None:  # the degree's arrays (orbits, images) must fit the memory bound
        n = as_degree(n, "n")
    arr = as_int_array(gens, name)
    if arr.ndim == 1 and arr.size > 0:
        arr = arr[None, :]
    if arr.ndim == 1:  # empty list
        if n is None:
            raise ValueError(f"{name} is empty; give a (0, n) array to say the degree n")
        arr = np.zeros((0, n), dtype=INDEX)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (k, n) array of permutations, got shape {arr.shape}")
    if n is not None and arr.shape[1] != n:
        raise ValueError(f"{name} act on {arr.shape[1]} points, expected {n}")
    _check_rows_are_perms(arr, name)
    return arr


def as_point(i, n: int, name: str = "i") -> int:
    """Validate a point index of ``range(n)``; negative indices are refused."""
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(i).__name__}")
    if not 0 <= i < n:
        raise ValueError(f"{name}={i} is out of range for {n} points (0..{n - 1})")
    return int(i)


def axis_hint(shape, n) -> str:
    """A message's ending that points ``axis`` at the last axis of ``shape`` with ``n``
    entries (the layers' ``(batch, N, channels)`` data has it second to last, where
    functions permuting an array default to the last); empty when none has."""
    hits = [i - len(shape) for i, size in enumerate(shape) if size == n]
    return f"; pass axis={hits[-1]} to permute that axis" if hits else ""


def as_axis(axis, ndim: int, name: str = "axis", within: str | None = None) -> int:
    """Validate an axis of an ``ndim``-dimensional array; negative axes count from the end.

    ``within`` says what is indexed in the error (default "an array of ``ndim``
    dimensions"), for indices into other sequences.
    """
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for "
                         f"{within or f'an array of {ndim} dimensions'}")
    return int(axis) % ndim


def as_tolerance(v, name: str) -> float:
    """Validate a finite, non-negative tolerance (a real number or a 0-d array of one)."""
    return as_real(v, name, lo=0.0)


def as_real(v, name: str, lo: float = -math.inf, hi: float = math.inf,
            lo_open: bool = False, hi_open: bool = False) -> float:
    """Validate a finite real number (or 0-d array of one) in ``[lo, hi]``.

    ``lo_open`` / ``hi_open`` exclude the bound.  Bools, strings and ``None`` are a
    TypeError; nan, infinities and values out of range a ValueError naming the range.
    """
    kind = np.asarray(v).dtype.kind if np.ndim(v) == 0 and not isinstance(v, str) else ""
    if isinstance(v, (bool, np.bool_)) or kind not in ("i", "u", "f", "O") or (
            kind == "O" and not isinstance(v, (numbers.Real, decimal.Decimal))):
        # "O": a Python int past int64, a Fraction, a Decimal
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    try:
        f = float(v)
        shown = repr(f)
    except OverflowError:  # an int past float range (and too long to print whole)
        f, shown = math.inf, "an int past float range"
    low_ok = f > lo if lo_open else f >= lo
    high_ok = f < hi if hi_open else f <= hi
    if not (math.isfinite(f) and low_ok and high_ok):
        bounds = _range_text(lo, hi, lo_open, hi_open)
        raise ValueError(f"{name} must be finite{' and ' + bounds if bounds else ''}, "
                         f"got {shown}")
    return f


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if hi == math.inf:
        return f"{'>' if lo_open else '>='} {lo:g}" if lo > -math.inf else ""
    if lo == -math.inf:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def as_rng(rng, name: str = "rng") -> np.random.Generator:
    """``numpy.random.default_rng(rng)``, with an error that names ``name``."""
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:  # a negative seed stays a ValueError
        raise type(exc)(f"{name} must be None, a non-negative int seed or a "
                        f"numpy.random.Generator, got {type(rng).__name__} ({exc})") from None


def has_cuda_interface(obj) -> bool:
    """Whether ``obj`` exposes ``__cuda_array_interface__``.  An object that has it but will
    not share its memory (PyTorch raises ``RuntimeError`` for a CUDA tensor that requires
    grad) is a ``TypeError`` saying what to pass instead, wherever it is probed."""
    try:
        obj.__cuda_array_interface__  # noqa: B018 -- the probe
    except AttributeError:
        return False
    except RuntimeError as exc:
        raise TypeError(f"a CUDA array of type {type(obj).__name__} would not share its "
                        f"memory ({exc}); pass one that does (for PyTorch, "
                        f"tensor.detach())") from exc
    return True


def frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` made read-only, as immutable objects hold their arrays.  One that owns its
    memory is handed out as a view of itself, on which numpy refuses
    ``setflags(write=True)`` (it allows that on an array that owns its memory); a view of
    another array is left a view of it (copying it would cost memory).  Deliberate
    misuse through ``.base`` stays possible: numpy cannot forbid it."""
    arr.setflags(write=False)
    return arr.view() if arr.base is None else arr


def as_real_array(obj, dtype, name: str, var: str | None = None) -> np.ndarray:
    """``obj`` as an array of the float ``dtype``: a TypeError for a masked array or values
    that are not real numbers (the cast would drop ``.imag``, or make ``None`` a nan), a
    ValueError where the cast turns finite values into infinities (float64 past float32's
    range).  ``var`` names the array in a fix's code (default ``name``)."""
    refuse_masked(obj, name, var)
    raw = np.asarray(obj)
    if raw.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {raw.dtype}")
    if raw.dtype == dtype:
        return raw
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
        out = raw.astype(dtype)
    if raw.dtype.kind == "f" and raw.dtype.itemsize > out.dtype.itemsize:
        lost = np.isfinite(raw) & ~np.isfinite(out)
        if lost.any():
            raise ValueError(f"{name}: {raw.dtype} values overflow {out.dtype} (largest "
                             f"magnitude {float(np.abs(raw[lost]).max()):.3g}); scale them "
                             f"down, or compute in float64")
    return out


def cuda_unusable(reason=None) -> RuntimeError:
    """The error for CUDA asked for where it is not usable, saying how to get it."""
    return RuntimeError(
        "CUDA was asked for (a CUDA array or backend='cuda') but is not usable here"
        + (f": {reason}" if reason else "")
        + ". Install the extra with `pip install paramshare_nb[cuda]` (the numba-cuda "
          "package) on a machine with an NVIDIA GPU and driver, or pass numpy arrays to "
          "run on the CPU (set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the "
          "simulator).")


def refuse_masked(obj, name: str, var: str | None = None) -> None:
    """A ``TypeError`` for a numpy masked array: ``np.asarray`` would drop its mask and the
    arithmetic would use the values under it, a wrong answer with no error.  ``var`` names
    the array in the suggested fixes (default ``name``)."""
    if isinstance(obj, np.ma.MaskedArray):
        var = name if var is None else var
        raise TypeError(f"{name} is a masked array, whose mask would be ignored; pass "
                        f"{var}.filled(0) to count masked entries as zeros, or "
                        f"np.ma.getdata({var}) to use the values under the mask")


def as_flag(v, name: str) -> bool:
    """A bool argument: ``True``/``False`` or the ints 0 and 1; anything else (``"no"`` and
    ``"False"`` are truthy) a TypeError naming ``name``."""
    if not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))):
        raise TypeError(f"{name} must be a bool, got {v!r}")
    return bool(v)


def check_bytes(need: int, what: str, advice: str = "") -> None:
    """A MemoryError when ``need`` bytes pass ``config.max_bytes``: ``what needs N, over
    config.max_bytes = B; raise it with config.override(max_bytes=...)`` and ``advice``."""
    if need > config.max_bytes:
        raise MemoryError(f"{what} needs {bytes_text(need)}, over config.max_bytes = "
                          f"{bytes_text(config.max_bytes)}; raise it with "
                          f"config.override(max_bytes=...){advice}")


def as_positive_int(v, name: str, minimum: int = 1) -> int:
    """Validate an integer size parameter (``>= minimum``)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def as_degree(n, name: str = "n", arrays: int = 1, minimum: int = 0, call: str = "") -> int:
    """A number of points (:func:`as_positive_int`) for which ``arrays`` int64 arrays of
    ``n`` values fit ``config.max_bytes``; a ``MemoryError`` that names ``call`` (or ``name``)
    otherwise.  numpy would make ``arange(2**63)`` an empty array, or fail with a message
    about ranges."""
    n = as_positive_int(n, name, minimum)
    need = arrays * n * INDEX().itemsize
    if need > config.max_bytes:
        raise MemoryError(f"{call or f'{name}={n}'}: {arrays} int64 arrays of {n} values need "
                          f"{bytes_text(need)}, over config.max_bytes = "
                          f"{bytes_text(config.max_bytes)}; ask for fewer points or elements, "
                          f"or raise the bound with config.override(max_bytes=...)")
    return n
