"""The ``"mse"`` method: each row's least-squares (scale, bias), as stored.

A row of the fused layout is served as ``x_hat = scale * q + bias`` with ``scale``
and ``bias`` stored in ``scale_dtype`` (float16 in torch's layout) and codes
``q`` in ``0 .. qmax``.  Any codes and any stored (scale, bias) are valid rows:
torch's ``embedding_bag_{2,4}bit_rowwise_offsets`` and byte ops read them
unchanged.  The min/max, greedy and exhaustive methods only choose a clipping
range (lo, hi) and derive the scale from it; ``"mse"`` searches the stored
(scale, bias) themselves for the least L2 error of the row:

1. **Scan** a triangular grid of clipping ranges reaching well past greedy's 16%
   window: ``lo = xmin + i * delta``, ``hi = xmax - j * delta`` for every
   ``i, j >= 0`` with ``i + j <= n_steps``, where
   ``delta = max_trim * (xmax - xmin) / n_steps`` (float32).  ``max_trim`` is the
   largest fraction of the range trimmed in total; by default
   ``MAX_TRIM[bits]`` (0.5 at 2 bits, 0.16 at 4: the best clip of a 2-bit row lies
   far outside greedy's window).  Each range gives a stored (scale, bias) by the
   fused rule of :func:`qe4.rowwise.fused_scale_bias`; (i, j) = (0, 0) is the
   min/max row exactly.
2. **Refine** the ``n_keep`` ranges of least error (ties: the earlier in the scan
   order, i ascending then j ascending) by alternating least squares, ``n_iter``
   rounds each: with the codes of the current (scale, bias), the (scale, bias)
   minimizing ``sum (x - scale * q - bias)^2`` is a 2x2 linear solve; it is
   rounded to the stored dtype, which gives new codes, and so on.  Neither half of
   a round can increase the error before the rounding to float16.
3. Keep the evaluated (scale, bias) of least error; ties go to the first
   evaluated (the scan, then each refinement chain in rank order).

Every candidate is evaluated exactly as it is stored and quantized: codes
``q = clip(rint((x - bias) * inv), 0, qmax)`` with ``inv = 1 / scale`` (float32)
and the loss ``sum_j (x_j - (q_j * scale + bias))^2`` accumulated in float32 in
column order (the squared :func:`qe4.range_loss`; for float16 scales and codes of
up to 8 bits ``q * scale`` is exact, so this is the served error).

The (scale, bias) of a table row therefore is no longer a function of a range:
``qe4.row_ranges`` does not apply, :func:`mse_params` returns the pair itself.
How it relates to the other methods: never worse than min/max (its row is a
candidate); on GloVe 6B 50d at 2 bits 0.53x greedy's error, where the exact
optimum of this layout (every contiguous partition of the sorted row into 4 codes,
solved by least squares) is 0.527x; at 4 bits about 1% below the exhaustive grid.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from .frontend import Request
    from ._typing import Encoded, Float32Array, ScaleBias

from . import _validate as V
from . import rowwise as R
from .table import QuantizedTable
from .rowwise import assemble_rows

F32 = np.float32
F64 = np.float64

#: default ``max_trim`` (fraction of each row's range the scan may trim in total) per bit width:
#: roughly halved per added bit (the finer the grid, the less clipping pays).  Checked at 3, 5
#: and 6 bits on GloVe 6B 50d (20,000 rows) and N(0, 1) x 256 rows: trims of 0.2 / 0.4 at 3
#: bits and 0.5x / 1.5x the default at 5 and 6 bits changed the error by at most 2.1% (0.4%
#: but in one case) and never lowered it by more than 0.1%.
MAX_TRIM = {2: 0.5, 3: 0.3, 4: 0.16, 5: 0.08, 6: 0.04, 8: 0.01}
N_STEPS = 8
N_KEEP = 3
N_ITER = 3


def scan_grid(n_steps: int) -> list[tuple[int, int]]:
    """The scan's (i, j) pairs in scan order: i ascending, then j ascending, i + j <= n_steps."""
    return [(i, j) for i in range(n_steps + 1) for j in range(n_steps + 1 - i)]


def _pass(xt, scale, bias, inv, qmax, sums, levels=None, mids=None):
    """One pass over the columns: the loss of (scale, bias) and, with ``sums``, the
    least-squares sums of its codes (float32, column order).  With a level table and its
    midpoints the codes' values are ``levels[q]`` (:func:`level_codes`), else ``q`` itself."""
    n_rows = scale.shape[0]
    err = np.zeros(n_rows, F32)
    s_q = np.zeros(n_rows, F32)
    s_qq = np.zeros(n_rows, F32)
    s_y = np.zeros(n_rows, F32)
    s_yq = np.zeros(n_rows, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        for col in xt:
            y = col - bias
            t = (y * inv).astype(F32)
            q = np.clip(np.rint(t), F32(0.0), qmax) if levels is None else \
                levels[level_codes(t, levels, mids)]
            d = col - (q * scale + bias)
            err = err + d * d
            if sums:
                s_q = s_q + q
                s_qq = s_qq + q * q
                s_y = s_y + y
                s_yq = s_yq + y * q
    return err, (s_q, s_qq, s_y, s_yq)


def level_mids(levels: Float32Array) -> Float32Array:
    """The midpoints ``(levels[k] + levels[k + 1]) / 2`` of a level table (float32, exact for
    :data:`qe4.layouts.LEVELS`): what :func:`level_codes` compares with."""
    return ((levels[1:] + levels[:-1]) * F32(0.5)).astype(F32)


def level_codes(t: Float32Array, levels: Float32Array, mids: Float32Array | None = None) -> Any:
    """The nearest level's code of each ``t`` (code units) in an ascending level table:
    the number of midpoints (:func:`level_mids`) that ``t`` exceeds, so a tie goes to the
    lower level.  ``mids``: ``level_mids(levels)`` if the caller has it (a search computes
    it once, not once per column)."""
    mids = level_mids(levels) if mids is None else mids
    return np.searchsorted(mids, t, side="left")


def least_squares_step(sums: tuple[ArrayLike, ...], n_cols: int, scale: Float32Array,
                       bias: Float32Array, inv: Float32Array, scale_dtype: str) -> ScaleBias:
    """The stored (scale, bias, inv) fitted to the codes whose sums are ``sums``.

    With ``y = x - bias`` and the float32 sums ``Sq, Sqq, Sy, Syq`` of ``q``,
    ``q * q``, ``y`` and ``y * q``, in float64::

        det = n * Sqq - Sq * Sq
        s   = (n * Syq - Sq * Sy) / det
        c   = (Sy - s * Sq) / n
        scale' = h(float32(s));  bias' = h(float32(bias + c));  inv' = 1 / scale'

    The step is refused (the row keeps ``scale, bias``) when ``det <= 0`` (every
    code equal), or ``scale'`` is not a positive finite value with a finite
    reciprocal, or ``bias'`` is not finite.  Returns float32 ``(scale, bias, inv)``.
    """
    s_q, s_qq, s_y, s_yq = (np.asarray(v, F64) for v in sums)
    n = F64(n_cols)
    det = n * s_qq - s_q * s_q
    ok = det > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = (n * s_yq - s_q * s_y) / np.where(ok, det, 1.0)
        c = (s_y - s * s_q) / n
        new_scale = R.round_to(s.astype(F32), scale_dtype)
        new_bias = R.round_to((np.asarray(bias, F64) + c).astype(F32), scale_dtype)
        new_inv = (F32(1.0) / np.where(new_scale > 0, new_scale, F32(1.0))).astype(F32)
    ok &= (new_scale > 0) & np.isfinite(new_scale) & np.isfinite(new_inv) & np.isfinite(new_bias)
    return (np.where(ok, new_scale, scale).astype(F32), np.where(ok, new_bias, bias).astype(F32),
            np.where(ok, new_inv, inv).astype(F32))


def mse_params(x: Float32Array, bits: int = 4, scale_dtype: str = "float16", *,
               max_trim: float | None = None, n_steps: int = N_STEPS, n_keep: int = N_KEEP,
               n_iter: int = N_ITER, levels: Float32Array | None = None) -> ScaleBias:
    """Each row's stored (scale, bias) of least L2 error, by the search in this module's notes.

    Parameters
    ----------
    x : float32 ndarray [n_rows, n_cols]
        Validated (finite, float16 ranges checked).
    bits : int
    scale_dtype : {"float16", "float32"}
    max_trim : float in [0, 1) or None
        None: ``MAX_TRIM[bits]``.
    n_steps, n_keep, n_iter : int
        Grid steps of the scan (``(n_steps + 1) * (n_steps + 2) / 2`` ranges), ranges
        refined, and least-squares rounds per refined range.
    levels : float32 ndarray [2**bits] or None
        A level table (:data:`qe4.layouts.LEVELS`; the grouped layout's step 1): the codes
        read back as ``scale * levels[q] + bias``, ``q`` the nearest level
        (:func:`level_codes`).  None: uniform levels ``q``.

    Returns
    -------
    scale, bias, inv : float32 ndarray [n_rows]
        ``scale`` and ``bias`` are values of ``scale_dtype``; ``inv = 1 / scale``
        (float32) quantizes: ``q = clip(rint((x - bias) * inv), 0, qmax)``.
    """
    x = np.asarray(x, F32)
    n_rows, n_cols = x.shape
    qmax = R.qmax_of(bits)
    max_trim = MAX_TRIM[bits] if max_trim is None else max_trim
    xt = np.ascontiguousarray(x.T)
    xmin, xmax = R.minmax_range(x)
    delta = (F32(max_trim) * (xmax - xmin) / F32(n_steps)).astype(F32)
    mids = None if levels is None else level_mids(levels)

    # 1. scan: the loss of every grid range
    grid = scan_grid(n_steps)
    starts, errs = [], []
    for i, j in grid:
        lo = (xmin + F32(i) * delta).astype(F32)
        hi = (xmax - F32(j) * delta).astype(F32)
        params = R.fused_scale_bias(lo, hi, qmax, scale_dtype)
        starts.append(params)
        errs.append(_pass(xt, *params, qmax, sums=False, levels=levels, mids=mids)[0])
    errs = np.stack(errs)
    rank = np.argsort(errs, axis=0, kind="stable")
    rows = np.arange(n_rows)
    first = rank[0]
    best_err = errs[first, rows]
    best = [np.stack([p[k] for p in starts])[first, rows] for k in range(3)]

    # 2. refine the n_keep best ranges by alternating least squares
    for k in range(min(n_keep, len(grid))):   # n_keep is capped at the number of ranges
        pick = rank[k]
        scale, bias, inv = (np.stack([p[m] for p in starts])[pick, rows] for m in range(3))
        for t in range(n_iter + 1):
            err, sums = _pass(xt, scale, bias, inv, qmax, sums=t < n_iter, levels=levels,
                              mids=mids)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best = [np.where(better, v, b) for v, b in zip((scale, bias, inv), best)]
            if t < n_iter:
                scale, bias, inv = least_squares_step(sums, n_cols, scale, bias, inv, scale_dtype)
    return tuple(v.astype(F32) for v in best)


def check_mse_options(bits: int, max_trim: float | None, n_steps: int, n_keep: int,
                      n_iter: int) -> tuple[float, int, int, int]:
    """Validate the options of ``"mse"``; returns them with ``max_trim`` resolved (a float)."""
    if max_trim is None:
        max_trim = MAX_TRIM[bits]
    if isinstance(max_trim, bool) or not isinstance(max_trim, numbers.Real):
        raise TypeError(f"max_trim must be a real number or None, got {max_trim!r}")
    if not 0.0 <= float(max_trim) < 1.0:
        raise ValueError(f"max_trim must be in [0, 1), got {max_trim!r}")
    n_steps = _check_int(n_steps, "n_steps", 1, 1000)
    n_keep = _check_int(n_keep, "n_keep", 1, 10**6)
    n_iter = _check_int(n_iter, "n_iter", 0, 1000)
    return float(max_trim), n_steps, n_keep, n_iter


def _check_int(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return int(value)


def quantize_mse(x: ArrayLike, bits: int = 4, *, scale_dtype: str | None = None,
                 max_trim: float | None = None, n_steps: int = N_STEPS, n_keep: int = N_KEEP,
                 n_iter: int = N_ITER) -> QuantizedTable:
    """Quantize each row with its least-squares (scale, bias): ``qe4.quantize(x, bits, "mse")``.

    The rows are in the fused layout of :class:`qe4.QuantizedTable` (torch's
    ``embedding_bag_{2,4}bit`` rows with the default ``scale_dtype``; at 8 bits
    torch's byte rows, whose float32 scale and bias are searched too).  Parameters
    and the search: see :func:`mse_params` and this module's notes.  ``n_keep`` is
    capped at the number of scan ranges.
    """
    bits = V.check_rowwise_bits(bits)
    max_trim, n_steps, n_keep, n_iter = check_mse_options(bits, max_trim, n_steps, n_keep, n_iter)
    scale_dtype = V.check_scale_dtype(scale_dtype, bits)
    x = V.as_table(x)
    V.check_fp16_ranges(x, bits, scale_dtype)
    scale, bias, inv = mse_params(x, bits, scale_dtype, max_trim=max_trim, n_steps=n_steps,
                                  n_keep=n_keep, n_iter=n_iter)
    codes = R.quantize_codes(x, bias, inv, bits)
    data = assemble_rows(R.pack_codes(codes, bits), scale, bias, scale_dtype)
    return QuantizedTable(data, bits=bits, dim=x.shape[1], method="mse", scale_dtype=scale_dtype,
                          params=mse_saved_params(max_trim, n_steps, n_keep, n_iter))


def mse_saved_params(max_trim: float, n_steps: int, n_keep: int, n_iter: int) -> dict[str, Any]:
    """The options kept in the table's ``params`` (and its files)."""
    return {"max_trim": max_trim, "n_steps": n_steps, "n_keep": n_keep, "n_iter": n_iter}


def encode(request: Request, x: Float32Array) -> Encoded:
    """The "mse" family's encoder (``qe4.quantize(x, bits, "mse", ...)``): rows
    ``[codes][scale][bias]`` of ``x`` with each row's least-squares (scale, bias)
    (:func:`mse_params`), in the rowwise layout.  Returns ``(data, extras)`` (no extras)."""
    R.check_values(request, x)
    bits, scale_dtype, o = request.bits, request.scale_dtype, request.options
    max_trim, n_steps, n_keep, n_iter = check_mse_options(bits, o["max_trim"], o["n_steps"],
                                                          o["n_keep"], o["n_iter"])
    scale, bias, inv = mse_params(x, bits, scale_dtype, max_trim=max_trim, n_steps=n_steps,
                                  n_keep=n_keep, n_iter=n_iter)
    codes = R.quantize_codes(x, bias, inv, bits)
    return assemble_rows(R.pack_codes(codes, bits), scale, bias, scale_dtype), {}
