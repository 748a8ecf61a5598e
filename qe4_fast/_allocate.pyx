# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of qe4_fast.allocate: per-row squared errors and per-row lower convex hulls.

Each function takes validated, C-contiguous buffers and a resolved ``n_threads``,
writes into preallocated outputs and never raises.  Rows are independent and each is
computed in the reference's fixed order (:func:`qe4.allocate.squared_errors`,
:func:`qe4._lagrange.hull`), so the bytes do not depend on the thread count.
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t


def squared_errors(const float[:, ::1] x,        # IN  [n_rows, n_cols]
                   const float[:, ::1] x_hat,    # IN  [n_rows, n_cols]
                   double[::1] out,              # OUT [n_rows]
                   int n_threads):
    """``out[r] = sum_j (double(x[r, j]) - double(x_hat[r, j]))**2``, j in order."""
    cdef Py_ssize_t n = x.shape[0], m = x.shape[1], r, j
    cdef double acc, d
    for r in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
        acc = 0.0
        for j in range(m):
            d = <double>x[r, j] - <double>x_hat[r, j]
            acc = acc + d * d
        out[r] = acc


def hull_rows(const double[:, ::1] dist,         # IN  [n, K] distortions >= 0 (+inf: unavailable;
                                                 #     every row has a finite one)
              const int64_t[::1] cost,           # IN  [K] costs of the options
              Py_ssize_t[::1] start,             # OUT [n] cheapest option
              Py_ssize_t[:, ::1] to,             # OUT [n, K-1] option reached, -1 past the end
              int64_t[:, ::1] dcost,             # OUT [n, K-1]
              double[:, ::1] slope,              # OUT [n, K-1]
              int n_threads):
    """Each row's lower-hull segments, exactly as qe4._lagrange.hull computes them."""
    cdef Py_ssize_t n = dist.shape[0], k = dist.shape[1], r, j, s, cur, nxt
    cdef double best, sl, dc
    for r in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
        cur = -1
        for j in range(k):       # cheapest finite option, least distortion, lowest index
            if dist[r, j] < INFINITY and (
                    cur < 0 or cost[j] < cost[cur]
                    or (cost[j] == cost[cur] and dist[r, j] < dist[r, cur])):
                cur = j
        start[r] = cur
        for s in range(k - 1):
            to[r, s] = -1
            dcost[r, s] = 0
            slope[r, s] = 0.0
        s = 0
        while s < k - 1:
            best = 0.0
            nxt = -1
            for j in range(k):
                if cost[j] > cost[cur]:
                    dc = <double>(cost[j] - cost[cur])
                    sl = (dist[r, cur] - dist[r, j]) / dc
                    if sl > best:        # NaN (inf - inf) never is; the first maximum wins
                        best = sl
                        nxt = j
            if nxt < 0:
                break
            to[r, s] = nxt
            dcost[r, s] = cost[nxt] - cost[cur]
            slope[r, s] = best
            cur = nxt
            s = s + 1
