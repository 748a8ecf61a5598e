"""The "mse" search (qe4.mse, qe4_fast.mse): twin bytes, torch serves its rows, quality, errors."""

import numpy as np
import pytest

import qe4
import qe4.mse as M
import qe4.rowwise as R
from conftest import ROWWISE_BITS, float_dtype_configs
from qe4 import layouts as L
from test_fast_quantize import zoo

F32 = np.float32
CONFIGS = float_dtype_configs("rowwise")
CONFIG_IDS = [f"{b}bit-{sd or 'default'}" for b, sd in CONFIGS]
WIDTHS = (1, 2, 7, 16, 33, 64, 257)


def fast_mse():
    return pytest.importorskip("qe4_fast.mse", reason="qe4_fast is not built")


def served_loss(x, table):
    """Each row's float32 squared error as the search measures it (columns in order)."""
    xh = qe4.dequantize(table)
    acc = np.zeros(x.shape[0], F32)
    for j in range(x.shape[1]):
        d = x[:, j] - xh[:, j]
        acc = acc + d * d
    return acc


def gaussian(n_rows, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((n_rows, dim)).astype(F32)


# ------------------------------------------------------------------ twin bytes

@pytest.mark.parametrize("bits,scale_dtype", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("n_cols", WIDTHS)
def test_fast_equals_reference(same_bytes, bits, scale_dtype, n_cols):
    FM = fast_mse()
    x = zoo(n_cols, 1000 + n_cols * 10 + bits, fp16_safe=scale_dtype is None or bits == 8)
    with np.errstate(all="ignore"):
        ref = M.quantize_mse(x, bits, scale_dtype=scale_dtype)
    for n_threads in (1, 2, 7):
        fast = FM.quantize_mse(x, bits, scale_dtype=scale_dtype, n_threads=n_threads)
        same_bytes(fast.data, ref.data)
    assert (fast.method, fast.params) == (ref.method, ref.params)


@pytest.mark.parametrize("options", [
    dict(max_trim=0.0, n_steps=1, n_keep=1, n_iter=0),
    dict(max_trim=0.9, n_steps=3, n_keep=100, n_iter=1),
    dict(max_trim=0.3, n_steps=5, n_keep=2, n_iter=7)], ids=("no-search", "all-kept", "long"))
def test_fast_equals_reference_options(same_bytes, options):
    FM = fast_mse()
    x = zoo(19, 77)
    for bits in (2, 4):
        with np.errstate(all="ignore"):
            ref = M.quantize_mse(x, bits, **options)
        same_bytes(FM.quantize_mse(x, bits, n_threads=2, **options).data, ref.data)


def test_float16_input_is_widened(same_bytes):
    x = gaussian(40, 24).astype(np.float16)
    same_bytes(M.quantize_mse(x, 2).data, M.quantize_mse(x.astype(F32), 2).data)


# ------------------------------------------------------------------ what the search finds

def test_never_worse_than_minmax_row_by_row():
    x = zoo(33, 5)
    for bits in ROWWISE_BITS:
        with np.errstate(all="ignore"):
            mse = served_loss(x, M.quantize_mse(x, bits))
            mm = served_loss(x, qe4.quantize(x, bits, "minmax"))
        if bits < 8:    # at 8 bits torch's minmax codes use 255 / (range + 1e-8), not 1 / scale
            assert (mse <= mm).all()
    # without any search (one range, no refinement) the row is the minmax row
    assert M.quantize_mse(x, 4, n_steps=1, max_trim=0.0, n_keep=1, n_iter=0) .data.tobytes() == \
        qe4.quantize(x, 4, "minmax").data.tobytes()


def test_exact_rows_stay_exact(same_bytes):
    # every value on the grid bias + scale * q: the least-squares fit recovers it exactly
    rng = np.random.default_rng(3)
    q = rng.integers(0, 4, (20, 32)).astype(F32)
    q[:, :4] = [0, 1, 2, 3]
    scale = (rng.uniform(0.01, 2, 20)).astype(np.float16).astype(F32)
    bias = (rng.uniform(-3, 1, 20)).astype(np.float16).astype(F32)
    x = (q * scale[:, None] + bias[:, None]).astype(F32)
    t = M.quantize_mse(x, 2)
    same_bytes(t.scales, scale)
    same_bytes(t.biases, bias)
    same_bytes(qe4.dequantize(t), x)


def test_gaussian_quality_against_greedy():
    # N(0,1) rows of 64: greedy ~0.20 at 2 bits, 0.00666 at 4 bits; the best asymmetric
    # uniform quantizer of these rows is ~0.10 and ~0.0065
    FM = fast_mse()     # the same bytes as the reference (above), in a fraction of the time
    import qe4_fast
    x = gaussian(3000, 64, seed=11)
    err = {(b, m): qe4.table_error(x, (FM.quantize_mse(x, b) if m == "mse"
                                       else qe4_fast.quantize(x, b, m)))
           for b in (2, 4) for m in ("greedy", "exhaustive", "mse")}
    assert err[2, "greedy"] > 0.19 and err[2, "mse"] < 0.103
    assert err[2, "mse"] < 0.80 * err[2, "exhaustive"]
    assert err[4, "mse"] < err[4, "exhaustive"] < err[4, "greedy"]
    assert err[4, "mse"] < 0.00660


def test_saved_params_and_file_roundtrip(tmp_path, same_bytes):
    x = gaussian(50, 20)
    t = M.quantize_mse(x, 4)
    assert t.method == "mse"
    assert t.params == {"max_trim": 0.16, "n_steps": 8, "n_keep": 3, "n_iter": 3}
    t.save(tmp_path / "t.qe4")
    back = qe4.load(tmp_path / "t.qe4")
    same_bytes(back.data, t.data)
    assert (back.method, back.params) == ("mse", t.params)
    assert M.quantize_mse(x, 2).params["max_trim"] == 0.5


def test_scan_grid_order():
    assert M.scan_grid(2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    assert len(M.scan_grid(8)) == 45


# ------------------------------------------------------------------ torch serves the rows

torch_bits = pytest.mark.parametrize("bits", L.LAYOUTS["rowwise"].torch_bits)


@torch_bits
@pytest.mark.parametrize("weighted", (False, True), ids=("sum", "wsum"))
def test_torch_bag_ops_read_mse_rows(same_bytes, bits, weighted):
    torch = pytest.importorskip("torch")
    from qe4.torch import to_torch
    ops = {2: torch.ops.quantized.embedding_bag_2bit_rowwise_offsets,
           4: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets,
           8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets}
    rng = np.random.default_rng(bits)
    x = np.concatenate([gaussian(150, 64, seed=bits), rng.standard_t(3, (50, 64)).astype(F32)])
    table = M.quantize_mse(x, bits)
    lengths = rng.integers(0, 9, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    indices = rng.integers(0, len(x), int(lengths.sum())).astype(np.int64)
    w = rng.standard_normal(indices.size).astype(F32) if weighted else None
    expected = ops[bits](to_torch(table), torch.from_numpy(indices), torch.from_numpy(offsets),
                         per_sample_weights=None if w is None else torch.from_numpy(w)).numpy()
    same_bytes(qe4.embedding_bag(table, indices, offsets, per_sample_weights=w), expected)


@torch_bits
def test_torch_unpack_equals_dequantize(same_bytes, bits):
    torch = pytest.importorskip("torch")
    from qe4.torch import to_torch
    unpack = {8: torch.ops.quantized.embedding_bag_byte_unpack,
              4: torch.ops.quantized.embedding_bag_4bit_unpack,
              2: torch.ops.quantized.embedding_bag_2bit_unpack}[bits]
    table = M.quantize_mse(gaussian(60, 32, seed=7), bits)
    same_bytes(unpack(to_torch(table)).numpy(), qe4.dequantize(table))


# ------------------------------------------------------------------ bad input

def _both_mse():
    """The reference mse module, and qe4_fast's when it is built."""
    try:
        return [M, fast_mse()]
    except pytest.skip.Exception:
        return [M]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(max_trim=1.0), ValueError, r"max_trim must be in \[0, 1\), got 1.0"),
    (dict(max_trim="0.1"), TypeError, r"max_trim must be a real number or None, got '0.1'"),
    (dict(n_steps=0), ValueError, r"n_steps must be in \[1, 1000\], got 0"),
    (dict(n_keep=2.0), TypeError, r"n_keep must be an integer, got 2.0"),
    (dict(n_iter=-1), ValueError, r"n_iter must be in \[0, 1000\], got -1"),
    (dict(bits=7), ValueError, r"bits must be one of"),
    (dict(scale_dtype="float64"), ValueError, r"scale_dtype must be one of"),
])
def test_bad_options(kwargs, exc, match):
    x = gaussian(4, 8)
    kwargs = dict(kwargs)
    bits = kwargs.pop("bits", 4)
    for mod in _both_mse():
        with pytest.raises(exc, match=match):
            mod.quantize_mse(x, bits, **kwargs)


def test_bad_tables():
    x = gaussian(4, 8)
    x[2, 3] = np.nan
    for mod in _both_mse():
        with pytest.raises(ValueError, match=r"x must be finite: x\[2, 3\] = "):
            mod.quantize_mse(x, 4)
        with pytest.raises(ValueError, match="overflows the float16"):
            mod.quantize_mse(np.array([[0.0, 70000.0]], F32), 4)
        with pytest.raises(TypeError, match="dtype float16, float32 or float64"):
            mod.quantize_mse(np.ones((2, 2), np.int32), 4)


# ------------------------------------------------------------------ random tables

def test_fast_equals_reference_random_tables(same_bytes):
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    FM = fast_mse()
    values = st.floats(-1e4, 1e4, width=32, allow_subnormal=True)

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                        elements=values),
           bits=st.sampled_from(ROWWISE_BITS), n_steps=st.integers(1, 6), n_keep=st.integers(1, 4),
           n_iter=st.integers(0, 4), max_trim=st.floats(0.0, 0.95))
    def check(x, bits, n_steps, n_keep, n_iter, max_trim):
        kw = dict(n_steps=n_steps, n_keep=n_keep, n_iter=n_iter, max_trim=max_trim)
        with np.errstate(all="ignore"):
            ref = M.quantize_mse(x, bits, **kw)
        same_bytes(FM.quantize_mse(x, bits, n_threads=2, **kw).data, ref.data)

    check()
