"""Codebook (scalar k-means) quantization: the executable specification.

Each element is stored as a b-bit index into a small sorted codebook of ``K = 2**b``
centroids instead of a point of a uniform grid (the paper's second method).

Methods (``qe4.quantize(x, bits, method, **options)``)
-------------------------------------------------------
``"kmeans"``
    Per-row codebook fitted by Lloyd iterations (the paper's and QKeras' approach),
    with deterministic split-merge moves out of Lloyd's local minima (plain Lloyd from
    quantiles stopped at 2.8x ``kmeans-optimal``'s error at 4 bits on N(0,1) rows of 64;
    with the moves 1.07x, and 1.04x at 2 bits).  No randomness and no seed: initialised
    at quantiles of the sorted row.  Option ``max_iter`` (default 100, moves included).
    See :func:`lloyd_centroids` and :func:`relocate`.
``"kmeans-optimal"``
    Per-row codebook that is the exact optimum of 1-D k-means (Wang & Song 2011,
    Ckmeans.1d.dp), by dynamic programming with the O(K n log n) divide-and-conquer
    rule.  See :func:`optimal_partition`.
``"two-tier"``
    Rows are put in ``n_groups`` groups (default 16) by a grid on the ranks of their
    minimum and maximum; each group has one codebook, the optimal 1-D k-means of the
    group's values over bins of 11 significant bits (:func:`group_codebooks`); each row
    stores its group id.  The codebook overhead moves from every row to the table.
    New rows can be encoded against a table's existing codebooks (each row the codebook
    of least squared error: :func:`encode_with_books`, for
    ``qe4.update_rows(..., codebooks="keep")``).

Grouping rows by the ranks of their min and max is what makes two-tier competitive (a
naive grouping loses to per-row minmax).  How the methods compare in error and bytes
per row, on N(0,1) and on GloVe: ``bench/bench_codebook.py``, results in
``bench/results/bench_codebook.txt``.

Bit widths 2 and 4 (4 and 16 centroids).  8 bits (256 centroids per row, more than the
values of a typical row) is refused.

Storage (``scale_dtype``): centroids are stored as float16 (``None`` or ``"float16"``, the
default) or float32 (``"float32"``).  With float16, every ``|value|`` must round to a finite
float16 (<= 65504).

Layouts (all little-endian; codes packed exactly as :func:`qe4.rowwise.pack_codes`)
-----------------------------------------------------------------------------------
``layout="codebook"`` (kmeans, kmeans-optimal): row = ``[codes][c_0 .. c_{K-1}]``,
``ceil(dim * b / 8) + K * itemsize`` bytes (4 bits, dim 64, float16: 32 + 32 = 64).

``layout="two-tier"``: row = ``[codes][group id]``, the id uint8 when ``n_groups <= 256``
else uint16 little-endian (4 bits, dim 64: 33 bytes); ``extras["codebooks"]`` is
``[n_groups, K]`` float16/float32, counted in ``QuantizedTable.nbytes``.

Centroids are sorted ascending (ties possible).  A value ``x`` gets the code of its
nearest stored centroid, ties to the LOWER one::

    mid_k = (float64(c_{k-1}) + float64(c_k)) * 0.5        k = 1 .. K-1
    code  = number of k with float64(x) > mid_k

(exactly nearest except when two centroids differ by a factor > 2**29, where the float64
midpoint itself is rounded).  Dequantized value = the centroid, float32.  Embedding bags
use ``acc = fma(w, c[code], acc + 0)`` (:func:`bag_terms`).

Floating-point rules shared with ``qe4_fast`` (byte-identical results): all fitting
arithmetic is float64, every sum is sequential in a stated order, ``-0.0`` inputs are
canonicalised to ``+0.0`` before sorting, fitted centroids are rounded float64 ->
float32 (nearest-even) -> storage dtype (nearest-even), then sorted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .frontend import Request
    from .table import QuantizedTable
    from ._typing import (Encoded, Float32Array, Float64Array, Int64Array, IntArray, UInt8Array)

from . import _validate as V
from . import layouts as L
from . import method_registry as M
from .layouts import id_dtype, pack_codes, unpack_codes  # noqa: F401
from .rowwise import fma32, round_to  # noqa: F401

#: The codebook methods (from the method registry) and their options' defaults.
METHODS = M.names(family="codebook")
OPTIONS = {name: M.get(name).defaults() for name in METHODS}
BITS = L.LAYOUTS["codebook"].bits
MAX_GROUPS = L.MAX_GROUPS
F32 = np.float32
F64 = np.float64
_CHUNK_CELLS = 1 << 22  # rows x columns x centroids per chunk of the per-row fits (DP memory)


# --------------------------------------------------------------------------- validation

def check_values(request: Request, x: Float32Array, name: str = "x") -> None:
    """The codebook family's value checks of float32 rows ``x``: finite, and with
    float16 centroids every ``|value|`` rounds to a finite float16 (<= 65504)."""
    scale_dtype = request.scale_dtype
    V.check_finite(x, name)
    if scale_dtype == "float16":
        with np.errstate(over="ignore"):
            big = np.abs(x).max(axis=1).astype(np.float16)
        bad = ~np.isfinite(big)
        if bad.any():
            r = int(np.argmax(bad))
            c = int(np.argmax(np.abs(x[r])))
            raise ValueError(f"{name}[{r}, {c}] = {x[r, c]!r} overflows the float16 centroids "
                             "(|value| <= 65504 required); use scale_dtype='float32'")


def check_args(x: ArrayLike, bits: int, method: str, scale_dtype: str | None,
               kwargs: dict[str, Any]) -> tuple[Float32Array, int, str, str, dict[str, Any]]:
    """Validate a codebook ``quantize`` call (the front end's checks, codebook methods only);
    returns ``(x, bits, method, scale_dtype, options)``."""
    from .frontend import check_request      # the front end is a layer above: delegate
    request = check_request(bits, method, scale_dtype=scale_dtype, kwargs=kwargs, family="codebook")
    x = V.as_float_rows(x)
    check_values(request, x)
    return x, request.bits, request.method.name, request.scale_dtype, request.options


# --------------------------------------------------------------------------- entry points

def quantize_codebook(x: ArrayLike, bits: int, method: str, *, scale_dtype: str | None = None,
                      **kwargs: Any) -> QuantizedTable:
    """Codebook-quantize each row of ``x``: :func:`qe4.quantize` for the codebook methods.

    Parameters
    ----------
    x : array_like [n_rows, n_cols] float (see :func:`qe4.quantize`)
    bits : {2, 4}
    method : {"kmeans", "kmeans-optimal", "two-tier"}
    scale_dtype : {None, "float16", "float32"}
        Centroid storage; None means float16.
    max_iter : int, optional (kmeans; default 100)
    n_groups : int, optional (two-tier; default 16, at most 65536)

    Returns
    -------
    QuantizedTable with ``layout="codebook"`` or ``"two-tier"``.
    """
    from .frontend import quantize           # the front end is a layer above: delegate
    return quantize(x, bits, method, 200, 0.16, scale_dtype, kwargs, family="codebook")


def encode(request: Request, x: Float32Array) -> Encoded:
    """The codebook family's encoder: ``(data, extras)`` of float32 rows ``x``.

    :func:`check_values` first.  ``layout="codebook"`` (per-row methods): each row's
    float64 centroids from the method's reference function (:func:`lloyd_centroids`,
    :func:`row_optimal_centroids`) on the sorted row (:func:`sorted_rows`), in chunks
    of rows, then :func:`store_centroids`, :func:`assign_codes`, and rows
    ``[packed codes][centroids]``.  ``layout="two-tier"``: :func:`two_tier_codebooks`,
    :func:`assign_codes` against each row's group codebook, rows
    ``[packed codes][group id]`` and ``extras["codebooks"]``.
    """
    bits, scale_dtype = request.bits, request.scale_dtype
    check_values(request, x)
    k = 2 ** bits
    if request.layout.name == "two-tier":
        gid, books = request.method.call_reference(x, **request.arguments())
        codes = assign_codes(x, books[gid])
        return two_tier_rows(codes, gid, books, bits, scale_dtype)
    cents = np.empty((x.shape[0], k), F32)
    chunk = max(1, _CHUNK_CELLS // (x.shape[1] * k))
    for r0 in range(0, x.shape[0], chunk):
        c64 = request.method.call_reference(sorted_rows(x[r0:r0 + chunk]), **request.arguments())
        cents[r0:r0 + chunk] = store_centroids(c64, scale_dtype)
    return codebook_rows(assign_codes(x, cents), cents, bits, scale_dtype), {}


def dequantize_codebook(table: QuantizedTable) -> Float32Array:
    """float32 [n_rows, dim]: each element's centroid (exactly the stored value, widened)."""
    cents = row_centroids(table, slice(None))
    return np.take_along_axis(cents, table.codes().astype(np.intp), axis=1)


def bag_terms(table: QuantizedTable, rows: IntArray,
              weights: Float32Array | None) -> tuple[Float32Array, Float32Array, Float32Array]:
    """(s, v, t) of the embedding-bag step ``acc = fma(s, v, acc + t)`` for codebook rows.

    ``s`` = the weights (1 when None), ``v`` = the rows' centroid values, ``t`` = 0.
    """
    check_table(table)
    cents = row_centroids(table, rows)
    codes = unpack_codes(table.data[rows, :table.code_bytes], table.bits, table.dim)
    v = np.take_along_axis(cents, codes.astype(np.intp), axis=1)
    s = np.ones(len(rows), F32) if weights is None else np.asarray(weights, F32)
    return s, v, np.zeros(len(rows), F32)


# --------------------------------------------------------------------------- layouts

def _dtype(scale_dtype):
    return L.little(scale_dtype)


def codebook_rows(codes: UInt8Array, cents: Float32Array, bits: int,
                  scale_dtype: str) -> UInt8Array:
    """Rows ``[packed codes][K centroids, little-endian scale_dtype]``."""
    n = codes.shape[0]
    cb = cents.astype(_dtype(scale_dtype)).view(np.uint8).reshape(n, -1)
    return np.ascontiguousarray(np.concatenate([pack_codes(codes, bits), cb], axis=1))


def two_tier_rows(codes: UInt8Array, gid: Int64Array, books: Float32Array, bits: int,
                  scale_dtype: str) -> Encoded:
    """Rows ``[packed codes][group id]`` and ``{"codebooks": books}`` [n_groups, K]."""
    n = codes.shape[0]
    ids = gid.astype(id_dtype(books.shape[0])).view(np.uint8).reshape(n, -1)
    data = np.ascontiguousarray(np.concatenate([pack_codes(codes, bits), ids], axis=1))
    return data, {"codebooks": np.ascontiguousarray(books.astype(_dtype(scale_dtype)))}


def check_table(table: object) -> None:
    """``table`` must be a codebook or two-tier QuantizedTable (built tables are valid:
    :meth:`qe4.layouts.Layout.validate` ran when it was made)."""
    from .table import check_table as check_type      # the table type is a layer above
    if check_type(table).layout == "rowwise":
        raise ValueError("expected a codebook or two-tier table, got a rowwise one")


def group_of(table: QuantizedTable, rows: slice | IntArray) -> NDArray[np.intp]:
    """Group ids (intp) of ``rows`` of a two-tier table; ValueError if one is out of range."""
    return table.layout_entry.check_rows(table.data, table.extras, rows)


def row_centroids(table: QuantizedTable, rows: slice | IntArray) -> Float32Array:
    """float32 [len(rows), K]: the codebook each of ``rows`` (an index array or slice) uses."""
    check_table(table)
    if table.layout == "two-tier":
        return table.extras["codebooks"].astype(F32)[group_of(table, rows)]
    return table.field("centroids", rows).astype(F32)


# --------------------------------------------------------------------------- shared steps

def sorted_rows(x: ArrayLike) -> Float64Array:
    """Each row sorted ascending as float64, ``-0.0`` first made ``+0.0``."""
    return np.sort(np.asarray(x, F32) + F32(0.0), axis=1).astype(F64)


def store_centroids(c64: ArrayLike, scale_dtype: str) -> Float32Array:
    """float64 centroids -> float32 (nearest-even) -> storage dtype (nearest-even) -> + 0.0
    (a tiny negative mean that rounds to -0.0 becomes +0.0, so equal centroids have equal
    bytes and the sort is unambiguous), sorted ascending."""
    return np.sort(round_to(np.asarray(c64).astype(F32), scale_dtype) + F32(0.0), axis=1)


def assign_codes(x: Float32Array, cents: Float32Array) -> UInt8Array:
    """Nearest-centroid codes uint8 [n_rows, n_cols], ties to the lower centroid.

    ``cents`` float32 [n_rows, K], sorted.  ``code = #{k : float64(x) > mid_k}`` with
    ``mid_k = (c_{k-1} + c_k) * 0.5`` in float64.
    """
    c = cents.astype(F64)
    mids = (c[:, :-1] + c[:, 1:]) * 0.5
    xd = np.asarray(x, F64)
    codes = np.zeros(xd.shape, np.uint8)
    for k in range(mids.shape[1]):
        codes += xd > mids[:, k:k + 1]
    return codes


def _cluster_sums(values, cluster, k):
    """Per (row, cluster) sums of ``values`` [R, n] taken sequentially along each row.

    ``np.bincount`` adds its weights one by one in input order (row-major here).
    """
    n_rows = values.shape[0]
    flat = (np.arange(n_rows)[:, None] * k + cluster).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n_rows * k).reshape(n_rows, k)


# --------------------------------------------------------------------------- Lloyd

def lloyd_centroids(xs: Float64Array, k: int, max_iter: int = 100) -> Float64Array:
    """Lloyd's k-means of each sorted row ``xs`` float64 [R, n], with split-merge moves
    out of its local minima; float64 centroids [R, k].

    Notes
    -----
    Initialization: quantiles of the sorted row, ``c_i = xs[((2 i + 1) n) // (2 k)]``.
    Then up to ``max_iter`` times::

        assign: code(x) = #{i : x > (c_{i-1} + c_i) * 0.5}      (float64, ties lower)
        if the assignment equals the previous one (Lloyd has converged):
            move one centroid by :func:`relocate`; stop if it finds no move,
            else assign again with the moved centroids
        update: c_i = (sequential sum of the row's values with code i, in sorted
                order) / count;  an empty cluster keeps its centroid

    So at most ``max_iter`` updates, moves included.  Rows stop independently.

    Why the moves: plain Lloyd from quantiles stops at the first fixed point, and with
    16 centroids on 64 values (about 4 per cluster) nearly every partition near the
    quantile start is one: N(0,1) rows of 64 end at 2.8x the error of ``kmeans-optimal``
    (it converges in ~10 updates; more do not help).  Iterations are not short, and the
    start has no empty clusters on distinct values; a local minimum is the cause.  A move
    takes the centroid that is cheapest to lose to the cluster whose split gains most,
    both exact in closed form (:func:`between`), only when the squared error falls; Lloyd
    then resumes, which can only lower it further, so no partition repeats.  On those
    rows: 1.07x the optimum's error at 4 bits, 1.04x at 2 (Lloyd alone: 2.8x, 1.05x).
    An empty cluster (equal starting quantiles, from tied values) costs nothing to lose,
    so it is moved to where a split helps.
    """
    n_rows, n = xs.shape
    c = xs[:, ((2 * np.arange(k) + 1) * n) // (2 * k)].copy()
    P = prefix_sum(xs)
    prev = np.full(xs.shape, -1, np.int64)
    active = np.arange(n_rows)
    for _ in range(max_iter):
        if not active.size:
            break
        codes = _lloyd_codes(xs[active], c[active])
        settled = np.flatnonzero((codes == prev[active]).all(axis=1))   # Lloyd converged
        if settled.size:
            rows = active[settled]
            moved_c, moved = relocate(xs[rows], P[rows], codes[settled], c[rows])
            c[rows[moved]] = moved_c[moved]
            codes[settled[moved]] = _lloyd_codes(xs[rows[moved]], moved_c[moved])
            keep = np.ones(active.size, bool)
            keep[settled[~moved]] = False                                # no move: done
            active, codes = active[keep], codes[keep]
        prev[active] = codes
        xa, ca = xs[active], c[active]
        sums = _cluster_sums(xa, codes, k)
        counts = _cluster_sums(np.ones_like(xa), codes, k)
        with np.errstate(invalid="ignore", divide="ignore"):
            c[active] = np.where(counts > 0, sums / counts, ca)
    return c


def _lloyd_codes(xs, c):
    """Lloyd's assignment: ``#{i : x > (c_{i-1} + c_i) * 0.5}`` (int64)."""
    mids = (c[:, :-1] + c[:, 1:]) * 0.5
    codes = np.zeros(xs.shape, np.int64)
    for i in range(c.shape[1] - 1):
        codes += xs > mids[:, i:i + 1]
    return codes


def between(s1: Float64Array, m1: Float64Array, s2: Float64Array,
            m2: Float64Array) -> Float64Array:
    """Squared error added by merging two clusters of sums ``s1, s2`` and counts
    ``m1, m2`` (float64): ``(m1 * m2) / (m1 + m2) * d * d`` with ``d = s1 / m1 - s2 / m2``,
    in this order (the two clusters' sizes times the squared distance of their means)."""
    d = s1 / m1 - s2 / m2
    return ((m1 * m2) / (m1 + m2)) * (d * d)


def relocate(xs: Float64Array, P: Float64Array, codes: Int64Array,
             c: Float64Array) -> tuple[Float64Array, NDArray[np.bool_]]:
    """One split-merge move of Lloyd's centroids (:func:`lloyd_centroids`) for R rows.

    Parameters
    ----------
    xs : float64 [R, n]
        The sorted rows.
    P : float64 [R, n + 1]
        Their prefix sums (:func:`prefix_sum`).
    codes : int64 [R, n]
        Lloyd's converged assignment (non-decreasing along each row: cluster ``i`` is
        the points ``[a_i, a_{i+1})``, ``a_i = #{t : codes_t < i}``).
    c : float64 [R, k]
        The centroids.

    Returns
    -------
    (float64 [R, k] moved centroids, sorted; bool [R]: whether a row moved).  Rows that
    did not move keep ``c``.

    Notes
    -----
    With ``m_i = a_{i+1} - a_i`` and ``S_i = P[a_{i+1}] - P[a_i]`` (float64), and
    :func:`between` for every merge or split::

        gain_j = max over a_j < t < a_{j+1} of between(P[t] - P[a_j], t - a_j,
                                                       P[a_{j+1}] - P[t], a_{j+1} - t)
                 (the first t of the maximum; -inf when m_j < 2)
        cost_i = 0 for an empty cluster (partner i); else the cheaper of
                 between(S_i, m_i, S_q, m_q) for a non-empty neighbour q = i - 1, i + 1
                 (the lower one on a tie; inf without one)
        move   = the first (i, j) in row-major order of the largest gain_j - cost_i
                 with j != i and j != partner(i); made only when that is > 0

    The move sets ``c_q = (S_i + S_q) / (m_i + m_q)`` for the partner q (skipped when
    cluster i is empty), then ``c_i = (P[a_{j+1}] - P[t]) / (a_{j+1} - t)`` and
    ``c_j = (P[t] - P[a_j]) / (t - a_j)`` for the cut t of cluster j, and sorts.
    """
    n_rows, n = xs.shape
    k = c.shape[1]
    rows = np.arange(n_rows)
    r = rows[:, None]
    a = np.zeros((n_rows, k + 1), np.int64)                  # cluster i: points [a_i, a_i+1)
    for i in range(1, k + 1):
        a[:, i] = (codes < i).sum(axis=1)
    m = (a[:, 1:] - a[:, :-1]).astype(F64)
    S = P[r, a[:, 1:]] - P[r, a[:, :-1]]
    with np.errstate(invalid="ignore", divide="ignore"):    # masked cells divide by 0
        gain, cut = _split_gains(P, codes, a, k)
        cost, partner = _merge_costs(S, m)
    # the move: the first best (i, j) in row-major order, j neither i nor i's partner
    idx = np.arange(k)
    value = gain[:, None, :] - cost[:, :, None]                              # [R, i, j]
    col = idx[None, None, :]
    allowed = (col != idx[None, :, None]) & (col != partner[:, :, None])
    value = np.where(allowed, value, -np.inf).reshape(n_rows, k * k)
    pick = value.argmax(axis=1)
    moved = value[rows, pick] > 0
    i, j = pick // k, pick % k
    q = partner[rows, i]
    lo, hi, t = a[rows, j], a[rows, j + 1], cut[rows, j]
    out = c.copy()
    with np.errstate(invalid="ignore", divide="ignore"):    # rows that do not move
        merged = (S[rows, i] + S[rows, q]) / (m[rows, i] + m[rows, q])
        out[rows, q] = np.where(m[rows, i] > 0, merged, out[rows, q])
        out[rows, i] = (P[rows, hi] - P[rows, t]) / (hi - t).astype(F64)
        out[rows, j] = (P[rows, t] - P[rows, lo]) / (t - lo).astype(F64)
    return np.where(moved[:, None], np.sort(out, axis=1), c), moved


def _split_gains(P, codes, a, k):
    """Best split of each cluster (:func:`relocate`): gain float64 [R, k] (-inf when it
    has fewer than 2 points) and the cut t int64 [R, k] (the first of the best)."""
    n_rows, n = codes.shape
    r = np.arange(n_rows)[:, None]
    t = np.arange(1, n)                               # a cut before point t ...
    j = codes[:, 1:]                                  # ... of t's cluster j ...
    lo, hi = np.take_along_axis(a, j, axis=1), np.take_along_axis(a, j + 1, axis=1)
    g = between(P[:, 1:n] - P[r, lo], (t - lo).astype(F64), P[r, hi] - P[:, 1:n],
                (hi - t).astype(F64))
    g = np.where(codes[:, :-1] == j, g, -np.inf)      # ... when point t - 1 is in j too
    gain, cut = np.full((n_rows, k), -np.inf), np.zeros((n_rows, k), np.int64)
    for cl in range(k if n > 1 else 0):               # (one point: nothing to split)
        g_cl = np.where(j == cl, g, -np.inf)
        best = g_cl.argmax(axis=1)
        gain[:, cl], cut[:, cl] = g_cl[r[:, 0], best], best + 1
    return gain, cut


def _merge_costs(S, m):
    """Cheapest merge of each cluster (:func:`relocate`): cost float64 [R, k] and the
    partner int64 [R, k]; an empty cluster costs 0 with itself as partner."""
    k = S.shape[1]
    both = (m[:, 1:] > 0) & (m[:, :-1] > 0)
    left, right = np.full(S.shape, np.inf), np.full(S.shape, np.inf)
    left[:, 1:] = np.where(both, between(S[:, 1:], m[:, 1:], S[:, :-1], m[:, :-1]), np.inf)
    right[:, :-1] = np.where(both, between(S[:, :-1], m[:, :-1], S[:, 1:], m[:, 1:]), np.inf)
    idx = np.broadcast_to(np.arange(k), S.shape)
    cost = np.where(m > 0, np.minimum(left, right), 0.0)
    partner = np.where(m > 0, np.where(right < left, idx + 1, idx - 1), idx)
    return cost, partner


# --------------------------------------------------------------------------- exact DP

def prefix_sum(a: Float64Array) -> Float64Array:
    """Sequential prefix sums [R, n + 1] (first column 0) of ``a`` float64 [R, n]."""
    p = np.zeros((a.shape[0], a.shape[1] + 1), F64)
    p[:, 1:] = np.cumsum(a, axis=1)              # add.accumulate: strictly sequential
    return p


def prefix_sums(s: Float64Array, q: Float64Array, w: Float64Array) -> list[Float64Array]:
    """Sequential prefix sums [R, n + 1] (first column 0) of per-point sums, squares, counts."""
    return [prefix_sum(a) for a in (s, q, w)]


def _cost(P1, P2, PW, r, a, b):
    s = P1[r, b] - P1[r, a]
    q = P2[r, b] - P2[r, a]
    return q - (s * s) * (1.0 / (PW[r, b] - PW[r, a]))


def optimal_partition(P1: Float64Array, P2: Float64Array, PW: Float64Array, k: int) -> Int64Array:
    """Optimal split of n sorted points into ``k`` contiguous clusters, for each of R rows.

    Parameters
    ----------
    P1, P2, PW : float64 [R, n + 1]
        Prefix sums (:func:`prefix_sums`) of the points' (shifted) sums, sums of squares
        and counts.  ``k <= n``.

    Returns
    -------
    int64 [R, k + 1]: cluster i is points ``[bounds[i], bounds[i + 1])``.

    Notes
    -----
    Cost of points [a, b) (float64, this order)::

        s = P1[b] - P1[a];  q = P2[b] - P2[a];  cost = q - (s * s) * (1.0 / (PW[b] - PW[a]))

    ``F_1(b) = cost(0, b)`` and ``F_j(b) = min over a in [j-1, b-1] of F_{j-1}(a) + cost(a, b)``
    for ``j <= b <= n - (k - j)`` (only ``b = n`` at ``j = k``); the least ``a`` wins a tie.
    Each layer is solved by divide and conquer on the monotone argmin (Wang & Song 2011)::

        solve(b_lo, b_hi, a_lo, a_hi):
            mid = (b_lo + b_hi) // 2
            scan a = a_lo .. min(a_hi, mid - 1) ascending, keep the first strict minimum
            solve(b_lo, mid - 1, a_lo, best);  solve(mid + 1, b_hi, best, a_hi)

    starting from ``(j, n - (k - j), j - 1, n - 1)``; O(k n log n).  The recursion is
    evaluated here level by level, vectorized over rows and nodes (nodes are independent,
    so the result equals the depth-first recursion of ``qe4_fast``).
    """
    n_rows, n = P1.shape[0], P1.shape[1] - 1
    rows = np.arange(n_rows)
    F = np.full((n_rows, n + 1), np.inf)
    last1 = n if k == 1 else n - (k - 1)
    b1 = np.arange(1, last1 + 1)
    F[:, 1:last1 + 1] = _cost(P1, P2, PW, rows[:, None], 0, b1[None, :])
    arg = []
    for j in range(2, k + 1):
        b_lo, b_hi = (n, n) if j == k else (j, n - (k - j))
        G = np.full((n_rows, n + 1), np.inf)
        A = np.zeros((n_rows, n + 1), np.int64)
        lo, hi = np.array([b_lo]), np.array([b_hi])                        # nodes [m]
        a_lo, a_top = np.full((1, n_rows), j - 1), np.full((1, n_rows), n - 1)  # [m, R]
        while lo.size:
            mids = (lo + hi) // 2
            a_hi = np.minimum(a_top, mids[:, None] - 1)
            cnt = (a_hi - a_lo + 1).ravel()
            starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
            seg = np.repeat(np.arange(cnt.size), cnt)
            a = a_lo.ravel()[seg] + (np.arange(seg.size) - starts[seg])
            r, b = seg % n_rows, mids[seg // n_rows]
            val = F[r, a] + _cost(P1, P2, PW, r, a, b)
            best = np.minimum.reduceat(val, starts)
            best_a = np.minimum.reduceat(np.where(val == best[seg], a, n + 1), starts)
            best, best_a = best.reshape(lo.size, n_rows), best_a.reshape(lo.size, n_rows)
            G[:, mids] = best.T
            A[:, mids] = best_a.T
            left, right = lo <= mids - 1, mids + 1 <= hi
            lo, hi = np.concatenate([lo[left], mids[right] + 1]), np.concatenate([mids[left] - 1, hi[right]])
            a_lo, a_top = (np.concatenate([a_lo[left], best_a[right]]),
                           np.concatenate([best_a[left], a_top[right]]))
        F = G
        arg.append(A)
    bounds = np.zeros((n_rows, k + 1), np.int64)
    bounds[:, k] = n
    for j in range(k, 1, -1):
        bounds[:, j - 1] = arg[j - 2][rows, bounds[:, j]]
    return bounds


def partition_centroids(s: Float64Array, w: Float64Array, bounds: Int64Array,
                        shift: Float64Array | float, k_out: int) -> Float64Array:
    """float64 centroids [R, k_out] of a partition: ``shift + S / m`` per cluster.

    ``S`` sums the clusters' point sums ``s`` sequentially in point order, ``m`` their
    counts ``w``.  Clusters beyond the partition's (fewer points than ``k_out``) repeat
    the last centroid.
    """
    n_rows, n = s.shape
    k = bounds.shape[1] - 1
    t = np.arange(n)
    cluster = np.zeros((n_rows, n), np.int64)
    for i in range(1, k):
        cluster += t[None, :] >= bounds[:, i:i + 1]
    c = shift[:, None] + _cluster_sums(s, cluster, k) / _cluster_sums(w, cluster, k)
    if k < k_out:
        c = np.concatenate([c, np.repeat(c[:, -1:], k_out - k, axis=1)], axis=1)
    return c


def row_optimal_centroids(xs: Float64Array, k: int) -> Float64Array:
    """Exact 1-D k-means centroids (float64 [R, k]) of each sorted row ``xs`` [R, n].

    Points are the row's values shifted by its middle element ``shift = xs[n // 2]``:
    ``s = xs - shift``, ``q = s * s``, ``w = 1`` (:func:`optimal_partition`,
    :func:`partition_centroids`); ``min(k, n)`` clusters.
    """
    n = xs.shape[1]
    shift = xs[:, n // 2].copy()
    s = xs - shift[:, None]
    w = np.ones_like(s)
    bounds = optimal_partition(*prefix_sums(s, s * s, w), min(k, n))
    return partition_centroids(s, w, bounds, shift, k)


# --------------------------------------------------------------------------- two-tier

def grid_shape(n_groups: int) -> tuple[int, int]:
    """(g1, g2): g1 the largest divisor of n_groups with g1 <= sqrt(n_groups)."""
    g1 = max(d for d in range(1, int(np.sqrt(n_groups)) + 1) if n_groups % d == 0)
    return g1, n_groups // g1


def _equal_slices(order, n_parts):
    """Slice index of each position of ``order``: position p is in slice i when
    ``i * len // n_parts <= p < (i + 1) * len // n_parts``."""
    bounds = (np.arange(n_parts + 1) * len(order)) // n_parts
    return np.searchsorted(bounds, np.arange(len(order)), side="right") - 1


def group_ids(x: Float32Array, n_groups: int) -> Int64Array:
    """Group of each row (int64 [n_rows]): a g1 x g2 grid on the ranks of min and max.

    Rows are ranked by their minimum (stable: ties by row index) and cut into g1
    equal-count slices; each slice is ranked by the rows' maximum (stable) and cut into
    g2 slices; group = i1 * g2 + i2 (:func:`grid_shape`).  Rows of similar range share a
    codebook, which adapts its levels to their common spread and tails.
    """
    g1, g2 = grid_shape(n_groups)
    lo, hi = x.min(axis=1) + F32(0.0), x.max(axis=1) + F32(0.0)
    order = np.argsort(lo, kind="stable")
    gid = np.empty(x.shape[0], np.int64)
    i1 = _equal_slices(order, g1)
    for i in range(g1):
        rows = order[i1 == i]
        sub = rows[np.argsort(hi[rows], kind="stable")]
        gid[sub] = i * g2 + _equal_slices(sub, g2)
    return gid


def bin_keys(v: Float32Array) -> Float32Array:
    """Bin of each float32 value: rounded to 11 significant bits (nearest-even on the
    float32 bit pattern), ``-0.0`` made ``+0.0``.  Monotone, so bins are intervals."""
    u = np.ascontiguousarray(v, F32).view(np.uint32)
    r = (u + np.uint32(0x0FFF) + ((u >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return r.view(F32) + F32(0.0)


def group_points(x: Float32Array,
                 rows: IntArray) -> tuple[Float64Array, Float64Array, Float64Array, np.float64]:
    """Binned points of a group: (s, q, w, shift), float64 [n_bins] and a float64 shift.

    The group's values in row-major order (rows ascending) are binned by
    :func:`bin_keys`; ``shift`` = the key of bin ``n_bins // 2``; per bin, ``s`` and ``q``
    sum ``y = x - shift`` and ``y * y`` sequentially in that order, ``w`` counts.
    """
    v = x[rows].ravel()
    keys, inv = np.unique(bin_keys(v), return_inverse=True)
    shift = F64(keys[keys.size // 2])
    y = v.astype(F64) - shift
    nb = keys.size
    return (np.bincount(inv, y, nb), np.bincount(inv, y * y, nb),
            np.bincount(inv, minlength=nb).astype(F64), shift)


def two_tier_codebooks(x: Float32Array, bits: int, n_groups: int,
                       scale_dtype: str) -> tuple[Int64Array, Float32Array]:
    """The two-tier method: each row's group (:func:`group_ids`) and the groups' stored
    codebooks (:func:`group_codebooks`); returns (gid int64 [n_rows], float32 [n_groups, K])."""
    gid = group_ids(x, n_groups)
    return gid, group_codebooks(x, gid, n_groups, 2 ** bits, scale_dtype)


def group_codebooks(x: Float32Array, gid: Int64Array, n_groups: int, k: int,
                    scale_dtype: str) -> Float32Array:
    """float32 [n_groups, k] stored codebooks: exact 1-D k-means of each group's binned
    values (:func:`group_points`, :func:`optimal_partition`), then :func:`store_centroids`.

    The optimum is over partitions that keep each bin whole.  An empty group gets zeros.
    """
    books = np.zeros((n_groups, k), F64)
    order = np.argsort(gid, kind="stable")
    edges = np.searchsorted(gid[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        rows = order[edges[g]:edges[g + 1]]
        if rows.size:
            books[g] = _points_centroids(*group_points(x, rows), k)
    return store_centroids(books, scale_dtype)


def _points_centroids(s, q, w, shift, k):
    s, q, w = s[None], q[None], w[None]
    bounds = optimal_partition(*prefix_sums(s, q, w), min(k, s.shape[1]))
    return partition_centroids(s, w, bounds, np.array([shift]), k)[0]


# --------------------------------------------------------------------------- fixed codebooks

def check_books(books: ArrayLike) -> Float32Array:
    """Stored codebooks (float16/float32 [n_groups, K]) as float32, refused unless every
    centroid is finite and each codebook is sorted ascending (the layout's rule, which
    :func:`assign_codes` and the compiled binary search rely on)."""
    b = np.asarray(books).astype(F32)
    V.check_finite(b, "extras['codebooks']")
    bad = np.argwhere(b[:, 1:] < b[:, :-1])
    if bad.size:
        g, k = map(int, bad[0])
        raise ValueError(f"extras['codebooks'][{g}] is not sorted ascending: centroid {k + 1} "
                         f"= {b[g, k + 1]!r} < centroid {k} = {b[g, k]!r}")
    return b


def book_errors(x: Float32Array, books: Float32Array) -> Float64Array:
    """float64 [n_rows, n_books]: the squared error of encoding each row of ``x`` with each
    sorted codebook ``books`` float32 [n_books, K] (codes by :func:`assign_codes`)::

        d_j = float64(x_j) - float64(c[code_j]);   err = sum of d_j * d_j, j = 0 .. dim-1

    float64, each product rounded, summed sequentially in column order (float64 cannot
    overflow here: every term is below 2**258).
    """
    n, m = x.shape[0], books.shape[0]
    xr = np.repeat(np.asarray(x, F32), m, axis=0)                  # row i, book g at i * m + g
    cents = np.tile(books, (n, 1))
    codes = assign_codes(xr, cents)
    d = xr.astype(F64) - np.take_along_axis(cents.astype(F64), codes.astype(np.intp), axis=1)
    return np.cumsum(d * d, axis=1)[:, -1].reshape(n, m)           # add.accumulate: sequential


def best_books(x: Float32Array, books: Float32Array) -> Int64Array:
    """int64 [n_rows]: for each row of ``x``, the codebook of ``books`` [n_books, K] with the
    smallest :func:`book_errors`, ties to the lower index.  Computed in blocks of about
    ``_CHUNK_CELLS`` (row, book, column) cells, a running minimum over books ascending (so
    a later book replaces the best only when strictly better)."""
    n, dim = x.shape
    m = books.shape[0]
    pairs = max(1, _CHUNK_CELLS // max(1, dim))
    rstep, gstep = max(1, pairs // m), min(m, pairs)
    out = np.empty(n, np.int64)
    for r0 in range(0, n, rstep):
        xc = x[r0:r0 + rstep]
        best, arg = np.full(xc.shape[0], np.inf), np.zeros(xc.shape[0], np.int64)
        for g0 in range(0, m, gstep):
            err = book_errors(xc, books[g0:g0 + gstep])
            j = err.argmin(axis=1)                                  # the first minimum
            e = err[np.arange(xc.shape[0]), j]
            better = e < best
            best, arg = np.where(better, e, best), np.where(better, g0 + j, arg)
        out[r0:r0 + rstep] = arg
    return out


def encode_with_books(x: Float32Array, books: Float32Array, bits: int,
                      scale_dtype: str) -> UInt8Array:
    """Two-tier rows ``[packed codes][group id]`` of ``x`` against fixed codebooks ``books``
    float32 [n_groups, K] (:func:`check_books`): each row's group is :func:`best_books`,
    its codes :func:`assign_codes` with that group's codebook (the two-tier encoder's rule).
    Rows are independent: the bytes of a row depend only on it and ``books``."""
    gid = best_books(x, books)
    return two_tier_rows(assign_codes(x, books[gid]), gid, books, bits, scale_dtype)[0]
