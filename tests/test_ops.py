"""Tests of the tied multiply (CPU): every strategy against the numpy oracle."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import reference_ops as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import paramshare_nb as ps
from paramshare_nb import config, ops
from paramshare_nb.patterns import Pattern

DTYPES = [np.float32, np.float64]
BATCHES = [(), (1,), (3, 2), (0,)]
METHODS = [m for m in ops.METHODS if m != "auto"]


def assert_close(actual, expected, dtype=None):
    """One tolerance rule keyed by dtype."""
    dtype = np.dtype(dtype or actual.dtype)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    tol = 2e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _random_multi():
    """7 x 6, 5 params: multi-edges (one entry holds 3 params), an empty row, a repeated edge."""
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 7, 30)
    rows[rows == 3] = 4  # row 3 stays empty
    cols = rng.integers(0, 6, 30)
    params = rng.integers(0, 5, 30)
    rows = np.r_[rows, 0, 0, 0, 2, 2]
    cols = np.r_[cols, 1, 1, 1, 5, 5]
    params = np.r_[params, 0, 1, 2, 4, 4]
    return Pattern((7, 6), rows, cols, params)


def _deepsets_perturbed():
    """Deep Sets on 6 points with a hole, multi-edges and a repeated edge: complement + residual."""
    base = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(6)))
    keep = ~((base.rows == 2) & (base.cols == 4))  # a structural zero inside the block
    rows = np.r_[base.rows[keep], 1, 1, 5, 0]
    cols = np.r_[base.cols[keep], 3, 3, 0, 0]
    params = np.r_[base.params[keep], 2, 1, 0, 2]
    return Pattern((6, 6), rows, cols, params)


def _patterns():
    s5 = ps.Action.same(ps.groups.symmetric(5))
    reg = ps.Action.same(ps.regular(ps.groups.dihedral(3)))
    s4_2 = ps.tensor_power(ps.groups.symmetric(4), 2)
    return {
        "deepsets": ps.dense_pattern(s5),
        "cyclic": ps.dense_pattern(ps.Action.same(ps.groups.cyclic(6))),
        "d4": ps.dense_pattern(ps.Action.same(ps.groups.square_symmetries(3))),
        "cayley": ps.sparse_pattern(reg),
        "tensor2to1": ps.dense_pattern(ps.Action(s4_2, ps.groups.symmetric(4))),
        "multi": _random_multi(),
        "deepsets_perturbed": _deepsets_perturbed(),
    }


PATTERNS = _patterns()


@pytest.fixture(scope="module")
def data():
    """Per (pattern, dtype, scalar, batch): x, theta, dy, built once."""
    rng = np.random.default_rng(2024)
    cache = {}

    def get(name, dtype, scalar, batch, c_in=3, c_out=2):
        key = (name, np.dtype(dtype).name, scalar, batch, c_in, c_out)
        if key not in cache:
            pat = PATTERNS[name]
            m, n = pat.shape
            if scalar:
                shapes = ((pat.n_params,), batch + (n,), batch + (m,))
            else:
                shapes = ((pat.n_params, c_out, c_in), batch + (n, c_in), batch + (m, c_out))
            cache[key] = tuple(rng.standard_normal(s).astype(dtype) for s in shapes)
        return cache[key]
    return get


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("method", METHODS + ["auto"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scalar", [True, False], ids=["scalar", "channels"])
def test_forward_and_grad_match_reference(data, name, method, dtype, scalar):
    pat = PATTERNS[name]
    for batch in BATCHES:
        theta, x, dy = data(name, dtype, scalar, batch)
        keep = [a.copy() for a in (theta, x, dy)]
        y = ps.tied_matmul(x, theta, pat, method=method)
        assert y.shape == dy.shape
        assert_close(y, ref.forward(x, theta, pat), dtype)
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method=method)
        rdx, rdth = ref.grad(dy, x, theta, pat)
        assert dx.shape == x.shape and dth.shape == theta.shape
        assert_close(dx, rdx, dtype)
        assert_close(dth, rdth, dtype)
        for a, k in zip((theta, x, dy), keep):
            np.testing.assert_array_equal(a, k)  # inputs never modified


def test_complement_decomposition_is_used():
    from paramshare_nb import _dispatch
    for name in ("deepsets", "deepsets_perturbed", "tensor2to1"):
        sp = _dispatch.plan_of(PATTERNS[name]).split()
        assert sp is not None and sp.n_bases > 0, name
    sp = _dispatch.plan_of(PATTERNS["deepsets"]).split()
    # theta_0 - theta_1 on the diagonal
    assert sp.n_derived == 1 and sp.residual.identity_param == 0
    assert _dispatch.choose(PATTERNS["deepsets"], 64, 32, 32)[0] == "complement"


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "add_at"])
def test_split_rebuilds_w_and_its_adjoint(dense, monkeypatch):
    """``W = residual(derived_theta(theta)) + bases(theta)`` entry by entry, and
    ``param_grads`` is the adjoint of ``derived_theta``, with the coefficients as a
    dense matrix and through ``np.add.at`` (patterns past ``_DENSE_COEF``)."""
    from paramshare_nb import _dispatch
    if not dense:
        monkeypatch.setattr(_dispatch, "_DENSE_COEF", 0)
    rng = np.random.default_rng(15)
    for pat in [PATTERNS[k] for k in ("deepsets", "deepsets_perturbed", "tensor2to1")] + [
            _two_block_diagonal()]:
        sp = _dispatch.Split(_dispatch.plan_of(pat))
        assert sp.n_bases > 0 and (sp._coef != {}) == dense
        theta = rng.standard_normal((pat.n_params, 2, 3))
        w = np.zeros(pat.shape + (2, 3))
        np.add.at(w, (pat.rows, pat.cols), theta[pat.params])
        rows, cols, ds = sp.residual._edges
        rebuilt = np.zeros_like(w)
        np.add.at(rebuilt, (rows, cols), sp.derived_theta(theta)[ds])
        for m in range(pat.shape[0]):
            for j in sp.row_u[sp.row_ptr[m]:sp.row_ptr[m + 1]]:
                k = sp.base_k[j]
                rebuilt[m, sp.blk_cols[sp.blk_ptr[k]:sp.blk_ptr[k + 1]]] += theta[sp.base_q[j]]
        np.testing.assert_allclose(rebuilt, w, atol=1e-12)
        g = rng.standard_normal((sp.n_derived, 2, 3))
        back = np.full_like(theta, np.nan)
        sp.param_grads(g, back)
        np.testing.assert_allclose(np.sum(back * theta), np.sum(g * sp.derived_theta(theta)))


@pytest.mark.parametrize("scalar", [True, False], ids=["scalar", "channels"])
def test_complement_with_no_residual(scalar):
    """A split whose bases cover every entry (one parameter everywhere) has no derived
    parameters: complement and auto still give the reference (found by review: the
    backward raised on reshaping the empty derived gradient)."""
    from paramshare_nb import _dispatch
    m, n = 3, 4
    pat = Pattern((m, n), np.repeat(np.arange(m), n), np.tile(np.arange(n), m),
                  np.zeros(m * n, int))
    assert _dispatch.plan_of(pat).split().n_derived == 0
    rng = np.random.default_rng(43)
    theta = rng.standard_normal((1,) if scalar else (1, 2, 3))
    x = rng.standard_normal((5, n) + (() if scalar else (3,)))
    dy = rng.standard_normal((5, m) + (() if scalar else (2,)))
    rdx, rdth = ref.grad(dy, x, theta, pat)
    for method in ("complement", "auto"):
        assert_close(ps.tied_matmul(x, theta, pat, method=method), ref.forward(x, theta, pat))
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method=method)
        assert_close(dx, rdx)
        assert_close(dth, rdth)


def _two_block_diagonal():
    """8 points in blocks {0..3}, {4..7}; rows of each block have their own bases on
    both blocks but the same diagonal residual ``theta_0 - theta_1``: two row groups."""
    rows, cols, params = [], [], []
    for m in range(8):
        for n in range(8):
            same = (m < 4) == (n < 4)
            p = 0 if m == n else (1 if same else (2 if m < 4 else 3))
            rows.append(m)
            cols.append(n)
            params.append(p)
    return Pattern((8, 8), rows, cols, params)


def _check_channels(pat, methods, dtype, batch, c_in, c_out, rng):
    """Random ``theta (P, c_out, c_in)``, ``x``, ``dy`` with ``batch`` elements: forward, ``dx``
    and ``dtheta`` of every method against the numpy reference."""
    theta = rng.standard_normal((pat.n_params, c_out, c_in)).astype(dtype)
    x = rng.standard_normal((batch, pat.shape[1], c_in)).astype(dtype)
    dy = rng.standard_normal((batch, pat.shape[0], c_out)).astype(dtype)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    for method in methods:
        assert_close(ps.tied_matmul(x, theta, pat, method=method), ref.forward(x, theta, pat))
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method=method)
        assert_close(dx, rdx)
        assert_close(dth, rdth)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagonal_complement_tiles(dtype):
    """The one-pass kernels (diagonal residual): 8-row and 2-row register tiles with tail
    rows, 1, 2, 3 and 5 vectors of output channels and 1 or 2 blocks of 4 vectors of input
    channels (``dtheta``), with partial vectors; two row groups."""
    from paramshare_nb import _dispatch
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(11)
    pats = [ps.dense_pattern(ps.Action.same(ps.groups.symmetric(19))), _two_block_diagonal()]
    assert _dispatch.plan_of(pats[1]).split().base_groups()[0].size == 3  # 2 groups
    for pat in pats:
        assert _dispatch.plan_of(pat).split().residual.identity_param >= 0
        for c_in, c_out in ((3, 1), (3, lanes + 1), (4 * lanes + 1, 2 * lanes + 1),
                            (5, 4 * lanes + 3)):
            _check_channels(pat, ("complement",), dtype, 2, c_in, c_out, rng)


@pytest.mark.parametrize("c", [1, 3, 9])
def test_simd_kernels_write_every_output(c):
    """Outputs start as NaN (np.empty may hand back any bytes): the one-pass kernel and
    the block totals must write every entry, and never read their own outputs."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import sums_cpu
    pat = PATTERNS["deepsets"]
    sp = _dispatch.plan_of(pat).split()
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 5, c))
    tot = np.full((3, sp.n_blocks, c), np.nan)
    sums_cpu.block_totals.serial(x, sp.blk_ptr, sp.blk_cols, tot)
    np.testing.assert_allclose(tot[:, 0], x.sum(axis=1))
    theta = rng.standard_normal((pat.n_params, c, c))
    y = np.full((3, 5, c), np.nan)
    got = _dispatch._diagonal_complement(_dispatch.plan_of(pat), sp, x, theta,
                                         sp.derived_theta(theta), y)
    assert got is not None and np.isfinite(got).all()
    assert_close(y, ref.forward(x, theta, pat))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_gather_channel_vectors(dtype, parallel, monkeypatch):
    """Gather, complement and scatter with 4 or more channels: the SIMD gather sums
    (partial vectors, two blocks of 4 vectors) and the csr tiles over the group sums,
    through the serial twins and the parallel drivers."""
    from paramshare_nb import _dispatch
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(14)
    for name in ("tensor2to1", "multi", "deepsets_perturbed", "cayley"):
        pat = PATTERNS[name]
        for c_in, c_out in ((4, 5), (4 * lanes + 3, 2 * lanes + 1)):
            _check_channels(pat, ("gather", "complement", "scatter"), dtype, 5, c_in, c_out,
                            rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_channel_tiles(dtype):
    """The SIMD "csr" kernels: 4-element batch tiles with a tail, 1 to 5 vectors of output
    channels and 1 or 2 pairs of vectors of input channels, partial vectors, multi-edges."""
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(12)
    for name in ("cayley", "multi"):
        pat = PATTERNS[name]
        for c_in, c_out in ((1, 3), (3, 1), (2 * lanes + 1, lanes + 1), (5, 4 * lanes + 3)):
            _check_channels(pat, ("csr",), dtype, 9, c_in, c_out, rng)


def _dense_random(m, n, n_params, seed):
    """An ``m x n`` pattern with every entry tied at random, plus multi-edges on row 0."""
    idx = np.random.default_rng(seed).integers(0, n_params, (m, n))
    r, c = np.nonzero(idx >= 0)
    return Pattern((m, n), np.r_[r, 0, 0], np.r_[c, n - 1, n - 1],
                   np.r_[idx[r, c], 0, n_params - 1])


def _dense_complete(m, n, n_params, seed):
    """:func:`_dense_random` without its multi-edges: every entry once, as dense designs."""
    idx = np.random.default_rng(seed).integers(0, n_params, (m, n))
    r, c = np.nonzero(idx >= 0)
    return Pattern((m, n), r, c, idx[r, c])


def _stream_shapes(lanes):
    """``(M, N, Co, Ci)`` for the streamed small ``W`` (``o = M * Co``, ``k = N * Ci``):
    o of one partial vector (8-row tiles); o of two (4 x 2 tiles) with k < o (dW
    accumulated as dW.T); k of 3 + 1 vectors (the last recomputed with its neighbour)
    and 3 + 2; o == k; Figure 1's 5 x 20."""
    return [(lanes - 3, 2 * lanes + 3, 1, 1), (lanes - 1, 1, 2, 3), (2, 4 * lanes - 1, 1, 1),
            (1, 5 * lanes - 3, 2, 1), (3, 2, 2, 3), (5, 20, 1, 1)]


def _spy_kernels(monkeypatch, module, names, factories=()):
    """Replace ``module``'s kernels ``names`` (parallel and ``.serial``), and the kernels
    that its functions ``factories`` return, by spies that log their name to the returned
    list and run the kernel."""
    calls = []

    def spy(kern, name):
        return type("Spy", (), {"serial": staticmethod(lambda *a: calls.append(name)
                                                       or kern.serial(*a)),
                                "__call__": staticmethod(lambda *a: calls.append(name)
                                                         or kern(*a))})()
    def spy_factory(make, name):
        return lambda *a: spy(make(*a), name)
    for name in names:
        monkeypatch.setattr(module, name, spy(getattr(module, name), name))
    for name in factories:
        monkeypatch.setattr(module, name, spy_factory(getattr(module, name), name))
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_small_w_streaming_tiles(dtype, parallel, monkeypatch):
    """``"materialize"`` with a small, thin ``W`` streams the batch through the SIMD tiles of
    ``small_cpu`` (spied): tile shapes, tail rows (batches 1, 7, 13, 300), multi-edges, both
    ``dW`` orientations, serial twins and parallel chunks."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import small_cpu
    calls = _spy_kernels(monkeypatch, small_cpu, ("small_forward", "small_backward"),
                         ("dot_forward", "fused_backward"))
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    rng = np.random.default_rng(17)
    itemsize = np.dtype(dtype).itemsize
    for i, (m, n, c_out, c_in) in enumerate(_stream_shapes(32 // itemsize)):
        assert _dispatch._streamed(m * c_out, n * c_in, itemsize)
        o, k = m * c_out, n * c_in
        forward = "dot_forward" if _dispatch._dots_forward(o, k, itemsize) else "small_forward"
        backward = "fused_backward" if _dispatch._fuses(o, k, itemsize) else "small_backward"
        # multi-edges, and every entry once (W gathered, not summed)
        for pat, batches in ((_dense_random(m, n, 4, i), (1, 7, 13, 300)),
                             (_dense_complete(m, n, 4, i), (7, 300))):
            assert _dispatch._complete(pat) == (batches == (7, 300))
            for batch in batches:  # 300: blocks of 128 rows in the outer products
                calls.clear()
                _check_channels(pat, ("materialize",), dtype, batch, c_in, c_out, rng)
                assert calls == [forward, backward]


def test_small_w_without_avx512_registers(monkeypatch):
    """On a CPU with 16 vector registers (AVX2, no AVX-512VL) the register kernels take only
    the shapes whose rows fit: Figure 1's 5 x 20 float32 goes back to the tiles, a 4 x 16
    keeps them (a shape test_small_w_register_kernels compiles); both against the
    reference.  A 4 x 24 (16 registers, counting one row of x) keeps them too."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import simd, small_cpu
    calls = _spy_kernels(monkeypatch, small_cpu, ("small_forward", "small_backward"),
                         ("dot_forward", "fused_backward"))
    monkeypatch.setattr(simd, "REGISTERS", 16)
    rng = np.random.default_rng(19)
    for (m, n), want in (((5, 20), ["small_forward", "small_backward"]),
                         ((4, 16), ["dot_forward", "fused_backward"])):
        calls.clear()
        _check_channels(_dense_random(m, n, 4, m), ("materialize",), np.float32, 13, 1, 1,
                        rng)
        assert calls == want
    assert _dispatch._fuses(4, 24, 4) and _dispatch._dots_forward(4, 24, 4)
    assert not _dispatch._fuses(5, 17, 4)

@pytest.mark.parametrize("dtype", DTYPES)
def test_small_square_w_streams_at_small_batches(dtype, monkeypatch):
    """A small scalar ``W`` that is not thin (C_32's 32 x 32, a 20 x 37 with multi-edges,
    odd sizes for the tiles' tails) streams through the SIMD tiles while the batch is small,
    and goes to BLAS past ``_SMALL_SQUARE_WORK``; both against the reference."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import small_cpu
    calls = _spy_kernels(monkeypatch, small_cpu, ("small_forward", "small_backward"))
    rng = np.random.default_rng(5)
    cyclic = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(32)))
    for pat in (cyclic, _dense_random(20, 37, 7, 1), _dense_random(33, 29, 3, 2)):
        m, n = pat.shape
        assert not _dispatch._streamed(m, n, np.dtype(dtype).itemsize)  # not thin
        for batch in (1, 7, 13):
            calls.clear()
            _check_channels(pat, ("materialize", "auto"), dtype, batch, 1, 1, rng)
            assert calls == ["small_forward", "small_backward"] * 2
        past = _dispatch._SMALL_SQUARE_WORK // (m * n) + 1
        calls.clear()
        _check_channels(pat, ("materialize",), dtype, past, 1, 1, rng)
        assert calls == []
    theta = rng.standard_normal(32).astype(dtype)
    for _ in range(2):  # replayed calls hand x, y, dy, dx to the kernels in their own shapes
        x = rng.standard_normal((3, 2, 32)).astype(dtype)
        dy = rng.standard_normal((3, 2, 32)).astype(dtype)
        want = ref.forward(x[..., None], theta[:, None, None], cyclic)[..., 0]
        assert_close(ps.tied_matmul(x, theta, cyclic), want)
        dx, dth = ps.tied_matmul_grad(dy, x, theta, cyclic)
        rdx, rdth = ref.grad(dy[..., None], x[..., None], theta[:, None, None], cyclic)
        assert_close(dx, rdx[..., 0])
        assert_close(dth, rdth[:, 0, 0])
    big = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(65)))  # past _SMALL_SQUARE
    assert not _dispatch._streams(65, 65, 1, 1, 1, np.dtype(dtype).itemsize)
    calls.clear()
    _check_channels(big, ("materialize",), dtype, 1, 1, 1, rng)
    assert calls == []


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_scalar_csr_gradients_over_several_tiles(parallel, monkeypatch):
    """Scalar "csr" runs tiles of 64 batch rows per chunk: batches past one tile, ending in
    a partial tile (65, 129, 130), must not count the previous tile's lanes again in
    dtheta (they did, found by review); inf/nan in the stale lanes must not leak either."""
    from paramshare_nb import _dispatch
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    pat = _dense_random(3, 7, 4, 8)
    rng = np.random.default_rng(31)
    theta = rng.standard_normal(4)
    for nb in (63, 64, 65, 129, 130):
        x, dy = rng.standard_normal((nb, 7)), rng.standard_normal((nb, 3))
        x[:64] *= 1e3  # large first tile: a stale lane would show
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method="csr")
        rdx, rdth = ref.grad(dy, x, theta, pat)
        assert_close(dx, rdx)
        assert_close(dth, rdth)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_gather_tiles_few_channels(parallel, monkeypatch):
    """"gather" and "complement" (its residuals) with at most 3 channels a side run
    ``tile_sums_cpu``'s 64-row batch tiles (spied): scalar and channels, batches within, at
    and past one tile, ending in a partial tile (whose stale lanes must not count again in
    dtheta), multi-edges, repeated edges, empty rows; "scatter" on the same data."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import tile_sums_cpu
    calls = _spy_kernels(monkeypatch, tile_sums_cpu, ("gather_forward", "gather_dtheta"))
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    rng = np.random.default_rng(37)
    for name in ("multi", "deepsets_perturbed", "cyclic", "d4"):
        pat = PATTERNS[name]
        m, n = pat.shape
        for chans in (None, (2, 3), (3, 1)):
            lead = () if chans is None else (chans[0],)
            theta = rng.standard_normal((pat.n_params,) if chans is None else
                                        (pat.n_params, chans[1], chans[0]))
            for nb in (1, 63, 64, 65, 130):
                x = rng.standard_normal((nb, n) + lead)
                dy = rng.standard_normal((nb, m) + (() if chans is None else (chans[1],)))
                x[:64] *= 1e3  # large first tile: a stale lane would show
                rdx, rdth = ref.grad(dy, x, theta, pat)
                for method in ("gather", "complement", "scatter"):
                    calls.clear()
                    assert_close(ps.tied_matmul(x, theta, pat, method=method),
                                 ref.forward(x, theta, pat))
                    dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method=method)
                    assert_close(dx, rdx)
                    assert_close(dth, rdth)
                    if method == "gather":
                        assert calls == ["gather_forward", "gather_forward", "gather_dtheta"]


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_gather_sums_over_batch_blocks(parallel, monkeypatch):
    """Gather, complement and scatter with more than 3 channels on one side, over batches
    of several 256-row blocks of ``cpu.gather_sums`` (target-major sums of 2 or 3 input
    channels) and past them (300, 513); scatter's contracted columns summed batch-major."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import cpu
    assert cpu.SUM_B == 256
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    rng = np.random.default_rng(38)
    for name in ("multi", "deepsets_perturbed", "tensor2to1"):
        for c_in, c_out in ((2, 5), (3, 4), (5, 3)):
            for batch in (300, 513):
                _check_channels(PATTERNS[name], ("gather", "complement", "scatter"),
                                np.float64, batch, c_in, c_out, rng)


@pytest.mark.parametrize("dtype, fused", [(np.float64, False), (np.float32, False),
                                          (np.float32, True)])
def test_small_w_kernels_with_more_chunks_than_rows(dtype, fused):
    """5 rows over 4 chunks (2, 2, 1 and none): every row once, nothing written outside
    the outputs (they are rows 2-6 of larger NaN-filled arrays, the rest must stay NaN);
    by tiles along y's rows and by dot products, the backward in two passes and fused
    (float32's 3 vectors a row)."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import small_cpu
    rng = np.random.default_rng(29)
    theta = rng.standard_normal((4, 1, 1)).astype(dtype)
    x, dy = rng.standard_normal((5, 20)).astype(dtype), rng.standard_normal((5, 5)).astype(dtype)
    for pat in (_dense_random(5, 20, 4, 5), _dense_complete(5, 20, 4, 5)):
        complete = _dispatch._complete(pat)
        indptr, cols, params = _dispatch.csr_of(pat)
        y_big, dx_big = np.full((9, 5), np.nan, dtype), np.full((9, 20), np.nan, dtype)
        y, dx, dth = y_big[2:7], dx_big[2:7], np.empty((4, 1, 1), dtype)
        forward = small_cpu.dot_forward(5, 3) if fused else small_cpu.small_forward
        # scratch full of NaN: the kernels must write all of it they read
        scratch = np.full(5 * 24 + 4 * 320 + 16 if fused else (20, 8), np.nan, dtype)
        for kernel in (forward, forward.serial):
            kernel(x, theta, indptr, cols, params, complete, scratch, y, 4)
            assert_close(y.reshape(5, 5, 1), ref.forward(x.reshape(5, 20, 1), theta, pat))
        backward = small_cpu.fused_backward(5, 3) if fused else small_cpu.small_backward
        for kernel in (backward, backward.serial):
            kernel(dy, x, theta, indptr, cols, params, complete,
                   np.full(5 * 24 + 8 if fused else (5, 24), np.nan, dtype),
                   np.full((4, 5, 24), np.nan, dtype), dx, dth, 4)
            rdx, rdth = ref.grad(dy.reshape(5, 5, 1), x.reshape(5, 20, 1), theta, pat)
            assert_close(dx.reshape(5, 20, 1), rdx)
            assert_close(dth, rdth)
        assert np.isnan(np.r_[y_big[:2], y_big[7:]]).all()
        assert np.isnan(np.r_[dx_big[:2], dx_big[7:]]).all()


@pytest.mark.parametrize("dtype, nr, nv", [(np.float32, 5, 3), (np.float64, 1, 3),
                                          (np.float32, 2, 1), (np.float32, 4, 2)])
def test_small_w_register_kernels(dtype, nr, nv):
    """The dot-product forward and the fused backward for ``y`` rows of ``nr`` values and
    ``x`` rows of ``nv`` vectors (these four take every branch on ``nr`` and ``nv`` both
    ways, and tiles of 8, 4 and 2 rows; each shape compiles apart, about 5 s a kernel, and
    the first two are :func:`test_small_w_streaming_tiles`'s), ``x``'s last vector whole and
    partial, one chunk and 3 (batches 1, 7, 40: empty chunks, whole tiles of rows and the
    rows after them), ``inf`` and ``nan`` at the start of rows (read with the row before's
    last vector), multi-edges, NaN-filled scratch, outputs inside NaN-filled arrays:
    against the reference, nothing written outside the outputs; and the forward's rows
    the same to the bit in a batch of 40 as in its first 1 to 39 rows."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import simd, small_cpu
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(41)
    for k in (nv * lanes, nv * lanes - lanes // 2 - 1):
        assert _dispatch._fuses(nr, k, np.dtype(dtype).itemsize) == (
            (nr + 1) * nv + 1 <= simd.REGISTERS)
        pat = _dense_random(nr, k, 3, nr * nv)
        indptr, cols, params = _dispatch.csr_of(pat)
        theta = rng.standard_normal((3, 1, 1)).astype(dtype)
        for batch in (1, 7, 40):
            x = rng.standard_normal((batch, k)).astype(dtype)
            x[3:4, 0], x[5:6, 0] = np.inf, np.nan
            dy = rng.standard_normal((batch, nr)).astype(dtype)
            want = ref.forward(x[..., None], theta, pat)
            rdx, rdth = ref.grad(dy[..., None], x[..., None], theta, pat)
            for nchunks in (1, 3):
                kernel = small_cpu.dot_forward(nr, nv)
                kernel = kernel if nchunks > 1 else kernel.serial
                y_big = np.full((batch + 2, nr), np.nan, dtype)
                scratch = np.full(nr * (nv + nchunks * lanes) * lanes + 2 * lanes, np.nan, dtype)
                kernel(x, theta, indptr, cols, params, False, scratch[1:], y_big[1:-1], nchunks)
                assert_close(y_big[1:-1, :, None], want)
                assert np.isnan(y_big[[0, -1]]).all()
                kernel = small_cpu.fused_backward(nr, nv)
                kernel = kernel if nchunks > 1 else kernel.serial
                dx_big = np.full((batch + 2, k), np.nan, dtype)
                dth = np.empty((3, 1, 1), dtype)
                kernel(dy, x, theta, indptr, cols, params, False,
                       np.full(nr * nv * lanes + lanes + 1, np.nan, dtype)[1:],
                       np.full((nchunks, nr, nv * lanes), np.nan, dtype),
                       dx_big[1:-1], dth, nchunks)
                assert_close(dx_big[1:-1, :, None], rdx)
                assert_close(dth, rdth)
                assert np.isnan(dx_big[[0, -1]]).all()
        # a row's bits do not depend on where it falls in the batch (a tile or the rest)
        x = rng.standard_normal((40, k)).astype(dtype)
        scratch = np.empty(nr * (nv + lanes) * lanes + 2 * lanes, dtype)
        ys = [np.empty((rows, nr), dtype) for rows in range(1, 41)]
        for y in ys:
            small_cpu.dot_forward(nr, nv).serial(x[:len(y)], theta, indptr, cols, params,
                                                 False, scratch, y, 1)
        for y in ys[:-1]:
            np.testing.assert_array_equal(y, ys[-1][:len(y)])


def test_small_w_register_kernels_refuse_other_shapes():
    from paramshare_nb._kernels import small_cpu
    for nr, nv in ((0, 1), (6, 1), (1, 0), (1, 4)):
        with pytest.raises(ValueError, match="no fused backward"):
            small_cpu.fused_backward(nr, nv)
        with pytest.raises(ValueError, match="no dot-product forward"):
            small_cpu.dot_forward(nr, nv)


@pytest.mark.parametrize("name", ["multi", "cayley", "deepsets_perturbed", "d4", "deepsets"])
def test_gather_w_writes_every_value(name):
    """``cpu.gather_w`` (serial and parallel) into a NaN-filled ``W``: structural zeros,
    multi-edges summed, complete patterns (plain stores; one input channel, and input
    channels in whole SIMD vectors, in loops of their own), every value written, against
    ``np.add.at``."""
    from paramshare_nb import _dispatch
    from paramshare_nb._kernels import cpu
    pat = PATTERNS[name]
    m, n = pat.shape
    complete = _dispatch._complete(pat)
    assert complete == (name in ("d4", "deepsets"))
    indptr, cols, params = _dispatch.csr_of(pat)
    # 8 input channels: whole SIMD vectors (two of float64, one of float32)
    for c_out, c_in, dtype in ((2, 3, np.float64), (3, 1, np.float64), (2, 8, np.float64),
                               (2, 8, np.float32)):
        theta = np.random.default_rng(47).standard_normal((pat.n_params, c_out, c_in))
        theta = theta.astype(dtype)
        want = np.zeros((m, n, c_out, c_in), dtype)
        np.add.at(want, (pat.rows, pat.cols), theta[pat.params])
        for kernel in (cpu.gather_w, cpu.gather_w.serial):
            w = np.full((m, c_out, n, c_in), np.nan, dtype)
            kernel(theta, indptr, cols, params, complete, w)
            np.testing.assert_allclose(w, want.transpose(0, 2, 1, 3), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stream_writes_only_its_rows(dtype):
    """A chunk's rows ``lo:hi`` of ``y = x @ w``, nothing else: its whole-vector stores
    run into the next rows (written after) but never past row ``hi``, which another
    thread owns.  Outputs of 1 to 3 vectors and odd widths; blocks of 24 and 8 rows and
    tail rows."""
    from paramshare_nb._kernels import small_cpu
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(41)
    for o in (1, 3, lanes - 1, lanes, lanes + 3, 2 * lanes, 2 * lanes + 1, 3 * lanes - 2):
        op = -(-o // lanes) * lanes
        w = np.zeros((6, op), dtype)
        w[:, :o] = rng.standard_normal((6, o))
        x = rng.standard_normal((64, 6)).astype(dtype)
        # blocks of 24 rows, then of 8, then single rows (some ranges end in each)
        for lo, hi in ((0, 64), (0, 60), (5, 58), (3, 19), (8, 16), (5, 6), (7, 7)):
            y = np.full((64, o), np.nan, dtype)
            small_cpu._stream(x, w, y, lo, hi)
            assert_close(y[lo:hi], x[lo:hi] @ w[:, :o], dtype)
            assert np.isnan(y[:lo]).all() and np.isnan(y[hi:]).all(), (o, lo, hi)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 24), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 21), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_small_w_streaming_property(m, n, c_out, c_in, batch, dtype, seed):
    """Any small thin W: forward, dx and dtheta of the streamed path against the reference."""
    from paramshare_nb import _dispatch
    if not _dispatch._streamed(m * c_out, n * c_in, np.dtype(dtype).itemsize):
        return
    rng = np.random.default_rng(seed)
    pat = _dense_random(m, n, int(rng.integers(1, 6)), seed)
    _check_channels(pat, ("materialize",), dtype, batch, c_in, c_out, rng)


def test_small_w_kernels_write_every_output():
    """NaN-filled outputs and scratch (np.empty may hand back any bytes), and a NaN in
    the row after the batch's last: the vectors that run past a row into the next only
    ever reach padding, never an output."""
    from paramshare_nb import _dispatch
    pat = _dense_random(5, 20, 4, 3)
    rng = np.random.default_rng(19)
    theta = rng.standard_normal((4, 1, 1))
    x = rng.standard_normal((14, 20, 1))
    dy = rng.standard_normal((14, 5, 1))
    x[-1], dy[-1] = np.nan, np.nan  # only the first 13 rows are the batch
    y = np.full((13, 5, 1), np.nan)
    dx, dth = np.full((13, 20, 1), np.nan), np.full((4, 1, 1), np.nan)
    _dispatch.forward(x[:13], theta, pat, y, "materialize")
    _dispatch.grad(dy[:13], x[:13], theta, pat, dx, dth, "materialize")
    assert_close(y, ref.forward(x[:13], theta, pat))
    rdx, rdth = ref.grad(dy[:13], x[:13], theta, pat)
    assert_close(dx, rdx)
    assert_close(dth, rdth)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_outer_product_tiles(dtype, parallel, monkeypatch):
    """The diagonal's ``dtheta = a.T @ b`` on the outer-product tiles: widths of partial,
    2 and 3 vectors, rows over several blocks, chunks of rows; BLAS past 32 columns."""
    from paramshare_nb import _dispatch
    if parallel:
        monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    rng = np.random.default_rng(23)
    for rows, na, nk in ((1, 1, 1), (300, 3, 24), (257, 32, 32), (130, 5, 13), (40, 33, 7)):
        a = rng.standard_normal((rows, na)).astype(dtype)
        b = rng.standard_normal((rows, nk)).astype(dtype)
        out = np.full((na, nk), np.nan, dtype)
        _dispatch._outer_product(a, b, out)
        assert_close(out, a.T.astype(np.float64) @ b, dtype)


def test_prepared_calls_replay_and_respect_config(data, monkeypatch):
    """A call with plain C-contiguous arrays is prepared once per signature and replayed
    (spied: no second runner); other layouts, dtypes, SERIAL_WORK or config.max_bytes
    take the validated path again, and bad input still raises."""
    from paramshare_nb import _dispatch
    built = []
    for name in ("forward_runner", "grad_runner"):
        real = getattr(_dispatch, name)
        monkeypatch.setattr(_dispatch, name,
                            lambda *a, r=real, n=name, **k: built.append(n) or r(*a, **k))
    pat = _dense_random(4, 6, 3, 0)  # a fresh pattern: nothing prepared yet
    theta, x, dy = data("multi", np.float32, True, (3, 2))
    theta, x, dy = theta[:3].copy(), x[..., :6].copy(), dy[..., :4].copy()
    rdx, rdth = ref.grad(dy, x, theta, pat)
    for _ in range(3):
        assert_close(ps.tied_matmul(x, theta, pat, method="materialize"),
                     ref.forward(x, theta, pat))
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method="materialize")
        assert_close(dx, rdx)
        assert_close(dth, rdth)
    assert built == ["forward_runner", "grad_runner"]
    # backend="cpu" (autograd's TiedMatmul passes it) replays the same calls
    assert_close(ps.tied_matmul(x, theta, pat, method="materialize", backend="cpu"),
                 ref.forward(x, theta, pat))
    assert_close(ps.tied_matmul_grad(dy, x, theta, pat, method="materialize", backend="cpu")[1],
                 rdth)
    assert built == ["forward_runner", "grad_runner"]
    x_t = np.asfortranarray(x)  # another layout: the validated path, same answer
    assert_close(ps.tied_matmul(x_t, theta, pat, method="materialize"), ref.forward(x, theta, pat))
    assert built[-1] == "forward_runner"
    # the key fixes type, shape and dtype, not layout: a read-only or Fortran array of a
    # replayed signature is checked and copied, whichever argument it is
    x_ro, theta_ro = x.copy(), theta.copy()
    x_ro.flags.writeable = theta_ro.flags.writeable = False
    theta_f = np.repeat(theta, 2)[::2]  # strided (theta is 1-D here)
    del built[:]
    for args in ((x_ro, theta), (x, theta_ro), (x, theta_f)):
        assert_close(ps.tied_matmul(*args, pat, method="materialize"), ref.forward(x, theta, pat))
    grad_args = ((np.asfortranarray(dy), x, theta), (dy, x_ro, theta), (dy, x, theta_ro),
                 (dy, x, theta_f))
    for args in grad_args:
        for got, want in zip(ps.tied_matmul_grad(*args, pat, method="materialize"), (rdx, rdth)):
            assert_close(got, want)
    assert built == ["forward_runner"] * 3 + ["grad_runner"] * 4
    with pytest.raises(ValueError, match="x must have shape"):
        ps.tied_matmul(x[..., :5].copy(), theta, pat)
    with config.override(max_bytes=8):
        with pytest.raises(MemoryError):
            ps.tied_matmul(x, theta, pat, method="materialize")
    monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    built.clear()
    for scale in (1, 2):  # new values, same signature: replayed, not a stale result
        xs, dys = x * scale, dy - scale
        assert_close(ps.tied_matmul(xs, theta, pat, method="materialize"),
                     ref.forward(xs, theta, pat))
        for got, want in zip(ps.tied_matmul_grad(dys, xs, theta, pat, method="materialize"),
                             ref.grad(dys, xs, theta, pat)):
            assert_close(got, want)
    assert built == ["forward_runner", "grad_runner"]  # parallel work: kept per thread count
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert_close(ps.tied_matmul(x, theta, pat, method="materialize"),
                     ref.forward(x, theta, pat))
    finally:
        numba.set_num_threads(threads)
    assert built[2:] == (["forward_runner"] if threads > 1 else [])  # planned again


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_dtheta_in_both_orientations(dtype):
    """``csr``'s ``dtheta`` runs its tiles along the longer channel side (dtheta's transpose
    when ``C_in < C_out``); multi-edges, a sparse design, tile padding on both sides."""
    from paramshare_nb import _dispatch
    rng = np.random.default_rng(9)
    for name in ("multi", "cayley"):
        pat = PATTERNS[name]
        m, n = pat.shape
        for c_in, c_out in ((1, 16), (2, 3), (3, 2), (5, 9), (16, 1)):
            x = rng.standard_normal((3, n, c_in)).astype(dtype)
            dy = rng.standard_normal((3, m, c_out)).astype(dtype)
            theta = rng.standard_normal((pat.n_params, c_out, c_in)).astype(dtype)
            dtheta = np.full_like(theta, np.nan)
            _dispatch._csr_dtheta(dy, x, pat, dtheta)
            assert_close(dtheta, ref.grad(dy, x, theta, pat)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_tiles_take_any_batch_tail(dtype):
    """``csr``'s 4-element tiles with a tail of 1, 2 or 3 elements (the tile repeats the
    last one and stores only the real ones), forward and ``dx``, against the reference; an
    output past the batch is never written."""
    pat = PATTERNS["cayley"]
    m, n = pat.shape
    rng = np.random.default_rng(12)
    for c_in, c_out in ((3, 16), (5, 2)):
        theta = rng.standard_normal((pat.n_params, c_out, c_in)).astype(dtype)
        for batch in range(1, 10):
            x = rng.standard_normal((batch, n, c_in)).astype(dtype)
            dy = rng.standard_normal((batch, m, c_out)).astype(dtype)
            assert_close(ps.tied_matmul(x, theta, pat, method="csr"), ref.forward(x, theta, pat))
            dx, _ = ps.tied_matmul_grad(dy, x, theta, pat, method="csr")
            assert_close(dx, ref.grad(dy, x, theta, pat)[0])
            out = np.full((batch + 1, m, c_out), 7.0, dtype)
            ps.tied_matmul(x, theta, pat, method="csr", out=out[:batch])
            assert (out[batch] == 7.0).all()


def test_scalar_csr_dtheta_takes_the_fused_pass(monkeypatch):
    """Scalar ``dtheta`` by ``csr`` with ``dx`` by another strategy: the fused scalar pass
    computes both (the channel tiles would use 1 lane of 64)."""
    from paramshare_nb import _dispatch
    fused = []
    monkeypatch.setattr(_dispatch, "_scalar_grad", lambda *a, f=_dispatch._scalar_grad:
                        fused.append(1) or f(*a))
    monkeypatch.setattr(_dispatch, "_csr_dtheta", None)  # not called
    pat = PATTERNS["cayley"]
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((5, pat.shape[1], 1)), rng.standard_normal((5, pat.shape[0], 1))
    theta = rng.standard_normal((pat.n_params, 1, 1))
    dx, dtheta = np.full_like(x, np.nan), np.full_like(theta, np.nan)
    _dispatch._pair_runner(pat, 5, 1, 1, x.dtype, "materialize", "csr")(dy, x, theta, dx, dtheta)
    rdx, rdth = ref.grad(dy, x, theta, pat)
    assert_close(dx, rdx)
    assert_close(dtheta, rdth)
    assert fused == [1]


def test_dtheta_choice_counts_csr_own_kernels():
    """The planner prices ``csr``'s ``dtheta`` by its own tiles, not by its forward: for a
    Deep Sets first layer (1 -> 16 channels) csr's dtheta took 4-5x the time of the
    materialised ``dW``, and the planner picked it."""
    from paramshare_nb import _dispatch
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(16)))
    costs = _dispatch.choose(pat, 64, 1, 16, 4)[1]
    assert _dispatch._csr_dtheta_cost(_dispatch.plan_of(pat), 64, 1, 16, 4) > costs["csr"]
    assert _dispatch._choose_grad(pat, 64, 1, 16, 4)[1] != "csr"


def test_planner_prices_what_the_runners_run():
    """Choices the cost model got wrong by 2-4x before it priced what actually runs
    (measured; see the constants in ``_dispatch``)."""
    from paramshare_nb import _dispatch
    c16 = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(16)))
    # a small scalar W streams dx, dW and dtheta through one call (2.4 against csr's 5.9 us)
    assert _dispatch._choose_grad(c16, 16, 1, 1, 4) == ("materialize", "materialize")
    # materialize's dtheta is BLAS's dense dW and its reduction, priced as such (and no W):
    # at batch 4 csr's tiles win (C_64, 1 -> 8 channels: 55 against 125 us)
    c64 = ps.dense_pattern(ps.Action.same(ps.groups.cyclic(64)))
    assert _dispatch._choose_grad(c64, 4, 1, 8, 4) == ("materialize", "csr")
    # a batch of one is GEMV, not a GEMM at 1/65 of its rate: materialize's dx (35 against
    # csr's 61 us)
    assert _dispatch._choose_grad(c64, 1, 1, 8, 4) == ("materialize", "csr")
    # a larger GEMM runs nearer BLAS's peak: the digits demo's last batch of 30 keeps W and
    # dW dense (1.65 against 2.25-3.38 ms for the mixed or csr pairs), and so does w2
    # (2.5 against 4.8 ms with csr's dtheta)
    d4 = ps.dense_pattern(ps.Action.same(ps.groups.square_symmetries(8)))
    assert _dispatch._choose_grad(d4, 30, 16, 16, 4) == ("materialize", "materialize")
    assert _dispatch._choose_grad(c64, 64, 16, 16, 4) == ("materialize", "materialize")


def test_strategies_agree(data):
    pat = PATTERNS["tensor2to1"]
    theta, x, dy = data("tensor2to1", np.float64, False, (4,))
    ys = {m: ps.tied_matmul(x, theta, pat, method=m) for m in METHODS}
    gs = {m: ps.tied_matmul_grad(dy, x, theta, pat, method=m) for m in METHODS}
    for m in METHODS:
        assert_close(ys[m], ys[METHODS[0]])
        assert_close(gs[m][0], gs[METHODS[0]][0])
        assert_close(gs[m][1], gs[METHODS[0]][1])


def test_gradients_by_finite_differences(data):
    """<dy, J v> from central differences equals the backward's <dx, v> + <dth, u>."""
    pat = PATTERNS["multi"]
    theta, x, dy = data("multi", np.float64, False, (2,))
    rng = np.random.default_rng(3)
    v, u = rng.standard_normal(x.shape), rng.standard_normal(theta.shape)
    eps = 1e-6
    yp = ps.tied_matmul(x + eps * v, theta + eps * u, pat)
    ym = ps.tied_matmul(x - eps * v, theta - eps * u, pat)
    numeric = np.sum(dy * (yp - ym)) / (2 * eps)
    dx, dth = ps.tied_matmul_grad(dy, x, theta, pat)
    analytic = np.sum(dx * v) + np.sum(dth * u)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7)


def test_mixed_precision_promotes(data):
    pat = PATTERNS["deepsets"]
    theta, x, _ = data("deepsets", np.float32, True, (3,))
    y = ps.tied_matmul(x, theta.astype(np.float64), pat)
    assert y.dtype == np.float64
    assert_close(y, ref.forward(x.astype(np.float64), theta.astype(np.float64), pat))


@pytest.mark.parametrize("scalar", [True, False])
def test_big_endian_inputs_compute_in_native_order(data, scalar):
    # every input non-native: no kernel may see a big-endian array (numba refuses them)
    pat = PATTERNS["deepsets"]
    theta, x, dy = data("deepsets", np.float64, scalar, (3,))
    be = [a.astype(a.dtype.newbyteorder(">")) for a in (theta, x, dy)]
    y = ps.tied_matmul(be[1], be[0], pat)
    dx, dth = ps.tied_matmul_grad(be[2], be[1], be[0], pat)
    assert y.dtype.isnative and dx.dtype.isnative and dth.dtype.isnative
    assert_close(y, ref.forward(x, theta, pat))
    rdx, rdth = ref.grad(dy, x, theta, pat)
    assert_close(dx, rdx)
    assert_close(dth, rdth)
    assert_close(ps.materialize(be[0], pat), ps.materialize(theta, pat))


def test_layouts_and_readonly_are_accepted(data):
    pat = PATTERNS["cyclic"]
    theta, x, _ = data("cyclic", np.float64, False, (3, 2))
    expected = ref.forward(x, theta, pat)
    xf = np.asfortranarray(x)
    xr = x.copy()
    xr.setflags(write=False)
    xs = np.repeat(x, 2, axis=0)[::2]  # non-contiguous view
    for xx in (xf, xr, xs):
        assert_close(ps.tied_matmul(xx, theta, pat), expected)
    assert_close(ps.tied_matmul(x.tolist(), theta.tolist(), pat), expected)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_out_argument(data):
    pat = PATTERNS["d4"]
    theta, x, dy = data("d4", np.float32, False, (3,))
    out = np.full(dy.shape, np.nan, np.float32)
    y = ps.tied_matmul(x, theta, pat, out=out)
    assert y is out
    assert_close(out, ref.forward(x, theta, pat))
    strided = np.full(dy.shape[:-1] + (4,), np.nan, np.float32)[..., ::2]
    ps.tied_matmul(x, theta, pat, out=strided)
    assert_close(strided, ref.forward(x, theta, pat))
    # ndarray subclasses are written through a temporary (they reached the kernels: a
    # numba typing error for every strategy, found by a hunt)
    scalar_x, scalar_theta = x[..., 0].reshape(3, -1), theta[:, 0, 0].copy()
    want = ref.forward(scalar_x[..., None], scalar_theta[:, None, None], pat)[..., 0]
    for method in METHODS:
        for sub in (np.ma.masked_array(np.zeros(want.shape, np.float32)),
                    np.matrix(np.zeros(want.shape, np.float32))):
            got = ps.tied_matmul(scalar_x, scalar_theta, pat, out=sub, method=method)
            assert got is sub
            assert_close(np.asarray(sub), want)


def test_materialize_matches_reference(data):
    for name in ("multi", "d4"):
        pat = PATTERNS[name]
        for scalar in (True, False):
            theta, _, _ = data(name, np.float32, scalar, (1,))
            w = ps.materialize(theta, pat)
            expected = ref.dense_w(theta, pat)
            assert_close(w, expected[:, 0, :, 0] if scalar else expected)


def test_bad_inputs_raise_clear_errors(data):
    pat = PATTERNS["deepsets"]  # (5, 5), 2 params
    theta, x, dy = data("deepsets", np.float64, False, (3,))
    keep = x.copy()
    with pytest.raises(TypeError, match="pattern must be"):
        ps.tied_matmul(x, theta, "not a pattern")
    with pytest.raises(ValueError, match=r"theta must have shape \(2,\) or \(2, C_out, C_in\)"):
        ps.tied_matmul(x, theta[:1], pat)
    with pytest.raises(ValueError,
                       match=r"x must have shape \(\.\.\., N, C_in\) = \(\.\.\., 5, 3\)"):
        ps.tied_matmul(x[..., :2], theta, pat)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., N\) = \(\.\.\., 5\)"):
        ps.tied_matmul(x[..., 0][..., :4], theta[:, 0, 0], pat)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array, got dtype int64"):
        ps.tied_matmul(x.astype(np.int64), theta, pat)
    with pytest.raises(TypeError, match="theta must be a float32 or float64"):
        ps.tied_matmul(x, theta.astype(np.complex128), pat)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 5, 2\)"):
        ps.tied_matmul(x, theta, pat, out=np.empty((3, 5, 3)))
    with pytest.raises(TypeError, match="out must have dtype float64"):
        ps.tied_matmul(x, theta, pat, out=np.empty((3, 5, 2), np.float32))
    with pytest.raises(TypeError, match="float64 .the result dtype. in native byte order, got >f8"):
        ps.tied_matmul(x, theta, pat, out=np.empty((3, 5, 2), ">f8"))
    ro = np.empty((3, 5, 2))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        ps.tied_matmul(x, theta, pat, out=ro)
    with pytest.raises(ValueError, match="method must be one of"):
        ps.tied_matmul(x, theta, pat, method="fast")
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(3, 5, 2\)"):
        ps.tied_matmul_grad(dy[:2], x, theta, pat)
    with pytest.raises(ValueError, match="backend must be"):
        ps.tied_matmul(x, theta, pat, backend="tpu")
    # an array is refused by name, not by numpy's "truth value ... is ambiguous"
    for backend in (np.array(["cpu", "cuda"]), np.array("cuda")):
        with pytest.raises(ValueError, match="backend must be None, 'cpu' or 'cuda'"):
            ps.tied_matmul(x, theta, pat, backend=backend)
        with pytest.raises(ValueError, match="backend must be None, 'cpu' or 'cuda'"):
            ps.tied_matmul_grad(dy, x, theta, pat, backend=backend)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array, got None$"):
        ps.tied_matmul(None, theta, pat)
    np.testing.assert_array_equal(ps.tied_matmul(x, theta, pat, backend=np.str_("cpu")),
                                  ps.tied_matmul(x, theta, pat))  # a str, as method= takes

    class Tracked:  # as a PyTorch CUDA tensor that requires grad
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires "
                               "grad")
    with pytest.raises(TypeError, match=r"would not share its memory .*tensor\.detach\(\)"):
        ps.tied_matmul(Tracked(), theta, pat)
    with pytest.raises(TypeError, match="would not share its memory"):
        ps.tied_matmul_grad(dy, x, Tracked(), pat)

    class TrackedOnHost:  # as a PyTorch CPU tensor that requires grad
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad")
    with pytest.raises(TypeError, match=r"x would not convert .*tensor\.detach\(\)"):
        ps.tied_matmul(TrackedOnHost(), theta, pat)
    # a masked array's mask would be dropped by np.asarray: refused, not silently unmasked
    masked = np.ma.masked_array(x, mask=np.zeros(x.shape, bool))
    with pytest.raises(TypeError, match=r"x is a masked array.*x\.filled\(0\)"):
        ps.tied_matmul(masked, theta, pat)
    with pytest.raises(TypeError, match="dy is a masked array"):
        ps.tied_matmul_grad(np.ma.masked_array(dy), x, theta, pat)
    np.testing.assert_array_equal(x, keep)


def test_materialize_memory_bound(data):
    pat = PATTERNS["d4"]
    theta, x, _ = data("d4", np.float64, False, (1,))
    with config.override(max_bytes=1024):
        # sizes under a MiB in KiB or bytes, not "0.0 MiB"
        small = r"\(18, 27\) = 3.8 KiB, over config.max_bytes = 1.0 KiB"
        with pytest.raises(MemoryError, match=small):
            ps.tied_matmul(x, theta, pat, method="materialize")
        with pytest.raises(MemoryError, match="config.max_bytes"):
            ps.materialize(theta, pat)
        ps.tied_matmul(x, theta, pat)  # auto never picks a W over the bound


def test_empty_pattern_dimensions():
    pat = Pattern((0, 3), [], [], [], n_params=2)
    y = ps.tied_matmul(np.ones((4, 3), np.float32), np.ones(2, np.float32), pat)
    assert y.shape == (4, 0) and y.dtype == np.float32
    dx, dth = ps.tied_matmul_grad(np.ones((4, 0)), np.ones((4, 3)), np.ones(2), pat)
    assert not dx.any() and not dth.any()
    pat = Pattern((3, 2), [], [], [], n_params=1)  # every entry a structural zero
    y = ps.tied_matmul(np.ones((2, 2)), np.ones(1), pat)
    np.testing.assert_array_equal(y, np.zeros((2, 3)))


@pytest.mark.parametrize("name", ["d4", "cyclic"])
@pytest.mark.parametrize("scalar", [True, False], ids=["scalar", "channels"])
def test_materialize_reuse_sees_in_place_updates(data, name, scalar):
    """The backward reuses the forward's W only while theta is unchanged."""
    from paramshare_nb import _dispatch
    pat = PATTERNS[name]
    theta, x, dy = data(name, np.float64, scalar, (3,))
    assert _dispatch._keep_w(pat, 1, 1)  # the forward keeps W: the reuse is tested
    for step in (1.0, 2.0):  # unchanged theta (W reused), then an optimiser step in place
        theta = theta.copy()
        ps.tied_matmul(x, theta, pat, method="materialize")
        theta *= step
        dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method="materialize")
        rdx, rdth = ref.grad(dy, x, theta, pat)
        assert_close(dx, rdx)
        assert_close(dth, rdth)


@pytest.mark.parametrize("size", [5, 5000])  # bytes compared, and integer views
def test_reuse_compares_theta_by_its_bits(size):
    """W is reused only for theta with the same bits: a nan equals itself (the same W),
    -0.0 differs from 0.0 (W's zeros would carry the other sign)."""
    from paramshare_nb._dispatch import _same_bits
    a = np.random.default_rng(0).standard_normal(size)
    a[0], a[-1] = np.nan, 0.0
    assert _same_bits(a, a.copy())
    b = a.copy()
    b[-1] = -0.0
    assert not _same_bits(a, b)
    b = a.copy()
    b[size // 2] = np.nextafter(b[size // 2], np.inf)
    assert not _same_bits(a, b)
    assert not _same_bits(a, a.astype(np.float32))
    assert not _same_bits(a, a.reshape(size, 1))


@pytest.mark.parametrize("method", METHODS)
def test_parallel_drivers_match_reference(data, monkeypatch, method):
    """Small inputs run the serial twins; force the ``parallel=True`` drivers too."""
    from paramshare_nb import _dispatch
    monkeypatch.setattr(_dispatch, "SERIAL_WORK", 0)
    for name in ("multi", "deepsets", "deepsets_perturbed", "tensor2to1"):
        pat = PATTERNS[name]
        for scalar in (True, False):
            theta, x, dy = data(name, np.float32, scalar, (3, 2))
            assert_close(ps.tied_matmul(x, theta, pat, method=method), ref.forward(x, theta, pat))
            dx, dth = ps.tied_matmul_grad(dy, x, theta, pat, method=method)
            rdx, rdth = ref.grad(dy, x, theta, pat)
            assert_close(dx, rdx)
            assert_close(dth, rdth)


def test_one_pass_needs_a_batch_element_per_thread(data, monkeypatch):
    """With fewer batch elements than threads the Deep Sets complement keeps the
    separate (row-parallel, BLAS) passes; both routes match the reference."""
    from paramshare_nb import _dispatch
    calls = []
    one_pass = _dispatch._diagonal_complement
    monkeypatch.setattr(_dispatch, "_diagonal_complement",
                        lambda *a: calls.append(a[2].shape[0]) or one_pass(*a))
    pat = PATTERNS["deepsets"]
    theta, x, _ = data("deepsets", np.float64, False, (3,))
    for threads, used in ((1, [3]), (4, [])):
        calls.clear()
        monkeypatch.setattr(_dispatch, "_chunks", lambda work, t=threads: t)
        assert_close(ps.tied_matmul(x, theta, pat, method="complement"),
                     ref.forward(x, theta, pat))
        assert calls == used


def test_all_finite_against_numpy():
    """``cpu.all_finite`` (``"materialize"``'s check of its input): every length through 4
    vectors and a partial one, an ``inf``, ``-inf`` or ``nan`` at every place, values near
    the largest (whose sum overflows, yet all finite), a 3-D array."""
    from paramshare_nb._kernels import cpu
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        for n in range(0, 4 * 32 // np.dtype(dtype).itemsize + 3):
            a = rng.standard_normal(n).astype(dtype)
            assert cpu.all_finite(a)
            for j in range(n):
                b = a.copy()
                b[j] = (np.inf, -np.inf, np.nan)[j % 3]
                assert not cpu.all_finite(b)
        assert cpu.all_finite(np.full(40, np.finfo(dtype).max, dtype))
        a = rng.standard_normal((7, 5, 3)).astype(dtype)
        assert cpu.all_finite(a)
        a[6, 4, 2] = np.nan
        assert not cpu.all_finite(a)


def test_serial_twins_exist():
    from paramshare_nb._kernels import cpu, csr_cpu, small_cpu, sums_cpu, tile_sums_cpu
    for k in (csr_cpu.csr_rows, csr_cpu.csr_dtheta, cpu.gather_sums, cpu.scalar_forward,
              cpu.reduce_dw_rows, sums_cpu.diagonal_complement, sums_cpu.gather_sums,
              sums_cpu.block_totals, small_cpu.small_forward, small_cpu.small_backward,
              small_cpu.fused_backward(5, 3),
              small_cpu.outer_products, tile_sums_cpu.gather_forward,
              tile_sums_cpu.gather_dtheta):
        assert k.serial.py_func.__qualname__ == k.py_func.__qualname__ + "_serial"


def test_complement_grad_reuses_dy_block_totals(data):
    """Deep Sets: the base's row sum of dy is the dx pass's block total (one pass saved)."""
    from paramshare_nb import _dispatch
    pat = PATTERNS["deepsets"]
    ptr, blocks = _dispatch._dy_blocks(pat)
    assert ptr.tolist() == [0, 1] and blocks.tolist() == [0]
    for name in ("deepsets", "deepsets_perturbed", "tensor2to1"):
        theta, x, dy = data(name, np.float32, False, (3, 2))
        dx, dth = ps.tied_matmul_grad(dy, x, theta, PATTERNS[name], method="complement")
        rdx, rdth = ref.grad(dy, x, theta, PATTERNS[name])
        assert_close(dx, rdx)
        assert_close(dth, rdth)


def _zero_size_cases():
    """(name, call(method) -> arrays, expected shapes): every empty dimension in turn."""
    pd = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(4)))  # (4, 4), 2 params
    p0 = Pattern((3, 4), [], [], [], n_params=0)
    pn0 = Pattern((3, 0), [], [], [], n_params=0)
    pz = Pattern((3, 4), [], [], [], n_params=2)  # nnz == 0 with parameters
    one = np.ones
    return {
        "fwd_N0": (lambda mt: ps.tied_matmul(one((2, 0)), one(0), pn0, method=mt), [(2, 3)]),
        "fwd_Cin0": (lambda mt: ps.tied_matmul(one((2, 4, 0)), one((2, 5, 0)), pd, method=mt),
                     [(2, 4, 5)]),
        "fwd_P0_channels": (lambda mt: ps.tied_matmul(one((2, 4, 3)), one((0, 2, 3)), p0,
                                                      method=mt), [(2, 3, 2)]),
        "fwd_P0_scalar": (lambda mt: ps.tied_matmul(one((2, 4)), one(0), p0, method=mt), [(2, 3)]),
        "fwd_nnz0": (lambda mt: ps.tied_matmul(one((2, 4, 3)), one((2, 5, 3)), pz, method=mt),
                     [(2, 3, 5)]),
        "fwd_batch0": (lambda mt: ps.tied_matmul(one((0, 4, 3)), one((2, 5, 3)), pd, method=mt),
                       [(0, 4, 5)]),
        "grad_N0": (lambda mt: ps.tied_matmul_grad(one((2, 3)), one((2, 0)), one(0), pn0,
                                                   method=mt), [(2, 0), (0,)]),
        "grad_Cout0": (lambda mt: ps.tied_matmul_grad(one((2, 4, 0)), one((2, 4, 3)),
                                                      one((2, 0, 3)), pd, method=mt),
                       [(2, 4, 3), (2, 0, 3)]),
        "grad_Cin0": (lambda mt: ps.tied_matmul_grad(one((2, 4, 3)), one((2, 4, 0)),
                                                     one((2, 3, 0)), pd, method=mt),
                      [(2, 4, 0), (2, 3, 0)]),
        "grad_P0_scalar": (lambda mt: ps.tied_matmul_grad(one((2, 3)), one((2, 4)), one(0), p0,
                                                          method=mt), [(2, 4), (0,)]),
        "grad_P0_channels": (lambda mt: ps.tied_matmul_grad(one((2, 3, 2)), one((2, 4, 3)),
                                                            one((0, 2, 3)), p0, method=mt),
                             [(2, 4, 3), (0, 2, 3)]),
        "grad_nnz0": (lambda mt: ps.tied_matmul_grad(one((2, 3, 5)), one((2, 4, 3)),
                                                     one((2, 5, 3)), pz, method=mt),
                      [(2, 4, 3), (2, 5, 3)]),
        "grad_batch0": (lambda mt: ps.tied_matmul_grad(one((0, 4, 5)), one((0, 4, 3)),
                                                       one((2, 5, 3)), pd, method=mt),
                        [(0, 4, 3), (2, 5, 3)]),
    }


ZERO_SIZE = _zero_size_cases()


@pytest.mark.parametrize("method", METHODS + ["auto"])
@pytest.mark.parametrize("case", list(ZERO_SIZE))
def test_zero_size_dimensions_give_zeros(case, method):
    """Empty sums (N, C_in, C_out, P, nnz or batch zero) give correctly shaped zeros."""
    call, shapes = ZERO_SIZE[case]
    res = call(method)
    res = res if isinstance(res, tuple) else (res,)
    assert [r.shape for r in res] == shapes
    for r in res:
        assert r.dtype == np.float64
        np.testing.assert_array_equal(r, np.zeros(r.shape))


def test_zero_size_out_and_materialize():
    p0 = Pattern((3, 4), [], [], [], n_params=0)
    pd = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(4)))
    out = np.full((2, 3, 2), np.nan, np.float32)
    y = ps.tied_matmul(np.ones((2, 4, 3), np.float32), np.ones((0, 2, 3), np.float32), p0, out=out)
    assert y is out
    np.testing.assert_array_equal(out, 0)
    out = np.full((2, 4, 5), np.nan)
    ps.tied_matmul(np.ones((2, 4, 0)), np.ones((2, 5, 0)), pd, out=out)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(ps.materialize(np.ones(0), p0), np.zeros((3, 4)))
    np.testing.assert_array_equal(ps.materialize(np.ones((0, 2, 3)), p0), np.zeros((3, 2, 4, 3)))
    assert ps.materialize(np.ones((2, 0, 3)), pd).shape == (4, 0, 4, 3)
    assert ps.materialize(np.ones((2, 3, 0)), pd).shape == (4, 3, 4, 0)


def _batch_of_3(rng, pat, dtype, channels):
    """Random ``theta, x, dy`` for a batch of 3; ``channels`` is ``(C_out, C_in)`` or None."""
    m, n = pat.shape
    if channels is None:
        shapes = ((pat.n_params,), (3, n), (3, m))
    else:
        co, ci = channels
        shapes = ((pat.n_params, co, ci), (3, n, ci), (3, m, co))
    return (rng.standard_normal(s).astype(dtype) for s in shapes)


def _same_nonfinite(actual, expected):
    """Equal inf/nan pattern (infinities with their sign), finite entries close."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    np.testing.assert_array_equal(actual[np.isinf(actual)], expected[np.isinf(expected)])
    fin = np.isfinite(expected)
    assert_close(actual[fin], expected[fin])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method", METHODS + ["auto"])
@pytest.mark.parametrize("name", ["deepsets", "tensor2to1"])
@pytest.mark.parametrize("scalar", [True, False], ids=["scalar", "channels"])
def test_nonfinite_inputs_match_reference(method, name, scalar):
    """An inf or nan in x (or dy) gives the dense product's inf/nan pattern, not
    ``inf - inf = nan`` from complement sums.  Dense patterns, one non-finite entry:
    then the pattern does not depend on the summation order."""
    pat = PATTERNS[name]
    rng = np.random.default_rng(5)
    for value in (np.inf, -np.inf, np.nan):
        for dtype in DTYPES:
            theta, x, dy = _batch_of_3(rng, pat, dtype, None if scalar else (2, 3))
            xb = x.copy()
            xb[1, 2] = value
            _same_nonfinite(ps.tied_matmul(xb, theta, pat, method=method),
                            ref.forward(xb, theta, pat))
            _same_nonfinite(ps.tied_matmul_grad(dy, xb, theta, pat, method=method)[1],
                            ref.grad(dy, xb, theta, pat)[1])
            dyb = dy.copy()
            dyb[1, 2] = value
            dx, dth = ps.tied_matmul_grad(dyb, x, theta, pat, method=method)
            _same_nonfinite(dx, ref.grad(dyb, x, theta, pat)[0])
            # dtheta with a non-finite dy: summing x before multiplying by dy (gather)
            # legitimately differs from the reference's per-entry products (inf * (a + b)
            # against inf * a + inf * b); the complement sums must agree with gather
            if method in ("complement", "scatter"):
                _same_nonfinite(dth, ps.tied_matmul_grad(dyb, x, theta, pat,
                                                         method="gather")[1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["cayley", "multi", "deepsets_perturbed"])
@pytest.mark.parametrize("scalar", [True, False], ids=["scalar", "channels"])
def test_nonfinite_inputs_skip_structural_zeros(name, scalar):
    """Patterns with structural zeros: an inf or nan input reaches only the outputs whose
    sums hold it.  "materialize" (streamed small W for scalars, BLAS with 16 channels)
    must not turn a structural zero's 0 * inf into nan, and multiplies each entry's sum of
    parameters (:func:`_entry_products`)."""
    pat = PATTERNS[name]
    m, n = pat.shape
    rng = np.random.default_rng(6)
    filled = np.zeros((m, n), bool)
    filled[pat.rows, pat.cols] = True
    hole = np.argwhere(~filled)[0]
    for value in (np.inf, np.nan):
        for dtype in DTYPES:
            theta, x, dy = _batch_of_3(rng, pat, dtype, None if scalar else (16, 16))
            xb, dyb = x.copy(), dy.copy()
            # the non-finite input sits in a column (x) or row (dy) with a structural zero
            xb[1, hole[1]], dyb[1, hole[0]] = value, value
            y = ps.tied_matmul(xb, theta, pat, method="materialize")
            want = _entry_products(xb, theta, pat)
            assert np.isfinite(want).any()  # the input does not reach every output
            _same_nonfinite(y, want)
            got = ps.tied_matmul_grad(dyb, x, theta, pat, method="materialize")
            theta_t = theta if scalar else np.ascontiguousarray(theta.transpose(0, 2, 1))
            _same_nonfinite(got[0], _entry_products(dyb, theta_t, pat.T))
            # dW's entries hold no 0 * inf: the dense dW summed by parameter, as csr's
            _same_nonfinite(got[1], ps.tied_matmul_grad(dyb, x, theta, pat, method="csr")[1])
            # finite inputs: the dense path, same answer as the reference
            assert_close(ps.tied_matmul(x, theta, pat, method="materialize"),
                         ref.forward(x, theta, pat))


def _entry_products(x, theta, pat):
    """``y = W x`` over the stored entries only, each entry ``W[m, n]`` the sum of its
    parameters: the dense product without a structural zero's ``0 * inf``."""
    scalar = theta.ndim == 1
    x3 = x[..., None] if scalar else x
    t3 = theta[:, None, None] if scalar else theta
    m, n = pat.shape
    w = np.zeros((m, n) + t3.shape[1:], t3.dtype)  # (M, N, Co, Ci)
    np.add.at(w, (pat.rows, pat.cols), t3[pat.params])
    filled = np.zeros((m, n), bool)
    filled[pat.rows, pat.cols] = True
    with np.errstate(invalid="ignore"):
        prod = w[None] * x3[:, None, :, None, :]  # (B, M, N, Co, Ci)
    y = np.where(filled[None, :, :, None, None], prod, 0).sum(axis=(2, 4))
    return y[..., 0] if scalar else y


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_inputs_meet_each_entry_summed(dtype):
    """With multi-edges too, "materialize"'s sparse fallback multiplies W's entries (the sum
    of their parameters), as the dense product does: entry (0, 0) holds 1 - 2 = -1, so an
    inf in x[0] gives -inf, not inf - 2 inf = nan ("csr" multiplies edge by edge)."""
    pat = Pattern((2, 2), [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 0, 0])  # (1, 0) is empty
    theta = np.array([1, -2], dtype)
    np.testing.assert_array_equal(
        ps.tied_matmul(np.array([[np.inf, 1]], dtype), theta, pat, method="materialize"),
        [[-np.inf, 1]])
    dx, dth = ps.tied_matmul_grad(np.array([[np.inf, 1]], dtype), np.ones((1, 2), dtype),
                                  theta, pat, method="materialize")
    np.testing.assert_array_equal(dx, [[-np.inf, np.inf]])  # W.T dy, the hole skipped
    np.testing.assert_array_equal(dth, [np.inf, np.inf])
    rng = np.random.default_rng(3)  # channels: every entry's block summed first
    theta = rng.standard_normal((2, 2, 3)).astype(dtype)
    x = rng.standard_normal((2, 2, 3)).astype(dtype)
    x[0, 0, 1] = np.inf
    w = np.zeros((2, 2, 2, 3), dtype)  # (M, N, Co, Ci)
    np.add.at(w, (pat.rows, pat.cols), theta[pat.params])
    want = np.zeros((2, 2, 2), dtype)
    for b, m, co in np.ndindex(2, 2, 2):
        want[b, m, co] = sum(w[m, n, co] @ x[b, n] for n in range(2) if (m, n) != (1, 0))
    _same_nonfinite(ps.tied_matmul(x, theta, pat, method="materialize"), want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("method", ["complement", "scatter", "auto"])
def test_complement_needs_finite_theta_and_differences(method):
    """Complement sums with an inf or nan in theta (used by one row, or by none), or with
    theta_0 - theta_1 overflowing float32: the rows that never sum the bad value stay
    finite, as the per-entry sums ("csr") are.  Both the one-pass Deep Sets kernel
    (channels) and the separate passes (D4 on 3 x 3)."""
    d4 = ps.dense_pattern(ps.Action.same(ps.groups.square_symmetries(3)))
    ds = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(6)))
    unused = Pattern(ds.shape, ds.rows, ds.cols, ds.params, n_params=3)
    rng = np.random.default_rng(8)
    cases = []
    th = np.ones(d4.n_params)
    th[int(d4.params[4 * 9 + 4])] = np.inf  # the centre's own parameter: row 4 only
    cases.append((d4, th, np.ones((2, 9))))
    th = rng.standard_normal((3, 4, 4))
    th[2] = np.nan  # on no edge
    cases.append((unused, th, rng.standard_normal((4, 6, 4))))
    th = np.stack([2e38 * np.eye(4), -2e38 * np.eye(4)]).astype(np.float32)
    x = np.zeros((4, 6, 4), np.float32)
    x[:, 0] = 1.0
    cases.append((ds, th, x))
    for pat, theta, xx in cases:
        want = ps.tied_matmul(xx, theta, pat, method="csr")
        assert np.isfinite(want).any()
        _same_nonfinite(ps.tied_matmul(xx, theta, pat, method=method), want)
        dy = np.ones_like(want)
        _same_nonfinite(ps.tied_matmul_grad(dy, xx, theta, pat, method=method)[0],
                        ps.tied_matmul_grad(dy, xx, theta, pat, method="csr")[0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_input_with_auto_on_deepsets():
    """The brief's case: auto picks complement sums in float32 and must not return nan."""
    from paramshare_nb import _dispatch
    pat = ps.dense_pattern(ps.Action.same(ps.groups.symmetric(64)))
    theta = np.zeros((2, 8, 8), np.float32)
    theta[0] = np.eye(8)
    theta[1] = 2 * np.eye(8)
    x = np.ones((32, 64, 8), np.float32)
    assert _dispatch.choose(pat, 32, 8, 8, 4)[0] == "complement"
    x[0, 3, 1] = np.inf
    y = ps.tied_matmul(x, theta, pat)
    # channel 1 sums the inf with positive weights: inf, not inf - inf = nan (the zero
    # off-diagonal weights of theta give 0 * inf = nan in the other channels, as in
    # the dense product)
    assert np.isposinf(y[0, :, 1]).all() and not np.isnan(y[..., 1]).any()
    np.testing.assert_array_equal(y, ps.tied_matmul(x, theta, pat, method="gather"))
    _same_nonfinite(y[:2, :5], ref.forward(x[:2], theta, pat)[:, :5])


def test_materialize_float16_computes_in_float32():
    pat = PATTERNS["d4"]
    theta = np.arange(pat.n_params, dtype=np.float16)
    w = ps.materialize(theta, pat)
    assert w.dtype == np.float32  # as tied_matmul: float16 computes in float32
    np.testing.assert_array_equal(w, ps.materialize(theta.astype(np.float32), pat))
    y = ps.tied_matmul(np.ones(pat.shape[1], np.float16), theta, pat)
    assert y.dtype == np.float32


@pytest.mark.parametrize("preset", [None, ("OMP_WAIT_POLICY", "PASSIVE"),
                                    ("GOMP_SPINCOUNT", "500")])
def test_import_bounds_openmp_spinning(preset):
    """The import sets GOMP_SPINCOUNT (and KMP_BLOCKTIME) unless the user chose a wait
    policy; GNU OpenMP, loaded by numba's first parallel use, then spins that long (it
    prints its settings under OMP_DISPLAY_ENV=verbose)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env["OMP_DISPLAY_ENV"] = "verbose"
    if preset is not None:
        env[preset[0]] = preset[1]
    code = ("import os, numba, paramshare_nb; "
            "print([os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', "
            "'KMP_BLOCKTIME')]); numba.get_num_threads()")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    expected = {None: [None, "10000", "1"], "OMP_WAIT_POLICY": ["PASSIVE", None, None],
                "GOMP_SPINCOUNT": [None, "500", None]}[preset and preset[0]]
    assert str(expected) in run.stdout
    shown = run.stdout + run.stderr
    if "GOMP_SPINCOUNT = " not in shown:
        pytest.skip("numba's threading layer is not GNU OpenMP here")
    spins = {None: "10000", "OMP_WAIT_POLICY": "0", "GOMP_SPINCOUNT": "500"}[preset and preset[0]]
    assert f"GOMP_SPINCOUNT = '{spins}'" in shown
