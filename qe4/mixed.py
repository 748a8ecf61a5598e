"""Mixed-precision tables: rows grouped by their rung into sub-tables, plus a compact row map.

The row map (``row_map="tiers"``)
---------------------------------
Row ``r`` of a table with ``T`` tiers (the rungs its rows use, in ladder order) lives
in tier ``tier(r)`` at position ``rank(r)`` = the number of rows before ``r`` in the
same tier (each sub-table keeps its rows in their original order).  Stored:

``planes`` : uint64 [ceil(n_rows / 64), b], ``b = ceil(log2 T)`` (0 when ``T == 1``)
    Bit ``r % 64`` of ``planes[r // 64, k]`` is bit ``k`` of ``tier(r)``.  Bits of
    rows past ``n_rows`` are 0.
``ranks`` : uint32 [ceil(n_rows / 256), T]
    ``ranks[s, t]`` = number of rows of tier ``t`` among rows ``0 .. 256 s - 1``.

So ``rank(r) = ranks[r // 256, t] + popcount`` of the tier-``t`` rows among
``256 (r // 256) .. r - 1``: at most four 64-bit words, each the AND over ``k`` of
``planes[w, k]`` (bit ``k`` of ``t`` set) or its complement.  A 6-rung ladder takes
3 bits per row plus 6 x 4 bytes per 256 rows: 0.47 bytes per row.

``row_map="renumber"`` stores no per-row map: the rows are renumbered tier by tier
(the caller maps its ids with the returned permutation) and only the tier sizes are
kept.  Either way the tier sizes (int64 [T]) are stored and counted.
"""

import numpy as np

ROW_MAPS = ("tiers", "renumber")
WORD = 64                      # rows per plane word
SUPER = 256                    # rows per rank directory entry
_WORDS_PER_SUPER = SUPER // WORD


def tier_bits(n_tiers):
    """Bits of tier code per row: ``ceil(log2(n_tiers))`` (0 for a single tier)."""
    return int(n_tiers - 1).bit_length()


def map_nbytes(n_rows, n_tiers, row_map="tiers"):
    """Bytes of the row map and tier sizes of a mixed table (what :func:`qe4.allocate` counts)."""
    sizes = 8 * n_tiers
    if row_map == "renumber" or n_tiers <= 1:
        return sizes
    b = tier_bits(n_tiers)
    return sizes + -(-n_rows // WORD) * b * 8 + -(-n_rows // SUPER) * n_tiers * 4


def encode_map(tier, n_tiers):
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


def _match(planes, words, tier):
    """uint64 mask of the rows of ``words`` whose tier equals ``tier`` (element-wise)."""
    out = np.full(words.shape, ~np.uint64(0), np.uint64)
    for k in range(planes.shape[1]):
        p = planes[words, k]
        out &= np.where(((tier >> k) & 1).astype(bool), p, ~p)
    return out


def decode_map(planes, ranks, rows):
    """(tier, rank) of each of ``rows`` (int64 arrays, rows in range)."""
    rows = np.asarray(rows, np.int64)
    if planes.shape[1] == 0:                 # one tier: the row is its own rank
        return np.zeros(rows.shape, np.int64), rows.copy()
    w = rows >> 6
    bit = (rows & 63).astype(np.uint64)
    tier = np.zeros(rows.shape, np.int64)
    for k in range(planes.shape[1]):
        tier |= ((planes[w, k] >> bit) & np.uint64(1)).astype(np.int64) << k
    rank = ranks[rows >> 8, tier].astype(np.int64)
    first = (rows >> 8) * _WORDS_PER_SUPER
    below = (np.uint64(1) << bit) - np.uint64(1)          # the rows before r in its word
    for j in range(_WORDS_PER_SUPER):
        v = first + j
        use = v <= w
        m = _match(planes, np.minimum(v, w), tier)
        m &= np.where(v < w, ~np.uint64(0), below)
        rank += np.where(use, np.bitwise_count(m), 0)
    return tier, rank
