"""update_rows / update_file: re-quantized rows equal a fresh quantize of the updated float
rows, byte for byte, in both packages, in memory and in files (atomic and in place); two-tier
rows with codebooks="keep" are the contract's encoding against the table's codebooks."""

import inspect
import os

import numpy as np
import pytest

import qe4
import qe4_fast

from conftest import kind_rows, table_kinds

KINDS = {k: m for k, m in table_kinds().items() if k[0] != "two-tier"}
DIMS = [1, 7, 33, 257]
N_THREADS = [1, 2, 7]
ENGINES = {"reference": (qe4, {}), **{f"fast-{n}": (qe4_fast, {"n_threads": n}) for n in N_THREADS}}


def quantize(kind, x):
    layout, bits, scale_dtype = kind
    return qe4.quantize(x, bits, KINDS[kind], scale_dtype=scale_dtype)


@pytest.mark.parametrize("name", ["update_rows", "update_file"])
def test_signature_is_the_reference_plus_n_threads(name):
    ref = inspect.signature(getattr(qe4, name)).parameters
    got = inspect.signature(getattr(qe4_fast, name)).parameters
    assert [p for p in got if p != "n_threads"] == list(ref)
    assert got["n_threads"].default is None and got["n_threads"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", list(KINDS), ids=str)
def test_updated_table_is_a_fresh_quantize(kind, dim, same_bytes):
    x = kind_rows(12, dim, seed=dim)
    new = kind_rows(4, dim, seed=dim + 1) * np.float32(3)
    expected = x.copy()
    expected[5:9] = new
    want = quantize(kind, expected).data
    for k, (name, (m, kw)) in enumerate(ENGINES.items()):
        if name.startswith("fast") and k != 1 + dim % len(N_THREADS):
            continue                      # one thread count per dim keeps the test lean
        table = quantize(kind, x)
        m.update_rows(table, 5, new, **kw)
        same_bytes(table.data, want)
        m.update_rows(table, np.int64(11), x[11:], **kw)          # the last row, unchanged
        same_bytes(table.data, want)


def test_imported_bytes_need_a_method(same_bytes):
    x = kind_rows(6, 8)
    t = qe4.QuantizedTable.from_fused(qe4.quantize(x, 4, "greedy").data, 4)
    assert t.method == "fused"
    for m in (qe4, qe4_fast):
        with pytest.raises(ValueError, match="pass method="):
            m.update_rows(t, 0, x[:1])
    before = t.data.copy()
    qe4_fast.update_rows(t, 2, x[:1] * 2, method="greedy", n_bins=100)
    same_bytes(t.data[2], qe4.quantize(x[:1] * 2, 4, "greedy", n_bins=100).data[0])
    same_bytes(np.delete(t.data, 2, axis=0), np.delete(before, 2, axis=0))


def test_params_are_the_tables():
    x = kind_rows(5, 16, seed=3)
    t = qe4.quantize(x, 4, "greedy", n_bins=37, ratio=0.3)
    fresh = qe4.quantize(x[1:2] * 5, 4, "greedy", n_bins=37, ratio=0.3)
    qe4_fast.update_rows(t, 1, x[1:2] * 5)
    assert np.array_equal(t.data[1], fresh.data[0])


BAD = {
    "two-tier": lambda t, tt: (tt, 0, np.ones((1, 8), np.float32), {}),
    "start kind": lambda t, tt: (t, 1.0, np.ones((1, 8), np.float32), {}),
    "start bool": lambda t, tt: (t, True, np.ones((1, 8), np.float32), {}),
    "negative start": lambda t, tt: (t, -1, np.ones((1, 8), np.float32), {}),
    "past the end": lambda t, tt: (t, 5, np.ones((2, 8), np.float32), {}),
    "width": lambda t, tt: (t, 0, np.ones((1, 9), np.float32), {}),
    "1-D rows": lambda t, tt: (t, 0, np.ones(8, np.float32), {}),
    "integer rows": lambda t, tt: (t, 0, np.ones((1, 8), np.int64), {}),
    "NaN row": lambda t, tt: (t, 0, np.full((1, 8), np.nan, np.float32), {}),
    "float16 overflow": lambda t, tt: (t, 0, np.array([[0, 1e6] * 4], np.float32), {}),
    "other method": lambda t, tt: (t, 0, np.ones((1, 8), np.float32), {"method": "minmax"}),
    "unknown option": lambda t, tt: (t, 0, np.ones((1, 8), np.float32), {"colour": 1}),
    "bad option": lambda t, tt: (t, 0, np.ones((1, 8), np.float32), {"n_bins": 0}),
    "read-only": lambda t, tt: (qe4.QuantizedTable(np.frombuffer(t.data.tobytes(), np.uint8)
                                                   .reshape(t.data.shape), bits=4, dim=8,
                                                   method="greedy"),
                                0, np.ones((1, 8), np.float32), {}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_updates_raise_like_the_reference(case, same_error):
    x = kind_rows(6, 8)
    t = qe4.quantize(x, 4, "greedy")
    tt = qe4.quantize(x, 4, "two-tier", n_groups=2)
    table, start, rows, kw = BAD[case](t, tt)
    before = table.data.copy()
    err = same_error(lambda: qe4.update_rows(table, start, rows, **kw),
                     lambda: qe4_fast.update_rows(table, start, rows, **kw))
    assert isinstance(err, IndexError) == (case in ("negative start", "past the end"))
    assert np.array_equal(table.data, before)          # nothing written


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("engine", ["reference", "fast-2"])
def test_update_file(tmp_path, in_place, engine, same_bytes):
    m, kw = ENGINES[engine]
    x = kind_rows(40, 33, seed=1)
    path = tmp_path / "t.qe4"
    qe4.save(qe4.quantize(x, 4, "greedy"), path)
    old_reader = qe4.load(path)                        # memory-mapped before the update
    new = kind_rows(7, 33, seed=2)
    m.update_file(path, 30, new, in_place=in_place, **kw)
    y = x.copy()
    y[30:37] = new
    qe4.save(qe4.quantize(y, 4, "greedy"), tmp_path / "fresh.qe4")
    same_bytes(np.fromfile(path, np.uint8), np.fromfile(tmp_path / "fresh.qe4", np.uint8))
    changed = not np.array_equal(old_reader.data[30], qe4.quantize(x, 4, "greedy").data[30])
    assert changed == in_place                         # the atomic rewrite leaves readers alone
    assert sorted(os.listdir(tmp_path)) == ["fresh.qe4", "t.qe4"]   # no temporary file left


def test_update_file_errors_leave_the_file_alone(tmp_path, same_error):
    x = kind_rows(10, 8)
    path = tmp_path / "t.qe4"
    qe4.save(qe4.quantize(x, 4, "minmax"), path)
    before = path.read_bytes()
    for in_place in (False, True):
        for rows, start in ((np.full((1, 8), np.inf, np.float32), 0), (x[:3], 8)):
            same_error(lambda: qe4.update_file(path, start, rows, in_place=in_place),
                       lambda: qe4_fast.update_file(path, start, rows, in_place=in_place))
    (tmp_path / "bad.qe4").write_bytes(b"not a file at all")
    same_error(lambda: qe4.update_file(tmp_path / "bad.qe4", 0, x[:1]),
               lambda: qe4_fast.update_file(tmp_path / "bad.qe4", 0, x[:1]))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.qe4", "t.qe4"]


def test_memory_mapped_table_points_to_update_file(tmp_path):
    path = tmp_path / "t.qe4"
    qe4.save(qe4.quantize(kind_rows(4, 8), 4, "minmax"), path)
    with pytest.raises(ValueError, match="update_file"):
        qe4.update_rows(qe4.load(path), 0, kind_rows(1, 8))


# --------------------------------------------------------------------------- codebooks="keep"
# Two-tier tables: new rows encoded against the table's existing codebooks (qe4.update notes).

from conftest import float_dtype_configs  # noqa: E402
from qe4 import layouts as L  # noqa: E402

TWO_TIER = float_dtype_configs("two-tier")           # (bits, scale_dtype) from the registry
N_GROUPS = [1, 5, 300]                               # 300: uint16 group ids
KEEP_THREADS = [1, 2, 3]


def two_tier(bits, scale_dtype, n_groups, n_rows=60, dim=33, seed=0):
    return qe4.quantize(kind_rows(n_rows, dim, seed), bits, "two-tier", n_groups=n_groups,
                        scale_dtype=scale_dtype)


def clone(t, **extras):
    """A writable copy of table ``t`` (optionally with other extras)."""
    ex = {k: np.array(v) for k, v in t.extras.items()}
    ex.update(extras)
    return qe4.QuantizedTable(np.array(t.data), bits=t.bits, dim=t.dim, method=t.method,
                              scale_dtype=t.scale_dtype, layout=t.layout, params=t.params,
                              extras=ex)


def brute_force(x, books):
    """Group ids and codes by the contract, computed the long way: nearest centroid by
    distance (first on a tie), error summed term by term in Python floats (float64)."""
    gids, codes = [], []
    for row in x.astype(np.float64):
        errs, cands = [], []
        for c in books.astype(np.float64):
            code = np.abs(row[:, None] - c[None, :]).argmin(axis=1)
            e = 0.0
            for v, k in zip(row, code):
                e += (v - c[k]) * (v - c[k])
            errs.append(e)
            cands.append(code)
        g = int(np.argmin(errs))                    # the first minimum: lower id on a tie
        gids.append(g)
        codes.append(cands[g])
    return np.array(gids), np.array(codes, np.uint8)


def new_two_tier_rows(n, dim, seed):
    x = kind_rows(n, dim, seed) * np.float32(2)
    x[1] = 1e-3                                     # a flat row, and a huge one
    x[2] *= np.float32(100)
    return x


@pytest.mark.parametrize("n_groups", N_GROUPS)
@pytest.mark.parametrize("bits,scale_dtype", TWO_TIER)
def test_keep_encodes_each_row_with_its_best_codebook(bits, scale_dtype, n_groups, same_bytes):
    t = two_tier(bits, scale_dtype, n_groups)
    new = new_two_tier_rows(6, t.dim, seed=n_groups)
    ref = clone(t)
    qe4.update_rows(ref, 20, new, codebooks="keep")
    # other rows, codebooks, params untouched
    same_bytes(np.delete(ref.data, np.s_[20:26], axis=0).view(np.uint8),
               np.delete(t.data, np.s_[20:26], axis=0).view(np.uint8))
    same_bytes(ref.extras["codebooks"].view(np.uint8), t.extras["codebooks"].view(np.uint8))
    assert ref.params == t.params and ref.method == t.method
    # the new rows: the best group by the stated error, its nearest centroids, the id stored
    # as the layout stores it
    books = t.extras["codebooks"].astype(np.float32)
    gid, codes = brute_force(new, books)
    assert ref.layout_entry.group_ids(ref.data, n_groups, np.s_[20:26]).tolist() == gid.tolist()
    ids = gid.astype(L.id_dtype(n_groups)).view(np.uint8).reshape(6, -1)
    same_bytes(ref.data[20:26].view(np.uint8),
               np.concatenate([L.pack_codes(codes, bits), ids], axis=1))
    # both packages, every thread count: the same bytes
    for nt in KEEP_THREADS:
        fast = clone(t)
        qe4_fast.update_rows(fast, 20, new, codebooks="keep", n_threads=nt)
        same_bytes(fast.data.view(np.uint8), ref.data.view(np.uint8))
        same_bytes(fast.extras["codebooks"].view(np.uint8), t.extras["codebooks"].view(np.uint8))


@pytest.mark.parametrize("bits,scale_dtype", TWO_TIER)
def test_keep_rows_are_independent(bits, scale_dtype, same_bytes, monkeypatch):
    """A row's bytes depend on it and the codebooks only: one call or one row at a time,
    the same table; many rows in one kernel call or in several blocks of calls, at 1 and 3
    threads, too."""
    from qe4_fast import _blocks
    t = two_tier(bits, scale_dtype, 16, n_rows=3000, dim=20, seed=4)
    new = new_two_tier_rows(2000, 20, seed=5)
    whole = clone(t)
    qe4.update_rows(whole, 1000, new, codebooks="keep")
    for work in (_blocks.WORK_PER_CALL, 1 << 16):        # one call; blocks of dozens of rows
        monkeypatch.setattr(_blocks, "WORK_PER_CALL", work)
        for nt in (1, 3):
            got = clone(t)
            qe4_fast.update_rows(got, 1000, new, codebooks="keep", n_threads=nt)
            same_bytes(got.data.view(np.uint8), whole.data.view(np.uint8))
    one = clone(t)
    for r in range(0, 2000, 397):
        qe4.update_rows(one, 1000 + r, new[r:r + 1], codebooks="keep")
        same_bytes(one.data[1000 + r].view(np.uint8), whole.data[1000 + r].view(np.uint8))


@pytest.mark.parametrize("bits,scale_dtype", TWO_TIER)
def test_keep_ties_go_to_the_lower_group(bits, scale_dtype, same_bytes):
    t = two_tier(bits, scale_dtype, 6)
    books = np.array(t.extras["codebooks"])
    books[[1, 3, 5]] = books[4]                      # groups 1, 3, 4, 5 share one codebook
    t = clone(t, codebooks=books)
    new = new_two_tier_rows(8, t.dim, seed=9)
    gid, _ = brute_force(new, books)
    for m, kw in ((qe4, {}), (qe4_fast, {"n_threads": 2})):
        got = clone(t)
        m.update_rows(got, 0, new, codebooks="keep", **kw)
        ids = got.layout_entry.group_ids(got.data, 6, np.s_[:8])
        assert ids.tolist() == gid.tolist()
        assert not np.isin(ids, [3, 4, 5]).any()     # never a copy above group 1


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("engine", ["reference", "fast-2"])
@pytest.mark.parametrize("n_groups", [5, 300])
def test_keep_update_file(tmp_path, in_place, engine, n_groups, same_bytes):
    m, kw = ENGINES[engine]
    t = two_tier(4, None, n_groups, n_rows=40)
    path = tmp_path / "t.qe4"
    qe4.save(t, path)
    new = new_two_tier_rows(7, t.dim, seed=2)
    m.update_file(path, 30, new, in_place=in_place, codebooks="keep", **kw)
    want = clone(t)
    qe4.update_rows(want, 30, new, codebooks="keep")
    qe4.save(want, tmp_path / "fresh.qe4")
    same_bytes(np.fromfile(path, np.uint8), np.fromfile(tmp_path / "fresh.qe4", np.uint8))
    back = qe4.load(path, mmap=False)                # a valid file: every group id checked
    same_bytes(back.extras["codebooks"].view(np.uint8), t.extras["codebooks"].view(np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["fresh.qe4", "t.qe4"]


def other_layouts():
    """One (layout, bits, scale_dtype) kind per layout other than two-tier."""
    out = {}
    for kind in KINDS:
        out.setdefault(kind[0], kind)
    return list(out.values())


@pytest.mark.parametrize("kind", other_layouts(), ids=str)
def test_keep_on_another_layout_is_refused(kind, same_error):
    x = kind_rows(6, 8)
    t = quantize(kind, x)
    before = t.data.copy()
    err = same_error(lambda: qe4.update_rows(t, 0, x[:1], codebooks="keep"),
                     lambda: qe4_fast.update_rows(t, 0, x[:1], codebooks="keep"))
    assert isinstance(err, ValueError) and "codebooks='keep'" in str(err) and kind[0] in str(err)
    assert np.array_equal(t.data.view(np.uint8), before.view(np.uint8))


def unsorted_books(tt):
    books = np.array(tt.extras["codebooks"])
    books[1] = books[1][::-1]
    return clone(tt, codebooks=books)


def nan_books(tt):
    books = np.array(tt.extras["codebooks"])
    books[0, 2] = np.nan
    return clone(tt, codebooks=books)


ROW = np.ones((1, 8), np.float32)
BAD_KEEP = {                     # case -> (table, start, rows, kwargs, words the message has)
    "default refuses": lambda tt: (tt, 0, ROW, {}, "codebooks='keep'"),
    "mode misspelt": lambda tt: (tt, 0, ROW, {"codebooks": "Keep"}, "codebooks"),
    "mode unknown": lambda tt: (tt, 0, ROW, {"codebooks": "refit"}, "'refit'"),
    "mode not a string": lambda tt: (tt, 0, ROW, {"codebooks": True}, "True"),
    "an option": lambda tt: (tt, 0, ROW, {"codebooks": "keep", "n_groups": 2}, "n_groups"),
    "another method": lambda tt: (tt, 0, ROW, {"codebooks": "keep", "method": "kmeans"},
                                  "method"),
    "unsorted codebooks": lambda tt: (unsorted_books(tt), 0, ROW, {"codebooks": "keep"},
                                      "sorted"),
    "NaN centroid": lambda tt: (nan_books(tt), 0, ROW, {"codebooks": "keep"}, "finite"),
    "float16 overflow": lambda tt: (tt, 0, np.array([[0, 1e6] * 4], np.float32),
                                    {"codebooks": "keep"}, "float16"),
    "NaN row": lambda tt: (tt, 0, np.full((1, 8), np.nan, np.float32), {"codebooks": "keep"},
                           "finite"),
    "width": lambda tt: (tt, 0, np.ones((1, 9), np.float32), {"codebooks": "keep"}, "columns"),
}


@pytest.mark.parametrize("case", list(BAD_KEEP))
def test_bad_keep_updates_raise_like_the_reference(case, same_error):
    tt = qe4.quantize(kind_rows(6, 8), 4, "two-tier", n_groups=2)
    table, start, rows, kw, words = BAD_KEEP[case](tt)
    before = table.data.copy()
    err = same_error(lambda: qe4.update_rows(table, start, rows, **kw),
                     lambda: qe4_fast.update_rows(table, start, rows, **kw))
    assert isinstance(err, ValueError) and words in str(err), err
    assert np.array_equal(table.data.view(np.uint8), before.view(np.uint8))


def test_keep_refuses_a_tampered_file_and_leaves_it_alone(tmp_path, same_error):
    """load checks the codebooks are finite; check_books that they are sorted."""
    tt = unsorted_books(qe4.quantize(kind_rows(6, 8), 4, "two-tier", n_groups=2))
    path = tmp_path / "t.qe4"
    qe4.save(tt, path)
    before = path.read_bytes()
    for in_place in (False, True):
        err = same_error(
            lambda: qe4.update_file(path, 0, ROW, codebooks="keep", in_place=in_place),
            lambda: qe4_fast.update_file(path, 0, ROW, codebooks="keep", in_place=in_place))
        assert "sorted" in str(err)
    same_error(lambda: qe4.update_file(path, 0, ROW), lambda: qe4_fast.update_file(path, 0, ROW))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.qe4"]
