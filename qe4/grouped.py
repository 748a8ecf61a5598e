"""The ``"grouped"`` method: a scale and a min per group of values inside a row.

A row of ``dim`` values is cut into ``n_groups = ceil(dim / group)`` groups of
``group`` consecutive values; the last group is ragged when ``group`` does not
divide ``dim``: it holds ``dim - (n_groups - 1) * group`` values (the rule of
:func:`qe4.layouts.n_groups_of`).  Each group j has its own affine grid, stored
compactly as in GGUF's K formats: a ``sub_bits``-bit unsigned sub-scale ``sc_j`` and
a ``sub_bits``-bit sub-min ``mn_j`` under the row's float16 super-scale ``d`` and
super-min ``m``.  Row bytes: :class:`qe4.layouts.GroupedLayout`.

Reconstruction (every step one IEEE float32 operation; the two products are exact,
11 + sub_bits <= 19 significant bits)::

    signed  = sign bit of the stored d     # the row's sub-min mode, see below
    scale_j = f32(|d|) * f32(sc_j)
    min_j   = f32(m) * f32(mn_j)           # mn_j two's complement when signed, else unsigned
    x_hat   = fma(scale_j, q, min_j)       # one rounding, as the rowwise layout's

(:func:`qe4.rowwise.fma32`; compiled code calls ``fmaf`` or the AVX2 ``fmadd``, and
``-ffp-contract=off`` fuses nothing else.)  It is the embedding bag of a single row
with weight 1: a bag adds, per group, ``acc = fma(w * scale_j, q, acc + w * min_j)``.

**The sub-min mode, chosen per row.**  GGUF's Q4_K stores ``x = d * sc * q - dmin * mn``
with ``dmin, mn >= 0``: every group's min must be <= 0.  qe4 has two modes and each row
keeps the one of lower error, flagged by the sign bit of ``d`` (``d`` is never
negative, so the bit is free):

- *unsigned* (sign bit clear): ``mn_j`` in ``0 .. 2**sub_bits - 1`` under a signed
  ``m``: minima of one sign (either) keep every bit; a group whose min has the other
  sign gets ``min_j = 0`` (its grid starts at 0 and still covers it);
- *signed* (sign bit set): ``mn_j`` two's complement under ``m >= 0``: one bit goes to
  the sign, and minima of both signs are held.

Measured (``bench/bench_grouped.py --quick``: steps 1 to 4 with every row in one mode,
8,000 rows, bits=4, sub_bits=6), normalized error unsigned / signed: N(0, 1) x 64 at
group 32 0.004874 / 0.004913, at group 16 0.003249 / 0.003319; GloVe 6B 50d at group 32
0.004598 / 0.004635, at group 16 0.005078 / 0.003281, at group 8 0.003683 / 0.001881.
Neither wins everywhere (GloVe's rows have non-zero means, so small groups often have
minima of both signs), hence the per-row choice: on all of GloVe at group 16 it gives
0.003167 (5.6 bpw).

**The search**, per row, deterministic (every row independent):

1. For each group the float32 (scale, min) of least L2 error on the ``bits``-bit
   grid: :func:`qe4.mse.mse_params` with ``scale_dtype="float32"`` and its default
   options on the group's values (a scan of clipping ranges past greedy's window,
   then alternating least squares on the codes).  A constant group (max == min) has
   scale 0.
2. The super-scale and super-min, float16 (``h`` = round float32 to float16)::

       smax = 2**sub_bits - 1;   mhi = 2**(sub_bits - 1) - 1
       d = h(max_j scale_j / smax)
       unsigned: m = h(min_k / smax)       k: the first group of largest |min_k|
                 mn_j = clip(rint(min_j / m), 0, smax)         (0 when m == 0)
       signed:   m = h(max_j |min_j| / mhi)
                 mn_j = clip(rint(min_j / m), -mhi - 1, mhi)   (0 when m == 0)
       sc_j = clip(rint(scale_j / d), 0, smax)                 (0 when d == 0)

   (float32 divisions; ``rint`` rounds half to even.)
3. Codes for the quantized group parameters, ``q = clip(rint((x - min_j) * inv_j),
   0, qmax)`` with ``inv_j = f32(1 / scale_j)`` (0 when ``scale_j`` is 0 or its
   reciprocal is not finite).
4. Local search: each group tries ``(sc_j + a, mn_j + b)`` (clipped to their ranges)
   for the moves ``(a, b)`` of :data:`MOVES` in order, codes by step 3, and keeps the
   one of least error (ties: the earlier move; the unchanged pair is first).
5. Least-squares refit of ``(d, m)`` on the codes and sub-parameters of step 4 (the
   2x2 normal equations of ``x ~ d * (sc_j * q) + m * mn_j`` over the row, sums in
   float64 in row order, Cramer's rule, each rounded to float32 then float16; refused
   when the determinant is <= 0, ``d`` is not > 0 or either is not finite), then
   step 4 again from the refit; the row keeps the refit only if its error is lower.
6. Steps 2 to 5 run in both sub-min modes; the row keeps the signed one only if its
   error is lower.

**Non-uniform levels** (``levels="nl"``; the default ``"uniform"`` is all of the above).
The bytes are the same; what a code means changes: ``q`` reads back as
``fma(scale_j, level[q], min_j)`` with ``level`` the float32 table
``qe4.layouts.LEVELS["nl"][bits]`` (:func:`qe4.layouts.level_table`), in code units:
``level[0] = 0`` and ``level[qmax] = qmax``, so the table lies between the group's min and
its max, with steps wider at the ends than in the middle (at 4 bits the outer step is 1.6
uniform steps, the middle ones 0.78).  The search is the one above with ``v = level[q]``
in place of ``q`` wherever a code's value enters:

- a value's code is the nearest level, :func:`qe4.mse.level_codes` of
  ``t = (x - min_j) * inv_j`` (the number of the table's midpoints that ``t`` exceeds: a
  tie goes to the lower level; no clipping is needed);
- step 1 is :func:`qe4.mse.mse_params` with ``levels=``: its scan of clipping ranges and its
  least squares use the level values;
- steps 2 to 5 are unchanged; the refit's coefficient of ``d`` is ``sc_j * level[q]``.

The table was fitted once, by Lloyd's alternation on N(0, 1) groups of 32 values under
step 1 (``bench/fit_levels.py``: each level moves to the weighted mean of the normalized
values coded to it, the table is mapped back to ``0 .. qmax`` and symmetrized), and is part
of the file format: a table's ``params["levels"]`` names it.  How it relates to its
neighbours:

- GGUF's IQ4_NL and bitsandbytes' NF4 also fix 16 levels, but symmetric about zero under a
  scale alone; here the levels sit between a per-group min and max (affine), so a group's
  offset costs nothing;
- the per-row codebooks (``kmeans``, ``kmeans-optimal``) learn ``2**bits`` free float16
  centroids per row (32 bytes a row at 4 bits) and the two-tier codebook shares learned
  tables between rows; the level table is learned once, costs no bytes, and only its
  scale and min are per group.

**Scale-only groups** (``mins="none"``; the default ``"group"`` is all of the above).  No
sub-mins and no super-min are stored: a row is ``[codes][sc_0 .. sc_{n_groups-1}][d]``, the
sub-scales in two's complement (``sub_bits`` each, one bit stream) under the float16
``d >= 0``, and a code reads back as ``fma(scale_j, level[q], 0)`` (``min_j = +0``, so every
lookup is the one above) on a *signed* level table, :data:`qe4.layouts.SIGNED_LEVELS`:
``level[q] = q - 2**(bits - 1)`` for ``levels="uniform"`` (GGUF's Q4_0 grid), or qe4's
asymmetric ``"nl"`` table, whose negative end is the long one.  A negative sub-scale mirrors
the table, so each group puts the long end on the side of its largest value: that is what
GGUF's IQ4_NL does with the sign of its float16 scale, and what makes an asymmetric table pay
(a symmetric table has no zero level; fitted symmetric, it was 10% worse).  The search:

1. each group's float32 scale of least error, :func:`scale_params`: a scan of
   :data:`SCALE_SCAN` factors of the two anchor scales that put the group's largest value on
   either end of the table, then least squares on the codes (``s = sum x v / sum v v``);
2. ``d = h(max_j |s_j| / hi)`` and ``sc_j = clip(rint(s_j / d), -hi - 1, hi)`` with
   ``hi = 2**(sub_bits - 1) - 1`` (:func:`super_scale`);
3. codes as above (``inv_j`` kept for any non-zero finite scale, negative ones too);
4. local search of :data:`SCALE_MOVES` (the sub-scale alone);
5. the least-squares refit of ``d`` alone (:func:`refit_scale`), then step 4 again; kept
   only if the row's error is lower.  There is one mode (no sub-mins, no sign bit to spend).

It costs ``sub_bits`` bits per group instead of ``2 * sub_bits`` and 2 bytes per row instead
of 4: with 6-bit sub-scales per 32 values, 4.25 bits per value at dim 256 (GGUF's IQ4_XS
layout) and 4.5 at dim 64 (IQ4_NL's).  Measured on N(0, 1) (``bench/bench_frontier.py``,
:data:`qe4.presets` ``nls-*``): at those two rungs the nl table's error is 0.94x llama.cpp's
searched IQ4_XS and IQ4_NL figures; fitting the table (``bench/fit_levels.py --mins none``) took
step 1's floor from the uniform grid's 0.00657 to 0.00529 at 4 bits.

Errors are ``sum (x - fma(scale_j, q, min_j))**2`` accumulated in float32 in column
order within each group; a row's error is the float32 sum of its groups' errors in
group order.  Measured (``bench/bench_grouped.py``) against a dense search of each
group's float32 range with least squares (the floor of any per-group affine 4-bit grid
of 32 values, whatever its storage): see docs/numerics.rst, "Grouped rows".
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from collections.abc import Callable

    from .frontend import Request
    from .table import QuantizedTable
    from ._typing import Encoded, Float32Array, IntArray, UInt8Array

from . import _validate as V
from . import layouts as L
from . import mse as MSE
from .rowwise import fma32

F32 = np.float32
F64 = np.float64

#: the local search's moves of (sc_j, mn_j), in the order they are tried
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
#: the moves of scale-only groups (``mins="none"``): the sub-scale alone
SCALE_MOVES = tuple(mv for mv in MOVES if mv[1] == 0)
GROUP = 32
SUB_BITS = 6
#: scale-only step 1: the scan's factors of each anchor scale (1.25 down to 0.78125, exact),
#: the scanned scales refined by least squares, and the rounds of each refinement
SCALE_SCAN = tuple((40 - k) / 32 for k in range(16))
SCALE_KEEP = 3
SCALE_ITER = 3


def sub_max(sub_bits: int) -> int:
    """The largest sub-scale (and unsigned sub-min): ``2**sub_bits - 1``."""
    return 2 ** sub_bits - 1


def min_range(sub_bits: int, signed: bool) -> tuple[int, int]:
    """The sub-mins' range (lo, hi): 0 to ``2**sub_bits - 1``, or two's complement."""
    if signed:
        return -(2 ** (sub_bits - 1)), 2 ** (sub_bits - 1) - 1
    return 0, sub_max(sub_bits)


def sc_range(sub_bits: int, mins: str) -> tuple[int, int]:
    """The sub-scales' range (lo, hi): unsigned, or two's complement for scale-only groups."""
    if mins == "none":
        return min_range(sub_bits, True)
    return 0, sub_max(sub_bits)


def split_groups(x: Float32Array, group: int) -> tuple[Float32Array, NDArray[np.bool_]]:
    """Rows [n, dim] -> zero-padded groups [n, n_groups, group] and the valid mask [n_groups, group]."""
    n, dim = x.shape
    n_groups = L.n_groups_of(dim, group)
    padded = np.zeros((n, n_groups * group), F32)
    padded[:, :dim] = x
    valid = (np.arange(n_groups * group) < dim).reshape(n_groups, group)
    return padded.reshape(n, n_groups, group), valid


def group_segments(x: Float32Array, group: int) -> list[Float32Array]:
    """The groups of rows [n, dim] as contiguous 2-D arrays: the full groups
    [n * (dim // group), group] (row-major), then the ragged last groups [n, dim % group]."""
    n, dim = x.shape
    full = dim // group
    parts = []
    if full:
        parts.append(x[:, :full * group].reshape(n * full, group))
    if dim % group:
        parts.append(x[:, full * group:])
    return [np.ascontiguousarray(seg) for seg in parts]


def per_row(parts: list[Float32Array], n: int) -> Float32Array:
    """Per-group values of :func:`group_segments`' parts -> float32 [n, n_groups]."""
    return np.ascontiguousarray(np.concatenate([p.reshape(n, -1) for p in parts], axis=1), F32)


def group_ranges(x: Float32Array, bits: int, group: int, levels: Float32Array | None = None
                 ) -> tuple[Float32Array, Float32Array]:
    """Step 1: each group's float32 (scale, min) of least error on its levels,
    [n, n_groups] each."""
    scales, mins = [], []
    for seg in group_segments(x, group):
        scale, low, _ = MSE.mse_params(seg, bits, "float32", levels=levels)
        constant = seg.max(axis=1) == seg.min(axis=1)
        scales.append(np.where(constant, F32(0.0), scale))
        mins.append(low)
    return per_row(scales, x.shape[0]), per_row(mins, x.shape[0])


def scale_pass(xt: Float32Array, scale: Float32Array, levels: Float32Array, sums: bool,
               mids: Float32Array | None = None
               ) -> tuple[Float32Array, NDArray[np.float64], NDArray[np.float64]]:
    """One pass of scale-only step 1 over the columns ``xt`` [n_cols, n]: the float32 loss
    ``sum (x - fma(s, levels[q], 0))**2`` of scales ``s`` [n] (column order) and, with
    ``sums``, the float64 sums ``sum v * v``, ``sum x * v`` of the codes' values.  ``mids``:
    the table's :func:`qe4.mse.level_mids` (computed here if None)."""
    n = scale.shape[0]
    err = np.zeros(n, F32)
    s_vv, s_xv = np.zeros(n, F64), np.zeros(n, F64)
    with np.errstate(divide="ignore", over="ignore"):
        inv = F32(1.0) / scale
    inv = np.where((scale != 0) & np.isfinite(inv), inv, F32(0.0)).astype(F32)
    zero = np.zeros(n, F32)
    mids = MSE.level_mids(levels) if mids is None else mids
    for col in xt:
        v = levels[MSE.level_codes((col * inv).astype(F32), levels, mids)]
        e = col - fma32(scale, v, zero)
        err = (err + e * e).astype(F32)
        if sums:
            s_vv, s_xv = s_vv + F64(1) * v * v, s_xv + col.astype(F64) * v
    return err, s_vv, s_xv


def scale_params(x: Float32Array, levels: Float32Array) -> Float32Array:
    """Scale-only step 1: each row's float32 scale ``s`` of least error on a signed level
    table (``x ~ fma(s, levels[q], 0)``, ``q`` the nearest level of ``x / s``).

    1. **Scan**: with ``a`` the row's first value of largest magnitude, the scales
       ``f32(a / levels[0]) * f`` (``a`` on the lowest level), then
       ``f32(a / levels[-1]) * f`` (on the highest), for ``f`` in :data:`SCALE_SCAN`; a
       scale may be negative: the table is mirrored.
    2. **Refine** the :data:`SCALE_KEEP` scales of least error (ties: the earlier) by
       :data:`SCALE_ITER` least-squares rounds, ``s = f32(sum x v / sum v v)`` (float64 sums
       in column order; refused, ending the chain, when ``sum v v`` is 0 or the result is
       0 or not finite).
    3. Keep the evaluated scale of least error (ties: the first evaluated).
    """
    n = x.shape[0]
    xt = np.ascontiguousarray(x.T)
    rows = np.arange(n)
    mids = MSE.level_mids(levels)
    a = x[rows, np.argmax(np.abs(x), axis=1)]
    starts = [(((a / end).astype(F32)) * F32(f)).astype(F32)
              for end in (levels[0], levels[-1]) for f in SCALE_SCAN]
    errs = np.stack([scale_pass(xt, s, levels, False, mids)[0] for s in starts])
    rank = np.argsort(errs, axis=0, kind="stable")
    starts_arr = np.stack(starts)
    best, best_err = starts_arr[rank[0], rows], errs[rank[0], rows]
    for k in range(SCALE_KEEP):
        scale = starts_arr[rank[k], rows]
        live = np.ones(n, bool)
        for t in range(SCALE_ITER + 1):
            err, s_vv, s_xv = scale_pass(xt, scale, levels, t < SCALE_ITER, mids)
            better = err < best_err   # a chain that ended repeats its last scale: not lower
            best, best_err = np.where(better, scale, best), np.where(better, err, best_err)
            if t < SCALE_ITER:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    new = (s_xv / np.where(s_vv > 0, s_vv, 1.0)).astype(F32)
                live &= (s_vv > 0) & np.isfinite(new) & (new != 0)
                scale = np.where(live, new, scale).astype(F32)
    return best.astype(F32)


def group_scales(x: Float32Array, group: int, levels: Float32Array) -> Float32Array:
    """Scale-only step 1 per group: :func:`scale_params` of each group, [n, n_groups]."""
    return per_row([scale_params(seg, levels) for seg in group_segments(x, group)], x.shape[0])


def h16(v: ArrayLike) -> Float32Array:
    """Round float32 to float16 and widen back (nearest-even)."""
    with np.errstate(over="ignore"):
        return np.asarray(v, F32).astype(np.float16).astype(F32)


def super_params(scale: Float32Array, low: Float32Array, sub_bits: int, signed: bool = False
                 ) -> tuple[Float32Array, Float32Array, NDArray[np.int32], NDArray[np.int32]]:
    """Step 2: ``d, m`` [n] (float16 values) and ``sc, mn`` [n, n_groups] (int32)."""
    smax = sub_max(sub_bits)
    lo, hi = min_range(sub_bits, signed)
    if signed:
        m = h16(np.abs(low).max(axis=1) / F32(hi))
    else:
        extreme = low[np.arange(low.shape[0]), np.argmax(np.abs(low), axis=1)]  # the first largest
        m = h16(extreme / F32(smax))
    d = h16(scale.max(axis=1) / F32(smax))
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(np.rint(scale / d[:, None]), 0, smax), 0)
        mn = np.where(m[:, None] != 0, np.clip(np.rint(low / m[:, None]), lo, hi), 0)
    return d, m, sc.astype(np.int32), mn.astype(np.int32)


def super_scale(scale: Float32Array, sub_bits: int) -> tuple[Float32Array, NDArray[np.int32]]:
    """Scale-only step 2: ``d = h(max_j |s_j| / hi)`` [n] (``hi = 2**(sub_bits - 1) - 1``) and
    the signed sub-scales ``sc_j = clip(rint(s_j / d), -hi - 1, hi)`` (0 when ``d`` is 0)."""
    lo, hi = sc_range(sub_bits, "none")
    d = h16(np.abs(scale).max(axis=1) / F32(hi))
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.clip(np.rint(scale / d[:, None]), lo, hi), 0)
    return d, sc.astype(np.int32)


def group_values(d: Float32Array, m: Float32Array, sc: IntArray,
                 mn: IntArray) -> tuple[Float32Array, Float32Array]:
    """``scale_j = f32(d) * sc_j``, ``min_j = f32(m) * mn_j`` (exact), [n, n_groups] float32."""
    return (d[:, None] * sc.astype(F32)).astype(F32), (m[:, None] * mn.astype(F32)).astype(F32)


def group_codes(xg: Float32Array, scale: Float32Array, low: Float32Array,
                bits: int, levels: Float32Array | None = None) -> Float32Array:
    """Step 3: the values ``v`` [n, n_groups, group] (float32) of the codes for the groups'
    (scale, min): uniform levels ``v = q = clip(rint(t), 0, qmax)``, else
    ``v = levels[level_codes(t)]``, with ``t = (x - min_j) * inv_j``."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = F32(1.0) / scale
    inv = np.where((scale != 0) & np.isfinite(inv), inv, F32(0.0)).astype(F32)
    t = ((xg - low[..., None]) * inv[..., None]).astype(F32)
    if levels is not None:
        return levels[MSE.level_codes(t, levels)]
    return np.clip(np.rint(t), F32(0.0), F32(2 ** bits - 1)).astype(F32)


def codes_of(v: Float32Array, levels: Float32Array | None) -> UInt8Array:
    """The codes of level values ``v`` (the inverse of ``levels[q]``; uniform: ``v`` itself)."""
    if levels is None:
        return v.astype(np.uint8)
    return np.searchsorted(levels, v).astype(np.uint8)


def group_errors(xg: Float32Array, valid: NDArray[np.bool_], q: Float32Array, scale: Float32Array,
                 low: Float32Array) -> Float32Array:
    """``sum (x - fma(scale, q, min))**2`` per group, float32 in column order, [n, n_groups]."""
    err = np.zeros(scale.shape, F32)
    for c in range(xg.shape[2]):
        e = xg[:, :, c] - fma32(scale, q[:, :, c], low)
        err = np.where(valid[:, c], err + e * e, err).astype(F32)
    return err


def local_search(xg: Float32Array, valid: NDArray[np.bool_], bits: int, sub_bits: int,
                 d: Float32Array, m: Float32Array, sc: IntArray, mn: IntArray,
                 signed: bool = False, levels: Float32Array | None = None, mins: str = "group"
                 ) -> list[NDArray[Any]]:
    """Step 4: each group's best move of :data:`MOVES` (scale-only groups:
    :data:`SCALE_MOVES`, signed sub-scales, ``mn`` and ``m`` 0); returns ``sc, mn, q, err``."""
    slo, shi = sc_range(sub_bits, mins)
    lo, hi = min_range(sub_bits, signed) if mins == "group" else (0, 0)
    best = None
    for a, b in (MOVES if mins == "group" else SCALE_MOVES):
        tsc = np.clip(sc + a, slo, shi)
        tmn = np.clip(mn + b, lo, hi)
        scale, low = group_values(d, m, tsc, tmn)
        q = group_codes(xg, scale, low, bits, levels)
        err = group_errors(xg, valid, q, scale, low)
        if best is None:
            best = [tsc, tmn, q, err]
            continue
        take = err < best[3]
        best = [np.where(take, tsc, best[0]), np.where(take, tmn, best[1]),
                np.where(take[..., None], q, best[2]), np.where(take, err, best[3])]
    return best


def row_error(err: Float32Array) -> Float32Array:
    """The float32 sum of a row's group errors, in group order."""
    total = np.zeros(err.shape[0], F32)
    for j in range(err.shape[1]):
        total = (total + err[:, j]).astype(F32)
    return total


def refit_super(x: Float32Array, group: int, sc: IntArray, mn: IntArray,
                q: Float32Array) -> tuple[Float32Array, Float32Array, NDArray[np.bool_]]:
    """Step 5's fit: the least-squares ``(d, m)`` of ``x ~ d * (sc_j * q) + m * mn_j``.

    Sums in float64 over the row's values in column order; rounded to float32 then
    float16.  ``ok`` where the determinant is > 0, both are finite and ``d > 0``.
    """
    n, dim = x.shape
    u = expand(sc, dim, group).astype(F64) * q.reshape(n, -1)[:, :dim]   # coefficient of d
    v = expand(mn, dim, group).astype(F64)                                # coefficient of m
    y = x.astype(F64)
    s_uu, s_uv, s_vv, s_yu, s_yv = (np.zeros(n, F64) for _ in range(5))
    for c in range(dim):
        uc, vc, yc = u[:, c], v[:, c], y[:, c]
        s_uu, s_uv, s_vv = s_uu + uc * uc, s_uv + uc * vc, s_vv + vc * vc
        s_yu, s_yv = s_yu + yc * uc, s_yv + yc * vc
    det = s_uu * s_vv - s_uv * s_uv
    ok = det > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (s_yu * s_vv - s_yv * s_uv) / np.where(ok, det, 1.0)
        m = (s_yv * s_uu - s_yu * s_uv) / np.where(ok, det, 1.0)
        d, m = h16(d.astype(F32)), h16(m.astype(F32))
    ok &= np.isfinite(d) & np.isfinite(m) & (d > 0)
    return d, m, ok


def refit_scale(x: Float32Array, group: int, sc: IntArray, q: Float32Array
                ) -> tuple[Float32Array, NDArray[np.bool_]]:
    """Scale-only step 5's fit: the least-squares ``d`` of ``x ~ d * (sc_j * v)``, float64
    sums ``sum u * u``, ``sum x * u`` in column order, rounded to float32 then float16;
    ``ok`` where ``sum u * u > 0``, ``d`` is finite and ``d > 0``."""
    n, dim = x.shape
    u = expand(sc, dim, group).astype(F64) * q.reshape(n, -1)[:, :dim]
    s_uu, s_yu = np.zeros(n, F64), np.zeros(n, F64)
    for c in range(dim):
        s_uu, s_yu = s_uu + u[:, c] * u[:, c], s_yu + x[:, c].astype(F64) * u[:, c]
    ok = s_uu > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = h16((s_yu / np.where(ok, s_uu, 1.0)).astype(F32))
    return d, ok & np.isfinite(d) & (d > 0)


def pick_rows(take: NDArray[np.bool_], new: NDArray[Any], old: NDArray[Any]) -> NDArray[Any]:
    """``new`` in the rows where ``take`` [n] is set, else ``old`` (both [n, ...])."""
    return np.where(take.reshape(take.shape + (1,) * (old.ndim - 1)), new, old)


def search_steps(start: tuple[Float32Array, Float32Array, IntArray, IntArray],
                 search: Callable[..., list[NDArray[Any]]],
                 refit: Callable[[IntArray, IntArray, Float32Array],
                                 tuple[Float32Array, Float32Array, NDArray[np.bool_]]]
                 ) -> tuple[Float32Array, Float32Array, IntArray, IntArray, Float32Array,
                            Float32Array]:
    """Steps 4 and 5 of either kind from step 2's ``start = (d, m, sc, mn)``: the local search
    ``search(d, m, sc, mn) -> sc, mn, q, err``, the kind's refit ``refit(sc, mn, q) -> d, m,
    ok`` of its result, the local search again from the refit; a row keeps the refit only if
    its error is lower.  Returns ``d, m, sc, mn, q [n, n_groups, group], row error``."""
    d, m, sc, mn = start
    sc, mn, q, err = search(d, m, sc, mn)
    err = row_error(err)
    rd, rm, ok = refit(sc, mn, q)
    if ok.any():
        rsc, rmn, rq, rerr = search(rd, rm, sc, mn)
        rerr = row_error(rerr)
        better = ok & (rerr < err)
        d, m, sc, mn, q, err = (pick_rows(better, b, a) for a, b in
                                zip((d, m, sc, mn, q, err), (rd, rm, rsc, rmn, rq, rerr)))
    return d, m, sc, mn, q, err


def search_scales(x: Float32Array, xg: Float32Array, valid: NDArray[np.bool_],
                  scales: Float32Array, bits: int, group: int, sub_bits: int,
                  levels: Float32Array) -> tuple[Float32Array, NDArray[np.int32], Float32Array]:
    """Steps 2 to 5 of scale-only groups (:func:`search_steps` with ``m``, ``mn`` 0):
    ``d, sc, q [n, n_groups, group]``."""
    d, sc = super_scale(scales, sub_bits)
    search = partial(local_search, xg, valid, bits, sub_bits, levels=levels, mins="none")

    def refit(sc: IntArray, mn: IntArray, q: Float32Array
              ) -> tuple[Float32Array, Float32Array, NDArray[np.bool_]]:
        rd, ok = refit_scale(x, group, sc, q)
        return rd, np.zeros_like(rd), ok

    d, _, sc, _, q, _ = search_steps((d, np.zeros_like(d), sc, np.zeros_like(sc)), search, refit)
    return d, sc, q


def search_mode(x: Float32Array, xg: Float32Array, valid: NDArray[np.bool_],
                ranges: tuple[Float32Array, Float32Array], bits: int, group: int, sub_bits: int,
                signed: bool, levels: Float32Array | None = None
                ) -> tuple[Float32Array, Float32Array, NDArray[np.int32], NDArray[np.int32],
                           Float32Array, Float32Array]:
    """Steps 2 to 5 in one sub-min mode (:func:`search_steps`): ``d, m, sc, mn,
    q [n, n_groups, group], row error``."""
    search = partial(local_search, xg, valid, bits, sub_bits, signed=signed, levels=levels)
    return search_steps(super_params(*ranges, sub_bits, signed), search,
                        partial(refit_super, x, group))


def grouped_params(x: ArrayLike, bits: int = 4, group: int = GROUP, sub_bits: int = SUB_BITS,
                   levels: str = "uniform", mins: str = "group"
                   ) -> tuple[NDArray[np.bool_], Float32Array, Float32Array, NDArray[np.int32],
                              NDArray[np.int32], UInt8Array]:
    """Each row's ``(signed, d, m, sc, mn, q)`` by the search in this module's notes.

    Parameters
    ----------
    x : float32 ndarray [n_rows, dim]
        Validated (finite, float16 ranges checked: :func:`check_values`).
    bits, group, sub_bits : int
    levels : {"uniform", "nl"}
        What the codes mean (:data:`qe4.layouts.LEVELS`).
    mins : {"group", "none"}
        Scale-only groups with ``"none"`` (:data:`qe4.layouts.MINS`): ``signed`` is False,
        ``m`` and ``mn`` are 0 and ``sc`` is signed.

    Returns
    -------
    signed : bool [n_rows]
        The row's sub-mins are two's complement (stored as the sign bit of ``d``).
    d, m : float32 [n_rows] (float16 values, ``d >= 0``)
    sc, mn : int32 [n_rows, n_groups]
    q : uint8 [n_rows, dim]
    """
    x = np.asarray(x, F32)
    n, dim = x.shape
    table = L.level_table({"levels": levels, "mins": mins}, bits)
    xg, valid = split_groups(x, group)
    if mins == "none":
        d, sc, q = search_scales(x, xg, valid, group_scales(x, group, table), bits, group,
                                 sub_bits, table)
        return (np.zeros(n, bool), d, np.zeros_like(d), sc, np.zeros_like(sc),
                codes_of(q.reshape(n, -1)[:, :dim], table))
    ranges = group_ranges(x, bits, group, table)
    plain = search_mode(x, xg, valid, ranges, bits, group, sub_bits, False, table)
    other = search_mode(x, xg, valid, ranges, bits, group, sub_bits, True, table)
    signed = other[5] < plain[5]
    d, m, sc, mn, q = (pick_rows(signed, b, a) for a, b in zip(plain[:5], other[:5]))
    return signed, d, m, sc, mn, codes_of(q.reshape(n, -1)[:, :dim], table)


def assemble(signed: NDArray[np.bool_], d: Float32Array, m: Float32Array, sc: IntArray,
             mn: IntArray, q: UInt8Array, bits: int, sub_bits: int, mins: str = "group"
             ) -> UInt8Array:
    """Rows ``[codes][subs][d][m]`` (:class:`qe4.layouts.GroupedLayout`) as uint8 [n, row_bytes];
    a signed row's ``d`` is stored negated (its sign bit set), its sub-mins in two's complement.
    Scale-only groups (``mins="none"``): ``[codes][sc][d]``, ``sc`` in two's complement."""
    n = q.shape[0]
    mask = sub_max(sub_bits)
    if mins == "none":
        subs = (sc & mask).astype(np.uint8)
        tail = d.astype("<f2").view(np.uint8).reshape(n, 2)
    else:
        subs = np.stack([sc, mn & mask], axis=2).reshape(n, -1).astype(np.uint8)
        tail = np.stack([np.where(signed, -d, d), m], axis=1).astype("<f2").view(np.uint8).reshape(n, 4)
    return np.concatenate([L.pack_codes(q, bits), L.pack_codes(subs, sub_bits), tail], axis=1)


def read_rows(table: QuantizedTable, rows: slice | IntArray = slice(None)
              ) -> tuple[Float32Array, Float32Array, UInt8Array]:
    """``(scale_j, min_j)`` [n, n_groups] float32 and codes [n, dim] of a grouped table's ``rows``."""
    group, sub_bits = L.grouping(table.params)
    sub = table.data[rows]
    n_groups = L.n_groups_of(table.dim, group)
    cb = table.code_bytes
    sb = L.LAYOUTS["grouped"].sub_bytes(table.dim, table.params)
    codes = L.unpack_codes(sub[:, :cb], table.bits, table.dim)
    if L.mins_of(table.params) == "none":
        sc = L.unpack_codes(sub[:, cb:cb + sb], sub_bits, n_groups).astype(np.int32)
        sc = np.where(sc >= 2 ** (sub_bits - 1), sc - 2 ** sub_bits, sc)
        d = np.ascontiguousarray(sub[:, cb + sb:cb + sb + 2]).view("<f2").astype(F32)[:, 0]
        zero = np.zeros_like(sc)
        scale, low = group_values(d, np.zeros_like(d), sc, zero)
        return scale, low, codes
    subs = L.unpack_codes(sub[:, cb:cb + sb], sub_bits, 2 * n_groups).astype(np.int32)
    sc, mn = subs[:, 0::2], subs[:, 1::2]
    dm = np.ascontiguousarray(sub[:, cb + sb:cb + sb + 4]).view("<f2").astype(F32)
    signed = np.signbit(dm[:, 0])[:, None]
    mn = np.where(signed & (mn >= 2 ** (sub_bits - 1)), mn - 2 ** sub_bits, mn)
    scale, low = group_values(np.abs(dm[:, 0]), dm[:, 1], sc, mn)
    return scale, low, codes


def expand(values: NDArray[Any], dim: int, group: int) -> NDArray[Any]:
    """Per-group values [n, n_groups] -> per-column values [n, dim]."""
    return np.repeat(values, group, axis=1)[:, :dim]


def bag_terms(table: QuantizedTable, rows: slice | IntArray, weights: Float32Array | None
              ) -> tuple[Float32Array, UInt8Array | Float32Array, Float32Array]:
    """The (s, v, t) [n, dim] of ``acc = fma(s, v, acc + t)`` for rows of a grouped table:
    ``s = w * scale_j``, ``t = w * min_j`` (float32) per column of group j, ``v`` the codes
    (uniform levels) or their level values ``levels[q]`` (float32)."""
    group, _ = L.grouping(table.params)
    levels = L.level_table(table.params, table.bits)
    scale, low, q = read_rows(table, rows)
    if weights is not None:
        scale = (weights[:, None] * scale).astype(F32)
        low = (weights[:, None] * low).astype(F32)
    v = q if levels is None else levels[q]
    return expand(scale, table.dim, group), v, expand(low, table.dim, group)


def dequantize_grouped(table: QuantizedTable) -> Float32Array:
    """float32 [n_rows, dim]: ``fma(scale_j, q, min_j)`` per value."""
    s, q, t = bag_terms(table, slice(None), None)
    return fma32(s, q, t)


def check_values(request: Request, x: Float32Array, name: str = "x") -> None:
    """The grouped family's value checks: finite, and every value and ``(max - min) / qmax``
    of the row finite in float16 (the rowwise layout's float16 rule,
    :func:`qe4._validate.check_fp16_ranges`), so that the super-scale and super-min are."""
    L.level_table(request.options, request.bits)
    V.check_finite(x, name)
    V.check_fp16_ranges(x, request.bits, "float16", name=name)


def encode(request: Request, x: Float32Array) -> Encoded:
    """The grouped family's encoder: rows of ``x`` by :func:`grouped_params`, in the
    grouped layout.  Returns ``(data, extras)`` (no extras)."""
    check_values(request, x)
    o = request.options
    params = grouped_params(x, request.bits, o["group"], o["sub_bits"], o["levels"], o["mins"])
    return assemble(*params, request.bits, o["sub_bits"], o["mins"]), {}
