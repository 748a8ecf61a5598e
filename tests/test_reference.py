"""The reference quantizer (qe4.quantize and qe4.rowwise) on hand-checked bytes,
edge cases, bad input and properties.  Byte layouts: docs/numerics.rst.
"""

import importlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qe4
from conftest import ROWWISE_BITS, ROWWISE_METHODS
from qe4 import layouts as L
from qe4 import method_registry as M
from qe4 import rowwise as R

F32 = np.float32


def row_bytes(x, bits=4, method="minmax", **kw):
    return qe4.quantize(np.asarray(x, F32), bits, method, **kw).data


def u8(*values):
    return np.array([values], np.uint8)


# ------------------------------------------------------------------------ hand-worked bytes

def test_4bit_row_by_hand(same_bytes):
    # x = [1, -1, 0.5, 2]: min -1, max 2
    # bias  = fp16(-1.0) = 0xBC00                         -> bytes 00 BC
    # scale = fp16(3 / 15) = fp16(0.2) = 0x3266 = 0.199951171875 -> bytes 66 32
    # inv   = 1 / 0.199951171875 = 5.0012207 (fp32)
    # q     = rint([2, 0, 1.5, 3] * inv) = rint([10.002, 0, 7.502, 15.004]) = [10, 0, 8, 15]
    # bytes = [10 | 0 << 4, 8 | 15 << 4] = [0x0A, 0xF8]   (even element in the LOW nibble)
    t = qe4.quantize(np.array([[1.0, -1.0, 0.5, 2.0]], F32), 4, "minmax")
    same_bytes(t.data, u8(0x0A, 0xF8, 0x66, 0x32, 0x00, 0xBC))
    same_bytes(t.scales, np.array([0.199951171875], F32))
    same_bytes(t.biases, np.array([-1.0], F32))
    same_bytes(t.codes(), u8(10, 0, 8, 15))
    # x_hat = 0.199951171875 * q - 1
    same_bytes(t.dequantize(), np.array([[0.99951171875, -1.0, 0.599609375, 1.999267578125]], F32))


def test_4bit_half_way_codes_round_to_even(same_bytes):
    # x = [0, 15, 2.5, 3.5]: bias 0, scale fp16(15/15) = 1.0 = 0x3C00, inv 1
    # q = rint([0, 15, 2.5, 3.5]) = [0, 15, 2, 4]  (half to even) -> bytes F0 42
    same_bytes(row_bytes([[0.0, 15.0, 2.5, 3.5]]), u8(0xF0, 0x42, 0x00, 0x3C, 0x00, 0x00))


def test_2bit_row_with_odd_dim_by_hand(same_bytes):
    # x = [0, 3, 1, 2, 1.6]: bias 0, scale fp16(3/3) = 1.0 = 0x3C00, inv 1
    # q = [0, 3, 1, 2, 2]; element c at bits 2 * (c % 4) of byte c // 4:
    # byte 0 = 0 | 3 << 2 | 1 << 4 | 2 << 6 = 0x9C; byte 1 = 2 (6 unused high bits are 0)
    t = qe4.quantize(np.array([[0.0, 3.0, 1.0, 2.0, 1.6]], F32), 2, "minmax")
    same_bytes(t.data, u8(0x9C, 0x02, 0x00, 0x3C, 0x00, 0x00))
    assert t.dim == 5 and t.code_bytes == 2


def test_4bit_odd_dim_last_nibble_zero(same_bytes):
    # x = [0, 1, 2]: bias 0, scale = fp16(2/15 = 0.13333334) = 0x3044 = 0.13330078125
    # inv = 7.5018315; q = rint([0, 7.50, 15.004]) = [0, 8, 15]
    # bytes = [0 | 8 << 4, 15 | (unused) 0 << 4] = [0x80, 0x0F]
    t = qe4.quantize(np.array([[0.0, 1.0, 2.0]], F32), 4, "minmax")
    same_bytes(t.data, u8(0x80, 0x0F, 0x44, 0x30, 0x00, 0x00))
    same_bytes(t.codes(), u8(0, 8, 15))
    # bytes from elsewhere with a non-zero padding nibble decode the same codes
    same_bytes(qe4.QuantizedTable.from_fused(u8(0x80, 0xFF, 0x44, 0x30, 0, 0), 4, 3).codes(),
               u8(0, 8, 15))


def test_8bit_row_by_hand(same_bytes):
    # byte layout: D codes, fp32 scale, fp32 bias.  x = [0, 1, 2, 3]:
    # scale = 3 / 255 (fp32, stored as is) = 0x3C40C0C1; bias = 0
    # inv = 255 / (3 + 1e-8) = 255 / 3.0 = 85 (3 + 1e-8 rounds to 3 in fp32)
    # q = [0, 85, 170, 255]
    t = qe4.quantize(np.array([[0.0, 1.0, 2.0, 3.0]], F32), 8)
    same_bytes(t.data, u8(0, 85, 170, 255, 0xC1, 0xC0, 0x40, 0x3C, 0, 0, 0, 0))
    assert t.scale_dtype == "float32"
    # dequantize = fma(q, scale, bias): 255 * 0.011764706 rounds to 3.0000002
    same_bytes(t.dequantize()[0, 3:], np.array([255 * np.float64(F32(3) / F32(255))], F32))


def test_constant_rows(same_bytes):
    # rng = 0 -> scale 1.0 (0x3C00), codes 0; bias fp16(2.5) = 0x4100, fp16(-3) = 0xC200
    same_bytes(row_bytes([[2.5] * 4, [-3.0] * 4]),
               np.array([[0, 0, 0x00, 0x3C, 0x00, 0x41], [0, 0, 0x00, 0x3C, 0x00, 0xC2]], np.uint8))
    for method in ("greedy", "exhaustive", "aciq-laplace", "aciq-gauss"):
        same_bytes(row_bytes([[2.5] * 4], method=method), u8(0, 0, 0x00, 0x3C, 0x00, 0x41))
    # 8 bits: scale (0 / 255) = 0.0 is stored, bias = 2.5 (0x40200000), codes 0
    same_bytes(row_bytes([[2.5] * 4], 8), u8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x40))


def test_tiny_range_scale_underflows_to_one(same_bytes):
    # rng = 3e-7: 3e-7 / 15 = 2e-8 is below half the smallest fp16 subnormal (2^-24 = 5.96e-8)
    # -> fp16 0 -> scale 1.0; inv 1; q = rint(x) = 0
    same_bytes(row_bytes([[0.0, 1e-7, 2e-7, 3e-7]]), u8(0, 0, 0x00, 0x3C, 0, 0))
    # rng = 6e-7: 4e-8 rounds up to the smallest subnormal 2^-24 (0x0001), inv = 2^24
    t = qe4.quantize(np.array([[0.0, 2e-7, 4e-7, 6e-7]], F32), 4, "minmax")
    same_bytes(t.scales, np.array([2.0 ** -24], F32))
    same_bytes(t.codes(), u8(0, 3, 7, 10))          # rint(x * 2^24) = [0, 3.36, 6.71, 10.07]


def test_signed_zeros(same_bytes):
    # a -0.0 minimum is stored as bias +0.0 (FBGEMM's sign depends on SIMD lanes)
    x = np.array([[-0.0, 1.0, 2.0, 3.0], [-0.0, -0.0, -0.0, -0.0], [0.0, -0.0, 0.0, -0.0]], F32)
    for bits in ROWWISE_BITS:
        for method in ROWWISE_METHODS:
            t = qe4.quantize(x, bits, method)
            assert not np.signbit(t.biases).any()
            assert not np.signbit(t.dequantize()).any()
    # a tiny negative minimum keeps fp16(-1e-9) = -0.0 (torch's byte: 0x80)
    assert row_bytes([[-1e-9, 1.0, 2.0, 3.0]])[0, -1] == 0x80


def test_near_fp16_limit(same_bytes):
    # |v| = 65504 (fp16 max) is fine: bias fp16(-65504) = 0xFBFF,
    # scale fp16(131008 / 15 = 8733.867): ulp 8 in [8192, 16384) -> 8736 = 2^13 * (1 + 68/1024)
    # = 0x7044
    t = qe4.quantize(np.array([[-65504.0, 0.0, 65504.0, 1.0]], F32), 4, "minmax")
    same_bytes(t.data[:, 2:], u8(0x44, 0x70, 0xFF, 0xFB))
    # 65519.99 still rounds to 65504; 65520 rounds to inf and is refused
    qe4.quantize(np.array([[0.0, 65519.99]], F32), 4)
    for bad in (65520.0, -65520.0, 70000.0):
        with pytest.raises(ValueError, match=r"row 1 .*overflows the float16 scale/bias"):
            qe4.quantize(np.array([[0.0, 1.0], [0.0, bad]], F32), 4)
        with pytest.raises(ValueError, match="row 1"):
            qe4.row_ranges(np.array([[0.0, 1.0], [0.0, bad]], F32), 2)
        # float32 scales/biases and the 8-bit layout hold such rows
        qe4.quantize(np.array([[0.0, bad]], F32), 4, scale_dtype="float32")
        qe4.quantize(np.array([[0.0, bad]], F32), 8)
    with pytest.raises(ValueError, match="too close to the float32 limit"):
        qe4.quantize(np.array([[-3e38, 3e38]], F32), 8)
    # a float32 row sum (ACIQ's mean) must not overflow either: no NaN scale is ever stored
    with pytest.raises(ValueError, match=r"row 0 .*max\|value\| \* 2 \* n_cols"):
        qe4.quantize(np.array([[0.0, 1e38, 1e38]], F32), 4, "aciq-laplace", scale_dtype="float32")


def test_stalled_greedy_terminates(same_bytes):
    """A range far below the ulp of its values: step is absorbed by rounding.

    torch's loop never ends on this row (cmin + step == cmin, cmax - step == cmax);
    qe4 stops when an iteration leaves the state unchanged: the result is minmax.
    """
    x = np.array([[1.0021256, 1.002124, 1.0021253, 1.0021234, 1.0021243, 1.0021269,
                   1.0021218, 1.0021249]], F32)
    step = (x.max() - x.min()) / F32(200)
    assert x.min() + step == x.min() and x.max() - step == x.max()
    for method in ("greedy", "exhaustive"):
        same_bytes(row_bytes(x, 4, method), row_bytes(x, 4, "minmax"))
    # step == 0 with a non-zero range (a subnormal range / n_bins underflows)
    tiny = np.array([[0.0, 2.0 ** -149]], F32)
    same_bytes(row_bytes(tiny, 4, "greedy", n_bins=1000), row_bytes(tiny, 4, "minmax"))


@pytest.mark.parametrize("bits, scale_dtype", [(8, None), (4, "float32"), (2, "float32")])
def test_subnormal_float32_scales(same_bytes, bits, scale_dtype):
    """A float32 scale below 2**-128 has an infinite reciprocal: the search's loss is
    NaN there (never chosen) and quantizing warns nothing (warnings are errors here)."""
    x = np.array([[1.81967e-40, 0.0], [1e-39, 3e-39], [0.0, 1e-45]], F32)
    assert np.isnan(R.range_loss(x[:2], x[:2].min(axis=1), x[:2].max(axis=1), bits, "float32")).all()
    for method in ("greedy", "exhaustive"):
        same_bytes(row_bytes(x, bits, method, scale_dtype=scale_dtype),
                   row_bytes(x, bits, "minmax", scale_dtype=scale_dtype))


# ------------------------------------------------------------------------ searches

def random_rows(seed, n_rows=40, dim=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(F32)
    x[::3] *= rng.lognormal(0, 2, (len(x[::3]), 1)).astype(F32)
    x[1::5] = rng.standard_t(2, (len(x[1::5]), dim)).astype(F32)
    return x


@pytest.mark.parametrize("bits", ROWWISE_BITS)
@pytest.mark.parametrize("n_bins, ratio", [(200, 0.16), (50, 0.5)])
def test_exhaustive_never_worse_than_greedy(bits, n_bins, ratio):
    x = random_rows(1)
    sd = "float32" if bits == 8 else "float16"
    loss = {m: R.range_loss(x, *qe4.row_ranges(x, bits, m, n_bins=n_bins, ratio=ratio), bits, sd)
            for m in ("minmax", "greedy", "exhaustive")}
    assert (loss["exhaustive"] <= loss["greedy"]).all()
    assert (loss["greedy"] <= loss["minmax"]).all()
    # the finer the code grid the less clipping 32-value rows pays: most rows at 2 to 4
    # bits; at 5 and 6 bits most rows with the default 200 bins; rarely at 8
    pays = (loss["exhaustive"] < loss["minmax"]).mean()
    if bits <= 4:
        assert pays > 0.5
    elif bits < 8 and n_bins == 200:    # 50 bins: a step is too coarse to pay at 6 bits
        assert pays > 0.5


def test_greedy_path_properties(same_bytes):
    x = random_rows(2, 30, 24)
    lo, hi, path = R.greedy_range(x, 4, 200, 0.16, "float16", return_path=True)
    xmin, xmax = x.min(axis=1), x.max(axis=1)
    step = (xmax - xmin) / F32(200)
    thr = F32(200 * (1.0 - float(F32(0.16)))) * step
    same_bytes(path[0][0], xmin)
    same_bytes(path[0][1], xmax)
    for r in range(x.shape[0]):
        states = [(a[r], b[r]) for a, b in path if not np.isnan(a[r])]
        for (a0, b0), (a1, b1) in zip(states, states[1:]):
            # exactly one bound moves by one fp32 step, and only while the loop condition held
            assert (a1 == a0 + step[r] and b1 == b0) or (a1 == a0 and b1 == b0 - step[r])
            assert a0 + thr[r] < b0
        assert not states[-1][0] + thr[r] < states[-1][1]          # stopped by the condition
        assert (lo[r], hi[r]) in states
        assert xmin[r] <= lo[r] < hi[r] <= xmax[r]
        assert len(states) - 1 <= 2 * 0.16 * 200 + 2
    # ratio 0 leaves no room to trim: greedy is minmax
    same_bytes(row_bytes(x, 4, "greedy", ratio=0.0), row_bytes(x, 4, "minmax"))


@pytest.mark.parametrize("bits", ROWWISE_BITS)
def test_aciq_ranges_inside_min_max(bits):
    x = np.concatenate([random_rows(3), np.full((2, 32), 0.1, F32)])
    for method in ("aciq-laplace", "aciq-gauss"):
        lo, hi = qe4.row_ranges(x, bits, method)
        assert (x.min(axis=1) <= lo).all() and (lo <= hi).all() and (hi <= x.max(axis=1)).all()
        if bits == 2:                # alpha is ~2 sigma: it clips most rows
            assert (hi - lo < x.max(axis=1) - x.min(axis=1)).sum() > 20


def test_aciq_by_hand(same_bytes):
    # x = [0, 0, 0, 10]: mean 2.5, b = mean|x - 2.5| = 3.75, 2-bit alpha = 2.83 * 3.75 = 10.6125
    # lo = max(0, 2.5 - 10.6125) = 0, hi = min(10, 0 + 21.225) = 10
    lo, hi = qe4.row_ranges(np.array([[0.0, 0.0, 0.0, 10.0]], F32), 2, "aciq-laplace")
    same_bytes(np.concatenate([lo, hi]), np.array([0.0, 10.0], F32))
    # Gaussian 4-bit: sigma = sqrt(18.75) = 4.330127, alpha = 2.55 * sigma = 11.04182
    lo, hi = qe4.row_ranges(np.array([[0.0, 0.0, 0.0, 10.0]], F32), 4, "aciq-gauss")
    same_bytes(np.concatenate([lo, hi]), np.array([0.0, 10.0], F32))
    # a far outlier is clipped: x = [0]*7 + [100]: mean 12.5, b = 21.875, alpha = 110.03
    x = np.array([[0.0] * 7 + [100.0]], F32)
    lo, hi = qe4.row_ranges(x, 2, "aciq-laplace")      # 2.83 * 21.875 = 61.90625
    same_bytes(lo, np.array([0.0], F32))
    same_bytes(hi, np.array([100.0], F32))
    lo, hi = qe4.row_ranges(x, 2, "aciq-gauss")        # 1.71 * 33.0719 = 56.553 -> hi 100
    same_bytes(hi, np.array([100.0], F32))


def test_range_loss_by_hand(same_bytes):
    # x = [0, 1, 2, 3] with [0, 3] at 2 bits: scale 1, every value exact -> loss 0
    x = np.array([[0.0, 1.0, 2.0, 3.0]], F32)
    same_bytes(R.range_loss(x, np.array([0.0], F32), np.array([3.0], F32), 2), np.zeros(1, F32))
    # clipped to [0, 1.5]: scale fp16(0.5), x_hat = [0, 1, 1.5, 1.5] -> sqrt(0.25 + 2.25)
    same_bytes(R.range_loss(x, np.array([0.0], F32), np.array([1.5], F32), 2),
               np.array([np.sqrt(F32(2.5))], F32))


# ------------------------------------------------------------------------ input forms

@pytest.mark.parametrize("method", ("minmax", "greedy", "aciq-gauss"))
def test_input_dtypes_and_layouts(same_bytes, method):
    x = random_rows(4, 12, 10)
    expected = row_bytes(x, 4, method)
    x16 = x.astype(np.float16)
    same_bytes(row_bytes(x16, 4, method), row_bytes(x16.astype(F32), 4, method))
    x64 = x.astype(np.float64) + 1e-12                # rounds back to the same float32
    same_bytes(qe4.quantize(x64, 4, method).data, qe4.quantize(x64.astype(F32), 4, method).data)
    ro = x.copy()
    ro.flags.writeable = False
    same_bytes(qe4.quantize(ro, 4, method).data, expected)
    same_bytes(qe4.quantize(np.asfortranarray(x), 4, method).data, expected)
    same_bytes(qe4.quantize(x.astype(">f4"), 4, method).data, expected)
    same_bytes(qe4.quantize(x.tolist(), 4, method).data, expected)
    strided = np.zeros((12, 20), F32)
    strided[:, ::2] = x
    same_bytes(qe4.quantize(strided[:, ::2], 4, method).data, expected)
    assert ro.flags.writeable is False and (ro == x).all()


def test_float64_overflow_is_non_finite():
    with pytest.raises(ValueError, match=r"x\[0, 1\] = .*inf"):
        qe4.quantize(np.array([[0.0, 1e39]]), 4)


# ------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("bad, where", [(np.nan, r"x\[1, 2\] = .*nan"), (np.inf, r"x\[1, 2\] = .*inf"),
                                        (-np.inf, r"x\[1, 2\] = .*-.*inf")])
@pytest.mark.parametrize("method", ("minmax", "greedy"))
def test_non_finite_names_row_and_column(bad, where, method):
    x = np.zeros((3, 4), F32)
    x[1, 2] = bad
    x[2, 0] = bad
    with pytest.raises(ValueError, match="must be finite: " + where):
        qe4.quantize(x, 4, method)
    with pytest.raises(ValueError, match=where):
        qe4.row_ranges(x, 4, method)


@pytest.mark.parametrize("x, exc, match", [
    (np.zeros(4, F32), ValueError, r"x must be 2-D .*shape \(4,\)"),
    (np.zeros((2, 3, 4), F32), ValueError, r"x must be 2-D .*shape \(2, 3, 4\)"),
    (np.zeros((0, 4), F32), ValueError, r"at least one row and one column, got shape \(0, 4\)"),
    (np.zeros((3, 0), F32), ValueError, r"at least one row .* \(3, 0\)"),
    (np.zeros((2, 4), np.int32), TypeError, "x must have dtype float16, float32 or float64, got int32"),
    (np.zeros((2, 4), np.uint8), TypeError, "got uint8"),
    (np.zeros((2, 4), bool), TypeError, "got bool"),
    (np.zeros((2, 4), np.complex64), TypeError, "got complex64"),
    (np.zeros((2, 4), np.longdouble), TypeError, "got float128|got longdouble"),
    ([[1.0, 2.0], [3.0]], TypeError, "x must be a 2-D float array"),
    ("abc", TypeError, "x must have dtype"),
])
def test_bad_tables(x, exc, match):
    with pytest.raises(exc, match=match):
        qe4.quantize(x)
    with pytest.raises(exc, match=match):
        qe4.row_ranges(x)


@pytest.mark.parametrize("kw, exc, match", [
    ({"bits": 7}, ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 7"),
    ({"bits": 1}, ValueError, "bits must be one of"),
    ({"bits": 4.0}, TypeError, "bits must be an integer, got 4.0"),
    ({"bits": True}, TypeError, "bits must be an integer, got True"),
    ({"bits": "4"}, TypeError, "bits must be an integer"),
    ({"method": "kmeans++"}, ValueError, "method must be one of .*got 'kmeans\\+\\+'"),
    ({"method": 7}, TypeError, "method must be a string, got 7"),
    ({"n_bins": 0}, ValueError, r"n_bins must be in \[1, 1000000\], got 0"),
    ({"n_bins": 10 ** 7}, ValueError, "n_bins must be in"),
    ({"n_bins": 200.0}, TypeError, "n_bins must be an integer, got 200.0"),
    ({"n_bins": False}, TypeError, "n_bins must be an integer"),
    ({"ratio": 1.0}, ValueError, r"ratio must be in \[0, 1\), got 1.0"),
    ({"ratio": -0.1}, ValueError, "ratio must be in"),
    ({"ratio": float("nan")}, ValueError, "ratio must be in"),
    ({"ratio": "0.16"}, TypeError, "ratio must be a real number, got '0.16'"),
    ({"scale_dtype": "bfloat16"}, ValueError, "scale_dtype must be one of .*got 'bfloat16'"),
    ({"scale_dtype": np.float64}, ValueError, "scale_dtype must be one of"),
    ({"bits": 8, "scale_dtype": "float16"}, ValueError, "scale_dtype='float16' is not available at bits=8"),
])
def test_bad_parameters(kw, exc, match):
    x = random_rows(5, 3, 4)
    with pytest.raises(exc, match=match):
        qe4.quantize(x, **kw)
    with pytest.raises(exc, match=match):
        qe4.row_ranges(x, **kw)


def test_unexpected_keyword():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments for method 'greedy': \['k'\]"):
        qe4.quantize(random_rows(5, 3, 4), 4, "greedy", k=3)


def test_scale_dtype_spellings(same_bytes):
    x = random_rows(6, 5, 8)
    for sd in ("float32", np.float32, np.dtype("float32")):
        t = qe4.quantize(x, 4, "minmax", scale_dtype=sd)
        assert t.scale_dtype == "float32" and t.row_bytes == 4 + 8
    same_bytes(qe4.quantize(x, 4, scale_dtype=np.float16).data, qe4.quantize(x, 4).data)


# ------------------------------------------------------------------------ QuantizedTable

def test_table_fields(same_bytes):
    x = random_rows(7, 9, 7)
    t = qe4.quantize(x, 4, "greedy")
    assert (t.n_rows, t.dim, t.bits, t.shape, len(t)) == (9, 7, 4, (9, 7), 9)
    assert (t.code_bytes, t.row_bytes, t.nbytes) == (4, 8, 72)
    assert t.method == "greedy" and t.params == {"n_bins": 200, "ratio": 0.16}
    lo, hi = qe4.row_ranges(x, 4, "greedy")
    scale, bias, _ = R.scale_bias(lo, hi, 4, "float16")
    same_bytes(t.scales, scale)
    same_bytes(t.biases, bias)
    same_bytes(t.data[:, 4:6].copy().view("<f2").reshape(-1).astype(F32), scale)
    same_bytes(t.codes(), R.unpack_codes(t.data[:, :4], 4, 7))
    same_bytes(t.dequantize(), qe4.dequantize(t))
    assert "n_rows=9" in repr(t) and "bits=4" in repr(t)
    t8 = qe4.quantize(x, 8)
    assert (t8.row_bytes, t8.nbytes, t8.scale_dtype) == (7 + 8, 9 * 15, "float32")
    same_bytes(t8.scales, (x.max(axis=1) - x.min(axis=1)) / F32(255))


def test_table_equality_and_from_fused(same_bytes):
    x = random_rows(8, 6, 10)
    t = qe4.quantize(x, 4)
    back = qe4.QuantizedTable.from_fused(t.data, 4)
    assert back == t and back.method == "fused" and back.data is not t.data
    t9 = qe4.quantize(x[:, :9], 4)
    assert qe4.QuantizedTable.from_fused(t9.data, 4).dim == 10         # torch's inference
    assert qe4.QuantizedTable.from_fused(t9.data, 4, 9) == t9
    assert qe4.QuantizedTable.from_fused(qe4.quantize(x, 2).data, 2).dim == 12
    assert qe4.QuantizedTable.from_fused(qe4.quantize(x, 8).data, 8).dim == 10
    for dim in (8, 11):
        with pytest.raises(ValueError, match=f"dim={dim} does not fit rows of 9 bytes at 4 bits"):
            qe4.QuantizedTable.from_fused(t9.data, 4, dim)
    with pytest.raises(ValueError, match="too short"):
        qe4.QuantizedTable.from_fused(np.zeros((2, 4), np.uint8), 4)
    with pytest.raises(TypeError, match="data must have dtype uint8, got int64"):
        qe4.QuantizedTable.from_fused(np.zeros((2, 9), np.int64), 4)
    with pytest.raises(ValueError, match="data must be 2-D"):
        qe4.QuantizedTable.from_fused(np.zeros(9, np.uint8), 4)
    with pytest.raises(ValueError, match="needs 9"):
        qe4.QuantizedTable(np.zeros((2, 8), np.uint8), bits=4, dim=9)
    assert t != qe4.quantize(x, 4, "minmax") and t.__eq__(3) is NotImplemented


@pytest.mark.parametrize("bits, dim, sd", [(4, 7, "float16"), (4, 64, "float16"), (2, 5, "float16"),
                                           (8, 3, "float32"), (4, 6, "float32")])
@pytest.mark.parametrize("align", (1, 16))
def test_tbe_roundtrip(same_bytes, bits, dim, sd, align):
    t = qe4.quantize(random_rows(9, 5, dim), bits, "minmax", scale_dtype=sd)
    tbe = t.to_tbe(align)
    qp = 2 * np.dtype(sd).itemsize
    assert tbe.shape[1] % align == 0 and tbe.shape[1] - t.row_bytes < align
    same_bytes(tbe[:, :qp], t.data[:, t.code_bytes:])                  # scale, bias first
    same_bytes(tbe[:, qp:t.row_bytes], t.data[:, :t.code_bytes])
    assert not tbe[:, t.row_bytes:].any()
    back = qe4.QuantizedTable.from_tbe(tbe, bits, dim, scale_dtype=sd, row_alignment=align)
    assert back == t
    same_bytes(qe4.to_tbe(t, align), tbe)


def test_tbe_by_hand_and_bad_rows(same_bytes):
    t = qe4.QuantizedTable(u8(0x0A, 0xF8, 0x66, 0x32, 0x00, 0xBC), bits=4, dim=4)
    same_bytes(t.to_tbe(), u8(0x66, 0x32, 0x00, 0xBC, 0x0A, 0xF8))
    same_bytes(t.to_tbe(8), u8(0x66, 0x32, 0x00, 0xBC, 0x0A, 0xF8, 0, 0))
    tbe = t.to_tbe(16)
    tbe[0, 15] = 1
    with pytest.raises(ValueError, match="padding bytes of row 0 are not zero"):
        qe4.from_tbe(tbe, 4, 4, row_alignment=16)
    with pytest.raises(ValueError, match="need 16"):
        qe4.from_tbe(t.to_tbe(), 4, 4, row_alignment=16)
    with pytest.raises(ValueError, match="row_alignment must be >= 1, got 0"):
        t.to_tbe(0)
    with pytest.raises(TypeError, match="row_alignment must be an integer"):
        t.to_tbe(1.5)
    with pytest.raises(TypeError, match="table must be a QuantizedTable, got ndarray"):
        qe4.to_tbe(t.data)
    with pytest.raises(TypeError, match="table must be a QuantizedTable"):
        qe4.dequantize(t.data)


def test_methods_list():
    """qe4.methods() is the registry's list, in code order."""
    assert qe4.methods() == tuple(M.METHODS)
    assert [M.get(m).code for m in qe4.methods()] == sorted(M.get(m).code for m in qe4.methods())


def test_qe4_torch_import_error_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "qe4.torch", raising=False)
    with pytest.raises(ImportError, match=r'pip install "qe4\[torch\]"'):
        importlib.import_module("qe4.torch")


# ------------------------------------------------------------------------ properties

finite_tables = hnp.arrays(
    F32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
    elements=st.floats(-1000, 1000, width=32, allow_subnormal=True))


@settings(max_examples=150, deadline=None)
@given(x=finite_tables, bits=st.sampled_from([2, 4]))
def test_minmax_error_at_most_half_a_step(x, bits):
    """minmax: every element within scale / 2 of its reconstruction, plus what the
    fp16 roundings move: the bias (values below a rounded-up bias clip to code 0) and
    the scale (qmax * scale may fall short of the maximum), and fp32 arithmetic."""
    t = qe4.quantize(x, bits, "minmax")
    x64 = x.astype(np.float64)
    err = np.abs(t.dequantize().astype(np.float64) - x64)
    qmax = 2 ** bits - 1
    bias = t.biases.astype(np.float64)
    scale = t.scales.astype(np.float64)
    bias_err = np.abs(bias - x64.min(axis=1))
    scale_err = qmax * np.abs(scale - (x64.max(axis=1) - bias) / qmax)
    slack = 4 * np.spacing(np.abs(x).max(axis=1) + F32(1)).astype(np.float64)
    bound = scale / 2 + bias_err + scale_err + slack
    assert (err <= bound[:, None]).all()
    assert (t.codes() <= 2 ** bits - 1).all()


@settings(max_examples=150, deadline=None)
@given(codes=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=13),
                        elements=st.integers(0, 255)),
       bits=st.sampled_from(L.PACK_BITS))
def test_pack_unpack_roundtrip(same_bytes, codes, bits):
    codes = codes & np.uint8(2 ** bits - 1)
    packed = R.pack_codes(codes, bits)
    assert packed.shape == (codes.shape[0], -(-codes.shape[1] * bits // 8))
    same_bytes(R.unpack_codes(packed, bits, codes.shape[1]), codes)
    # unused high bits of the last byte are zero
    used = codes.shape[1] * bits % 8
    if used and codes.shape[0]:
        assert not (packed[:, -1] >> np.uint8(used)).any()


wide_tables = hnp.arrays(
    F32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
    elements=st.one_of(st.floats(-60000, 60000, width=32),
                       st.floats(-2.0 ** -116, 2.0 ** -116, width=32)))   # subnormal scales


@settings(max_examples=80, deadline=None)
@given(x=st.one_of(finite_tables, wide_tables), bits=st.sampled_from(ROWWISE_BITS),
       method=st.sampled_from(["greedy", "exhaustive", "aciq-laplace", "aciq-gauss"]),
       scale_dtype=st.sampled_from([None, "float32"]))
def test_every_method_roundtrips_its_bytes(same_bytes, x, bits, method, scale_dtype):
    t = qe4.quantize(x, bits, method, scale_dtype=scale_dtype)
    back = qe4.QuantizedTable.from_fused(t.data, bits, x.shape[1], scale_dtype=scale_dtype)
    same_bytes(back.dequantize(), t.dequantize())
    assert (t.codes() <= 2 ** bits - 1).all() and np.isfinite(t.dequantize()).all()
    lo, hi = qe4.row_ranges(x, bits, method, scale_dtype=scale_dtype)
    assert (x.min(axis=1) <= lo).all() and (lo <= hi).all() and (hi <= x.max(axis=1)).all()
