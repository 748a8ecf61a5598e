"""Public entry points: ``quantize``, ``dequantize`` and the TBE layout conversion."""

import numpy as np

from . import _validate as V
from . import rowwise as R
from .table import QuantizedTable


def _codebook():
    from . import codebook
    return codebook


def methods():
    """Every method name :func:`quantize` accepts."""
    try:
        extra = tuple(_codebook().METHODS)
    except ImportError:
        extra = ()
    return V.UNIFORM_METHODS + extra


def quantize(x, bits=4, method="greedy", *, n_bins=200, ratio=0.16, scale_dtype=None, **kwargs):
    """Quantize each row of an embedding table.

    Parameters
    ----------
    x : array_like [n_rows, n_cols], float32 or float16 (float64 is rounded to float32)
        Must be finite.
    bits : {2, 4, 8}
    method : str
        Row-wise uniform methods: ``"minmax"`` (each row's min and max),
        ``"greedy"`` (the paper's greedy clipping search, :func:`qe4.rowwise.greedy_range`),
        ``"exhaustive"`` (the best range on greedy's grid,
        :func:`qe4.rowwise.exhaustive_range`), ``"aciq-laplace"`` and
        ``"aciq-gauss"`` (:func:`qe4.rowwise.aciq_range`).  Codebook methods
        (``"kmeans"``, ``"kmeans-optimal"``, ``"two-tier"``) are described in
        :mod:`qe4.codebook`.
    n_bins, ratio : int, float
        The search grid of ``greedy`` and ``exhaustive`` (torch's defaults 200, 0.16).
    scale_dtype : {None, "float16", "float32"}
        Storage of each row's scale and bias.  None means torch's layout: float16
        at 2 and 4 bits, float32 (torch's byte layout) at 8 bits.  ``"float32"`` at
        2/4 bits is a qe4 variant torch cannot read.
    **kwargs
        Options of the codebook methods.

    Returns
    -------
    QuantizedTable

    Raises
    ------
    TypeError
        ``x`` is not a float array, or a parameter has the wrong type.
    ValueError
        ``x`` is not 2-D, is empty, holds NaN/inf, or a row's range would overflow
        the float16 scale/bias; a parameter is out of range.

    Notes
    -----
    Each row is quantized independently:

    1. choose (lo, hi) by ``method``;
    2. :func:`qe4.rowwise.scale_bias` rounds them into the stored scale and bias;
    3. :func:`qe4.rowwise.quantize_codes` computes ``clip(rint((x - bias) * inv), 0, qmax)``;
    4. :func:`qe4.rowwise.pack_codes` packs the codes, and the scale and bias follow
       them in the row, little-endian.

    With ``method`` "minmax" or "greedy" and the default ``scale_dtype`` the bytes
    equal torch's ``embedding_bag_{4,2}bit_prepack(x, optimized_qparams, n_bins, ratio)``
    and, at 8 bits, ``embedding_bag_byte_prepack(x)`` ("greedy" at 8 bits searches
    with float32 rounding and stores torch's byte layout).
    """
    bits = V.check_bits(bits)
    method = V.check_method(method, methods())
    if method not in V.UNIFORM_METHODS:
        return _codebook().quantize_codebook(x, bits, method, scale_dtype=scale_dtype, **kwargs)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments for method {method!r}: {sorted(kwargs)}")
    x, n_bins, ratio, scale_dtype = V.check_uniform_args(x, bits, n_bins, ratio, scale_dtype)
    V.check_search_cost(method, n_bins, ratio)
    V.check_fp16_ranges(x, bits, scale_dtype)
    lo, hi = R._ranges(x, bits, method, n_bins, ratio, scale_dtype)
    scale, bias, inv = R.scale_bias(lo, hi, bits, scale_dtype)
    codes = R.quantize_codes(x, bias, inv, bits)
    data = assemble_rows(R.pack_codes(codes, bits), scale, bias, scale_dtype)
    params = {"n_bins": n_bins, "ratio": ratio} if method in ("greedy", "exhaustive") else {}
    return QuantizedTable(data, bits=bits, dim=x.shape[1], method=method,
                          scale_dtype=scale_dtype, params=params)


def assemble_rows(packed, scale, bias, scale_dtype):
    """Concatenate packed codes and the little-endian scale and bias of each row."""
    dt = np.dtype(scale_dtype).newbyteorder("<")
    n = packed.shape[0]
    qp = np.stack([np.asarray(scale, np.float32), np.asarray(bias, np.float32)], axis=1)
    qbytes = qp.astype(dt).view(np.uint8).reshape(n, 2 * dt.itemsize)
    return np.ascontiguousarray(np.concatenate([packed, qbytes], axis=1))


def dequantize(table):
    """Reconstruct float32 rows [n_rows, dim] from a :class:`QuantizedTable`.

    Rowwise tables: ``x_hat = fma(scale, q, bias)`` in float32, one rounding (torch's
    byte unpack uses fma; for float16 scales and <= 4-bit codes ``scale * q`` is
    exact, so it equals ``scale * q + bias``).  This is the embedding bag of a
    single row with weight 1.
    """
    V.check_table(table)
    if table.layout != "rowwise":
        return _codebook().dequantize_codebook(table)
    q = table.codes()
    return R.fma32(table.scales[:, None], q, table.biases[:, None])


def to_tbe(table, row_alignment=1):
    """Rows in fbgemm_gpu's TBE inference layout: ``[scale][bias][codes][zero padding]``.

    The scale/bias block moves from the end of the row to its front; rows are
    padded with zeros to a multiple of ``row_alignment`` bytes (1 on CPU, 16 on GPU).
    Returns a new uint8 array [n_rows, padded_row_bytes].
    """
    V.check_table(table)
    table._require_rowwise("the TBE layout")
    row_alignment = V.check_positive_int(row_alignment, "row_alignment")
    cb = table.code_bytes
    width = -(-table.row_bytes // row_alignment) * row_alignment
    out = np.zeros((table.n_rows, width), np.uint8)
    out[:, :table.row_bytes - cb] = table.data[:, cb:]
    out[:, table.row_bytes - cb:table.row_bytes] = table.data[:, :cb]
    return out


def from_tbe(data, bits, dim=None, *, scale_dtype="float16", row_alignment=1):
    """Inverse of :func:`to_tbe`: a :class:`QuantizedTable` from TBE rows.

    ``dim`` defaults to every code slot of an unpadded row.  Padding bytes must be zero.
    """
    data, bits, dim, scale_dtype, qp, row_bytes = V.check_tbe_rows(data, bits, dim, scale_dtype,
                                                                    row_alignment)
    fused = np.concatenate([data[:, qp:row_bytes], data[:, :qp]], axis=1)
    return QuantizedTable(np.ascontiguousarray(fused), bits=bits, dim=dim, method="fused",
                          scale_dtype=scale_dtype)

