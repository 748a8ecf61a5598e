"""Sharded tables: the index, lazy opening, refusal of incomplete directories, lookups."""

import json
import os
import re
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qe4
from conftest import ROWWISE_BITS
from qe4 import shards as S


def _weights(n_rows=103, dim=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_rows, dim)).astype(np.float32) * rng.uniform(0.1, 3, (n_rows, 1))


@pytest.fixture(scope="module")
def table():
    return qe4.quantize(_weights(), bits=4, method="greedy")


@pytest.fixture
def written(table, tmp_path):
    return S.write_sharded(table, tmp_path / "t", rows_per_shard=25)


def _index(path):
    with open(os.path.join(path, S.INDEX)) as f:
        return json.load(f)


def _rewrite_index(path, index):
    with open(os.path.join(path, S.INDEX), "w") as f:
        json.dump(index, f)


def _shard_file(path, i):
    return os.path.join(path, _index(path)["shards"][i]["file"])


def test_layout_on_disk(written, table):
    # 103 rows by 25: [0,25) [25,50) [50,75) [75,100) [100,103)
    index = _index(written.path)
    assert index["format"] == "qe4-sharded" and index["version"] == 2
    assert re.fullmatch("[0-9a-f]{12}", index["run"])
    assert index["n_rows"] == 103 and index["dim"] == 7 and index["bits"] == 4
    assert index["method"] == "greedy" and index["scale_dtype"] == "float16"
    assert index["layout"] == "rowwise" and index["row_bytes"] == 4 + 4   # ceil(7/2) codes + fp16 x2
    assert index["params"] == {"n_bins": 200, "ratio": 0.16}
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [
        (0, 25), (25, 50), (50, 75), (75, 100), (100, 103)]
    assert [s["file"] for s in index["shards"]] == [f"shard-0000{i}-{index['run']}.qe4"
                                                    for i in range(5)]
    for s in index["shards"]:
        full = os.path.join(written.path, s["file"])
        assert json.loads(qe4.io.read_metadata(full)[S.SHARD_META]) == {
            "start": s["start"], "stop": s["stop"], "run": index["run"]}
        assert s["file_bytes"] == os.path.getsize(full)
        assert s["nbytes"] == (s["stop"] - s["start"]) * 8
        assert s["sha256"] == S.file_sha256(full)
        part = qe4.io.load(full)
        assert np.array_equal(part.data, table.data[s["start"]:s["stop"]])
    assert sorted(os.listdir(written.path)) == sorted([S.INDEX] + [s["file"] for s in index["shards"]])


def test_roundtrip_bytes_and_properties(written, table, same_bytes):
    st = S.open_sharded(written.path, verify=True)
    assert (st.n_rows, st.dim, st.bits, st.n_shards, st.nbytes) == (103, 7, 4, 5, table.nbytes)
    assert st.shape == (103, 7) and len(st) == 103
    assert all(s is None for s in st._shards)          # lazy: nothing opened yet
    same_bytes(st.to_table().data, table.data)
    assert st.to_table() == table
    same_bytes(st.dequantize(), qe4.dequantize(table))
    same_bytes(st.dequantize(20, 61), qe4.dequantize(table)[20:61])
    same_bytes(st.slice(-3).data, table.data[-3:])
    assert st.slice(50, 40).n_rows == 0
    assert isinstance(st.shard(2).data, np.memmap)


def test_rows_gathers_across_shards_in_order(written, table, same_bytes):
    same_bytes(written.rows([101, 100, 102]).data, table.data[[101, 100, 102]])
    assert [s is not None for s in written._shards] == [False] * 4 + [True]   # opens what it reads
    idx = np.array([102, 0, 24, 25, 24, 77, 102, 50], np.int32)
    same_bytes(written.rows(idx).data, table.data[idx])
    assert written.rows([]).n_rows == 0
    with pytest.raises(IndexError, match=r"indices\[1\] = 103 is out of range for a table of 103 rows"):
        written.rows([5, 103])
    with pytest.raises(IndexError, match=r"indices\[0\] = -1"):
        written.rows([-1])


@pytest.mark.parametrize("kind", ["offsets", "last", "2d", "weighted", "mean", "max-float16"])
def test_embedding_bag_matches_concatenated_table(written, table, kind, same_bytes):
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 103, 60)
    offsets = np.array([0, 0, 3, 10, 10, 31, 59])           # includes empty bags
    kw = {}
    if kind == "last":
        offsets, kw = np.append(offsets, 60), {"include_last_offset": True}
    if kind == "2d":
        idx, offsets = idx.reshape(12, 5), None
    if kind == "weighted":
        kw = {"per_sample_weights": rng.standard_normal(60).astype(np.float32)}
    if kind == "mean":
        kw = {"mode": "mean"}
    if kind == "max-float16":
        kw = {"mode": "max", "out_dtype": "float16"}
    got = written.embedding_bag(idx, offsets, **kw)
    same_bytes(got, qe4.embedding_bag(table, idx, offsets, **kw))


def test_embedding_bag_errors_match_the_reference(written, table):
    for args, kw in [(([0, 103], [0]), {}), (([0, 1], [1]), {}), (([0, 1], [0]), {"mode": "min"}),
                     (([0, 1], [0]), {"mode": "mean", "per_sample_weights": np.ones(2, np.float32)}),
                     (([0.5], [0]), {})]:
        with pytest.raises(Exception) as ref:
            qe4.embedding_bag(table, *args, **kw)
        with pytest.raises(type(ref.value), match=re.escape(str(ref.value))):
            written.embedding_bag(*args, **kw)
    with pytest.raises(ValueError, match="engine must be 'fast' or 'reference'"):
        written.embedding_bag([0], [0], engine="numpy")


def test_write_from_chunks(table, tmp_path, same_bytes):
    cuts = [0, 1, 40, 41, 103]
    chunks = [qe4.quantize(_weights()[a:b], bits=4, method="greedy") for a, b in zip(cuts, cuts[1:])]
    st = S.write_sharded(chunks, tmp_path / "c")
    assert [(s["start"], s["stop"]) for s in st.index["shards"]] == list(zip(cuts, cuts[1:]))
    same_bytes(st.to_table().data, table.data)


def test_chunks_must_agree(tmp_path):
    x = _weights()
    chunks = [qe4.quantize(x[:50], bits=4, method="greedy"), qe4.quantize(x[50:], bits=4, method="minmax")]
    with pytest.raises(ValueError, match=r"shard shard-00001-\w+.qe4 disagrees .* \['method', 'params'\]"):
        S.write_sharded(chunks, tmp_path / "d")
    with pytest.raises(ValueError, match="INDEX|index.json is missing"):
        S.open_sharded(tmp_path / "d")


def test_bad_arguments(table, tmp_path):
    with pytest.raises(TypeError, match="rows_per_shard must be an integer"):
        S.write_sharded(table, tmp_path / "a", rows_per_shard=2.5)
    with pytest.raises(ValueError, match="rows_per_shard must be >= 1, got 0"):
        S.write_sharded(table, tmp_path / "a", rows_per_shard=0)
    with pytest.raises(ValueError, match="rows_per_shard applies to a whole table"):
        S.write_sharded([table], tmp_path / "a", rows_per_shard=2)
    with pytest.raises(TypeError, match="shard 0 must be a QuantizedTable, got ndarray"):
        S.write_sharded([table.data], tmp_path / "a")
    with pytest.raises(ValueError, match="at least one shard"):
        S.write_sharded([], tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no sharded table"):
        S.open_sharded(tmp_path / "nowhere")


def test_overwrite_rules(written, table, tmp_path):
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        S.write_sharded(table, written.path, rows_per_shard=50)
    st = S.write_sharded(table, written.path, rows_per_shard=50, overwrite=True)
    assert st.n_shards == 3 and len(os.listdir(written.path)) == 4      # old shards 3, 4 removed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not part of a sharded table"):
        S.write_sharded(table, tmp_path / "other", rows_per_shard=50, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    # leftovers of interrupted writers are cleared by an overwrite, tagged shards too
    for name in (".shard-00001.qe4.x1y2.qe4tmp", ".index.json.123.tmp", "shard-00007-ab12.qe4"):
        open(os.path.join(written.path, name), "w").close()
    st = S.write_sharded(table, written.path, rows_per_shard=60, overwrite=True)
    run = _index(written.path)["run"]
    assert sorted(os.listdir(written.path)) == [S.INDEX, f"shard-00000-{run}.qe4",
                                                f"shard-00001-{run}.qe4"]


def test_failed_overwrite_keeps_the_old_table(written, table, monkeypatch, same_bytes):
    # disk full part-way through an overwrite: the old table is intact, the new run's
    # shards are gone (today's code deleted the old table first)
    before = sorted(os.listdir(written.path))
    calls = []

    def failing_save(t, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(t, path, **kw)

    real_save = qe4.io.save
    monkeypatch.setattr(S.qio, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        S.write_sharded(table, written.path, rows_per_shard=10, overwrite=True)
    assert sorted(os.listdir(written.path)) == before
    same_bytes(S.open_sharded(written.path, verify=True).to_table().data, table.data)


def test_failed_first_write_leaves_no_index(table, tmp_path, monkeypatch):
    def failing_save(t, path, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(S.qio, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        S.write_sharded(table, tmp_path / "t", rows_per_shard=10)
    with pytest.raises(ValueError, match="is not a complete sharded table: index.json is missing"):
        S.open_sharded(tmp_path / "t")


# ------------------------------------------------------------------ refusing broken directories

def _corrupt_cases():
    def drop_shard(p, ix):
        del ix["shards"][2]

    def overlap(p, ix):
        ix["shards"][1]["start"] = 20

    def short(p, ix):
        ix["n_rows"] = 104

    def version(p, ix):
        ix["version"] = 3

    def missing_key(p, ix):
        del ix["bits"]

    def resized(p, ix):
        with open(os.path.join(p, ix["shards"][1]["file"]), "ab") as f:
            f.write(b"\0")

    def deleted(p, ix):
        os.remove(os.path.join(p, ix["shards"][3]["file"]))

    def bad_name(p, ix):
        ix["shards"][0]["file"] = "../shard-00000.qe4"

    return [
        (drop_shard, r"shard shard-00003-\w+.qe4 starts at row 75, expected 50 .* leaves a gap"),
        (overlap, r"shard shard-00001-\w+.qe4 starts at row 20, expected 25 .* overlaps"),
        (short, r"the shards cover rows \[0, 103\) but n_rows is 104"),
        (version, "unsupported sharded-table version 3"),
        (missing_key, r"index is missing the fields \['bits'\]"),
        (resized, r"shard file shard-00001-\w+.qe4 has .* bytes, the index records"),
        (deleted, r"shard file shard-00003-\w+.qe4 is missing"),
        (bad_name, "bad or repeated file name '../shard-00000.qe4'"),
    ]


@pytest.mark.parametrize("damage, message", _corrupt_cases(), ids=lambda v: getattr(v, "__name__", ""))
def test_open_refuses_damaged_tables(written, damage, message):
    ix = _index(written.path)
    damage(written.path, ix)
    _rewrite_index(written.path, ix)
    with pytest.raises(ValueError, match=message):
        S.open_sharded(written.path)


def test_checksum_catches_same_size_corruption(written):
    full = _shard_file(written.path, 2)
    with open(full, "r+b") as f:                      # last byte of a row: same size, other bytes
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))
    S.open_sharded(written.path)                      # the cheap check passes ...
    with pytest.raises(ValueError, match=r"shard-00002-\w+.qe4 does not match its SHA-256"):
        S.open_sharded(written.path, verify=True)     # ... the checksum does not


def test_shard_not_matching_index_is_refused(written, table):
    # a valid qe4 file of another bit width swapped in, with the index patched to its size
    other = qe4.quantize(_weights()[25:50], bits=2, method="minmax")
    full = _shard_file(written.path, 1)
    qe4.io.save(other, full)
    ix = _index(written.path)
    ix["shards"][1]["file_bytes"] = os.path.getsize(full)
    _rewrite_index(written.path, ix)
    st = S.open_sharded(written.path)
    st.shard(0)
    with pytest.raises(ValueError, match=r"shard file shard-00001-\w+.qe4 holds a table .* does not match"):
        st.shard(1)


def test_not_json_and_not_an_index(written):
    with open(os.path.join(written.path, S.INDEX), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON"):
        S.open_sharded(written.path)
    _rewrite_index(written.path, {"format": "zarr"})
    with pytest.raises(ValueError, match="not a qe4 sharded-table index"):
        S.open_sharded(written.path)


def test_table_with_shared_arrays_is_not_cut(tmp_path):
    shared = qe4.quantize(_weights(), 4, "two-tier", n_groups=2)
    with pytest.raises(ValueError, match="cannot be cut into row shards"):
        S.write_sharded(shared, tmp_path / "e", rows_per_shard=10)


def test_fast_engine_is_explicit(written):
    try:
        from qe4_fast import embedding_bag  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="engine='fast' needs qe4_fast.embedding_bag"):
            written.embedding_bag([0], [0], engine="fast")
    else:
        ref = written.embedding_bag([0, 5, 99], [0, 1], per_sample_weights=np.ones(3, np.float32))
        fast = written.embedding_bag([0, 5, 99], [0, 1], per_sample_weights=np.ones(3, np.float32),
                                     engine="fast", n_threads=2)
        assert np.array_equal(ref.view(np.uint8), fast.view(np.uint8))


def test_codebook_tables(tmp_path, same_bytes):
    codebook = pytest.importorskip("qe4.codebook")
    x = _weights(40, 16)
    per_row = qe4.quantize(x, 4, "kmeans")
    assert per_row.layout == "codebook" and not per_row.extras
    st = S.write_sharded(per_row, tmp_path / "cb", rows_per_shard=15)
    assert st.layout == "codebook" and st.to_table() == per_row
    same_bytes(st.dequantize(), qe4.dequantize(per_row))
    idx, off = np.array([39, 0, 14, 15, 15, 30]), np.array([0, 3, 3])
    w = np.linspace(-2, 2, 6).astype(np.float32)
    same_bytes(st.embedding_bag(idx, off, per_sample_weights=w),
               qe4.embedding_bag(per_row, idx, off, per_sample_weights=w))
    if "two-tier" in codebook.METHODS:
        two_tier = qe4.quantize(x, 4, "two-tier")
        with pytest.raises(ValueError, match="cannot be cut into row shards"):
            S.write_sharded(two_tier, tmp_path / "tt", rows_per_shard=15)
        one = S.write_sharded([two_tier], tmp_path / "tt1")          # one shard is fine
        assert one.shard(0) == two_tier
        with pytest.raises(ValueError, match="row access across shards needs rows that hold all"):
            one.to_table()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_shards_and_bags_match_the_whole_table(data):
    bits = data.draw(st.sampled_from(ROWWISE_BITS), label="bits")
    n_rows = data.draw(st.integers(1, 40), label="n_rows")
    dim = data.draw(st.integers(1, 9), label="dim")
    x = _weights(n_rows, dim, seed=data.draw(st.integers(0, 2**16), label="seed"))
    table = qe4.quantize(x, bits, "minmax")
    cuts = sorted(data.draw(st.sets(st.integers(1, n_rows - 1), max_size=6), label="cuts")) \
        if n_rows > 1 else []
    bounds = [0] + cuts + [n_rows]
    chunks = [qe4.QuantizedTable(table.data[a:b], bits=bits, dim=dim, method="minmax",
                                 scale_dtype=table.scale_dtype) for a, b in zip(bounds, bounds[1:])]
    lengths = data.draw(st.lists(st.integers(0, 5), max_size=8), label="bag lengths")
    idx = np.array(data.draw(st.lists(st.integers(0, n_rows - 1), min_size=sum(lengths),
                                      max_size=sum(lengths)), label="indices"), np.int64)
    offsets = np.cumsum([0] + lengths[:-1]).astype(np.int64) if lengths else np.zeros(0, np.int64)
    weights = np.linspace(-3, 3, idx.size).astype(np.float32)
    mode = data.draw(st.sampled_from(["sum", "mean", "weighted"]), label="mode")
    kw = {"per_sample_weights": weights} if mode == "weighted" else {"mode": mode}
    with tempfile.TemporaryDirectory() as d:
        sharded = S.write_sharded(chunks, os.path.join(d, "t"))
        got = sharded.embedding_bag(idx, offsets, **kw)
        gathered = sharded.rows(idx).data
    want = qe4.embedding_bag(table, idx, offsets, **kw)
    assert got.shape == want.shape and np.array_equal(got.view(np.uint8), want.view(np.uint8))
    assert np.array_equal(gathered, table.data[idx])
