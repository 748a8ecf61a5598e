# The "mse" search kernels (the compiled twin of qe4/mse.py).
#
# Takes validated, C-contiguous, native buffers from qe4_fast.mse, releases the GIL and
# splits independent blocks of QE4_LANES rows into chunks run by qe4_fast's pool
# (_pool.h); each row is computed in the reference's order, so the bytes do not depend
# on n_threads.  The numerics live in qe4_fast/_mse_kernels.h.

from libc.stdint cimport int64_t, uint8_t

from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_n_chunks

cdef extern from "_mse_kernels.h":
    int QE4_LANES
    size_t qe4_mse_work_floats(int n_cols, int n_keep) noexcept nogil
    void qe4_mse_block(const float *x, int n, int n_cols, float qmax, int fp16, float max_trim,
                       int n_steps, int n_keep, int n_iter, float *work, float *scale_out,
                       float *bias_out, float *inv_out) noexcept nogil
    void qe4_mse_encode_block(const float *x, int r0, int n, int n_cols, int bits, int fp16,
                              const float *scale, const float *bias, const float *inv,
                              uint8_t *out, size_t row_bytes) noexcept nogil

LANES = QE4_LANES


def work_floats(int n_cols, int n_keep):
    """Floats of per-thread scratch space a block of rows needs."""
    return qe4_mse_work_floats(n_cols, n_keep)


ctypedef struct mse_job:
    const float *x
    int n_rows, n_cols, bits, n_steps, n_keep, n_iter
    bint fp16
    float qmax, max_trim
    float *work
    Py_ssize_t work_stride
    float *scale
    float *bias
    float *inv
    uint8_t *out
    size_t row_bytes
    int64_t n_blocks, n_chunks


def mse_rows(const float[:, ::1] x,       # IN  [n_rows, n_cols], finite, ranges checked
             int bits, bint fp16, float max_trim, int n_steps, int n_keep, int n_iter,
             float[:, ::1] work,          # scratch [n_threads, work_floats]
             float[::1] scale,            # OUT [n_rows]
             float[::1] bias,             # OUT [n_rows]
             float[::1] inv,              # OUT [n_rows]
             uint8_t[:, ::1] out,         # OUT [n_rows, row_bytes], or 0 rows: parameters only
             int n_threads):
    """qe4.mse.mse_params of every row, then (if ``out`` has rows) the packed rows.
    ``n_keep`` must not exceed the number of scan ranges."""
    cdef mse_job j
    j.x = &x[0, 0]
    j.n_rows = x.shape[0]
    j.n_cols = x.shape[1]
    j.bits = bits
    j.fp16 = fp16
    j.qmax = <float>((1 << bits) - 1)
    j.max_trim = max_trim
    j.n_steps = n_steps
    j.n_keep = n_keep
    j.n_iter = n_iter
    j.work = &work[0, 0]
    j.work_stride = work.shape[1]
    j.scale = &scale[0]
    j.bias = &bias[0]
    j.inv = &inv[0]
    j.out = &out[0, 0] if out.shape[0] > 0 else NULL
    j.row_bytes = out.shape[1]
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
        qe4_mse_block(j.x + <size_t>r0 * j.n_cols, n, j.n_cols, j.qmax, j.fp16, j.max_trim,
                      j.n_steps, j.n_keep, j.n_iter, j.work + worker * j.work_stride,
                      j.scale + r0, j.bias + r0, j.inv + r0)
        if j.out != NULL:
            qe4_mse_encode_block(j.x, r0, n, j.n_cols, j.bits, j.fp16, j.scale, j.bias, j.inv,
                                 j.out, j.row_bytes)
