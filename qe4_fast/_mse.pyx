# The "mse" search kernels (the compiled twin of qe4/mse.py).
#
# Takes validated, C-contiguous, native buffers from qe4_fast.mse, releases the GIL and
# splits independent blocks of QE4_LANES rows into chunks run by qe4_fast's pool
# (_pool.h); each row is computed in the reference's order, so the bytes do not depend
# on n_threads or on the SIMD level.  The numerics live in qe4_fast/_mse_kernels.h.

from libc.stdint cimport int64_t, uint8_t

from qe4_fast._common cimport check
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_n_chunks

cdef extern from "_mse_kernels.h":
    int QE4_LANES
    ctypedef struct qe4_mse_plan:
        const float *x
        int n_cols, bits, fp16
        float max_trim
        int n_steps, n_keep, n_iter
        float *scale
        float *bias
        float *inv
        uint8_t *out
        size_t row_bytes
        const float *lev
    size_t qe4_mse_work_floats(int n_cols, int n_keep) noexcept nogil
    int qe4_mse_plan_init(qe4_mse_plan *p, int simd) noexcept nogil
    int qe4_mse_block_run(const qe4_mse_plan *p, int r0, int n, float *work) noexcept nogil

LANES = QE4_LANES


def work_floats(int n_cols, int n_keep):
    """Floats of per-thread scratch space a block of rows needs."""
    return qe4_mse_work_floats(n_cols, n_keep)


ctypedef struct mse_job:
    qe4_mse_plan plan
    int n_rows
    float *work
    Py_ssize_t work_stride
    int64_t n_blocks, n_chunks


def mse_rows(const float[:, ::1] x,       # IN  [n_rows, n_cols], finite, ranges checked
             int bits, bint fp16, float max_trim, int n_steps, int n_keep, int n_iter,
             float[:, ::1] work,          # scratch [n_threads, work_floats]
             float[::1] scale,            # OUT [n_rows]
             float[::1] bias,             # OUT [n_rows]
             float[::1] inv,              # OUT [n_rows]
             uint8_t[:, ::1] out,         # OUT [n_rows, row_bytes], or 0 rows: parameters only
             int n_threads, int simd,
             const float[::1] levels=None):  # IN  [2**bits] ascending level table, or None
    # (with a table: parameters only)
    """qe4.mse.mse_params of every row, then (if ``out`` has rows) the packed rows, with the
    kernels of SIMD level code ``simd``.  ``n_keep`` must not exceed the number of scan
    ranges.  Raises ValueError for a bit width without a kernel or a SIMD level this CPU
    does not run (before touching any row).  With ``levels`` the codes read back as
    ``levels[q]`` (qe4.mse.mse_params(levels=)); then ``out`` must have no rows."""
    cdef mse_job j
    if levels is not None and (levels.shape[0] != (1 << bits) or out.shape[0] > 0):
        raise ValueError(f"qe4_fast._mse.mse_rows: levels has {levels.shape[0]} values for "
                         f"bits={bits} (need {1 << bits}) or out has rows")
    j.plan.x = &x[0, 0]
    j.plan.n_cols = x.shape[1]
    j.plan.bits = bits
    j.plan.fp16 = fp16
    j.plan.max_trim = max_trim
    j.plan.n_steps = n_steps
    j.plan.n_keep = n_keep
    j.plan.n_iter = n_iter
    j.plan.scale = &scale[0]
    j.plan.bias = &bias[0]
    j.plan.inv = &inv[0]
    j.plan.out = &out[0, 0] if out.shape[0] > 0 else NULL
    j.plan.row_bytes = out.shape[1]
    j.plan.lev = &levels[0] if levels is not None else NULL
    check(qe4_mse_plan_init(&j.plan, simd), "qe4_fast._mse.mse_rows", None, -1, bits, -1, simd)
    j.n_rows = x.shape[0]
    j.work = &work[0, 0]
    j.work_stride = work.shape[1]
    j.n_blocks = (j.n_rows + QE4_LANES - 1) // QE4_LANES
    j.n_chunks = qe4_n_chunks(j.n_blocks, n_threads)
    with nogil:
        par_run(j.n_chunks, n_threads, _mse_chunk, &j)


cdef void _mse_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef mse_job *j = <mse_job *>ctx
    cdef int64_t b
    cdef int r0, n
    for b in range(qe4_chunk_start(j.n_blocks, j.n_chunks, c),
                   qe4_chunk_start(j.n_blocks, j.n_chunks, c + 1)):
        r0 = <int>(b * QE4_LANES)
        n = j.n_rows - r0
        if n > QE4_LANES:
            n = QE4_LANES
        qe4_mse_block_run(&j.plan, r0, n, j.work + worker * j.work_stride)
