"""Pictures render to PNG without a display, and refuse bad input clearly."""

import io
import sys

import numpy as np
import pytest

import paramshare_nb as ps

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _png_pixels(fig):
    """Render to PNG bytes and read them back as an (h, w, 4) array."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    buf.seek(0)
    return plt.imread(buf, format="png")


def _assert_not_blank(fig):
    img = _png_pixels(fig)
    rgb = img[..., :3].reshape(-1, 3)
    # a blank canvas is one colour; a drawing has many and a fair share of non-white
    assert len(np.unique(np.round(rgb, 2), axis=0)) > 5
    assert (rgb.min(axis=1) < 0.9).mean() > 0.01


def _transpositions(k, n):
    """``k`` disjoint transpositions ``(2j 2j+1)`` on ``n`` points: order ``2^k``."""
    gens = np.tile(np.arange(n), (k, 1))
    j = np.arange(k)
    gens[j, 2 * j], gens[j, 2 * j + 1] = 2 * j + 1, 2 * j
    return gens


@pytest.mark.parametrize("view", ["auto", "matrix", "bipartite", "both"])
def test_pattern_views_render(view):
    act = ps.Action.same(ps.groups.cyclic(6))
    fig = ps.plot.pattern(ps.sparse_pattern(act), view=view)
    n_panels = 2 if view in ("auto", "both") else 1
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == n_panels
    _assert_not_blank(fig)


def test_pattern_on_given_axes_and_large_pattern_matrix_only():
    act = ps.Action.same(ps.groups.square_symmetries(6))
    pat = ps.dense_pattern(act)
    fig = ps.plot.pattern(pat)  # 72 points: matrix only
    assert "36 x 36" in fig._suptitle.get_text()
    _, ax = plt.subplots()
    assert ps.plot.pattern(pat, ax=ax, view="matrix", title="") is ax.figure
    _assert_not_blank(ax.figure)


def test_pattern_multi_edges_and_zeros():
    pat = ps.Pattern((3, 3), [0, 0, 1, 2], [0, 0, 1, 2], [0, 1, 1, 0])
    assert pat.has_multi_edges
    _assert_not_blank(ps.plot.pattern(pat))


def test_pattern_shared_cells_show_the_smallest_id():
    rng = np.random.default_rng(3)
    rows, cols, params = rng.integers(0, 6, 300), rng.integers(0, 6, 300), rng.integers(0, 9, 300)
    pat = ps.Pattern((6, 6), rows, cols, params, n_params=9)
    fig = ps.plot.pattern(pat, view="matrix")
    shown = fig.axes[0].images[0].get_array()
    want = np.full((6, 6), -1)
    for r, c, p in zip(rows, cols, params):
        want[r, c] = p if want[r, c] < 0 else min(want[r, c], p)
    np.testing.assert_array_equal(np.ma.filled(shown, -1), want)


def test_pattern_bad_input():
    act = ps.Action.same(ps.groups.cyclic(4))
    with pytest.raises(TypeError, match="Pattern"):
        ps.plot.pattern(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="view"):
        ps.plot.pattern(ps.dense_pattern(act), view="graph")
    _, ax = plt.subplots()
    with pytest.raises(TypeError, match="2 Axes"):
        ps.plot.pattern(ps.dense_pattern(act), ax=ax, view="both")


@pytest.mark.parametrize("gens", [ps.groups.dihedral(5), ps.groups.cyclic(7),
                                  ps.groups.symmetric(4), ps.groups.trivial(3)])
def test_cayley_renders(gens):
    fig = ps.plot.cayley(ps.Action.same(gens, n=gens.shape[1]))
    _assert_not_blank(fig)


def test_cayley_from_generators_and_limits():
    _assert_not_blank(ps.plot.cayley(ps.groups.dihedral(4)))
    with pytest.raises(ValueError, match="max_order"):
        ps.plot.cayley(ps.groups.symmetric(6))
    with pytest.raises(TypeError, match="Action"):
        ps.plot.cayley("dihedral")


def test_cayley_dihedral_layout_has_spokes():
    from paramshare_nb.plot import _cayley_layout

    reg = ps.regular(ps.groups.dihedral(5))
    pos = _cayley_layout(reg, 10)
    radius = np.hypot(pos[:, 0], pos[:, 1])
    assert sorted(np.round(radius, 6).tolist()) == [1.0] * 5 + [1.7] * 5
    angles = np.arctan2(pos[:, 1], pos[:, 0])
    for h in range(10):  # the reflection edges are radial
        assert np.isclose(angles[h], angles[reg[1, h]])


def test_accuracy_table():
    fig = ps.plot.accuracy({"MLP": {"upright": 0.97, "rotated": 0.41},
                            "equivariant": {"upright": 0.95, "rotated": 0.95}}, title="t")
    _assert_not_blank(fig)
    _assert_not_blank(ps.plot.accuracy({"a": 97.0, "b": 41.0}, ylabel="accuracy (%)"))
    with pytest.raises(TypeError, match="mapping"):
        ps.plot.accuracy([0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        ps.plot.accuracy({})
    with pytest.raises(ValueError, match="columns"):
        ps.plot.accuracy({"a": {"x": 1.0}, "b": {"y": 1.0}})
    with pytest.raises(TypeError, match="numbers"):
        ps.plot.accuracy({"a": "high"})


_PAT = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(4)))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(ax=3, view="matrix"), TypeError, "ax must be a matplotlib Axes.*got int"),
    (dict(ax=3), TypeError, "ax must be 2 Axes.*got int"),
    (dict(ax="ab", view="both"), TypeError, "ax must be 2 Axes.*got str"),
    (dict(pattern=ps.Pattern((0, 4), [], [], [])), ValueError, r"shape \(0, 4\).*nothing to draw"),
    (dict(pattern=ps.Pattern((0, 4), [], [], []), view="matrix"), ValueError, r"shape \(0, 4\)"),
    (dict(pattern=ps.Pattern((4, 0), [], [], []), view="bipartite"), ValueError,
     r"shape \(4, 0\)"),
    (dict(view=np.array(["matrix", "both"])), ValueError, "view must be one of"),
    (dict(title=3), TypeError, "title must be a str"),
], ids=["ax-int", "ax-int-both", "ax-str", "empty-rows", "empty-rows-matrix", "empty-cols",
        "view-array", "title-int"])
def test_pattern_refuses_bad_input(kwargs, exc, match):
    kwargs = {"pattern": _PAT, **kwargs}
    with pytest.raises(exc, match=match):
        ps.plot.pattern(**kwargs)


@pytest.mark.parametrize("action, kwargs, exc, match", [
    (ps.groups.dihedral(4), dict(ax=3), TypeError, "ax must be a matplotlib Axes.*got int"),
    ([], {}, ValueError, "action is empty"),
    (np.array([[True, False]]), {}, TypeError, "action must hold integers, got dtype bool"),
    ([[1, 0], [0]], {}, ValueError, "action is ragged"),
    (np.zeros((1, 1, 2), dtype=int), {}, ValueError, r"action must be a \(k, n\).*\(1, 1, 2\)"),
    ([[0, 0, 1]], {}, ValueError, r"action\[0\] is not a permutation"),
    (None, {}, TypeError, "action must be an Action.*got NoneType"),
    ([np.roll(np.arange(100_000), 1)], {}, ValueError, "more than max_order=120 elements"),
    (ps.groups.cyclic(7), dict(max_order=6), ValueError, "more than max_order=6 elements"),
    # order 2^300 with orbits of size 2: refused without building a stabilizer chain
    (_transpositions(300, 20000), {}, ValueError, "more than max_order=120 elements"),
    (ps.groups.dihedral(4), dict(title=3), TypeError, "title must be a str"),
], ids=["ax-int", "empty", "bool", "ragged", "3d", "not-perm", "none", "huge-orbit",
        "order-over-max", "small-orbits-huge-group", "title-int"])
def test_cayley_refuses_bad_input(action, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ps.plot.cayley(action, **kwargs)


@pytest.mark.parametrize("table, kwargs, exc, match", [
    ({"a": "0.5"}, {}, TypeError, r"real numbers.*table\['a'\] is a str"),
    ({"a": np.nan}, {}, ValueError, r"table\['a'\] is nan.*\[0, 1\]"),
    ({"a": np.inf}, {}, ValueError, r"table\['a'\] is inf"),
    ({"a": 0.5, "b": -0.1}, {}, ValueError, r"table\['b'\] is -0.1"),
    ({"a": 150.0}, {}, ValueError, r"table\['a'\] is 150.0.*\[0, 100\]"),
    ({"a": True}, {}, TypeError, r"real numbers.*table\['a'\] is a bool"),
    ({"a": None}, {}, TypeError, r"table\['a'\] is a NoneType"),
    ({"a": [0.1, 0.2]}, {}, TypeError, r"real numbers.*table\['a'\] is a list"),
    ({"a": np.array([0.1, 0.2])}, {}, TypeError, r"table\['a'\] is a ndarray"),
    ({"a": {}, "b": {}}, {}, ValueError, r"table\['a'\] is empty.*at least one column"),
    ({"a": {"x": 0.1}, "b": {"x": 0.2, "y": 0.3}}, {}, ValueError,
     r"table\['b'\] has columns \['x', 'y'\], but table\['a'\] has \['x'\]"),
    ({"a": {"x": np.nan}}, {}, ValueError, r"table\['a'\]\['x'\] is nan"),
    ({"a": {"x": True}}, {}, TypeError, r"real numbers.*table\['a'\]\['x'\] is a bool"),
    ({1: 0.5, "1": 0.6}, {}, ValueError, "table has two keys that both print as '1'"),
    ({"a": 0.5}, dict(ax=3), TypeError, "ax must be a matplotlib Axes.*got int"),
    ({"a": 0.5}, dict(ylabel=3), TypeError, "ylabel must be a str"),
    ({"a": 0.5}, dict(title=[1]), TypeError, "title must be a str"),
], ids=["str", "nan", "inf", "negative", "over-100", "bool", "none", "list", "array",
        "no-columns", "columns-differ", "nested-nan", "nested-bool", "duplicate-names",
        "ax-int", "ylabel-int", "title-list"])
def test_accuracy_refuses_bad_input(table, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ps.plot.accuracy(table, **kwargs)


def test_accuracy_accepts_numpy_scalars_and_reordered_columns():
    fig = ps.plot.accuracy({"MLP": {"upright": np.float32(0.9), "rotated": np.array(0.4)},
                            "eq": {"rotated": 0.95, "upright": np.int64(1)}})
    heights = [[b.get_height() for b in c] for c in fig.axes[0].containers]
    np.testing.assert_allclose(heights, [[0.9, 1.0], [0.4, 0.95]], rtol=1e-6)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    act = ps.Action.same(ps.groups.cyclic(3))
    with pytest.raises(ImportError, match=r"paramshare_nb\[plot\]"):
        ps.plot.pattern(ps.dense_pattern(act))


def test_import_is_lazy():
    import subprocess

    code = ("import sys, paramshare_nb as ps; ps.plot; ps.dask; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib'; "
            "assert 'dask' not in sys.modules, 'dask'")
    subprocess.run([sys.executable, "-c", code], check=True)
