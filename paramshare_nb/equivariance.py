"""Checks that a pattern, a matrix or any function is equivariant.

:func:`is_equivariant` is exact (on generators; :doc:`/theory`, *Equivariance through
parameter sharing*);
:func:`equivariance_error` is numeric, on uniformly random group elements.
"""

from __future__ import annotations

import math

import numpy as np

from . import config
from ._kernels.refine_cpu import _edges_land_on_their_own
from ._validate import as_axis, as_positive_int, as_rng, as_tolerance, axis_hint, refuse_masked
from .actions import Action
from .patterns import Pattern, _as_action

__all__ = ["is_equivariant", "equivariance_error"]


def _edge_keys(rows, cols, params, n, p):
    # One int per coloured edge; exact while M * N * P fits in int64.
    return (rows * n + cols) * p + params


def _preserver(pat: Pattern):
    """``check(g_in, g_out)``: the exact edge-multiset check (docs/theory.rst, *Equivariance*), for
    many pairs, what they share done once.

    Without multi-edges, and with ``W``'s index table no larger than a few
    times the edges, each edge's image is looked up in the table (exact:
    the images are distinct, as many as the edges, and each must be an edge
    with the same parameter); otherwise the sorted edge keys are compared
    (the original's sorted once), or, past ``M * N * P >= 2**62``, the edges
    sorted row by row.
    """
    m, n = pat.shape
    rows, cols, params = pat.rows, pat.cols, pat.params
    if not pat.has_multi_edges and m * n <= 4 * pat.nnz + 4096 and 8 * m * n <= config.max_bytes:
        index = pat.index()
        return lambda g_in, g_out: bool(_edges_land_on_their_own(index, rows, cols, params,
                                                                 g_in, g_out))
    p = max(pat.n_params, 1)
    if m * n * p >= 2**62:  # keys would overflow int64
        return lambda g_in, g_out: _preserves_rowwise(pat, g_in, g_out)
    keys = np.sort(_edge_keys(rows, cols, params, n, p))
    return lambda g_in, g_out: bool(np.array_equal(
        keys, np.sort(_edge_keys(g_out[rows], g_in[cols], params, n, p))))


def _preserves_rowwise(pat, g_in, g_out):
    """The moved edges sorted as the pattern keeps its own (rows, columns, parameters)."""
    order = np.lexsort((pat.params, g_in[pat.cols], g_out[pat.rows]))
    a = np.stack([pat.rows, pat.cols, pat.params])
    b = np.stack([g_out[pat.rows], g_in[pat.cols], pat.params])[:, order]
    return bool(np.array_equal(a, b))


def is_equivariant(pattern_or_matrix, action, atol: float = 0.0) -> bool:
    """Exact check that ``W[g_out[m], g_in[n]] == W[m, n]`` for every generator.

    Parameters
    ----------
    pattern_or_matrix : Pattern or array_like, shape (M, N, ...)
        A tying pattern (its coloured edges must map onto themselves,
        multi-edges and zeros included) or a weight matrix (trailing axes,
        e.g. channels, are compared as blocks).
    action : Action
    atol : float, optional
        Tolerance for matrices (default exact).

    Returns
    -------
    bool

    Raises
    ------
    TypeError
        For an ``action`` that is not an :class:`Action` or a non-number ``atol``.
    ValueError
        For shapes that do not match the action, or a negative or non-finite ``atol``.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.dihedral(6))
    >>> ps.is_equivariant(ps.dense_pattern(act), act)
    True
    """
    act = _as_action(action)
    atol = as_tolerance(atol, "atol")
    if isinstance(pattern_or_matrix, Pattern):
        pat = pattern_or_matrix
        _check_shape(pat.shape, act)
        preserves = _preserver(pat)
        return all(preserves(gin, gout) for gin, gout in zip(act.gens_in, act.gens_out))
    refuse_masked(pattern_or_matrix, "pattern_or_matrix")
    w = np.asarray(pattern_or_matrix)
    if w.ndim < 2:
        raise ValueError(f"a matrix must have at least 2 dimensions (M, N), got shape {w.shape}")
    _check_shape(w.shape[:2], act)
    for gin, gout in zip(act.gens_in, act.gens_out):
        moved = w[gout][:, gin]
        ok = np.array_equal(moved, w) if atol == 0 else np.allclose(moved, w, rtol=0, atol=atol)
        if not ok:
            return False
    return True


def _check_shape(shape, act: Action) -> None:
    if tuple(shape) != (act.n_out, act.n_in):
        raise ValueError(f"pattern/matrix has shape {tuple(shape)} but the action acts on "
                         f"M={act.n_out} outputs and N={act.n_in} inputs: expected "
                         f"({act.n_out}, {act.n_in})")


def _move(p, x, axis):
    """``out[p[i]] = x[i]`` along ``axis`` (the action of docs/theory.rst, *Actions*)."""
    return np.take(x, np.argsort(p), axis=axis)


def _host_array(value) -> np.ndarray:
    """``f``'s result as a numpy array: an autograd Tensor (a layer's output) by its
    ``numpy()``, anything else by ``np.asarray``."""
    to_numpy = getattr(value, "numpy", None)
    return np.asarray(to_numpy() if callable(to_numpy) and not isinstance(value, np.ndarray)
                      else value)


def equivariance_error(f, action, x, axis: int | None = None, out_axis: int | None = None,
                       n_samples: int = 8, rng=None) -> float:
    """Largest ``|f(g . x) - g . f(x)|`` over random group elements ``g``.

    Parameters
    ----------
    f : callable
        Maps an array like ``x`` to an array (or a :class:`Tensor`, e.g. a
        layer's output) whose ``out_axis`` has ``M`` entries.
    action : Action
    x : array_like
        Input with ``N`` entries along ``axis``.
    axis : int, optional
        Axis of ``x`` that the inputs index.  Default: ``f.index_axis`` when
        ``f`` has one, as :mod:`paramshare_nb.nn` modules do (``-2``: their
        data is ``(batch, N, channels)``), else the last.
    out_axis : int, optional
        Axis of ``f(x)`` that the outputs index (default ``axis``).
    n_samples : int, optional
        Number of uniformly random group elements (from the stabilizer
        chain) to try.
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    float
        The maximum absolute difference (0 for an exactly equivariant ``f``).
        Non-finite outputs count as equal where they correspond (the same
        infinity, or nan on both sides); a nan that meets anything else
        gives ``nan``, an infinity that meets anything else ``inf``.
    """
    act = _as_action(action)
    if not callable(f):
        raise TypeError("f must be callable")
    refuse_masked(x, "x")
    x = np.asarray(x)
    n_samples = as_positive_int(n_samples, "n_samples", minimum=0)
    rng = as_rng(rng)
    if axis is None:  # a layer's channels are last: permuting them measured 7.75, not 0
        axis = getattr(f, "index_axis", -1)
    out_axis = axis if out_axis is None else out_axis  # the number given, read on f(x)
    given = axis
    axis = as_axis(axis, x.ndim, "axis")
    if x.shape[axis] != act.n_in:
        raise ValueError(f"x must have {act.n_in} entries along axis {given}, got shape "
                         f"{x.shape}{axis_hint(x.shape, act.n_in)}")
    y = _host_array(f(x))
    out_axis = as_axis(out_axis, y.ndim, "out_axis", within=f"f(x) of shape {y.shape}")
    if y.shape[out_axis] != act.n_out:
        raise ValueError(f"f(x) must have {act.n_out} entries along axis {out_axis}, "
                         f"got shape {y.shape}")
    g_in, g_out = act.random_elements(n_samples, rng)
    worst = 0.0
    for gi, go in zip(g_in, g_out):
        lhs = _host_array(f(_move(gi, x, axis)))
        rhs = _move(go, y, out_axis)
        # equal infinities and nans in corresponding places match; a nan or infinity that
        # does not gives nan (max(0.0, nan) is 0.0: a nan here reported a perfect 0)
        same = (lhs == rhs) | (np.isnan(lhs) & np.isnan(rhs))
        with np.errstate(invalid="ignore"):  # inf - inf where they match
            d = float(np.max(np.where(same, 0.0, np.abs(lhs - rhs)), initial=0.0))
        if math.isnan(d):
            return math.nan
        worst = max(worst, d)
    return worst
