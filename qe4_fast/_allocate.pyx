# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of qe4_fast.allocate: per-row squared errors and per-row lower convex hulls.

One row per item, in the order of :func:`qe4.allocate.squared_errors` and
:func:`qe4._lagrange.hull`, under the kernel contract of qe4_fast's pool (``_pool.pxd``).
"""

from libc.math cimport INFINITY
from libc.stdint cimport int64_t

from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_n_chunks


ctypedef struct sq_job:
    const float *x
    const float *xh
    double *out
    int64_t n, m, n_chunks


cdef void _sq_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef sq_job *j = <sq_job *>ctx
    cdef int64_t r, k
    cdef double acc, d
    for r in range(qe4_chunk_start(j.n, j.n_chunks, c), qe4_chunk_start(j.n, j.n_chunks, c + 1)):
        acc = 0.0
        for k in range(j.m):
            d = <double>j.x[r * j.m + k] - <double>j.xh[r * j.m + k]
            acc = acc + d * d
        j.out[r] = acc


def squared_errors(const float[:, ::1] x,        # IN  [n_rows, n_cols]
                   const float[:, ::1] x_hat,    # IN  [n_rows, n_cols]
                   double[::1] out,              # OUT [n_rows]
                   int n_threads):
    """``out[r] = sum_j (double(x[r, j]) - double(x_hat[r, j]))**2``, j in order."""
    cdef sq_job job
    job.n, job.m = x.shape[0], x.shape[1]
    if job.n == 0:
        return
    if job.m == 0:
        out[:] = 0.0
        return
    job.x, job.xh, job.out = &x[0, 0], &x_hat[0, 0], &out[0]
    job.n_chunks = qe4_n_chunks(job.n, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _sq_chunk, &job)


ctypedef struct hull_job:
    const double *dist
    const int64_t *cost
    Py_ssize_t *start
    Py_ssize_t *to
    int64_t *dcost
    double *slope
    int64_t n, k, n_chunks


cdef void _hull_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef hull_job *jb = <hull_job *>ctx
    cdef int64_t k = jb.k, r, j, s, cur, nxt
    cdef const double *d
    cdef double best, sl
    for r in range(qe4_chunk_start(jb.n, jb.n_chunks, c), qe4_chunk_start(jb.n, jb.n_chunks, c + 1)):
        d = jb.dist + r * k
        cur = -1
        for j in range(k):       # cheapest finite option, least distortion, lowest index
            if d[j] < INFINITY and (
                    cur < 0 or jb.cost[j] < jb.cost[cur]
                    or (jb.cost[j] == jb.cost[cur] and d[j] < d[cur])):
                cur = j
        jb.start[r] = cur
        for s in range(k - 1):
            jb.to[r * (k - 1) + s] = -1
            jb.dcost[r * (k - 1) + s] = 0
            jb.slope[r * (k - 1) + s] = 0.0
        s = 0
        while s < k - 1:
            best = 0.0
            nxt = -1
            for j in range(k):
                if jb.cost[j] > jb.cost[cur]:
                    sl = (d[cur] - d[j]) / <double>(jb.cost[j] - jb.cost[cur])
                    if sl > best:        # NaN (inf - inf) never is; the first maximum wins
                        best = sl
                        nxt = j
            if nxt < 0:
                break
            jb.to[r * (k - 1) + s] = nxt
            jb.dcost[r * (k - 1) + s] = jb.cost[nxt] - jb.cost[cur]
            jb.slope[r * (k - 1) + s] = best
            cur = nxt
            s = s + 1


def hull_rows(const double[:, ::1] dist,         # IN  [n, K] distortions >= 0 (+inf: unavailable;
                                                 #     every row has a finite one)
              const int64_t[::1] cost,           # IN  [K] costs of the options
              Py_ssize_t[::1] start,             # OUT [n] cheapest option
              Py_ssize_t[:, ::1] to,             # OUT [n, K-1] option reached, -1 past the end
              int64_t[:, ::1] dcost,             # OUT [n, K-1]
              double[:, ::1] slope,              # OUT [n, K-1]
              int n_threads):
    """Each row's lower-hull segments, exactly as qe4._lagrange.hull computes them."""
    cdef hull_job job
    job.n, job.k = dist.shape[0], dist.shape[1]
    if job.n == 0 or job.k == 0:
        return
    job.dist, job.cost, job.start = &dist[0, 0], &cost[0], &start[0]
    job.to = &to[0, 0] if job.k > 1 else NULL
    job.dcost = &dcost[0, 0] if job.k > 1 else NULL
    job.slope = &slope[0, 0] if job.k > 1 else NULL
    job.n_chunks = qe4_n_chunks(job.n, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _hull_chunk, &job)
