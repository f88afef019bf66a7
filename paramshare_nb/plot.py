"""Pictures of tying patterns, Cayley diagrams and accuracy tables.

matplotlib is an optional extra: ``pip install 'paramshare_nb[plot]'``.  It
is imported only when a function here is called, so ``import paramshare_nb``
stays cheap.  Every function draws on the axes it is given or, without one,
on a new figure made by :mod:`matplotlib.pyplot` (so notebooks and
sphinx-gallery show it), and returns the :class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

import numbers
from decimal import Decimal

import numpy as np

from ._validate import as_gens, as_positive_int, bytes_text

__all__ = ["pattern", "cayley", "accuracy"]

_EXTRA_HINT = "pip install 'paramshare_nb[plot]'"


def _pyplot():
    """Import pyplot, or say which extra to install."""
    try:
        import matplotlib  # noqa: F401
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"paramshare_nb.plot needs matplotlib, which is not installed; install the "
            f"extra with: {_EXTRA_HINT}"
        ) from exc
    return plt


def _param_colors(n_params: int):
    """One colour per parameter id: qualitative for few, a cyclic map for many."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    if n_params <= 10:
        base = plt.get_cmap("tab10").colors[: max(n_params, 1)]
    elif n_params <= 20:
        base = plt.get_cmap("tab20").colors[:n_params]
    else:
        # spread ids over a perceptual map, then interleave so neighbours differ
        pos = (np.arange(n_params) * 0.6180339887) % 1.0
        base = plt.get_cmap("turbo")(0.05 + 0.9 * pos)
    return ListedColormap(base, name="param_ids")


def _new_axes(ax, count: int):
    """Axes to draw on: the caller's, or a fresh figure with ``count`` panels."""
    plt = _pyplot()
    from matplotlib.axes import Axes

    if ax is None:
        fig, axes = plt.subplots(1, count, figsize=(4.6 * count, 4.2), squeeze=False,
                                 layout="constrained")
        return fig, list(axes[0])
    if isinstance(ax, Axes):
        axes = [ax]
    elif isinstance(ax, str):
        axes = None
    else:
        try:
            axes = list(ax)
        except TypeError:  # not iterable: a number, an arbitrary object
            axes = None
    if axes is None or len(axes) != count or not all(isinstance(a, Axes) for a in axes):
        got = (type(ax).__name__ if axes is None or isinstance(ax, Axes)
               else f"{type(ax).__name__} of {[type(a).__name__ for a in axes]}")
        raise TypeError(f"ax must be {'a matplotlib Axes' if count == 1 else f'{count} Axes'} "
                        f"for this view (or None for a new figure), got {got}")
    return axes[0].figure, axes


def _as_text(value, name: str):
    """A title or label: a str, or None."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    return value


def _as_pattern(obj, name="pattern"):
    from .patterns import Pattern

    if not isinstance(obj, Pattern):
        raise TypeError(f"{name} must be a paramshare_nb.Pattern, got {type(obj).__name__}; "
                        f"build one with ps.dense_pattern(action) or ps.sparse_pattern(action)")
    return obj


def pattern(pattern, ax=None, view: str = "auto", max_bipartite: int = 60,
            title: str | None = None):
    """Draw a tying pattern: the matrix of parameter ids, and its bipartite graph.

    Parameters
    ----------
    pattern : Pattern
        The tying pattern to draw (shape ``(M, N)``).
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        Where to draw: one Axes for ``"matrix"`` or ``"bipartite"``, two for
        ``"both"``.  Default: a new figure.
    view : {"auto", "matrix", "bipartite", "both"}, optional
        ``"matrix"`` colours entry ``(m, n)`` by its parameter id (structural
        zeros white, entries holding several parameters marked with a dot);
        ``"bipartite"`` draws inputs in a bottom row, outputs in a top row and
        one edge per stored entry, coloured by parameter.  ``"auto"`` (the
        default) gives ``"both"`` when ``M + N <= max_bipartite`` and there
        are at most 400 stored entries, ``"matrix"`` otherwise.
    max_bipartite : int, optional
        Largest ``M + N`` for which ``"auto"`` adds the bipartite view
        (default 60).
    title : str, optional
        Figure title (default: a summary of the pattern).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install 'paramshare_nb[plot]'``).
    TypeError
        When ``pattern`` is not a :class:`~paramshare_nb.Pattern`, ``ax`` is not
        an Axes (or as many Axes as the view has panels), ``max_bipartite`` is
        not an int, or ``title`` is not a str.
    ValueError
        For an unknown ``view``, a negative ``max_bipartite``, a pattern with no
        rows or no columns, or a matrix over ``config.max_bytes``.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> act = ps.Action.same(ps.groups.cyclic(5))
    >>> fig = ps.plot.pattern(ps.dense_pattern(act), view="matrix")
    """
    pat = _as_pattern(pattern)
    views = ("auto", "matrix", "bipartite", "both")
    if not isinstance(view, str) or view not in views:
        raise ValueError(f"view must be one of {views}, got {view!r}")
    max_bipartite = as_positive_int(max_bipartite, "max_bipartite", minimum=0)
    title = _as_text(title, "title")
    m, n = pat.shape
    if m == 0 or n == 0:
        raise ValueError(f"pattern has shape ({m}, {n}): a matrix without rows or columns has "
                         f"nothing to draw; give a pattern with M >= 1 and N >= 1")
    if view == "auto":
        view = "both" if m + n <= max_bipartite and pat.nnz <= 400 else "matrix"
    panels = ["matrix", "bipartite"] if view == "both" else [view]
    fig, axes = _new_axes(ax, len(panels))
    cmap = _param_colors(pat.n_params)
    for name, a in zip(panels, axes, strict=True):
        if name == "matrix":
            _draw_matrix(pat, a, cmap)
        else:
            _draw_bipartite(pat, a, cmap)
    if title is None:
        title = (f"{m} x {n} pattern: {pat.n_params} parameters, {pat.nnz} non-zeros "
                 f"({pat.nnz / max(m * n, 1):.0%})")
    if title:
        fig.suptitle(title)
    return fig


def _draw_matrix(pat, ax, cmap) -> None:
    from . import config

    m, n = pat.shape
    if m * n * 8 > config.max_bytes:
        raise ValueError(f"a {m} x {n} matrix view needs {bytes_text(m * n * 8)}, over "
                         f"config.max_bytes = {bytes_text(config.max_bytes)}; draw a smaller "
                         f"pattern or raise the bound")
    # a shared cell shows its smallest id (minimum.at: repeated fancy assignment has no
    # defined winner)
    ids = np.full((m, n), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(ids, (pat.rows, pat.cols), pat.params)
    ids[ids == np.iinfo(np.int64).max] = -1
    shown = np.ma.masked_less(ids, 0)
    cm = cmap.with_extremes(bad="white")
    im = ax.imshow(shown, cmap=cm, vmin=-0.5, vmax=max(pat.n_params, 1) - 0.5,
                   interpolation="nearest", aspect="equal")
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.8, label="parameter id")
    if pat.n_params <= 20:
        bar.set_ticks(range(pat.n_params))
    if pat.has_multi_edges:
        same = (pat.rows[1:] == pat.rows[:-1]) & (pat.cols[1:] == pat.cols[:-1])
        ax.plot(pat.cols[1:][same], pat.rows[1:][same], "k.", markersize=3)
    if n <= 40:
        ax.set_xticks(range(n))
    if m <= 40:
        ax.set_yticks(range(m))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("input n")
    ax.set_ylabel("output m")
    ax.set_title("parameter id of W[m, n]")


def _draw_bipartite(pat, ax, cmap) -> None:
    from matplotlib.collections import LineCollection

    m, n = pat.shape
    width = max(m, n, 2) - 1
    x_in = np.linspace(0, width, n) if n > 1 else np.array([width / 2])
    x_out = np.linspace(0, width, m) if m > 1 else np.array([width / 2])
    segs = np.stack([np.stack([x_in[pat.cols], np.zeros(pat.nnz)], axis=1),
                     np.stack([x_out[pat.rows], np.ones(pat.nnz)], axis=1)], axis=1)
    lines = LineCollection(segs, cmap=cmap, linewidths=1.0, alpha=0.8)
    lines.set_array(pat.params.astype(float))
    lines.set_clim(-0.5, max(pat.n_params, 1) - 0.5)
    ax.add_collection(lines)
    ax.scatter(x_in, np.zeros(n), s=18, c="black", zorder=3)
    ax.scatter(x_out, np.ones(m), s=18, c="white", edgecolors="black", zorder=3)
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(-0.15, 1.15)
    ax.set_yticks([0, 1], labels=["inputs N", "outputs M"])
    ax.set_xticks([])
    ax.set_title("bipartite graph (colour = parameter)")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)


def cayley(action, ax=None, max_order: int = 120, title: str | None = None):
    """Draw the Cayley diagram of a small group.

    Vertices are the group's elements (element 0 is the identity, numbered as
    :func:`paramshare_nb.closure` lists them); generator ``s`` draws an arrow
    of its own colour from ``h`` to ``s * h``.  Generators of order 2 are drawn
    as plain lines.  When the first generator's cycles split the elements into
    a few rings (cosets), the rings are drawn concentrically, which gives the
    textbook pictures of cyclic and dihedral groups.

    Parameters
    ----------
    action : Action or array_like of int, shape (k, n)
        The group: an :class:`~paramshare_nb.Action` (its group ``G_{N,M}``)
        or generators.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    max_order : int, optional
        Refuse groups larger than this (default 120): a bigger diagram is not
        readable.
    title : str, optional
        Axes title (default: the group's order and generator count).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install 'paramshare_nb[plot]'``).
    TypeError
        When ``action`` is neither an Action nor an integer array, ``ax`` is
        not one Axes, ``max_order`` is not an int, or ``title`` is not a str.
    ValueError
        When the rows of ``action`` are not permutations (or it is empty or
        not 2-D), ``max_order < 1``, or the group has more than ``max_order``
        elements.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> fig = ps.plot.cayley(ps.Action.same(ps.groups.dihedral(5)))
    """
    from .actions import Action, regular
    from .groups import _order_up_to

    if isinstance(action, Action):
        gens = np.asarray(action.joint)
    elif isinstance(action, (list, tuple, range)) or hasattr(action, "__array__"):
        gens = as_gens(action, "action")  # names the bad row, dtype or shape
    else:
        raise TypeError(f"action must be an Action or a (k, n) int array of generators, "
                        f"got {type(action).__name__}")
    max_order = as_positive_int(max_order, "max_order")
    title = _as_text(title, "title")
    size = _order_up_to(gens, max_order)
    if size > max_order:
        raise ValueError(f"the group has more than max_order={max_order} elements; a Cayley "
                         f"diagram that large is not readable (raise max_order to draw it "
                         f"anyway)")
    fig, (ax,) = _new_axes(ax, 1)
    reg = regular(gens) if gens.shape[0] else np.zeros((0, 1), dtype=np.int64)
    pos = _cayley_layout(reg, size)
    colors = _pyplot().get_cmap("tab10").colors
    from matplotlib.patches import FancyArrowPatch

    for k, s in enumerate(reg):
        is_involution = bool(np.all(s[s] == np.arange(size)))
        col = colors[k % len(colors)]
        for h in range(size):
            t = int(s[h])
            if t == h or (is_involution and t < h):
                continue
            ax.add_patch(FancyArrowPatch(
                pos[h], pos[t], arrowstyle="-" if is_involution else "-|>",
                mutation_scale=10, color=col, lw=1.4, shrinkA=7, shrinkB=7,
                connectionstyle="arc3,rad=0.0"))
        ax.plot([], [], color=col, lw=2, label=f"generator {k}"
                + (" (order 2)" if is_involution else ""))
    ax.scatter(pos[:, 0], pos[:, 1], s=60, c="white", edgecolors="black", zorder=3)
    ax.scatter(pos[:1, 0], pos[:1, 1], s=60, c="black", zorder=4, label="identity")
    if size <= 24:
        for h in range(size):
            ax.annotate(str(h), pos[h], xytext=(6, 6), textcoords="offset points", fontsize=7)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.margins(0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(3, reg.shape[0] + 1),
              fontsize=8, frameon=False)
    ax.set_title(title if title is not None
                 else f"Cayley diagram: |G| = {size}, {reg.shape[0]} generator(s)")
    return fig


def _cayley_layout(reg: np.ndarray, size: int) -> np.ndarray:
    """Concentric rings along the first generator's cycles, else one circle.

    A ring that another generator maps a placed ring onto is aligned with it
    (element ``s * h`` at the angle of ``h``), so those edges become spokes.
    """
    if size == 1:
        return np.zeros((1, 2))
    rings: list[list[int]] = []
    if reg.shape[0]:
        seen = np.zeros(size, dtype=bool)
        for start in _bfs_order(reg, size):
            if seen[start]:
                continue
            cyc, h = [], start
            while not seen[h]:
                seen[h] = True
                cyc.append(h)
                h = int(reg[0, h])
            rings.append(cyc)
    if not rings or len(rings) > 6 or len(rings[0]) < 3:
        rings = [_bfs_order(reg, size)]
    angle = np.full(size, np.nan)
    radius = np.zeros(size)
    for r, ring in enumerate(rings):
        radius[ring] = 1.0 + 0.7 * r
        target = set(ring)
        for s in reg[1:]:
            placed = [p for p in rings[:r] if {int(s[h]) for h in p} == target]
            if placed:
                for h in placed[0]:
                    angle[int(s[h])] = angle[h]
                break
        else:
            angle[ring] = np.pi / 2 - 2 * np.pi * np.arange(len(ring)) / len(ring)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _bfs_order(reg: np.ndarray, size: int) -> list[int]:
    order, seen, frontier = [0], {0}, [0]
    while frontier:
        nxt = []
        for h in frontier:
            for s in reg:
                t = int(s[h])
                if t not in seen:
                    seen.add(t)
                    order.append(t)
                    nxt.append(t)
        frontier = nxt
    return order + [h for h in range(size) if h not in seen]


def accuracy(table, ax=None, title: str | None = None, ylabel: str = "accuracy"):
    """Bar chart of an accuracy table, e.g. the one ``python -m paramshare_nb demo`` prints.

    Parameters
    ----------
    table : mapping
        ``{model: value}`` for one bar per model, or ``{model: {column: value}}``
        for grouped bars (e.g. columns ``"upright"`` and ``"rotated"``).
        Values are real numbers in ``[0, 1]`` or percentages in ``[0, 100]``.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    title : str, optional
        Axes title.
    ylabel : str, optional
        Label of the value axis (default ``"accuracy"``; None for none).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install 'paramshare_nb[plot]'``).
    TypeError
        When ``table`` is not a mapping, its values mix numbers and mappings,
        a value is not a real number (bools, strings, None and arrays are
        refused), ``ax`` is not one Axes, or ``title`` or ``ylabel`` is not a str.
    ValueError
        When ``table`` or an inner mapping is empty, the inner mappings have
        different keys, two models (or columns) print the same name, or a value
        is nan, infinite or outside ``[0, 100]``.

    Examples
    --------
    >>> import paramshare_nb as ps
    >>> fig = ps.plot.accuracy({"MLP": {"upright": 0.97, "rotated": 0.41},
    ...                         "equivariant": {"upright": 0.95, "rotated": 0.95}})
    """
    from collections.abc import Mapping

    if not isinstance(table, Mapping):
        raise TypeError(f"table must be a mapping of model -> value (or -> mapping of "
                        f"column -> value), got {type(table).__name__}")
    if not table:
        raise ValueError("table is empty: give at least one model, e.g. {'MLP': 0.97}")
    title = _as_text(title, "title")
    ylabel = _as_text(ylabel, "ylabel")
    models = _distinct_names(table, "table")
    rows = list(table.values())
    nested = [isinstance(r, Mapping) for r in rows]
    if any(nested) and not all(nested):
        raise TypeError("table values must be all numbers or all mappings, not a mix")
    if all(nested):
        first = next(iter(table))
        columns = list(rows[0])
        if not columns:
            raise ValueError(f"table[{first!r}] is empty: give each model at least one column")
        _distinct_names(columns, f"table[{first!r}]")
        for key, r in table.items():
            if set(r) != set(columns):
                raise ValueError(f"table[{key!r}] has columns {list(r)}, but table[{first!r}] "
                                 f"has {columns}; give every model the same columns")
        values = [[_as_accuracy(r[c], f"table[{key!r}][{c!r}]") for c in columns]
                  for key, r in table.items()]
    else:
        columns = [ylabel]
        values = [[_as_accuracy(r, f"table[{key!r}]")] for key, r in table.items()]
    vals = np.array(values, dtype=float)
    fig, (ax,) = _new_axes(ax, 1)
    n_cols = len(columns)
    width = 0.8 / n_cols
    x = np.arange(len(models))
    for j, col in enumerate(columns):
        bars = ax.bar(x + (j - (n_cols - 1) / 2) * width, vals[:, j], width,
                      label=str(col) if n_cols > 1 else None)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, labels=models)
    ax.set_ylabel(ylabel)
    if n_cols > 1:
        ax.legend(fontsize=8)
    if vals.max() <= 1.0:
        ax.set_ylim(0, 1.05)
    if title:
        ax.set_title(title)
    return fig


def _distinct_names(keys, name: str) -> list[str]:
    """The keys as bar or legend labels, refusing two that print the same."""
    labels = [str(k) for k in keys]
    if len(set(labels)) < len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        raise ValueError(f"{name} has two keys that both print as {dup!r}; give them "
                         f"distinct names")
    return labels


def _as_accuracy(value, where: str) -> float:
    """One table value as a float in [0, 100]; bools, strings, None and arrays are refused."""
    if isinstance(value, (numbers.Real, Decimal)) and not isinstance(value, bool):
        v = float(value)
    elif getattr(value, "ndim", None) == 0 and np.asarray(value).dtype.kind in "iuf":
        v = float(value)  # a 0-d numpy / torch / jax array
    else:
        raise TypeError(f"table values must be real numbers (accuracies in [0, 1] or "
                        f"percentages), but {where} is a {type(value).__name__}")
    if not 0.0 <= v <= 100.0:  # also false for nan
        raise ValueError(f"{where} is {v}; accuracies must be finite and in [0, 1], or in "
                         f"[0, 100] as percentages")
    return v
