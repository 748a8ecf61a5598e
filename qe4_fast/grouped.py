"""The grouped layout, compiled: the twin of :mod:`qe4.grouped` (same bytes, plus ``n_threads``).

Quantizing runs step 1 of the search (each group's float32 least-squares range) with the
compiled ``"mse"`` kernel (:func:`qe4_fast.mse.mse_params`, byte-identical to
:func:`qe4.mse.mse_params`) and steps 2 to 5 plus the row bytes in
``qe4_fast/_grouped_kernels.h``; scale-only groups (``mins="none"``) run their whole search,
step 1 included (:func:`qe4.grouped.scale_params`), in that header, row by row.  Lookups read the packed rows directly.  A table's level
table (``params["levels"]``, :func:`qe4.layouts.level_table`; None for uniform levels) is
passed to every kernel, the search's and the lookups'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qe4.frontend import Request
    from qe4.table import QuantizedTable
    from qe4._typing import Encoded, Float32Array, IntArray

from qe4 import grouped as G
from qe4 import layouts as L

from . import _grouped, _simd
from . import mse as MSE
from ._threads import GRAIN_SEARCH, effective_n_threads

F32 = np.float32


def _geometry(table):
    """The kernels' arguments of a table: data, dim, bits, group, sub_bits, mins, level table."""
    group, sub_bits = L.grouping(table.params)
    return (np.ascontiguousarray(table.data), table.dim, table.bits, group, sub_bits,
            L.mins_of(table.params), L.level_table(table.params, table.bits))


def group_ranges(x: Float32Array, bits: int, group: int, levels: Float32Array | None = None,
                 n_threads: int | None = None) -> tuple[Float32Array, Float32Array]:
    """Step 1 of the search (:func:`qe4.grouped.group_ranges`) with the compiled mse kernel;
    the finishing kernel zeroes the scales of constant groups."""
    scales, mins = [], []
    for seg in G.group_segments(x, group):
        scale, low, _ = MSE.mse_params(seg, bits, "float32", levels=levels, n_threads=n_threads)
        scales.append(scale)
        mins.append(low)
    return G.per_row(scales, x.shape[0]), G.per_row(mins, x.shape[0])


def encode(request: Request, x: Float32Array, n_threads: int | None = None) -> Encoded:
    """The grouped family's compiled encoder: ``(data, extras)``, byte-identical to
    :func:`qe4.grouped.encode`."""
    G.check_values(request, x)
    x = np.ascontiguousarray(x, F32)
    group, sub_bits = request.options["group"], request.options["sub_bits"]
    levels = L.level_table(request.options, request.bits)
    out = np.empty((x.shape[0], request.row_bytes(x.shape[1])), np.uint8)
    n = effective_n_threads(n_threads, x.shape[0], x.size, GRAIN_SEARCH)
    if L.mins_of(request.options) == "none":
        _grouped.scale_rows(x, request.bits, group, sub_bits, levels, out, n, _simd.LEVEL)
        return out, {}
    scale, low = group_ranges(x, request.bits, group, levels, n_threads)
    _grouped.finish_rows(x, scale, low, request.bits, group, sub_bits, levels, out, n,
                         _simd.LEVEL)
    return out, {}


def row_values(table: QuantizedTable, idx: IntArray | None = None,
               n_threads: int | None = None) -> Float32Array:
    """float32 [len(idx), dim]: the dequantized rows ``idx`` (validated; None: every row)."""
    n_out = table.n_rows if idx is None else len(idx)
    out = np.empty((n_out, table.dim), F32)
    idx = None if idx is None else np.ascontiguousarray(idx, np.int64)
    _grouped.row_values(*_geometry(table), idx, out,
                        effective_n_threads(n_threads, n_out, out.size), _simd.LEVEL)
    return out


def bag(table: QuantizedTable, idx: IntArray, starts: IntArray, w: Float32Array | None,
        mean: bool, n_threads: int | None = None) -> Float32Array:
    """float32 [n_bags, dim] sums or means of validated bags (:func:`qe4.embedding_bag`)."""
    n_bags = starts.size - 1
    out = np.empty((n_bags, table.dim), F32)
    _grouped.bag(*_geometry(table), np.ascontiguousarray(idx, np.int64),
                 np.ascontiguousarray(starts, np.int64), w, mean, out,
                 effective_n_threads(n_threads, n_bags, idx.size * table.dim), _simd.LEVEL)
    return out
