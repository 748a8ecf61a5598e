"""Compiled steps of :mod:`qe4.allocate`: per-row squared errors and per-row hulls.

Same values as the reference functions (:func:`qe4.allocate.squared_errors`,
:func:`qe4._lagrange.hull`) for every input and thread count; the numerics are
documented there.  :func:`qe4.allocate.allocate` with ``engine="fast"`` (the
default) uses these.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _allocate
from ._threads import effective_n_threads, shares_cores


@shares_cores
def squared_errors(x: ArrayLike, x_hat: ArrayLike, *,
                   n_threads: int | None = None) -> NDArray[np.float64]:
    """Per-row ``sum_j (x - x_hat)**2`` in float64, column order; see
    :func:`qe4.allocate.squared_errors`."""
    x = np.ascontiguousarray(x, np.float32)
    x_hat = np.ascontiguousarray(x_hat, np.float32)
    if x_hat.shape != x.shape or x.ndim != 2:
        raise ValueError(f"x_hat must have the shape of the 2-D x {x.shape}, got {x_hat.shape}")
    out = np.empty(x.shape[0], np.float64)
    _allocate.squared_errors(x, x_hat, out, effective_n_threads(n_threads, x.shape[0], x.size))
    return out


@shares_cores
def hull(dist: NDArray[np.float64], cost: NDArray[np.int64], *,
         n_threads: int | None = None
         ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.int64], NDArray[np.float64]]:
    """Each item's lower-hull segments; see :func:`qe4._lagrange.hull` (same values)."""
    dist = np.ascontiguousarray(dist, np.float64)
    cost = np.ascontiguousarray(cost, np.int64)
    n, k = dist.shape
    start = np.empty(n, np.intp)
    to = np.empty((n, k - 1), np.intp)
    dcost = np.empty((n, k - 1), np.int64)
    slope = np.empty((n, k - 1), np.float64)
    _allocate.hull_rows(dist, cost, start, to, dcost, slope,
                        effective_n_threads(n_threads, n, n * k * k))
    return start, to, dcost, slope
