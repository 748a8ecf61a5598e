"""Compiled lookups of mixed-precision tables (:mod:`qe4.mixed`): the same bytes as the
reference for every input and thread count.

The orchestration is the reference's own (:func:`qe4.mixed.embedding_bag_mixed`,
:func:`qe4.mixed.dequantize_mixed`); this module hands it compiled kernels: the row
map lookup, bags of float rows, and qe4_fast's per-layout bags and dequantization for
the quantized tiers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from qe4.table import QuantizedTable
    from qe4._typing import Float32Array, Int64Array, IntArray

from qe4 import mixed as M

from . import _mixed
from ._threads import effective_n_threads


def locate(extras: Mapping[str, NDArray[Any]], rows: Int64Array,
           n_threads: int | None = None) -> tuple[Int64Array, Int64Array]:
    """(tier, rank) of each row; see :func:`qe4.mixed.locate`."""
    if "planes" not in extras:
        return M.locate(extras, rows)
    rows = np.ascontiguousarray(rows, np.int64)
    tier = np.empty(rows.size, np.int64)
    rank = np.empty(rows.size, np.int64)
    if _mixed.locate_rows(np.ascontiguousarray(extras["planes"]),
                          np.ascontiguousarray(extras["ranks"]), rows, tier, rank,
                          effective_n_threads(n_threads, rows.size, 8 * rows.size)):
        M.decode_map(extras["planes"], extras["ranks"], rows)     # raises the reference's error
        raise AssertionError("qe4_fast: the row map kernel flagged a row the reference accepts")
    return tier, rank


def float_bag(values: NDArray[Any], rows: IntArray, starts: IntArray, weights: Float32Array | None,
              n_threads: int | None = None) -> Float32Array:
    """Bags of float rows; see :func:`qe4.mixed.float_bag`."""
    vals = np.ascontiguousarray(values[rows], np.float32)
    out = np.empty((starts.size - 1, values.shape[1]), np.float32)
    _mixed.float_bags(vals, np.ascontiguousarray(starts, np.int64),
                      None if weights is None else np.ascontiguousarray(weights, np.float32),
                      out, effective_n_threads(n_threads, out.shape[0], vals.size))
    return out


def row_values_mixed(table: QuantizedTable, rows: IntArray, n_threads: int | None) -> Float32Array:
    """float32 values of ``rows``; see :func:`qe4.mixed.row_values_mixed`."""
    from .bag import embedding
    return M.row_values_mixed(table, rows, lambda sub, r: embedding(sub, r, n_threads=n_threads),
                              lambda e, r: locate(e, r, n_threads))


def pooled_mixed(table: QuantizedTable, idx: IntArray, starts: IntArray,
                 weights: Float32Array | None, mode: str, n_threads: int | None) -> Float32Array:
    """float32 bags of validated arguments (sum, mean or max); see :func:`qe4.embedding_bag`."""
    from qe4.bag import max_pool

    from .bag import embedding_bag
    if mode == "max":
        return max_pool(row_values_mixed(table, idx, n_threads), starts)

    def bag(sub, rows, sub_starts, w):
        return embedding_bag(sub, rows, sub_starts, include_last_offset=True, per_sample_weights=w,
                             n_threads=n_threads)

    return M.embedding_bag_mixed(
        table, idx, starts, weights, mode, bag,
        lambda v, r, s, w: float_bag(v, r, s, w, n_threads),
        lambda e, r: locate(e, r, n_threads))


def dequantize_mixed(table: QuantizedTable, n_threads: int | None) -> Float32Array:
    from .bag import dequantize
    return M.dequantize_mixed(table, lambda sub: dequantize(sub, n_threads=n_threads))
