# The "mse" search kernels (the compiled twin of qe4/mse.py).
#
# Takes validated, C-contiguous, native buffers from qe4_fast.mse (validation goes
# through qe4._validate, so errors match the reference), releases the GIL and runs one
# prange over independent blocks of QE4_LANES rows; each row is computed in the
# reference's order, so the bytes do not depend on n_threads.  The numerics live in
# qe4_fast/_mse_kernels.h.

from cython.parallel cimport prange, threadid
from libc.stdint cimport uint8_t

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
    cdef int n_rows = x.shape[0], n_cols = x.shape[1]
    cdef int n_blocks = (n_rows + QE4_LANES - 1) // QE4_LANES
    cdef bint encode = out.shape[0] > 0
    cdef float qmax = <float>((1 << bits) - 1)
    cdef size_t row_bytes = out.shape[1]
    cdef int b, r0, n, tid
    cdef int chunk = max(1, n_blocks // (16 * n_threads))  # dynamic: a busy core slows no one
    for b in prange(n_blocks, nogil=True, schedule="dynamic", chunksize=chunk,
                    num_threads=n_threads):
        tid = threadid()
        r0 = b * QE4_LANES
        n = n_rows - r0
        if n > QE4_LANES:
            n = QE4_LANES
        qe4_mse_block(&x[r0, 0], n, n_cols, qmax, fp16, max_trim, n_steps, n_keep, n_iter,
                      &work[tid, 0], &scale[r0], &bias[r0], &inv[r0])
        if encode:
            qe4_mse_encode_block(&x[0, 0], r0, n, n_cols, bits, fp16, &scale[0], &bias[0],
                                 &inv[0], &out[0, 0], row_bytes)
