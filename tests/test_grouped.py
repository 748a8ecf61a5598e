"""The grouped layout and method (qe4.grouped, qe4_fast.grouped): format, search, lookups,
files, streaming, both packages byte for byte at every thread count and SIMD level."""

import numpy as np
import pytest

import qe4
from qe4 import cli
from qe4 import grouped as G
from qe4 import io as qio
from qe4 import layouts as L
from qe4 import method_registry as M
from qe4 import shards as S
from qe4 import stream
from qe4.rowwise import fma32

qe4_fast = pytest.importorskip("qe4_fast")
from qe4_fast import _simd  # noqa: E402

F32 = np.float32
LAYOUT = L.LAYOUTS["grouped"]
BITS = LAYOUT.bits
# (dim, group, sub_bits): groups dividing the dim, a ragged last group, one group, group 1
SHAPES = [(64, 32, 6), (50, 32, 6), (7, 3, 5), (37, 8, 4), (16, 16, 8), (9, 1, 2), (33, 40, 7)]
LEVELS = _simd.levels_up_to_chosen()


def has_table(bits, levels, mins):
    """Whether the level table ``levels`` of kind ``mins`` is defined at ``bits``."""
    try:
        L.level_table({"levels": levels, "mins": mins}, bits)
    except ValueError:
        return False
    return True


# (bits, levels, mins): every kind of group offset (qe4.layouts.MINS) with every width and level
# table defined at it (qe4.layouts.LEVELS; mins="none": qe4.layouts.SIGNED_LEVELS)
WIDTHS = [(bits, name, mins) for mins in L.MINS for name in L.LEVELS for bits in BITS
          if has_table(bits, name, mins)]


@pytest.fixture(params=LEVELS, ids=lambda level: _simd.SIMD_LEVELS[level])
def level(request, monkeypatch):
    monkeypatch.setattr(_simd, "LEVEL", request.param)
    return request.param


def rows(n, dim, seed=0):
    """Rows of mixed magnitudes and offsets, a zero row, a constant row, a constant half."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(F32) * np.exp(rng.uniform(-3, 3, (n, 1))).astype(F32)
    x += rng.uniform(-2, 2, (n, 1)).astype(F32) * (rng.uniform(size=(n, 1)) < 0.3)
    x[0] = 0.0
    x[1] = 0.25
    x[2, :dim // 2] = -3.0
    return x


def options(group, sub_bits, levels="uniform", mins="group"):
    return {"group": group, "sub_bits": sub_bits, "levels": levels, "mins": mins}


# --------------------------------------------------------------------------- registry, layout

def test_registered_with_its_codes():
    m = M.get("grouped")
    assert (m.code, m.family, m.layout, m.per_row) == (9, "grouped", "grouped", True)
    assert m.defaults() == {"group": 32, "sub_bits": 6, "levels": "uniform", "mins": "group"}
    assert (LAYOUT.code, LAYOUT.bits) == (4, (2, 3, 4, 5, 6, 8))
    assert LAYOUT.self_contained and LAYOUT.uses_params
    from qe4_fast import _grouped
    assert _grouped.METHOD_CODES == {"grouped": m.code}
    assert _grouped.LAYOUT_CODES == {"grouped": LAYOUT.code}


@pytest.mark.parametrize("dim, group, sub_bits", SHAPES + [(256, 32, 6)])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mins", L.MINS)
def test_row_fields(mins, bits, dim, group, sub_bits):
    """[codes][subs][d][m], or scale-only rows (mins="none") [codes][sc_j][d]: one sub-field
    per group and no super-min."""
    n_groups = -(-dim // group)
    n_fields = 2 if mins == "group" else 1
    cb, sb = -(-dim * bits // 8), -(-n_fields * n_groups * sub_bits // 8)
    fields = LAYOUT.row_fields(dim, bits, "float16", None, options(group, sub_bits, mins=mins))
    want = [("codes", 0, cb), ("subs", cb, sb), ("d", cb + sb, 2), ("m", cb + sb + 2, 2)]
    assert [(f.name, f.offset, f.nbytes) for f in fields] == want[:2 + n_fields]
    for mod in (qe4, qe4_fast):
        t = mod.quantize(rows(3, dim), bits, "grouped", **options(group, sub_bits, mins=mins))
        size = cb + sb + 2 * n_fields
        assert t.row_bytes == size and t.nbytes == 3 * size
        assert [f.name for f in t.fields()] == ["codes", "subs", "d", "m"][:2 + n_fields]


def test_q4_k_size_and_ragged_rule():
    """bits=4, group=32, sub_bits=6 at dim 256: GGUF Q4_K's 144 bytes, 4.5 bits per value;
    the last group of a ragged row holds dim - (n_groups - 1) * group values."""
    assert LAYOUT.row_bytes(256, 4, "float16", None, options(32, 6)) == 144
    assert L.n_groups_of(50, 32) == 2 and 50 - (2 - 1) * 32 == 18
    xg, valid = G.split_groups(np.arange(14, dtype=F32).reshape(2, 7), 3)
    assert xg.shape == (2, 3, 3) and valid.sum(axis=1).tolist() == [3, 3, 1]


def test_reconstruction_by_hand(same_bytes):
    """Row values are fma(f32(|d|) * sc_j, q, f32(m) * mn_j), read from the fields; mn_j is
    two's complement in the rows whose d has its sign bit set."""
    dim, group, sub_bits = 11, 4, 5
    t = qe4.quantize(rows(16, dim, 3), 4, "grouped", **options(group, sub_bits))
    d = t.field("d").astype(F32)[:, 0]
    m = t.field("m").astype(F32)[:, 0]
    subs = L.unpack_codes(t.field("subs"), sub_bits, 2 * 3).astype(F32)
    signed = np.signbit(d)
    assert 0 < signed.sum() < 16                     # both kinds of rows occur here
    mn = np.where(signed[:, None] & (subs[:, 1::2] >= 16), subs[:, 1::2] - 32, subs[:, 1::2])
    scale = np.repeat(np.abs(d)[:, None] * subs[:, 0::2], group, axis=1)[:, :dim]
    low = np.repeat(m[:, None] * mn, group, axis=1)[:, :dim]
    want = (scale.astype(np.float64) * t.codes() + low).astype(F32)   # exact product, one rounding
    same_bytes(qe4.dequantize(t), want)
    same_bytes(qe4_fast.dequantize(t), want)


def test_scale_only_reconstruction_by_hand(same_bytes):
    """Scale-only rows read back as fma(f32(d) * sc_j, level[q], 0), sc_j two's complement
    (negative sub-scales occur: the table is mirrored), on the signed table (uniform:
    q - 2**(bits - 1)); a zero product is +0."""
    dim, group, sub_bits = 11, 4, 5
    opts = options(group, sub_bits, mins="none")
    t = qe4.quantize(rows(16, dim, 3), 4, "grouped", **opts)
    assert t.row_bytes == 6 + 2 + 2 and [f.name for f in t.fields()] == ["codes", "subs", "d"]
    level = L.level_table(opts, 4)
    same_bytes(level, np.arange(-8, 8, dtype=F32))
    d = t.field("d").astype(F32)[:, 0]
    sc = L.unpack_codes(t.field("subs"), sub_bits, 3).astype(np.int64)
    sc = np.where(sc >= 16, sc - 32, sc)
    assert (sc < 0).any() and (sc > 0).any() and (d >= 0).all()
    scale = np.repeat(d[:, None] * sc, group, axis=1)[:, :dim]
    want = (scale.astype(np.float64) * level[t.codes()] + 0.0).astype(F32)
    same_bytes(qe4.dequantize(t), want)
    same_bytes(qe4_fast.dequantize(t), want)
    same_bytes(qe4_fast.quantize(rows(16, dim, 3), 4, "grouped", **opts).data, t.data)


def test_any_signed_table(monkeypatch, level, same_bytes):
    """Scale-only groups on tables other than the uniform one (the compiled search counts
    midpoints for them, and computes the uniform table's codes by arithmetic): asymmetric
    made-up tables at 3 and 8 bits quantize and read back byte for byte."""
    rng = np.random.default_rng(11)
    tables = {}
    for bits in (3, 8):
        h = 2 ** (bits - 1)
        t = np.unique(np.rint(rng.uniform(-h, h, 2 ** bits + 8) * 1024) / 1024)[:2 ** bits]
        t[0] = -h
        tables[bits] = tuple(float(v) for v in t)
    monkeypatch.setitem(L.SIGNED_LEVELS, "nl", tables)
    for bits, (dim, group, sub_bits) in ((3, (50, 32, 6)), (3, (7, 3, 5)), (8, (37, 8, 4))):
        opts = options(group, sub_bits, "nl", "none")
        x = rows(25, dim, bits)
        want = qe4.quantize(x, bits, "grouped", **opts)
        for n_threads in (1, 2):
            same_bytes(qe4_fast.quantize(x, bits, "grouped", n_threads=n_threads, **opts).data,
                       want.data)
        same_bytes(qe4_fast.dequantize(want), qe4.dequantize(want))
        idx, off = np.arange(25)[::-1], np.array([0, 3, 20])
        same_bytes(qe4_fast.embedding_bag(want, idx, off), qe4.embedding_bag(want, idx, off))


def test_error_at_4_5_bits_per_value():
    """N(0, 1) x 256 at 4.5 bpw: below GGUF Q4_K with llama.cpp's search (0.00500) and
    far below the rowwise 4-bit rows (0.0096 at 4.125 bpw); never worse than the rounded
    parameters the local search and refit start from."""
    x = np.random.default_rng(5).standard_normal((300, 256)).astype(F32)
    t = qe4_fast.quantize(x, 4, "grouped")
    err = float(((x - qe4.dequantize(t)).astype(np.float64) ** 2).sum() / (x.astype(np.float64) ** 2).sum())
    assert 0.0045 < err < 0.00495
    xg, valid = G.split_groups(x, 32)
    d, m, sc, mn = G.super_params(*G.group_ranges(x, 4, 32), 6, False)
    scale, low = G.group_values(d, m, sc, mn)
    start = G.row_error(G.group_errors(xg, valid, G.group_codes(xg, scale, low, 4), scale, low))
    got = ((x - qe4.dequantize(t)) ** 2).sum(axis=1)
    assert (got <= start * (1 + 1e-5)).all() and got.sum() < 0.985 * start.sum()


# --------------------------------------------------------------------------- both packages

@pytest.mark.parametrize("dim, group, sub_bits", SHAPES)
@pytest.mark.parametrize("bits, levels, mins", WIDTHS)
def test_quantize_matches_reference(bits, levels, mins, dim, group, sub_bits, same_bytes):
    x = rows(40, dim, bits)
    opts = options(group, sub_bits, levels, mins)
    want = qe4.quantize(x, bits, "grouped", **opts)
    assert want.params == opts and want.layout == "grouped"
    for n_threads in (1, 2, 7):
        got = qe4_fast.quantize(x, bits, "grouped", n_threads=n_threads, **opts)
        same_bytes(got.data, want.data)
        assert got == want and got.params == want.params


@pytest.mark.parametrize("dim, group, sub_bits", SHAPES[:4] + [(256, 32, 6)])
@pytest.mark.parametrize("bits, levels, mins", WIDTHS)
def test_lookups_match_reference(bits, levels, mins, dim, group, sub_bits, level, same_bytes):
    rng = np.random.default_rng(dim)
    t = qe4.quantize(rows(30, dim, 1)[:, :dim], bits, "grouped",
                     **options(group, sub_bits, levels, mins))
    other = qe4.quantize(rows(30, 5, 2), 4, "greedy")
    idx = rng.integers(0, 30, 180)
    off = np.array([0, 0, 1, 7, 7, 40, 170])         # a bag of 130 positions: several chunks
    w = rng.uniform(-2, 2, 180).astype(F32)
    for n_threads in (1, 3):
        kw = {"n_threads": n_threads}
        same_bytes(qe4_fast.dequantize(t, **kw), qe4.dequantize(t))
        for out_dtype in ("float32", "float16", "bfloat16"):
            same_bytes(qe4_fast.embedding(t, idx[:90].reshape(9, 10), out_dtype=out_dtype, **kw),
                       qe4.embedding(t, idx[:90].reshape(9, 10), out_dtype=out_dtype))
            for mode in ("sum", "mean", "max"):
                same_bytes(qe4_fast.embedding_bag(t, idx, off, mode=mode, out_dtype=out_dtype, **kw),
                           qe4.embedding_bag(t, idx, off, mode=mode, out_dtype=out_dtype))
        same_bytes(qe4_fast.embedding_bag(t, idx, off, per_sample_weights=w, **kw),
                   qe4.embedding_bag(t, idx, off, per_sample_weights=w))
        both = np.concatenate([idx[:90], idx[:50]])            # 4 bags per table
        offs = np.array([0, 3, 3, 50, 90, 91, 95, 100])
        for mode in ("sum", "max"):
            same_bytes(qe4_fast.embedding_bags([t, other], both, offs, mode=mode, **kw),
                       qe4.embedding_bags([t, other], both, offs, mode=mode))


def test_signed_sub_mins_where_they_win():
    """Rows whose groups' minima have both signs (GloVe-like offsets) store two's
    complement sub-mins; rows of one sign (N(0, 1)) mostly keep the unsigned ones."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 64)).astype(F32)
    shifted = x + np.where(np.arange(64) % 32 < 16, F32(4.0), F32(-4.0))
    for data, most_signed in ((x, False), (shifted, True)):
        t = qe4.quantize(data, 4, "grouped", group=16)
        share = np.signbit(t.field("d").astype(F32)).mean()
        assert (share > 0.9) if most_signed else (share < 0.5)
        signed, *_ = G.grouped_params(data, 4, 16, 6)
        assert (signed == np.signbit(t.field("d").astype(F32))[:, 0]).all()


def test_dequantize_is_the_bag_of_one_row(same_bytes):
    t = qe4.quantize(rows(12, 45, 4), 3, "grouped", group=10, sub_bits=6)
    for mod in (qe4, qe4_fast):
        same_bytes(mod.embedding_bag(t, np.arange(12), np.arange(12)), qe4.dequantize(t))
        same_bytes(mod.embedding(t, np.arange(12)), qe4.dequantize(t))


def test_zero_rows_and_empty_bags(same_bytes):
    t = qe4.quantize(rows(5, 9), 4, "grouped", group=4)
    empty = qe4.QuantizedTable(t.data[:0], bits=4, dim=9, method="grouped", layout="grouped",
                               params=t.params)
    for mod in (qe4, qe4_fast):
        same_bytes(mod.dequantize(empty), np.zeros((0, 9), F32))
        same_bytes(mod.embedding_bag(t, np.zeros(0, np.int64), np.zeros(3, np.int64)),
                   np.zeros((3, 9), F32))


def test_levels_read_back_through_the_table(same_bytes):
    """A level table changes what the codes mean, not the bytes: the same rows under
    params without "levels" (a file written before the option) read as uniform levels, and
    with "nl" as fma(scale_j, level[q], min_j)."""
    t = qe4.quantize(rows(6, 40, 3), 4, "grouped", group=16, levels="nl")
    old = qe4.QuantizedTable(t.data, bits=4, dim=40, method="grouped", layout="grouped",
                             params={"group": 16, "sub_bits": 6})
    scale, low, q = G.read_rows(t)
    level = L.level_table(t.params, 4)
    s, lo = G.expand(scale, 40, 16), G.expand(low, 40, 16)
    for mod in (qe4, qe4_fast):
        same_bytes(mod.dequantize(old), fma32(s, q.astype(F32), lo))
        same_bytes(mod.dequantize(t), fma32(s, level[q], lo))


def test_a_file_written_before_levels_reads_as_uniform(same_bytes):
    """tests/golden/grouped-4bit-before-levels.qe4 has no "levels" (nor "mins") in its params:
    it loads, reads as uniform levels with a sub-min per group and holds the rows of today's
    uniform file."""
    import os
    golden = os.path.join(os.path.dirname(__file__), "golden")
    old = qe4.load(os.path.join(golden, "grouped-4bit-before-levels.qe4"))
    new = qe4.load(os.path.join(golden, "grouped-4bit.qe4"))
    assert "levels" not in old.params and "mins" not in old.params
    assert new.params == dict(old.params, levels="uniform", mins="group")
    same_bytes(old.data, new.data)
    for mod in (qe4, qe4_fast):
        same_bytes(mod.dequantize(old), qe4.dequantize(new))


def test_level_tables_are_sound():
    """Every table: 2**bits ascending float32 values from 0 to qmax, multiples of 1/1024
    (so the midpoints the codes compare against are exact)."""
    for name, tables in L.LEVELS.items():
        for bits in (tables or {}):
            level = L.level_table({"levels": name}, bits)
            assert level.dtype == F32 and level.shape == (2 ** bits,)
            assert level[0] == 0 and level[-1] == 2 ** bits - 1 and (np.diff(level) > 0).all()
            assert ((level * 1024) == np.rint(level * 1024)).all()


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, exc, match", [
    ({"group": 0}, ValueError, r"group must be in \[1, 65536\], got 0"),
    ({"group": 2.5}, TypeError, "group must be an integer, got 2.5"),
    ({"group": True}, TypeError, "group must be an integer, got True"),
    ({"sub_bits": 1}, ValueError, r"sub_bits must be in \[2, 8\], got 1"),
    ({"sub_bits": 9}, ValueError, r"sub_bits must be in \[2, 8\], got 9"),
    ({"bits": 7}, ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 7"),
    ({"scale_dtype": "float32"}, ValueError, "a grouped table stores float16 super-scales"),
    ({"n_groups": 3}, TypeError, r"unexpected keyword arguments for method 'grouped': \['n_groups'\]"),
    ({"levels": "nf4"}, ValueError, r"levels must be one of \('uniform', 'nl'\), got 'nf4'"),
    ({"levels": None}, ValueError, r"levels must be one of \('uniform', 'nl'\), got None"),
    ({"levels": "nl", "bits": 8}, ValueError, r"levels='nl' is defined for bits in \(2, 3, 4, 5, 6\), "
     "got bits=8"),
    ({"mins": "sub"}, ValueError, r"mins must be one of \('group', 'none'\), got 'sub'"),
    ({"mins": None}, ValueError, r"mins must be one of \('group', 'none'\), got None"),
])
def test_bad_options(kwargs, exc, match, same_error):
    kwargs = dict(kwargs)
    bits = kwargs.pop("bits", 4)
    x = rows(3, 8)
    err = same_error(lambda: qe4.quantize(x, bits, "grouped", **kwargs),
                     lambda: qe4_fast.quantize(x, bits, "grouped", **kwargs))
    assert isinstance(err, exc) and __import__("re").search(match, str(err))


@pytest.mark.parametrize("change, match", [
    (lambda x: np.where(x == x.max(), np.inf, x), "x must be finite"),
    (lambda x: x * F32(1e5), "overflow|float16"),
])
def test_bad_values(change, match, same_error):
    x = change(rows(4, 8))
    err = same_error(lambda: qe4.quantize(x, 4, "grouped"), lambda: qe4_fast.quantize(x, 4, "grouped"))
    assert __import__("re").search(match, str(err))


@pytest.mark.parametrize("params, match", [
    ({}, r"a grouped table needs params\['group'\]"),
    ({"group": 4}, r"a grouped table needs params\['sub_bits'\]"),
    ({"group": "4", "sub_bits": 6}, r"params\['group'\] must be an integer in \[1, 65536\], got '4'"),
    ({"group": 4, "sub_bits": 1}, r"params\['sub_bits'\] must be an integer in \[2, 8\], got 1"),
    ({"group": 2, "sub_bits": 6}, "data has 14 bytes per row; a grouped 4-bit table of dim 9 .* needs 17"),
    ({"group": 4, "sub_bits": 6, "levels": "NL"}, r"params\['levels'\] must be one of \('uniform', 'nl'\), "
     "got 'NL'"),
    ({"group": 4, "sub_bits": 6, "levels": 1}, r"params\['levels'\] must be one of"),
    ({"group": 4, "sub_bits": 6, "mins": "x"}, r"params\['mins'\] must be one of \('group', 'none'\), "
     "got 'x'"),
    ({"group": 4, "sub_bits": 6, "mins": "none"}, "data has 14 bytes per row; .* needs 10"),
])
def test_bad_tables(params, match):
    t = qe4.quantize(rows(3, 9), 4, "grouped", group=4)        # 5 + 5 + 4 = 14 bytes
    with pytest.raises(ValueError, match=match):
        qe4.QuantizedTable(t.data, bits=4, dim=9, method="grouped", layout="grouped", params=params)
    with pytest.raises(ValueError, match="stores float16 super-scales"):
        qe4.QuantizedTable(t.data, bits=4, dim=9, layout="grouped", params=t.params,
                           scale_dtype="float32")


def test_kernels_check_the_row_size():
    """The compiled lookups refuse rows whose size is not that of the kind of group offset
    they are told (2 sub-fields and a 4-byte tail, or 1 and a 2-byte tail)."""
    from qe4_fast import _grouped
    t = qe4.quantize(rows(3, 9), 4, "grouped", group=4)        # 5 + 5 + 4 = 14 bytes
    s = qe4.quantize(rows(3, 9), 4, "grouped", group=4, mins="none")   # 5 + 3 + 2 = 10 bytes
    lev = L.level_table(s.params, 4)
    out = np.empty((3, 9), F32)
    for data, mins in ((t.data, "none"), (s.data, "group")):
        with pytest.raises(ValueError, match="are not grouped rows of dim 9"):
            _grouped.row_values(data, 9, 4, 4, 6, mins, lev, None, out, 1, _simd.LEVEL)
    with pytest.raises(ValueError, match="mins must be one of"):
        _grouped.row_values(s.data, 9, 4, 4, 6, "zero", lev, None, out, 1, _simd.LEVEL)
    with pytest.raises(ValueError, match="need a level table"):
        _grouped.row_values(s.data, 9, 4, 4, 6, "none", None, None, out, 1, _simd.LEVEL)


# --------------------------------------------------------------------------- files, streaming

@pytest.mark.parametrize("mins", L.MINS)
@pytest.mark.parametrize("mmap", (True, False))
def test_save_load(tmp_path, mmap, mins, same_bytes):
    t = qe4_fast.quantize(rows(20, 13), 5, "grouped", group=6, sub_bits=7, mins=mins)
    qe4.save(t, tmp_path / "g.qe4")
    back = qe4.load(tmp_path / "g.qe4", mmap=mmap)
    assert back == t and back.params == options(6, 7, mins=mins) and back.layout == "grouped"
    same_bytes(qe4_fast.dequantize(back), qe4.dequantize(t))
    assert qio.read_metadata(tmp_path / "g.qe4")["layout"] == "grouped"


@pytest.mark.parametrize("mins", L.MINS)
def test_stream_shards_and_dask(tmp_path, mins, same_bytes):
    x = rows(70, 20, 9)
    want = qe4.quantize(x, 4, "grouped", group=8, sub_bits=5, mins=mins)
    np.save(tmp_path / "x.npy", x)
    stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", 4, "grouped", group=8, sub_bits=5,
                         mins=mins, max_memory=8192)
    same_bytes(qe4.load(tmp_path / "s.qe4").data, want.data)
    st = S.write_sharded(want, tmp_path / "sh", rows_per_shard=30)
    idx = np.array([69, 0, 31, 30, 5])
    same_bytes(st.embedding_bag(idx, [0, 2]), qe4.embedding_bag(want, idx, [0, 2]))
    same_bytes(st.to_table().data, want.data)
    da = pytest.importorskip("dask.array")
    import dask
    from qe4 import dask as qd
    with dask.config.set(scheduler="synchronous"):
        got = qd.quantize(da.from_array(x, chunks=(25, 20)), 4, "grouped", engine="fast",
                          group=8, sub_bits=5, mins=mins).to_table()
    same_bytes(got.data, want.data)


@pytest.mark.parametrize("mins", L.MINS)
def test_cli_quantize(tmp_path, capsys, mins, same_bytes):
    x = rows(30, 24, 2)
    np.save(tmp_path / "x.npy", x)
    code = cli.main(["quantize", str(tmp_path / "x.npy"), str(tmp_path / "g.qe4"), "--method",
                     "grouped", "--bits", "3", "--group", "8", "--sub-bits", "5", "--mins", mins])
    assert code == 0, capsys.readouterr().err
    back = qe4.load(tmp_path / "g.qe4")
    assert back.params["mins"] == mins
    same_bytes(back.data, qe4.quantize(x, 3, "grouped", group=8, sub_bits=5, mins=mins).data)


# --------------------------------------------------------------------------- the compiled bag's paths

# (dim, group, sub_bits) for qe4_fast's AVX2 bag (_grouped_kernels.h): 1, 2, 4 and 8 column
# vectors per group (groups 8, 16, 32, a multiple of 64), other multiples of 8 (24, 40),
# dims not a multiple of 8 or 64 (a ragged last group, a run's last vectors), more groups
# than one run of terms holds (300 / 8: 38 groups), dim 64 (the one-block bag) with each
# kind of group, every sub_bits
BAG_SHAPES = [(64, 16, 4), (64, 8, 3), (64, 24, 6), (64, 64, 5), (128, 8, 2), (200, 32, 6),
              (70, 32, 3), (300, 8, 5), (192, 64, 8), (256, 128, 7), (136, 24, 6), (100, 40, 6),
              (65, 32, 6), (20, 5, 6)]


def random_rows(n, dim, bits, group, sub_bits, levels, mins, seed):
    """A table of random bytes in every field (codes, sub-scales, sub-mins, both sub-min
    modes; scale-only: signed sub-scales) under finite random super-parameters."""
    rng = np.random.default_rng(seed)
    params = options(group, sub_bits, levels, mins)
    row_bytes = LAYOUT.row_bytes(dim, bits, "float16", None, params)
    data = rng.integers(0, 256, (n, row_bytes), dtype=np.uint8)
    k = 2 if mins == "group" else 1
    dm = (rng.standard_normal((n, k)) * np.exp(rng.uniform(-4, 4, (n, k)))).astype(np.float16)
    data[:, -2 * k:] = dm.view(np.uint8)
    return qe4.QuantizedTable(data, bits=bits, dim=dim, method="grouped", layout="grouped",
                              params=params)


@pytest.mark.parametrize("dim, group, sub_bits", BAG_SHAPES)
@pytest.mark.parametrize("bits, levels, mins", WIDTHS)
def test_bag_paths_match_reference(bits, levels, mins, dim, group, sub_bits, level, same_bytes):
    rng = np.random.default_rng(dim + bits)
    # qe4_fast's rows (the reference's bytes: test_quantize_matches_reference), for speed
    quantized = qe4_fast.quantize(rows(24, dim, 1), bits, "grouped",
                                  **options(group, sub_bits, levels, mins))
    crafted = random_rows(24, dim, bits, group, sub_bits, levels, mins, dim)
    idx = rng.integers(0, 24, 200)
    off = np.array([0, 0, 3, 3, 70, 199])    # empty bags, a bag of 1, bags longer than a chunk
    w = rng.uniform(-2, 2, 200).astype(F32)
    for t in (quantized, crafted):
        calls = {(mode, None): (idx, off, {"mode": mode}) for mode in ("sum", "mean", "max")}
        calls["weighted"] = (idx, off, {"per_sample_weights": w})
        want = {key: qe4.embedding_bag(t, i, o, **kw) for key, (i, o, kw) in calls.items()}
        rows_want = qe4.embedding(t, idx[:50])
        for n_threads in (1, 2):
            for key, (i, o, kw) in calls.items():
                same_bytes(qe4_fast.embedding_bag(t, i, o, n_threads=n_threads, **kw), want[key])
            same_bytes(qe4_fast.embedding(t, idx[:50], n_threads=n_threads), rows_want)
