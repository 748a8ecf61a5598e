# Row-wise quantization kernels (the compiled twin of qe4/rowwise.py).
#
# Every function takes validated, C-contiguous, native buffers from qe4_fast's Python
# wrappers (validation goes through qe4._validate, so errors match the reference),
# releases the GIL and splits independent blocks of QE4_LANES rows into chunks run by
# qe4_fast's pool (_pool.h).  Each row is computed in the reference's sequential order,
# so the bytes do not depend on n_threads.  The numerics live in
# qe4_fast/_rowwise_kernels.h.
#
# Method, bit width and SIMD level are dispatched once per call by qe4_rowwise_plan_init
# (C switches whose default is an error code, raised here as a ValueError).  This module
# also exports the codes every kernel module shares: METHOD_CODES, LAYOUT_CODES, SIMD_LEVELS.

from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.string cimport memset

from qe4_fast._common cimport (QE4_ACIQ_GAUSS, QE4_ACIQ_LAPLACE, QE4_ERR_METHOD, QE4_EXHAUSTIVE,
                               QE4_GREEDY, QE4_LAYOUT_CODEBOOK, QE4_LAYOUT_ROWWISE,
                               QE4_LAYOUT_TWO_TIER, QE4_MINMAX, QE4_SIMD_LEVELS, check,
                               qe4_cpu_simd_level, simd_name)
from qe4_fast._openmp_helpers cimport QE4_OPENMP, omp_get_max_threads
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_count_add, qe4_n_chunks

cdef extern from "_rowwise_kernels.h" nogil:
    int QE4_LANES
    ctypedef struct qe4_rowwise_plan:
        const float *x
        int n_cols
        int bits
        int fp16
        float n_bins
        float min_bins
        float aciq_c
        int max_levels
        float *lo
        float *hi
        uint8_t *out
        size_t row_bytes
    int qe4_rowwise_plan_init(qe4_rowwise_plan *p, int method, int simd) noexcept
    int qe4_rowwise_block(const qe4_rowwise_plan *p, int r0, int n, float *work) noexcept
    int64_t qe4_rowwise_work_floats(int method, int n_cols, int max_levels) noexcept
    float qe4_row_loss(const float *x, int n_cols, float lo, float hi, float qmax,
                       int fp16) noexcept
    float qe4_half_to_float(uint16_t h) noexcept
    uint16_t qe4_float_to_half(float v) noexcept
    float qe4_round_half(float v) noexcept

LANES = QE4_LANES
# the codes the kernels dispatch on (the registry's codes; tests/test_fast_simd.py checks)
METHOD_CODES = {"minmax": QE4_MINMAX, "greedy": QE4_GREEDY, "exhaustive": QE4_EXHAUSTIVE,
                "aciq-laplace": QE4_ACIQ_LAPLACE, "aciq-gauss": QE4_ACIQ_GAUSS}
LAYOUT_CODES = {"rowwise": QE4_LAYOUT_ROWWISE, "codebook": QE4_LAYOUT_CODEBOOK,
                "two-tier": QE4_LAYOUT_TWO_TIER}
# SIMD level names by level code (qe4_fast._simd chooses one; every kernel takes its code)
SIMD_LEVELS = tuple(simd_name(level) for level in range(QE4_SIMD_LEVELS))


def cpu_simd_level():
    """The code of the widest SIMD level this CPU (and OS) runs: an index into SIMD_LEVELS."""
    return qe4_cpu_simd_level()


def openmp_compiled():
    """True when this module was compiled with OpenMP."""
    return bool(QE4_OPENMP)


def omp_max_threads():
    """omp_get_max_threads(): the OpenMP default team size (honours OMP_NUM_THREADS)."""
    return omp_get_max_threads()


def work_floats(int n_cols, int method, int max_levels):
    """Floats of per-thread scratch space a block of rows of ``method`` needs."""
    cdef int64_t n = qe4_rowwise_work_floats(method, n_cols, max_levels)
    if n < 0:
        check(QE4_ERR_METHOD, "qe4_fast._rowwise.work_floats", METHOD_CODES, method, -1, -1, -1)
    return n


def quantize_rows(const float[:, ::1] x,      # IN  [n_rows, n_cols]
                  int bits, int method, bint fp16, float n_bins, float min_bins,
                  float aciq_c, int max_levels,
                  float[:, ::1] work,         # scratch [n_threads, work_floats]
                  float[::1] lo,              # OUT [n_rows] chosen ranges (0 rows: minmax + out)
                  float[::1] hi,              # OUT [n_rows]
                  uint8_t[:, ::1] out,        # OUT [n_rows, row_bytes], or 0 rows: ranges only
                  int n_threads, int simd):
    """Ranges of every row by ``method``, then (if ``out`` has rows) the packed rows, with
    the kernels of SIMD level code ``simd``.

    Method minmax with ``out``: one fused pass that does not keep the ranges (``lo`` and
    ``hi`` may have 0 rows).  Returns, for method minmax, the number of rows failing
    check_fp16_ranges (else 0).  Raises ValueError for an unknown method code, a bit width
    without a kernel or a SIMD level this CPU does not run (before touching any row)."""
    cdef rows_job j
    _job(&j, x, bits, fp16, out, n_threads)
    j.work = &work[0, 0]
    j.work_stride = work.shape[1]
    j.plan.n_bins = n_bins
    j.plan.min_bins = min_bins
    j.plan.aciq_c = aciq_c
    j.plan.max_levels = max_levels
    j.plan.lo = &lo[0] if lo.shape[0] > 0 else NULL
    j.plan.hi = &hi[0] if hi.shape[0] > 0 else NULL
    check(qe4_rowwise_plan_init(&j.plan, method, simd), "qe4_fast._rowwise.quantize_rows",
          METHOD_CODES, method, bits, -1, simd)
    if method == QE4_EXHAUSTIVE:
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
    qe4_rowwise_plan plan             # quantize_rows, row_minmax: what each block computes
    const float *x
    int n_rows, n_cols, unit
    bint fp16
    float qmax
    float *work
    Py_ssize_t work_stride
    const float *lo_in
    const float *hi_in
    float *loss
    int64_t n_blocks, n_chunks, n_bad


cdef void _job(rows_job *j, const float[:, ::1] x, int bits, bint fp16, uint8_t[:, ::1] out,
               int n_threads):
    """The fields every row kernel uses; chunks are runs of blocks of QE4_LANES rows."""
    memset(j, 0, sizeof(rows_job))
    j.x = &x[0, 0] if x.shape[0] > 0 and x.shape[1] > 0 else NULL
    j.n_rows = x.shape[0]
    j.n_cols = x.shape[1]
    j.fp16 = fp16
    j.plan.x = j.x
    j.plan.n_cols = j.n_cols
    j.plan.bits = bits
    j.plan.fp16 = fp16
    j.plan.out = &out[0, 0] if out is not None and out.shape[0] > 0 else NULL
    j.plan.row_bytes = out.shape[1] if out is not None else 0
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
        n_bad += qe4_rowwise_block(&j.plan, r0, n, j.work + worker * j.work_stride)
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
               int n_threads, int simd):
    """Each row's min and max (a zero bound is +0.0); returns the number of rows whose
    range fails qe4._validate.check_fp16_ranges."""
    cdef rows_job j
    _job(&j, x, bits, fp16, None, n_threads)
    j.plan.lo = &lo[0] if lo.shape[0] > 0 else NULL
    j.plan.hi = &hi[0] if hi.shape[0] > 0 else NULL
    check(qe4_rowwise_plan_init(&j.plan, QE4_MINMAX, simd), "qe4_fast._rowwise.row_minmax",
          METHOD_CODES, QE4_MINMAX, bits, -1, simd)
    with nogil:
        par_run(j.n_chunks, n_threads, _quantize_chunk, &j)
    return j.n_bad


# float16 conversions of _common.h, for tests against numpy (every kernel uses these)

def half_to_float(const uint16_t[::1] h, float[::1] out):
    """out[i] = float32 value of the float16 bits h[i] (numpy's astype(float32))."""
    cdef Py_ssize_t i
    for i in range(h.shape[0]):
        out[i] = qe4_half_to_float(h[i])


def float_to_half(const float[::1] v, uint16_t[::1] out):
    """out[i] = float16 bits of v[i], round to nearest-even (numpy's astype(float16))."""
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        out[i] = qe4_float_to_half(v[i])


def round_half(const float[::1] v, float[::1] out):
    """out[i] = v[i] rounded to float16 and back, branch-free (the kernels' vector form)."""
    cdef Py_ssize_t i
    for i in range(v.shape[0]):
        out[i] = qe4_round_half(v[i])
