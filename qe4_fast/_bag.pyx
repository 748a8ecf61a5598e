# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Lookup-side kernels of qe4_fast: embedding bags, dequantization, TBE row conversion.

Every function takes validated, C-contiguous buffers, a resolved ``n_threads`` and the
SIMD level code (qe4_fast.bag passes all three) and writes into a preallocated output; the
only errors are a bit width without a kernel or a SIMD level this CPU does not run, raised
as ValueError before any row is read (qe4_bag_check).  Work is split into chunks of
independent bags or rows run by qe4_fast's pool (_pool.h); each bag/row is computed in a
fixed order (_bag_kernels.h), so the bytes do not depend on the thread count.
"""

from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy, memset

from qe4_fast._common cimport check
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_n_chunks

cdef extern from "_bag_kernels.h" nogil:
    ctypedef struct qe4_rows:
        const uint8_t *data
        int64_t n_rows
        int64_t row_bytes
        int64_t code_bytes
        int64_t dim
        int bits
        int f16
    int qe4_bag_check(int bits, int simd) noexcept
    void qe4_bags(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                  const int64_t *starts, int64_t m0, int64_t m1, int mean, int simd,
                  float *out) noexcept
    void qe4_dequantize_row(const qe4_rows *t, int64_t r, int simd, float *out) noexcept


cdef qe4_rows _rows(const uint8_t[:, ::1] data, int bits, Py_ssize_t dim, bint f16):
    cdef qe4_rows t
    t.data = &data[0, 0] if data.shape[0] > 0 else NULL
    t.n_rows = data.shape[0]
    t.row_bytes = data.shape[1]
    t.code_bytes = (dim * bits + 7) // 8
    t.dim = dim
    t.bits = bits
    t.f16 = f16
    return t


def embedding_bag_rowwise(const uint8_t[:, ::1] data,    # IN  packed rows [n_rows, row_bytes]
                          int bits, Py_ssize_t dim, bint f16,
                          const int64_t[::1] idx,         # IN  row of each position, all in range
                          const int64_t[::1] starts,      # IN  [n_bags + 1], non-decreasing, 0 .. n_idx
                          const float[::1] weights,       # IN  [n_idx] or None
                          bint mean,
                          float[:, ::1] out,              # OUT [n_bags, dim]
                          int n_threads, int simd):
    """Pooled rows of each bag into ``out`` (see qe4.embedding_bag for the arithmetic)."""
    check(qe4_bag_check(bits, simd), "qe4_fast._bag.embedding_bag_rowwise", None, -1, bits, -1,
          simd)
    cdef qe4_rows t = _rows(data, bits, dim, f16)
    cdef Py_ssize_t n_bags = out.shape[0]
    cdef const int64_t *ip = &idx[0] if idx.shape[0] > 0 else NULL
    cdef const float *wp = &weights[0] if weights is not None and weights.shape[0] > 0 else NULL
    cdef int64_t n_idx = idx.shape[0]
    cdef const int64_t *sp = &starts[0]
    cdef float *op = &out[0, 0] if n_bags > 0 else NULL
    cdef bag_job job
    if n_bags == 0:
        return
    job.t = &t
    job.ip = ip
    job.n_idx = n_idx
    job.wp = wp
    job.starts = sp
    job.n_bags = n_bags
    job.mean = mean
    job.simd = simd
    job.out = op
    # runs of consecutive bags holding about the same number of positions (balanced when bag
    # lengths differ), several per thread, claimed one at a time (see _pool.h)
    job.n_parts = qe4_n_chunks(n_bags, n_threads)
    with nogil:
        par_run(job.n_parts, n_threads, _bag_part, &job)


ctypedef struct bag_job:
    const qe4_rows *t
    const int64_t *ip
    int64_t n_idx
    const float *wp
    const int64_t *starts
    Py_ssize_t n_bags
    Py_ssize_t n_parts
    bint mean
    int simd
    float *out


cdef void _bag_part(void *ctx, int64_t k, int worker) noexcept nogil:
    cdef bag_job *j = <bag_job *>ctx
    _bags(j.t, j.ip, j.n_idx, j.wp, j.starts, _first_bag(j.starts, j.n_bags, k, j.n_parts),
          _first_bag(j.starts, j.n_bags, k + 1, j.n_parts), j.mean, j.simd, j.out)


cdef inline Py_ssize_t _first_bag(const int64_t *starts, Py_ssize_t n_bags, Py_ssize_t k,
                                  Py_ssize_t n_parts) noexcept nogil:
    """First bag of part k of n_parts: the first m with starts[m] >= k * n_idx / n_parts
    (n_bags for the last part), so the parts cover every bag once, in order."""
    cdef int64_t target
    cdef Py_ssize_t lo = 0, hi = n_bags, mid
    if k >= n_parts:
        return n_bags
    target = starts[0] + <int64_t>((<double>(starts[n_bags] - starts[0]) * k) / n_parts)
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if starts[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline void _bags(const qe4_rows *t, const int64_t *ip, int64_t n_idx, const float *wp,
                       const int64_t *starts, Py_ssize_t m0, Py_ssize_t m1, bint mean, int simd,
                       float *out) noexcept nogil:
    qe4_bags(t, ip, n_idx, wp, starts, m0, m1, mean, simd, out)


def dequantize_rowwise(const uint8_t[:, ::1] data,       # IN  packed rows [n_rows, row_bytes]
                       int bits, Py_ssize_t dim, bint f16,
                       float[:, ::1] out,                 # OUT [n_rows, dim]
                       int n_threads, int simd):
    """``out[r] = fma(scale[r], q[r], bias[r])`` for every row."""
    check(qe4_bag_check(bits, simd), "qe4_fast._bag.dequantize_rowwise", None, -1, bits, -1,
          simd)
    cdef rows_job job
    job.t = _rows(data, bits, dim, f16)
    job.n_rows = out.shape[0]
    job.simd = simd
    job.out = &out[0, 0] if job.n_rows > 0 else NULL
    job.n_chunks = qe4_n_chunks(job.n_rows, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _dequantize_rows, &job)


ctypedef struct rows_job:
    qe4_rows t
    int64_t n_rows
    int64_t n_chunks
    int simd
    float *out


cdef void _dequantize_rows(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef rows_job *j = <rows_job *>ctx
    cdef int64_t r
    for r in range(qe4_chunk_start(j.n_rows, j.n_chunks, c),
                   qe4_chunk_start(j.n_rows, j.n_chunks, c + 1)):
        qe4_dequantize_row(&j.t, r, j.simd, j.out + r * j.t.dim)


def move_qparams(const uint8_t[:, ::1] src,     # IN  [n_rows, src_width]
                 uint8_t[:, ::1] dst,           # OUT [n_rows, dst_width], dst_width >= n_bytes
                 Py_ssize_t head, Py_ssize_t n_bytes, int n_threads):
    """Rotate each row's first ``n_bytes`` left by ``head`` bytes and zero-pad to dst's width.

    Fused -> TBE: head = code_bytes (the scale/bias block moves to the front);
    TBE -> fused: head = 2 * itemsize (it moves back to the end).
    """
    cdef move_job job
    job.n_rows = src.shape[0]
    if job.n_rows == 0:
        return
    job.src = &src[0, 0]
    job.dst = &dst[0, 0]
    job.src_width = src.shape[1]
    job.width = dst.shape[1]
    job.head = head
    job.n_bytes = n_bytes
    job.n_chunks = qe4_n_chunks(job.n_rows, n_threads)
    with nogil:
        par_run(job.n_chunks, n_threads, _move_rows, &job)


ctypedef struct move_job:
    const uint8_t *src
    uint8_t *dst
    int64_t n_rows, n_chunks, src_width, width, head, n_bytes


cdef void _move_rows(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef move_job *j = <move_job *>ctx
    cdef int64_t r
    cdef const uint8_t *s
    cdef uint8_t *d
    for r in range(qe4_chunk_start(j.n_rows, j.n_chunks, c),
                   qe4_chunk_start(j.n_rows, j.n_chunks, c + 1)):
        s = j.src + r * j.src_width
        d = j.dst + r * j.width
        memcpy(d, s + j.head, j.n_bytes - j.head)
        memcpy(d + j.n_bytes - j.head, s, j.head)
        if j.width > j.n_bytes:
            memset(d + j.n_bytes, 0, j.width - j.n_bytes)
