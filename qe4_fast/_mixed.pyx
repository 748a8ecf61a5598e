# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of qe4_fast's mixed-precision tables: the row map and bags of float rows.

One index or one bag per item, in :mod:`qe4.mixed`'s order, under the kernel contract of
qe4_fast's pool (``_pool.pxd``).
"""

from libc.math cimport fmaf
from libc.stdint cimport int64_t, uint32_t, uint64_t

from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_count_add, qe4_n_chunks

cdef extern from *:
    """
    static inline int qe4_popcount64(unsigned long long v) { return __builtin_popcountll(v); }
    """
    int qe4_popcount64(unsigned long long v) noexcept nogil


cdef inline uint64_t _match(const uint64_t *planes, int64_t b, int64_t w,
                            int64_t tier) noexcept nogil:
    cdef uint64_t m = <uint64_t>0xFFFFFFFFFFFFFFFFULL, p
    cdef int64_t k
    for k in range(b):
        p = planes[w * b + k]
        if (tier >> k) & 1:
            m = m & p
        else:
            m = m & ~p
    return m


ctypedef struct locate_job:
    const uint64_t *planes
    const uint32_t *ranks
    const int64_t *rows
    int64_t *tier
    int64_t *rank
    int64_t n, b, n_tiers, n_chunks, n_bad


cdef void _locate_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef locate_job *j = <locate_job *>ctx
    cdef int64_t i, k, r, w, t, v, cnt, bad = 0
    cdef uint64_t bit
    for i in range(qe4_chunk_start(j.n, j.n_chunks, c), qe4_chunk_start(j.n, j.n_chunks, c + 1)):
        r = j.rows[i]
        w = r >> 6
        bit = <uint64_t>(r & 63)
        t = 0
        for k in range(j.b):
            t = t | (<int64_t>((j.planes[w * j.b + k] >> bit) & 1) << k)
        if t >= j.n_tiers:       # bytes changed after validation: flagged, nothing read
            bad += 1
            j.tier[i] = 0
            j.rank[i] = 0
            continue
        cnt = j.ranks[(r >> 8) * j.n_tiers + t]
        v = (r >> 8) * 4
        while v < w:
            cnt = cnt + qe4_popcount64(_match(j.planes, j.b, v, t))
            v = v + 1
        cnt = cnt + qe4_popcount64(_match(j.planes, j.b, w, t) & ((<uint64_t>1 << bit) - 1))
        j.tier[i] = t
        j.rank[i] = cnt
    if bad:
        qe4_count_add(&j.n_bad, bad)


def locate_rows(const uint64_t[:, ::1] planes,    # IN  [n_words, b] tier bit planes
                const uint32_t[:, ::1] ranks,     # IN  [n_super, T] rank directory
                const int64_t[::1] rows,          # IN  rows, all in range
                int64_t[::1] tier,                # OUT tier of each row
                int64_t[::1] rank,                # OUT rank of each row in its tier
                int n_threads):
    """(tier, rank) of each row, as qe4.mixed.decode_map computes them.  Returns the number
    of rows whose tier code is not below the number of tiers (a table whose bytes were
    changed after it was validated); those read tier 0, rank 0, nothing out of bounds."""
    cdef locate_job job
    job.n, job.b, job.n_tiers, job.n_bad = rows.shape[0], planes.shape[1], ranks.shape[1], 0
    if job.n == 0:
        return 0
    job.planes, job.ranks, job.rows = &planes[0, 0], &ranks[0, 0], &rows[0]
    job.tier, job.rank = &tier[0], &rank[0]
    job.n_chunks = qe4_n_chunks(job.n, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _locate_chunk, &job)
    return job.n_bad


ctypedef struct fbag_job:
    const float *vals
    const int64_t *starts
    const float *weights
    float *out
    int64_t n_bags, dim, n_chunks


cdef void _fbag_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef fbag_job *jb = <fbag_job *>ctx
    cdef int64_t m, p, j, d = jb.dim
    cdef float w
    cdef float *o
    cdef const float *v
    for m in range(qe4_chunk_start(jb.n_bags, jb.n_chunks, c),
                   qe4_chunk_start(jb.n_bags, jb.n_chunks, c + 1)):
        o = jb.out + m * d
        for j in range(d):
            o[j] = 0.0
        for p in range(jb.starts[m], jb.starts[m + 1]):
            v = jb.vals + p * d
            if jb.weights != NULL:
                w = jb.weights[p]
                for j in range(d):
                    o[j] = fmaf(w, v[j], o[j])
            else:
                for j in range(d):
                    o[j] = o[j] + v[j]


def float_bags(const float[:, ::1] vals,          # IN  [n_pos, dim] the positions' rows, in order
               const int64_t[::1] starts,         # IN  [n_bags + 1] non-decreasing, 0 .. n_pos
               const float[::1] weights,          # IN  [n_pos] or None
               float[:, ::1] out,                 # OUT [n_bags, dim]
               int n_threads):
    """Per bag, in position order, ``acc = fma(w, v, acc)`` (unweighted: ``acc + v``)."""
    cdef fbag_job job
    job.n_bags, job.dim = out.shape[0], out.shape[1]
    if job.n_bags == 0 or job.dim == 0:
        return
    job.vals = &vals[0, 0] if vals.shape[0] > 0 else NULL
    job.starts = &starts[0]
    job.weights = &weights[0] if weights is not None and weights.shape[0] > 0 else NULL
    job.out = &out[0, 0]
    job.n_chunks = qe4_n_chunks(job.n_bags, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _fbag_chunk, &job)
