"""Compiled codebook quantization and lookups: the twin of :mod:`qe4.codebook`.

Same validation (``qe4.codebook.check_args``/``check_table``), byte-identical tables,
dequantized rows and bags for every thread count.  The numerics are documented in
:mod:`qe4.codebook`.

What is compiled: every per-row fit (Lloyd with its split-merge moves, and the exact
dynamic program), the binning and dynamic program of each ``two-tier`` group, encoding,
dequantization and bags, and the encoding of new ``two-tier`` rows against a table's
codebooks (:func:`encode_with_books`, for ``qe4_fast.update_rows(..., codebooks="keep")``).
One ``two-tier`` step is the reference's own vectorized NumPy
function, called explicitly (not a fallback): the row grouping
(:func:`qe4.codebook.group_ids`, two stable argsorts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from qe4.frontend import Request
    from qe4.table import QuantizedTable
    from qe4._typing import Encoded, Float32Array, IntArray, UInt8Array

from qe4 import codebook as C
from qe4 import layouts as L

from . import _codebook, _simd
from ._blocks import row_blocks
from ._threads import GRAIN_SEARCH, effective_n_threads, shares_cores

F32 = np.float32


METHODS = C.METHODS


def _aligned_rows(n_rows, row_bytes, align=64):
    """uint8 [n_rows, row_bytes] whose first row starts on a 64-byte cache line: a 64-byte
    codebook row (4 bits, dim 64, fp16 centroids) is then one line, not two, in lookups."""
    buf = np.empty(n_rows * row_bytes + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + n_rows * row_bytes].reshape(n_rows, row_bytes)


@shares_cores
def quantize_codebook(x: ArrayLike, bits: int, method: str, *, scale_dtype: str | None = None,
                      n_threads: int | None = None, **kwargs: Any) -> QuantizedTable:
    """Codebook-quantize each row of ``x``; see :func:`qe4.codebook.quantize_codebook`.

    ``n_threads``: None = all usable cores; rows (or groups) are split between threads.
    """
    from qe4.frontend import quantize
    return quantize(x, bits, method, 200, 0.16, scale_dtype, kwargs, engine="fast",
                    n_threads=n_threads, family="codebook")


def encode(request: Request, x: Float32Array, n_threads: int | None = None) -> Encoded:
    """The codebook family's compiled encoder: ``(data, extras)`` of float32 rows ``x``,
    byte-identical to :func:`qe4.codebook.encode`."""
    bits, scale_dtype = request.bits, request.scale_dtype
    if request.layout.name != "two-tier" and request.method.code not in _codebook.METHOD_CODES.values():
        raise ValueError(f"qe4_fast has no compiled codebook kernel for method "
                         f"{request.method.name!r} (code {request.method.code}); use engine='reference'")
    if bits not in C.BITS:
        raise ValueError(f"qe4_fast's codebook kernels do not implement bits={bits} (they do "
                         f"{C.BITS}); use engine='reference'")
    C.check_values(request, x)
    f16 = int(scale_dtype == "float16")
    k = 2 ** bits
    n_rows, dim = x.shape
    row_bytes = request.row_bytes(dim)
    if request.layout.name == "two-tier":
        n_groups = request.options["n_groups"]
        nt = effective_n_threads(n_threads, n_groups, x.size, GRAIN_SEARCH)
        gid = C.group_ids(x, n_groups)
        books = _group_books(x, gid, n_groups, k, f16, nt)
        data = _aligned_rows(n_rows, row_bytes)
        _codebook.encode_two_tier(x, gid.astype(np.int64), books, bits,
                                  L.id_dtype(n_groups).itemsize, data,
                                  effective_n_threads(n_threads, n_rows, x.size * k, GRAIN_SEARCH))
        return data, {"codebooks": np.ascontiguousarray(books.astype(L.little(scale_dtype)))}
    data = _aligned_rows(n_rows, row_bytes)
    nt = effective_n_threads(n_threads, n_rows, x.size, GRAIN_SEARCH)
    max_iter = request.options.get("max_iter", 1)
    # per row: Lloyd visits dim values x K centroids per iteration, the exact fit ~K dim^2
    cost = dim * k * (max_iter if "max_iter" in request.options else dim)
    for a, b in row_blocks(n_rows, cost, nt):               # Ctrl-C is noticed between blocks
        _codebook.encode_rows(x[a:b], bits, request.method.code, max_iter, f16, data[a:b], nt)
    return data, {}


@shares_cores
def encode_with_books(x: Float32Array, books: Float32Array, bits: int, scale_dtype: str,
                      n_threads: int | None = None) -> UInt8Array:
    """Two-tier rows of validated float32 rows ``x`` against fixed float32 codebooks
    ``books`` (sorted, finite: :func:`qe4.codebook.check_books`); byte-identical to
    :func:`qe4.codebook.encode_with_books` (the group choice and the codes are compiled)."""
    if bits not in L.LAYOUTS["two-tier"].bits:
        raise ValueError(f"qe4_fast's codebook kernels do not implement bits={bits} for "
                         f"two-tier rows (they do {L.LAYOUTS['two-tier'].bits})")
    x = np.ascontiguousarray(x, F32)
    books = np.ascontiguousarray(books, F32)
    n_rows, dim = x.shape
    n_groups, k = books.shape
    id_bytes = L.id_dtype(n_groups).itemsize
    data = np.empty((n_rows, L.code_bytes(dim, bits) + id_bytes), np.uint8)
    cost = dim * k * n_groups                  # per row: every codebook's codes and error
    nt = effective_n_threads(n_threads, n_rows, n_rows * cost, GRAIN_SEARCH)
    for a, b in row_blocks(n_rows, cost, nt):               # Ctrl-C is noticed between blocks
        _codebook.encode_with_books(x[a:b], books, bits, id_bytes, data[a:b], nt)
    return data


def _group_books(x, gid, n_groups, k, f16, n_threads):
    order = np.argsort(gid, kind="stable")
    edges = np.searchsorted(gid[order], np.arange(n_groups + 1))
    books = np.empty((n_groups, k), F32)
    order, edges = order.astype(np.int64), edges.astype(np.int64)
    # blocks of groups (each costs about its points x K); Ctrl-C is noticed between them
    per_group = max(1, x.size * k // n_groups)
    for a, b in row_blocks(n_groups, per_group, n_threads):
        _codebook.fit_groups(x, order, edges[a:b + 1], f16, books[a:b], n_threads)
    return books


def _table_args(table):
    """(data, dim, bits, layout, f16, id_bytes, books float32) for the kernels."""
    C.check_table(table)
    k = 2 ** table.bits
    if table.layout == "two-tier":
        books = table.extras["codebooks"]
        id_bytes = L.id_dtype(books.shape[0]).itemsize
        books = np.ascontiguousarray(books.astype(F32))
    else:
        books, id_bytes = np.zeros((1, k), F32), 0
    return (np.ascontiguousarray(table.data), table.dim, table.bits,
            table.layout_entry.code,
            int(table.scale_dtype == "float16"), id_bytes, books)


@shares_cores
def dequantize_codebook(table: QuantizedTable, *, n_threads: int | None = None) -> Float32Array:
    """float32 [n_rows, dim]; see :func:`qe4.codebook.dequantize_codebook`."""
    args = _table_args(table)
    out = np.empty((table.n_rows, table.dim), F32)
    if _codebook.dequantize(*args, out, effective_n_threads(n_threads, table.n_rows, out.size)):
        C.group_of(table, slice(None))      # the kernel met a bad group id: the reference's error
        raise AssertionError("qe4_fast: the dequantize kernel flagged a group id qe4 accepts")
    return out


@shares_cores
def embedding_bag_codebook(table: QuantizedTable, idx: IntArray, starts: IntArray,
                           weights: Float32Array | None, mode: str,
                           n_threads: int | None = None) -> Float32Array:
    """Bags over a codebook table from validated arguments (``qe4._validate.check_bag_args``):
    ``idx`` int64 [n], ``starts`` int64 [n_bags + 1], ``weights`` float32 [n] or None,
    ``mode`` "sum" or "mean".  See :func:`qe4.embedding_bag`."""
    if mode == "mean" and weights is not None:
        raise ValueError("per_sample_weights is only supported with mode='sum'")
    args = _table_args(table)
    n_bags = starts.size - 1
    out = np.empty((n_bags, table.dim), F32)
    # a private copy of the indices: the kernel trusts them (validated), so another Python
    # thread must not be able to rewrite them while it runs
    n_bad = _codebook.embedding_bag(*args, np.array(idx, np.int64, order="C"),
                                    np.ascontiguousarray(starts, np.int64),
                                    None if weights is None else np.ascontiguousarray(weights, F32),
                                    int(mode == "mean"), out,
                                    effective_n_threads(n_threads, n_bags, idx.size * table.dim),
                                    _simd.LEVEL)
    if n_bad:
        C.group_of(table, idx)          # raises the reference's error
    return out
