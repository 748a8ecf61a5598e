"""qe4.row_errors, qe4.table_error and qe4.zipf_weights on hand-computed examples."""

import numpy as np
import pytest

import qe4

F32 = np.float32
X = np.array([[3, 4], [1, 0], [0, 0]], F32)
X_HAT = np.array([[3, 3], [0, 0], [0, 0]], F32)


def test_row_errors_by_hand(same_bytes):
    # ||x - x_hat||^2 / ||x||^2: 1/25, 1/1, and 0 for a zero row reconstructed exactly
    same_bytes(qe4.row_errors(X, X_HAT), np.array([1 / 25, 1.0, 0.0]))
    # a zero row reconstructed inexactly has infinite relative error
    x_hat = X_HAT.copy()
    x_hat[2, 1] = 0.5
    same_bytes(qe4.row_errors(X, x_hat), np.array([1 / 25, 1.0, np.inf]))
    same_bytes(qe4.row_errors(X, X), np.zeros(3))


def test_table_error_by_hand():
    # (1 + 1 + 0) / (25 + 1 + 0)
    assert qe4.table_error(X, X_HAT) == 2 / 26
    # weights 1, 2, 3: (1 * 1 + 2 * 1 + 3 * 0) / (1 * 25 + 2 * 1 + 3 * 0)
    assert qe4.table_error(X, X_HAT, weights=np.array([1.0, 2.0, 3.0])) == 3 / 27
    assert qe4.table_error(X, X_HAT, weights=[0, 1, 1]) == 1.0
    assert qe4.table_error(X, X) == 0.0


def test_metrics_take_a_quantized_table(same_bytes):
    x = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 15.0, 2.5, 3.5]], F32)
    t = qe4.quantize(x, 4, "minmax")
    # the rows of test_reference: x_hat = [0.99951171875, -1, 0.599609375, 1.999267578125]
    # and [0, 15, 2, 4]
    num0 = (1 - 0.99951171875) ** 2 + 0 + (0.5 - 0.599609375) ** 2 + (2 - 1.999267578125) ** 2
    num1 = 0.5 ** 2 + 0.5 ** 2
    same_bytes(qe4.row_errors(x, t), np.array([num0 / 6.25, num1 / (225 + 6.25 + 12.25)]))
    assert qe4.table_error(x, t) == (num0 + num1) / (6.25 + 243.5)
    same_bytes(qe4.row_errors(x, t), qe4.row_errors(x, t.dequantize()))


def test_zipf_weights(same_bytes):
    same_bytes(qe4.zipf_weights(4), np.array([1.0, 1 / 2, 1 / 3, 1 / 4]))
    same_bytes(qe4.zipf_weights(3, exponent=2.0), np.array([1.0, 1 / 4, 1 / 9]))
    same_bytes(qe4.zipf_weights(3, exponent=0.0), np.ones(3))
    assert qe4.zipf_weights(0).shape == (0,)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: qe4.row_errors(X, X_HAT[:2]), ValueError,
     r"x_hat must have the shape of x \(3, 2\), got \(2, 2\)"),
    (lambda: qe4.table_error(X, X_HAT, weights=[1.0, 2.0]), ValueError,
     r"weights must have shape \(3,\), got \(2,\)"),
    (lambda: qe4.table_error(X, X_HAT, weights=[1.0, -1.0, 1.0]), ValueError,
     "weights must be finite and non-negative"),
    (lambda: qe4.table_error(X, X_HAT, weights=[1.0, np.nan, 1.0]), ValueError,
     "weights must be finite and non-negative"),
    (lambda: qe4.table_error(np.zeros((2, 2), F32), np.ones((2, 2), F32)), ValueError,
     "x has zero .*norm"),
    (lambda: qe4.table_error(X, X_HAT, weights=[0.0, 0.0, 1.0]), ValueError, "zero .*norm"),
    (lambda: qe4.row_errors(np.array([[np.nan, 1.0]], F32), X_HAT[:1]), ValueError,
     r"x must be finite: x\[0, 0\]"),
    (lambda: qe4.row_errors(X.astype(np.int64), X_HAT), TypeError, "x must have dtype"),
])
def test_metric_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
