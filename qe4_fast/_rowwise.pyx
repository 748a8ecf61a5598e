# Row-wise quantization kernels (the compiled twin of qe4/rowwise.py).
#
# Every function takes validated, C-contiguous, native buffers from qe4_fast's Python
# wrappers (validation goes through qe4._validate, so errors match the reference),
# releases the GIL and splits independent blocks of QE4_LANES rows into chunks run by
# qe4_fast's pool (_pool.h).  Each row is computed in the reference's sequential order,
# so the bytes do not depend on n_threads.  The numerics live in
# qe4_fast/_rowwise_kernels.h.

from libc.stdint cimport int64_t, uint8_t

from qe4_fast._openmp_helpers cimport QE4_OPENMP, omp_get_max_threads
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_count_add, qe4_n_chunks

cdef extern from "_rowwise_kernels.h":
    int QE4_LANES
    void qe4_ranges_block(const float *x, int r0, int n, int n_cols, int bits, int method,
                          int fp16, float n_bins, float min_bins, float aciq_c, int max_levels,
                          float *work, float *lo, float *hi) noexcept nogil
    void qe4_encode_block(const float *x, int r0, int n, int n_cols, int bits, int fp16,
                          const float *lo, const float *hi, uint8_t *out,
                          size_t row_bytes) noexcept nogil
    int qe4_minmax_rows(const float *x, int r0, int n, int n_cols, int bits, int fp16,
                        float *lo, float *hi) noexcept nogil
    int qe4_minmax_encode_rows(const float *x, int r0, int n, int n_cols, int bits, int fp16,
                               uint8_t *out, size_t row_bytes) noexcept nogil
    float qe4_row_loss(const float *x, int n_cols, float lo, float hi, float qmax,
                       int fp16) noexcept nogil

LANES = QE4_LANES
METHOD_CODES = {"minmax": 0, "greedy": 1, "exhaustive": 2, "aciq-laplace": 3, "aciq-gauss": 4}


def openmp_compiled():
    """True when this module was compiled with OpenMP."""
    return bool(QE4_OPENMP)


def omp_max_threads():
    """omp_get_max_threads(): the OpenMP default team size (honours OMP_NUM_THREADS)."""
    return omp_get_max_threads()


def work_floats(int n_cols, int method, int max_levels):
    """Floats of per-thread scratch space a block of rows needs."""
    if method == 2:
        return max(4 * (max_levels + 2), 1)
    return QE4_LANES * n_cols


def quantize_rows(const float[:, ::1] x,      # IN  [n_rows, n_cols]
                  int bits, int method, bint fp16, float n_bins, float min_bins,
                  float aciq_c, int max_levels,
                  float[:, ::1] work,         # scratch [n_threads, work_floats]
                  float[::1] lo,              # OUT [n_rows] chosen ranges (0 rows: minmax + out)
                  float[::1] hi,              # OUT [n_rows]
                  uint8_t[:, ::1] out,        # OUT [n_rows, row_bytes], or 0 rows: ranges only
                  int n_threads):
    """Ranges of every row by ``method``, then (if ``out`` has rows) the packed rows.

    Method minmax with ``out``: one fused pass that does not keep the ranges (``lo`` and
    ``hi`` may have 0 rows).  Returns, for method minmax, the number of rows failing
    check_fp16_ranges (else 0)."""
    cdef rows_job j
    _job(&j, x, bits, fp16, out, n_threads)
    j.method = method
    j.n_bins = n_bins
    j.min_bins = min_bins
    j.aciq_c = aciq_c
    j.max_levels = max_levels
    j.work = &work[0, 0]
    j.work_stride = work.shape[1]
    j.lo = &lo[0] if lo.shape[0] > 0 else NULL
    j.hi = &hi[0] if hi.shape[0] > 0 else NULL
    if method == 2:
        # exhaustive: each row is a long search of its own; one row per unit of work, so
        # that a caller splitting the table into short calls (Ctrl-C between them) keeps
        # every thread busy with as few as n_threads rows
        j.unit = 1
        j.n_blocks = j.n_rows
        j.n_chunks = qe4_n_chunks(j.n_blocks, n_threads)
    with nogil:
        par_run(j.n_chunks, n_threads, _quantize_chunk, &j)
    return j.n_bad


ctypedef struct rows_job:
    const float *x
    int n_rows, n_cols, bits, method, max_levels, unit
    bint fp16
    float n_bins, min_bins, aciq_c, qmax
    float *work
    Py_ssize_t work_stride
    const float *lo_in
    const float *hi_in
    float *lo
    float *hi
    float *loss
    uint8_t *out
    size_t row_bytes
    int64_t n_blocks, n_chunks, n_bad


cdef void _job(rows_job *j, const float[:, ::1] x, int bits, bint fp16, uint8_t[:, ::1] out,
               int n_threads):
    """The fields every row kernel uses; chunks are runs of blocks of QE4_LANES rows."""
    j.x = &x[0, 0] if x.shape[0] > 0 and x.shape[1] > 0 else NULL
    j.n_rows = x.shape[0]
    j.n_cols = x.shape[1]
    j.bits = bits
    j.fp16 = fp16
    j.out = &out[0, 0] if out is not None and out.shape[0] > 0 else NULL
    j.row_bytes = out.shape[1] if out is not None else 0
    j.unit = QE4_LANES
    j.n_blocks = (j.n_rows + QE4_LANES - 1) // QE4_LANES
    j.n_chunks = qe4_n_chunks(j.n_blocks, n_threads)
    j.n_bad = 0


cdef inline void _block(const rows_job *j, int64_t b, int *r0, int *n) noexcept nogil:
    r0[0] = <int>(b * j.unit)
    n[0] = j.n_rows - r0[0]
    if n[0] > j.unit:
        n[0] = j.unit


cdef void _quantize_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef rows_job *j = <rows_job *>ctx
    cdef int64_t b, n_bad = 0
    cdef int r0, n
    for b in range(qe4_chunk_start(j.n_blocks, j.n_chunks, c),
                   qe4_chunk_start(j.n_blocks, j.n_chunks, c + 1)):
        _block(j, b, &r0, &n)
        if j.method == 0 and j.out != NULL:   # one fused pass
            n_bad += qe4_minmax_encode_rows(j.x, r0, n, j.n_cols, j.bits, j.fp16, j.out,
                                            j.row_bytes)
            continue
        if j.method == 0:
            n_bad += qe4_minmax_rows(j.x, r0, n, j.n_cols, j.bits, j.fp16, j.lo, j.hi)
        else:
            qe4_ranges_block(j.x, r0, n, j.n_cols, j.bits, j.method, j.fp16, j.n_bins,
                             j.min_bins, j.aciq_c, j.max_levels, j.work + worker * j.work_stride,
                             j.lo, j.hi)
        if j.out != NULL:
            qe4_encode_block(j.x, r0, n, j.n_cols, j.bits, j.fp16, j.lo, j.hi, j.out,
                             j.row_bytes)
    qe4_count_add(&j.n_bad, n_bad)


def range_loss_rows(const float[:, ::1] x,    # IN  [n_rows, n_cols]
                    const float[::1] lo,      # IN  [n_rows]
                    const float[::1] hi,      # IN  [n_rows]
                    float qmax, bint fp16,
                    float[::1] out,           # OUT [n_rows]
                    int n_threads):
    """qe4.range_loss of every row."""
    cdef rows_job j
    _job(&j, x, 0, fp16, None, n_threads)
    j.n_blocks = x.shape[0]               # chunks of single rows
    j.n_chunks = qe4_n_chunks(j.n_blocks, n_threads)
    j.lo_in = &lo[0] if lo.shape[0] > 0 else NULL
    j.hi_in = &hi[0] if hi.shape[0] > 0 else NULL
    j.qmax = qmax
    j.loss = &out[0] if out.shape[0] > 0 else NULL
    with nogil:
        par_run(j.n_chunks, n_threads, _loss_chunk, &j)


cdef void _loss_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef rows_job *j = <rows_job *>ctx
    cdef int64_t r
    for r in range(qe4_chunk_start(j.n_blocks, j.n_chunks, c),
                   qe4_chunk_start(j.n_blocks, j.n_chunks, c + 1)):
        j.loss[r] = qe4_row_loss(j.x + r * j.n_cols, j.n_cols, j.lo_in[r], j.hi_in[r], j.qmax,
                                 j.fp16)


def row_minmax(const float[:, ::1] x,         # IN  [n_rows, n_cols]
               int bits, bint fp16,
               float[::1] lo,                 # OUT [n_rows] min + 0.0
               float[::1] hi,                 # OUT [n_rows] max + 0.0
               int n_threads):
    """Each row's min and max (a zero bound is +0.0); returns the number of rows whose
    range fails qe4._validate.check_fp16_ranges."""
    cdef rows_job j
    _job(&j, x, bits, fp16, None, n_threads)
    j.method = 0                          # min/max ranges only: the quantize chunk, no output
    j.lo = &lo[0] if lo.shape[0] > 0 else NULL
    j.hi = &hi[0] if hi.shape[0] > 0 else NULL
    with nogil:
        par_run(j.n_chunks, n_threads, _quantize_chunk, &j)
    return j.n_bad
