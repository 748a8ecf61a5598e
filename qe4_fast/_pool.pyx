# cython: language_level=3
"""qe4_fast's thread pool (the implementation and its contract are in _pool_impl.h).

Other kernel modules ``cimport par_run`` from here, so one pool serves the process.
"""

from libc.stdint cimport int64_t

cdef extern from "_pool_impl.h" nogil:
    void qe4_pool_run(int64_t n_chunks, int n_threads, qe4_chunk_fn fn, void *ctx)
    int qe4_pool_threaded()
    int qe4_pool_helpers()
    int qe4_pool_watching()
    void qe4_pool_stats(int64_t *out)
    void qe4_pool_set_backoff(int on)


cdef void par_run(int64_t n_chunks, int n_threads, qe4_chunk_fn fn, void *ctx) noexcept nogil:
    """Run fn(ctx, c, worker) for every chunk c < n_chunks on up to n_threads threads."""
    qe4_pool_run(n_chunks, n_threads, fn, ctx)


def threaded():
    """True when the pool has helper threads (the parallel build)."""
    return bool(qe4_pool_threaded())


def n_helpers():
    """Helper threads the pool has created so far in this process."""
    return qe4_pool_helpers()


def watching():
    """Helper threads running at this moment in their short watch for the next job (after
    a job they spin QE4_HELPER_SPIN_NS before sleeping): running threads of this process
    that are not a neighbour's (qe4_fast._threads.free_cpus leaves them out)."""
    return qe4_pool_watching()


def stats():
    """Counters since the process started: parallel jobs, chunks helpers ran, stalls (a
    call waited long for a helper's chunk) and calls run alone while backing off."""
    cdef int64_t out[4]
    qe4_pool_stats(out)
    return {"jobs": out[0], "helper_chunks": out[1], "stalls": out[2], "backed_off": out[3]}


def set_backoff(bint on):
    """Switch the back-off after stalls on (the default) or off (tests, benchmarks)."""
    qe4_pool_set_backoff(on)
