# cython: language_level=3
"""Codebook kernels (see _codebook_kernels.h; numerics in qe4/codebook.py).

Inputs are validated, C-contiguous, native buffers; kernels raise only MemoryError when
scratch space cannot be allocated, and ValueError for a method, layout, bit width or SIMD
level code they do not implement (cb_check, before any row is touched).  Work is split
across independent rows, groups or bags only (chunks run by qe4_fast's pool, _pool.h;
per-thread scratch is indexed by the pool's worker id), so the bytes do not depend on
n_threads.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc

from qe4_fast._common cimport (QE4_KMEANS, QE4_KMEANS_OPTIMAL, QE4_LAYOUT_CODEBOOK,
                               QE4_LAYOUT_TWO_TIER, QE4_SIMD_PORTABLE, QE4_TWO_TIER, check)
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_count_add, qe4_n_chunks

cdef extern from "_codebook_kernels.h" nogil:
    int cb_check(int method, int layout, int bits, int simd)
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
    int64_t cb_best_book(const float *x, int64_t dim, const float *books, int64_t n_books,
                         int K)
    const float *cb_row_cents(const uint8_t *row, int64_t code_bytes, int layout, int f16,
                              int K, int id_bytes, const float *books, float *tmp)
    void cb_row_values(const uint8_t *row, int64_t dim, int bits, const float *cents,
                       float *out)
    int cb_bag(const uint8_t *data, int64_t row_bytes, int64_t code_bytes, int64_t dim,
                int bits, int layout, int f16, int id_bytes, const float *books, int64_t n_groups,
               const int64_t *idx, int64_t n_idx, int64_t p0, int64_t p1, const float *weights,
               int mean, float *acc, float *vals, int simd)

# the codes the kernels dispatch on (the registry's codes; tests/test_fast_simd.py checks)
# (two-tier: fit_groups + encode_two_tier, or encode_with_books; encode_rows takes the per-row methods' codes)
METHOD_CODES = {"kmeans": QE4_KMEANS, "kmeans-optimal": QE4_KMEANS_OPTIMAL,
                "two-tier": QE4_TWO_TIER}
LAYOUT_CODES = {"codebook": QE4_LAYOUT_CODEBOOK, "two-tier": QE4_LAYOUT_TWO_TIER}


cdef int _check(int method, int layout, int bits, int simd, str kernel) except -1:
    return check(cb_check(method, layout, bits, simd), "qe4_fast._codebook." + kernel,
                 METHOD_CODES, method, bits, layout, simd)


def encode_rows(const float[:, ::1] x,      # IN  [n_rows, dim]
                int bits, int method, int64_t max_iter, int f16,
                uint8_t[:, ::1] out,         # OUT [n_rows, row_bytes]
                int n_threads):
    """Fit, store and encode every row of a "codebook" table (``method``: a METHOD_CODES value)."""
    _check(method, -1, bits, QE4_SIMD_PORTABLE, "encode_rows")
    cdef int64_t dim = x.shape[1], K = 1 << bits, m
    cdef int failed = 0, t
    cdef cb_job j
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
        _job(&j, x, bits, f16, out, n_threads)
        j.wks = wks
        j.method = method
        j.max_iter = max_iter
        j.inv = inv
        with nogil:
            par_run(j.n_chunks, n_threads, _encode_chunk, &j)
    for t in range(n_threads):
        cb_work_free(&wks[t])
    free(wks)
    free(inv)
    if failed:
        raise MemoryError("qe4_fast.codebook: no memory for per-thread scratch space")


ctypedef struct cb_job:
    const float *x
    int64_t n_items, n_chunks, dim, row_bytes, nb, code_bytes, n_groups
    int bits, f16, method, layout, id_bytes, K, mean, simd
    int64_t max_iter
    cb_work *wks
    const double *inv
    uint8_t *out
    const uint8_t *data
    const int64_t *gid
    const int64_t *order
    const int64_t *edges
    const float *books_in
    float *books
    float *fout
    float *tmp
    int64_t cap
    int32_t **ranks
    double **pts
    const int64_t *idx
    int64_t n_idx
    const int64_t *starts
    const float *weights
    int64_t n_bad


cdef void _job(cb_job *j, const float[:, ::1] x, int bits, int f16, uint8_t[:, ::1] out,
               int n_threads):
    """Fields most codebook kernels use; chunks are runs of x's rows (or of out's rows)."""
    j.x = &x[0, 0] if x is not None and x.shape[0] > 0 and x.shape[1] > 0 else NULL
    j.dim = x.shape[1] if x is not None else 0
    j.n_items = x.shape[0] if x is not None else out.shape[0]
    j.bits = bits
    j.K = 1 << bits
    j.f16 = f16
    j.nb = (j.dim * bits + 7) // 8
    j.out = &out[0, 0] if out is not None and out.shape[0] > 0 else NULL
    j.row_bytes = out.shape[1] if out is not None else 0
    j.n_chunks = qe4_n_chunks(j.n_items, n_threads)
    j.n_bad = 0


cdef inline int64_t _first(const cb_job *j, int64_t c) noexcept nogil:
    return qe4_chunk_start(j.n_items, j.n_chunks, c)


cdef void _encode_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t r
    for r in range(_first(j, c), _first(j, c + 1)):
        cb_encode_row(&j.wks[worker], j.x + r * j.dim, j.method, j.max_iter, j.bits, j.f16,
                      j.inv, j.out + r * j.row_bytes)


def fit_groups(const float[:, ::1] x,        # IN  [n_rows, dim]
               const int64_t[::1] order,     # IN  rows sorted by group (stable)
               const int64_t[::1] edges,     # IN  [n_groups + 1]: group g = order[edges[g]:edges[g+1]]
               int f16,
               float[:, ::1] books,          # OUT [n_groups, K] stored, sorted centroids
               int n_threads):
    """Bin each group's values and fit its exact 1-D k-means codebook (empty group: zeros)."""
    cdef int64_t n_groups = books.shape[0], K = books.shape[1], dim = x.shape[1], i
    cdef int64_t cap = min(<int64_t>CB_SLOTS, max(<int64_t>1, x.shape[0] * dim))
    cdef int failed = 0, t
    cdef cb_job j
    cdef cb_work *wks = <cb_work *>calloc(n_threads, sizeof(cb_work))
    cdef int32_t **ranks = <int32_t **>calloc(n_threads, sizeof(int32_t *))
    cdef double **pts = <double **>calloc(n_threads, sizeof(double *))
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
        _job(&j, x, 0, f16, None, n_threads)
        j.n_items = n_groups
        j.n_chunks = qe4_n_chunks(n_groups, n_threads)
        j.K = K
        j.order = &order[0] if order.shape[0] > 0 else NULL
        j.edges = &edges[0]
        j.books = &books[0, 0] if n_groups > 0 else NULL
        j.cap = cap
        j.wks = wks
        j.ranks = ranks
        j.pts = pts
        with nogil:
            par_run(j.n_chunks, n_threads, _fit_chunk, &j)
        failed = j.n_bad != 0
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


cdef void _fit_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t g, i, n, m, K = j.K, cap = j.cap
    cdef double shift
    cdef cb_work *wk = &j.wks[worker]
    cdef double *pt = j.pts[worker]
    for g in range(_first(j, c), _first(j, c + 1)):
        m = j.edges[g + 1] - j.edges[g]
        if m == 0:
            for i in range(K):
                j.books[g * K + i] = 0.0
            continue
        n = cb_group_points(j.x, j.dim, j.order + j.edges[g], m, j.ranks[worker], pt, pt + cap,
                            pt + 2 * cap, &shift)
        if cb_work_init(wk, n, K) != 0:
            qe4_count_add(&j.n_bad, 1)
            continue
        for i in range(n):
            wk.s[i] = pt[i]
            wk.q[i] = pt[cap + i]
            wk.w[i] = pt[2 * cap + i]
        cb_points_optimal(wk, n, shift, NULL)
        for i in range(K):
            j.books[g * K + i] = cb_store(wk.c64[i], j.f16)
        cb_sort_floats(j.books + g * K, <int>K)
        cb_work_free(wk)


def encode_two_tier(const float[:, ::1] x,        # IN  [n_rows, dim]
                    const int64_t[::1] gid,        # IN  [n_rows], < n_groups
                    const float[:, ::1] books,     # IN  [n_groups, K]
                    int bits, int id_bytes,
                    uint8_t[:, ::1] out,           # OUT [n_rows, code_bytes + id_bytes]
                    int n_threads):
    _check(-1, QE4_LAYOUT_TWO_TIER, bits, QE4_SIMD_PORTABLE, "encode_two_tier")
    cdef cb_job j
    _job(&j, x, bits, 0, out, n_threads)
    j.gid = &gid[0] if gid.shape[0] > 0 else NULL
    j.books_in = &books[0, 0]
    j.id_bytes = id_bytes
    with nogil:
        par_run(j.n_chunks, n_threads, _two_tier_chunk, &j)


cdef void _two_tier_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t r
    cdef uint8_t *row
    for r in range(_first(j, c), _first(j, c + 1)):
        row = j.out + r * j.row_bytes
        cb_assign_pack(j.x + r * j.dim, j.dim, j.books_in + j.gid[r] * j.K, j.K, j.bits, row)
        row[j.nb] = <uint8_t>(j.gid[r] & 255)
        if j.id_bytes == 2:
            row[j.nb + 1] = <uint8_t>(j.gid[r] >> 8)


def encode_with_books(const float[:, ::1] x,        # IN  [n_rows, dim]
                      const float[:, ::1] books,    # IN  [n_groups, K], sorted, finite
                      int bits, int id_bytes,
                      uint8_t[:, ::1] out,          # OUT [n_rows, code_bytes + id_bytes]
                      int n_threads):
    """Two-tier rows of ``x`` against fixed codebooks: each row's group is the codebook of
    least squared error (qe4.codebook.best_books), its codes that codebook's nearest
    centroids (qe4.codebook.encode_with_books)."""
    _check(-1, QE4_LAYOUT_TWO_TIER, bits, QE4_SIMD_PORTABLE, "encode_with_books")
    cdef cb_job j
    _job(&j, x, bits, 0, out, n_threads)
    j.books_in = &books[0, 0]
    j.n_groups = books.shape[0]
    j.id_bytes = id_bytes
    with nogil:
        par_run(j.n_chunks, n_threads, _books_chunk, &j)


cdef void _books_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t r, g
    cdef const float *xr
    cdef uint8_t *row
    for r in range(_first(j, c), _first(j, c + 1)):
        xr = j.x + r * j.dim
        g = cb_best_book(xr, j.dim, j.books_in, j.n_groups, j.K)
        row = j.out + r * j.row_bytes
        cb_assign_pack(xr, j.dim, j.books_in + g * j.K, j.K, j.bits, row)
        row[j.nb] = <uint8_t>(g & 255)
        if j.id_bytes == 2:
            row[j.nb + 1] = <uint8_t>(g >> 8)


def dequantize(const uint8_t[:, ::1] data,    # IN  [n_rows, row_bytes]
               int64_t dim, int bits, int layout, int f16, int id_bytes,
               const float[:, ::1] books,     # IN  [n_groups, K] (two-tier) or [1, K] unused
               float[:, ::1] out,             # OUT [n_rows, dim]
               int n_threads):
    """Centroid values of every row (``layout``: a LAYOUT_CODES value).  Returns the number
    of two-tier rows whose group id is >= books.shape[0] (checked in the kernel, as the bag
    kernels do: such a row is never looked up, its output row is zeros, and the caller raises)."""
    _check(-1, layout, bits, QE4_SIMD_PORTABLE, "dequantize")
    cdef cb_job j
    cdef float *tmp = <float *>malloc(16 * n_threads * sizeof(float))
    if tmp == NULL:
        raise MemoryError("qe4_fast.codebook: no memory for scratch space")
    _table_job(&j, data, dim, bits, layout, f16, id_bytes, books, n_threads)
    j.n_items = data.shape[0]
    j.n_chunks = qe4_n_chunks(j.n_items, n_threads)
    j.fout = &out[0, 0] if data.shape[0] > 0 else NULL
    j.tmp = tmp
    with nogil:
        par_run(j.n_chunks, n_threads, _dequantize_chunk, &j)
    free(tmp)
    return j.n_bad


cdef void _table_job(cb_job *j, const uint8_t[:, ::1] data, int64_t dim, int bits, int layout,
                     int f16, int id_bytes, const float[:, ::1] books, int n_threads):
    """The fields of a lookup over a codebook table's rows."""
    _job(j, None, bits, f16, None, n_threads)
    j.dim = dim
    j.nb = (dim * bits + 7) // 8
    j.data = &data[0, 0] if data.shape[0] > 0 else NULL
    j.row_bytes = data.shape[1]
    j.layout = layout
    j.id_bytes = id_bytes
    j.books_in = &books[0, 0]
    j.n_groups = books.shape[0]


cdef void _dequantize_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t r, g, k, n_bad = 0
    cdef const float *cents
    cdef const uint8_t *row
    for r in range(_first(j, c), _first(j, c + 1)):
        row = j.data + r * j.row_bytes
        if j.layout == QE4_LAYOUT_TWO_TIER:     # two-tier: the group id is checked here, as the bags do
            g = row[j.nb] if j.id_bytes == 1 else row[j.nb] | (<int64_t>row[j.nb + 1] << 8)
            if g >= j.n_groups:
                n_bad += 1
                for k in range(j.dim):
                    j.fout[r * j.dim + k] = 0.0
                continue
        cents = cb_row_cents(row, j.nb, j.layout, j.f16, j.K, j.id_bytes, j.books_in,
                             j.tmp + 16 * worker)
        cb_row_values(row, j.dim, j.bits, cents, j.fout + r * j.dim)
    qe4_count_add(&j.n_bad, n_bad)


def embedding_bag(const uint8_t[:, ::1] data, int64_t dim, int bits, int layout, int f16,
                  int id_bytes,
                  const float[:, ::1] books,  # IN  [n_groups, K] (two-tier) or [1, K] unused
                  const int64_t[::1] idx,     # IN  [n_indices], validated
                  const int64_t[::1] starts,  # IN  [n_bags + 1]
                  weights,                    # IN  float32 [n_indices] or None
                  int mean,
                  float[:, ::1] out,          # OUT [n_bags, dim]
                  int n_threads, int simd):
    """Bags over codebook rows (``layout``: a LAYOUT_CODES value) with the kernels of SIMD
    level code ``simd`` (4-bit rows: AVX-512F at avx512, AVX2 at avx2; the portable loop
    otherwise), every level giving the same bytes.

    Returns the number of bags that met a two-tier group id >= books.shape[0] (their
    output is unfinished: the caller raises)."""
    _check(-1, layout, bits, simd, "embedding_bag")
    cdef int64_t n_bags = out.shape[0]
    cdef cb_job j
    cdef const float[::1] wv
    cdef const float *wp = NULL
    cdef float *vals = <float *>malloc((dim + 1) * n_threads * sizeof(float))
    cdef const int64_t *ip = &idx[0] if idx.shape[0] else NULL
    if weights is not None:
        wv = weights
        if wv.shape[0]:
            wp = &wv[0]
    if vals == NULL:
        raise MemoryError("qe4_fast.codebook: no memory for bag scratch space")
    _table_job(&j, data, dim, bits, layout, f16, id_bytes, books, n_threads)
    j.n_items = n_bags
    j.n_chunks = qe4_n_chunks(n_bags, n_threads)
    j.idx = ip
    j.n_idx = idx.shape[0]
    j.starts = &starts[0]
    j.weights = wp
    j.mean = mean
    j.fout = &out[0, 0] if n_bags > 0 else NULL
    j.tmp = vals
    j.simd = simd
    with nogil:
        par_run(j.n_chunks, n_threads, _bag_chunk, &j)
    free(vals)
    return j.n_bad


cdef void _bag_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef cb_job *j = <cb_job *>ctx
    cdef int64_t m, n_bad = 0
    for m in range(_first(j, c), _first(j, c + 1)):
        n_bad += cb_bag(j.data, j.row_bytes, j.nb, j.dim, j.bits, j.layout, j.f16, j.id_bytes,
                        j.books_in, j.n_groups, j.idx, j.n_idx, j.starts[m], j.starts[m + 1],
                        j.weights, j.mean, j.fout + m * j.dim, j.tmp + (j.dim + 1) * worker,
                        j.simd)
    qe4_count_add(&j.n_bad, n_bad)

