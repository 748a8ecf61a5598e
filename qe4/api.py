"""The public API of the reference: ``quantize``, ``dequantize``, ``methods`` and the TBE
layout conversion.  ``quantize`` is the front end (:mod:`qe4.frontend`) with the
reference engine; the numerics live in :mod:`qe4.rowwise` and :mod:`qe4.codebook`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from ._typing import Float32Array, UInt8Array

from . import _validate as V
from . import codebook as C
from . import frontend
from . import method_registry as M
from . import preset_registry as P
from .rowwise import assemble_rows, fma32  # noqa: F401  (assemble_rows: an old import path)
from .table import QuantizedTable


def methods() -> tuple[str, ...]:
    """Every method name :func:`quantize` accepts (the method registry's, in code order)."""
    return M.names()


def presets() -> dict[str, str]:
    """Every preset name :func:`quantize` accepts, mapped to its one-line summary.

    A preset (:mod:`qe4.preset_registry`) names a measured combination of method, bits and
    options: ``qe4.quantize(x, preset="mse-4")``, ``qe4 quantize IN OUT --preset mse-4``.
    """
    return {p.name: f"{p.method}, {p.bits} bits: {p.summary}" for p in P.PRESETS.values()}


def quantize(x: ArrayLike, bits: int | None = None, method: str | None = None, *,
             preset: str | None = None, n_bins: int = 200, ratio: float = 0.16,
             scale_dtype: str | None = None, **kwargs: Any) -> QuantizedTable:
    """Quantize each row of an embedding table.

    Parameters
    ----------
    x : array_like [n_rows, n_cols], float32 or float16 (float64 is rounded to float32)
        Must be finite.
    bits : int, default 4
        A bit width of the method's layout (``qe4.layouts.LAYOUTS[...].bits``): rowwise
        methods 2, 3, 4, 5, 6 and 8 (3, 5 and 6 pack the codes as a bit stream torch has
        no op for), codebook methods 2 and 4.
    method : str, default "greedy"
        A name of :func:`methods`.  Row-wise uniform methods: ``"minmax"`` (each row's
        min and max), ``"greedy"`` (the paper's greedy clipping search,
        :func:`qe4.rowwise.greedy_range`), ``"exhaustive"`` (the best range on
        greedy's grid, :func:`qe4.rowwise.exhaustive_range`), ``"aciq-laplace"`` and
        ``"aciq-gauss"`` (:func:`qe4.rowwise.aciq_range`).  Codebook methods
        (``"kmeans"``, ``"kmeans-optimal"``, ``"two-tier"``) are described in
        :mod:`qe4.codebook`.  ``"grouped"``: a scale and min per group of
        ``group`` values, ``sub_bits`` each under float16 super-scales (:mod:`qe4.grouped`;
        bits 2, 3, 4, 5, 6, 8).  Each is an entry of :mod:`qe4.method_registry`.
    preset : str, optional
        A name of :func:`qe4.presets` (e.g. ``"mse-4"``): it sets ``bits``, ``method``,
        ``scale_dtype`` and the method's options, which must then not be passed.
    n_bins, ratio : int, float
        The search grid of ``greedy`` and ``exhaustive`` (torch's defaults 200, 0.16):
        n_bins in [1, 1000000], ratio in [0, 1).  Checked for every method, used and
        saved in ``params`` by those two.
    scale_dtype : {None, "float16", "float32"}
        Storage of each row's scale and bias (or of the centroids).  None means torch's
        layout: float16 at 2 to 6 bits, float32 (torch's byte layout) at 8 bits;
        float16 centroids.  ``"float32"`` at 2/4 bits is a qe4 variant torch cannot read.
    **kwargs
        The method's own options (``max_iter`` for kmeans, ``n_groups`` for two-tier,
        ``group`` and ``sub_bits`` for grouped).

    Returns
    -------
    QuantizedTable

    Raises
    ------
    TypeError
        ``x`` is not a float array, or a parameter has the wrong type, or an option
        the method does not have is passed.
    ValueError
        ``x`` is not 2-D, is empty, holds NaN/inf, or a row's range would overflow
        the float16 scale/bias; a parameter is out of range.  The order of the checks
        is the front end's (:mod:`qe4.frontend`), the same in every entry point.

    Notes
    -----
    Row-wise methods quantize each row independently (:func:`qe4.rowwise.encode`):

    1. choose (lo, hi) by ``method``;
    2. :func:`qe4.rowwise.scale_bias` rounds them into the stored scale and bias;
    3. :func:`qe4.rowwise.quantize_codes` computes ``clip(rint((x - bias) * inv), 0, qmax)``;
    4. :func:`qe4.layouts.pack_codes` packs the codes, and the scale and bias follow
       them in the row, little-endian.

    With ``method`` "minmax" or "greedy" and the default ``scale_dtype`` the bytes
    equal torch's ``embedding_bag_{4,2}bit_prepack(x, optimized_qparams, n_bins, ratio)``
    and, at 8 bits, ``embedding_bag_byte_prepack(x)`` ("greedy" at 8 bits searches
    with float32 rounding and stores torch's byte layout).
    """
    return frontend.quantize(x, bits, method, n_bins, ratio, scale_dtype, kwargs, preset=preset)


def dequantize(table: QuantizedTable) -> Float32Array:
    """Reconstruct float32 rows [n_rows, dim] from a :class:`QuantizedTable`.

    Rowwise tables: ``x_hat = fma(scale, q, bias)`` in float32, one rounding (torch's
    byte unpack uses fma; for float16 scales and <= 4-bit codes ``scale * q`` is
    exact, so it equals ``scale * q + bias``).  This is the embedding bag of a
    single row with weight 1.  Grouped tables: ``fma(scale_j, q, min_j)`` with group
    j's scale and min (:mod:`qe4.grouped`).  Mixed tables: each row as its tier stores it, pruned
    rows zero (:mod:`qe4.mixed`).
    """
    V.check_table(table)
    if table.layout == "mixed":
        from .mixed import dequantize_mixed
        return dequantize_mixed(table, dequantize)
    if table.layout == "grouped":
        from .grouped import dequantize_grouped
        return dequantize_grouped(table)
    if table.layout != "rowwise":
        return C.dequantize_codebook(table)
    return fma32(table.scales[:, None], table.codes(), table.biases[:, None])


def to_tbe(table: QuantizedTable, row_alignment: int = 1) -> UInt8Array:
    """Rows in fbgemm_gpu's TBE inference layout: ``[scale][bias][codes][zero padding]``.

    The scale/bias block moves from the end of the row to its front; rows are
    padded with zeros to a multiple of ``row_alignment`` bytes (1 on CPU, 16 on GPU).
    Returns a new uint8 array [n_rows, padded_row_bytes].
    """
    V.check_table(table)
    V.check_tbe_table(table)
    row_alignment = V.check_positive_int(row_alignment, "row_alignment")
    cb = table.code_bytes
    width = -(-table.row_bytes // row_alignment) * row_alignment
    out = np.zeros((table.n_rows, width), np.uint8)
    out[:, :table.row_bytes - cb] = table.data[:, cb:]
    out[:, table.row_bytes - cb:table.row_bytes] = table.data[:, :cb]
    return out


def from_tbe(data: ArrayLike, bits: int, dim: int | None = None, *, scale_dtype: str = "float16",
             row_alignment: int = 1) -> QuantizedTable:
    """Inverse of :func:`to_tbe`: a :class:`QuantizedTable` from TBE rows.

    ``dim`` defaults to every code slot of an unpadded row.  Padding bytes must be zero.
    """
    data, bits, dim, scale_dtype, qp, row_bytes = V.check_tbe_rows(data, bits, dim, scale_dtype,
                                                                    row_alignment)
    fused = np.concatenate([data[:, qp:row_bytes], data[:, :qp]], axis=1)
    return QuantizedTable(np.ascontiguousarray(fused), bits=bits, dim=dim, method="fused",
                          scale_dtype=scale_dtype)

