"""Mixed-precision tables (qe4.mixed): the row map, building from an allocation, lookups in
both packages (byte-identical at every thread count), files, and malformed tables refused."""

import numpy as np
import pytest

import qe4
import qe4_fast
import qe4_fast.mixed as FM
from qe4 import allocate as A
from qe4 import mixed as M

F32 = np.float32


# --------------------------------------------------------------------------- the row map

@pytest.mark.parametrize("n_rows", [1, 63, 64, 65, 256, 257, 1000])
@pytest.mark.parametrize("n_tiers", [2, 3, 5, 8])
def test_map_round_trip(n_rows, n_tiers, same_bytes):
    rng = np.random.default_rng(n_rows * 10 + n_tiers)
    tier = rng.integers(0, n_tiers, n_rows)
    planes, ranks = M.encode_map(tier, n_tiers)
    assert planes.shape == (-(-n_rows // 64), M.tier_bits(n_tiers)) and planes.dtype == np.uint64
    assert ranks.shape == (-(-n_rows // 256), n_tiers) and ranks.dtype == np.uint32
    # rank = rows of the same tier before this one
    want = np.array([np.count_nonzero(tier[:r] == tier[r]) for r in range(n_rows)])
    rows = np.arange(n_rows)[::-1].copy()
    t, r = M.decode_map(planes, ranks, rows)
    same_bytes(t, tier[rows].astype(np.int64))
    same_bytes(r, want[rows].astype(np.int64))
    extras = {"tiers": np.zeros((n_tiers, 4), np.int32), "planes": planes, "ranks": ranks}
    for n_threads in (1, 2, 7):
        ft, fr = FM.locate(extras, rows, n_threads)
        same_bytes(ft, t)
        same_bytes(fr, r)
    assert M.map_nbytes(n_rows, n_tiers) == planes.nbytes + ranks.nbytes + 16 * n_tiers


def test_map_by_hand(same_bytes):
    # rows 0..5 with tiers 2 0 1 2 2 0 (3 tiers: 2 bits); plane 0 = bit 0 of the tier
    # codes (rows 2: 0b000100), plane 1 = bit 1 (rows 0, 3, 4: 0b011001)
    planes, ranks = M.encode_map(np.array([2, 0, 1, 2, 2, 0]), 3)
    same_bytes(planes, np.array([[0b000100, 0b011001]], np.uint64))
    same_bytes(ranks, np.zeros((1, 3), np.uint32))
    t, r = M.decode_map(planes, ranks, np.arange(6))
    assert t.tolist() == [2, 0, 1, 2, 2, 0] and r.tolist() == [0, 0, 0, 1, 2, 1]
    assert M.tier_bits(1) == 0 and M.tier_bits(2) == 1 and M.tier_bits(6) == 3
    assert M.map_nbytes(1000, 6) == 16 * 6 + 16 * 3 * 8 + 4 * 6 * 4
    assert M.map_nbytes(1000, 6, "renumber") == 16 * 6
    assert M.map_nbytes(1000, 1) == 16


# --------------------------------------------------------------------------- building

def _x(n=600, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(F32)
    x[:4] *= F32(20)
    return x


def _mixed(x, row_map="tiers", budget="3.5bpw", rungs=None):
    a = A.allocate(x, budget, weights=qe4.zipf_weights(len(x)), ladder=rungs, row_map=row_map)
    table = M.quantize_mixed(x, a.choices[0], a.ladder, row_map=row_map)
    return a, table, M.renumbering(a.choices[0]) if row_map == "renumber" else None


@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_build_counts_and_reconstructs(row_map, same_bytes):
    x = _x()
    a, t, order = _mixed(x, row_map)
    assert t.layout == "mixed" and t.shape == x.shape
    assert t.nbytes == a.nbytes                       # every stored byte is the allocation's
    assert (order is None) == (row_map == "tiers")
    ch = a.choices[0] if order is None else a.choices[0][order]
    xs = x if order is None else x[order]
    xh = qe4.dequantize(t)
    for k, rung in enumerate(a.ladder):
        rows = np.flatnonzero(ch == k)
        if rows.size:
            same_bytes(xh[rows], rung.reconstruct(xs[rows], "reference"))
    assert qe4.table_error(x if order is None else xs, xh,
                           qe4.zipf_weights(len(x)) if order is None
                           else qe4.zipf_weights(len(x))[order]) == pytest.approx(a.error, rel=1e-12)
    for n_threads in (1, 2, 7):
        same_bytes(qe4_fast.dequantize(t, n_threads=n_threads), xh)


def test_build_reference_and_fast_same_bytes(same_bytes):
    x = _x()
    a = A.allocate(x, "3.0bpw")
    t1 = M.quantize_mixed(x, a.choices[0], a.ladder, engine="reference")
    t2 = M.quantize_mixed(x, a.choices[0], a.ladder, n_threads=2)
    assert t1 == t2


def test_chunked_build_equals_one_chunk(monkeypatch):
    x = _x(1500, 6)
    a = A.allocate(x, "3.0bpw")
    whole = M.quantize_mixed(x, a.choices[0], a.ladder)
    monkeypatch.setattr(M, "CHUNK_ROWS", 256)
    assert M.quantize_mixed(x, a.choices[0], a.ladder) == whole


def test_one_tier_needs_no_map():
    x = _x(50, 6)
    t = M.quantize_mixed(x, np.full(50, 2), A.ladder())
    assert sorted(t.extras) == ["tier0", "tiers"] and t.nbytes == 50 * 7 + 16


# --------------------------------------------------------------------------- lookups

def _bags(n_rows, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 12, 40)
    lengths[3] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    idx = rng.integers(0, n_rows, int(lengths.sum())).astype(np.int64)
    idx[:8] = np.arange(8)          # the heavy (fine) and pruned rows
    w = rng.standard_normal(idx.size).astype(F32)
    return idx, offsets, w


@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_bag_is_the_sum_of_the_tiers_bags(row_map, same_bytes):
    x = _x()
    a, t, _ = _mixed(x, row_map)
    idx, offsets, w = _bags(len(x))
    starts = np.append(offsets, idx.size)
    tier, rank = M.locate(t.extras, idx)
    for weights in (None, w):
        want = np.zeros((offsets.size, x.shape[1]), F32)
        for k in range(t.extras["tiers"].shape[0]):
            sub = M.sub_table(t.extras, k, t.dim)
            if sub is None:
                continue
            mine = tier == k
            sub_off = np.concatenate([[0], np.cumsum(mine)])[starts]
            wk = None if weights is None else weights[mine]
            if isinstance(sub, np.ndarray):
                part = M.float_bag(sub, rank[mine], sub_off, wk)
            else:
                part = qe4.embedding_bag(sub, rank[mine], sub_off, include_last_offset=True,
                                         per_sample_weights=wk)
            want = want + part
        same_bytes(qe4.embedding_bag(t, idx, offsets, per_sample_weights=weights), want)


def test_bag_pruned_rows_are_skipped_but_counted_in_mean(same_bytes):
    x = _x(40, 4)
    rung = f"{A.DEFAULT_METHOD}/4"
    choice = np.full(40, A.default_ladder().index(rung))
    choice[[1, 3]] = A.default_ladder().index("pruned")
    t = M.quantize_mixed(x, choice, A.ladder(), engine="reference")
    xh = qe4.dequantize(t)
    assert not xh[[1, 3]].any()
    idx = np.array([1, 0, 3, 2, 1])
    got = qe4.embedding_bag(t, idx, np.array([0, 1, 3]), mode="mean")
    plain = qe4.quantize(x, 4, A.DEFAULT_METHOD)
    for bag, row in ((1, 0), (2, 2)):       # one stored row and one pruned row: half of it
        same_bytes(got[bag], (qe4.embedding_bag(plain, np.array([row]), np.array([0]))[0]
                              * (F32(1) / F32(2))).astype(F32))
    assert not got[0].any()


@pytest.mark.parametrize("row_map", M.ROW_MAPS)
@pytest.mark.parametrize("n_threads", [1, 2, 7])
def test_fast_bags_same_bytes(row_map, n_threads, same_bytes):
    x = _x(700, 33)
    _, t, _ = _mixed(x, row_map, budget="6bpw")
    idx, offsets, w = _bags(len(x), 1)
    for kw in (dict(), dict(mode="mean"), dict(per_sample_weights=w)):
        same_bytes(qe4_fast.embedding_bag(t, idx, offsets, n_threads=n_threads, **kw),
                   qe4.embedding_bag(t, idx, offsets, **kw))
    fixed = idx[:60].reshape(6, 10)
    same_bytes(qe4_fast.embedding_bag(t, fixed, n_threads=n_threads), qe4.embedding_bag(t, fixed))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_gather_max_and_several_tables(n_threads, same_bytes):
    x = _x(400, 12)
    _, t, _ = _mixed(x, budget="5bpw")
    idx, offsets, w = _bags(len(x), 2)
    xh = qe4.dequantize(t)
    for out_dtype in ("float32", "float16"):
        ref = qe4.embedding(t, idx.reshape(-1, 1), out_dtype=out_dtype)
        same_bytes(ref[:, 0], xh[idx].astype(out_dtype))          # the stored rows, rounded once
        same_bytes(qe4_fast.embedding(t, idx.reshape(-1, 1), out_dtype=out_dtype,
                                      n_threads=n_threads), ref)
        mx = qe4.embedding_bag(t, idx, offsets, mode="max", out_dtype=out_dtype)
        same_bytes(qe4_fast.embedding_bag(t, idx, offsets, mode="max", out_dtype=out_dtype,
                                          n_threads=n_threads), mx)
    # max reads the rows' values, pruned rows as zeros
    starts = np.append(offsets, idx.size)
    for b in range(offsets.size):
        rows = xh[idx[starts[b]:starts[b + 1]]]
        same_bytes(mx[b], rows.max(axis=0).astype(np.float16) if rows.size else
                   np.zeros(12, np.float16))
    plain = qe4.quantize(x, 4, "greedy")
    cat = np.concatenate([idx, idx])
    offs = np.concatenate([offsets, offsets + idx.size])
    for kw in (dict(), dict(mode="mean"), dict(per_sample_weights=np.concatenate([w, w]))):
        ref = qe4.embedding_bags([t, plain], cat, offs, **kw)
        same_bytes(ref[:, :12], qe4.embedding_bag(t, idx, offsets, **{
            k: (v[:idx.size] if k == "per_sample_weights" else v) for k, v in kw.items()}))
        same_bytes(qe4_fast.embedding_bags([t, plain], cat, offs, n_threads=n_threads, **kw), ref)


def test_bag_refuses_out_of_range():
    x = _x(30, 4)
    _, t, _ = _mixed(x, budget="8bpw")
    for mod in (qe4, qe4_fast):
        with pytest.raises(IndexError, match="indices\\[1\\] = 30 is out of range"):
            mod.embedding_bag(t, np.array([0, 30]), np.array([0]))


# --------------------------------------------------------------------------- files

@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_save_load(tmp_path, row_map, same_bytes):
    x = _x()
    _, t, _ = _mixed(x, row_map)
    path = tmp_path / "m.qe4"
    qe4.save(t, path)
    back = qe4.load(path)
    assert back == t and back.params == t.params and back.nbytes == t.nbytes
    idx, offsets, _ = _bags(len(x))
    same_bytes(qe4_fast.embedding_bag(back, idx, offsets), qe4.embedding_bag(t, idx, offsets))


# --------------------------------------------------------------------------- malformed

def _broken(t, **changes):
    extras = dict(t.extras)
    extras.update(changes)
    extras = {k: v for k, v in extras.items() if v is not None}
    return lambda: qe4.QuantizedTable(t.data, bits=t.bits, dim=t.dim, method="mixed",
                                      layout="mixed", extras=extras)


def test_malformed_tables_are_refused():
    x = _x(300, 8)
    _, t, _ = _mixed(x)
    e = t.extras
    n_tiers = e["tiers"].shape[0]
    ranks = e["ranks"].copy()
    ranks[1, 0] += 1
    planes = e["planes"].copy()
    planes[-1, 0] |= np.uint64(1) << np.uint64(63)        # a padding bit (300 % 64 = 44)
    all_ones = e["planes"].copy()
    all_ones[0] = ~np.uint64(0)                            # tier code 2**b - 1 >= T
    tiers = e["tiers"].copy()
    tiers[0, 3] += 1
    cases = [
        (dict(ranks=ranks), "does not match the tier codes"),
        (dict(planes=planes), "bits past the last row are not zero"),
        (dict(tiers=tiers), "extras\\['tiers'\\] holds 301 rows"),
        (dict(ranks=None), "extras\\['ranks'\\] must be uint32"),
        (dict(tiers=e["tiers"][:, :3].copy()), "must be int32 \\[T, 4\\]"),
        (dict(stray=np.zeros(3)), "extras \\['stray'\\] are not part"),
        (dict(tier1=e["tier1"][:, :-1].copy()), "is not a valid tier"),
    ]
    if n_tiers & (n_tiers - 1):
        cases.append((dict(planes=all_ones), "has a tier code >= "))
    for changes, match in cases:
        with pytest.raises(ValueError, match=match):
            _broken(t, **changes)()
    with pytest.raises(ValueError, match="0 bytes per row"):
        qe4.QuantizedTable(np.zeros((300, 1), np.uint8), bits=8, dim=8, layout="mixed",
                           extras=dict(e))


def test_map_changed_in_place_raises_in_both_packages():
    x = _x(300, 8)
    t = M.quantize_mixed(x, np.arange(300) % 3 * 2, A.ladder())      # 3 tiers: 2-bit codes
    t.extras["planes"][0] = ~np.uint64(0)                 # rows 0..63: code 3 >= T
    for mod in (qe4, qe4_fast):
        with pytest.raises(ValueError, match="the row map gives row 5 tier"):
            mod.embedding_bag(t, np.array([5]), np.array([0]))


def test_quantize_mixed_refuses_bad_choice():
    x = _x(10, 4)
    k = len(A.ladder())
    with pytest.raises(ValueError, match=f"choice\\[2\\] = {k} is not a rung"):
        M.quantize_mixed(x, np.array([0, 1, k, 0, 0, 0, 0, 0, 0, 0]), A.ladder())
    with pytest.raises(ValueError, match="choice must have shape \\(10,\\)"):
        M.quantize_mixed(x, np.zeros(9, int), A.ladder())
    with pytest.raises(TypeError, match="choice must be a 1-D integer array"):
        M.quantize_mixed(x, np.zeros(10), A.ladder())


# --------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_streamed_file_equals_in_memory(tmp_path, row_map):
    from qe4 import stream
    x = _x(3000, 12)
    np.save(tmp_path / "x.npy", x)
    w = qe4.zipf_weights(len(x))
    w[5::7] = 0.0                           # rows never read (the solver weighs in place)
    info = stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", "3.0bpw", weights=w,
                                       row_map=row_map, max_memory=300_000)
    assert info["n_chunks"] > 1 and info["chunk_rows"] % M.SUPER == 0
    a = A.allocate(x, "3.0bpw", weights=w, row_map=row_map)
    assert qe4.load(tmp_path / "m.qe4") == a.quantize(x)
    assert info["error"] == a.error and info["nbytes"] == a.nbytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qe4", "x.npy"]   # no temporaries


def test_streamed_bad_input_names_the_row_and_leaves_no_file(tmp_path):
    from qe4 import stream
    x = _x(1000, 8)
    x[700, 3] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match="row 700, column 3 is inf"):
        stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", "3bpw",
                                    max_memory=300_000)
    with pytest.raises(ValueError, match="budget of 10 bytes is below"):
        stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", 10)
    with pytest.raises(ValueError, match=r"weights must have shape \(1000,\)"):
        stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", "3bpw",
                                    weights=np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_streamed_progress_bar_counts_both_passes(tmp_path, capsys):
    from qe4 import stream
    np.save(tmp_path / "x.npy", _x(300, 8))
    stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", "3bpw", progress=True,
                                engine="reference")
    err = capsys.readouterr().err
    assert "100%" in err and "600/600" in err          # two passes over 300 rows


STREAM_DIES = """
import os, sys
from qe4 import mixed, stream
real = mixed.build_mixed
def dies(chunks, *a, **k):
    def some():
        for i, c in enumerate(chunks):
            if i == 1:
                os._exit(9)                 # as kill -9 would: no cleanup runs
            yield c
    return real(some(), *a, **k)
mixed.build_mixed = dies
stream.quantize_file_budget(sys.argv[1], sys.argv[2], "3bpw", engine="reference",
                            max_memory=300_000, ladder=["pruned", "minmax/2", "float16"])
"""


def test_a_streamed_run_that_dies_leaves_temps_the_next_writer_removes(tmp_path):
    import os
    import subprocess
    import sys
    from qe4 import stream
    np.save(tmp_path / "x.npy", _x(3000, 12))
    here = os.path.dirname(os.path.dirname(os.path.abspath(qe4.__file__)))   # the qe4 under test
    r = subprocess.run([sys.executable, "-c", STREAM_DIES, str(tmp_path / "x.npy"),
                        str(tmp_path / "m.qe4")], cwd=here, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 9, r.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "x.npy")
    assert left and all(n.startswith(".m.qe4.") and n.endswith(".qe4tmp") for n in left)
    # the next run writing m.qe4 removes them (qe4.io.remove_stale_temps: their writer is dead)
    stream.quantize_file_budget(tmp_path / "x.npy", tmp_path / "m.qe4", "3bpw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qe4", "x.npy"]
