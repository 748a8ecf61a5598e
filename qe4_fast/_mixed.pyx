# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of qe4_fast's mixed-precision tables: the row map and bags of float rows.

Validated, C-contiguous buffers and a resolved ``n_threads`` in, preallocated outputs
written, nothing raised.  Work is split across independent indices or bags, each
computed in the reference's fixed order (:mod:`qe4.mixed`), so the bytes do not depend
on the thread count.
"""

from cython.parallel cimport prange
from libc.math cimport fmaf
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from *:
    """
    static inline int qe4_popcount64(unsigned long long v) { return __builtin_popcountll(v); }
    """
    int qe4_popcount64(unsigned long long v) noexcept nogil


cdef inline uint64_t _match(const uint64_t *planes, Py_ssize_t b, int64_t w,
                            int64_t tier) noexcept nogil:
    cdef uint64_t m = <uint64_t>0xFFFFFFFFFFFFFFFFULL, p
    cdef Py_ssize_t k
    for k in range(b):
        p = planes[w * b + k]
        if (tier >> k) & 1:
            m = m & p
        else:
            m = m & ~p
    return m


def locate_rows(const uint64_t[:, ::1] planes,    # IN  [n_words, b] tier bit planes
                const uint32_t[:, ::1] ranks,     # IN  [n_super, T] rank directory
                const int64_t[::1] rows,          # IN  rows, all in range
                int64_t[::1] tier,                # OUT tier of each row
                int64_t[::1] rank,                # OUT rank of each row in its tier
                int n_threads):
    """(tier, rank) of each row, as qe4.mixed.decode_map computes them."""
    cdef Py_ssize_t n = rows.shape[0], b = planes.shape[1], i, k
    cdef const uint64_t *pp = &planes[0, 0]
    cdef int64_t r, w, t, v, first
    cdef uint64_t bit
    cdef long long cnt
    for i in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
        r = rows[i]
        w = r >> 6
        bit = <uint64_t>(r & 63)
        t = 0
        for k in range(b):
            t = t | (<int64_t>((pp[w * b + k] >> bit) & 1) << k)
        cnt = ranks[r >> 8, t]
        first = (r >> 8) * 4
        v = first
        while v < w:
            cnt = cnt + qe4_popcount64(_match(pp, b, v, t))
            v = v + 1
        cnt = cnt + qe4_popcount64(_match(pp, b, w, t) & ((<uint64_t>1 << bit) - 1))
        tier[i] = t
        rank[i] = cnt


def float_bags(const float[:, ::1] vals,          # IN  [n_pos, dim] the positions' rows, in order
               const int64_t[::1] starts,         # IN  [n_bags + 1] non-decreasing, 0 .. n_pos
               const float[::1] weights,          # IN  [n_pos] or None
               float[:, ::1] out,                 # OUT [n_bags, dim]
               int n_threads):
    """Per bag, in position order, ``acc = fma(w, v, acc)`` (unweighted: ``acc + v``)."""
    cdef Py_ssize_t n_bags = out.shape[0], dim = out.shape[1], m, p, j
    cdef bint weighted = weights is not None
    cdef float w
    for m in prange(n_bags, nogil=True, num_threads=n_threads, schedule="dynamic",
                    chunksize=16):
        for j in range(dim):
            out[m, j] = 0.0
        for p in range(starts[m], starts[m + 1]):
            if weighted:
                w = weights[p]
                for j in range(dim):
                    out[m, j] = fmaf(w, vals[p, j], out[m, j])
            else:
                for j in range(dim):
                    out[m, j] = out[m, j] + vals[p, j]
