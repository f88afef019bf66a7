import io
import warnings
import zipfile

import numpy as np
import pytest
from reference import brute_sparse_index

import paramshare_nb as ps
from paramshare_nb import groups, patterns, perm


def deep_sets(n):
    return ps.Action.same(groups.symmetric(n))


@pytest.mark.parametrize("act, count", [
    (deep_sets(6), 2),
    (ps.Action.same(groups.cyclic(7)), 7),
    (ps.Action.same(ps.tensor_power(groups.symmetric(4), 2)), 15),
    (ps.Action.same(ps.tensor_power(groups.symmetric(5), 2)), 15),
    (ps.Action(groups.symmetric(5), ps.tensor_power(groups.symmetric(5), 2)), 5),
    (ps.Action.invariant(ps.tensor_power(groups.symmetric(5), 2)), 2),
    (ps.Action.same(ps.regular(groups.dihedral(5))), 10),
], ids=["deepsets", "cyclic", "S4_2to2", "S5_2to2", "S5_1to2", "S5_2to0", "regD5"])
def test_dense_parameter_counts(act, count):
    pat = ps.dense_pattern(act)
    assert pat.n_params == count
    assert pat.nnz == act.n_in * act.n_out
    assert ps.is_equivariant(pat, act)


def test_dense_ids_first_appearance_row_major():
    idx = ps.dense_pattern(deep_sets(3)).index()
    assert idx.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    flat = idx.ravel()
    first = [int(flat[np.argmax(flat == p)]) for p in range(flat.max() + 1)]
    assert first == sorted(first)


def test_circulant_from_cyclic():
    idx = ps.dense_pattern(ps.Action.same(groups.cyclic(5))).index()
    for m in range(5):
        for n in range(5):
            assert idx[m, n] == idx[(m + 1) % 5, (n + 1) % 5]


def test_dense_is_maximal(rng):
    """A random G-equivariant matrix (group average) is constant on each dense class."""
    act = ps.Action(groups.dihedral(4), ps.tensor_power(groups.dihedral(4), 1))
    ein, eout = act.closure()
    w = rng.standard_normal((act.n_out, act.n_in))
    avg = np.mean([w[np.argsort(go)][:, np.argsort(gi)] for gi, go in zip(ein, eout)], axis=0)
    assert ps.is_equivariant(avg, act, atol=1e-12)
    idx = ps.dense_pattern(act).index()
    for p in range(idx.max() + 1):
        vals = avg[idx == p]
        np.testing.assert_allclose(vals, vals[0], atol=1e-12)


@pytest.mark.parametrize("gens", [groups.cyclic(6), ps.regular(groups.dihedral(5)),
                                  groups.grid_translations((3, 4))])
def test_sparse_counts_for_free_actions(gens):
    act = ps.Action.same(gens)
    n_orbits = ps.orbits(gens).max() + 1
    a_plus = 1 + len(gens)
    pat = ps.sparse_pattern(act)
    assert pat.n_params == n_orbits * n_orbits * a_plus
    assert ps.is_equivariant(pat, act)
    # each input feeds q * |A+| outputs
    assert np.all(np.bincount(pat.cols) == n_orbits * a_plus)


@pytest.mark.parametrize("act", [
    ps.Action.same(groups.dihedral(6)),  # not free: the orbits of offsets can coincide
    ps.Action.same(ps.regular(groups.dihedral(4))),
    ps.Action.same(groups.grid_translations((3, 4))),
    ps.Action(ps.regular(groups.cyclic(6)), groups.cyclic(6)),
    ps.Action.same(ps.tensor_power(groups.symmetric(3), 2)),
])
def test_sparse_design_against_brute_force(act):
    ein, eout = act.closure()
    want = brute_sparse_index(ein, eout, act.gens_out, act.n_out, act.n_in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not free
        np.testing.assert_array_equal(ps.sparse_pattern(act).index(), want)


def test_sparse_warns_when_not_free():
    act = ps.Action.same(groups.dihedral(5))
    with pytest.warns(UserWarning, match="not free"):
        pat = ps.sparse_pattern(act)
    assert ps.is_equivariant(pat, act)


def test_sparse_with_custom_generators():
    reg = ps.regular(groups.cyclic(6))
    act = ps.Action.same(reg)
    two = ps.Action.same(np.stack([reg[0], ps.perm.compose(reg[0], reg[0])]))
    pat = ps.sparse_pattern(act, generators=two)
    assert pat.n_params == 3
    with pytest.raises(ValueError, match="subgroup"):
        sq = ps.perm.compose(reg[0], reg[0])
        ps.sparse_pattern(act, generators=(sq[None], sq[None]))
    with pytest.raises(ValueError, match="not an element"):
        ps.sparse_pattern(act, generators=(perm.from_cycles("(0 1)", 6)[None],
                                           perm.from_cycles("(0 1)", 6)[None]))


def test_sparse_base_points_are_validated():
    act = ps.Action.same(groups.cyclic(6))
    np.testing.assert_array_equal(ps.sparse_pattern(act, base_in=[3], base_out=[2]).index(),
                                  ps.sparse_pattern(act).index()[np.ix_(
                                      (np.arange(6) - 2) % 6, (np.arange(6) - 3) % 6)])
    with pytest.raises(ValueError, match="one point of each"):
        ps.sparse_pattern(act, base_in=[0, 1])
    with pytest.raises(ValueError, match="0..5"):
        ps.sparse_pattern(act, base_out=[6])


def test_bias_pattern():
    act = ps.Action(groups.cyclic(4), np.array([perm.from_cycles("(0 1)", 3)]))
    b = ps.bias_pattern(act)
    assert b.shape == (3, 1) and b.n_params == 2
    np.testing.assert_array_equal(b.materialize(np.array([1.0, 2.0]))[:, 0], [1, 1, 2])


@pytest.mark.parametrize("design", ["dense", "sparse"])
def test_layer_is_numerically_equivariant_with_channels(design, rng):
    act = ps.Action.same(ps.regular(groups.dihedral(3)))
    pat = ps.dense_pattern(act) if design == "dense" else ps.sparse_pattern(act)
    theta = rng.standard_normal((pat.n_params, 3, 2))
    w = pat.materialize(theta)  # (M, C_out, N, C_in)

    def layer(x):  # x (B, N, C_in) -> (B, M, C_out)
        return np.tanh(np.einsum("mcnd,bnd->bmc", w, x))

    x = rng.standard_normal((4, act.n_in, 2))
    assert ps.equivariance_error(layer, act, x, axis=1, rng=0) < 1e-12
    # and a non-equivariant layer is caught
    w_bad = w + rng.standard_normal(w.shape)
    bad = ps.equivariance_error(lambda x: np.einsum("mcnd,bnd->bmc", w_bad, x), act, x, axis=1,
                                rng=0)
    assert bad > 1e-3


def test_materialize_and_multi_edges():
    pat = ps.Pattern((2, 2), [0, 0, 1], [0, 0, 1], [0, 1, 1])
    assert pat.has_multi_edges
    np.testing.assert_array_equal(pat.materialize(np.array([1.0, 10.0])), [[11, 0], [0, 10]])
    with pytest.raises(ValueError, match="multi-edges"):
        pat.index()
    assert pat.indptr.tolist() == [0, 2, 3]
    t = pat.transpose()
    np.testing.assert_array_equal(t.materialize(np.array([1.0, 10.0])),
                                  pat.materialize(np.array([1.0, 10.0])).T)


def test_pattern_is_equivariant_detects_breakage():
    act = deep_sets(4)
    pat = ps.dense_pattern(act)
    idx = pat.index()
    idx[0, 1] = 0
    assert not ps.is_equivariant(ps.Pattern.from_index(idx), act)
    with pytest.raises(ValueError, match=r"expected \(5, 5\)"):
        ps.is_equivariant(pat, deep_sets(5))



def test_is_equivariant_on_every_path_of_the_exact_check(monkeypatch):
    """Each way of the exact check (spied) gives both answers, as the entries' parameter
    multisets do: W's index table (no multi-edges), sorted keys (multi-edges), and
    row-by-row sorting where ``M * N * P`` passes int64 (those patterns used to be
    refused), with and without multi-edges."""
    from paramshare_nb import equivariance
    used = []
    for name in ("_edges_land_on_their_own", "_edge_keys", "_preserves_rowwise"):
        real = getattr(equivariance, name)
        monkeypatch.setattr(equivariance, name,
                            lambda *a, r=real, n=name: used.append(n) or r(*a))
    big = 2**61
    rot = ps.Action([np.roll(np.arange(4), 1)], [np.roll(np.arange(3), 1)])
    broken = ps.dense_pattern(rot).index()
    broken[0, 1] = -1  # a structural zero in one orbit of entries
    swap2 = ps.Action([np.array([1, 0])], [np.array([0])])
    def pair(a, b, n_params=None):  # two inputs, one output, two parameters on each entry
        return ps.Pattern((1, 2), [0, 0, 0, 0], [0, 0, 1, 1], a + b, n_params=n_params)

    def moves(g):  # g on 5000 inputs, the 3 outputs fixed
        return ps.Action([g], [np.arange(3)])

    sparse = ps.Pattern((3, 5000), [0, 1, 2], [0, 1, 2], [big - 1] * 3, n_params=big)
    keep, spoil = np.arange(5000), np.arange(5000)
    keep[[3, 4]], spoil[[0, 3]] = [4, 3], [3, 0]
    cases = [  # (pattern, action, the path it takes, answer)
        (ps.dense_pattern(rot), rot, "_edges_land_on_their_own", True),
        (ps.Pattern.from_index(broken), rot, "_edges_land_on_their_own", False),
        (pair([0, 1], [0, 1]), swap2, "_edge_keys", True),
        (pair([0, 1], [0, 0]), swap2, "_edge_keys", False),
        (pair([big, 5], [big, 5], big + 1), swap2, "_preserves_rowwise", True),
        (pair([big, 5], [big, 6], big + 1), swap2, "_preserves_rowwise", False),
        (sparse, moves(keep), "_preserves_rowwise", True),
        (sparse, moves(spoil), "_preserves_rowwise", False),
    ]
    for pat, act, path, answer in cases:
        cells = {}
        for r, c, p in zip(pat.rows.tolist(), pat.cols.tolist(), pat.params.tolist()):
            cells.setdefault((r, c), []).append(p)
        want = all(sorted(cells.get((int(go[r]), int(gi[c])), [])) == sorted(v)
                   for gi, go in zip(act.gens_in, act.gens_out) for (r, c), v in cells.items())
        assert want == answer
        used.clear()
        assert ps.is_equivariant(pat, act) == answer
        assert path in used and len(set(used)) == 1, (path, used)


def test_pattern_check_refuses_maps_that_are_not_permutations():
    """symmetry_group's last check of each symmetry found is exact for any map: one that
    is not a bijection is refused before the index table is read (it passed there)."""
    from paramshare_nb.equivariance import _preserver
    pat = ps.Pattern((2, 3), [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1])
    check = _preserver(pat)
    assert check(np.array([1, 2, 0]), np.array([0, 1]))
    assert not check(np.array([0, 0, 0]), np.array([0, 1]))
    assert not check(np.array([0, 1, 3]), np.array([0, 1]))
    assert not check(np.array([0, 1, 2]), np.array([1, 1]))


def test_save_load_round_trip(tmp_path):
    pat = ps.sparse_pattern(ps.Action.same(groups.cyclic(5)))
    path = tmp_path / "p.npz"
    ps.save_pattern(path, pat)
    back = ps.load_pattern(path)
    assert back == pat and back.fingerprint() == pat.fingerprint()
    # a missing folder is named, not the temporary file the save writes first
    with pytest.raises(FileNotFoundError, match=r"its folder .*no_such' does not exist"):
        ps.save_pattern(tmp_path / "no_such" / "p.npz", pat)
    with pytest.raises(TypeError, match=r"got str \(the path comes first: save_pattern\(path"):
        ps.save_pattern(pat, str(path))  # torch.save's order


def test_patterns_are_immutable_and_pickle_without_their_caches():
    """Kernels trust shape and n_params as bounds: reassigning them (which let csr read
    out of bounds) is refused; pickle and copy carry the edges, not the compiled calls."""
    import copy
    import pickle
    pat = ps.dense_pattern(ps.Action.same(groups.cyclic(4)))
    x, theta = np.arange(8.0).reshape(2, 4), np.arange(1.0, pat.n_params + 1)
    y = ps.tied_matmul(x, theta, pat)  # fills the caches with closures
    for name, value in [("n_params", 1), ("shape", (6, 2)), ("rows", pat.rows[::-1]),
                        ("anything", 0)]:
        with pytest.raises(AttributeError, match="immutable"):
            setattr(pat, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del pat.shape
    with pytest.raises(ValueError):
        pat.rows[0] = 1
    with pytest.raises(ValueError, match="WRITEABLE"):  # an owned array's flag could be set
        pat.indptr.setflags(write=True)  # back (and the plans kept the old rows)
    for back in (pickle.loads(pickle.dumps(pat)), copy.deepcopy(pat), copy.copy(pat)):
        assert back == pat and back.fingerprint() == pat.fingerprint()
        assert not back.rows.flags.writeable and not back.params.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            back.params.setflags(write=True)
        np.testing.assert_array_equal(ps.tied_matmul(x, theta, back), y)


def test_tampered_zip_headers_are_refused(tmp_path, tampered_zips):
    path = tmp_path / "p.npz"
    ps.save_pattern(path, ps.sparse_pattern(ps.Action.same(groups.cyclic(5))))
    for bad in tampered_zips(path):
        with pytest.raises(ValueError, match="not a readable pattern file"):
            ps.load_pattern(bad)


def test_memory_a_file_still_asks_for_is_a_file_error(tmp_path, monkeypatch):
    """What the size check cannot see and numpy still fails to allocate names the file."""
    from paramshare_nb import _npz

    path = tmp_path / "p.npz"
    ps.save_pattern(path, ps.dense_pattern(deep_sets(3)))

    def load(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB")
    monkeypatch.setattr(_npz.np, "load", load)
    with pytest.raises(ValueError, match="not a readable pattern file: MemoryError: Unable"):
        ps.load_pattern(path)


def test_hostile_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable"):
        ps.load_pattern(garbage)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array("paramshare_nb.pattern/1"), shape=np.array([2, 2]),
             n_params=np.array(1), rows=np.array([0], dtype=object), cols=np.array([0]),
             params=np.array([0]))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        ps.load_pattern(pickled)
    # a header of a few bytes claiming 8 TB: refused before np.load allocates (MemoryError)
    fine = tmp_path / "fine.npz"
    ps.save_pattern(fine, ps.dense_pattern(deep_sets(3)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    lying = tmp_path / "lying.npz"
    with zipfile.ZipFile(fine) as src, zipfile.ZipFile(lying, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, header.getvalue() + bytes(8) if name == "rows.npy"
                         else src.read(name))
    with pytest.raises(ValueError, match=r"'rows.npy' claims shape \(1000000000000,\) of int64"):
        ps.load_pattern(lying)
    # the same member named without ".npy": np.load still parses it as an array
    with zipfile.ZipFile(fine) as src, zipfile.ZipFile(lying, "w") as dst:
        for name in src.namelist():
            if name == "rows.npy":
                dst.writestr("rows", header.getvalue() + bytes(8))
            else:
                dst.writestr(name, src.read(name))
    with pytest.raises(ValueError, match=r"'rows' claims shape \(1000000000000,\) of int64"):
        ps.load_pattern(lying)
    # and a member named ".npy" that is not one is damage, not raw bytes to validate
    with zipfile.ZipFile(fine) as src, zipfile.ZipFile(lying, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"not an array" if name == "rows.npy" else src.read(name))
    with pytest.raises(ValueError, match=r"not a readable pattern file: member 'rows.npy' is not "
                                         r"an .npy array"):
        ps.load_pattern(lying)
    # the same lie in format 3.0 (2.0's layout, which np.save writes for non-latin-1 field
    # names), and a claim past a float's range (bytes_text overflowed)
    for version, shape in ((b"\x03", (10**12,)), (b"\x01", (10**320,))):
        header = io.BytesIO()
        write = (np.lib.format.write_array_header_1_0 if version == b"\x01"
                 else np.lib.format.write_array_header_2_0)
        write(header, {"descr": "<i8", "fortran_order": False, "shape": shape})
        member = header.getvalue()
        member = member[:6] + version + member[7:] + bytes(8)
        with zipfile.ZipFile(fine) as src, zipfile.ZipFile(lying, "w") as dst:
            for name in src.namelist():
                dst.writestr(name, member if name == "rows.npy" else src.read(name))
        with pytest.raises(ValueError, match=r"'rows.npy' claims shape .* but holds 8 bytes"):
            ps.load_pattern(lying)
    extra = tmp_path / "extra.npz"  # a member that is not an array: np.load hands it over
    extra.write_bytes(fine.read_bytes())
    with zipfile.ZipFile(extra, "a") as z:
        z.writestr("README.txt", b"notes")
    assert ps.load_pattern(extra) == ps.load_pattern(fine)
    with ps.config.override(max_bytes=64):  # a small file, but more than the bound holds
        with pytest.raises(ValueError, match=r"its arrays hold .* over config.max_bytes"):
            ps.load_pattern(fine)
    out_of_range = tmp_path / "oor.npz"
    np.savez(out_of_range, format=np.array("paramshare_nb.pattern/1"), shape=np.array([2, 2]),
             n_params=np.array(1), rows=np.array([5]), cols=np.array([0]), params=np.array([0]))
    with pytest.raises(ValueError, match="invalid pattern"):
        ps.load_pattern(out_of_range)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="not a paramshare_nb pattern"):
        ps.load_pattern(other)
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    with pytest.raises(ValueError, match="a single .npy array, not an .npz archive"):
        ps.load_pattern(single)
    text = tmp_path / "text.npz"  # np.load calls anything unknown "pickled (object) data"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=r"not an .npz archive \(no zip header\)"):
        ps.load_pattern(text)
    huge = tmp_path / "huge.npz"
    np.savez(huge, format=np.array("paramshare_nb.pattern/1"), shape=np.array([2**62, 3]),
             n_params=np.array(1), rows=np.array([0]), cols=np.array([0]), params=np.array([0]))
    with pytest.raises(ValueError, match=r"invalid pattern: shape entries must be below 2\*\*62"):
        ps.load_pattern(huge)
    # the same bound for every pattern: a file's was 2**31, and n_params = 2**63 overflowed
    # the fingerprint (OverflowError)
    with pytest.raises(ValueError, match=r"n_params must be below 2\*\*62, got 9\d{18}"):
        ps.Pattern((2, 2), [0], [0], [0], n_params=2**63)
    big = ps.Pattern((2**62 - 1, 1), [0], [0], [0], n_params=2**62 - 1)
    ps.save_pattern(tmp_path / "big", big)
    assert ps.load_pattern(tmp_path / "big") == big and hash(big) == hash(big)
    corrupt = tmp_path / "corrupt.npz"
    pat = ps.dense_pattern(ps.Action.same(groups.cyclic(50)))
    np.savez_compressed(corrupt, format=np.array("paramshare_nb.pattern/1"),
                        shape=np.array(pat.shape), n_params=np.array(pat.n_params),
                        rows=pat.rows, cols=pat.cols, params=pat.params)
    raw = bytearray(corrupt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a readable"):
        ps.load_pattern(corrupt)


@pytest.mark.parametrize("args, exc", [
    (((2, 2), [0], [0], [0, 1]), ValueError),
    (((2, 2), [2], [0], [0]), ValueError),
    (((2, 2), [0], [0], [3], 2), ValueError),
    (((2, 2), [0.5], [0], [0]), TypeError),
    (((2,), [0], [0], [0]), ValueError),
])
def test_bad_patterns(args, exc):
    with pytest.raises(exc):
        ps.Pattern(*args)


@pytest.mark.parametrize("shape", [None, 3, "ab", b"\x02\x02", {2: 0, 3: 0}, (2,), (1, 2, 3)])
def test_pattern_shape_must_be_a_pair(shape):
    with pytest.raises(ValueError, match=r"shape must be a pair \(M, N\), got"):
        ps.Pattern(shape, [0], [0], [0])


def test_materialize_validates_theta():
    pat = ps.dense_pattern(deep_sets(3))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        pat.materialize(np.ones(3))
    with pytest.raises(TypeError, match="float"):
        pat.materialize(np.ones(2, dtype=int))
    with pytest.raises(TypeError, match="Action"):
        ps.dense_pattern(groups.symmetric(3))


def test_memory_guard_on_materialize():
    pat = ps.dense_pattern(deep_sets(4))
    with ps.config.override(max_bytes=64), pytest.raises(MemoryError, match="max_bytes"):
        pat.materialize(np.ones(2))


def test_equivariance_error_reports_non_finite_outputs():
    act = ps.Action.same(groups.cyclic(4))
    w = np.arange(16.0).reshape(4, 4)
    x = np.eye(4)[:1]
    assert ps.equivariance_error(lambda a: a @ w.T, act, x, rng=0) == 15.0
    pinned = np.arange(4) == 0  # a nan that stays in place: not equivariant
    assert np.isnan(ps.equivariance_error(lambda a: np.where(pinned, np.nan, a @ w.T), act, x,
                                         rng=0))
    assert ps.equivariance_error(lambda a: np.where(pinned, np.inf, a), act, x, rng=0) == np.inf
    # non-finite outputs that move with the inputs match
    assert ps.equivariance_error(lambda a: a * np.nan, act, x) == 0.0
    assert ps.equivariance_error(lambda a: np.where(a > 0, np.inf, a), act, x) == 0.0


def test_equivariance_error_validates_axes():
    act = deep_sets(3)
    with pytest.raises(ValueError, match="axis=2"):
        ps.equivariance_error(lambda x: x, act, np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="out_axis=3"):
        ps.equivariance_error(lambda x: x, act, np.ones((2, 3)), axis=1, out_axis=3)
    # each argument named: they gave "size must be >= 0", "tuple indices must be
    # integers", "'<=' not supported" and numpy's SeedSequence message
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="n_samples must be >= 0"):
        ps.equivariance_error(lambda a: a, act, x, n_samples=-1)
    with pytest.raises(TypeError, match="axis must be an int"):
        ps.equivariance_error(lambda a: a, act, x, axis=1.0)
    with pytest.raises(TypeError, match="out_axis must be an int"):
        ps.equivariance_error(lambda a: a, act, x, out_axis="a")
    with pytest.raises(TypeError, match="rng must be None, a non-negative int seed"):
        ps.equivariance_error(lambda a: a, act, x, rng="x")
    # the default out_axis is the number given as axis, read on f(x)
    with pytest.raises(ValueError, match=r"along axis -1, got shape \(3, 2\)"):
        ps.equivariance_error(lambda a: a, act, np.ones((3, 2)))  # the number given
    with pytest.raises(ValueError, match=r"out_axis=5 is out of range for f\(x\) of shape"):
        ps.equivariance_error(lambda a: a, act, x, out_axis=5)

    def widen(a):  # (B, N) -> (B, N, 2): axis 1 is still the points
        return np.repeat(a[:, :, None], 2, axis=2)
    assert ps.equivariance_error(widen, act, x, axis=1) == 0.0


def test_n_entries_counts_distinct_positions():
    rng = np.random.default_rng(4)
    for nnz in (0, 1, 2, 40):
        rows, cols = rng.integers(0, 4, nnz), rng.integers(0, 5, nnz)
        pat = ps.Pattern((4, 5), rows, cols, rng.integers(0, 3, nnz), n_params=3)
        distinct = len(set(zip(rows.tolist(), cols.tolist())))
        assert pat.n_entries == distinct
        assert pat.has_multi_edges == (distinct < nnz)


def test_entry_starts_name_each_distinct_entry():
    rng = np.random.default_rng(4)
    for _ in range(30):
        m, n, nnz = rng.integers(1, 6), rng.integers(1, 6), rng.integers(0, 25)
        rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
        pat = ps.Pattern((m, n), rows, cols, rng.integers(0, 3, nnz), n_params=3)
        positions = sorted(set(zip(rows.tolist(), cols.tolist())))  # brute force
        starts = pat.entry_starts
        assert list(zip(pat.rows[starts].tolist(), pat.cols[starts].tolist())) == positions
        assert pat.n_entries == len(positions)
        assert pat.has_multi_edges == (len(positions) < nnz)
        ends = np.r_[starts[1:], pat.nnz]
        for a, z in zip(starts, ends):  # each entry's edges are consecutive
            assert len({(pat.rows[e], pat.cols[e]) for e in range(a, z)}) == 1


def test_edges_are_sorted_whatever_order_they_come_in():
    # sorted edges skip the lexsort (a saved pattern's always are); any other order is sorted
    rng = np.random.default_rng(4)
    rows, cols, params = (rng.integers(0, 3, 40) for _ in range(3))  # many ties, multi-edges
    want = np.lexsort((params, cols, rows))
    for order in (rng.permutation(40), want, want[::-1]):
        pat = ps.Pattern((3, 3), rows[order], cols[order], params[order])
        np.testing.assert_array_equal(pat.rows, rows[want])
        np.testing.assert_array_equal(pat.cols, cols[want])
        np.testing.assert_array_equal(pat.params, params[want])
    for arrays in (([0, 0], [1, 0], [0, 0]), ([1, 0], [0, 1], [0, 0]), ([0, 0], [1, 1], [1, 0])):
        assert not patterns._edges_sorted(*(np.array(a) for a in arrays))
    assert patterns._edges_sorted(*(np.array(a) for a in ([0, 0, 1], [1, 1, 0], [0, 2, 0])))


def test_designs_are_kept_on_their_action():
    # layers on one action share the pattern and the plans kept on it (a second layer's
    # first forward rebuilt them: 1.6-2.0 s for D4 on 32 x 32 pixels)
    import copy
    import pickle
    act = ps.Action.same(groups.cyclic(6))
    assert ps.dense_pattern(act) is ps.dense_pattern(act)
    assert ps.sparse_pattern(act) is ps.sparse_pattern(act)
    assert ps.sparse_pattern(act, base_in=[1]) is not ps.sparse_pattern(act)  # not the default
    layers = [ps.nn.EquivariantLinear(act, 2, 3, rng=0), ps.nn.EquivariantLinear(act, 3, 3, rng=1)]
    assert layers[0].pattern is layers[1].pattern
    for other in (pickle.loads(pickle.dumps(act)), copy.deepcopy(act)):  # the generators only
        assert "_paramshare_patterns" not in other.__dict__
        np.testing.assert_array_equal(other.gens_in, act.gens_in)
        assert not other.gens_out.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            other.gens_out.setflags(write=True)
        assert ps.dense_pattern(other) == ps.dense_pattern(act)
    # the kept patterns are right for these generators only: re-binding them is refused (it
    # gave a layer of C_6's pattern for an action that then said S_6)
    for name in ("gens_in", "gens_out", "anything"):
        with pytest.raises(AttributeError, match="Action is immutable: cannot set"):
            setattr(act, name, groups.symmetric(6))
    with pytest.raises(AttributeError, match="Action is immutable: cannot delete"):
        del act.gens_in
    with pytest.raises(ValueError, match="WRITEABLE"):
        act.gens_in.setflags(write=True)
    assert act.order() == 6 and ps.dense_pattern(act).n_params == 6


def test_axis_errors_point_at_the_axis_that_fits():
    # (batch, N, channels) data with the default axis=-1: the message names axis=-2
    act = deep_sets(6)
    with pytest.raises(ValueError, match=r"along axis -1, got shape \(8, 6, 3\); pass axis=-2"):
        ps.equivariance_error(lambda a: a, act, np.ones((8, 6, 3)))
    with pytest.raises(ValueError, match=r"p permutes 6 points but x has 3 entries along axis -1 "
                                         r"\(shape \(8, 6, 3\)\); pass axis=-2"):
        ps.perm.apply(np.arange(6)[::-1], np.ones((8, 6, 3)))
    with pytest.raises(ValueError, match=r"along axis -1 \(shape \(8, 6, 3\)\)$"):
        ps.perm.apply([1, 0], np.ones((8, 6, 3)))  # no axis has 2 entries: no hint
