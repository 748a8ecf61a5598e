# qe4_fast's parallel loops (see _pool.h): the one mechanism every kernel family uses.
#
#     cdef void _chunk(void *ctx, int64_t c, int worker) noexcept nogil:
#         ...  # items qe4_chunk_start(n, n_chunks, c) .. qe4_chunk_start(n, n_chunks, c + 1)
#     with nogil:
#         par_run(qe4_n_chunks(n, n_threads), n_threads, _chunk, &ctx)
#
# worker is in [0, n_threads): index per-thread scratch with it.  CONTRIBUTING.rst says more.
#
# The kernel contract every family on the pool keeps: the Python layer passes validated,
# C-contiguous buffers and a resolved n_threads; a kernel writes into preallocated outputs,
# never raises, and computes each independent item (a row, an index, a bag) in the
# reference's fixed order, so the bytes depend neither on the thread count nor on the chunks.
from libc.stdint cimport int64_t

ctypedef void (*qe4_chunk_fn)(void *ctx, int64_t chunk, int worker) noexcept nogil

cdef extern from "_pool.h" nogil:
    int64_t qe4_chunk_start(int64_t n_items, int64_t n_chunks, int64_t c)
    int64_t qe4_n_chunks(int64_t n_items, int n_threads)
    void qe4_count_add(int64_t *total, int64_t v)   # integer reductions across chunks

cdef void par_run(int64_t n_chunks, int n_threads, qe4_chunk_fn fn, void *ctx) noexcept nogil
