"""Row-wise asymmetric uniform quantization: the executable specification.

Everything here is plain NumPy, vectorized across rows and sequential along a
row wherever the order of floating-point operations matters.  ``qe4_fast``
reproduces these functions byte for byte; read this file to learn what it does.

All arithmetic is IEEE float32 (numpy float32 arrays and ``np.float32``
constants, never Python floats, which would promote to float64), rounding to
nearest-even, with no fused multiply-add unless named (``fma32``).

Notation: ``b`` bits, ``qmax = 2**b - 1``; ``h(v)`` rounds a float32 to the
stored scale/bias dtype and back (float16 nearest-even, or the identity for
float32 tables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from .frontend import Request
    from ._typing import Encoded, Float32Array, Ranges, RangesPath, ScaleBias, UInt8Array

from . import _validate as V
from .layouts import pack_codes, unpack_codes  # noqa: F401  (the packing is the layouts')

F32 = np.float32
ZERO = F32(0.0)
ONE = F32(1.0)

# ACIQ clipping constants (Banner et al.): alpha = c * b (Laplace, b = mean |x - mean|)
# or alpha = c * sigma (Gaussian), per bit width: the paper's optimal clipping values for
# each prior (at every width the rowwise layout stores; docs/numerics.rst, "ACIQ clipping").
ACIQ_LAPLACE = {2: F32(2.83), 3: F32(3.89), 4: F32(5.03), 5: F32(6.2), 6: F32(7.41), 8: F32(9.89)}
ACIQ_GAUSS = {2: F32(1.71), 3: F32(2.15), 4: F32(2.55), 5: F32(2.94), 6: F32(3.29), 8: F32(3.92)}


def qmax_of(bits: int) -> np.float32:
    return F32(2 ** bits - 1)


def round_to(v: ArrayLike, scale_dtype: str) -> Float32Array:
    """``h(v)``: round float32 ``v`` to ``scale_dtype`` (nearest-even) and widen back."""
    if scale_dtype == "float16":
        with np.errstate(over="ignore"):
            return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)
    return np.asarray(v, dtype=F32)


# --------------------------------------------------------------------------- ranges

def minmax_range(x: Float32Array) -> Ranges:
    """Each row's (min, max).  ``+ 0.0`` makes a zero minimum or maximum +0.0.

    FBGEMM's SIMD min picks the sign of a zero by lane order; qe4 defines it as +0.0.
    """
    return x.min(axis=1) + ZERO, x.max(axis=1) + ZERO


def range_loss(x: ArrayLike, lo: ArrayLike, hi: ArrayLike, bits: int = 4,
               scale_dtype: str = "float16") -> Float32Array:
    """L2 reconstruction error of each row quantized with the range [lo, hi].

    The greedy search's objective, exactly as torch's ``choose_qparams_optimized``::

        lo    = h(lo);  rng = hi - lo
        scale = 1.0 if rng == 0 else h(rng / qmax)
        inv   = 1.0 if scale == 0 else 1.0 / scale
        acc   = 0
        for j in 0 .. D-1, strictly in order:
            q   = clip(rint((x[j] - lo) * inv), 0, qmax)
            d   = x[j] - (q * scale + lo)          # two roundings, no FMA
            acc = acc + d * d
        return sqrt(acc)

    Parameters
    ----------
    x : float32 ndarray [n_rows, n_cols]
    lo, hi : float32 ndarray [n_rows]
    bits : int
    scale_dtype : {"float16", "float32"}

    Returns
    -------
    float32 ndarray [n_rows]
        NaN where a float32 scale below 2**-128 has an infinite reciprocal
        (``0 * inf``); such a candidate never compares less than another.

    Raises
    ------
    TypeError, ValueError
        As :func:`qe4.quantize` for ``x`` and ``bits``; ``lo``/``hi`` not real, finite,
        scalars or one per row, ``lo > hi``, or a range whose float16 scale/bias overflows
        (``qe4._validate.check_range_loss_args``).
    """
    x, lo, hi, bits, scale_dtype = V.check_range_loss_args(x, lo, hi, bits, scale_dtype)
    return _range_loss_t(np.ascontiguousarray(x.T), lo, hi, bits, scale_dtype)


def _range_loss_t(xt, lo, hi, bits, scale_dtype):
    # xt is x transposed [n_cols, n_rows], so each column is contiguous
    qmax = qmax_of(bits)
    lo = round_to(lo, scale_dtype)
    rng = (np.asarray(hi, F32) - lo).astype(F32)
    scale = np.where(rng == ZERO, ONE, round_to(rng / qmax, scale_dtype)).astype(F32)
    acc = np.zeros(lo.shape, F32)
    # float32 scales below 2**-128 (never float16 ones) have an infinite reciprocal:
    # 0 * inf is NaN, the clip keeps it, and the loss is NaN (never chosen), as in C
    with np.errstate(over="ignore", invalid="ignore"):
        inv = (ONE / np.where(scale == ZERO, ONE, scale)).astype(F32)
        for col in xt:
            q = np.clip(np.rint((col - lo) * inv), ZERO, qmax)
            d = col - (q * scale + lo)
            acc = acc + d * d
    return np.sqrt(acc)


def _min_bins(n_bins, ratio):
    # torch: float min_bins = n_bins * (1.0 - (float)ratio), double arithmetic then float
    return F32(n_bins * (1.0 - float(F32(ratio))))


@overload
def greedy_range(x: Float32Array, bits: int = ..., n_bins: int = ..., ratio: float = ...,
                 scale_dtype: str = ..., return_path: Literal[False] = ...) -> Ranges: ...
@overload
def greedy_range(x: Float32Array, bits: int = ..., n_bins: int = ..., ratio: float = ...,
                 scale_dtype: str = ..., *, return_path: Literal[True]) -> RangesPath: ...
@overload
def greedy_range(x: Float32Array, bits: int, n_bins: int, ratio: float, scale_dtype: str,
                 return_path: Literal[True]) -> RangesPath: ...
def greedy_range(x: Float32Array, bits: int = 4, n_bins: int = 200, ratio: float = 0.16,
                 scale_dtype: str = "float16",
                 return_path: bool = False) -> Ranges | RangesPath:
    """The paper's greedy clipping search, bit-identical to torch's
    ``choose_qparams_optimized`` (used by ``embedding_bag_4bit_prepack(w, True, ...)``).

    For each row::

        xmin, xmax = min(x), max(x);  step = (xmax - xmin) / n_bins
        thr  = min_bins * step
        best = cur = loss(xmin, xmax);  cmin, cmax = xmin, xmax
        while cmin + thr < cmax:
            l_left  = loss(cmin + step, cmax)
            l_right = loss(cmin, cmax - step)
            if cur < l_left and cur < l_right and cur < best:
                best = cur;  xmin, xmax = cmin, cmax
            if l_left < l_right: cmin += step; cur = l_left
            else:                cmax -= step; cur = l_right     # a tie trims the max
        return xmin, xmax

    Rounding: ``step`` and ``thr`` are float32 operations (one rounding each, ``n_bins``
    converted to float32 exactly).  ``min_bins`` is torch's
    ``float min_bins = n_bins * (1.0 - (float)ratio)``: ``ratio`` is first rounded to
    float32, then ``n_bins * (1.0 - ratio32)`` is computed in float64 (two roundings)
    and rounded to float32 (:func:`_min_bins`).  E.g. n_bins=200, ratio=0.16:
    ratio32 = 0.1599999964237213, 200 * (1 - ratio32) = 168.00000071525574,
    min_bins = float32(168.0000007) = 168.0.  ``cmin + step`` and ``cmax - step`` are
    float32 additions, so the bounds accumulate rounding exactly as torch's loop does.

    ``loss`` is :func:`range_loss`.  Note that the start (xmin, xmax) can never
    beat ``best`` (which it initialises), and a state is kept only when it is a
    strict local minimum along the path.  Rows are searched together: each
    iteration advances every row whose loop condition still holds.

    One addition to torch: a row also stops when an iteration leaves (cmin, cmax)
    unchanged, i.e. ``step`` is absorbed by rounding (a range far below the ulp of
    its values, e.g. [1.0021218, 1.0021269]).  torch loops forever there; every
    later iteration would repeat the same computation without changing anything,
    so the result is the one torch's endless loop converges to.

    Returns
    -------
    lo, hi : float32 ndarray [n_rows]
    path : list of (cmin, cmax) float32 arrays, one per iteration, NaN for rows
        already finished (only with ``return_path=True``; the first entry is the start).
    """
    x = np.asarray(x, F32)
    return greedy_search(np.ascontiguousarray(x.T),
                         lambda xt, lo, hi: _range_loss_t(xt, lo, hi, bits, scale_dtype),
                         n_bins, ratio, return_path)


def greedy_search(xt: Float32Array,
                  loss: Callable[[Float32Array, Float32Array, Float32Array], Float32Array],
                  n_bins: int = 200, ratio: float = 0.16,
                  return_path: bool = False) -> Ranges | RangesPath:
    """The loop of :func:`greedy_range` with any objective ``loss(xt, lo, hi)``.

    ``xt`` is the table transposed, float32 [n_cols, n_rows]; ``loss`` receives a
    column subset ``xt[:, rows]`` and float32 candidate bounds [len(rows)] and
    returns one float32 loss per row.  :func:`greedy_range` passes
    :func:`range_loss`; :mod:`qe4.export` passes each target layout's own error,
    so the search runs in that layout's parametrization.
    """
    xmin, xmax = xt.min(axis=0) + ZERO, xt.max(axis=0) + ZERO
    step = ((xmax - xmin) / F32(n_bins)).astype(F32)
    thr = (_min_bins(n_bins, ratio) * step).astype(F32)
    cur = loss(xt, xmin, xmax)
    best = cur.copy()
    lo, hi = xmin.copy(), xmax.copy()
    cmin, cmax = xmin.copy(), xmax.copy()
    path = [(cmin.copy(), cmax.copy())]
    active = np.nonzero(cmin + thr < cmax)[0]
    while active.size:
        a_t = xt[:, active]
        a_min, a_max, a_step, a_cur = cmin[active], cmax[active], step[active], cur[active]
        l_left = loss(a_t, a_min + a_step, a_max)
        l_right = loss(a_t, a_min, a_max - a_step)
        keep = (a_cur < l_left) & (a_cur < l_right) & (a_cur < best[active])
        best[active[keep]] = a_cur[keep]
        lo[active[keep]] = a_min[keep]
        hi[active[keep]] = a_max[keep]
        left = l_left < l_right
        cmin[active] = np.where(left, a_min + a_step, a_min)
        cmax[active] = np.where(left, a_max, a_max - a_step)
        cur[active] = np.where(left, l_left, l_right)
        if return_path:
            pmin = np.full_like(cmin, np.nan)
            pmax = np.full_like(cmax, np.nan)
            pmin[active], pmax[active] = cmin[active], cmax[active]
            path.append((pmin, pmax))
        moved = (cmin[active] != a_min) | (cmax[active] != a_max)
        active = active[moved & (cmin[active] + thr[active] < cmax[active])]
    if return_path:
        return lo, hi, path
    return lo, hi


def exhaustive_range(x: Float32Array, bits: int = 4, n_bins: int = 200, ratio: float = 0.16,
                     scale_dtype: str = "float16") -> Ranges:
    """The best range on greedy's own grid: the oracle greedy is judged against.

    Candidate bounds are built exactly as greedy builds them, by repeated float32
    additions: ``cmin_0 = xmin, cmin_{i+1} = cmin_i + step`` and
    ``cmax_0 = xmax, cmax_{j+1} = cmax_j - step``.  The candidates are every
    state (i, j) the greedy loop could reach: (0, 0), and (i+1, j) or (i, j+1)
    from a reachable (i, j) whose loop condition ``cmin_i + thr < cmax_j`` holds
    (so at most about ``ratio * n_bins`` bins are trimmed in total).  Greedy only
    ever returns such a state, hence ``loss(exhaustive) <= loss(greedy)``.
    A successor whose bound does not move (``step`` absorbed by rounding) is the
    same point as its parent and is not expanded: this changes no result and
    ends the search where greedy's stalled loop stops.

    Returns the (lo, hi) of least :func:`range_loss`; ties go to the state met
    first in the order (i + j, i) ascending.
    """
    x = np.asarray(x, F32)
    xt = np.ascontiguousarray(x.T)
    xmin, xmax = minmax_range(x)
    step = ((xmax - xmin) / F32(n_bins)).astype(F32)
    thr = (_min_bins(n_bins, ratio) * step).astype(F32)
    best = _range_loss_t(xt, xmin, xmax, bits, scale_dtype)
    lo, hi = xmin.copy(), xmax.copy()
    cmins, cmaxs = [xmin], [xmax]            # cmins[i], cmaxs[j], built by repeated adds
    level = {0: np.ones(xmin.shape, bool)}   # reachable[(i)] for states with i + j = t
    t = 0
    while True:
        # states at level t that continue the loop
        go = {i: r & (cmins[i] + thr < cmaxs[t - i]) for i, r in level.items()}
        cmins.append(cmins[-1] + step)
        cmaxs.append(cmaxs[-1] - step)
        nxt = {}
        for i, g in go.items():
            j = t - i                        # (i, j+1) and (i+1, j), if the bound moves
            nxt[i] = nxt.get(i, False) | (g & (cmaxs[j + 1] != cmaxs[j]))
            nxt[i + 1] = nxt.get(i + 1, False) | (g & (cmins[i + 1] != cmins[i]))
        nxt = {i: r for i, r in nxt.items() if r.any()}
        if not nxt:
            break
        t += 1
        for i in sorted(nxt):
            rows = np.nonzero(nxt[i])[0]
            c_lo, c_hi = cmins[i][rows], cmaxs[t - i][rows]
            loss = _range_loss_t(xt[:, rows], c_lo, c_hi, bits, scale_dtype)
            better = loss < best[rows]
            r = rows[better]
            best[r], lo[r], hi[r] = loss[better], c_lo[better], c_hi[better]
        level = nxt
    return lo, hi


def _sequential_mean(xt):
    """Row means with the sum taken column by column in float32 (order fixed)."""
    acc = np.zeros(xt.shape[1], F32)
    for col in xt:
        acc = acc + col
    return acc / F32(xt.shape[0])


def aciq_range(x: Float32Array, bits: int = 4, dist: str = "laplace") -> Ranges:
    """ACIQ clipping (Banner et al.): clip at mean +- alpha.

    ``mean`` is the float32 row mean summed in column order; Laplace:
    ``alpha = c_b * mean(|x - mean|)``, Gaussian: ``alpha = c_b * sqrt(mean((x - mean)**2))``
    (both means summed in column order), with c_b from ``ACIQ_LAPLACE`` / ``ACIQ_GAUSS``.
    The asymmetric range is ``lo = max(min(x), mean - alpha)``,
    ``hi = min(max(x), lo + 2 * alpha)``, then clamped so that
    ``min(x) <= lo <= hi <= max(x)`` (a constant row's float32 mean may round outside it).
    """
    x = np.asarray(x, F32)
    xt = np.ascontiguousarray(x.T)
    xmin, xmax = minmax_range(x)
    mean = _sequential_mean(xt)
    dev = xt - mean
    if dist == "laplace":
        alpha = aciq_constant(bits, dist) * _sequential_mean(np.abs(dev))
    elif dist == "gauss":
        alpha = aciq_constant(bits, dist) * np.sqrt(_sequential_mean(dev * dev))
    else:
        raise ValueError(f"dist must be 'laplace' or 'gauss', got {dist!r}")
    lo = np.minimum(np.maximum(xmin, mean - alpha), xmax) + ZERO
    hi = np.maximum(np.minimum(xmax, lo + F32(2.0) * alpha), lo) + ZERO
    return lo.astype(F32), hi.astype(F32)


def aciq_constant(bits: int, dist: str) -> np.float32:
    """ACIQ's clipping constant c_b for ``dist`` ("laplace" or "gauss") at ``bits``."""
    return (ACIQ_LAPLACE if dist == "laplace" else ACIQ_GAUSS)[bits]


def row_ranges(x: ArrayLike, bits: int = 4, method: str = "greedy", *, n_bins: int = 200,
               ratio: float = 0.16, scale_dtype: str | None = None) -> Ranges:
    """Each row's clipping range (lo, hi) chosen by ``method`` (a row-wise method).

    Validates like :func:`qe4.quantize` and returns float32 arrays [n_rows].
    """
    from .frontend import check_request     # the front end is a layer above: delegate
    request = check_request(bits, method, n_bins, ratio, scale_dtype, family="rowwise")
    x = V.as_float_rows(x)
    V.check_fp16_ranges(x, request.bits, request.scale_dtype)
    return ranges(request, x)


def ranges(request: Request, x: Float32Array) -> Ranges:
    """(lo, hi) of every row of validated ``x`` by the request's method: its registry
    entry's reference function (``minmax_range``, ``greedy_range``, ...)."""
    return request.method.call_reference(x, **request.arguments())


def encode(request: Request, x: Float32Array) -> Encoded:
    """The row-wise family's encoder: rows ``[codes][scale][bias]`` of ``x``.

    ``x`` is float32 [n_rows, n_cols] of the right shape (not yet checked finite):
    :func:`qe4._validate.check_finite` and :func:`qe4._validate.check_fp16_ranges`
    run first, then for every row

    1. (lo, hi) by the method (:func:`ranges`);
    2. :func:`scale_bias` rounds them into the stored scale and bias;
    3. :func:`quantize_codes` computes ``clip(rint((x - bias) * inv), 0, qmax)``;
    4. :func:`pack_codes` packs the codes, and the scale and bias follow them in the
       row, little-endian (:func:`assemble_rows`).

    Returns ``(data, extras)`` (no extras).
    """
    bits, scale_dtype = request.bits, request.scale_dtype
    check_values(request, x)
    lo, hi = ranges(request, x)
    scale, bias, inv = scale_bias(lo, hi, bits, scale_dtype)
    codes = quantize_codes(x, bias, inv, bits)
    return assemble_rows(request.layout.pack_codes(codes, bits), scale, bias, scale_dtype), {}


def check_values(request: Request, x: Float32Array, name: str = "x") -> None:
    """The row-wise family's value checks: finite (:func:`qe4._validate.check_finite`), and
    a range the stored scale/bias can hold (:func:`qe4._validate.check_fp16_ranges`)."""
    V.check_finite(x, name)
    V.check_fp16_ranges(x, request.bits, request.scale_dtype, name=name)


def assemble_rows(packed: UInt8Array, scale: Float32Array, bias: Float32Array,
                  scale_dtype: str) -> UInt8Array:
    """Concatenate packed codes and the little-endian scale and bias of each row."""
    dt = np.dtype(scale_dtype).newbyteorder("<")
    n = packed.shape[0]
    qp = np.stack([np.asarray(scale, np.float32), np.asarray(bias, np.float32)], axis=1)
    qbytes = qp.astype(dt).view(np.uint8).reshape(n, 2 * dt.itemsize)
    return np.ascontiguousarray(np.concatenate([packed, qbytes], axis=1))


# --------------------------------------------------------------------------- codes

def scale_bias(lo: Float32Array, hi: Float32Array, bits: int, scale_dtype: str) -> ScaleBias:
    """Stored scale and bias of each row, and the reciprocal used to quantize.

    2, 3, 4, 5 and 6 bits (torch's fused N-bit rows; 3, 5, 6 bits the same rule)::

        bias  = h(lo);  rng = hi - bias           # hi is not rounded
        scale = 1.0 if rng == 0 else rng / qmax
        scale = h(scale);  if scale == 0: scale = 1.0
        inv   = 1.0 / scale;  if inv is inf: scale = inv = 1.0

    A tiny negative ``lo`` that rounds to float16 -0.0 keeps its sign in the stored
    bias, as in torch (only a zero minimum is made +0.0, by :func:`minmax_range`).

    8 bits (torch's byte rows; float32, nothing rounded)::

        bias = lo;  scale = (hi - lo) / 255;  inv = 255 / ((hi - lo) + 1e-8)

    Returns
    -------
    scale, bias, inv : float32 ndarray [n_rows]
    """
    lo = np.asarray(lo, F32)
    hi = np.asarray(hi, F32)
    if bits == 8:
        rng = hi - lo
        return rng / F32(255.0), lo + ZERO, F32(255.0) / (rng + F32(1e-8))
    return fused_scale_bias(lo, hi, qmax_of(bits), scale_dtype)


def fused_scale_bias(lo: Float32Array, hi: Float32Array, qmax: np.float32 | float,
                     scale_dtype: str) -> ScaleBias:
    """The 2/4-bit rule of :func:`scale_bias` for codes ``0``-``qmax`` (any width)."""
    lo = np.asarray(lo, F32)
    hi = np.asarray(hi, F32)
    bias = round_to(lo, scale_dtype)
    rng = hi - bias
    scale = np.where(rng == ZERO, ONE, rng / qmax).astype(F32)
    scale = round_to(scale, scale_dtype)
    scale = np.where(scale == ZERO, ONE, scale).astype(F32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = (ONE / scale).astype(F32)
    bad = np.isinf(inv)
    scale = np.where(bad, ONE, scale).astype(F32)
    inv = np.where(bad, ONE, inv).astype(F32)
    return scale, bias, inv


def quantize_codes(x: Float32Array, lo: Float32Array, inv: Float32Array, bits: int) -> UInt8Array:
    """Codes ``q = clip(rint((x - lo) * inv), 0, qmax)`` as uint8 [n_rows, n_cols].

    ``lo`` is the stored bias (float32 value), ``inv`` from :func:`scale_bias`;
    ``rint`` rounds half to even.  Clipping happens before the cast.
    """
    q = np.rint((x - lo[:, None]) * inv[:, None])
    return np.clip(q, ZERO, qmax_of(bits)).astype(np.uint8)


def fma32(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> Float32Array:
    """float32 fused multiply-add ``a * b + c`` with one rounding, in NumPy.

    ``a * b`` of a float32 and a code (<= 8 bits) is exact in float64.  The
    float64 sum is rounded to odd (TwoSum error, then one step toward it when
    the sum is inexact and its last bit is even) so the final cast to float32
    rounds once, correctly.
    """
    a = np.asarray(a, np.float64)
    p = a * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    bp = s - c
    err = (p - bp) + (c - (s - bp))                 # TwoSum: s + err == p + c exactly
    even = (s.view(np.int64) & 1) == 0
    fix = (err != 0) & even
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(F32)
