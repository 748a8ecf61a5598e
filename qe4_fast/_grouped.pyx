# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kernels of the grouped layout (qe4.grouped): the end of the search and the row bytes,
dequantized rows (all, or gathered), embedding bags.

Every function takes validated, C-contiguous buffers from qe4_fast.grouped, a resolved
``n_threads`` (and the SIMD level code for the lookups, checked here), releases the GIL and
splits independent rows or bags into chunks run by qe4_fast's pool (_pool.h); each row or bag
is computed in a fixed order (_grouped_kernels.h), so the bytes do not depend on the thread
count or the SIMD level.
"""

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

from qe4_fast._common cimport QE4_GROUPED, QE4_LAYOUT_GROUPED, check, qe4_check_simd
from qe4_fast._pool cimport par_run, qe4_chunk_start, qe4_n_chunks

#: The codes of the method and layout these kernels compute (the registries' codes).
METHOD_CODES = {"grouped": QE4_GROUPED}
LAYOUT_CODES = {"grouped": QE4_LAYOUT_GROUPED}

cdef extern from "_grouped_kernels.h" nogil:
    enum:
        QE4_G_MINS_GROUP
        QE4_G_MINS_NONE
    ctypedef struct qe4_grouped:
        const uint8_t *data
        int64_t n_rows
        int64_t row_bytes
        int dim, bits, group, sub_bits, n_groups, code_bytes, sub_bytes, mins
        const float *lev
    void qe4_g_set_levels(qe4_grouped *t, const float *lev) noexcept
    size_t qe4_grouped_work_floats(int dim, int n_groups) noexcept
    void qe4_grouped_finish_row(const qe4_grouped *t, const float *x, const float *gscale,
                                const float *glow, uint8_t *row, float *work,
                                int *iwork, int simd) noexcept
    void qe4_grouped_scale_row(const qe4_grouped *t, const float *x, uint8_t *row, float *work,
                               int *iwork, int simd) noexcept
    void qe4_grouped_row_values(const qe4_grouped *t, int64_t r, int simd, float *out) noexcept
    void qe4_grouped_bag(const qe4_grouped *t, const int64_t *idx, int64_t n_idx, const float *w,
                         int64_t start, int64_t end, int mean, int simd, float *out) noexcept


#: qe4.layouts.MINS -> the kernels' kind of group offset (t.mins)
MINS_CODES = {"group": QE4_G_MINS_GROUP, "none": QE4_G_MINS_NONE}


cdef qe4_grouped _table(const uint8_t[:, ::1] data, int dim, int bits, int group, int sub_bits,
                        str mins, const float[::1] levels):
    """The kernels' view of a table; ``mins``: its kind of group offset (qe4.layouts.MINS:
    "group", a sub-scale and a sub-min per group and a 4-byte tail d, m; "none", a sub-scale
    per group and a 2-byte tail d); ``levels``: its level table [2**bits] (kept alive by the
    caller during the call), or None: uniform (never with "none")."""
    cdef qe4_grouped t
    if mins not in MINS_CODES:
        raise ValueError(f"qe4_fast._grouped: mins must be one of {tuple(MINS_CODES)}, got {mins!r}")
    if mins == "none" and levels is None:
        raise ValueError("qe4_fast._grouped: scale-only groups (mins='none') need a level table")
    t.mins = MINS_CODES[mins]
    cdef int fields = 2 if t.mins == QE4_G_MINS_GROUP else 1
    t.data = &data[0, 0] if data.shape[0] > 0 else NULL
    t.n_rows = data.shape[0]
    t.row_bytes = data.shape[1]
    t.dim = dim
    t.bits = bits
    t.group = group
    t.sub_bits = sub_bits
    t.n_groups = (dim + group - 1) // group
    t.code_bytes = (dim * bits + 7) // 8
    t.sub_bytes = (fields * t.n_groups * sub_bits + 7) // 8
    if t.code_bytes + t.sub_bytes + 2 * fields != t.row_bytes:
        raise ValueError(f"qe4_fast._grouped: rows of {t.row_bytes} bytes are not grouped rows of "
                         f"dim {dim}, bits {bits}, group {group}, sub_bits {sub_bits}, "
                         f"mins {mins!r}")
    if levels is not None and levels.shape[0] != (1 << bits):
        raise ValueError(f"qe4_fast._grouped: a level table of {levels.shape[0]} values for "
                         f"bits={bits} (need {1 << bits})")
    qe4_g_set_levels(&t, &levels[0] if levels is not None else NULL)
    return t


# ----------------------------------------------------------------------------- quantize

ctypedef struct finish_job:
    qe4_grouped t
    const float *x
    const float *gscale    # NULL: scale-only rows (qe4_grouped_scale_row: the whole search)
    const float *glow
    uint8_t *out
    int64_t n_rows, n_chunks
    size_t work_floats
    float *work
    int *iwork
    int simd


def finish_rows(const float[:, ::1] x,            # IN  [n_rows, dim], validated
                const float[:, ::1] gscale,       # IN  [n_rows, n_groups]: step 1's scales
                const float[:, ::1] glow,         # IN  [n_rows, n_groups]: step 1's mins
                int bits, int group, int sub_bits,
                const float[::1] levels,          # IN  [2**bits] level table, or None: uniform
                uint8_t[:, ::1] out,              # OUT [n_rows, row_bytes]
                int n_threads, int simd):
    """Steps 2 to 5 of qe4.grouped.grouped_params and the rows' bytes."""
    check(qe4_check_simd(simd), "qe4_fast._grouped.finish_rows", None, -1, bits, -1, simd)
    cdef finish_job j
    j.t = _table(out, x.shape[1], bits, group, sub_bits, "group", levels)
    if x.shape[0] > 0:
        j.gscale = &gscale[0, 0]
        j.glow = &glow[0, 0]
    _run_rows(&j, x, out, n_threads, simd)


def scale_rows(const float[:, ::1] x,            # IN  [n_rows, dim], validated
               int bits, int group, int sub_bits,
               const float[::1] levels,          # IN  [2**bits] signed level table
               uint8_t[:, ::1] out,              # OUT [n_rows, row_bytes]
               int n_threads, int simd):
    """The whole search of qe4.grouped.grouped_params with mins="none" (scale-only groups:
    step 1 per group, steps 2 to 5) and the rows' bytes."""
    check(qe4_check_simd(simd), "qe4_fast._grouped.scale_rows", None, -1, bits, -1, simd)
    cdef finish_job j
    j.t = _table(out, x.shape[1], bits, group, sub_bits, "none", levels)
    j.gscale = NULL
    j.glow = NULL
    _run_rows(&j, x, out, n_threads, simd)


cdef _run_rows(finish_job *j, const float[:, ::1] x, uint8_t[:, ::1] out, int n_threads,
               int simd):
    """Run the rows of job j (its table and step 1's arrays set) on the pool, each worker with
    its own scratch (qe4_grouped_work_floats floats and 10 * n_groups ints: enough for either
    kind of row)."""
    j.n_rows = x.shape[0]
    if j.n_rows == 0:
        return
    j.x = &x[0, 0]
    j.out = &out[0, 0]
    j.simd = simd
    j.work_floats = qe4_grouped_work_floats(j.t.dim, j.t.n_groups)
    j.n_chunks = qe4_n_chunks(j.n_rows, n_threads)
    j.work = <float *>malloc(n_threads * j.work_floats * sizeof(float))
    j.iwork = <int *>malloc(n_threads * 10 * j.t.n_groups * sizeof(int))
    if j.work == NULL or j.iwork == NULL:
        free(j.work)
        free(j.iwork)
        raise MemoryError()
    try:
        with nogil:
            par_run(j.n_chunks, n_threads, _finish_chunk, j)
    finally:
        free(j.work)
        free(j.iwork)


cdef void _finish_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef finish_job *j = <finish_job *>ctx
    cdef int64_t r
    cdef int G = j.t.n_groups
    cdef float *work = j.work + worker * j.work_floats
    cdef int *iwork = j.iwork + worker * 10 * G
    for r in range(qe4_chunk_start(j.n_rows, j.n_chunks, c),
                   qe4_chunk_start(j.n_rows, j.n_chunks, c + 1)):
        if j.gscale == NULL:
            qe4_grouped_scale_row(&j.t, j.x + r * j.t.dim, j.out + r * j.t.row_bytes, work,
                                  iwork, j.simd)
        else:
            qe4_grouped_finish_row(&j.t, j.x + r * j.t.dim, j.gscale + r * G, j.glow + r * G,
                                   j.out + r * j.t.row_bytes, work, iwork, j.simd)


# ----------------------------------------------------------------------------- lookups

ctypedef struct rows_job:
    qe4_grouped t
    const int64_t *idx     # NULL: every row in order
    int64_t n, n_chunks
    int simd
    float *out


def row_values(const uint8_t[:, ::1] data, int dim, int bits, int group, int sub_bits,
               str mins,                         # IN  the kind of group offset (MINS_CODES)
               const float[::1] levels,          # IN  [2**bits] level table, or None: uniform
               const int64_t[::1] idx,           # IN  rows to read (validated), or None: all
               float[:, ::1] out,                # OUT [len(idx) or n_rows, dim]
               int n_threads, int simd):
    """Dequantized rows ``fma(scale_j, v, min_j)`` of ``idx`` (or of every row); ``v`` the
    code or its level value."""
    check(qe4_check_simd(simd), "qe4_fast._grouped.row_values", None, -1, bits, -1, simd)
    cdef rows_job j
    j.t = _table(data, dim, bits, group, sub_bits, mins, levels)
    j.n = out.shape[0]
    if j.n == 0:
        return
    j.idx = &idx[0] if idx is not None else NULL
    j.simd = simd
    j.out = &out[0, 0]
    j.n_chunks = qe4_n_chunks(j.n, n_threads)
    with nogil:
        par_run(j.n_chunks, n_threads, _rows_chunk, &j)


cdef void _rows_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef rows_job *j = <rows_job *>ctx
    cdef int64_t k
    for k in range(qe4_chunk_start(j.n, j.n_chunks, c), qe4_chunk_start(j.n, j.n_chunks, c + 1)):
        qe4_grouped_row_values(&j.t, j.idx[k] if j.idx != NULL else k, j.simd,
                               j.out + k * j.t.dim)


ctypedef struct bag_job:
    qe4_grouped t
    const int64_t *idx
    int64_t n_idx
    const float *w
    const int64_t *starts
    int64_t n_bags, n_chunks
    int mean, simd
    float *out


def bag(const uint8_t[:, ::1] data, int dim, int bits, int group, int sub_bits,
        str mins,                        # IN  the kind of group offset (MINS_CODES)
        const float[::1] levels,         # IN  [2**bits] level table, or None: uniform
        const int64_t[::1] idx,          # IN  row of each position, all in range
        const int64_t[::1] starts,       # IN  [n_bags + 1], non-decreasing, 0 .. n_idx
        const float[::1] weights,        # IN  [n_idx] or None
        bint mean,
        float[:, ::1] out,               # OUT [n_bags, dim]
        int n_threads, int simd):
    """Sum or mean of each bag (qe4.embedding_bag's arithmetic, per group)."""
    check(qe4_check_simd(simd), "qe4_fast._grouped.bag", None, -1, bits, -1, simd)
    cdef bag_job j
    j.t = _table(data, dim, bits, group, sub_bits, mins, levels)
    j.n_bags = out.shape[0]
    if j.n_bags == 0:
        return
    j.idx = &idx[0] if idx.shape[0] > 0 else NULL
    j.n_idx = idx.shape[0]
    j.w = &weights[0] if weights is not None and weights.shape[0] > 0 else NULL
    j.starts = &starts[0]
    j.mean = mean
    j.simd = simd
    j.out = &out[0, 0]
    j.n_chunks = qe4_n_chunks(j.n_bags, n_threads)
    with nogil:
        par_run(j.n_chunks, n_threads, _bag_chunk, &j)


cdef void _bag_chunk(void *ctx, int64_t c, int worker) noexcept nogil:
    cdef bag_job *j = <bag_job *>ctx
    cdef int64_t m
    for m in range(qe4_chunk_start(j.n_bags, j.n_chunks, c),
                   qe4_chunk_start(j.n_bags, j.n_chunks, c + 1)):
        qe4_grouped_bag(&j.t, j.idx, j.n_idx, j.w, j.starts[m], j.starts[m + 1], j.mean, j.simd,
                        j.out + m * j.t.dim)
