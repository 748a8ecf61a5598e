"""Compiled lookups: gathers, embedding bags (one table or several), dequantization and
the TBE row layout.

Same names, signatures and errors as :mod:`qe4` (validation goes through the same
``qe4._validate`` helpers), plus ``n_threads``; the results are byte-identical to
the reference for every input and thread count.  The numerics are documented in
:func:`qe4.embedding_bag` and :func:`qe4.dequantize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from qe4._typing import Float32Array, UInt8Array

from qe4 import _validate as V
from qe4.bag import MODES, check_lookup_table, max_pool, round_output
from qe4.table import QuantizedTable

from . import _bag, _lookup, _simd
from ._threads import effective_n_threads, shares_cores

F32 = np.float32


def _codebook():
    from . import codebook
    return codebook


def _grouped():
    from . import grouped
    return grouped


def _rows(table):
    """(data, bits, dim, is_float16) of a rowwise table, data C-contiguous."""
    return np.ascontiguousarray(table.data), table.bits, table.dim, table.scale_dtype == "float16"


@shares_cores
def dequantize(table: QuantizedTable, *, n_threads: int | None = None) -> Float32Array:
    """Reconstruct float32 rows [n_rows, dim]; see :func:`qe4.dequantize`.

    Parameters
    ----------
    table : QuantizedTable
    n_threads : int, optional
        None uses every usable core; rows are split between threads.
    """
    V.check_table(table)
    if table.layout == "mixed":
        from .mixed import dequantize_mixed
        return dequantize_mixed(table, n_threads)
    if table.layout == "grouped":
        return _grouped().row_values(table, None, n_threads)
    if table.layout != "rowwise":
        return _codebook().dequantize_codebook(table, n_threads=n_threads)
    n = effective_n_threads(n_threads, table.n_rows, table.n_rows * table.dim)
    out = np.empty((table.n_rows, table.dim), F32)
    _bag.dequantize_rowwise(*_rows(table), out, n, _simd.LEVEL)
    return out


@shares_cores
def embedding(table: QuantizedTable, indices: ArrayLike, *, out_dtype: str = "float32",
              n_threads: int | None = None) -> NDArray[Any]:
    """Rows of the table for any index shape; see :func:`qe4.embedding`.

    Parameters
    ----------
    table, indices, out_dtype
        As for :func:`qe4.embedding`.
    n_threads : int, optional
        None uses every usable core; positions are split between threads.

    Returns
    -------
    ndarray [``*indices.shape``, dim] of ``out_dtype``
    """
    check_lookup_table(table)
    out_dtype = V.check_out_dtype(out_dtype)
    idx, shape = V.check_gather_indices(indices, table.n_rows)
    if table.layout == "mixed":
        from .mixed import row_values_mixed
        return round_output(row_values_mixed(table, idx, n_threads),
                            out_dtype).reshape(shape + (table.dim,))
    if table.layout == "grouped":
        return round_output(_grouped().row_values(table, idx, n_threads),
                            out_dtype).reshape(shape + (table.dim,))
    out = np.empty((idx.size, table.dim), _BUFFER[out_dtype])
    n_bad = _lookup.gather(_spec(table), idx, _lookup.KINDS[out_dtype], out.view(np.uint8),
                           effective_n_threads(n_threads, idx.size, out.size), _simd.LEVEL)
    if n_bad:
        _raise_bad_groups([table], idx)
    return _result(out, out_dtype).reshape(shape + (table.dim,))


@shares_cores
def embedding_bag(table: QuantizedTable, indices: ArrayLike, offsets: ArrayLike | None = None, *,
                  mode: str = "sum", per_sample_weights: ArrayLike | None = None,
                  include_last_offset: bool = False, out_dtype: str = "float32",
                  n_threads: int | None = None) -> NDArray[Any]:
    """Sum, mean or max of table rows per bag; see :func:`qe4.embedding_bag`.

    Parameters
    ----------
    table, indices, offsets, mode, per_sample_weights, include_last_offset, out_dtype
        As for :func:`qe4.embedding_bag`.
    n_threads : int, optional
        None uses every usable core; bags are split between threads.

    Returns
    -------
    ndarray [n_bags, dim] of ``out_dtype``
    """
    check_lookup_table(table)
    out_dtype = V.check_out_dtype(out_dtype)
    idx, starts, w = V.check_bag_args(indices, offsets, table.n_rows, per_sample_weights,
                                      include_last_offset, mode, MODES)
    n_bags = starts.size - 1
    if table.layout == "mixed":
        from .mixed import pooled_mixed
        return round_output(pooled_mixed(table, idx, starts, w, mode, n_threads), out_dtype)
    if table.layout == "grouped":
        return round_output(_grouped_pooled(table, idx, starts, w, mode, n_threads), out_dtype)
    if out_dtype != "float32" or mode == "max":
        return _bags([table], idx, starts, w, n_bags, mode, out_dtype, n_threads)
    if table.layout != "rowwise":
        return _codebook().embedding_bag_codebook(table, idx, starts, w, mode, n_threads)
    n = effective_n_threads(n_threads, n_bags, idx.size * table.dim)
    out = np.empty((n_bags, table.dim), F32)
    _bag.embedding_bag_rowwise(*_rows(table), idx, starts, w, mode == "mean", out, n,
                               _simd.LEVEL)
    return out


@shares_cores
def embedding_bags(tables: Sequence[QuantizedTable], indices: ArrayLike, offsets: ArrayLike, *,
                   mode: str = "sum", per_sample_weights: ArrayLike | None = None,
                   include_last_offset: bool = False, out_dtype: str = "float32",
                   n_threads: int | None = None) -> NDArray[Any]:
    """Bags over several tables in one call (TBE's convention); see :func:`qe4.embedding_bags`.

    Parameters
    ----------
    tables, indices, offsets, mode, per_sample_weights, include_last_offset, out_dtype
        As for :func:`qe4.embedding_bags`.
    n_threads : int, optional
        None uses every usable core; the bags of all tables are split between threads in
        one parallel region.

    Returns
    -------
    ndarray [n_bags, sum of the tables' dims] of ``out_dtype``
    """
    out_dtype = V.check_out_dtype(out_dtype)
    tables, idx, starts, w, n_bags = V.check_table_bags(
        tables, indices, offsets, per_sample_weights, include_last_offset, mode)
    for table in tables:
        check_lookup_table(table)
    return _bags(tables, idx, starts, w, n_bags, mode, out_dtype, n_threads)


# the array each out_dtype is computed into (bfloat16: its bits, viewed at the end)
_BUFFER = {"float32": F32, "float16": np.float16, "bfloat16": np.uint16}
_NO_BOOKS = np.zeros((1, 1), F32)


def _result(out, out_dtype):
    return out.view(V.bfloat16_dtype()) if out_dtype == "bfloat16" else out


def _spec(table):
    """The kernel's description of a table of any layout (see qe4_fast/_lookup.pyx)."""
    if table.layout not in _lookup.LAYOUTS:
        raise ValueError(f"qe4_fast has no lookup kernel for layout {table.layout!r} (layouts "
                         f"with one: {tuple(_lookup.LAYOUTS)}); use the qe4 reference")
    if table.layout == "rowwise":
        data, bits, dim, f16 = _rows(table)
        return (data, 0, bits, dim, int(f16), 0, _NO_BOOKS)
    data, dim, bits, layout, f16, id_bytes, books = _codebook()._table_args(table)
    return (data, _lookup.LAYOUTS[table.layout], bits, dim, f16, id_bytes, books)


def _bags(tables, idx, starts, w, n_bags, mode, out_dtype, n_threads):
    """Bags of validated arguments over ``tables`` into one [n_bags, sum of dims] result."""
    if any(t.layout in ("mixed", "grouped") for t in tables):
        return _bags_with_mixed(tables, idx, starts, w, n_bags, mode, out_dtype, n_threads)
    dims = [t.dim for t in tables]
    out = np.empty((n_bags, sum(dims)), _BUFFER[out_dtype])
    specs = [_spec(t) for t in tables]
    if any(t.layout != "rowwise" for t in tables):
        # the codebook kernels trust the indices (validated): a private copy, so that
        # another Python thread cannot rewrite them while the kernel runs
        idx = np.array(idx, np.int64, order="C")
    col_bytes = np.concatenate([[0], np.cumsum(dims[:-1])]).astype(np.int64) * out.itemsize
    n = effective_n_threads(n_threads, n_bags * len(tables), idx.size * max(dims))
    n_bad = _lookup.bags(specs, idx, starts, w, n_bags, _lookup.MODES[mode],
                         _lookup.KINDS[out_dtype], out.view(np.uint8), col_bytes, max(dims), n,
                         _simd.LEVEL)
    if n_bad:
        _raise_bad_groups(tables, idx)
    return _result(out, out_dtype)


def _grouped_pooled(table, idx, starts, w, mode, n_threads):
    """float32 bags of a grouped table: the compiled sum/mean, or max over its
    dequantized rows (:func:`qe4.bag.max_pool`, the reference's rule)."""
    if mode == "max":
        return max_pool(_grouped().row_values(table, idx, n_threads), starts)
    return _grouped().bag(table, idx, starts, w, mode == "mean", n_threads)


def _bags_with_mixed(tables, idx, starts, w, n_bags, mode, out_dtype, n_threads):
    """Several tables, some mixed or grouped: table by table (the tables are independent
    lookups), float32, then rounded once."""
    from .mixed import pooled_mixed
    own = {"mixed": pooled_mixed, "grouped": _grouped_pooled}
    parts = []
    for t, table in enumerate(tables):
        s = starts[t * n_bags:(t + 1) * n_bags + 1]
        p0, p1 = int(s[0]), int(s[-1])
        i, b, wt = idx[p0:p1], s - p0, None if w is None else w[p0:p1]
        parts.append(own[table.layout](table, i, b, wt, mode, n_threads) if table.layout in own
                     else _bags([table], i, b, wt, n_bags, mode, "float32", n_threads))
    return round_output(np.concatenate(parts, axis=1), out_dtype)


def _raise_bad_groups(tables, idx):
    """A kernel met a two-tier group id out of range: the reference's check raises."""
    C = _codebook().C
    for table in tables:
        if table.layout == "two-tier":
            C.group_of(table, slice(None))
    raise AssertionError("qe4_fast: a kernel flagged a group id that qe4.codebook accepts")


@shares_cores
def to_tbe(table: QuantizedTable, row_alignment: int = 1, *,
           n_threads: int | None = None) -> UInt8Array:
    """Rows in fbgemm_gpu's TBE inference layout; see :func:`qe4.to_tbe`."""
    V.check_table(table)
    V.check_tbe_table(table)
    row_alignment = V.check_positive_int(row_alignment, "row_alignment")
    width = -(-table.row_bytes // row_alignment) * row_alignment
    out = np.empty((table.n_rows, width), np.uint8)
    _bag.move_qparams(np.ascontiguousarray(table.data), out, table.code_bytes, table.row_bytes,
                      effective_n_threads(n_threads, table.n_rows, out.size))
    return out


@shares_cores
def from_tbe(data: ArrayLike, bits: int, dim: int | None = None, *, scale_dtype: str = "float16",
             row_alignment: int = 1, n_threads: int | None = None) -> QuantizedTable:
    """A :class:`qe4.QuantizedTable` from TBE rows; see :func:`qe4.from_tbe`."""
    data, bits, dim, scale_dtype, qp, row_bytes = V.check_tbe_rows(data, bits, dim, scale_dtype,
                                                                    row_alignment)
    fused = np.empty((data.shape[0], row_bytes), np.uint8)
    _bag.move_qparams(np.ascontiguousarray(data), fused, qp, row_bytes,
                      effective_n_threads(n_threads, data.shape[0], fused.size))
    return QuantizedTable(fused, bits=bits, dim=dim, method="fused", scale_dtype=scale_dtype)
