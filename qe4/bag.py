"""Lookups read straight from packed rows: gathers, pooled bags, several tables at once.

Every lookup computes its float32 result first and then, for ``out_dtype`` float16 or
bfloat16, rounds it once (:func:`round_output`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from collections.abc import Sequence
    from .table import QuantizedTable
    from ._typing import Float32Array

from . import _validate as V
from .rowwise import fma32, unpack_codes

F32 = np.float32
MODES = V.LOOKUP_MODES
OUT_DTYPES = V.OUT_DTYPES


def embedding(table: QuantizedTable, indices: ArrayLike, *,
              out_dtype: str = "float32") -> NDArray[Any]:
    """Rows of the table, unpooled: ``dequantize(table)[indices]``, for any index shape.

    What LLM token tables and ``torch.nn.functional.embedding`` do, computed from the
    gathered rows only.

    Parameters
    ----------
    table : QuantizedTable
    indices : int32/int64 array of any shape (0-d included), every entry in ``[0, n_rows)``.
    out_dtype : {"float32", "float16", "bfloat16"}
        See :func:`round_output`.

    Returns
    -------
    ndarray [``*indices.shape``, dim] of ``out_dtype``

    Raises
    ------
    TypeError, ValueError, IndexError
        Not a table, non-integer indices, a bad ``out_dtype``, an index out of range
        (the message gives its position, as a multi-index for N-d indices).

    Notes
    -----
    Row ``r`` is exactly row ``r`` of :func:`qe4.dequantize`: ``fma(scale, q, bias)``
    for rowwise tables, the centroid values for codebook layouts.
    """
    check_lookup_table(table)
    out_dtype = V.check_out_dtype(out_dtype)
    idx, shape = V.check_gather_indices(indices, table.n_rows)
    return round_output(row_values(table, idx), out_dtype).reshape(shape + (table.dim,))


def embedding_bag(table: QuantizedTable, indices: ArrayLike, offsets: ArrayLike | None = None, *,
                  mode: str = "sum", per_sample_weights: ArrayLike | None = None,
                  include_last_offset: bool = False, out_dtype: str = "float32") -> NDArray[Any]:
    """Sum, mean or max of table rows per bag, computed from the packed rows.

    Parameters
    ----------
    table : QuantizedTable
    indices : int32/int64 array, 1-D [n_indices] with ``offsets``, or 2-D
        [n_bags, bag_size] for fixed-length bags (then ``offsets`` is None).
    offsets : int32/int64 array [n_bags] (bag m starts at offsets[m] and ends at the
        next offset, the last at ``len(indices)``), or [n_bags + 1] with
        ``include_last_offset=True``.  Must start at 0 and never decrease.
    mode : {"sum", "mean", "max"}
        ``"mean"`` divides by the bag's length, ``"max"`` takes each column's maximum
        (both leave an empty bag zero, as torch does).
    per_sample_weights : float array shaped like ``indices``, optional (``"sum"`` only).
    out_dtype : {"float32", "float16", "bfloat16"}
        See :func:`round_output`.

    Returns
    -------
    ndarray [n_bags, dim] of ``out_dtype``

    Raises
    ------
    TypeError, ValueError, IndexError
        Wrong dtypes; malformed offsets or weights; an index outside ``[0, n_rows)``.

    Notes
    -----
    Sum and mean: for each bag, in order of its positions p (torch/FBGEMM
    ``EmbeddingSpMDMNBit``)::

        acc[:] = 0
        for p in bag:  r = indices[p];  w = weights[p] or 1
            s = w * scale[r];  t = w * bias[r]          # float32 roundings
            acc = fma(s, q[r], acc + t)                 # t added first, then one rounding
        mean: acc *= float32(1 / len(bag))

    Codebook tables use the same loop with ``s = w``, ``q[r]`` the row's centroid
    values and ``t = 0`` (see :mod:`qe4.codebook`).  Bags are processed together:
    step k adds the k-th position of every bag that has one.

    Mixed-precision tables (:mod:`qe4.mixed`): sum and mean add one such bag per tier in
    tier order; max reads every row's values (pruned rows as zeros).

    Max: ``v`` is the dequantized row (:func:`embedding`'s values) and, in order of the
    positions, ``acc = v`` for the first one, then ``acc = acc if (acc >= v or acc is
    NaN) else v``: a larger value replaces the maximum, a tie keeps the earlier value
    (so the sign of a zero maximum is that of its first occurrence) and a NaN, once
    met, stays.  NaN arises only from tables whose stored scale or bias is not finite
    (imported bytes; :func:`qe4.quantize` never writes one).
    """
    check_lookup_table(table)
    out_dtype = V.check_out_dtype(out_dtype)
    idx, starts, w = V.check_bag_args(indices, offsets, table.n_rows, per_sample_weights,
                                      include_last_offset, mode, MODES)
    return round_output(pooled(table, idx, starts, w, mode), out_dtype)


def embedding_bags(tables: Sequence[QuantizedTable], indices: ArrayLike, offsets: ArrayLike, *,
                   mode: str = "sum", per_sample_weights: ArrayLike | None = None,
                   include_last_offset: bool = False, out_dtype: str = "float32") -> NDArray[Any]:
    """Bags over several tables in one call, as FBGEMM's table-batched embedding (TBE).

    Each table keeps its own bits, layout and dim.  The bags of all tables come in one
    ``indices``/``offsets`` pair, table-major, and the results sit side by side.

    Parameters
    ----------
    tables : list of QuantizedTable [n_tables]
    indices : int32/int64 1-D array: the indices of table 0's bags, then table 1's, ...
    offsets : int32/int64 1-D array [n_tables * n_bags] (or ``+ 1`` with
        ``include_last_offset=True``): bag b of table t starts at
        ``offsets[t * n_bags + b]``, as in TBE.
    mode, per_sample_weights, include_last_offset, out_dtype
        As for :func:`embedding_bag` (one mode for every table, as in TBE).

    Returns
    -------
    ndarray [n_bags, sum of the tables' dims] of ``out_dtype``: columns
    ``[c_t, c_t + dim_t)`` hold table t's bags, ``c_t`` the sum of the earlier dims.

    Notes
    -----
    Exactly ``np.concatenate([embedding_bag(tables[t], <table t's indices>, <its offsets
    rebased to 0>, ...) for t], axis=1)``: the tables are independent lookups.
    """
    out_dtype = V.check_out_dtype(out_dtype)
    tables, idx, starts, w, n_bags = V.check_table_bags(
        tables, indices, offsets, per_sample_weights, include_last_offset, mode)
    for table in tables:
        check_lookup_table(table)
    parts = []
    for t, table in enumerate(tables):
        s = starts[t * n_bags:(t + 1) * n_bags + 1]
        p0, p1 = int(s[0]), int(s[-1])
        parts.append(pooled(table, idx[p0:p1], s - p0, None if w is None else w[p0:p1], mode))
    return round_output(np.concatenate(parts, axis=1), out_dtype)


def check_lookup_table(table: QuantizedTable) -> QuantizedTable:
    """``table`` must be a QuantizedTable whose layout's arrays are consistent."""
    V.check_table(table)
    if table.layout in ("codebook", "two-tier"):
        from .codebook import check_table
        check_table(table)
    return table


def round_output(x: Float32Array, out_dtype: str) -> NDArray[Any]:
    """Round a float32 result once to ``out_dtype``: the rule of every lookup's output.

    ``"float32"``: ``x`` itself.  ``"float16"``: IEEE round to nearest, ties to even,
    with subnormals; a magnitude that rounds beyond 65504 becomes +-inf (as torch's
    ``.half()``, numpy's ``astype`` and FBGEMM's float16 outputs do: not an error).
    ``"bfloat16"``: the upper 16 bits of the float32 after adding
    ``0x7fff + (bit 16)``, i.e. round to nearest, ties to even (a result beyond the
    largest bfloat16 becomes +-inf); returned as an ``ml_dtypes.bfloat16`` array.  In
    both, a NaN becomes the quiet NaN of the same sign with no payload
    (float16 ``0x7e00``, bfloat16 ``0x7fc0``, sign bit added).
    """
    if out_dtype == "float32":
        return x
    x = np.where(np.isnan(x), np.copysign(F32(np.nan), x), x)   # quiet, payload-free NaN
    if out_dtype == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16)
    u = x.view(np.uint32)
    half = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    return half.astype(np.uint16).view(V.bfloat16_dtype())


def row_values(table: QuantizedTable, rows: NDArray[np.integer]) -> Float32Array:
    """``dequantize(table)[rows]`` as float32 [len(rows), dim], read from those rows only."""
    if len(rows) == 0:
        return np.zeros((0, table.dim), F32)
    if table.layout == "mixed":
        from .mixed import row_values_mixed
        return row_values_mixed(table, rows, row_values)
    s, v, t = bag_terms(table, rows, None)
    if table.layout != "rowwise":
        return v                         # the centroid values (s = 1, t = 0)
    with np.errstate(invalid="ignore", over="ignore"):   # imported non-finite scales
        return fma32(s[:, None], v, t[:, None])


def pooled(table: QuantizedTable, idx: NDArray[np.integer], starts: NDArray[np.integer],
           w: Float32Array | None, mode: str) -> Float32Array:
    """float32 [n_bags, dim] bags from validated ``idx``, ``starts`` [n_bags + 1], ``w``."""
    if table.layout == "mixed" and mode != "max":
        return _mixed_bag(table, idx, starts, w, mode)
    lengths = np.diff(starts)
    out = np.zeros((lengths.size, table.dim), F32)
    with np.errstate(invalid="ignore", over="ignore"):   # overflowing sums are inf, quietly
        _pool(table, idx, starts, lengths, w, mode, out)
    return out


def _pool(table, idx, starts, lengths, w, mode, out):
    for k in range(int(lengths.max(initial=0))):
        bags = np.nonzero(lengths > k)[0]
        pos = starts[bags] + k
        if mode == "max":
            max_step(out, bags, row_values(table, idx[pos]), k)
            continue
        s, v, t = bag_terms(table, idx[pos], None if w is None else w[pos])
        out[bags] = fma32(s[:, None], v, out[bags] + t[:, None])
    if mode == "mean":
        full = lengths > 0
        out[full] *= (F32(1.0) / lengths[full].astype(F32))[:, None]


def max_step(out: Float32Array, bags: NDArray[np.integer], v: Float32Array, k: int) -> None:
    """Step ``k`` of the max rule: ``out[bags]`` takes the values ``v`` of the bags' k-th
    positions (the first one: ``v`` itself; later: ``v`` where larger, NaN stays)."""
    acc = out[bags]
    out[bags] = v if k == 0 else np.where((acc >= v) | np.isnan(acc), acc, v)


def max_pool(values: Float32Array, starts: NDArray[np.integer]) -> Float32Array:
    """Max bags of per-position values [n_idx, dim] by :func:`max_step` (empty bags: 0)."""
    lengths = np.diff(starts)
    out = np.zeros((lengths.size, values.shape[1]), F32)
    for k in range(int(lengths.max(initial=0))):
        bags = np.nonzero(lengths > k)[0]
        max_step(out, bags, values[starts[bags] + k], k)
    return out


def bag_terms(table: QuantizedTable, rows: NDArray[np.integer],
              weights: Float32Array | None) -> tuple[Float32Array, NDArray[Any], Float32Array]:
    """The (s, v, t) of ``acc = fma(s, v, acc + t)`` for the given rows and weights."""
    if table.layout != "rowwise":
        from .codebook import bag_terms as codebook_terms
        return codebook_terms(table, rows, weights)
    sub = table.data[rows]
    cb = table.code_bytes
    dt = np.dtype(table.scale_dtype).newbyteorder("<")
    n = dt.itemsize
    scale = np.ascontiguousarray(sub[:, cb:cb + n]).view(dt).reshape(-1).astype(F32)
    bias = np.ascontiguousarray(sub[:, cb + n:cb + 2 * n]).view(dt).reshape(-1).astype(F32)
    if weights is not None:
        scale = weights * scale
        bias = weights * bias
    return scale, unpack_codes(sub[:, :cb], table.bits, table.dim), bias



def _mixed_bag(table, idx, starts, w, mode):
    """Sum or mean of a mixed-precision table: one bag per tier, added in tier order
    (:mod:`qe4.mixed`)."""
    from . import mixed

    def tier_bag(sub, rows, sub_starts, weights):
        return pooled(sub, rows, sub_starts, weights, "sum")

    return mixed.embedding_bag_mixed(table, idx, starts, w, mode, tier_bag, mixed.float_bag,
                                     mixed.locate)
