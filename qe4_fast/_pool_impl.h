/* qe4_fast's thread pool: the one parallel-loop mechanism of every kernel family.
 * Included only by _pool.pyx (one pool per process); kernels include _pool.h.
 *
 * qe4_pool_run(n_chunks, n_threads, fn, ctx) calls fn(ctx, c, worker) once for every chunk
 * c in [0, n_chunks) and returns when all are done.  The calling thread is worker 0 and
 * takes part; up to n_threads - 1 helpers (ids 1 .. n_threads - 1, so per-worker scratch
 * needs n_threads slots) join if and when they get a CPU.  Chunks are claimed one at a
 * time from an atomic counter, so:
 *   - the caller never waits for a helper that has not started: if no helper arrives (a
 *     CPU quota parked it, a busy neighbour holds its core) the caller runs every chunk;
 *   - the join waits only for chunks a helper actually claimed and is running;
 *   - idle helpers sleep on a condition variable (no spinning that burns a CPU quota or a
 *     neighbour's core), apart from a short spin after a job for back-to-back calls.
 * Which worker runs which chunk varies from call to call; kernels make each chunk's
 * output depend only on its chunk index (fixed sequential order inside), so the bytes do
 * not depend on the thread count or on the schedule.
 *
 * One job runs at a time: a call made while the pool serves another Python thread's call
 * (or from inside a chunk) runs all its chunks on its own thread.  Helpers are created on
 * first use, with small stacks; if the system refuses one (ulimit -v, a process limit) the
 * call goes on with the helpers it has.  A forked child starts with an empty pool (the
 * parent's helpers do not exist there) and creates its own.
 *
 * Without OpenMP (QE4_DISABLE_OPENMP=1, the serial build) there are no helpers: every
 * chunk runs on the calling thread, in order.  The parallel build links OpenMP only for
 * its default team size (omp_get_max_threads: OMP_NUM_THREADS, threadpoolctl), read by
 * qe4_fast._threads; no kernel runs an OpenMP parallel region.
 */
#ifndef QE4_POOL_IMPL_H
#define QE4_POOL_IMPL_H

#include "_pool.h"

#include <stdint.h>
#include <stdlib.h>

static void qe4_run_inline(int64_t n_chunks, qe4_chunk_fn fn, void *ctx)
{
    for (int64_t c = 0; c < n_chunks; c++) fn(ctx, c, 0);
}

#ifndef _OPENMP

static int qe4_pool_threaded(void) { return 0; }
static int qe4_pool_helpers(void) { return 0; }
static int qe4_pool_watching(void) { return 0; }
static void qe4_pool_stats(int64_t *out) { out[0] = out[1] = out[2] = out[3] = 0; }
static void qe4_pool_set_backoff(int on) { (void)on; }
static void qe4_pool_run(int64_t n_chunks, int n_threads, qe4_chunk_fn fn, void *ctx)
{
    (void)n_threads;
    qe4_run_inline(n_chunks, fn, ctx);
}

#else  /* the parallel build */

#include <pthread.h>
#include <sched.h>                       /* SCHED_BATCH: Python.h defines _GNU_SOURCE */
#include <stdatomic.h>
#include <time.h>

#define QE4_POOL_MAX_HELPERS 1024
#define QE4_POOL_STACK (2u << 20)        /* kernels keep well under 64 KiB of stack */
#define QE4_CALLER_SPIN_NS 50000         /* caller: wait this long spinning, then sleep */
#define QE4_HELPER_SPIN_NS 20000         /* helper: watch for the next job this long */

typedef struct qe4_job {
    qe4_chunk_fn fn;
    void *ctx;
    int64_t n_chunks;
    int n_threads;
    atomic_int_fast64_t next;            /* next chunk to claim */
    atomic_int_fast64_t done;            /* chunks finished */
    atomic_int seats;                    /* helper ids handed out */
    atomic_int refs;                     /* holders: the caller + helpers that joined */
    pthread_mutex_t mu;                  /* the caller sleeps on cv until done == n_chunks */
    pthread_cond_t cv;
} qe4_job;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;                   /* helpers sleep here */
    qe4_job *job;                        /* the job helpers may join, or NULL */
    atomic_uint_fast64_t gen;            /* bumped at every new job */
    int n_helpers;                       /* helper threads created */
    int n_sleeping;                      /* helpers waiting on cv */
    int atfork_set;
} qe4_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0};

/* Back-off after a stall: a call that waited much longer for a helper's chunk than a chunk
 * takes (the helper lost its CPU mid-chunk: an overloaded machine, a quota) makes the calls
 * of the next QE4_BACKOFF_MIN_NS run on their own thread; each further stall doubles that
 * time (up to QE4_BACKOFF_MAX_NS), a parallel call without a stall resets it.  Only which
 * thread runs a chunk changes, never the bytes. */
#define QE4_STALL_NS 200000
#define QE4_BACKOFF_MIN_NS 10000000
#define QE4_BACKOFF_MAX_NS 1000000000
static atomic_int_fast64_t qe4_serial_until_ns, qe4_backoff_ns;
static atomic_int qe4_backoff_on = 1;

/* Counters for tests and benchmarks: parallel jobs, chunks run by helpers, stalls, calls
 * that ran on their own thread because of a back-off. */
static atomic_int_fast64_t qe4_n_jobs, qe4_n_helper_chunks, qe4_n_stalls, qe4_n_backed_off;

/* Helpers running right now in their watch for the next job: the system counts them as
 * running threads, qe4_fast._threads must not count them as a neighbour's. */
static atomic_int qe4_n_watching;
static int qe4_pool_watching(void) { return atomic_load_explicit(&qe4_n_watching, memory_order_relaxed); }

static void qe4_pool_stats(int64_t *out)
{
    out[0] = atomic_load(&qe4_n_jobs);
    out[1] = atomic_load(&qe4_n_helper_chunks);
    out[2] = atomic_load(&qe4_n_stalls);
    out[3] = atomic_load(&qe4_n_backed_off);
}

/* Tests switch the back-off off to exercise the helpers on a loaded machine. */
static void qe4_pool_set_backoff(int on)
{
    atomic_store(&qe4_backoff_on, on != 0);
    atomic_store(&qe4_serial_until_ns, 0);
    atomic_store(&qe4_backoff_ns, 0);
}

static int qe4_pool_threaded(void) { return 1; }

static int qe4_pool_helpers(void)
{
    pthread_mutex_lock(&qe4_pool.mu);
    int n = qe4_pool.n_helpers;
    pthread_mutex_unlock(&qe4_pool.mu);
    return n;
}

static inline void qe4_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t qe4_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void qe4_job_release(qe4_job *job)
{
    if (atomic_fetch_sub(&job->refs, 1) == 1) {
        pthread_mutex_destroy(&job->mu);
        pthread_cond_destroy(&job->cv);
        free(job);
    }
}

/* Claim and run chunks until none is left; returns how many this worker ran. */
static int64_t qe4_job_work(qe4_job *job, int worker)
{
    for (int64_t mine = 0;; mine++) {
        int64_t c = atomic_fetch_add(&job->next, 1);
        if (c >= job->n_chunks) return mine;
        job->fn(job->ctx, c, worker);
        if (atomic_fetch_add(&job->done, 1) + 1 == job->n_chunks) {
            pthread_mutex_lock(&job->mu);       /* the caller may be asleep */
            pthread_cond_signal(&job->cv);
            pthread_mutex_unlock(&job->mu);
        }
    }
}

/* A helper: sleep until a job appears, take a seat if the job still wants one, work. */
static void *qe4_helper_main(void *arg)
{
    uint_fast64_t seen = (uint_fast64_t)(uintptr_t)arg;
#ifdef SCHED_BATCH
    /* A woken helper must not preempt the thread that woke it (the caller, about to do
     * the work itself) nor a neighbour: SCHED_BATCH threads never preempt on wake-up; they
     * run on an idle CPU at once, else when the CPU's current thread yields or ticks. */
    struct sched_param sp = {0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
    for (;;) {
        /* short watch for the next job without the lock (back-to-back calls) */
        int64_t until = qe4_now_ns() + QE4_HELPER_SPIN_NS;
        atomic_fetch_add_explicit(&qe4_n_watching, 1, memory_order_relaxed);
        while (atomic_load_explicit(&qe4_pool.gen, memory_order_acquire) == seen
               && qe4_now_ns() < until)
            for (int k = 0; k < 64; k++) qe4_cpu_relax();
        atomic_fetch_sub_explicit(&qe4_n_watching, 1, memory_order_relaxed);
        pthread_mutex_lock(&qe4_pool.mu);
        while (atomic_load(&qe4_pool.gen) == seen || qe4_pool.job == NULL) {
            seen = atomic_load(&qe4_pool.gen);
            qe4_pool.n_sleeping++;
            pthread_cond_wait(&qe4_pool.cv, &qe4_pool.mu);
            qe4_pool.n_sleeping--;
        }
        seen = atomic_load(&qe4_pool.gen);
        qe4_job *job = qe4_pool.job;
        int seat = atomic_fetch_add(&job->seats, 1) + 1;
        if (seat >= job->n_threads || atomic_load(&job->next) >= job->n_chunks) {
            pthread_mutex_unlock(&qe4_pool.mu);  /* enough helpers, or nothing left */
            continue;
        }
        atomic_fetch_add(&job->refs, 1);
        pthread_mutex_unlock(&qe4_pool.mu);
        int64_t ran = qe4_job_work(job, seat);
        atomic_fetch_add_explicit(&qe4_n_helper_chunks, ran, memory_order_relaxed);
        qe4_job_release(job);
    }
    return NULL;
}

static void qe4_pool_atfork_prepare(void) { pthread_mutex_lock(&qe4_pool.mu); }
static void qe4_pool_atfork_parent(void) { pthread_mutex_unlock(&qe4_pool.mu); }
static void qe4_pool_atfork_child(void)
{
    /* only the forking thread exists here: an empty pool, fresh synchronization */
    pthread_mutex_init(&qe4_pool.mu, NULL);
    pthread_cond_init(&qe4_pool.cv, NULL);
    qe4_pool.job = NULL;
    qe4_pool.n_helpers = 0;
    qe4_pool.n_sleeping = 0;
}

/* Create helpers until there are `want` (pool lock held); fewer if the system refuses. */
static void qe4_pool_grow(int want)
{
    pthread_attr_t attr;
    if (want > QE4_POOL_MAX_HELPERS) want = QE4_POOL_MAX_HELPERS;
    if (qe4_pool.n_helpers >= want) return;
    if (!qe4_pool.atfork_set) {
        if (pthread_atfork(qe4_pool_atfork_prepare, qe4_pool_atfork_parent,
                           qe4_pool_atfork_child) != 0)
            return;                              /* no fork safety, no helpers */
        qe4_pool.atfork_set = 1;
    }
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setstacksize(&attr, QE4_POOL_STACK);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (qe4_pool.n_helpers < want) {
        pthread_t th;
        void *gen = (void *)(uintptr_t)atomic_load(&qe4_pool.gen);
        if (pthread_create(&th, &attr, qe4_helper_main, gen) != 0) break;
        qe4_pool.n_helpers++;
    }
    pthread_attr_destroy(&attr);
}

static void qe4_pool_run(int64_t n_chunks, int n_threads, qe4_chunk_fn fn, void *ctx)
{
    if (n_threads > n_chunks) n_threads = (int)n_chunks;
    if (n_threads <= 1) {
        qe4_run_inline(n_chunks, fn, ctx);
        return;
    }
    int64_t t0 = qe4_now_ns();
    if (t0 < atomic_load_explicit(&qe4_serial_until_ns, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&qe4_n_backed_off, 1, memory_order_relaxed);
        qe4_run_inline(n_chunks, fn, ctx);       /* backing off after a stall */
        return;
    }
    qe4_job *job = (qe4_job *)malloc(sizeof(qe4_job));
    if (job == NULL) {
        qe4_run_inline(n_chunks, fn, ctx);
        return;
    }
    job->fn = fn;
    job->ctx = ctx;
    job->n_chunks = n_chunks;
    job->n_threads = n_threads;
    atomic_init(&job->next, 0);
    atomic_init(&job->done, 0);
    atomic_init(&job->seats, 0);
    atomic_init(&job->refs, 1);
    pthread_mutex_init(&job->mu, NULL);
    pthread_cond_init(&job->cv, NULL);

    pthread_mutex_lock(&qe4_pool.mu);
    if (qe4_pool.job != NULL) {                  /* serving another call: run alone */
        pthread_mutex_unlock(&qe4_pool.mu);
        qe4_job_release(job);
        qe4_run_inline(n_chunks, fn, ctx);
        return;
    }
    qe4_pool_grow(n_threads - 1);
    qe4_pool.job = job;
    atomic_fetch_add_explicit(&qe4_pool.gen, 1, memory_order_release);
    int sleeping = qe4_pool.n_sleeping;
    pthread_mutex_unlock(&qe4_pool.mu);
    if (sleeping > 0) {                          /* spinning helpers see gen change */
        if (n_threads - 1 >= sleeping)
            pthread_cond_broadcast(&qe4_pool.cv);
        else
            for (int k = 0; k < n_threads - 1; k++) pthread_cond_signal(&qe4_pool.cv);
    }

    atomic_fetch_add_explicit(&qe4_n_jobs, 1, memory_order_relaxed);
    int64_t mine = qe4_job_work(job, 0);
    int64_t t1 = qe4_now_ns();

    pthread_mutex_lock(&qe4_pool.mu);            /* no new helper joins from here on */
    qe4_pool.job = NULL;
    pthread_mutex_unlock(&qe4_pool.mu);
    int stalled = 0;
    if (atomic_load(&job->done) < n_chunks) {    /* a helper is finishing a chunk it took */
        int64_t until = t1 + QE4_CALLER_SPIN_NS;
        while (atomic_load(&job->done) < n_chunks && qe4_now_ns() < until)
            for (int k = 0; k < 16; k++) qe4_cpu_relax();
        pthread_mutex_lock(&job->mu);
        while (atomic_load(&job->done) < n_chunks) pthread_cond_wait(&job->cv, &job->mu);
        pthread_mutex_unlock(&job->mu);
        int64_t chunk_ns = mine > 0 ? (t1 - t0) / mine : t1 - t0;
        int64_t t2 = qe4_now_ns();
        stalled = t2 - t1 > QE4_STALL_NS + 2 * chunk_ns;
        if (stalled) atomic_fetch_add_explicit(&qe4_n_stalls, 1, memory_order_relaxed);
        if (stalled && atomic_load(&qe4_backoff_on)) {
            int64_t b = atomic_load(&qe4_backoff_ns);
            b = b == 0 ? QE4_BACKOFF_MIN_NS : (2 * b > QE4_BACKOFF_MAX_NS ? QE4_BACKOFF_MAX_NS : 2 * b);
            atomic_store(&qe4_backoff_ns, b);
            atomic_store(&qe4_serial_until_ns, t2 + b);
        }
    }
    if (!stalled && atomic_load_explicit(&qe4_backoff_ns, memory_order_relaxed) != 0)
        atomic_store(&qe4_backoff_ns, 0);
    qe4_job_release(job);
}

#endif  /* _OPENMP */

#endif
