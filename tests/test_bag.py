"""qe4.embedding_bag: semantics on a table whose quantization is exact, and every
malformed argument.  (Bytes against torch: test_golden.py and test_torch.py.)"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qe4
from conftest import ROWWISE_BITS

F32 = np.float32

# Each row spans exactly 15 (or 30) so scale = 1 (or 2) and every value is a code:
# the table dequantizes exactly and sums can be written down by hand.
X = np.array([[0, 15, 1, 2],        # bias 0, scale 1
              [1, 16, 3, 4],        # bias 1, scale 1
              [-2, 13, 0, -1],      # bias -2, scale 1
              [0, 30, 2, 4]], F32)  # bias 0, scale 2
TABLE = qe4.quantize(X, 4, "minmax")


def bag(*args, **kwargs):
    return qe4.embedding_bag(TABLE, *args, **kwargs)


def test_table_is_exact(same_bytes):
    same_bytes(TABLE.dequantize(), X)


def test_sum_by_hand(same_bytes):
    out = bag(np.array([0, 1, 2, 3, 3]), np.array([0, 3]))
    same_bytes(out, np.array([[-1, 44, 4, 5],         # rows 0 + 1 + 2
                              [0, 60, 4, 8]], F32))   # rows 3 + 3


def test_mean_multiplies_by_the_float32_reciprocal(same_bytes):
    out = bag(np.array([0, 1, 2, 3, 3]), np.array([0, 3]), mode="mean")
    third = F32(1) / F32(3)
    same_bytes(out, np.array([[-1 * third, 44 * third, 4 * third, 5 * third],
                              [0, 30, 2, 4]], F32))
    # acc * float32(1/3) is not acc / 3: 5 * 0.33333334 -> 1.6666667, 5 / 3 -> 1.6666666
    assert out[0, 3] != F32(5) / F32(3)


def test_weighted_sum_by_hand(same_bytes):
    # s = w * scale, t = w * bias: 0.5 * row 3 + (-2) * row 0 + 0.25 * row 1
    out = bag(np.array([3, 0, 1]), np.array([0]), per_sample_weights=np.array([0.5, -2, 0.25], F32))
    same_bytes(out, np.array([[0.25, -11.0, -0.25, -1.0]], F32))
    # zero weights add nothing, and a zero result is +0.0
    out = bag(np.array([0, 2]), np.array([0]), per_sample_weights=np.zeros(2, F32))
    same_bytes(out, np.zeros((1, 4), F32))


def test_empty_bags_are_zero(same_bytes):
    out = bag(np.array([1, 2]), np.array([0, 0, 1, 2, 2]))
    same_bytes(out, np.array([np.zeros(4), X[1], X[2], np.zeros(4), np.zeros(4)], F32))
    same_bytes(bag(np.array([1, 2]), np.array([0, 0, 1, 2, 2]), mode="mean"), out)
    same_bytes(bag(np.array([], np.int64), np.array([0, 0])), np.zeros((2, 4), F32))
    same_bytes(bag(np.array([], np.int64), np.array([], np.int64)), np.zeros((0, 4), F32))
    same_bytes(bag(np.zeros((3, 0), np.int64)), np.zeros((3, 4), F32))
    same_bytes(bag(np.zeros((0, 5), np.int64)), np.zeros((0, 4), F32))


@pytest.mark.parametrize("mode", ("sum", "mean"))
def test_equivalent_forms(same_bytes, mode):
    rng = np.random.default_rng(0)
    idx2 = rng.integers(0, 4, (6, 3))
    flat = idx2.reshape(-1)
    offsets = np.arange(6) * 3
    expected = bag(flat, offsets, mode=mode)
    same_bytes(bag(idx2, mode=mode), expected)
    same_bytes(bag(idx2.astype(np.int32), mode=mode), expected)
    same_bytes(bag(flat.astype(np.int32), offsets.astype(np.int32), mode=mode), expected)
    same_bytes(bag(flat, np.append(offsets, 18), include_last_offset=True, mode=mode), expected)
    same_bytes(bag(flat.tolist(), offsets.tolist(), mode=mode), expected)
    # uint8/uint32 arrays are accepted too (only uint64 is refused)
    same_bytes(bag(flat.astype(np.uint8), offsets.astype(np.uint32), mode=mode), expected)
    for b in range(6):
        same_bytes(bag(idx2[b], np.array([0]), mode=mode), expected[b:b + 1])
    if mode == "sum":
        w = rng.standard_normal(18).astype(F32)
        same_bytes(bag(idx2, per_sample_weights=w.reshape(6, 3)),
                   bag(flat, offsets, per_sample_weights=w))
        same_bytes(bag(flat, offsets, per_sample_weights=w.astype(np.float64)),
                   bag(flat, offsets, per_sample_weights=w))


def test_order_within_a_bag_is_sequential(same_bytes):
    # float32 sums are not associative; positions are added strictly in bag order:
    # (1.5e8 + -1.5e8) + 1 = 1, but (1 + 1.5e8) + -1.5e8 = 0 (1 is lost next to 1.5e8)
    big = qe4.quantize(np.array([[0, 1.5e8], [0, 1.0], [0, -1.5e8]], F32), 4, "minmax",
                       scale_dtype="float32")
    v = big.dequantize()[:, 1]
    first = qe4.embedding_bag(big, np.array([0, 2, 1]), np.array([0]))[:, 1]
    last = qe4.embedding_bag(big, np.array([1, 0, 2]), np.array([0]))[:, 1]
    same_bytes(first, np.array([(v[0] + v[2]) + v[1]], F32))
    same_bytes(last, np.array([(v[1] + v[0]) + v[2]], F32))
    assert first[0] == v[1] != 0 and last[0] == 0


def test_other_tables():
    t2 = qe4.quantize(X, 2, "greedy")
    out = qe4.embedding_bag(t2, np.array([0, 1]), np.array([0]))
    assert out.shape == (1, 4) and out.dtype == F32
    t8 = qe4.quantize(X[:, :3], 8)
    assert qe4.embedding_bag(t8, np.array([[0, 1]])).shape == (1, 3)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (([1, 2], [1]), {}, ValueError, r"offsets\[0\] must be 0, got 1"),
    (([1, 2, 3], [0, 2, 1]), {}, ValueError,
     r"offsets must be non-decreasing: offsets\[1\] = 2 > offsets\[2\] = 1"),
    (([1, 2], [0, 3]), {}, ValueError, r"offsets\[1\] = 3 is past the end of indices \(len 2\)"),
    (([1, 2], [0, 1]), {"include_last_offset": True}, ValueError,
     r"offsets\[-1\] must equal len\(indices\) = 2 with include_last_offset=True, got 1"),
    (([1, 2], [0, 3]), {"include_last_offset": True}, ValueError, "got 3"),
    (([1, 2], [0, 3, 2]), {"include_last_offset": True}, ValueError, "non-decreasing"),
    (([1, 2], []), {"include_last_offset": True}, ValueError, "offsets"),
    (([1, 2], []), {}, ValueError, "offsets"),
    (([1, 2], [[0]]), {}, ValueError, r"offsets must be 1-D, got shape \(1, 1\)"),
    (([1, 2], None), {}, ValueError, "offsets is required when indices is 1-D"),
    (([[1, 2]], [0]), {}, ValueError, "offsets must be None when indices is 2-D"),
    ((np.zeros((2, 2, 2), int), None), {}, ValueError, r"indices must be 1-D or 2-D, got shape \(2, 2, 2\)"),
    (([1, 4], [0]), {}, IndexError, r"indices\[1\] = 4 is out of range for a table of 4 rows"),
    (([0, 1, -1], [0]), {}, IndexError, r"indices\[2\] = -1 is out of range"),
    (([[0, 2], [9, 1]], None), {}, IndexError, r"indices\[2\] = 9"),
    (([1.0, 2.0], [0]), {}, TypeError, "indices must be an int32 or int64 array, got dtype float64"),
    ((np.array([1], np.uint64), [0]), {}, TypeError, "got dtype uint64"),
    (([True], [0]), {}, TypeError, "got dtype bool"),
    (([1, 2], [0.0]), {}, TypeError, "offsets must be an int32 or int64 array, got dtype float64"),
    (([1, 2], [0]), {"mode": "min"}, ValueError, r"mode must be one of \('sum', 'mean', 'max'\), got 'min'"),
    (([1, 2], [0]), {"mode": None}, ValueError, "mode must be one of"),
    (([1, 2], [0]), {"per_sample_weights": [1.0]}, ValueError,
     r"per_sample_weights must have the shape of indices \(2,\), got \(1,\)"),
    (([1, 2], [0]), {"per_sample_weights": [1, 2]}, TypeError,
     "per_sample_weights must be a float array, got dtype int64"),
    (([1, 2], [0]), {"per_sample_weights": [1.0, np.inf]}, ValueError,
     r"per_sample_weights must be finite: per_sample_weights\[1\] = .*inf"),
    (([1, 2], [0]), {"per_sample_weights": [1.0, np.nan]}, ValueError,
     r"per_sample_weights must be finite: per_sample_weights\[1\] = .*nan"),
    (([[1, 2], [3, 0]], None), {"per_sample_weights": [[1.0, 2.0], [-np.inf, 1.0]]}, ValueError,
     r"per_sample_weights\[2\] = .*-.*inf"),
    (([1, 2], [0]), {"per_sample_weights": [1.0, -1e39]}, ValueError,
     r"per_sample_weights\[1\] = .*-.*inf"),
    (([1, 2], [0]), {"per_sample_weights": [1.0, 2.0], "mode": "mean"}, ValueError,
     "per_sample_weights is only supported with mode='sum'"),
])
def test_malformed_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        bag(*args, **kwargs)


def test_table_must_be_a_quantized_table():
    with pytest.raises(TypeError, match="table must be a QuantizedTable, got ndarray"):
        qe4.embedding_bag(X, np.array([0]), np.array([0]))


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(F32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                    elements=st.floats(-60000, 60000, width=32)),
       bits=st.sampled_from(ROWWISE_BITS), data=st.data())
def test_one_row_bags_are_dequantized_rows(same_bytes, x, bits, data):
    """A bag of one row (weight 1 or none, sum or mean) is exactly that row dequantized."""
    t = qe4.quantize(x, bits, "minmax")
    rows = np.array(data.draw(st.lists(st.integers(0, x.shape[0] - 1), max_size=12)), np.int64)
    expected = t.dequantize()[rows]
    offsets = np.arange(rows.size)
    same_bytes(qe4.embedding_bag(t, rows, offsets), expected)
    same_bytes(qe4.embedding_bag(t, rows, offsets, mode="mean"), expected)
    same_bytes(qe4.embedding_bag(t, rows, offsets, per_sample_weights=np.ones(rows.size, F32)),
               expected)
