"""The rowwise layout's bit-stream widths (3, 5 and 6 bits: codes straddle bytes).

At odd dims (1, 3, 7, 13, 50: a row's codes end inside a byte, and codes cross every byte
boundary) every rowwise method quantizes to the reference's bytes in qe4_fast, the codes
are the bit stream of :func:`qe4.layouts.pack_codes` with zero padding, and every compiled
path that reads codes (dequantize, bags sum/mean/weighted/max, gathers, float16 outputs,
batched bags, row updates, a mixed table's 3-bit tier, streaming and shards) gives the
reference's bytes.  The widths come from the layout registry: those torch's fused ops do
not serve.  Small inputs; .ci/run reruns this file at every SIMD level.
"""

import numpy as np
import pytest

import qe4
from qe4 import layouts as L
from qe4 import method_registry as M

qe4_fast = pytest.importorskip("qe4_fast", reason="qe4_fast is not built")

F32 = np.float32
ROWWISE = L.LAYOUTS["rowwise"]
STREAM_BITS = tuple(b for b in ROWWISE.bits if b not in ROWWISE.torch_bits)
ODD_DIMS = (1, 3, 7, 13, 50)
METHODS = M.names(layout="rowwise")
FAST_OPTS = {"greedy": {"n_bins": 40}, "exhaustive": {"n_bins": 24},
             "mse": {"n_steps": 4, "n_keep": 2}}


def test_the_stream_widths_are_3_5_and_6():
    assert STREAM_BITS == (3, 5, 6)
    assert {"minmax", "greedy", "exhaustive", "aciq-laplace", "aciq-gauss", "mse"} <= set(METHODS)


def rows(n_rows, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(F32)
    x *= np.exp(rng.uniform(-4, 4, (n_rows, 1))).astype(F32)
    x[0] = 0.0                                     # every code 0
    x[1] = np.linspace(-1, 1, dim, dtype=F32)      # every level met (dim >= 2**bits)
    return x


def stream_codes(data, bits, dim):
    """Codes read bit by bit from the definition: element c is stream bits c*bits .. +bits-1."""
    out = np.zeros((data.shape[0], dim), np.uint8)
    for c in range(dim):
        for k in range(bits):
            at = c * bits + k
            out[:, c] |= ((data[:, at // 8] >> (at % 8)) & 1) << k
    return out


@pytest.mark.parametrize("dim", ODD_DIMS)
@pytest.mark.parametrize("bits", STREAM_BITS)
def test_every_method_and_path_at_odd_dims(bits, dim, same_bytes):
    x = rows(21, dim, seed=bits * 100 + dim)        # 21 rows: a block of 16 and a partial one
    rng = np.random.default_rng(dim)
    idx = rng.integers(0, 21, 60)
    off = np.array([0, 0, 5, 17, 18, 40], np.int64)   # an empty bag
    w = rng.uniform(-2, 2, 60).astype(F32)
    cb = L.code_bytes(dim, bits)
    for method in METHODS:
        for sd in (None, "float32"):
            ref = qe4.quantize(x, bits, method, scale_dtype=sd, **FAST_OPTS.get(method, {}))
            assert ref.data.shape[1] == ROWWISE.row_bytes(dim, bits, sd or "float16")
            for n_threads in (1, 2):
                fast = qe4_fast.quantize(x, bits, method, scale_dtype=sd, n_threads=n_threads,
                                         **FAST_OPTS.get(method, {}))
                same_bytes(fast.data, ref.data)
            codes = ref.data[:, :cb]
            same_bytes(L.unpack_codes(codes, bits, dim), stream_codes(codes, bits, dim))
            if dim * bits % 8:                      # padding bits of the last code byte are 0
                assert not (codes[:, -1] >> (dim * bits % 8)).any()
            assert L.unpack_codes(codes, bits, dim).max() <= 2 ** bits - 1
            same_bytes(qe4_fast.dequantize(ref), qe4.dequantize(ref))
            for kw in ({}, {"mode": "mean"}, {"mode": "max"}, {"per_sample_weights": w}):
                same_bytes(qe4_fast.embedding_bag(ref, idx, off, **kw),
                           qe4.embedding_bag(ref, idx, off, **kw))
            same_bytes(qe4_fast.embedding(ref, idx[:9], out_dtype="float16"),
                       qe4.embedding(ref, idx[:9], out_dtype="float16"))


@pytest.mark.parametrize("bits", STREAM_BITS)
def test_avx2_blocks_and_tails(bits, same_bytes):
    """Dims past 64 (the 64-column blocks of 8-code loads) plus every tail length."""
    for dim in (64, 65, 71, 72, 130):
        x = rows(40, dim, seed=dim)
        t = qe4_fast.quantize(x, bits, "minmax")
        same_bytes(t.data, qe4.quantize(x, bits, "minmax").data)
        idx = np.random.default_rng(dim).integers(0, 40, 200)
        off = np.arange(0, 200, 9)
        for kw in ({}, {"per_sample_weights": np.linspace(-1, 2, 200, dtype=F32)}):
            same_bytes(qe4_fast.embedding_bag(t, idx, off, **kw), qe4.embedding_bag(t, idx, off, **kw))
        same_bytes(qe4_fast.dequantize(t), qe4.dequantize(t))


def test_batched_bags_mix_widths(same_bytes):
    tables = [qe4.quantize(rows(12, d, d), b, "greedy") for b, d in ((3, 7), (5, 13), (6, 50), (4, 9))]
    idx = np.concatenate([np.arange(12), np.arange(12)[::-1], np.arange(0, 12, 2), np.arange(5)])
    off = np.array([0, 3, 12, 14, 24, 27, 30, 33], np.int64)
    for kw in ({}, {"mode": "mean"}):
        got = qe4_fast.embedding_bags(tables, idx, off, **kw)
        want = qe4.embedding_bags(tables, idx, off, **kw)
        for g, e in zip(got, want):
            same_bytes(g, e)


@pytest.mark.parametrize("bits", STREAM_BITS)
def test_update_rows_and_file(bits, tmp_path, same_bytes):
    x = rows(30, 13, seed=bits)
    new = rows(4, 13, seed=bits + 50)
    for mod in (qe4, qe4_fast):
        t = mod.quantize(x, bits, "mse")
        mod.update_rows(t, 11, new)
        want = x.copy()
        want[11:15] = new
        same_bytes(t.data, qe4.quantize(want, bits, "mse").data)
        path = tmp_path / f"{mod.__name__}-{bits}.qe4"
        qe4.save(qe4.quantize(x, bits, "greedy"), path)
        mod.update_file(path, 26, new, in_place=True)
        same_bytes(qe4.load(path).data, qe4.quantize(np.concatenate([x[:26], new]), bits, "greedy").data)


def test_mixed_table_with_stream_tiers(same_bytes):
    from qe4.mixed import quantize_mixed
    x = rows(50, 13, seed=3)
    choice = np.arange(50) % 4
    rungs = ["greedy/3", "mse/5", "minmax/6", "float16"]
    ref = quantize_mixed(x, choice, rungs, engine="reference")
    fast = quantize_mixed(x, choice, rungs, engine="fast")
    assert ref == fast
    idx = np.random.default_rng(0).integers(0, 50, 80)
    off = np.arange(0, 80, 7)
    same_bytes(qe4_fast.dequantize(ref), qe4.dequantize(ref))
    for kw in ({}, {"mode": "mean"}, {"mode": "max"}):
        same_bytes(qe4_fast.embedding_bag(ref, idx, off, **kw), qe4.embedding_bag(ref, idx, off, **kw))
    t3 = qe4.quantize(x[choice == 0], 3, "greedy")           # tier 0: the 3-bit rows, in order
    same_bytes(qe4.dequantize(ref)[choice == 0], qe4.dequantize(t3))


@pytest.mark.parametrize("bits", STREAM_BITS)
def test_streaming_and_shards(bits, tmp_path, same_bytes):
    from qe4 import shards, stream
    x = rows(70, 7, seed=bits)
    np.save(tmp_path / "x.npy", x)
    want = qe4.quantize(x, bits, "aciq-gauss")
    for engine in ("reference", "fast"):
        out = tmp_path / f"{engine}.qe4"
        stream.quantize_file(tmp_path / "x.npy", out, bits, "aciq-gauss", engine=engine,
                             max_memory=4096)            # several chunks
        same_bytes(qe4.load(out).data, want.data)
    sharded = shards.open_sharded(shards.write_sharded(want, tmp_path / "sh", rows_per_shard=16).path,
                                  verify=True)
    assert sharded.n_shards == 5
    same_bytes(np.concatenate([sharded.shard(i).data for i in range(5)]), want.data)
    idx = np.arange(70)[::-1] % 70
    back = sharded.rows(idx)                         # rows gathered across shard boundaries
    same_bytes(back.data, want.data[idx])
    same_bytes(qe4_fast.dequantize(back), qe4.dequantize(want)[idx])
