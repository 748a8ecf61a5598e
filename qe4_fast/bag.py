"""Compiled lookups: embedding bags, dequantization and the TBE row layout.

Same names, signatures and errors as :mod:`qe4` (validation goes through the same
``qe4._validate`` helpers), plus ``n_threads``; the results are byte-identical to
the reference for every input and thread count.  The numerics are documented in
:func:`qe4.embedding_bag` and :func:`qe4.dequantize`.
"""

import numpy as np

from qe4 import _validate as V
from qe4.table import QuantizedTable

from . import _bag
from ._threads import effective_n_threads, shares_cores

F32 = np.float32

# The widest row kernels the CPU runs (2 AVX-512, 1 AVX2+FMA, 0 portable C; identical
# bytes, see _bag_kernels.h); tests lower it to check every kernel.
_SIMD = _bag.simd_level()


def _codebook():
    from . import codebook
    return codebook


def _rows(table):
    """(data, bits, dim, is_float16) of a rowwise table, data C-contiguous."""
    return np.ascontiguousarray(table.data), table.bits, table.dim, table.scale_dtype == "float16"


@shares_cores
def dequantize(table, *, n_threads=None):
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
    if table.layout != "rowwise":
        return _codebook().dequantize_codebook(table, n_threads=n_threads)
    n = effective_n_threads(n_threads, table.n_rows)
    out = np.empty((table.n_rows, table.dim), F32)
    _bag.dequantize_rowwise(*_rows(table), out, n, _SIMD)
    return out


@shares_cores
def embedding_bag(table, indices, offsets=None, *, mode="sum", per_sample_weights=None,
                  include_last_offset=False, n_threads=None):
    """Sum or mean of table rows per bag; see :func:`qe4.embedding_bag`.

    Parameters
    ----------
    table, indices, offsets, mode, per_sample_weights, include_last_offset
        As for :func:`qe4.embedding_bag`.
    n_threads : int, optional
        None uses every usable core; bags are split between threads.

    Returns
    -------
    float32 ndarray [n_bags, dim]
    """
    V.check_table(table)
    idx, starts, w = V.check_bag_args(indices, offsets, table.n_rows, per_sample_weights,
                                      include_last_offset, mode)
    n_bags = starts.size - 1
    if table.layout == "mixed":
        from .mixed import embedding_bag_mixed
        return embedding_bag_mixed(table, idx, starts, w, mode, n_threads)
    if table.layout != "rowwise":
        return _codebook().embedding_bag_codebook(table, idx, starts, w, mode, n_threads)
    n = effective_n_threads(n_threads, n_bags)
    out = np.empty((n_bags, table.dim), F32)
    _bag.embedding_bag_rowwise(*_rows(table), idx, starts, w, mode == "mean", out, n, _SIMD)
    return out


@shares_cores
def to_tbe(table, row_alignment=1, *, n_threads=None):
    """Rows in fbgemm_gpu's TBE inference layout; see :func:`qe4.to_tbe`."""
    V.check_table(table)
    table._require_rowwise("the TBE layout")
    row_alignment = V.check_positive_int(row_alignment, "row_alignment")
    width = -(-table.row_bytes // row_alignment) * row_alignment
    out = np.empty((table.n_rows, width), np.uint8)
    _bag.move_qparams(np.ascontiguousarray(table.data), out, table.code_bytes, table.row_bytes,
                      effective_n_threads(n_threads, table.n_rows))
    return out


@shares_cores
def from_tbe(data, bits, dim=None, *, scale_dtype="float16", row_alignment=1, n_threads=None):
    """A :class:`qe4.QuantizedTable` from TBE rows; see :func:`qe4.from_tbe`."""
    data, bits, dim, scale_dtype, qp, row_bytes = V.check_tbe_rows(data, bits, dim, scale_dtype,
                                                                    row_alignment)
    fused = np.empty((data.shape[0], row_bytes), np.uint8)
    _bag.move_qparams(np.ascontiguousarray(data), fused, qp, row_bytes,
                      effective_n_threads(n_threads, data.shape[0]))
    return QuantizedTable(fused, bits=bits, dim=dim, method="fused", scale_dtype=scale_dtype)
