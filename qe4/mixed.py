"""Mixed-precision tables: rows grouped by their rung into sub-tables, plus a compact row map.

:func:`qe4.allocate` chooses a rung (pruned, a quantization method and bit width,
float16, float32) for every row; :func:`quantize_mixed` stores the table as a
:class:`qe4.QuantizedTable` of layout ``"mixed"``:

``extras["tiers"]`` : int32 [T, 4]
    One line per *tier* (a rung the table's rows use, in ladder order):
    ``(kind, bits, float dtype, n_rows)``.  ``kind`` is the code of the sub-table's
    layout (:mod:`qe4.layouts`), ``PRUNED`` (-1: no rows stored, the rows read as zeros,
    torch's -1 rule) or ``FLOAT`` (-2: the rows' values, ``bits`` 16 or 32);
    ``float dtype`` is 0 for float16, 1 for float32 (the sub-table's scale/centroid
    dtype, or the values' dtype).
``extras["tier<t>"]``
    Tier ``t``'s rows in their original order: the uint8 rows of its layout, or
    float16/float32 values [n_rows_t, dim]; absent for a pruned tier.
``extras["planes"]``, ``extras["ranks"]``
    The row map (below); absent with one tier or ``row_map="renumber"``.
``data``
    uint8 [n_rows, 0]: every byte lives in the extras.  ``QuantizedTable.nbytes``
    counts them all.
``params``
    ``{"rungs": [rung name of each tier], "row_map": "tiers" | "renumber"}``.

The row map (``row_map="tiers"``)
---------------------------------
Row ``r`` of a table with ``T`` tiers lives in tier ``tier(r)`` at position
``rank(r)`` = the number of rows before ``r`` in the same tier.  Stored:

``planes`` : uint64 [ceil(n_rows / 64), b], ``b = ceil(log2 T)``
    Bit ``r % 64`` of ``planes[r // 64, k]`` is bit ``k`` of ``tier(r)``.  Bits of
    rows past ``n_rows`` are 0.
``ranks`` : uint32 [ceil(n_rows / 256), T]
    ``ranks[s, t]`` = number of rows of tier ``t`` among rows ``0 .. 256 s - 1``.

So ``rank(r) = ranks[r // 256, t] + popcount`` of the tier-``t`` rows among
``256 (r // 256) .. r - 1``: at most four 64-bit words, each the AND over ``k`` of
``planes[w, k]`` (bit ``k`` of ``t`` set) or its complement.  A 6-tier table takes
3 bits per row plus 6 x 4 bytes per 256 rows: 0.47 bytes per row.

``row_map="renumber"`` stores no per-row map: the rows are renumbered tier by tier
(:func:`renumbering` gives the permutation; the caller maps its ids with it),
so tier ``t`` holds rows ``sum(n_rows[:t]) ..`` in order.

Lookups
-------
``dequantize``: each stored row as its tier reconstructs it; pruned rows are zeros.

``embedding_bag`` (sum, mean, weighted sum), in this order, which torch and FBGEMM
reproduce by serving one table per tier with a row mapping (``-1`` for the rows of
other tiers)::

    out = 0 (float32 [n_bags, dim])
    for each tier t that is not pruned, in order:
        B_t = the bag, in position order, of the positions whose row is in tier t, read
              from tier t's sub-table at rank(row): its layout's own embedding bag
              (qe4.embedding_bag, mode "sum") or, for float rows, acc = fma(w, v, acc)
        out = out + B_t
    mean: out *= float32(1 / len(bag)) for non-empty bags, len counting every
          position (pruned ones included, as torch's pruned lookups count them)

Pruned rows contribute nothing (and are not read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .allocate import Rung
    from .table import QuantizedTable
    from ._typing import Float32Array, Int64Array, IntArray

from . import layouts as L
from .layouts import (FLOAT, MAX_ROWS, MAX_TIERS, PRUNED, SUPER, TIER_FIELDS, WORD,  # noqa: F401
                      match_words, tier_bits)

ROW_MAPS = ("tiers", "renumber")
FLOAT_DTYPES = L.FLOAT_DTYPES
_WORDS_PER_SUPER = SUPER // WORD


def map_nbytes(n_rows: int, n_tiers: int, row_map: str = "tiers") -> int:
    """Bytes a mixed table stores beside its sub-tables' rows: the tier table
    (``tiers``, int32 [T, 4]) and the row map (what :func:`qe4.allocate` counts)."""
    sizes = TIER_FIELDS * 4 * n_tiers
    if row_map == "renumber" or n_tiers <= 1:
        return sizes
    b = tier_bits(n_tiers)
    return sizes + -(-n_rows // WORD) * b * 8 + -(-n_rows // SUPER) * n_tiers * 4


def encode_map(tier: IntArray, n_tiers: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """(planes, ranks) of the tier code of every row (see the module docstring).

    Parameters
    ----------
    tier : integer ndarray [n_rows], values in [0, n_tiers)
    n_tiers : int
    """
    tier = np.asarray(tier, np.int64)
    n = tier.size
    b = tier_bits(n_tiers)
    n_words = -(-n // WORD)
    padded = np.zeros(n_words * WORD, np.uint64)
    padded[:n] = tier
    bits = padded.reshape(n_words, WORD)
    weights = np.uint64(1) << np.arange(WORD, dtype=np.uint64)
    planes = np.empty((n_words, b), np.uint64)
    for k in range(b):
        planes[:, k] = (((bits >> np.uint64(k)) & np.uint64(1)) * weights).sum(axis=1,
                                                                               dtype=np.uint64)
    n_super = -(-n // SUPER)
    counts = np.zeros((n_super, n_tiers), np.int64)
    if n:
        np.add.at(counts, (np.arange(n) // SUPER, tier), 1)
    ranks = np.zeros((n_super, n_tiers), np.uint32)
    ranks[1:] = np.cumsum(counts, axis=0)[:-1]
    return planes, ranks


def decode_map(planes: NDArray[Any], ranks: NDArray[Any],
               rows: Int64Array) -> tuple[Int64Array, Int64Array]:
    """(tier, rank) of each of ``rows`` (int64 arrays, rows in range)."""
    rows = np.asarray(rows, np.int64)
    if planes.shape[1] == 0:                 # one tier: the row is its own rank
        return np.zeros(rows.shape, np.int64), rows.copy()
    w = rows >> 6
    bit = (rows & 63).astype(np.uint64)
    tier = np.zeros(rows.shape, np.int64)
    for k in range(planes.shape[1]):
        tier |= ((planes[w, k] >> bit) & np.uint64(1)).astype(np.int64) << k
    if tier.size and tier.max() >= ranks.shape[1]:
        p = int(np.argmax(tier >= ranks.shape[1]))
        raise ValueError(f"the row map gives row {int(rows[p])} tier {int(tier[p])} of "
                         f"{ranks.shape[1]}: the table's bytes were changed after it was built")
    rank = ranks[rows >> 8, tier].astype(np.int64)
    first = (rows >> 8) * _WORDS_PER_SUPER
    below = (np.uint64(1) << bit) - np.uint64(1)          # the rows before r in its word
    for j in range(_WORDS_PER_SUPER):
        v = first + j
        use = v <= w
        m = match_words(planes, np.minimum(v, w), tier)
        m &= np.where(v < w, ~np.uint64(0), below)
        rank += np.where(use, np.bitwise_count(m), 0)
    return tier, rank


# --------------------------------------------------------------------------- tiers

def tier_kinds(extras: Mapping[str, NDArray[Any]]) -> Int64Array:
    """The tier table as int64 [T, 4] (kind, bits, float dtype, n_rows)."""
    return np.asarray(extras["tiers"], np.int64)


def sub_table(extras: Mapping[str, NDArray[Any]], t: int,
              dim: int) -> QuantizedTable | NDArray[Any] | None:
    """Tier ``t``'s rows: a QuantizedTable, a float array [n_t, dim] or None (pruned)."""
    from .table import QuantizedTable
    kind, bits, fdt, n = (int(v) for v in tier_kinds(extras)[t])
    if kind == PRUNED:
        return None
    rows = extras[f"tier{t}"]
    if kind == FLOAT:
        return rows
    layout = L.LAYOUTS["mixed"].tier_layout(kind).name
    return QuantizedTable(rows, bits=bits, dim=dim, method="mixed-tier",
                          scale_dtype=FLOAT_DTYPES[fdt], layout=layout)


def tier_of_rows(extras: Mapping[str, NDArray[Any]], n_rows: int) -> Int64Array:
    """The tier of every row, int64 [n_rows]."""
    sizes = tier_kinds(extras)[:, 3]
    if "planes" not in extras:
        return np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    planes = extras["planes"]
    bits = np.zeros((planes.shape[0], 64), np.int64)
    shifts = np.arange(64, dtype=np.uint64)
    for k in range(planes.shape[1]):
        bits |= ((planes[:, k:k + 1] >> shifts) & np.uint64(1)).astype(np.int64) << k
    return bits.reshape(-1)[:n_rows]


def locate(extras: Mapping[str, NDArray[Any]], rows: Int64Array) -> tuple[Int64Array, Int64Array]:
    """(tier, rank) of each of ``rows`` (int64, in range): where the row is stored."""
    rows = np.asarray(rows, np.int64)
    if "planes" in extras:
        return decode_map(extras["planes"], extras["ranks"], rows)
    sizes = tier_kinds(extras)[:, 3]
    ends = np.cumsum(sizes)
    tier = np.searchsorted(ends, rows, side="right")
    return tier, rows - (ends[tier] - sizes[tier])


# --------------------------------------------------------------------------- build

def quantize_mixed(x: ArrayLike, choice: ArrayLike, rungs: Sequence[str | Rung], *,
                   row_map: str = "tiers", engine: str = "fast",
                   n_threads: int | None = None) -> QuantizedTable:
    """Store the rows of ``x`` each in its chosen rung: a mixed :class:`qe4.QuantizedTable`.

    Parameters
    ----------
    x : float array [n_rows, dim]
    choice : int array [n_rows]
        The rung of each row, an index into ``rungs`` (e.g. ``Allocation.choices[0]``).
    rungs : sequence of str or :class:`qe4.allocate.Rung`
        The ladder ``choice`` indexes.
    row_map : {"tiers", "renumber"}
        See the module docstring.
    engine, n_threads
        Quantize the tiers with the reference or the compiled engine (same bytes).

    Returns
    -------
    QuantizedTable (layout "mixed")
        With ``row_map="renumber"`` its row ``i`` is row ``renumbering(choice)[i]`` of
        ``x``: look rows up by their new numbers.
    """
    from . import _validate as V
    x = V.as_table(x)
    choice = np.asarray(choice)
    if choice.shape != (x.shape[0],):
        raise ValueError(f"choice must have shape ({x.shape[0]},), got {choice.shape}")
    step = CHUNK_ROWS
    chunks = ((a, min(a + step, len(x)), x[a:a + step]) for a in range(0, len(x), step))
    return build_mixed(chunks, choice, rungs, x.shape[1], row_map=row_map, engine=engine,
                       n_threads=n_threads)


CHUNK_ROWS = 1 << 16           # rows quantized at a time (a multiple of SUPER)


def build_mixed(chunks: Iterable[tuple[int, int, Float32Array]], choice: ArrayLike,
                rungs: Sequence[str | Rung], dim: int, *, row_map: str = "tiers",
                engine: str = "fast", n_threads: int | None = None,
                new_array: Callable[..., NDArray[Any]] = np.empty) -> QuantizedTable:
    """A mixed table from its rows given in chunks (what :func:`quantize_mixed` and
    streaming, :func:`qe4.stream.quantize_file_budget`, both use).

    ``chunks`` yields ``(start, stop, x)`` covering the rows in order, float32, every
    ``start`` a multiple of :data:`SUPER`; ``new_array(shape, dtype)`` allocates each
    stored array (``np.empty``, or a memory-mapped file).
    """
    from .allocate import ladder
    from .table import QuantizedTable
    rungs = ladder(rungs)
    if row_map not in ROW_MAPS:
        raise ValueError(f"row_map must be one of {ROW_MAPS}, got {row_map!r}")
    choice = np.asarray(choice)
    if choice.dtype.kind not in "iu" or choice.ndim != 1:
        raise TypeError(f"choice must be a 1-D integer array, got dtype {choice.dtype}")
    n = choice.size
    if n >= MAX_ROWS:
        raise ValueError(f"{n} rows; a mixed table holds fewer than {MAX_ROWS}")
    if n and (choice.min() < 0 or choice.max() >= len(rungs)):
        bad = int(np.argmax((choice < 0) | (choice >= len(rungs))))
        raise ValueError(f"choice[{bad}] = {int(choice[bad])} is not a rung of the "
                         f"{len(rungs)}-rung ladder")
    used = np.flatnonzero(np.bincount(choice, minlength=len(rungs)))
    tier = np.searchsorted(used, choice).astype(np.int8 if used.size < 128 else np.int64)
    sizes = np.bincount(tier, minlength=used.size)
    n_tiers = used.size
    tiers = np.zeros((n_tiers, TIER_FIELDS), np.int32)
    extras = {}
    for t, k in enumerate(used):           # each tier's kind, from a probe row
        probe = rungs[k].quantize(np.zeros((1, dim), np.float32), engine, n_threads)
        if rungs[k].kind == "pruned":
            tiers[t] = (PRUNED, 0, 0, sizes[t])
            continue
        if rungs[k].kind == "float":
            tiers[t] = (FLOAT, 8 * probe.itemsize, FLOAT_DTYPES.index(probe.dtype.name), sizes[t])
            extras[f"tier{t}"] = new_array((sizes[t], dim), probe.dtype)
        else:
            tiers[t] = (L.get(probe.layout).code, probe.bits, FLOAT_DTYPES.index(probe.scale_dtype),
                        sizes[t])
            extras[f"tier{t}"] = new_array((sizes[t], probe.row_bytes), np.uint8)
    mapped = row_map == "tiers" and n_tiers > 1
    if mapped:
        extras["planes"] = new_array((-(-n // WORD), tier_bits(n_tiers)), np.uint64)
        extras["ranks"] = new_array((-(-n // SUPER), n_tiers), np.uint32)
    filled = np.zeros(n_tiers, np.int64)
    below = np.zeros(n_tiers, np.int64)           # rows of each tier before the chunk
    seen = 0
    for start, stop, x in chunks:
        if start != seen or (start % SUPER and start != 0):
            raise ValueError(f"chunks must cover the rows in order from multiples of {SUPER}: "
                             f"got rows {start}..{stop} after {seen}")
        tc = tier[start:stop]
        for t, k in enumerate(used):
            rows = np.flatnonzero(tc == t)
            if rows.size == 0 or tiers[t, 0] == PRUNED:
                continue
            stored = rungs[k].quantize(x[rows], engine, n_threads)
            part = stored if rungs[k].kind == "float" else stored.data
            extras[f"tier{t}"][filled[t]:filled[t] + rows.size] = part
            filled[t] += rows.size
        if mapped:
            planes, ranks = encode_map(tc, n_tiers)
            extras["planes"][start // WORD:start // WORD + planes.shape[0]] = planes
            extras["ranks"][start // SUPER:start // SUPER + ranks.shape[0]] = ranks + below
            below += np.bincount(tc, minlength=n_tiers)
        seen = stop
    if seen != n:
        raise ValueError(f"chunks covered {seen} rows of {n}")
    extras["tiers"] = tiers
    return QuantizedTable(np.zeros((n, 0), np.uint8), bits=8, dim=dim,
                          method="mixed", scale_dtype="float16", layout="mixed", extras=extras,
                          params={"rungs": [rungs[k].name for k in used], "row_map": row_map})


def renumbering(choice: ArrayLike) -> Int64Array:
    """``order`` with ``order[new_row] = original row`` for ``row_map="renumber"``: the rows
    grouped by rung in ladder order, each group in the original order.  A caller
    maps its ids with ``np.argsort(order)[original_id]``."""
    return np.argsort(np.asarray(choice), kind="stable").astype(np.int64)


# --------------------------------------------------------------------------- lookups

def dequantize_mixed(table: QuantizedTable,
                     dequantize: Callable[[QuantizedTable], Float32Array]) -> Float32Array:
    """float32 [n_rows, dim]; ``dequantize(sub_table)`` reconstructs one tier's table
    (qe4.dequantize or qe4_fast's)."""
    extras = table.extras
    out = np.zeros((table.n_rows, table.dim), np.float32)
    tier = tier_of_rows(extras, table.n_rows)
    for t in range(tier_kinds(extras).shape[0]):
        sub = sub_table(extras, t, table.dim)
        if sub is None:
            continue
        rows = np.flatnonzero(tier == t)
        out[rows] = sub.astype(np.float32) if isinstance(sub, np.ndarray) else dequantize(sub)
    return out


def row_values_mixed(table: QuantizedTable, rows: IntArray,
                     row_values: Callable[[QuantizedTable, IntArray], Float32Array],
                     locate: Callable[[Mapping[str, NDArray[Any]], Int64Array],
                                      tuple[Int64Array, Int64Array]] = locate) -> Float32Array:
    """float32 [len(rows), dim]: the stored values of ``rows`` (pruned rows: zeros);
    ``row_values(sub_table, ranks)`` reads a quantized tier's rows and ``locate`` is
    :func:`locate` (qe4's or qe4_fast's)."""
    extras = table.extras
    out = np.zeros((len(rows), table.dim), np.float32)
    tier, rank = locate(extras, rows)
    for t in range(tier_kinds(extras).shape[0]):
        sub = sub_table(extras, t, table.dim)
        mine = np.flatnonzero(tier == t)
        if sub is None or mine.size == 0:
            continue
        out[mine] = (sub[rank[mine]].astype(np.float32) if isinstance(sub, np.ndarray)
                     else row_values(sub, rank[mine]))
    return out


def embedding_bag_mixed(table: QuantizedTable, idx: IntArray, starts: IntArray,
                        weights: Float32Array | None, mode: str, bag: Callable[..., Float32Array],
                        float_bag: Callable[..., Float32Array],
                        locate: Callable[..., tuple[Int64Array, Int64Array]]) -> Float32Array:
    """Bags of a mixed table in the module docstring's order.

    ``idx``, ``starts``, ``weights`` are validated (:func:`qe4._validate.check_bag_args`).
    ``bag(sub_table, rows, starts, weights)`` is a tier's embedding bag (mode sum,
    ``starts`` [n_bags + 1]); ``float_bag(values, rows, starts, weights)`` the same
    for float rows; ``locate(extras, rows)`` is :func:`locate` (qe4_fast passes its
    compiled twins of all three).
    """
    extras = table.extras
    n_bags = starts.size - 1
    out = np.zeros((n_bags, table.dim), np.float32)
    tier, rank = locate(extras, idx)
    for t in range(tier_kinds(extras).shape[0]):
        sub = sub_table(extras, t, table.dim)
        if sub is None:
            continue
        mine = tier == t
        pos = np.flatnonzero(mine)
        sub_starts = np.zeros(idx.size + 1, np.int64)
        np.cumsum(mine, out=sub_starts[1:])
        sub_starts = sub_starts[starts]
        w = None if weights is None else weights[pos]
        f = float_bag if isinstance(sub, np.ndarray) else bag
        out += f(sub, rank[pos], sub_starts, w)
    if mode == "mean":
        lengths = np.diff(starts)
        full = lengths > 0
        out[full] *= (np.float32(1.0) / lengths[full].astype(np.float32))[:, None]
    return out


def float_bag(values: NDArray[Any], rows: IntArray, starts: IntArray,
              weights: Float32Array | None) -> Float32Array:
    """Bags of float rows: per bag, in order, ``acc = fma(w, v, acc)`` (w = 1 unweighted).

    Bags are processed together: step k adds the k-th position of every bag that has one.
    """
    from .rowwise import fma32
    lengths = np.diff(starts)
    out = np.zeros((lengths.size, values.shape[1]), np.float32)
    for k in range(int(lengths.max(initial=0))):
        bags = np.flatnonzero(lengths > k)
        pos = starts[bags] + k
        v = values[rows[pos]].astype(np.float32)
        if weights is None:
            out[bags] = out[bags] + v            # fma(1, v, acc): exact product, one rounding
        else:
            out[bags] = fma32(weights[pos][:, None], v, out[bags])
    return out
