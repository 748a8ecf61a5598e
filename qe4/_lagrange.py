"""Minimum-distortion choice under a byte budget: the exact Lagrangian solver.

The problem: items ``i`` (rows, or whole tables), each with ``K`` options; option ``k``
of item ``i`` costs ``cost[group[i], k]`` bytes (an integer; items of one group share
their costs, e.g. the rows of one table) and has distortion ``dist[i, k]`` (a
non-negative float64, e.g. a row's access weight times its squared error).  Choose one
option per item to minimize the total distortion with total cost ``<= budget``.

The algorithm (Everett's Lagrangian, taken exactly; see :func:`solve`):

1. For each item, the options on the lower convex hull of its points
   ``(cost, dist)``, from the cheapest: start at the cheapest option whose distortion
   is finite (+inf marks an option the item cannot take; the least distortion among
   equally cheap ones, the lowest index on ties) and repeatedly move
   to the costlier option ``j`` with the largest slope
   ``(dist[cur] - dist[j]) / (cost[j] - cost[cur])`` (float64; the lowest ``j`` on
   ties) while that slope is > 0.  Each move is a *segment* with a gain, a cost and
   that slope; along an item's hull the slopes never increase.
2. Every segment of every item is ordered by slope, largest first (ties: lower item
   first, then the item's earlier segment).  The longest prefix of that order whose
   costs fit the budget is taken.  It is the exact minimizer of
   ``dist + lambda * cost`` for ``lambda`` at the first segment left out: no other
   choice spending at most its bytes has less distortion.
3. The integer remainder: the bytes that prefix leaves are filled greedily.
   Repeatedly, among the items' next segments that still fit, take the one with the
   largest slope (same tie rule), until none fits.

Everything is deterministic: float64 arithmetic in a fixed order and explicit tie
rules, no dependence on thread counts.  Step 2 finds the prefix without sorting every
segment: it histograms the slopes' leading bits weighted by cost, finds the bucket the
budget ends in, and sorts only that bucket.
"""

import numpy as np

F64 = np.float64

# Slopes are positive float64: their bit patterns, read as int64, order as the values
# do.  The top 20 bits (exponent and 8 mantissa bits) name a bucket of relative width
# 2**-8; step 2 histograms these.
_BUCKET_SHIFT = 44


def hull(dist, cost):
    """The lower convex hull of each item's options, as segments (step 1 of the module).

    Parameters
    ----------
    dist : float64 ndarray [n, K]
        Non-negative distortions; +inf marks an option the item cannot take.
    cost : int64 ndarray [K]
        The options' costs, shared by the ``n`` items.

    Returns
    -------
    start : intp ndarray [n]
        Each item's cheapest option (its hull's first vertex).
    to : intp ndarray [n, K - 1]
        Option reached by each segment (-1 past the item's last segment).
    dcost : int64 ndarray [n, K - 1]
        Bytes each segment adds (0 past the last segment).
    slope : float64 ndarray [n, K - 1]
        Distortion removed per byte, ``(dist[cur] - dist[to]) / dcost`` (0 past the end).
    """
    n, k = dist.shape
    cost = np.asarray(cost, np.int64)
    # the cheapest available (finite) option, the least distortion among equally
    # cheap ones, the lowest index on ties
    avail = np.isfinite(dist)
    c_av = np.where(avail, cost[None, :], np.iinfo(np.int64).max)
    key = np.where(c_av == c_av.min(axis=1)[:, None], dist, np.inf)
    start = np.argmin(key, axis=1)
    to = np.full((n, max(k - 1, 0)), -1, np.intp)
    dcost = np.zeros((n, max(k - 1, 0)), np.int64)
    slope = np.zeros((n, max(k - 1, 0)), F64)
    cur = start.copy()
    live = np.arange(n)
    for s in range(k - 1):
        c_cur = cost[cur[live]]
        d_cur = dist[live, cur[live]]
        dc = cost[None, :] - c_cur[:, None]                       # [live, K]
        with np.errstate(invalid="ignore", divide="ignore"):
            sl = (d_cur[:, None] - dist[live]) / dc
        sl[dc <= 0] = -np.inf
        nxt = np.argmax(sl, axis=1)                                # the first maximum
        go = sl[np.arange(live.size), nxt] > 0
        live, nxt = live[go], nxt[go]
        if live.size == 0:
            break
        to[live, s] = nxt
        dcost[live, s] = cost[nxt] - cost[cur[live]]
        slope[live, s] = sl[go][np.arange(live.size), nxt]
        cur[live] = nxt
    return start, to, dcost, slope


_BLOCK_ROWS = 1 << 16            # items whose segments step 2 reads at a time


def _segments(to, dcost, slope, a):
    """(flat index within the block, slope, dcost) of the segments of items ``a ..`` (a
    block of :data:`_BLOCK_ROWS`), in tie order: item, then segment."""
    f = np.flatnonzero(to[a:a + _BLOCK_ROWS].reshape(-1) >= 0)
    return f, slope[a:a + _BLOCK_ROWS].reshape(-1)[f], dcost[a:a + _BLOCK_ROWS].reshape(-1)[f]


def _take_prefix(to, dcost, slope, budget):
    """Step 2: how many segments of each item the longest slope-ordered prefix whose
    cost fits ``budget`` takes (int64 [n]), and the bytes it spends.

    The segments are read block by block of items (memory: one block's, beside the
    hulls): a histogram of the slopes' buckets weighted by cost (float64 sums of
    integers, exact below 2**53 bytes in any order) finds the bucket the budget ends
    in, and only that bucket's segments are sorted.
    """
    n, n_seg = to.shape
    n_taken = np.zeros(n, np.int64)
    if n_seg == 0:
        return n_taken, 0
    hist, lo, total = np.zeros(0), None, 0
    for pass_ in range(2):
        for a in range(0, n, _BLOCK_ROWS):
            f, sl, dc = _segments(to, dcost, slope, a)
            if f.size == 0:
                continue
            bucket = sl.view(np.int64) >> _BUCKET_SHIFT
            if pass_ == 0:                  # the lowest bucket and the total cost
                total += int(dc.sum())
                lo = int(bucket.min()) if lo is None else min(lo, int(bucket.min()))
                continue
            h = np.bincount(bucket - lo, weights=dc.astype(F64))
            if h.size > hist.size:
                hist = np.concatenate([hist, np.zeros(h.size - hist.size)])
            hist[:h.size] += h
        if total <= budget:
            return (to >= 0).sum(axis=1).astype(np.int64), total
    # cumulative cost from the steepest bucket down
    above = np.cumsum(hist[::-1])[::-1]                   # above[b]: cost of buckets >= b
    # the boundary bucket: the lowest b whose buckets >= b+1 still fit
    fits = np.concatenate([above[1:], [0.0]]) <= budget
    edge = lo + int(np.argmax(fits))                       # fits is monotone: first True
    spent = 0
    cand_item, cand_slope, cand_cost = [], [], []
    for a in range(0, n, _BLOCK_ROWS):
        f, sl, dc = _segments(to, dcost, slope, a)
        bucket = sl.view(np.int64) >> _BUCKET_SHIFT
        take = bucket > edge
        spent += int(dc[take].sum())
        n_taken[a:a + _BLOCK_ROWS] += np.bincount(f[take] // n_seg,
                                                  minlength=min(_BLOCK_ROWS, n - a))
        on = bucket == edge
        cand_item.append(a + f[on] // n_seg)
        cand_slope.append(sl[on])
        cand_cost.append(dc[on])
    item, sl, dc = (np.concatenate(v) for v in (cand_item, cand_slope, cand_cost))
    # stable sort by decreasing slope keeps the tie order (item, then segment)
    order = np.argsort(-sl, kind="stable")
    csum = spent + np.cumsum(dc[order])
    n_fit = int(np.searchsorted(csum, budget, side="right"))
    np.add.at(n_taken, item[order[:n_fit]], 1)
    if n_fit:
        spent = int(csum[n_fit - 1])
    return n_taken, spent


def solve(dist, cost, group, budget, *, hull=hull):
    """Choose one option per item minimizing total distortion within ``budget`` bytes.

    Parameters
    ----------
    dist : float64 ndarray [n, K]
        Distortion of each item under each option (finite, >= 0).
    cost : int64 ndarray [n_groups, K]
        Bytes of each option for the items of each group.
    group : intp ndarray [n]
        The group of each item, in [0, n_groups).
    budget : int
        Bytes available to the items (fixed overheads already taken off).
    hull : callable, optional
        ``hull(dist, cost) -> (start, to, dcost, slope)`` for the items of one group
        (:func:`hull`, or qe4_fast's compiled twin: the same values).

    Returns
    -------
    choice : intp ndarray [n]
        The chosen option of each item.
    spent : int
        Their total cost, ``<= budget``.

    Raises
    ------
    ValueError
        A distortion is NaN or negative, or an item has none finite; the budget is
        smaller than the cost of every item's cheapest option.

    Notes
    -----
    The three steps of the module docstring.  Items are visited in index order, so
    the tie rule "lower item first" is "lower index first".
    """
    dist = np.asarray(dist, F64)
    cost = np.asarray(cost, np.int64)
    group = np.asarray(group, np.intp)
    n, k = dist.shape
    bad = ~(dist >= 0).all(axis=1) | ~np.isfinite(dist).any(axis=1)      # NaN fails >= 0
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(f"item {r} has distortions {dist[r].tolist()}: each must be >= 0 and not "
                         "NaN, and at least one finite")
    if cost.shape[0] == 1:                   # one group (one table): no gathers
        start, to, dcost, slope = hull(dist, cost[0])
    else:
        start = np.empty(n, np.intp)
        to = np.empty((n, k - 1), np.intp)
        dcost = np.empty((n, k - 1), np.int64)
        slope = np.empty((n, k - 1), F64)
        for g in range(cost.shape[0]):
            items = np.flatnonzero(group == g)
            if items.size:
                start[items], to[items], dcost[items], slope[items] = hull(
                    np.ascontiguousarray(dist[items]), cost[g])
    base = int(cost[group, start].sum())
    if base > budget:
        raise ValueError(f"budget of {budget} bytes is below the {base} bytes of the cheapest "
                         "choice for every row")
    n_taken, spent = _take_prefix(to, dcost, slope, budget - base)
    n_taken, spent = _fill(to, dcost, slope, n_taken, budget - base - spent, spent)
    choice = start.copy()
    moved = np.flatnonzero(n_taken > 0)
    choice[moved] = to[moved, n_taken[moved] - 1]
    return choice, base + spent


def _fill(to, dcost, slope, n_taken, remainder, spent):
    """Step 3: greedily take the items' next segments that fit the remaining bytes."""
    n, n_seg = to.shape
    if n_seg == 0 or remainder <= 0:
        return n_taken, spent
    n_taken = n_taken.copy()
    # candidates: items whose next segment exists and fits now (a later one can only
    # fit less, as the remainder shrinks)
    cand = np.flatnonzero(n_taken < n_seg)
    nxt = n_taken[cand]
    ok = to[cand, nxt] >= 0
    cand, nxt = cand[ok], nxt[ok]
    ok = dcost[cand, nxt] <= remainder
    cand, nxt = cand[ok], nxt[ok]
    dc = dcost[cand, nxt]
    sl = slope[cand, nxt]
    while cand.size:
        i = int(np.argmax(sl))          # largest slope; the lowest item on ties
        item, step = int(cand[i]), int(dc[i])
        n_taken[item] += 1
        remainder -= step
        spent += step
        s = n_taken[item]
        if s < n_seg and to[item, s] >= 0:
            dc[i], sl[i] = dcost[item, s], slope[item, s]
        else:
            dc[i] = remainder + 1       # no next segment: drop below
        keep = dc <= remainder
        cand, dc, sl = cand[keep], dc[keep], sl[keep]
    return n_taken, spent
