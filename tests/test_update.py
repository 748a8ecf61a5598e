"""update_rows / update_file: re-quantized rows equal a fresh quantize of the updated float
rows, byte for byte, in both packages, in memory and in files (atomic and in place)."""

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
