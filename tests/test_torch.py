"""qe4 against torch's own quantized embedding operators, byte for byte, and qe4.torch.

Each table mixes row distributions (normal, uniform, heavy-tailed, lognormal,
constant, tiny ranges, mixed scales, zeros, half-way ties...) so one prepack call
covers them all; the shapes hit every packing tail.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qe4  # noqa: E402
from qe4.torch import (QuantizedEmbeddingBag, from_torch, quantize_embedding,  # noqa: E402
                       to_torch)

Q = torch.ops.quantized
F32 = np.float32

# (dim, n_rows): every dim of the brief, 1..500 rows
SHAPES = [(2, 1), (4, 7), (6, 33), (8, 500), (16, 120), (30, 61), (64, 500), (72, 90),
          (128, 200), (130, 45), (256, 150)]
SHAPE_IDS = [f"{r}x{d}" for d, r in SHAPES]


def _row(rng, kind, dim):
    """One row of the named distribution (all inside the float16 scale/bias limits)."""
    if kind == "normal":
        return rng.standard_normal(dim)
    if kind == "uniform":
        return rng.uniform(-0.05, 0.3, dim)
    if kind == "student-t":
        return np.clip(rng.standard_t(1.5, dim), -3e4, 3e4)       # heavy tails, rare clip
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.5, dim) * rng.choice([-1.0, 1.0])
    if kind == "constant":
        return np.full(dim, rng.choice([0.0, 1.0, -3.25, 1e-3, 700.0]))
    if kind == "tiny":
        # ranges from well above to far below the smallest float16 subnormal scale, offset
        # by a few ranges (torch's greedy loop never ends when step < ulp(value) / 2)
        size = 10.0 ** rng.integers(-12, -3)
        return (rng.uniform(0, 1, dim) + rng.normal() * 5) * size
    if kind == "mixed-scale":
        return rng.standard_normal(dim) * 10.0 ** rng.uniform(-4, 3)
    if kind == "zeros":
        return np.zeros(dim)
    if kind == "grid":
        # values on a coarse grid: many exact ties at rounding boundaries
        return rng.integers(-8, 8, dim) * 0.125
    if kind == "one-spike":
        r = rng.standard_normal(dim) * 0.01
        r[rng.integers(dim)] = rng.choice([-40.0, 40.0])
        return r
    raise AssertionError(kind)


KINDS = ("normal", "uniform", "student-t", "lognormal", "constant", "tiny", "mixed-scale",
         "zeros", "grid", "one-spike")


def mixed_table(seed, n_rows, dim, dtype=F32):
    rng = np.random.default_rng(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n_rows)]
    rng.shuffle(kinds)
    x = np.stack([_row(rng, k, dim) for k in kinds]).astype(dtype)
    return x


def raw_prepack(x, bits, optimized=False, n_bins=200, ratio=0.16):
    t = torch.from_numpy(x)
    if bits == 8:
        return Q.embedding_bag_byte_prepack(t).numpy()
    op = Q.embedding_bag_4bit_prepack if bits == 4 else Q.embedding_bag_2bit_prepack
    return op(t, optimized, n_bins, ratio).numpy()


def prepack(x, bits, optimized=False, n_bins=200, ratio=0.16):
    """torch's prepack bytes, zero-minimum biases made +0.0 (see plus_zero_bias)."""
    return plus_zero_bias(raw_prepack(x, bits, optimized, n_bins, ratio), x)


def plus_zero_bias(packed, x):
    """torch's rows with the bias of rows whose minimum is a zero made +0.0.

    FBGEMM's SIMD min returns -0.0 or +0.0 for such rows depending on lane order;
    qe4 always stores +0.0 (docs/numerics.rst, "Scale and bias").  The bias is the row's last field, so
    its sign is the top bit of the row's last byte.  Every other byte must match.
    """
    out = packed.copy()
    out[np.asarray(x, F32).min(axis=1) == 0, -1] &= np.uint8(0x7F)
    return out


def torch_shapes(bits):
    return [(d, r) for d, r in SHAPES if d % (8 // bits) == 0]


# ------------------------------------------------------------------------ prepack bytes

@pytest.mark.parametrize("bits", (4, 2))
@pytest.mark.parametrize("method, n_bins, ratio", [
    ("minmax", 200, 0.16), ("greedy", 200, 0.16), ("greedy", 100, 0.3), ("greedy", 37, 0.05),
    ("greedy", 300, 0.25)])
def test_prepack_bytes(same_bytes, bits, method, n_bins, ratio):
    for seed, (dim, n_rows) in enumerate(torch_shapes(bits)):
        x = mixed_table(seed, n_rows, dim)
        expected = prepack(x, bits, method == "greedy", n_bins, ratio)
        got = qe4.quantize(x, bits, method, n_bins=n_bins, ratio=ratio)
        same_bytes(got.data, expected)


def test_byte_prepack_bytes(same_bytes):
    for seed, (dim, n_rows) in enumerate(SHAPES):
        x = mixed_table(100 + seed, n_rows, dim)
        same_bytes(qe4.quantize(x, 8, "minmax").data, prepack(x, 8))


@pytest.mark.parametrize("bits, optimized", [(8, False), (4, False), (4, True), (2, False),
                                             (2, True)], ids=("8", "4", "4-greedy", "2", "2-greedy"))
def test_prepack_float16_input(same_bytes, bits, optimized):
    """torch prepacks half weights; the result equals qe4 on the same half values."""
    for seed, (dim, n_rows) in enumerate(torch_shapes(bits)[:8]):
        x16 = mixed_table(200 + seed, n_rows, dim).clip(-6e4, 6e4).astype(np.float16)
        expected = prepack(x16, bits, optimized)
        got = qe4.quantize(x16, bits, "greedy" if optimized else "minmax")
        same_bytes(got.data, expected)
        # and the same as for the exactly widened float32 input
        same_bytes(got.data, qe4.quantize(x16.astype(F32), bits, got.method).data)


def test_signed_zero_bias(same_bytes):
    """The only bytes plus_zero_bias touches: a zero minimum's sign, nothing else.

    A -0.0 minimum is stored as +0.0 by qe4 (torch: whatever its SIMD min returns);
    a tiny negative minimum that rounds to float16 -0.0 stays -0.0, as in torch.
    """
    x = np.array([[-0.0, -0.0, -0.0, -0.0], [1.0, -0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0],
                  [-1e-9, 2e-9, 3e-9, 4e-9]], F32)
    for bits in (2, 4, 8):
        raw = raw_prepack(x, bits)
        got = qe4.quantize(x, bits, "minmax").data
        same_bytes(got, plus_zero_bias(raw, x))
        assert (got[:3, -1] == 0).all()                          # +0.0 biases
        if bits < 8:
            assert got[3, -1] == 0x80 and raw[3, -1] == 0x80     # fp16(-1e-9) = -0.0
        diff = np.nonzero(got != raw)
        assert set(diff[1]) <= {got.shape[1] - 1}


# ------------------------------------------------------------------------ qparams search

@pytest.mark.parametrize("bits", (4, 2))
@pytest.mark.parametrize("n_bins, ratio", [(200, 0.16), (100, 0.3)])
def test_choose_qparams_optimized(same_bytes, bits, n_bins, ratio):
    x = np.concatenate([mixed_table(300, 40, 64), mixed_table(301, 40, 64) * F32(0.01)])
    lo, hi = qe4.row_ranges(x, bits, "greedy", n_bins=n_bins, ratio=ratio)
    t_lo = np.empty_like(lo)
    t_hi = np.empty_like(hi)
    for r, row in enumerate(torch.from_numpy(x)):
        xmax, xmin = torch.choose_qparams_optimized(row, row.numel(), n_bins, ratio, bits)
        t_lo[r], t_hi[r] = xmin.item(), xmax.item()
    # torch's minimum of a row holding only zeros of either sign may be -0.0; qe4's is +0.0
    same_bytes(lo, t_lo + F32(0.0))
    same_bytes(hi, t_hi + F32(0.0))


# ------------------------------------------------------------------------ unpack

@pytest.mark.parametrize("bits", (8, 4, 2))
def test_unpack_equals_dequantize(same_bytes, bits):
    unpack = {8: Q.embedding_bag_byte_unpack, 4: Q.embedding_bag_4bit_unpack,
              2: Q.embedding_bag_2bit_unpack}[bits]
    for seed, (dim, n_rows) in enumerate(torch_shapes(bits)):
        x = mixed_table(400 + seed, n_rows, dim)
        table = qe4.quantize(x, bits, "greedy" if bits < 8 else "minmax")
        same_bytes(qe4.dequantize(table), unpack(to_torch(table)).numpy())


# ------------------------------------------------------------------------ bags

def random_bags(rng, n_rows, n_bags, max_len=12):
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[rng.integers(n_bags)] = 0                           # at least one empty bag
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    indices = rng.integers(0, n_rows, int(lengths.sum())).astype(np.int64)
    weights = rng.standard_normal(indices.size).astype(F32) * F32(3)
    return indices, offsets, weights


BAG_OPS = {2: Q.embedding_bag_2bit_rowwise_offsets, 4: Q.embedding_bag_4bit_rowwise_offsets,
           8: Q.embedding_bag_byte_rowwise_offsets}


@pytest.mark.parametrize("bits", (4, 2, 8))
@pytest.mark.parametrize("weighted", (False, True), ids=("sum", "wsum"))
def test_bag_ops(same_bytes, bits, weighted):
    rng = np.random.default_rng(bits)
    for seed, (dim, n_rows) in enumerate(torch_shapes(bits)):
        x = mixed_table(500 + seed, n_rows, dim)
        table = qe4.quantize(x, bits, "greedy" if bits < 8 else "minmax")
        indices, offsets, weights = random_bags(rng, n_rows, 30)
        w = weights if weighted else None
        expected = BAG_OPS[bits](
            to_torch(table), torch.from_numpy(indices), torch.from_numpy(offsets),
            per_sample_weights=None if w is None else torch.from_numpy(w)).numpy()
        same_bytes(qe4.embedding_bag(table, indices, offsets, per_sample_weights=w), expected)


@pytest.mark.parametrize("bits", (4, 2, 8))
def test_bag_ops_int32_last_offset_and_fixed_length(same_bytes, bits):
    x = mixed_table(550, 64, 16)
    table = qe4.quantize(x, bits, "minmax")
    rng = np.random.default_rng(551)
    indices, offsets, weights = random_bags(rng, 64, 25)
    last = np.append(offsets, indices.size)
    expected = qe4.embedding_bag(table, indices, offsets, per_sample_weights=weights)
    for dt in (np.int32, np.int64):
        out = BAG_OPS[bits](to_torch(table), torch.from_numpy(indices.astype(dt)),
                            torch.from_numpy(last.astype(dt)), include_last_offset=True,
                            per_sample_weights=torch.from_numpy(weights)).numpy()
        same_bytes(out, expected)
    # 2-D indices (fixed-length bags), as torch's op takes them without offsets
    idx2 = rng.integers(0, 64, (7, 4))
    out = BAG_OPS[bits](to_torch(table), torch.from_numpy(idx2)).numpy()
    same_bytes(out, qe4.embedding_bag(table, idx2))


# ------------------------------------------------------------------------ conversions

def test_to_from_torch_roundtrip(same_bytes):
    x = mixed_table(600, 20, 30)
    for bits in (2, 4, 8):
        x_b = x if bits != 2 else x[:, :28]
        table = qe4.quantize(x_b, bits, "minmax")
        t = to_torch(table)
        assert t.dtype == torch.uint8 and t.device.type == "cpu"
        same_bytes(t.numpy(), prepack(np.ascontiguousarray(x_b), bits))
        back = from_torch(t, bits)
        assert back == table and back.dim == table.dim
    assert not np.shares_memory(to_torch(table).numpy(), table.data)   # a copy


def test_to_torch_rejects_incompatible_tables():
    x = mixed_table(601, 5, 7)
    with pytest.raises(ValueError, match="dim % 2 == 0"):
        to_torch(qe4.quantize(x, 4, "minmax"))
    with pytest.raises(ValueError, match="dim % 4 == 0"):
        to_torch(qe4.quantize(x[:, :6], 2, "minmax"))
    with pytest.raises(ValueError, match="float32 scale/bias"):
        to_torch(qe4.quantize(x[:, :6], 4, "minmax", scale_dtype="float32"))
    with pytest.raises(TypeError, match="QuantizedTable"):
        to_torch(x)
    with pytest.raises(ValueError, match="layout 'codebook'; torch reads only rowwise"):
        to_torch(qe4.quantize(x[:, :6], 4, "kmeans"))
    with pytest.raises(ValueError, match="dim % 2 == 0"):
        QuantizedEmbeddingBag(qe4.quantize(x, 4, "minmax"))
    # odd dims round-trip through from_torch only when dim is given
    odd = qe4.quantize(x, 4, "minmax")
    t = torch.from_numpy(odd.data.copy())
    assert from_torch(t, 4).dim == 8
    assert from_torch(t, 4, dim=7) == odd


def test_stream_widths_have_no_torch_op_but_serve_through_qe4(same_bytes):
    """3, 5 and 6-bit tables: torch's fused ops refuse them by name (bits and value), the
    engine path serves them, and quantize_model gives their bags the engine path."""
    x = np.random.default_rng(4).standard_normal((30, 16)).astype(F32)
    idx, off = np.array([0, 29, 3, 3, 17, 8]), np.array([0, 2, 2, 5])
    for bits in (3, 5, 6):
        t = qe4.quantize(x, bits, "mse")
        msg = f"table has bits={bits}; torch's fused ops read only 2/4/8-bit rows"
        with pytest.raises(ValueError, match=msg):
            to_torch(t)
        with pytest.raises(ValueError, match=msg):
            QuantizedEmbeddingBag(t)                  # engine="torch"
        with pytest.raises(ValueError, match=rf"bits must be one of \(2, 4, 8\), got {bits}"):
            from_torch(torch.zeros(2, 8, dtype=torch.uint8), bits)
        want = qe4.embedding_bag(t, idx, off, mode="mean")
        same_bytes(QuantizedEmbeddingBag(t, "mean", engine="fast")(idx, off).numpy(), want)
        model = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(x), mode="mean")
        q = qe4.torch.quantize_model(model, bits, "mse")
        assert q.engine == "fast"
        same_bytes(q(torch.from_numpy(idx), torch.from_numpy(off)).numpy(), want)


def test_from_torch_rejects_bad_tensors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        from_torch(np.zeros((2, 6), np.uint8), 4)
    with pytest.raises(TypeError, match="torch.uint8"):
        from_torch(torch.zeros(2, 6), 4)
    with pytest.raises(ValueError, match="bits"):
        from_torch(torch.zeros(2, 6, dtype=torch.uint8), 3)


@pytest.mark.parametrize("make", [
    lambda w: torch.nn.Embedding.from_pretrained(w),
    lambda w: torch.nn.EmbeddingBag.from_pretrained(w),
    lambda w: w,
], ids=("Embedding", "EmbeddingBag", "tensor"))
def test_quantize_embedding(same_bytes, make):
    x = mixed_table(700, 50, 16)
    table = quantize_embedding(make(torch.from_numpy(x)))
    same_bytes(table.data, prepack(x, 4, True))
    table2 = quantize_embedding(make(torch.from_numpy(x)), bits=2, method="minmax")
    same_bytes(table2.data, prepack(x, 2, False))
    table3 = quantize_embedding(make(torch.from_numpy(x)), 4, n_bins=100, ratio=0.3)
    same_bytes(table3.data, prepack(x, 4, True, 100, 0.3))


def test_quantize_embedding_rejects_bad_input():
    with pytest.raises(TypeError, match="module_or_weight"):
        quantize_embedding(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match="bfloat16"):
        quantize_embedding(torch.zeros(3, 4, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="int64"):
        quantize_embedding(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x\[1, 2\]"):
        w = torch.zeros(3, 4)
        w[1, 2] = float("nan")
        quantize_embedding(w)


# ------------------------------------------------------------------------ the module

@pytest.mark.parametrize("bits", (4, 2, 8))
@pytest.mark.parametrize("mode", ("sum", "mean"))
def test_module_equals_embedding_bag(same_bytes, bits, mode):
    rng = np.random.default_rng(800 + bits)
    x = mixed_table(801, 300, 32)
    emb = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(x), mode=mode)
    module = QuantizedEmbeddingBag.from_float(emb, bits, "greedy" if bits < 8 else "minmax")
    assert module.mode == mode and module.num_embeddings == 300 and module.embedding_dim == 32
    table = module.table()
    indices, offsets, weights = random_bags(rng, 300, 40)
    out = module(torch.from_numpy(indices), torch.from_numpy(offsets))
    assert out.dtype == torch.float32
    same_bytes(out.numpy(), qe4.embedding_bag(table, indices, offsets, mode=mode))
    # int32 inputs, include_last_offset and numpy inputs give the same bytes
    module_last = QuantizedEmbeddingBag(table, mode=mode, include_last_offset=True)
    last = np.append(offsets, indices.size).astype(np.int32)
    same_bytes(module_last(torch.from_numpy(indices.astype(np.int32)),
                           torch.from_numpy(last)).numpy(), out.numpy())
    same_bytes(module_last(indices, last).numpy(), out.numpy())
    # 2-D input: fixed-length bags
    idx2 = rng.integers(0, 300, (9, 5))
    same_bytes(module(torch.from_numpy(idx2)).numpy(),
               qe4.embedding_bag(table, idx2, mode=mode))
    if mode == "sum":
        same_bytes(module(torch.from_numpy(indices), torch.from_numpy(offsets),
                          torch.from_numpy(weights)).numpy(),
                   qe4.embedding_bag(table, indices, offsets, per_sample_weights=weights))


def test_module_mean_is_not_torch_sum(same_bytes):
    """torch's op ignores mode=1 (mean); the module divides, exactly as the spec says."""
    x = mixed_table(802, 20, 8)
    table = qe4.quantize(x, 4)
    indices, offsets = np.array([1, 2, 3, 4, 5, 6, 7]), np.array([0, 3, 3])
    summed = Q.embedding_bag_4bit_rowwise_offsets(
        to_torch(table), torch.from_numpy(indices), torch.from_numpy(offsets), mode=1).numpy()
    mean = QuantizedEmbeddingBag(table, mode="mean")(indices, offsets).numpy()
    same_bytes(summed, qe4.embedding_bag(table, indices, offsets, mode="sum"))
    expected = summed.copy()
    expected[0] *= F32(1) / F32(3)
    expected[2] *= F32(1) / F32(4)
    same_bytes(mean, expected)
    assert (mean[1] == 0).all()


def test_module_validates_what_torch_does_not():
    module = QuantizedEmbeddingBag(qe4.quantize(mixed_table(803, 10, 8), 4))
    idx = torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        module(idx, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        module(idx, torch.tensor([0, 3, 2]))
    with pytest.raises(ValueError, match="past the end"):
        module(idx, torch.tensor([0, 5]))
    with pytest.raises(IndexError, match=r"indices\[2\] = 10"):
        module(torch.tensor([1, 2, 10]), torch.tensor([0]))
    with pytest.raises(IndexError, match=r"= -1"):
        module(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="indices"):
        module(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        module(idx, torch.tensor([0]), torch.ones(3))
    mean = QuantizedEmbeddingBag(module.table(), mode="mean")
    with pytest.raises(ValueError, match="mode='sum'"):
        mean(idx, torch.tensor([0]), torch.ones(4))
    with pytest.raises(ValueError, match="mode"):
        QuantizedEmbeddingBag(module.table(), mode="max")
    # empty input: bags of nothing are zeros
    out = mean(torch.tensor([], dtype=torch.int64), torch.tensor([0, 0]))
    assert out.shape == (2, 8) and not out.any() and not torch.signbit(out).any()


def test_module_from_float_options_and_state(same_bytes):
    x = torch.from_numpy(mixed_table(804, 12, 8))
    with pytest.raises(ValueError, match="padding_idx"):
        QuantizedEmbeddingBag.from_float(torch.nn.EmbeddingBag.from_pretrained(x, padding_idx=0))
    with pytest.raises(ValueError, match="max_norm"):
        QuantizedEmbeddingBag.from_float(torch.nn.EmbeddingBag.from_pretrained(x, max_norm=1.0))
    bag = torch.nn.EmbeddingBag.from_pretrained(x, mode="sum", include_last_offset=True)
    m = QuantizedEmbeddingBag.from_float(bag, 4, "exhaustive")
    assert m.include_last_offset and m.mode == "sum"
    assert QuantizedEmbeddingBag.from_float(torch.nn.Embedding.from_pretrained(x)).mode == "sum"
    assert QuantizedEmbeddingBag.from_float(x, mode="mean").mode == "mean"
    same_bytes(m.weight.numpy(), qe4.quantize(x.numpy(), 4, "exhaustive").data)
    m2 = QuantizedEmbeddingBag(qe4.quantize(np.zeros((12, 8), F32), 4))
    m2.load_state_dict(m.state_dict())
    same_bytes(m2.weight.numpy(), m.weight.numpy())
    assert "bits=4" in repr(m)
