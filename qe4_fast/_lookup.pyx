# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels for gathers, max bags, float16/bfloat16 outputs and batched multi-table bags.

Every layout (rowwise, codebook, two-tier) goes through _lookup_kernels.h.  Inputs are
validated, C-contiguous buffers (qe4_fast.bag does both); outputs are preallocated byte
views whose rows may be strided (a table's columns inside a wider batched result).
Work is split into runs of consecutive bags or positions run by qe4_fast's pool
(_pool.h); each bag/row is computed in a fixed order, so the bytes do not depend on
the thread count.  Layout, bit width, mode, output kind and SIMD level codes are checked
once per call (qe4_lookup_check): a code without a kernel is a ValueError before any
output is written.
"""

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

from qe4_fast._common cimport (QE4_LAYOUT_CODEBOOK, QE4_LAYOUT_ROWWISE, QE4_LAYOUT_TWO_TIER,
                               check)
from qe4_fast._pool cimport par_run, qe4_count_add

cdef extern from "_lookup_kernels.h" nogil:
    ctypedef struct qe4_table:
        pass
    void qe4_table_init(qe4_table *T, const uint8_t *data, int64_t n_rows, int64_t row_bytes,
                        int64_t dim, int bits, int f16, int layout, int id_bytes,
                        const float *books, int64_t n_groups)
    enum:
        QE4_OUT_F32
        QE4_OUT_F16
        QE4_OUT_BF16
        QE4_MODE_SUM
        QE4_MODE_MEAN
        QE4_MODE_MAX
        QE4_ERR_MODE
        QE4_ERR_KIND
        QE4_BAG_RUN
    int qe4_lookup_check(int layout, int bits, int mode, int kind, int simd) noexcept
    void qe4_store(const float *src, int64_t n, int kind, void *dst, int simd) noexcept
    int64_t qe4_table_bags(const qe4_table *T, const int64_t *idx, int64_t n_idx, const float *w,
                           const int64_t *starts, int64_t m0, int64_t m1, int mode, int kind,
                           char *dst, int64_t dst_stride, int simd, float *scratch) noexcept
    int64_t qe4_gather(const qe4_table *T, const int64_t *idx, int64_t n_idx, int64_t p0,
                       int64_t p1, int kind, char *dst, int64_t dst_stride, int simd,
                       float *scratch) noexcept

# out_dtype name -> kernel code; layout name -> kernel code; mode name -> kernel code
KINDS = {"float32": QE4_OUT_F32, "float16": QE4_OUT_F16, "bfloat16": QE4_OUT_BF16}
LAYOUTS = {"rowwise": QE4_LAYOUT_ROWWISE, "codebook": QE4_LAYOUT_CODEBOOK,
           "two-tier": QE4_LAYOUT_TWO_TIER}
MODES = {"sum": QE4_MODE_SUM, "mean": QE4_MODE_MEAN, "max": QE4_MODE_MAX}


cdef int _check(str kernel, int layout, int bits, int mode, int kind, int simd) except -1:
    """ValueError unless the kernels implement these codes and the CPU runs level simd."""
    cdef int err = qe4_lookup_check(layout, bits, mode, kind, simd)
    name = "qe4_fast._lookup." + kernel
    if err == QE4_ERR_MODE:
        raise ValueError(f"{name}: unknown mode code {mode} (the kernels implement {MODES})")
    if err == QE4_ERR_KIND:
        raise ValueError(f"{name}: unknown output kind code {kind} (the kernels implement "
                         f"{KINDS})")
    return check(err, name, None, -1, bits, layout, simd)


cdef void _fill(qe4_table *T, const uint8_t[:, ::1] data, int layout, int bits, int64_t dim,
                int f16, int id_bytes, const float[:, ::1] books):
    qe4_table_init(T, &data[0, 0] if data.shape[0] > 0 else NULL, data.shape[0], data.shape[1],
                   dim, bits, f16, layout, id_bytes, &books[0, 0], books.shape[0])


cdef qe4_table *_tables(list specs, str kernel) except NULL:
    """C descriptors of the tables: each spec is (data uint8 [n_rows, row_bytes] C order,
    layout, bits, dim, f16, id_bytes, books float32 [n_groups, K] C order).  The arrays
    must outlive the call (the caller's list holds them)."""
    cdef Py_ssize_t t, n = len(specs)
    cdef qe4_table *ts = <qe4_table *>malloc(max(n, 1) * sizeof(qe4_table))
    if ts == NULL:
        raise MemoryError("qe4_fast: no memory for the table descriptors")
    for t in range(n):
        data, layout, bits, dim, f16, id_bytes, books = specs[t]
        try:
            _check(kernel, layout, bits, -1, QE4_OUT_F32, 0)   # level 0: checked by the caller
            _fill(&ts[t], data, layout, bits, dim, f16, id_bytes, books)
        except BaseException:
            free(ts)
            raise
    return ts


def bags(list specs,                       # IN  n_tables table specs (see _tables)
         const int64_t[::1] idx,           # IN  every table's indices, concatenated, validated
         const int64_t[::1] starts,        # IN  [n_tables * n_bags + 1] bag bounds into idx
         weights,                          # IN  float32 [n_idx] or None
         int64_t n_bags, int mode, int kind,
         uint8_t[:, :] out,                # OUT [n_bags, sum of dims * itemsize], rows strided
         const int64_t[::1] col_bytes,     # IN  [n_tables] first byte of table t in a row
         int64_t max_dim, int n_threads, int simd):
    """Bag b of table t (global bag t * n_bags + b) -> out[b, col_bytes[t]:]; see qe4.bag.

    Returns the number of bags that met a two-tier group id out of range (the caller raises).
    """
    cdef int64_t n_tables = len(specs), total = n_tables * n_bags
    cdef lookup_job j
    cdef const float[::1] wv
    _check("bags", -1, -1, mode, kind, simd)
    if total == 0:
        return 0
    j.n_idx = idx.shape[0]
    j.idx = &idx[0] if j.n_idx > 0 else NULL
    j.starts = &starts[0]
    j.weights = NULL
    if weights is not None:
        wv = weights
        if wv.shape[0]:
            j.weights = &wv[0]
    j.out = <char *>&out[0, 0]
    j.stride = out.strides[0]
    j.col_bytes = &col_bytes[0]
    j.total = total
    j.n_bags = n_bags
    j.mode = mode
    j.kind = kind
    j.simd = simd
    j.scratch_floats = max(2, QE4_BAG_RUN) * max_dim + 2   # qe4_table_bags
    j.n_bad = j.n_oom = 0
    # runs of consecutive bags, several per thread, claimed one at a time (_pool.h: a
    # thread delayed by another process does not hold up the rest); a run may span two tables
    j.n_chunks = 1 if n_threads == 1 else min(total, 8 * n_threads)
    j.tables = _tables(specs, "bags")
    with nogil:
        par_run(j.n_chunks, n_threads, _bags_chunk, &j)
    free(j.tables)
    if j.n_oom:
        raise MemoryError("qe4_fast: no memory for lookup scratch space")
    return j.n_bad


ctypedef struct lookup_job:
    qe4_table *tables
    const int64_t *idx
    int64_t n_idx
    const int64_t *starts
    const float *weights
    const int64_t *col_bytes
    char *out
    int64_t stride, total, n_bags, n_chunks, scratch_floats, n_bad, n_oom
    int mode, kind, simd


cdef void _bags_chunk(void *ctx, int64_t k, int worker) noexcept nogil:
    cdef lookup_job *j = <lookup_job *>ctx
    cdef int64_t m0 = j.total * k // j.n_chunks, m1 = j.total * (k + 1) // j.n_chunks
    cdef int64_t t, a, b, n_bad = 0
    cdef float *scratch = <float *>malloc(j.scratch_floats * sizeof(float))
    if scratch == NULL:
        qe4_count_add(&j.n_oom, 1)
        return
    while m0 < m1:
        t = m0 // j.n_bags
        a = m0 - t * j.n_bags
        b = min(m1 - t * j.n_bags, j.n_bags)
        n_bad += qe4_table_bags(&j.tables[t], j.idx, j.n_idx, j.weights, j.starts + t * j.n_bags,
                                a, b, j.mode, j.kind, j.out + j.col_bytes[t], j.stride, j.simd,
                                scratch)
        m0 = t * j.n_bags + b
    free(scratch)
    qe4_count_add(&j.n_bad, n_bad)


def gather(tuple spec,                     # IN  one table spec (see _tables)
           const int64_t[::1] idx,         # IN  [n] rows, validated
           int kind,
           uint8_t[:, :] out,              # OUT [n, dim * itemsize], rows strided
           int n_threads, int simd):
    """out[p] = row idx[p] (as dequantize gives it), rounded to ``kind``.

    Returns the number of two-tier group ids out of range met (the caller raises)."""
    cdef lookup_job j
    cdef int64_t n = idx.shape[0]
    _check("gather", -1, -1, -1, kind, simd)
    if n == 0:
        return 0
    j.idx = &idx[0]
    j.n_idx = n
    j.out = <char *>&out[0, 0]
    j.stride = out.strides[0]
    j.kind = kind
    j.simd = simd
    j.scratch_floats = <int64_t>spec[3] + 1
    j.n_bad = j.n_oom = 0
    j.n_chunks = 1 if n_threads == 1 else min(n, 8 * n_threads)
    j.tables = _tables([spec], "gather")
    with nogil:
        par_run(j.n_chunks, n_threads, _gather_chunk, &j)
    free(j.tables)
    if j.n_oom:
        raise MemoryError("qe4_fast: no memory for lookup scratch space")
    return j.n_bad


cdef void _gather_chunk(void *ctx, int64_t k, int worker) noexcept nogil:
    cdef lookup_job *j = <lookup_job *>ctx
    cdef int64_t n = j.n_idx
    cdef float *scratch = <float *>malloc(j.scratch_floats * sizeof(float))
    if scratch == NULL:
        qe4_count_add(&j.n_oom, 1)
        return
    qe4_count_add(&j.n_bad, qe4_gather(&j.tables[0], j.idx, n, n * k // j.n_chunks,
                                       n * (k + 1) // j.n_chunks, j.kind, j.out, j.stride,
                                       j.simd, scratch))
    free(scratch)


def round_floats(const float[::1] x,       # IN  [n]
                 int kind,
                 uint8_t[::1] out,         # OUT [n * itemsize]
                 int simd):
    """out = x rounded to ``kind`` (the output rule of every lookup); for tests."""
    _check("round_floats", -1, -1, -1, kind, simd)
    if x.shape[0]:
        qe4_store(&x[0], x.shape[0], kind, &out[0], simd)
