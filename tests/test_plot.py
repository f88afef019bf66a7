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
