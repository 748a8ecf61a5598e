"""Gathers (``embedding``), max bags, float16/bfloat16 outputs and batched multi-table bags
(``embedding_bags``): the reference's rules by hand and against torch, and qe4_fast byte
for byte against the reference for every layout, bit width, kernel and thread count."""

import inspect

import numpy as np
import pytest

import qe4
import qe4_fast
from qe4 import _validate as V
from qe4.bag import round_output
from qe4.table import QuantizedTable
from qe4_fast import _lookup, _simd
from qe4_fast import bag as fast

from conftest import make_kind, table_kinds

try:
    import ml_dtypes            # numpy's bfloat16 (the "bfloat16" extra)
except ImportError:             # pragma: no cover - the bfloat16 cases skip
    ml_dtypes = None

F32 = np.float32
DIMS = [1, 7, 33, 257]
N_THREADS = [1, 2, 7]
OUT_DTYPES = V.OUT_DTYPES if ml_dtypes else tuple(d for d in V.OUT_DTYPES if d != "bfloat16")
KERNELS = _simd.levels_up_to_chosen()


KINDS = table_kinds()
ROWWISE_KINDS = [k for k in KINDS if k[0] == "rowwise"]


def test_every_layout_is_covered():
    from qe4.table import LAYOUTS
    # mixed tables are made by qe4.mixed.quantize_mixed, not qe4.quantize: tests/test_mixed.py
    assert {k[0] for k in KINDS} == set(LAYOUTS) - {"mixed"}


def make_table(kind, n_rows, dim, seed=0):
    return make_kind(kind, n_rows, dim, seed, KINDS)


@pytest.fixture(params=KERNELS, ids=lambda level: _simd.SIMD_LEVELS[level])
def kernel(request, monkeypatch):
    """Run at each SIMD level up to qe4_fast's (the rounding to float16/bfloat16 included)."""
    monkeypatch.setattr(_simd, "LEVEL", request.param)
    return request.param


def bags(rng, n_rows, n_bags, max_len=6):
    lengths = rng.integers(0, max_len, n_bags)
    lengths[0] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return rng.integers(0, n_rows, int(lengths.sum())), offsets


def batched_bags(rng, tables, n_bags):
    """Each table's (indices, offsets into the concatenation), and the concatenations."""
    parts, off = [], []
    for t in tables:
        i, o = bags(rng, t.n_rows, n_bags)
        off.append(o + sum(p.size for p in parts))
        parts.append(i)
    return parts, off, np.concatenate(parts), np.concatenate(off)


# ----------------------------------------------------------------------------- reference rules

@pytest.mark.parametrize("kind", list(KINDS), ids=str)
def test_embedding_is_dequantize_indexed(kind, same_bytes):
    table = make_table(kind, 9, 7)
    full = qe4.dequantize(table)
    for idx in (np.array(4), np.array([3, 3, 0, 8]), np.arange(24).reshape(2, 3, 4) % 9,
                np.zeros((0, 5), np.int32)):
        got = qe4.embedding(table, idx)
        assert got.shape == idx.shape + (7,)
        same_bytes(got, full[idx])


def test_round_output_rule(same_bytes):
    """float16: numpy's IEEE cast; bfloat16: ml_dtypes' cast (both nearest-even); NaN
    canonical with its sign; overflow to inf; every kernel gives the same bits."""
    if ml_dtypes is None:
        pytest.skip("ml_dtypes (the bfloat16 extra) is not installed")
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32),
                        np.arange(0x33000000 - 4, 0x33000004, dtype=np.uint32),  # 2^-25 tie
                        np.arange(0x38800000 - 9, 0x38800009, dtype=np.uint32),  # 2^-14
                        np.arange(0x477fe000 - 9, 0x47800009, dtype=np.uint32),  # 65504 .. 65536
                        np.array([0x7f7fffff, 0x7f800000, 0x7fc00000, 0x7f800001, 0x7fffffff,
                                  0, 1, 0x00800000, 0x3f808000, 0x3f818000], np.uint32)])
    u = np.concatenate([u, u | np.uint32(0x80000000)])
    x = u.view(F32)
    nan = np.isnan(x)
    h = round_output(x, "float16")
    b = round_output(x, "bfloat16")
    assert h.dtype == np.float16 and b.dtype == ml_dtypes.bfloat16
    with np.errstate(over="ignore", invalid="ignore"):
        same_bytes(h[~nan], x[~nan].astype(np.float16))
        same_bytes(b[~nan], x[~nan].astype(ml_dtypes.bfloat16))
    sign = (u[nan] >> 16).astype(np.uint16) & np.uint16(0x8000)
    same_bytes(h[nan].view(np.uint16), sign | np.uint16(0x7e00))
    same_bytes(b[nan].view(np.uint16), sign | np.uint16(0x7fc0))
    # by hand: 65519.996 rounds down to 65504, the tie 65520 and above to inf; 1 + 2^-8
    # (a bfloat16 tie) to 1, 1 + 3 * 2^-8 to 1 + 2^-6 (even)
    assert np.array_equal(round_output(np.array([65519.996, 65520, -1e6], F32), "float16"),
                          np.array([65504, np.inf, -np.inf], np.float16))
    same_bytes(round_output(np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8], F32), "bfloat16").view(np.uint16),
               np.array([0x3f80, 0x3f82], np.uint16))
    for code, ref in ((1, h), (2, b)):
        for simd in KERNELS:
            out = np.empty(x.size * 2, np.uint8)
            _lookup.round_floats(x, code, out, min(simd, 1))
            same_bytes(out.view(np.uint16), ref.view(np.uint16))


def test_lookups_round_the_float32_result_once(same_bytes):
    table = make_table(("rowwise", 4, "float16"), 30, 33)
    idx, off = bags(np.random.default_rng(1), 30, 8)
    for od in OUT_DTYPES:
        same_bytes(qe4.embedding_bag(table, idx, off, mode="mean", out_dtype=od),
                   round_output(qe4.embedding_bag(table, idx, off, mode="mean"), od))
        same_bytes(qe4.embedding(table, idx, out_dtype=np.dtype(F32) if od == "float32" else od),
                   round_output(qe4.embedding(table, idx), od))


def test_max_by_hand(same_bytes):
    # exact 4-bit rows: bias 0 and scale 1 (row 0), bias -2 and scale 1 (row 1), zeros (row 2)
    x = np.array([[0, 15, 1, 0], [-2, 13, 0, -1], [0, 0, 0, 0]], F32)
    t = qe4.quantize(x, 4, "minmax")
    got = qe4.embedding_bag(t, np.array([0, 1, 2, 1]), np.array([0, 2, 2, 3]), mode="max")
    same_bytes(got, np.array([[0, 15, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [-2, 13, 0, -1]], F32))
    # ties keep the earlier value: -0.0 (a crafted bias) then +0.0 keeps -0.0, and back
    data = t.data.copy()
    data[2, 2:] = np.array([-1.0, -0.0], "<f2").view(np.uint8)   # row 2: -1 * 0 + -0 = -0.0
    crafted = QuantizedTable(data, bits=4, dim=4)
    m = qe4.embedding_bag(crafted, np.array([[2, 0], [0, 2]]), mode="max")
    assert np.signbit(m[0, [0, 3]]).all() and not np.signbit(m[1, [0, 3]]).any()
    # a NaN (infinite stored scale: inf * 0) stays once met
    data[1, 2:4] = np.array([np.inf], "<f2").view(np.uint8)
    bad = QuantizedTable(data, bits=4, dim=4)
    m = qe4.embedding_bag(bad, np.array([[0, 1, 0]]), mode="max")
    assert np.isnan(m[0, 0]) and (m[0, 1:] == np.inf).all()   # codes 0, 15, 2, 1


def test_embedding_bags_is_the_tables_side_by_side(same_bytes):
    rng = np.random.default_rng(2)
    tables = [make_table(k, 20 + i, d, seed=i) for i, (k, d) in
              enumerate(zip(KINDS, [1, 7, 33, 4, 9, 2, 5, 8, 3, 6, 7, 1, 2][:len(KINDS)]))]
    parts, off, indices, offsets = batched_bags(rng, tables, 5)
    w = rng.standard_normal(indices.size).astype(F32)
    for mode, weights in (("sum", w), ("mean", None), ("max", None)):
        got = qe4.embedding_bags(tables, indices, offsets, mode=mode, per_sample_weights=weights)
        one = [qe4.embedding_bag(t, parts[k], off[k] - off[k][0], mode=mode,
                                 per_sample_weights=None if weights is None
                                 else weights[off[k][0]:off[k][0] + parts[k].size])
               for k, t in enumerate(tables)]
        same_bytes(got, np.concatenate(one, axis=1))


def test_peers_agree(same_bytes):
    """torch's F.embedding / F.embedding_bag(max) on the dequantized weight, and torch's
    own float16/bfloat16 casts of the float32 result."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    F = torch.nn.functional
    table = make_table(("rowwise", 4, "float16"), 50, 33)
    w = torch.from_numpy(qe4.dequantize(table))
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 50, (4, 6))
    same_bytes(qe4.embedding(table, idx), F.embedding(torch.from_numpy(idx), w).numpy())
    same_bytes(qe4.embedding_bag(table, idx, mode="max"),
               F.embedding_bag(torch.from_numpy(idx), w, mode="max").numpy())
    r = qe4.embedding_bag(table, idx, mode="sum")
    same_bytes(qe4.embedding_bag(table, idx, out_dtype="float16"),
               torch.from_numpy(r).half().numpy())
    same_bytes(qe4.embedding_bag(table, idx, out_dtype="bfloat16").view(np.uint16),
               torch.from_numpy(r).bfloat16().view(torch.int16).numpy().view(np.uint16))


# ----------------------------------------------------------------------------- qe4_fast twins

@pytest.mark.parametrize("name", ["embedding", "embedding_bag", "embedding_bags"])
def test_signature_is_the_reference_plus_n_threads(name):
    ref = inspect.signature(getattr(qe4, name))
    got = inspect.signature(getattr(qe4_fast, name))
    params = list(got.parameters.values())
    assert params[-1].name == "n_threads" and params[-1].default is None
    assert got.replace(parameters=params[:-1]) == ref


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", list(KINDS), ids=str)
def test_fast_matches_reference(kind, dim, kernel, same_bytes):
    rng = np.random.default_rng(dim)
    table = make_table(kind, 23, dim, seed=dim)
    gidx = rng.integers(0, 23, (3, 5)).astype(np.int32)
    idx, off = bags(rng, 23, 9)
    w = rng.standard_normal(idx.size).astype(F32)
    for k, od in enumerate(OUT_DTYPES):
        for n_threads in N_THREADS:
            same_bytes(fast.embedding(table, gidx, out_dtype=od, n_threads=n_threads),
                       qe4.embedding(table, gidx, out_dtype=od))
        n_threads = N_THREADS[k]
        for mode, weights in (("sum", None), ("sum", w), ("mean", None), ("max", None)):
            kw = dict(mode=mode, per_sample_weights=weights, out_dtype=od)
            same_bytes(fast.embedding_bag(table, idx, off, **kw, n_threads=n_threads),
                       qe4.embedding_bag(table, idx, off, **kw))
        same_bytes(fast.embedding_bag(table, gidx, mode="max", out_dtype=od, n_threads=1),
                   qe4.embedding_bag(table, gidx, mode="max", out_dtype=od))


STREAM_BYTES = 8 << 20      # _lookup_kernels.h: larger float32 gathers stream their output


@pytest.mark.parametrize("kind", list(KINDS), ids=str)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fast_large_gather_streams_the_same_bytes(kind, n_threads, kernel, same_bytes):
    """A float32 gather of more than 8 MiB takes the streaming-store path (AVX2): the same
    bytes as the reference, in a misaligned output row layout too (dim 33)."""
    rng = np.random.default_rng(5)
    for dim in (64, 33):
        table = make_table(kind, 50, dim, seed=dim)
        idx = rng.integers(0, 50, STREAM_BYTES // (4 * dim) + 999)
        same_bytes(fast.embedding(table, idx, n_threads=n_threads), qe4.embedding(table, idx))


@pytest.mark.parametrize("od", OUT_DTYPES)
@pytest.mark.parametrize("kind", [("rowwise", 4, "float16"), ("rowwise", 3, "float32")], ids=str)
def test_fast_large_gather_every_output_alignment(kind, od, kernel, same_bytes):
    """Large gathers stream whole vectors when every row's vectors are aligned alike (32 or
    16 bytes, by the output's address and row stride) and take the generic path otherwise:
    outputs at each alignment, through the kernel itself (qe4_fast.embedding's own arrays
    have whatever alignment NumPy gives them)."""
    rng = np.random.default_rng(7)
    itemsize = 4 if od == "float32" else 2
    # row strides (float32 / 16-bit): 256 / 128, 272 / 136, 288 / 144 and 280 / 140 bytes,
    # with tails of 0, 4, 8 and 6 columns past the 64-column block
    for dim in (64, 68, 72, 70):
        table = make_table(kind, 40, dim, seed=dim)
        n = STREAM_BYTES // (itemsize * dim) + 37
        idx = rng.integers(0, 40, n)
        want = qe4.embedding(table, idx, out_dtype=od)
        row_bytes = dim * itemsize
        base = np.zeros(n * row_bytes + 64, np.uint8)
        skip = (-base.ctypes.data) % 32          # base + skip is 32-byte aligned
        for shift in (0, 16, 4):
            out = base[skip + shift:skip + shift + n * row_bytes].reshape(n, row_bytes)
            assert _lookup.gather(fast._spec(table), idx, _lookup.KINDS[od], out, 2,
                                  _simd.LEVEL) == 0
            same_bytes(out.view(np.uint16 if itemsize == 2 else F32).view(want.dtype), want)


@pytest.mark.parametrize("n_threads", N_THREADS)
def test_fast_embedding_bags_matches_reference(n_threads, kernel, same_bytes):
    rng = np.random.default_rng(n_threads)
    tables = [make_table(k, 40, d, seed=i) for i, (k, d) in
              enumerate(zip(KINDS, (DIMS * 4)[:len(KINDS)]))]
    _, _, indices, offsets = batched_bags(rng, tables, 11)
    last = np.append(offsets, indices.size).astype(np.int32)
    w = rng.standard_normal(indices.size).astype(F32)
    for od in OUT_DTYPES:
        for mode, weights in (("sum", w), ("mean", None), ("max", None)):
            kw = dict(mode=mode, per_sample_weights=weights, out_dtype=od)
            ref = qe4.embedding_bags(tables, indices, offsets, **kw)
            same_bytes(fast.embedding_bags(tables, indices, offsets, **kw, n_threads=n_threads),
                       ref)
            same_bytes(fast.embedding_bags(tables, indices, last, include_last_offset=True, **kw,
                                           n_threads=n_threads), ref)


def test_fast_empty_and_large_dims(kernel, same_bytes):
    table = make_table(("rowwise", 4, "float16"), 5, 1030)    # dim > the kernels' stack buffer
    for od in OUT_DTYPES:
        for idx in (np.zeros(0, np.int64), np.array([[4, 0], [2, 2]])):
            same_bytes(fast.embedding(table, idx, out_dtype=od), qe4.embedding(table, idx, out_dtype=od))
        same_bytes(fast.embedding_bag(table, np.array([1, 4, 0]), np.array([0, 0, 2]), mode="max",
                                      out_dtype=od),
                   qe4.embedding_bag(table, np.array([1, 4, 0]), np.array([0, 0, 2]), mode="max",
                                     out_dtype=od))
        same_bytes(fast.embedding_bags([table, table], np.zeros(0, np.int64), np.zeros(0, np.int64),
                                       out_dtype=od),
                   qe4.embedding_bags([table, table], np.zeros(0, np.int64), np.zeros(0, np.int64),
                                      out_dtype=od))


def test_fast_crafted_nan_and_overflow(kernel, same_bytes):
    """Imported bytes with infinite scales and huge sums: NaN and inf round the same way."""
    x = np.array([[0, 15, 1, 0], [-2, 13, 0, -1], [60000, 65000, 0, 1]], F32)
    data = qe4.quantize(x, 4, "minmax").data.copy()
    data[1, 2:4] = np.array([np.inf], "<f2").view(np.uint8)
    table = QuantizedTable(data, bits=4, dim=4)
    idx = np.array([[0, 1, 2, 2], [2, 2, 2, 0]])
    w = np.full(idx.shape, -7.0, F32)
    for od in OUT_DTYPES:
        for kw in (dict(mode="max"), dict(mode="sum"), dict(per_sample_weights=w)):
            same_bytes(fast.embedding_bag(table, idx, **kw, out_dtype=od),
                       qe4.embedding_bag(table, idx, **kw, out_dtype=od))
        same_bytes(fast.embedding(table, idx, out_dtype=od), qe4.embedding(table, idx, out_dtype=od))


def crafted_rows(kind, n_rows, dim, seed):
    """A rowwise table whose stored scale/bias make NaN (inf * 0; a NaN bias with a payload,
    which the 16-bit outputs make canonical), +-inf and -0.0 values (scale -1, bias -0.0:
    code 0 gives -0.0), next to ordinary rows."""
    table = make_table(kind, n_rows, dim, seed=seed)
    data = table.data.copy()
    size = 2 if table.scale_dtype == "float16" else 4
    dt = "<f2" if size == 2 else "<f4"
    data[1, table.code_bytes:table.code_bytes + size] = np.array([np.inf], dt).view(np.uint8)
    data[2, table.code_bytes:] = np.array([-1.0, -0.0], dt).view(np.uint8)
    data[3, :] = 0                                     # scale 0, bias 0: +0.0 everywhere
    nan = np.array([0x7e01 if size == 2 else 0x7fc12345], "<u2" if size == 2 else "<u4")
    data[4, table.code_bytes + size:] = nan.view(np.uint8)   # a NaN bias with a payload
    return QuantizedTable(data, bits=table.bits, dim=dim, scale_dtype=table.scale_dtype)


@pytest.mark.parametrize("dim", [64, 71, 128, 130])
@pytest.mark.parametrize("kind", ROWWISE_KINDS, ids=str)
def test_fast_max_and_gather_blocks_of_64_columns(kind, dim, kernel, same_bytes):
    """The AVX2 max bag and gather of rowwise tables keep 64 columns in registers: NaN,
    infinities and the -0.0 / +0.0 ties go through those blocks and their tails exactly as
    through the reference's rule."""
    rng = np.random.default_rng(dim)
    table = crafted_rows(kind, 12, dim, seed=dim)
    # bags: -0.0 then +0.0, +0.0 then -0.0, NaN first, NaN after a finite row, empty, the NaN
    # with a payload, random
    idx = np.concatenate([[2, 3, 3, 2, 1, 0, 0, 1, 4], rng.integers(0, 12, 60)])
    off = np.array([0, 2, 4, 6, 8, 8, 9, 20, 21, 40], np.int64)
    for od in OUT_DTYPES:
        for n_threads in (1, 2):
            same_bytes(fast.embedding_bag(table, idx, off, mode="max", out_dtype=od,
                                          n_threads=n_threads),
                       qe4.embedding_bag(table, idx, off, mode="max", out_dtype=od))
            same_bytes(fast.embedding(table, idx, out_dtype=od, n_threads=n_threads),
                       qe4.embedding(table, idx, out_dtype=od))


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("kind", [k for k in ROWWISE_KINDS if k[1] == 4], ids=str)
def test_fast_large_gather_of_crafted_rows(kind, dim, kernel, same_bytes):
    """Gathers large enough to stream their output (every output dtype), over rows with NaN,
    infinite and -0.0 values: the streamed 64-column blocks of 4-bit rows (a loop of their
    own, _lookup_kernels.h qe4_gather4_avx2) round them as the reference does."""
    table = crafted_rows(kind, 12, dim, seed=dim)
    idx = np.random.default_rng(dim).integers(0, 12, STREAM_BYTES // (2 * dim) + 77)
    for od in OUT_DTYPES:
        want = qe4.embedding(table, idx, out_dtype=od)
        for n_threads in (1, 2):
            same_bytes(fast.embedding(table, idx, out_dtype=od, n_threads=n_threads), want)


def test_fast_bad_group_ids_raise_like_the_reference(same_error):
    table = make_table(("two-tier", 4, "float16"), 10, 8)
    data = table.data.copy()
    data[3, -1] = 200
    bad = QuantizedTable(data, bits=4, dim=8, method="two-tier", layout="two-tier",
                         extras=table.extras)
    for call in (lambda m: m.embedding(bad, [1, 3]),
                 lambda m: m.embedding_bag(bad, [[1, 3]], mode="max"),
                 lambda m: m.embedding_bag(bad, [[1, 3]], out_dtype="float16"),
                 lambda m: m.embedding_bags([table, bad], [0, 3], [0, 1])):
        same_error(lambda: call(qe4), lambda: call(fast))


BAD = {
    "gather: float indices": lambda m, t: m.embedding(t, [1.5]),
    "gather: index too large": lambda m, t: m.embedding(t, [[0, 1], [2, 6]]),
    "gather: negative index": lambda m, t: m.embedding(t, [-1]),
    "gather: out_dtype": lambda m, t: m.embedding(t, [0], out_dtype="float64"),
    "gather: out_dtype kind": lambda m, t: m.embedding(t, [0], out_dtype=3),
    "gather: not a table": lambda m, t: m.embedding(t.data, [0]),
    "bag: out_dtype": lambda m, t: m.embedding_bag(t, [0], [0], out_dtype="int8"),
    "bag: max with weights": lambda m, t: m.embedding_bag(t, [0], [0], mode="max",
                                                          per_sample_weights=[1.0]),
    "bags: one table": lambda m, t: m.embedding_bags(t, [0], [0]),
    "bags: no tables": lambda m, t: m.embedding_bags([], [0], [0]),
    "bags: not a table": lambda m, t: m.embedding_bags([t, t.data], [0], [0, 1]),
    "bags: 2-D indices": lambda m, t: m.embedding_bags([t], [[0]], None),
    "bags: no offsets": lambda m, t: m.embedding_bags([t], [0], None),
    "bags: bags not a multiple": lambda m, t: m.embedding_bags([t, t], [0, 1, 2], [0, 1, 2]),
    "bags: index of table 1": lambda m, t: m.embedding_bags([t, t], [0, 1, 6], [0, 2]),
    "bags: decreasing offsets": lambda m, t: m.embedding_bags([t, t], [0, 1, 2], [0, 2, 1, 3]),
    "bags: mode": lambda m, t: m.embedding_bags([t], [0], [0], mode="min"),
    "bags: out_dtype": lambda m, t: m.embedding_bags([t], [0], [0], out_dtype="half"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_like_the_reference(case, same_error):
    table = make_table(("rowwise", 4, "float16"), 6, 8)
    err = same_error(lambda: BAD[case](qe4, table), lambda: BAD[case](fast, table))
    assert isinstance(err, (TypeError, ValueError, IndexError))
    if "index" in case:
        assert isinstance(err, IndexError) and ("= 6" in str(err) or "= -1" in str(err))
        if "table 1" in case:
            assert str(err) == "indices[2] = 6 is out of range for tables[1] of 6 rows"
        if "too large" in case:
            assert str(err) == "indices[1, 1] = 6 is out of range for a table of 6 rows"


def test_bfloat16_needs_ml_dtypes(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ml_dtypes(name, *args, **kwargs):
        if name == "ml_dtypes":
            raise ImportError("no ml_dtypes")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)
    table = make_table(("rowwise", 4, "float16"), 6, 8)
    for m in (qe4, fast):
        with pytest.raises(ImportError, match="ml_dtypes"):
            m.embedding(table, [0], out_dtype="bfloat16")
