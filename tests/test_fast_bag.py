"""qe4_fast's lookups (embedding_bag, dequantize, to_tbe, from_tbe) against the reference, byte for byte.

Every case runs through each row kernel of qe4_fast/_bag_kernels.h the CPU has (portable
C, AVX2+FMA, AVX-512 for 4-bit blocks) and several thread counts.
"""

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qe4
from conftest import float_dtype_configs
from qe4 import layouts as L
from qe4.table import QuantizedTable

from qe4_fast import _bag, _simd
from qe4_fast import bag as fast

BITS_SCALES = [(b, sd or L.LAYOUTS["rowwise"].default_float_dtype(b))
               for b, sd in float_dtype_configs("rowwise")]
DIMS = [1, 2, 7, 8, 15, 16, 33, 64, 130, 257]
N_THREADS = [1, 2, 7, None]
KERNELS = _simd.levels_up_to_chosen()


@pytest.fixture(params=KERNELS, ids=lambda level: _simd.SIMD_LEVELS[level])
def kernel(request, monkeypatch):
    """Run the test at each SIMD level up to qe4_fast's (portable C, AVX2+FMA, AVX-512)."""
    monkeypatch.setattr(_simd, "LEVEL", request.param)
    return request.param


def make_table(n_rows, dim, bits, scale_dtype, seed=0):
    """Rows of mixed magnitudes (tiny to large ranges), a constant row and a zero row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32)
    x *= np.exp(rng.uniform(-8, 6, (n_rows, 1))).astype(np.float32)
    x += rng.uniform(-50, 50, (n_rows, 1)).astype(np.float32)
    x[0] = 3.25
    x[-1] = 0.0
    return qe4.quantize(x, bits, "minmax", scale_dtype=scale_dtype)


def random_bags(rng, n_rows, n_bags, max_len=9):
    """1-D indices and offsets with some empty bags (including the first and last)."""
    lengths = rng.integers(0, max_len, n_bags)
    lengths[0] = 0
    lengths[-1] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    indices = rng.integers(0, n_rows, int(lengths.sum())).astype(np.int64)
    return indices, offsets


# ----------------------------------------------------------------------------- API

@pytest.mark.parametrize("name", ["dequantize", "embedding_bag", "to_tbe", "from_tbe"])
def test_signature_is_the_reference_plus_n_threads(name):
    ref = inspect.signature(getattr(qe4, name))
    got = inspect.signature(getattr(fast, name))
    params = list(got.parameters.values())
    assert params[-1].name == "n_threads" and params[-1].default is None
    assert params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert got.replace(parameters=params[:-1]) == ref


# ----------------------------------------------------------------------------- bytes vs reference

@pytest.mark.parametrize("bits,scale_dtype", BITS_SCALES)
@pytest.mark.parametrize("dim", DIMS)
def test_dequantize_matches_reference(bits, scale_dtype, dim, kernel, same_bytes):
    table = make_table(37, dim, bits, scale_dtype, seed=dim)
    ref = qe4.dequantize(table)
    for n_threads in (1, N_THREADS[dim % len(N_THREADS)]):
        same_bytes(fast.dequantize(table, n_threads=n_threads), ref)


@pytest.mark.parametrize("bits,scale_dtype", BITS_SCALES)
@pytest.mark.parametrize("dim", DIMS)
def test_embedding_bag_matches_reference(bits, scale_dtype, dim, kernel, same_bytes):
    rng = np.random.default_rng(dim * 10 + bits)
    table = make_table(41, dim, bits, scale_dtype, seed=dim + bits)
    indices, offsets = random_bags(rng, table.n_rows, 13)
    weights = (rng.standard_normal(indices.size) * 3).astype(np.float32)
    fixed = rng.integers(0, table.n_rows, (6, 5))
    fixed_w = rng.standard_normal(fixed.shape).astype(np.float32)
    k = 0
    for int_dtype in (np.int32, np.int64):
        for mode, w, w2 in (("sum", None, None), ("mean", None, None), ("sum", weights, fixed_w)):
            for last in (False, True):
                off = np.append(offsets, indices.size) if last else offsets
                args = (table, indices.astype(int_dtype), off.astype(int_dtype))
                kw = dict(mode=mode, per_sample_weights=w, include_last_offset=last)
                # every thread count early on, then 1 (multi-threaded calls are slow on a
                # loaded 2-core machine; test_bags_identical_for_any_thread_count covers them)
                n_threads = N_THREADS[k] if k < len(N_THREADS) else 1
                k += 1
                same_bytes(fast.embedding_bag(*args, **kw, n_threads=n_threads),
                           qe4.embedding_bag(*args, **kw))
            # 2-D indices: fixed-length bags
            kw = dict(mode=mode, per_sample_weights=w2)
            same_bytes(fast.embedding_bag(table, fixed.astype(int_dtype), **kw, n_threads=1),
                       qe4.embedding_bag(table, fixed.astype(int_dtype), **kw))


@pytest.mark.parametrize("n_threads", N_THREADS)
def test_bags_identical_for_any_thread_count(n_threads, kernel, same_bytes):
    rng = np.random.default_rng(5)
    table = make_table(300, 64, 4, "float16")
    indices, offsets = random_bags(rng, table.n_rows, 500, max_len=30)
    w = rng.standard_normal(indices.size).astype(np.float32)
    one = fast.embedding_bag(table, indices, offsets, per_sample_weights=w, n_threads=1)
    same_bytes(fast.embedding_bag(table, indices, offsets, per_sample_weights=w,
                                  n_threads=n_threads), one)
    same_bytes(one, qe4.embedding_bag(table, indices, offsets, per_sample_weights=w))


# QE4_PREFETCH in qe4_fast/_common.h: the look-ahead of the row prefetch
PREFETCH = 32


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("dim", [64, 128, 197])
def test_4bit_register_blocks_at_the_edges(scale_dtype, dim, kernel, same_bytes):
    """The 4-bit blocks of 64 columns (qe4_block4x64_avx2: even/odd nibble lanes, the
    prefetch in the first block only), and the tail of 197 columns: index counts around the
    prefetch look-ahead (the last PREFETCH positions prefetch nothing), bags of 0, 1 and odd
    lengths, every nibble value, weights and means, 1 and 2 threads."""
    rng = np.random.default_rng(dim)
    n_rows = 70
    data = rng.integers(0, 256, (n_rows, -(-dim // 2)), dtype=np.uint8)
    data[0] = 0xFF                                      # codes 15 in both nibbles
    data[1] = 0x0F
    data[2] = 0xF0
    itemsize = 2 if scale_dtype == "float16" else 4
    params = rng.standard_normal((n_rows, 2)) * np.exp(rng.uniform(-6, 4, (n_rows, 1)))
    qp = params.astype(np.dtype(scale_dtype).newbyteorder("<")).view(np.uint8)
    table = QuantizedTable(np.concatenate([data, qp.reshape(n_rows, 2 * itemsize)], axis=1),
                           bits=4, dim=dim, scale_dtype=scale_dtype)
    for n_idx in (0, 1, 2, PREFETCH - 1, PREFETCH, PREFETCH + 1, 2 * PREFETCH + 3, 97):
        idx = rng.integers(0, n_rows, n_idx)
        idx[:3] = [0, 1, 2][:n_idx]
        # bag lengths 0, 1, odd and the rest in one bag
        cuts = sorted({0, min(1, n_idx), min(1, n_idx), min(4, n_idx), min(5, n_idx),
                       min(n_idx // 2 | 1, n_idx)})
        offsets = np.array([0] + cuts, np.int64)       # first bag empty, then the cuts
        w = (rng.standard_normal(n_idx) * 3).astype(np.float32)
        for mode, weights in (("sum", None), ("mean", None), ("sum", w)):
            ref = qe4.embedding_bag(table, idx, offsets, mode=mode, per_sample_weights=weights)
            for n_threads in (1, 2):
                same_bytes(fast.embedding_bag(table, idx, offsets, mode=mode,
                                              per_sample_weights=weights, n_threads=n_threads),
                           ref)


def test_no_bags_and_only_empty_bags(kernel, same_bytes):
    table = make_table(5, 7, 4, "float16")
    empty = np.zeros(0, np.int64)
    for off in (np.zeros(0, np.int64), np.zeros(4, np.int64)):
        same_bytes(fast.embedding_bag(table, empty, off), qe4.embedding_bag(table, empty, off))
    same_bytes(fast.embedding_bag(table, empty, np.zeros(1, np.int64), include_last_offset=True),
               np.zeros((0, 7), np.float32))


def test_unusual_inputs(kernel, same_bytes):
    """Read-only and non-contiguous table data, big-endian and strided indices."""
    table = make_table(20, 33, 4, "float16")
    wide = np.zeros((20, table.row_bytes + 5), np.uint8)
    wide[:, 2:2 + table.row_bytes] = table.data
    strided = QuantizedTable(wide[:, 2:2 + table.row_bytes], bits=4, dim=33)
    assert not strided.data.flags.c_contiguous
    ro = QuantizedTable(table.data.copy(), bits=4, dim=33)
    ro.data.flags.writeable = False
    idx = np.arange(40, dtype=">i8")[::2] % 20
    off = np.array([0, 3, 3, 9], dtype=">i4")
    ref = qe4.embedding_bag(table, idx, off)
    for t in (strided, ro):
        same_bytes(fast.embedding_bag(t, idx, off), ref)
        same_bytes(fast.dequantize(t), qe4.dequantize(table))
        same_bytes(fast.to_tbe(t, 16), qe4.to_tbe(table, 16))


def test_crafted_float16_params(kernel, same_bytes):
    """Subnormal, negative and -0.0 scales/biases (tables imported from elsewhere)."""
    rng = np.random.default_rng(3)
    halves = np.array([2 ** -24, -2 ** -24, 6.1e-5, -0.0, 0.0, 65504, -65504, 1.0, -3.5],
                      np.float16)
    n = 64
    data = rng.integers(0, 256, (n, 20), dtype=np.uint8)
    qp = rng.choice(halves, (n, 2)).astype("<f2")
    data[:, 16:] = qp.view(np.uint8).reshape(n, 4)
    table = QuantizedTable(data, bits=4, dim=32)
    same_bytes(fast.dequantize(table), qe4.dequantize(table))
    idx = rng.integers(0, n, 200)
    off = np.arange(0, 200, 5)
    for w in (None, rng.standard_normal(200).astype(np.float32)):
        same_bytes(fast.embedding_bag(table, idx, off, per_sample_weights=w),
                   qe4.embedding_bag(table, idx, off, per_sample_weights=w))


def test_unfused_product_is_exact_for_float16_scales():
    """Why the unweighted float16 path may skip fmaf: every float16 scale times every
    8-bit code is exact in float32, so fl(fl(s*q) + a) == fma(s, q, a)."""
    s = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # finite >= 0
    q = np.arange(256, dtype=np.float32)
    prod32 = (s[:, None] * q[None, :]).astype(np.float64)
    prod64 = s.astype(np.float64)[:, None] * q.astype(np.float64)[None, :]
    assert np.array_equal(prod32, prod64)


# ----------------------------------------------------------------------------- TBE

@pytest.mark.parametrize("bits,scale_dtype", [c for c in BITS_SCALES
                                               if c[0] in L.LAYOUTS["rowwise"].torch_bits])
@pytest.mark.parametrize("dim", [1, 7, 64, 257])
@pytest.mark.parametrize("row_alignment", [1, 3, 16])
def test_tbe_round_trip_matches_reference(bits, scale_dtype, dim, row_alignment):
    table = make_table(23, dim, bits, scale_dtype)
    for n_threads in N_THREADS:
        tbe = fast.to_tbe(table, row_alignment, n_threads=n_threads)
        ref = qe4.to_tbe(table, row_alignment)
        assert tbe.dtype == ref.dtype and np.array_equal(tbe, ref)
        back = fast.from_tbe(tbe, bits, dim, scale_dtype=scale_dtype, row_alignment=row_alignment,
                             n_threads=n_threads)
        assert back == qe4.from_tbe(ref, bits, dim, scale_dtype=scale_dtype,
                                    row_alignment=row_alignment)
        assert back == table


def test_tbe_refuses_the_stream_widths(same_error):
    """TBE has no 3, 5 or 6-bit rows: both directions refuse them, naming bits."""
    for bits in L.LAYOUTS["rowwise"].bits:
        if bits in L.LAYOUTS["rowwise"].torch_bits:
            continue
        table = make_table(4, 10, bits, "float16")
        err = same_error(lambda: qe4.to_tbe(table), lambda: fast.to_tbe(table))
        assert str(err) == f"table has bits={bits}; fbgemm_gpu's TBE rows are 2/4/8-bit"
        rows = np.zeros((4, 12), np.uint8)
        err = same_error(lambda: qe4.from_tbe(rows, bits), lambda: fast.from_tbe(rows, bits))
        assert str(err) == f"bits must be one of (2, 4, 8), got {bits}"


def test_tbe_errors_match_reference():
    table = make_table(4, 10, 4, "float16")
    tbe = qe4.to_tbe(table, 16)
    bad_pad = tbe.copy()
    bad_pad[2, -1] = 1
    cases = [
        ((bad_pad, 4, 10), dict(row_alignment=16)),
        ((tbe, 4, 40), dict(row_alignment=16)),
        ((tbe.astype(np.int16), 4, 10), dict(row_alignment=16)),
        ((tbe, 3, 10), dict(row_alignment=16)),
        ((tbe, 4, 10), dict(row_alignment=0)),
        ((tbe[:, :3], 4), {}),
    ]
    for args, kw in cases:
        assert_same_error(lambda: qe4.from_tbe(*args, **kw), lambda: fast.from_tbe(*args, **kw))
    assert_same_error(lambda: qe4.to_tbe(table, True), lambda: fast.to_tbe(table, True))
    assert_same_error(lambda: qe4.to_tbe("x"), lambda: fast.to_tbe("x"))


# ----------------------------------------------------------------------------- golden torch bytes

@pytest.mark.parametrize("dim", [8, 64, 130])
def test_golden_bags(golden, dim, kernel, same_bytes):
    key = f"bag4_d{dim}"
    table = QuantizedTable.from_fused(golden[key + "_packed"], 4)
    idx, off = golden[key + "_indices"], golden[key + "_offsets"]
    for n_threads in (1, 2):
        same_bytes(fast.embedding_bag(table, idx, off, n_threads=n_threads), golden[key + "_sum"])
        same_bytes(fast.embedding_bag(table, idx, off, per_sample_weights=golden[key + "_weights"],
                                      n_threads=n_threads), golden[key + "_wsum"])


def test_matches_torch_ops(kernel, same_bytes):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    for bits, dim in ((4, 64), (4, 70), (4, 128), (2, 36)):
        x = torch.from_numpy((rng.standard_normal((200, dim)) * 2).astype(np.float32))
        prepack = getattr(torch.ops.quantized, f"embedding_bag_{bits}bit_prepack")
        bag = getattr(torch.ops.quantized, f"embedding_bag_{bits}bit_rowwise_offsets")
        packed = prepack(x)
        table = QuantizedTable.from_fused(packed.numpy(), bits)
        idx, off = random_bags(rng, 200, 50, max_len=20)
        w = rng.standard_normal(idx.size).astype(np.float32)
        ti, to = torch.from_numpy(idx), torch.from_numpy(off)
        for weights in (None, w):
            tw = None if weights is None else torch.from_numpy(weights)
            ref = bag(packed, ti, to, False, 0, False, tw, None, False).numpy()
            same_bytes(fast.embedding_bag(table, idx, off, per_sample_weights=weights, n_threads=2), ref)
        if bits == 4:
            unpack = torch.ops.quantized.embedding_bag_4bit_unpack(packed).numpy()
            same_bytes(fast.dequantize(table), unpack)


# ----------------------------------------------------------------------------- errors

def assert_same_error(ref_call, fast_call):
    with pytest.raises(Exception) as ref:
        ref_call()
    with pytest.raises(type(ref.value)) as got:
        fast_call()
    assert type(got.value) is type(ref.value)
    assert str(got.value) == str(ref.value)


BAD_BAGS = {
    "index past the end": (np.array([0, 5, 9]), np.array([0, 2]), {}),
    "negative index": (np.array([0, -1, 3]), np.array([0, 1]), {}),
    "offsets not starting at 0": (np.array([0, 1, 2]), np.array([1, 2]), {}),
    "decreasing offsets": (np.array([0, 1, 2, 3]), np.array([0, 3, 1]), {}),
    "offsets past the end": (np.array([0, 1, 2]), np.array([0, 1, 7]), {}),
    "last offset wrong": (np.array([0, 1, 2]), np.array([0, 1, 2]), dict(include_last_offset=True)),
    "float indices": (np.array([0.0, 1.0]), np.array([0]), {}),
    "float offsets": (np.array([0, 1]), np.array([0.0]), {}),
    "uint64 indices": (np.array([0, 1], np.uint64), np.array([0]), {}),
    "3-D indices": (np.zeros((2, 2, 2), np.int64), None, {}),
    "2-D with offsets": (np.zeros((2, 2), np.int64), np.array([0]), {}),
    "1-D without offsets": (np.array([0, 1]), None, {}),
    "weights wrong shape": (np.array([0, 1, 2]), np.array([0]), dict(per_sample_weights=np.ones(2, np.float32))),
    "weights int dtype": (np.array([0, 1, 2]), np.array([0]), dict(per_sample_weights=np.ones(3, np.int32))),
    "NaN weights": (np.array([0, 1, 2]), np.array([0]), dict(per_sample_weights=np.array([1, np.nan, 1], np.float32))),
    "inf weights": (np.array([0, 1, 2]), np.array([0]), dict(per_sample_weights=np.array([1, 1, np.inf]))),
    "mean with weights": (np.array([0, 1, 2]), np.array([0]), dict(mode="mean", per_sample_weights=np.ones(3, np.float32))),
    "unknown mode": (np.array([0, 1, 2]), np.array([0]), dict(mode="min")),
    "max with weights": (np.array([0, 1, 2]), np.array([0]), dict(mode="max", per_sample_weights=np.ones(3, np.float32))),
}


@pytest.mark.parametrize("case", list(BAD_BAGS))
def test_bad_bags_raise_like_the_reference(case):
    table = make_table(6, 8, 4, "float16")
    indices, offsets, kw = BAD_BAGS[case]
    assert_same_error(lambda: qe4.embedding_bag(table, indices, offsets, **kw),
                      lambda: fast.embedding_bag(table, indices, offsets, **kw))


def test_bad_table_and_thread_counts():
    assert_same_error(lambda: qe4.embedding_bag(np.zeros((2, 6), np.uint8), [0], [0]),
                      lambda: fast.embedding_bag(np.zeros((2, 6), np.uint8), [0], [0]))
    assert_same_error(lambda: qe4.dequantize([1.0]), lambda: fast.dequantize([1.0]))
    table = make_table(6, 8, 4, "float16")
    with pytest.raises(ValueError, match="n_threads"):
        fast.embedding_bag(table, [0, 1], [0], n_threads=0)
    with pytest.raises(TypeError, match="n_threads"):
        fast.dequantize(table, n_threads=1.5)


# ----------------------------------------------------------------------------- memory safety

def test_kernel_writes_only_its_output_and_reads_only_its_rows(kernel):
    """Guard regions around the output and around the table's rows stay untouched/unread."""
    rng = np.random.default_rng(8)
    for bits, scale_dtype, dim in ((4, "float16", 64), (4, "float16", 7), (2, "float32", 130),
                                   (8, "float32", 33)):
        table = make_table(30, dim, bits, scale_dtype)
        # the table lives between guard rows whose scale/bias bytes are 0xFF (NaN): a read
        # outside the table would poison the result
        guard = 3
        big = np.full((30 + 2 * guard, table.row_bytes), 0xFF, np.uint8)
        big[guard:guard + 30] = table.data
        inner = QuantizedTable(big[guard:guard + 30], bits=bits, dim=dim, scale_dtype=scale_dtype)
        assert np.shares_memory(np.ascontiguousarray(inner.data), big)
        idx, off = random_bags(rng, 30, 17, max_len=12)
        idx[:2] = [0, 29]
        starts = np.append(off, idx.size)
        w = rng.standard_normal(idx.size).astype(np.float32)
        for weights, mean in ((None, False), (None, True), (w, False)):
            # the output is a C-contiguous block in the middle of a larger buffer
            margin = 16
            flat = np.full(17 * dim + 2 * margin, -7.5, np.float32)
            view = flat[margin:margin + 17 * dim].reshape(17, dim)
            _bag.embedding_bag_rowwise(inner.data, bits, dim, scale_dtype == "float16", idx, starts,
                                       weights, mean, view, 2, _simd.LEVEL)
            assert np.all(flat[:margin] == -7.5) and np.all(flat[-margin:] == -7.5)
            ref = qe4.embedding_bag(table, idx, off, mode="mean" if mean else "sum",
                                    per_sample_weights=weights)
            assert np.array_equal(view.view(np.uint8), ref.view(np.uint8))
        flat = np.full(30 * dim + 2 * 16, -7.5, np.float32)
        view = flat[16:16 + 30 * dim].reshape(30, dim)
        _bag.dequantize_rowwise(inner.data, bits, dim, scale_dtype == "float16", view, 2, _simd.LEVEL)
        assert np.all(flat[:16] == -7.5) and np.all(flat[-16:] == -7.5)
        assert np.array_equal(view.view(np.uint8), qe4.dequantize(table).view(np.uint8))


def test_out_of_range_index_never_reaches_the_kernel(monkeypatch):
    table = make_table(6, 8, 4, "float16")

    def boom(*args):
        raise AssertionError("kernel called with invalid input")

    monkeypatch.setattr(_bag, "embedding_bag_rowwise", boom)
    with pytest.raises(IndexError, match="indices"):
        fast.embedding_bag(table, np.array([0, 6]), np.array([0]))
    with pytest.raises(ValueError, match="offsets"):
        fast.embedding_bag(table, np.array([0, 1]), np.array([0, 3]))


# ----------------------------------------------------------------------------- dispatch

def test_codebook_tables_are_dispatched(monkeypatch):
    calls = []

    class Stub:
        @staticmethod
        def dequantize_codebook(table, n_threads=None):
            calls.append(("dequantize", n_threads))
            return "deq"

        @staticmethod
        def embedding_bag_codebook(table, idx, starts, weights, mode, n_threads):
            calls.append(("bag", idx.dtype, starts.tolist(), weights.dtype, mode, n_threads))
            return "bag"

    monkeypatch.setattr(fast, "_codebook", lambda: Stub)
    table = QuantizedTable(np.zeros((4, 3 + 16 * 2), np.uint8), bits=4, dim=6, layout="codebook")
    assert fast.dequantize(table, n_threads=2) == "deq"
    assert fast.embedding_bag(table, np.array([0, 3], np.int32), np.array([0], np.int32),
                              per_sample_weights=np.ones(2), n_threads=1) == "bag"
    assert calls == [("dequantize", 2), ("bag", np.int64, [0, 2], np.float32, "sum", 1)]
    with pytest.raises(IndexError):
        fast.embedding_bag(table, np.array([4]), np.array([0]))


# ----------------------------------------------------------------------------- property test

@settings(max_examples=60, deadline=None)
@given(bits_scale=st.sampled_from(BITS_SCALES), dim=st.integers(1, 80),
       n_rows=st.integers(1, 40), n_bags=st.integers(0, 12), weighted=st.booleans(),
       mean=st.booleans(), simd=st.sampled_from(KERNELS), n_threads=st.sampled_from(N_THREADS),
       seed=st.integers(0, 2 ** 32 - 1))
def test_property_random_bags(bits_scale, dim, n_rows, n_bags, weighted, mean, simd, n_threads,
                              seed):
    bits, scale_dtype = bits_scale
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n_rows, -(-dim * bits // 8)), dtype=np.uint8)
    itemsize = 2 if scale_dtype == "float16" else 4
    params = (rng.standard_normal((n_rows, 2)) * np.exp(rng.uniform(-10, 5, (n_rows, 1))))
    qp = params.astype(np.dtype(scale_dtype).newbyteorder("<")).view(np.uint8).reshape(n_rows, 2 * itemsize)
    table = QuantizedTable(np.concatenate([data, qp], axis=1), bits=bits, dim=dim,
                           scale_dtype=scale_dtype)
    lengths = rng.integers(0, 8, n_bags)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)[:n_bags]
    idx = rng.integers(0, n_rows, int(lengths.sum()))
    w = (rng.standard_normal(idx.size) * 4).astype(np.float32) if weighted and not mean else None
    mode = "mean" if mean else "sum"
    old = _simd.LEVEL
    _simd.LEVEL = simd
    try:
        got = fast.embedding_bag(table, idx, offsets, mode=mode, per_sample_weights=w,
                                 n_threads=n_threads)
        deq = fast.dequantize(table, n_threads=n_threads)
    finally:
        _simd.LEVEL = old
    ref = qe4.embedding_bag(table, idx, offsets, mode=mode, per_sample_weights=w)
    assert got.shape == ref.shape and np.array_equal(got.view(np.uint8), ref.view(np.uint8))
    assert np.array_equal(deq.view(np.uint8), qe4.dequantize(table).view(np.uint8))


def test_kernel_never_reads_outside_the_table_even_if_indices_change_after_validation():
    """The wrapper validates, then the kernel reads the caller's index array without a copy.
    If another thread rewrote it in between (a race in the caller), an out-of-range index
    is read as row 0: the kernel stays inside the table (no crash, no stray read)."""
    from qe4_fast import _bag
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    t = qe4.quantize(x, 4, "minmax")
    starts = np.array([0, 2, 3], np.int64)
    for simd in KERNELS:
        for n_threads in (1, 2):
            bad = np.array([1, 10 ** 12, -7], np.int64)
            out = np.empty((2, 16), np.float32)
            _bag.embedding_bag_rowwise(t.data, 4, 16, True, bad, starts, None, False, out,
                                       n_threads, simd)
            want = qe4.embedding_bag(t, np.array([1, 0, 0]), np.array([0, 2]))
            assert out.tobytes() == want.tobytes()
