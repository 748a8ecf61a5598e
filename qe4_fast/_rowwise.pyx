# Row-wise quantization kernels (the compiled twin of qe4/rowwise.py).
#
# Every function takes validated, C-contiguous, native buffers from qe4_fast's Python
# wrappers (validation goes through qe4._validate, so errors match the reference),
# releases the GIL and runs one prange over independent blocks of QE4_LANES rows.
# Each row is computed in the reference's sequential order, so the bytes do not
# depend on n_threads.  The numerics live in qe4_fast/_rowwise_kernels.h.

from cython.parallel cimport prange, threadid
from libc.stdint cimport uint8_t

from qe4_fast._openmp_helpers cimport QE4_OPENMP, omp_get_max_threads

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
    cdef int n_rows = x.shape[0], n_cols = x.shape[1]
    cdef int n_blocks = (n_rows + QE4_LANES - 1) // QE4_LANES
    cdef bint encode = out.shape[0] > 0
    cdef int b, r0, n, tid, r
    cdef int n_bad = 0
    cdef size_t row_bytes = out.shape[1]
    cdef int chunk = max(1, n_blocks // (16 * n_threads))  # dynamic: a busy core slows no one
    if method == 2:
        # exhaustive: each row is a long search of its own; one row per task, so that a
        # caller splitting the table into short calls (Ctrl-C between them) keeps every
        # thread busy with as few as n_threads rows
        for r in prange(n_rows, nogil=True, schedule="dynamic", num_threads=n_threads):
            tid = threadid()
            qe4_ranges_block(&x[0, 0], r, 1, n_cols, bits, method, fp16, n_bins, min_bins,
                             aciq_c, max_levels, &work[tid, 0], &lo[0], &hi[0])
            if encode:
                qe4_encode_block(&x[0, 0], r, 1, n_cols, bits, fp16, &lo[0], &hi[0],
                                 &out[0, 0], row_bytes)
        return 0
    for b in prange(n_blocks, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=n_threads):
        tid = threadid()
        r0 = b * QE4_LANES
        n = n_rows - r0
        if n > QE4_LANES:
            n = QE4_LANES
        if method == 0 and encode:   # one fused pass
            n_bad += qe4_minmax_encode_rows(&x[0, 0], r0, n, n_cols, bits, fp16, &out[0, 0],
                                            row_bytes)
            continue
        if method == 0:
            n_bad += qe4_minmax_rows(&x[0, 0], r0, n, n_cols, bits, fp16, &lo[0], &hi[0])
        else:
            qe4_ranges_block(&x[0, 0], r0, n, n_cols, bits, method, fp16, n_bins, min_bins,
                             aciq_c, max_levels, &work[tid, 0], &lo[0], &hi[0])
        if encode:
            qe4_encode_block(&x[0, 0], r0, n, n_cols, bits, fp16, &lo[0], &hi[0],
                             &out[0, 0], row_bytes)
    return n_bad


def range_loss_rows(const float[:, ::1] x,    # IN  [n_rows, n_cols]
                    const float[::1] lo,      # IN  [n_rows]
                    const float[::1] hi,      # IN  [n_rows]
                    float qmax, bint fp16,
                    float[::1] out,           # OUT [n_rows]
                    int n_threads):
    """qe4.range_loss of every row."""
    cdef Py_ssize_t r, n_rows = x.shape[0]
    cdef int n_cols = x.shape[1]
    for r in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        out[r] = qe4_row_loss(&x[r, 0], n_cols, lo[r], hi[r], qmax, fp16)


def row_minmax(const float[:, ::1] x,         # IN  [n_rows, n_cols]
               int bits, bint fp16,
               float[::1] lo,                 # OUT [n_rows] min + 0.0
               float[::1] hi,                 # OUT [n_rows] max + 0.0
               int n_threads):
    """Each row's min and max (a zero bound is +0.0); returns the number of rows whose
    range fails qe4._validate.check_fp16_ranges."""
    cdef int n_rows = x.shape[0], n_cols = x.shape[1]
    cdef int n_blocks = (n_rows + QE4_LANES - 1) // QE4_LANES
    cdef int b, r0, n
    cdef int n_bad = 0
    for b in prange(n_blocks, nogil=True, schedule="static", num_threads=n_threads):
        r0 = b * QE4_LANES
        n = n_rows - r0
        if n > QE4_LANES:
            n = QE4_LANES
        n_bad += qe4_minmax_rows(&x[0, 0], r0, n, n_cols, bits, fp16, &lo[0], &hi[0])
    return n_bad
