"""Error metrics: normalized squared reconstruction error, per row and per table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .table import QuantizedTable

from . import _validate as V


def _pair(x, x_hat):
    x = V.as_table(x, "x")
    if hasattr(x_hat, "dequantize"):
        x_hat = x_hat.dequantize()
    x_hat = np.asarray(x_hat, dtype=np.float32)
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat must have the shape of x {x.shape}, got {x_hat.shape}")
    return x.astype(np.float64), x_hat.astype(np.float64)


def row_errors(x: ArrayLike, x_hat: ArrayLike | QuantizedTable) -> NDArray[np.float64]:
    """Per-row normalized squared error ``||x_r - x_hat_r||^2 / ||x_r||^2`` (float64 [n_rows]).

    ``x_hat`` is an array or a :class:`qe4.QuantizedTable` (dequantized first).
    A zero row has error 0 if reconstructed exactly and inf otherwise.
    """
    x, x_hat = _pair(x, x_hat)
    num = ((x - x_hat) ** 2).sum(axis=1)
    den = (x ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num == 0, 0.0, num / den)


def table_error(x: ArrayLike, x_hat: ArrayLike | QuantizedTable,
                weights: ArrayLike | None = None) -> float:
    """Whole-table normalized squared error ``sum_r w_r ||x_r - x_hat_r||^2 / sum_r w_r ||x_r||^2``.

    ``weights`` (e.g. row frequencies) default to 1; they must be finite and >= 0.
    Sums are taken in float64.
    """
    x, x_hat = _pair(x, x_hat)
    if weights is None:
        w = np.ones(x.shape[0])
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (x.shape[0],):
            raise ValueError(f"weights must have shape ({x.shape[0]},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
    den = float(w @ (x ** 2).sum(axis=1))
    if den == 0:
        raise ValueError("x has zero (weighted) norm: the normalized error is undefined")
    return float(w @ ((x - x_hat) ** 2).sum(axis=1)) / den


def zipf_weights(n_rows: int, exponent: float = 1.0) -> NDArray[np.float64]:
    """Zipf frequency weights ``1 / (rank + 1) ** exponent`` for rows in frequency order."""
    return 1.0 / np.arange(1, n_rows + 1, dtype=np.float64) ** exponent
