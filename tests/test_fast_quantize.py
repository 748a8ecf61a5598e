"""qe4_fast's row-wise quantizers reproduce the qe4 reference byte for byte.

Every uniform method x bits {2, 4, 8} x scale_dtype, on tables whose rows mix the
distributions that break naive twins (heavy tails, constant rows, signed zeros,
tiny and near-float16-limit ranges, large offsets), widths that hit every SIMD tail
and lane count (the greedy kernel runs 16 rows per block), every thread count, and
every input layout.  Bad input raises the same exception with the same message.
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qe4
import qe4_fast
from conftest import ROWWISE_METHODS as METHODS
from conftest import ROWWISE_BITS, float_dtype_configs

CONFIGS = float_dtype_configs("rowwise")
WIDTHS = (1, 2, 7, 8, 15, 16, 33, 64, 72, 130, 257)
N_THREADS = (1, 2, 7, None, -1)


def zoo(n_cols, seed, fp16_safe=True):
    """Rows of every awkward kind, shuffled, for a table of ``n_cols`` columns."""
    rng = np.random.default_rng(seed)
    d = n_cols
    big = 30000.0 if fp16_safe else 1e30
    rows = [
        rng.standard_normal((6, d)),
        rng.standard_normal((2, d)) * 1e-3,
        rng.standard_normal((2, d)) * 100,
        rng.standard_t(2, (3, d)),                       # heavy tails
        rng.laplace(0, 1, (3, d)),
        np.zeros((1, d)), np.full((1, d), -0.0), np.full((1, d), 1.5), np.full((1, d), -3.25),
        np.where(rng.random((2, d)) < 0.5, 0.0, -0.0),   # only signed zeros
        np.where(rng.random((2, d)) < 0.4, -0.0, rng.standard_normal((2, d))),
        np.abs(rng.standard_normal((1, d))),             # min may be 0 exactly
        rng.standard_normal((2, d)) * 1e-30,             # tiny ranges
        rng.standard_normal((1, d)) * 1e-36,
        1e-30 + rng.standard_normal((1, d)) * 1e-33,
        rng.uniform(-big, big, (2, d)),                  # near the float16 limit
        np.where(rng.random((1, d)) < 0.5, -65504.0, 65504.0) if fp16_safe
        else np.eye(1, d, d // 2) * (1.6e38 / d),   # one huge value, just inside the float32 rule
        np.zeros((1, d)) if fp16_safe                   # many huge values: row sums near the limit
        else np.where(rng.random((1, d)) < 0.5, 0.0, 1.6e38 / d),
        1000.0 + rng.standard_normal((2, d)) * 0.01,     # large offsets
        -3.0e4 + rng.standard_normal((1, d)),
        np.round(rng.standard_normal((2, d)) * 4) / 4,   # many exact ties
    ]
    x = np.concatenate(rows).astype(np.float32)
    return x[rng.permutation(x.shape[0])]


def ref_and_fast(fn, *args, n_threads=None, **kwargs):
    with np.errstate(all="ignore"):
        ref = getattr(qe4, fn)(*args, **kwargs)
    fast = getattr(qe4_fast, fn)(*args, n_threads=n_threads, **kwargs)
    return ref, fast


@pytest.mark.parametrize("bits, scale_dtype", CONFIGS, ids=[f"{b}bit-{sd}" for b, sd in CONFIGS])
@pytest.mark.parametrize("method", METHODS)
def test_bytes_equal_reference(same_bytes, method, bits, scale_dtype):
    widths = WIDTHS if method != "exhaustive" else (1, 7, 16, 33, 72)
    for i, d in enumerate(widths):
        x = zoo(d, seed=1000 * bits + d, fp16_safe=scale_dtype != "float32")
        nt = N_THREADS[i % len(N_THREADS)]
        ref, fast = ref_and_fast("quantize", x, bits, method, scale_dtype=scale_dtype, n_threads=nt)
        assert type(fast) is qe4.QuantizedTable
        assert (fast.bits, fast.dim, fast.method, fast.scale_dtype, fast.params) == (
            ref.bits, ref.dim, ref.method, ref.scale_dtype, ref.params)
        same_bytes(fast.data, ref.data)


@pytest.mark.parametrize("method", METHODS)
def test_row_ranges_equal_reference(same_bytes, method):
    x = zoo(33, seed=7)
    for bits, sd in CONFIGS:
        (rlo, rhi), (flo, fhi) = ref_and_fast("row_ranges", x, bits, method, scale_dtype=sd,
                                              n_threads=2)
        same_bytes(flo, rlo)
        same_bytes(fhi, rhi)


@pytest.mark.parametrize("n_rows", (1, 2, 15, 16, 17, 31, 33, 300))
@pytest.mark.parametrize("n_threads", N_THREADS)
def test_row_counts_and_threads(same_bytes, n_rows, n_threads):
    """Rows per 16-lane block and thread counts never change a byte."""
    x = np.random.default_rng(n_rows).standard_normal((n_rows, 24)).astype(np.float32)
    x[::3] *= 50
    ref = qe4.quantize(x, 4, "greedy")
    for bits in (2, 4):
        fast = qe4_fast.quantize(x, bits, "greedy", n_threads=n_threads)
        same_bytes(fast.data, qe4.quantize(x, bits, "greedy").data if bits != 4 else ref.data)


@pytest.mark.parametrize("n_bins, ratio", [(200, 0.16), (100, 0.3), (1, 0.0), (7, 0.9), (1000, 0.05)])
def test_search_grid_parameters(same_bytes, n_bins, ratio):
    x = zoo(16, seed=n_bins)
    for method in ("greedy", "exhaustive"):
        ref, fast = ref_and_fast("quantize", x, 4, method, n_bins=n_bins, ratio=ratio)
        same_bytes(fast.data, ref.data)
        assert fast.params == {"n_bins": n_bins, "ratio": ratio}


def test_range_loss_equal_reference(same_bytes):
    x = zoo(33, seed=3)
    rng = np.random.default_rng(3)
    span = x.max(axis=1) - x.min(axis=1)             # clipped ranges inside each row's, lo <= hi
    lo = (x.min(axis=1) + 0.4 * rng.random(x.shape[0]) * span).astype(np.float32)
    hi = (x.max(axis=1) - 0.4 * rng.random(x.shape[0]) * span).astype(np.float32)
    for bits, sd in ((4, "float16"), (2, "float16"), (8, "float32"), (4, "float32")):
        ref, fast = ref_and_fast("range_loss", x, lo, hi, bits, sd, n_threads=2)
        same_bytes(fast, ref)


@pytest.mark.parametrize("layout", ["readonly", "fortran", "big-endian", "float16", "float64",
                                    "strided", "list"])
def test_input_layouts(same_bytes, layout):
    base = zoo(20, seed=11)
    x = {
        "readonly": base.copy(),
        "fortran": np.asfortranarray(base),
        "big-endian": base.astype(">f4"),
        "float16": base.astype(np.float16),
        "float64": base.astype(np.float64) * (1 + 1e-9),   # rounds to float32 first
        "strided": np.repeat(base, 2, axis=1)[:, ::2],
        "list": base.tolist(),
    }[layout]
    if layout == "readonly":
        x.flags.writeable = False
    for method in ("minmax", "greedy"):
        ref, fast = ref_and_fast("quantize", x, 4, method)
        same_bytes(fast.data, ref.data)


def test_golden_torch_bytes(golden, same_bytes):
    """The torch bytes of tests/fbgemm_golden.npz, produced by qe4_fast."""
    prepacks = [("u4_d{}_minmax", 4, "minmax", 200, 0.16), ("u4_d{}_greedy", 4, "greedy", 200, 0.16),
                ("u4_d{}_greedy_nb100_r0.3", 4, "greedy", 100, 0.3),
                ("u2_d{}_minmax", 2, "minmax", 200, 0.16), ("u2_d{}_greedy", 2, "greedy", 200, 0.16),
                ("u8_d{}_byte", 8, "minmax", 200, 0.16)]
    n_checked = 0
    for d in (2, 4, 6, 8, 16, 30, 64, 72, 128, 130):
        x = golden[f"u4_d{d}_x"]
        for key, bits, method, n_bins, ratio in prepacks:
            if key.format(d) in golden:
                table = qe4_fast.quantize(x, bits, method, n_bins=n_bins, ratio=ratio, n_threads=2)
                same_bytes(table.data, golden[key.format(d)])
                n_checked += 1
    assert n_checked == 52


def test_float16_rounding_ties_subnormals(same_bytes):
    """Biases and scales at every kind of float16 rounding case: exact ties between
    neighbours (ties to even), one float32 ulp either side, subnormals, the overflow edge."""
    h = np.arange(0, 0x7BFF, 7, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = ((h[:-1].astype(np.float64) + np.nextafter(h[:-1].astype(np.float16), np.float16(np.inf))
            .astype(np.float64)) / 2).astype(np.float32)          # exact ties in float32
    lo = np.concatenate([mid, np.nextafter(mid, 0), np.nextafter(mid, np.inf), h])
    lo = np.concatenate([lo, -lo])
    lo = lo[np.abs(lo) < 60000]
    widths = np.float32([0.0, 1e-7, 3e-5, 0.01, 1.0, 100.0])[np.arange(lo.size) % 6]
    x = np.stack([lo, lo + widths * np.maximum(np.abs(lo), 1), lo + widths], axis=1)
    x = np.clip(x, -65000, 65000).astype(np.float32)
    for bits, method in ((4, "minmax"), (2, "minmax"), (4, "greedy")):
        ref, fast = ref_and_fast("quantize", x, bits, method, n_threads=2)
        same_bytes(fast.data, ref.data)


def test_worked_example():
    """A hand-checked 4-bit row: min 0, max 1.5 -> scale fp16(0.1) = 0.0999755859375."""
    x = np.array([[0.0, 0.75, 1.5, 0.1]], np.float32)
    t = qe4_fast.quantize(x, 4, "minmax")
    # codes 0, rint(0.75 / 0.09998) = 8, 15, 1 -> bytes 0x80, 0x1f; scale 0x2e66, bias 0
    assert t.data.tolist() == [[0x80, 0x1F, 0x66, 0x2E, 0x00, 0x00]]


def test_absorbed_steps_terminate():
    """Ranges of a few ulps at a large offset: the step is absorbed by rounding and
    torch's loop never ends; qe4 and qe4_fast stop a greedy row whose state stops
    changing, and exhaustive expands no state whose bound does not move."""
    x = np.array([[60000.0, 60000.0 + 10 * 0.0039], [1.0021218, 1.0021269]], np.float32)
    for method in ("greedy", "exhaustive"):
        (rlo, rhi), (flo, fhi) = ref_and_fast("row_ranges", x, 4, method)
        assert np.array_equal(flo.view(np.uint32), rlo.view(np.uint32))
        assert np.array_equal(fhi.view(np.uint32), rhi.view(np.uint32))
        assert (x.min(axis=1) <= flo).all() and (flo <= fhi).all() and (fhi <= x.max(axis=1)).all()


BAD_INPUTS = [
    ("nan", lambda x: np.where(x == x[2, 3], np.nan, x).astype(np.float32), {}),
    ("inf", lambda x: np.where(x == x[4, 1], np.inf, x).astype(np.float32), {}),
    ("-inf", lambda x: np.where(x == x[0, 7], -np.inf, x).astype(np.float32), {}),
    ("float64-overflow", lambda x: x.astype(np.float64) * 1e300, {}),
    ("fp16-value", lambda x: (x * 70000).astype(np.float32), {}),
    ("fp16-range", lambda x: np.array([[0.0, 1e6]], np.float32), {}),
    ("fp32-range", lambda x: np.array([[-3e38, 3e38]], np.float32), {"scale_dtype": "float32"}),
    ("fp32-row-sum", lambda x: np.array([[0.0, 1e38, 1e38]], np.float32), {"scale_dtype": "float32"}),
    ("1-D", lambda x: x[0], {}),
    ("3-D", lambda x: x[None], {}),
    ("empty-rows", lambda x: x[:0], {}),
    ("empty-cols", lambda x: x[:, :0], {}),
    ("int", lambda x: x.astype(np.int32), {}),
    ("bool", lambda x: x > 0, {}),
    ("complex", lambda x: x.astype(np.complex64), {}),
    ("object", lambda x: [[1.0, 2.0], [3.0]], {}),
    ("bits=7", lambda x: x, {"bits": 7}),
    ("bits=4.0", lambda x: x, {"bits": 4.0}),
    ("bits=True", lambda x: x, {"bits": True}),
    ("method", lambda x: x, {"method": "kmeanz"}),
    ("method-type", lambda x: x, {"method": 3}),
    ("n_bins=0", lambda x: x, {"n_bins": 0}),
    ("n_bins=2.5", lambda x: x, {"n_bins": 2.5}),
    ("ratio=1", lambda x: x, {"ratio": 1.0}),
    ("ratio=-0.1", lambda x: x, {"ratio": -0.1}),
    ("ratio=str", lambda x: x, {"ratio": "0.1"}),
    ("scale_dtype", lambda x: x, {"scale_dtype": "bfloat16"}),
    ("scale_dtype-8bit", lambda x: x, {"bits": 8, "scale_dtype": "float16"}),
    ("kwargs", lambda x: x, {"k": 3}),
]


@pytest.mark.parametrize("make, kwargs", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("fn", ["quantize", "row_ranges"])
def test_same_errors(fn, make, kwargs):
    x = make(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    kwargs = dict(kwargs)
    if fn == "row_ranges":
        if "k" in kwargs:
            pytest.skip("row_ranges takes no extra keywords")
        if kwargs.get("method") == "kmeanz":
            kwargs["method"] = "kmeans"   # a codebook method is not a range method
    with pytest.raises(Exception) as ref_err, np.errstate(all="ignore"):
        getattr(qe4, fn)(x, **kwargs)
    with pytest.raises(Exception) as fast_err, np.errstate(all="ignore"):
        getattr(qe4_fast, fn)(x, **kwargs)
    assert type(fast_err.value) is type(ref_err.value)
    assert str(fast_err.value) == str(ref_err.value)
    assert type(ref_err.value) in (TypeError, ValueError)


@pytest.mark.parametrize("n_threads, exc", [(0, ValueError), (1.0, TypeError), ("2", TypeError),
                                             (True, TypeError), (np.float32(2), TypeError)])
def test_bad_n_threads(n_threads, exc):
    x = np.ones((3, 4), np.float32)
    for fn in (qe4_fast.quantize, qe4_fast.row_ranges):
        with pytest.raises(exc, match=f"n_threads .*{re.escape(repr(n_threads))}"):
            fn(x, n_threads=n_threads)


def test_integer_n_threads_types(same_bytes):
    x = zoo(9, seed=5)
    ref = qe4.quantize(x)
    for nt in (np.int64(2), np.int32(-1), 10**6, -10**6):
        same_bytes(qe4_fast.quantize(x, n_threads=nt).data, ref.data)


finite32 = st.floats(-1e4, 1e4, width=32, allow_subnormal=True)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=finite32),
       method=st.sampled_from(METHODS), config=st.sampled_from(CONFIGS),
       n_threads=st.sampled_from(N_THREADS))
def test_property_bytes_equal(x, method, config, n_threads):
    bits, sd = config
    if method == "exhaustive":
        x = x[:4]
    with np.errstate(all="ignore"):
        ref = qe4.quantize(x, bits, method, scale_dtype=sd)
    fast = qe4_fast.quantize(x, bits, method, scale_dtype=sd, n_threads=n_threads)
    assert np.array_equal(fast.data, ref.data)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 20), st.integers(1, 20)),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       bits=st.sampled_from(ROWWISE_BITS))
def test_property_both_raise_or_neither(x, bits):
    """Any float32 table: both raise the same error, or both give the same bytes."""
    try:
        with np.errstate(all="ignore"):
            ref = qe4.quantize(x, bits, "minmax").data
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)) as fast_err:
            qe4_fast.quantize(x, bits, "minmax")
        assert str(fast_err.value) == str(exc)
    else:
        assert np.array_equal(qe4_fast.quantize(x, bits, "minmax").data, ref)
