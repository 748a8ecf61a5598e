"""The ``"mse"`` search, compiled: the twin of :mod:`qe4.mse` (same bytes, plus ``n_threads``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from qe4.frontend import Request
    from qe4._typing import Encoded, Float32Array, ScaleBias

from qe4 import _validate as V
from qe4 import mse as M
from qe4 import rowwise as R
from qe4.table import QuantizedTable

from . import _mse, _simd
from ._threads import effective_n_threads, shares_cores

F32 = np.float32


@shares_cores
def quantize_mse(x: ArrayLike, bits: int = 4, *, scale_dtype: str | None = None,
                 max_trim: float | None = None, n_steps: int = M.N_STEPS, n_keep: int = M.N_KEEP,
                 n_iter: int = M.N_ITER, n_threads: int | None = None) -> QuantizedTable:
    """Quantize each row with its least-squares (scale, bias); see :func:`qe4.mse.quantize_mse`."""
    bits = V.check_rowwise_bits(bits)
    max_trim, n_steps, n_keep, n_iter = M.check_mse_options(bits, max_trim, n_steps, n_keep,
                                                            n_iter)
    scale_dtype = V.check_scale_dtype(scale_dtype, bits)
    x = V.as_table(x)
    V.check_fp16_ranges(x, bits, scale_dtype)
    data, _ = _run(x, bits, scale_dtype, max_trim, n_steps, n_keep, n_iter, n_threads, True)
    return QuantizedTable(data, bits=bits, dim=x.shape[1], method="mse", scale_dtype=scale_dtype,
                          params=M.mse_saved_params(max_trim, n_steps, n_keep, n_iter))


@shares_cores
def mse_params(x: ArrayLike, bits: int = 4, scale_dtype: str = "float16", *,
               max_trim: float | None = None, n_steps: int = M.N_STEPS, n_keep: int = M.N_KEEP,
               n_iter: int = M.N_ITER, levels: Float32Array | None = None,
               n_threads: int | None = None) -> ScaleBias:
    """Each row's stored (scale, bias, inv); see :func:`qe4.mse.mse_params` (validated ``x``;
    ``levels`` a float32 table of ``2**bits`` ascending values or None)."""
    x = np.ascontiguousarray(np.asarray(x, F32))
    max_trim = M.MAX_TRIM[bits] if max_trim is None else max_trim
    if levels is not None:
        levels = np.ascontiguousarray(levels, F32)
    _, params = _run(x, bits, scale_dtype, max_trim, n_steps, n_keep, n_iter, n_threads, False,
                     levels)
    return params


def _run(x, bits, scale_dtype, max_trim, n_steps, n_keep, n_iter, n_threads, encode,
         levels=None):
    n_rows, n_cols = x.shape
    n_keep = min(n_keep, len(M.scan_grid(n_steps)))
    n_threads = effective_n_threads(n_threads, -(-n_rows // _mse.LANES))
    work = np.empty((n_threads, _mse.work_floats(n_cols, n_keep)), F32)
    scale, bias, inv = (np.empty(n_rows, F32) for _ in range(3))
    row_bytes = -(-n_cols * bits // 8) + 2 * np.dtype(scale_dtype).itemsize
    out = np.empty((n_rows if encode else 0, row_bytes), np.uint8)
    _mse.mse_rows(x, bits, scale_dtype == "float16", float(F32(max_trim)), n_steps, n_keep,
                  n_iter, work, scale, bias, inv, out, n_threads, _simd.LEVEL, levels)
    return out, (scale, bias, inv)


def encode(request: Request, x: Float32Array, n_threads: int | None = None) -> Encoded:
    """The "mse" family's compiled encoder: ``(data, extras)``, byte-identical to
    :func:`qe4.mse.encode`."""
    R.check_values(request, x)
    o = request.options
    max_trim, n_steps, n_keep, n_iter = M.check_mse_options(request.bits, o["max_trim"],
                                                            o["n_steps"], o["n_keep"], o["n_iter"])
    data, _ = _run(np.ascontiguousarray(x, F32), request.bits, request.scale_dtype, max_trim,
                   n_steps, n_keep, n_iter, n_threads, True)
    return data, {}
