# cython: language_level=3
"""Codebook kernels (see _codebook_kernels.h; numerics in qe4/codebook.py).

Inputs are validated, C-contiguous, native buffers; kernels never raise except
MemoryError when scratch space cannot be allocated.  Work is split across
independent rows, groups or bags only, so the bytes do not depend on n_threads.
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc

from ._openmp_helpers cimport omp_get_thread_num

cdef extern from "_codebook_kernels.h" nogil:
    ctypedef struct cb_work:
        double *xs
        double *s
        double *q
        double *w
        double *c64
        float *cents
    int cb_work_init(cb_work *wk, int64_t n, int64_t K)
    void cb_work_free(cb_work *wk)
    void cb_encode_row(cb_work *wk, const float *x, int method, int64_t max_iter, int bits,
                       int f16, const double *inv, uint8_t *row)
    void cb_points_optimal(cb_work *wk, int64_t n, double shift, const double *inv)
    int CB_SLOTS
    int64_t cb_group_points(const float *x, int64_t dim, const int64_t *rows, int64_t m,
                            int32_t *rank, double *s, double *q, double *w, double *shift)
    float cb_store(double c, int f16)
    void cb_sort_floats(float *v, int n)
    void cb_assign_pack(const float *x, int64_t dim, const float *cents, int K, int bits,
                        uint8_t *out)
    const float *cb_row_cents(const uint8_t *row, int64_t code_bytes, int layout, int f16,
                              int K, int id_bytes, const float *books, float *tmp)
    void cb_row_values(const uint8_t *row, int64_t dim, int bits, const float *cents,
                       float *out)
    int cb_bag(const uint8_t *data, int64_t row_bytes, int64_t code_bytes, int64_t dim,
                int bits, int layout, int f16, int id_bytes, const float *books, int64_t n_groups,
               const int64_t *idx, int64_t n_idx, int64_t p0, int64_t p1, const float *weights,
               int mean, float *acc, float *vals, int simd)
    int cb_simd_level()


def encode_rows(const float[:, ::1] x,      # IN  [n_rows, dim]
                int bits, int method, int64_t max_iter, int f16,
                uint8_t[:, ::1] out,         # OUT [n_rows, row_bytes]
                int n_threads):
    """Fit, store and encode every row of a "codebook" table (method 0 kmeans, 1 optimal)."""
    cdef int64_t n_rows = x.shape[0], dim = x.shape[1], K = 1 << bits, r, m
    cdef int failed = 0, t
    cdef cb_work *wks = <cb_work *>calloc(n_threads, sizeof(cb_work))
    cdef double *inv = <double *>malloc((dim + 1) * sizeof(double))
    if inv == NULL or wks == NULL:
        free(inv)
        free(wks)
        raise MemoryError("qe4_fast.codebook: no memory for scratch space")
    inv[0] = 0.0
    for m in range(1, dim + 1):
        inv[m] = 1.0 / <double>m
    for t in range(n_threads):
        failed |= cb_work_init(&wks[t], dim, K) != 0
    if not failed:
        for r in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
            cb_encode_row(&wks[omp_get_thread_num()], &x[r, 0], method, max_iter, bits, f16,
                          inv, &out[r, 0])
    for t in range(n_threads):
        cb_work_free(&wks[t])
    free(wks)
    free(inv)
    if failed:
        raise MemoryError("qe4_fast.codebook: no memory for per-thread scratch space")


def fit_groups(const float[:, ::1] x,        # IN  [n_rows, dim]
               const int64_t[::1] order,     # IN  rows sorted by group (stable)
               const int64_t[::1] edges,     # IN  [n_groups + 1]: group g = order[edges[g]:edges[g+1]]
               int f16,
               float[:, ::1] books,          # OUT [n_groups, K] stored, sorted centroids
               int n_threads):
    """Bin each group's values and fit its exact 1-D k-means codebook (empty group: zeros)."""
    cdef int64_t n_groups = books.shape[0], K = books.shape[1], dim = x.shape[1], g, i, n, m
    cdef int64_t cap = min(<int64_t>CB_SLOTS, max(<int64_t>1, x.shape[0] * dim))
    cdef int failed = 0, t
    cdef double shift
    cdef cb_work *wk
    cdef cb_work *wks = <cb_work *>calloc(n_threads, sizeof(cb_work))
    cdef int32_t **ranks = <int32_t **>calloc(n_threads, sizeof(int32_t *))
    cdef double **pts = <double **>calloc(n_threads, sizeof(double *))
    cdef int32_t *rank
    cdef double *pt
    if wks == NULL or ranks == NULL or pts == NULL:
        failed = 1
    else:
        for t in range(n_threads):
            ranks[t] = <int32_t *>malloc(CB_SLOTS * sizeof(int32_t))
            pts[t] = <double *>malloc(3 * cap * sizeof(double))
            if ranks[t] == NULL or pts[t] == NULL:
                failed = 1
            else:
                for i in range(CB_SLOTS):
                    ranks[t][i] = -1
    if not failed:
        for g in prange(n_groups, nogil=True, schedule="dynamic", num_threads=n_threads):
            m = edges[g + 1] - edges[g]
            if m == 0:
                for i in range(K):
                    books[g, i] = 0.0
                continue
            t = omp_get_thread_num()
            pt = pts[t]
            n = cb_group_points(&x[0, 0], dim, &order[edges[g]], m, ranks[t], pt, pt + cap,
                                pt + 2 * cap, &shift)
            wk = &wks[t]
            if cb_work_init(wk, n, K) != 0:
                failed = 1
                continue
            for i in range(n):
                wk.s[i] = pt[i]
                wk.q[i] = pt[cap + i]
                wk.w[i] = pt[2 * cap + i]
            cb_points_optimal(wk, n, shift, NULL)
            for i in range(K):
                books[g, i] = cb_store(wk.c64[i], f16)
            cb_sort_floats(&books[g, 0], <int>K)
            cb_work_free(wk)
    if ranks != NULL:
        for t in range(n_threads):
            free(ranks[t])
    if pts != NULL:
        for t in range(n_threads):
            free(pts[t])
    free(ranks)
    free(pts)
    free(wks)
    if failed:
        raise MemoryError("qe4_fast.codebook: no memory for the groups' dynamic programs")


def encode_two_tier(const float[:, ::1] x,        # IN  [n_rows, dim]
                    const int64_t[::1] gid,        # IN  [n_rows], < n_groups
                    const float[:, ::1] books,     # IN  [n_groups, K]
                    int bits, int id_bytes,
                    uint8_t[:, ::1] out,           # OUT [n_rows, code_bytes + id_bytes]
                    int n_threads):
    cdef int64_t n_rows = x.shape[0], dim = x.shape[1], r, nb = (dim * bits + 7) // 8
    cdef int K = 1 << bits
    for r in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        cb_assign_pack(&x[r, 0], dim, &books[gid[r], 0], K, bits, &out[r, 0])
        out[r, nb] = <uint8_t>(gid[r] & 255)
        if id_bytes == 2:
            out[r, nb + 1] = <uint8_t>(gid[r] >> 8)


def dequantize(const uint8_t[:, ::1] data,    # IN  [n_rows, row_bytes]
               int64_t dim, int bits, int layout, int f16, int id_bytes,
               const float[:, ::1] books,     # IN  [n_groups, K] (two-tier) or [1, K] unused
               float[:, ::1] out,             # OUT [n_rows, dim]
               int n_threads):
    """Dequantize codebook or two-tier rows.  Returns the number of two-tier rows whose
    group id is >= books.shape[0] (checked here, as the bag kernels do: such a row is
    never looked up, its output row is zeros, and the caller raises)."""
    cdef int64_t n_rows = data.shape[0], r, g, j, nb = (dim * bits + 7) // 8
    cdef int64_t n_groups = books.shape[0], n_bad = 0
    cdef int K = 1 << bits
    cdef const float *c
    cdef float *tmp = <float *>malloc(16 * n_threads * sizeof(float))
    if tmp == NULL:
        raise MemoryError("qe4_fast.codebook: no memory for scratch space")
    for r in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        if layout == 1:
            g = data[r, nb] if id_bytes == 1 else data[r, nb] | (<int64_t>data[r, nb + 1] << 8)
            if g >= n_groups:
                n_bad += 1
                for j in range(dim):
                    out[r, j] = 0.0
                continue
        c = cb_row_cents(&data[r, 0], nb, layout, f16, K, id_bytes, &books[0, 0],
                         tmp + 16 * omp_get_thread_num())
        cb_row_values(&data[r, 0], dim, bits, c, &out[r, 0])
    free(tmp)
    return n_bad


def embedding_bag(const uint8_t[:, ::1] data, int64_t dim, int bits, int layout, int f16,
                  int id_bytes,
                  const float[:, ::1] books,  # IN  [n_groups, K] (two-tier) or [1, K] unused
                  const int64_t[::1] idx,     # IN  [n_indices], validated
                  const int64_t[::1] starts,  # IN  [n_bags + 1]
                  weights,                    # IN  float32 [n_indices] or None
                  int mean,
                  float[:, ::1] out,          # OUT [n_bags, dim]
                  int n_threads, simd=True):
    """Bags over codebook rows, all paths giving the same bytes.  simd: True = the best the
    CPU has (4-bit rows: AVX-512F, else AVX2), False or 0 = the portable loop, 1 = at most
    AVX2, 2 = at most AVX-512F.

    Returns the number of bags that met a two-tier group id >= books.shape[0] (their
    output is unfinished: the caller raises)."""
    cdef int64_t n_bags = out.shape[0], m, nb = (dim * bits + 7) // 8
    cdef const float[::1] wv
    cdef const float *wp = NULL
    cdef float *vals = <float *>malloc((dim + 1) * n_threads * sizeof(float))
    cdef const int64_t *ip = &idx[0] if idx.shape[0] else NULL
    cdef int use_simd = cb_simd_level() if simd is True else max(0, min(int(simd), cb_simd_level()))
    cdef int64_t n_bad = 0, n_groups = books.shape[0]
    if weights is not None:
        wv = weights
        if wv.shape[0]:
            wp = &wv[0]
    if vals == NULL:
        raise MemoryError("qe4_fast.codebook: no memory for bag scratch space")
    for m in prange(n_bags, nogil=True, schedule="static", num_threads=n_threads):
        n_bad += cb_bag(&data[0, 0], data.shape[1], nb, dim, bits, layout, f16, id_bytes,
               &books[0, 0], n_groups, ip, idx.shape[0], starts[m], starts[m + 1], wp, mean, &out[m, 0],
               vals + (dim + 1) * omp_get_thread_num(), use_simd)
    free(vals)
    return n_bad


def simd_available():
    """True when the CPU has AVX2 + FMA + F16C (the 4-bit bag kernel then uses them)."""
    return cb_simd_level() >= 1


def simd_level():
    """0: portable bag loop only, 1: AVX2 + FMA + F16C, 2: also AVX-512F (4-bit bags)."""
    return cb_simd_level()
