/* The parallel-loop API every qe4_fast kernel family uses (the pool: _pool_impl.h, run
 * from Cython with qe4_fast._pool.par_run).  A kernel splits its independent items (rows,
 * row blocks, bags, groups) into chunks, computes each chunk's items in a fixed order and
 * writes only that chunk's outputs, so the bytes do not depend on the thread count or on
 * which worker ran which chunk.  See CONTRIBUTING.rst, "Parallel loops".
 */
#ifndef QE4_POOL_H
#define QE4_POOL_H

#include <stdint.h>

/* fn(ctx, chunk, worker): worker is in [0, n_threads) (index per-thread scratch with it). */
typedef void (*qe4_chunk_fn)(void *ctx, int64_t chunk, int worker);

/* Chunk c of n_chunks over n_items items is [start(c), start(c + 1)): every item once, in order. */
static inline int64_t qe4_chunk_start(int64_t n_items, int64_t n_chunks, int64_t c)
{
    int64_t q = n_items / n_chunks, r = n_items % n_chunks;   /* the first r chunks get q + 1 */
    return q * c + (c < r ? c : r);
}

/* How many chunks to split n_items over n_threads: one per thread would leave the caller
 * waiting for a slow helper's large share, so several per thread (claimed dynamically). */
#define QE4_CHUNKS_PER_THREAD 16
static inline int64_t qe4_n_chunks(int64_t n_items, int n_threads)
{
    if (n_threads <= 1 || n_items <= 1) return n_items > 0 ? 1 : 0;
    int64_t n = (int64_t)QE4_CHUNKS_PER_THREAD * n_threads;
    return n < n_items ? n : n_items;
}

/* Integer reductions across chunks (counts, flags): order-free, so the result does not
 * depend on the schedule.  Never reduce floats across chunks: the sum would. */
static inline void qe4_count_add(int64_t *total, int64_t v)
{
    if (v) __atomic_fetch_add(total, v, __ATOMIC_RELAXED);
}

#endif
