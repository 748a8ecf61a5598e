/* Kernels of qe4_fast._lookup: gathers, max-pooled bags, float16/bfloat16 outputs and
 * batched lookups over several tables, for every layout (rowwise, codebook, two-tier).
 *
 * The row arithmetic is that of _bag_kernels.h (rowwise rows) and _codebook_kernels.h
 * (codebook rows); this file adds what qe4/bag.py specifies on top of it:
 *   - a row's values = dequantize's row (rowwise fma(scale, q, bias), codebook centroids);
 *   - max pooling: acc = v0, then acc = (acc >= v || acc is NaN) ? acc : v, in order;
 *   - one rounding of each float32 result to the output type (qe4.bag.round_output):
 *     NaN -> quiet NaN of the same sign, no payload; then float16 round-to-nearest-even
 *     (F16C vcvtps2ph, or the integer recipe below: the same bits) or bfloat16
 *     (u + 0x7fff + bit16) >> 16.
 * Every function handles one row, bag or run of them in a fixed order, so the caller may
 * split work between any number of threads without changing a byte.  Layout, bit width,
 * mode, output kind and SIMD level codes are checked once per call by qe4_lookup_check
 * (switches whose default is an error, raised by the Cython wrapper).
 * Compiled with -ffp-contract=off (setup.py).
 */
#ifndef QE4_LOOKUP_KERNELS_H
#define QE4_LOOKUP_KERNELS_H

#include <stdlib.h>

/* both headers' other kernels (quantization, dequantization) are not used here */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "_bag_kernels.h"
#include "_codebook_kernels.h"

enum { QE4_OUT_F32 = 0, QE4_OUT_F16 = 1, QE4_OUT_BF16 = 2 };
enum { QE4_MODE_SUM = 0, QE4_MODE_MEAN = 1, QE4_MODE_MAX = 2 };
/* error codes beyond _common.h's */
enum { QE4_ERR_MODE = 16, QE4_ERR_KIND = 17 };

/* QE4_OK when the kernels implement the layout with these bits, the mode (-1: not used)
 * and the output kind, and this CPU runs SIMD level simd; else a QE4_ERR_* code. */
static int qe4_lookup_check(int layout, int bits, int mode, int kind, int simd)
{
    int err = qe4_check_simd(simd);
    if (err != QE4_OK)
        return err;
    switch (mode) {
    case -1:
    case QE4_MODE_SUM:
    case QE4_MODE_MEAN:
    case QE4_MODE_MAX:
        break;
    default:
        return QE4_ERR_MODE;
    }
    switch (kind) {
    case QE4_OUT_F32:
    case QE4_OUT_F16:
    case QE4_OUT_BF16:
        break;
    default:
        return QE4_ERR_KIND;
    }
    switch (layout) {
    case -1:
        return QE4_OK;
    case QE4_LAYOUT_ROWWISE:
        return qe4_bag_check(bits, simd);
    case QE4_LAYOUT_CODEBOOK:
    case QE4_LAYOUT_TWO_TIER:
        return cb_check(-1, layout, bits, simd);
    default:
        return QE4_ERR_LAYOUT;
    }
}

/* One table of any layout.  Codebook layouts use rows.{data, row_bytes, code_bytes, dim,
 * bits, f16} too; books/n_groups/id_bytes only for two-tier. */
typedef struct {
    qe4_rows rows;
    int layout;
    int id_bytes;
    const float *books;     /* [n_groups, 2^bits] float32 (two-tier), else unused */
    int64_t n_groups;
} qe4_table;

static inline void qe4_table_init(qe4_table *T, const uint8_t *data, int64_t n_rows,
                                  int64_t row_bytes, int64_t dim, int bits, int f16, int layout,
                                  int id_bytes, const float *books, int64_t n_groups)
{
    T->rows.data = data;
    T->rows.n_rows = n_rows;
    T->rows.row_bytes = row_bytes;
    T->rows.code_bytes = (dim * bits + 7) / 8;
    T->rows.dim = dim;
    T->rows.bits = bits;
    T->rows.f16 = f16;
    T->layout = layout;
    T->id_bytes = id_bytes;
    T->books = books;
    T->n_groups = n_groups;
}

/* ------------------------------------------------------------------ output rounding */

/* NaN -> the quiet NaN of its sign without payload (0x7fc00000 | sign); others unchanged. */
static inline uint32_t qe4_canonical_nan(uint32_t u)
{
    return (u & 0x7fffffffu) > 0x7f800000u ? (u & 0x80000000u) | 0x7fc00000u : u;
}

static inline uint16_t qe4_to_bf16(float f)
{
    uint32_t u = qe4_canonical_nan(qe4_bits(f));
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* float32 -> float16 (_common.h: round to nearest, ties to even, with subnormals), NaN
 * canonical first (0x7fc00000 -> 0x7e00). */
static inline uint16_t qe4_to_f16(float f)
{
    return qe4_float_to_half(qe4_float(qe4_canonical_nan(qe4_bits(f))));
}

static void qe4_store_generic(const float *src, int64_t n, int kind, void *dst)
{
    uint16_t *d = (uint16_t *)dst;
    int64_t j;
    switch (kind) { /* checked by qe4_lookup_check */
    case QE4_OUT_F32:
        if ((const void *)src != dst) memcpy(dst, src, (size_t)n * 4);
        break;
    case QE4_OUT_F16:
        for (j = 0; j < n; j++) d[j] = qe4_to_f16(src[j]);
        break;
    case QE4_OUT_BF16:
        for (j = 0; j < n; j++) d[j] = qe4_to_bf16(src[j]);
        break;
    default:
        break;
    }
}

#if QE4_X86
/* 8 floats with NaN lanes made canonical (sign | 0x7fc00000). */
QE4_INLINE QE4_AVX2 __m256 qe4_canonical8_avx2(__m256 x)
{
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 q = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0f)),
                            _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
    return _mm256_blendv_ps(x, q, nan);
}

/* 8 floats -> their 8 float16 bits (NaN canonical, then round to nearest-even); clean: the
 * caller knows x holds no NaN (the canonical step is skipped). */
QE4_INLINE QE4_AVX2 __m128i qe4_f16x8_avx2(__m256 x, const int clean)
{
    return _mm256_cvtps_ph(clean ? x : qe4_canonical8_avx2(x),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* 8 floats -> u + 0x7fff + bit16 of their bits u (NaN canonical first): each lane's high
 * half is the lane's bfloat16 (no carry out of the lane: u <= 0xff800000 once NaNs are
 * canonical). */
QE4_INLINE QE4_AVX2 __m256i qe4_bf16_hi8_avx2(__m256 x, const int clean)
{
    __m256i u = _mm256_castps_si256(clean ? x : qe4_canonical8_avx2(x));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
}

/* 8 floats -> their 8 bfloat16 bits (NaN canonical, then (u + 0x7fff + bit16) >> 16). */
QE4_INLINE QE4_AVX2 __m128i qe4_bf16x8_avx2(__m256 x, const int clean)
{
    __m256i u = _mm256_srli_epi32(qe4_bf16_hi8_avx2(x, clean), 16);
    return _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

QE4_AVX2 static void qe4_store_avx2(const float *src, int64_t n, int kind, void *dst)
{
    uint16_t *d = (uint16_t *)dst;
    int64_t j = 0;
    if (kind == QE4_OUT_F16) {
        for (; j + 8 <= n; j += 8)
            _mm_storeu_si128((__m128i *)(d + j), qe4_f16x8_avx2(_mm256_loadu_ps(src + j), 0));
    } else if (kind == QE4_OUT_BF16) {
        for (; j + 8 <= n; j += 8)
            _mm_storeu_si128((__m128i *)(d + j), qe4_bf16x8_avx2(_mm256_loadu_ps(src + j), 0));
    }
    if (kind == QE4_OUT_F32)
        qe4_store_generic(src, n, kind, dst);
    else
        qe4_store_generic(src + j, n - j, kind, d + j);
}
#else
static void qe4_store_avx2(const float *src, int64_t n, int kind, void *dst)
{
    qe4_store_generic(src, n, kind, dst);
}
#endif

/* dst[0:n] = src[0:n] rounded to the output type (src == dst allowed for float32). */
static inline void qe4_store(const float *src, int64_t n, int kind, void *dst, int simd)
{
    if (simd >= QE4_SIMD_AVX2) qe4_store_avx2(src, n, kind, dst);
    else qe4_store_generic(src, n, kind, dst);
}

/* ------------------------------------------------------------------ rows of any layout */

static inline const uint8_t *qe4_table_row(const qe4_table *T, int64_t r)
{
    return qe4_row_at(&T->rows, r);    /* an index changed after validation reads row 0 */
}

QE4_INLINE void qe4_prefetch_at(const qe4_table *T, const int64_t *idx, int64_t n_idx,
                                   int64_t p)
{
    if (p + QE4_PREFETCH < n_idx) {
        int64_t r = idx[p + QE4_PREFETCH];
        if ((uint64_t)r < (uint64_t)T->rows.n_rows) qe4_prefetch_table_row(&T->rows, r);
    }
}

/* out[0:dim] = row r as dequantize gives it.  Returns 1 for a two-tier group id out of
 * range (out unfinished), else 0. */
static int qe4_row_values(const qe4_table *T, int64_t r, int simd, float *out)
{
    const qe4_rows *t = &T->rows;
    const uint8_t *row = qe4_table_row(T, r);
    if (T->layout == QE4_LAYOUT_ROWWISE) {
        float s = qe4_qparam(t, row, 0), b = qe4_qparam(t, row, 1);
#if QE4_X86
        if (simd >= QE4_SIMD_AVX2) {
            qe4_row_avx2(row, t->bits, t->dim, s, b, out, 1);
            return 0;
        }
#endif
        qe4_row_generic(row, t->bits, t->dim, s, b, out, !t->f16, 1);   /* as dequantize */
        return 0;
    }
    float tmp[16];
    const uint8_t *cp = row + t->code_bytes;
    if (T->layout == QE4_LAYOUT_TWO_TIER
        && (T->id_bytes == 1 ? cp[0] : (int64_t)cp[0] | ((int64_t)cp[1] << 8)) >= T->n_groups)
        return 1;
    const float *c = cb_row_cents(row, t->code_bytes, T->layout, t->f16, 1 << t->bits,
                                  T->id_bytes, T->books, tmp);
    cb_row_values(row, t->dim, t->bits, c, out);
    return 0;
}

/* acc = (acc >= v || acc is NaN) ? acc : v, element-wise (branch-free: random rows make
 * the choice unpredictable). */
static inline void qe4_max_generic(float *acc, const float *v, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        float a = acc[j], b = v[j];
        int keep = (a >= b) | (a != a);
        acc[j] = keep ? a : b;
    }
}

#if QE4_X86
/* The max rule on 8 lanes: (a >= b || a is NaN) ? a : b. */
QE4_INLINE QE4_AVX2 __m256 qe4_max8_avx2(__m256 a, __m256 b)
{
    __m256 keep = _mm256_or_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ), _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    return _mm256_blendv_ps(b, a, keep);
}

QE4_AVX2 static void qe4_max_avx2(float *acc, const float *v, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(acc + j, qe4_max8_avx2(_mm256_loadu_ps(acc + j), _mm256_loadu_ps(v + j)));
    qe4_max_generic(acc + j, v + j, n - j);
}
#endif

static inline void qe4_max(float *acc, const float *v, int64_t n, int simd)
{
#if QE4_X86
    if (simd >= QE4_SIMD_AVX2) {
        qe4_max_avx2(acc, v, n);
        return;
    }
#endif
    (void)simd;
    qe4_max_generic(acc, v, n);
}

/* ------------------------------------------------------------------ rowwise rows in registers
 *
 * The AVX2 max bag and gather of rowwise tables hold a row's values for 64 columns in 8
 * registers, as the sum bag does (_bag_kernels.h, qe4_block64_avx2_t): the row values are
 * the same fma(scale, q, bias) as qe4_row_avx2 gives (dequantize's), computed by the same
 * instructions, without the trip through a scratch row and a function call per row that the
 * layout-generic path (qe4_row_values, then qe4_max or qe4_store) takes. */
#if QE4_X86
/* Codes j0 .. j0 + 63 of a rowwise row as 8 float vectors in column order (j0 % 64 == 0).
 * 4 bits: vector k is the 4 code bytes of columns j0 + 8k .. j0 + 8k + 7 broadcast to every
 * lane (a load, no shuffle uop), lane i shifted right by 4i and masked: nibble i, that is
 * column j0 + 8k + i (low nibble first).  No shuffles at all; the in-register unpack that
 * qe4_block64_avx2_t does took 16 per row, the bottleneck of a gather (bench_lookups: the
 * float16 gather 1.3 ms -> 0.9 ms on 1 thread in a C harness).  Other widths as
 * qe4_codes8_avx2 gives them.  The codes are exact small integers either way. */
QE4_INLINE QE4_AVX2 void qe4_codes64_avx2(const uint8_t *row, int64_t j0, const int bits,
                                          __m256 q[8])
{
    int k;
    if (bits == 4) {
        const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        const __m256i m = _mm256_set1_epi32(15);
        for (k = 0; k < 8; k++) {
            int32_t w;
            memcpy(&w, row + j0 / 2 + 4 * k, 4);
            q[k] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), sh), m));
        }
    } else {
        for (k = 0; k < 8; k++) q[k] = qe4_codes8_avx2(row, bits, j0 + 8 * k);
    }
}

/* Row of position p (prefetching p + QE4_PREFETCH when `prefetch`) and its broadcast scale
 * and bias; *s and *b as floats for the columns past the last 64-column block. */
QE4_INLINE QE4_AVX2 const uint8_t *qe4_row_params_avx2(const qe4_table *T, const int64_t *idx,
                                                       int64_t n_idx, int64_t p, int prefetch,
                                                       float *s, float *b)
{
    if (prefetch) qe4_prefetch_at(T, idx, n_idx, p);
    const uint8_t *row = qe4_table_row(T, idx[p]);
    qe4_qparams_avx2(&T->rows, row, s, b);
    return row;
}

/* 1 when neither s nor b is infinite or NaN.  Then no value fma(s, q, b) of the row is a
 * NaN: the exact s * q + b is a finite real (q an integer code), which may round to +-inf
 * but never to NaN.  Rows with stored infinities or NaNs (imported bytes) are the rare case. */
QE4_INLINE int qe4_finite_params(float s, float b)
{
    return ((qe4_bits(s) & 0x7f800000u) != 0x7f800000u)
           & ((qe4_bits(b) & 0x7f800000u) != 0x7f800000u);
}

/* Columns [j0, j0 + 64) of a max bag over positions start .. end - 1 (start < end) into
 * acc[j0:j0 + 64], the 8 running maxima in registers. */
QE4_INLINE QE4_AVX2 void qe4_max_block64_avx2_t(const qe4_table *T, const int64_t *idx,
                                                int64_t n_idx, int64_t start, int64_t end,
                                                int64_t j0, float *acc, const int bits)
{
    __m256 m[8], q[8];
    float s, b;
    int64_t p;
    int k;
    const uint8_t *row = qe4_row_params_avx2(T, idx, n_idx, start, j0 == 0, &s, &b);
    __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(b);
    qe4_codes64_avx2(row, j0, bits, q);
    for (k = 0; k < 8; k++) m[k] = _mm256_fmadd_ps(vs, q[k], vt);
    for (p = start + 1; p < end; p++) {
        row = qe4_row_params_avx2(T, idx, n_idx, p, j0 == 0, &s, &b);
        vs = _mm256_set1_ps(s);
        vt = _mm256_set1_ps(b);
        qe4_codes64_avx2(row, j0, bits, q);
        if (qe4_finite_params(s, b)) {
            /* v is no NaN: vmaxps(v, m) = v > m ? v : m is the max rule (m NaN or a tie
             * keeps m), one instruction instead of qe4_max8_avx2's four */
            for (k = 0; k < 8; k++) m[k] = _mm256_max_ps(_mm256_fmadd_ps(vs, q[k], vt), m[k]);
        } else {
            for (k = 0; k < 8; k++) m[k] = qe4_max8_avx2(m[k], _mm256_fmadd_ps(vs, q[k], vt));
        }
    }
    for (k = 0; k < 8; k++) _mm256_storeu_ps(acc + j0 + 8 * k, m[k]);
}

/* acc[0:dim] = max-pooled rowwise rows idx[start:end], start < end; vals: scratch [dim]. */
QE4_AVX2 static void qe4_bag_max_rowwise_avx2(const qe4_table *T, const int64_t *idx,
                                              int64_t n_idx, int64_t start, int64_t end,
                                              float *acc, float *vals)
{
    const qe4_rows *t = &T->rows;
    int64_t p, j0 = 0, dim = t->dim;
    for (; j0 + 64 <= dim; j0 += 64) {
        switch (t->bits) { /* qe4_lookup_check refused any other width */
        case 8: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 8); break;
        case 4: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 4); break;
        case 2: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 2); break;
        case 3: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 3); break;
        case 5: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 5); break;
        case 6: qe4_max_block64_avx2_t(T, idx, n_idx, start, end, j0, acc, 6); break;
        default: break;
        }
    }
    if (j0 == dim) return;
    /* the remaining columns, row by row through vals (row values as qe4_row_avx2 gives) */
    for (p = start; p < end; p++) {
        float s, b;
        const uint8_t *row = qe4_row_params_avx2(T, idx, n_idx, p, j0 == 0, &s, &b);
        qe4_row_avx2_t(row + j0 * t->bits / 8, t->bits, dim - j0, s, b,
                       p == start ? acc + j0 : vals, 1);
        if (p > start) qe4_max_avx2(acc + j0, vals, dim - j0);
    }
}
#endif

/* acc[0:dim] = max-pooled rows idx[start:end] (zeros for an empty bag); vals: scratch [dim]. */
static int qe4_bag_max(const qe4_table *T, const int64_t *idx, int64_t n_idx, int64_t start,
                       int64_t end, int simd, float *acc, float *vals)
{
    int64_t p, j, dim = T->rows.dim;
    if (start == end) {
        for (j = 0; j < dim; j++) acc[j] = 0.0f;
        return 0;
    }
#if QE4_X86
    if (T->layout == QE4_LAYOUT_ROWWISE && simd >= QE4_SIMD_AVX2) {
        qe4_bag_max_rowwise_avx2(T, idx, n_idx, start, end, acc, vals);
        return 0;
    }
#endif
    qe4_prefetch_at(T, idx, n_idx, start);
    if (qe4_row_values(T, idx[start], simd, acc)) return 1;
    for (p = start + 1; p < end; p++) {
        qe4_prefetch_at(T, idx, n_idx, p);
        if (qe4_row_values(T, idx[p], simd, vals)) return 1;
        qe4_max(acc, vals, dim, simd);
    }
    return 0;
}

/* Sum and mean bags of rowwise tables rounded to a 16-bit output go QE4_BAG_RUN bags at a
 * time through qe4_bags (the float32 bag's own loop, its 4-bit x 64 kernel included) into
 * scratch, then rounded: bag by bag through qe4_bag they paid its dispatch per bag. */
#define QE4_BAG_RUN 8

/* Bags m0 .. m1-1 of one table into dst + m * dst_stride (bytes), each rounded to `kind`.
 * starts: [n_bags + 1] bag bounds into idx; scratch: [QE4_BAG_RUN * dim + 2] floats (at
 * least 2 * dim + 2).  Returns the number of bags that met a bad two-tier group id (their
 * output is unfinished). */
static int64_t qe4_table_bags(const qe4_table *T, const int64_t *idx, int64_t n_idx,
                              const float *w, const int64_t *starts, int64_t m0, int64_t m1,
                              int mode, int kind, char *dst, int64_t dst_stride, int simd,
                              float *scratch)
{
    const qe4_rows *t = &T->rows;
    int64_t m, n_bad = 0, dim = t->dim;
    float *vals = scratch + dim + 1;
    if (T->layout == QE4_LAYOUT_ROWWISE && mode != QE4_MODE_MAX && kind != QE4_OUT_F32) {
        for (m = m0; m < m1; m += QE4_BAG_RUN) {
            int64_t i, nb = m1 - m < QE4_BAG_RUN ? m1 - m : QE4_BAG_RUN;
            qe4_bags(t, idx, n_idx, w, starts + m, 0, nb, mode == QE4_MODE_MEAN, simd, scratch);
            for (i = 0; i < nb; i++)
                qe4_store(scratch + i * dim, dim, kind, dst + (m + i) * dst_stride, simd);
        }
        return 0;
    }
    for (m = m0; m < m1; m++) {
        char *out = dst + m * dst_stride;
        float *acc = kind == QE4_OUT_F32 ? (float *)out : scratch;
        int64_t start = starts[m], end = starts[m + 1];
        int bad = 0;
        if (mode == QE4_MODE_MAX)
            bad = qe4_bag_max(T, idx, n_idx, start, end, simd, acc, vals);
        else if (T->layout == QE4_LAYOUT_ROWWISE)
            qe4_bag(t, idx, n_idx, w, start, end, mode == QE4_MODE_MEAN, simd, acc);
        else
            bad = cb_bag(t->data, t->row_bytes, t->code_bytes, dim, t->bits, T->layout, t->f16,
                         T->id_bytes, T->books, T->n_groups, idx, n_idx, start, end, w,
                         mode == QE4_MODE_MEAN, acc, vals, simd);
        if (bad) n_bad++;
        else if (kind != QE4_OUT_F32) qe4_store(acc, dim, kind, out, simd);
    }
    return n_bad;
}

/* Gathers whose output is larger than this many bytes write it with non-temporal
 * (streaming) stores: an output that large cannot stay in the cache for the caller anyway,
 * and ordinary stores first read every output line (read-for-ownership), about doubling the
 * memory traffic of a gather, whose output is ~7x the bytes it reads at 4 bits.  The values
 * are the same either way; only the way they reach memory differs.  Rowwise tables at AVX2
 * stream float32, float16 and bfloat16 rows straight from registers when the output's rows
 * are 16-byte aligned (qe4_gather_rowwise_avx2); other layouts, and misaligned rows, stream
 * float32 rows only, through scratch (qe4_stream_floats).  On the bench machine (1M x 64
 * 4-bit, 81,920 rows, 21 MB out) streaming took the float32 gather from 2.5-2.9 ms to
 * 1.5-1.7 ms and the float16 one from 2.0-2.1 ms to 1.7-1.8 ms. */
#ifndef QE4_STREAM_BYTES
#define QE4_STREAM_BYTES (8 << 20)
#endif

#if QE4_X86
/* dst[0:n] = src[0:n] with streaming stores where dst is 16-byte aligned (NumPy's large
 * arrays are), ordinary stores for the unaligned head and the tail. */
QE4_AVX2 static void qe4_stream_floats(float *dst, const float *src, int64_t n)
{
    int64_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 15u); j++) dst[j] = src[j];
    for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    for (; j < n; j++) dst[j] = src[j];
}
#endif

#if QE4_X86
/* 8 values of a gathered row -> dst (their first output element), rounded to `kind`;
 * stream: 0 ordinary stores, 1 streaming stores to a 16-byte aligned dst, 2 (float32 only)
 * to a 32-byte aligned one.  clean: v holds no NaN (qe4_finite_params), so the 16-bit
 * roundings skip making NaNs canonical (a no-op on other values). */
QE4_INLINE QE4_AVX2 void qe4_put8_avx2(char *dst, __m256 v, const int kind, const int stream,
                                       const int clean)
{
    if (kind == QE4_OUT_F32) {
        if (stream == 2) {
            _mm256_stream_ps((float *)dst, v);
        } else if (stream == 1) {
            _mm_stream_ps((float *)dst, _mm256_castps256_ps128(v));
            _mm_stream_ps((float *)dst + 4, _mm256_extractf128_ps(v, 1));
        } else {
            _mm256_storeu_ps((float *)dst, v);
        }
        return;
    }
    __m128i h = kind == QE4_OUT_F16 ? qe4_f16x8_avx2(v, clean) : qe4_bf16x8_avx2(v, clean);
    if (stream) _mm_stream_si128((__m128i *)dst, h);
    else _mm_storeu_si128((__m128i *)dst, h);
}

/* bfloat16 of columns j0 .. j0 + 63 of a 4-bit row, fma(s, q, b) each, to dst (their first
 * output element; stream: see qe4_put8_avx2).  Sixteen columns at a time: the 8 code bytes
 * widened to dword lanes, lane i's low nibble (column 2i) and high nibble (column 2i + 1)
 * in two vectors, so that after the rounding the bfloat16 of column 2i is the low half of
 * lane i (a shift) and that of column 2i + 1 its high half (a word blend): 16 results in
 * column order with one blend instead of two shifts, a pack and a lane extract per 8.
 * stream 2: a 32-byte aligned dst (one streaming store of the 16 results, not two). */
QE4_INLINE QE4_AVX2 void qe4_bf16x64_4bit_avx2(const uint8_t *row, int64_t j0, __m256 vs,
                                               __m256 vt, char *dst, const int stream,
                                               const int clean)
{
    const __m256i m = _mm256_set1_epi32(15);
    int k;
    for (k = 0; k < 4; k++) {
        __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + j0 / 2 + 8 * k)));
        __m256 ve = _mm256_fmadd_ps(vs, _mm256_cvtepi32_ps(_mm256_and_si256(x, m)), vt);
        __m256 vo = _mm256_fmadd_ps(vs, _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4)), vt);
        __m256i h = _mm256_blend_epi16(_mm256_srli_epi32(qe4_bf16_hi8_avx2(ve, clean), 16),
                                       qe4_bf16_hi8_avx2(vo, clean), 0xAA);
        char *d = dst + 32 * k;
        if (stream == 2) {
            _mm256_stream_si256((__m256i *)d, h);
        } else if (stream) {
            _mm_stream_si128((__m128i *)d, _mm256_castsi256_si128(h));
            _mm_stream_si128((__m128i *)(d + 16), _mm256_extracti128_si256(h, 1));
        } else {
            _mm256_storeu_si256((__m256i *)d, h);
        }
    }
}

/* Columns j0 .. j0 + 63 of a gathered rowwise row (scale s and bias b broadcast in vs, vt)
 * to out (the row's first output element), rounded to `kind` (stream, clean: see
 * qe4_put8_avx2; 4-bit bfloat16 rows: qe4_bf16x64_4bit_avx2). */
QE4_INLINE QE4_AVX2 void qe4_gather_block64_avx2(const uint8_t *row, int64_t j0, const int bits,
                                                 __m256 vs, __m256 vt, char *out,
                                                 const int kind, const int stream,
                                                 const int clean)
{
    const int64_t size = kind == QE4_OUT_F32 ? 4 : 2;
    __m256 q[8];
    int k;
    if (bits == 4 && kind == QE4_OUT_BF16) {
        qe4_bf16x64_4bit_avx2(row, j0, vs, vt, out + j0 * 2, stream, clean);
        return;
    }
    qe4_codes64_avx2(row, j0, bits, q);
    for (k = 0; k < 8; k++)
        qe4_put8_avx2(out + (j0 + 8 * k) * size, _mm256_fmadd_ps(vs, q[k], vt), kind, stream,
                      clean);
}

/* Gather positions p0 .. p1 - 1 of a rowwise table (the contract of qe4_gather), 64 columns
 * of a row at a time in registers, stored straight to the output; the columns past the last
 * block go through scratch [dim] floats. */
QE4_INLINE QE4_AVX2 void qe4_gather_rowwise_avx2_t(const qe4_table *T, const int64_t *idx,
                                                   int64_t n_idx, int64_t p0, int64_t p1,
                                                   char *dst, int64_t dst_stride, float *scratch,
                                                   const int bits, const int kind,
                                                   const int stream)
{
    const int64_t dim = T->rows.dim, size = kind == QE4_OUT_F32 ? 4 : 2;
    int64_t p, j0;
    for (p = p0; p < p1; p++) {
        char *out = dst + p * dst_stride;
        float s, b;
        const uint8_t *row = qe4_row_params_avx2(T, idx, n_idx, p, 1, &s, &b);
        __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(b);
        int clean = kind == QE4_OUT_F32 || qe4_finite_params(s, b);
        for (j0 = 0; j0 + 64 <= dim; j0 += 64) {
            if (clean) qe4_gather_block64_avx2(row, j0, bits, vs, vt, out, kind, stream, 1);
            else qe4_gather_block64_avx2(row, j0, bits, vs, vt, out, kind, stream, 0);
        }
        if (j0 == dim) continue;
        char *tail = out + j0 * size;
        float *v = kind == QE4_OUT_F32 && !stream ? (float *)tail : scratch;
        qe4_row_avx2_t(row + j0 * bits / 8, bits, dim - j0, s, b, v, 1);
        if (kind == QE4_OUT_F32 && stream) qe4_stream_floats((float *)tail, v, dim - j0);
        else if (kind != QE4_OUT_F32) qe4_store_avx2(v, dim - j0, kind, tail);
    }
}

/* The gather of a 4-bit table whose dim is a multiple of 64 (the contract of
 * qe4_gather_rowwise_avx2_t, the same values and bytes), in a small function of its own
 * per output kind and store mode: inlined into the dispatch over every width and kind,
 * the same loop ran ~40% slower (a C harness on the bench table: float16 1.26 ms against
 * 0.89 ms for 81,920 rows on 1 thread). */
QE4_INLINE QE4_AVX2 void qe4_gather4_avx2_t(const qe4_table *T, const int64_t *idx,
                                            int64_t n_idx, int64_t p0, int64_t p1, char *dst,
                                            int64_t dst_stride, const int kind,
                                            const int stream)
{
    const int64_t dim = T->rows.dim;
    int64_t p, j0;
    for (p = p0; p < p1; p++) {
        char *out = dst + p * dst_stride;
        float s, b;
        const uint8_t *row = qe4_row_params_avx2(T, idx, n_idx, p, 1, &s, &b);
        const __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(b);
        const int clean = kind == QE4_OUT_F32 || qe4_finite_params(s, b);
        for (j0 = 0; j0 < dim; j0 += 64) {
            if (clean) qe4_gather_block64_avx2(row, j0, 4, vs, vt, out, kind, stream, 1);
            else qe4_gather_block64_avx2(row, j0, 4, vs, vt, out, kind, stream, 0);
        }
    }
}

__attribute__((noinline)) QE4_AVX2 static void
qe4_gather4_avx2(const qe4_table *T, const int64_t *idx, int64_t n_idx, int64_t p0, int64_t p1,
                 int kind, char *dst, int64_t dst_stride, int stream)
{
#define QE4_G4(KIND, STREAM) \
    qe4_gather4_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, KIND, STREAM)
    switch (kind * 3 + stream) {
    case QE4_OUT_F32 * 3 + 0: QE4_G4(QE4_OUT_F32, 0); break;
    case QE4_OUT_F32 * 3 + 1: QE4_G4(QE4_OUT_F32, 1); break;
    case QE4_OUT_F32 * 3 + 2: QE4_G4(QE4_OUT_F32, 2); break;
    case QE4_OUT_F16 * 3 + 0: QE4_G4(QE4_OUT_F16, 0); break;
    case QE4_OUT_F16 * 3 + 1: QE4_G4(QE4_OUT_F16, 1); break;
    case QE4_OUT_BF16 * 3 + 0: QE4_G4(QE4_OUT_BF16, 0); break;
    case QE4_OUT_BF16 * 3 + 1: QE4_G4(QE4_OUT_BF16, 1); break;
    case QE4_OUT_BF16 * 3 + 2: QE4_G4(QE4_OUT_BF16, 2); break;
    default: break; /* the caller passes no other pair */
    }
#undef QE4_G4
}

/* The kernel for the table's bit width and the output kind, with streaming stores of
 * alignment `stream` (see qe4_put8_avx2). */
#define QE4_GATHER_KINDS(BITS)                                                                \
    do {                                                                                      \
        switch (kind * 3 + stream) {                                                          \
        case QE4_OUT_F32 * 3 + 0: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_F32, 0); break; \
        case QE4_OUT_F32 * 3 + 1: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_F32, 1); break; \
        case QE4_OUT_F32 * 3 + 2: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_F32, 2); break; \
        case QE4_OUT_F16 * 3 + 0: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_F16, 0); break; \
        case QE4_OUT_F16 * 3 + 1: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_F16, 1); break; \
        case QE4_OUT_BF16 * 3 + 0: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_BF16, 0); break; \
        case QE4_OUT_BF16 * 3 + 1: qe4_gather_rowwise_avx2_t(T, idx, n_idx, p0, p1, dst, dst_stride, scratch, BITS, QE4_OUT_BF16, 1); break; \
        default: break; /* the caller passes no other pair */                                \
        }                                                                                     \
    } while (0)

QE4_AVX2 static void qe4_gather_rowwise_avx2(const qe4_table *T, const int64_t *idx,
                                             int64_t n_idx, int64_t p0, int64_t p1, int kind,
                                             char *dst, int64_t dst_stride, int stream,
                                             float *scratch)
{
    switch (T->rows.bits) { /* qe4_lookup_check refused any other width */
    case 8: QE4_GATHER_KINDS(8); break;
    case 4: QE4_GATHER_KINDS(4); break;
    case 2: QE4_GATHER_KINDS(2); break;
    case 3: QE4_GATHER_KINDS(3); break;
    case 5: QE4_GATHER_KINDS(5); break;
    case 6: QE4_GATHER_KINDS(6); break;
    default: break;
    }
}
#undef QE4_GATHER_KINDS
#endif

/* Gather positions p0 .. p1-1: dst + p * dst_stride = row idx[p] rounded to `kind`.
 * scratch: [dim] floats.  Returns the number of bad two-tier group ids met. */
static int64_t qe4_gather(const qe4_table *T, const int64_t *idx, int64_t n_idx, int64_t p0,
                          int64_t p1, int kind, char *dst, int64_t dst_stride, int simd,
                          float *scratch)
{
    int64_t p, n_bad = 0, dim = T->rows.dim;
#if QE4_X86
    int big = simd >= QE4_SIMD_AVX2
              && (double)n_idx * (double)dim * (kind == QE4_OUT_F32 ? 4.0 : 2.0)
                 > (double)QE4_STREAM_BYTES;
    int stream = big && kind == QE4_OUT_F32;
    if (T->layout == QE4_LAYOUT_ROWWISE && simd >= QE4_SIMD_AVX2) {
        /* streaming stores of whole vectors need every row's vectors aligned alike (a
         * float16/bfloat16 vector is 16 bytes, a float32 one 32 or two of 16) */
        uintptr_t at = (uintptr_t)dst | (uintptr_t)dst_stride;
        int mode = !big ? 0
                   : (at & 31u) == 0 && kind == QE4_OUT_F32 ? 2 : (at & 15u) == 0 ? 1 : -1;
        if (mode >= 0) {
            if (T->rows.bits == 4 && T->rows.dim % 64 == 0) {
                /* its bfloat16 rows stream 32 bytes at a time when they are aligned so */
                if (mode == 1 && kind == QE4_OUT_BF16 && (at & 31u) == 0) mode = 2;
                qe4_gather4_avx2(T, idx, n_idx, p0, p1, kind, dst, dst_stride, mode);
            }
            else
                qe4_gather_rowwise_avx2(T, idx, n_idx, p0, p1, kind, dst, dst_stride, mode, scratch);
            if (mode) _mm_sfence();
            return 0;
        }
    }
#else
    const int stream = 0;
#endif
    for (p = p0; p < p1; p++) {
        char *out = dst + p * dst_stride;
        float *v = kind == QE4_OUT_F32 && !stream ? (float *)out : scratch;
        qe4_prefetch_at(T, idx, n_idx, p);
        if (qe4_row_values(T, idx[p], simd, v)) n_bad++;
#if QE4_X86
        else if (stream) qe4_stream_floats((float *)out, v, dim);
#endif
        else if (kind != QE4_OUT_F32) qe4_store(v, dim, kind, out, simd);
    }
#if QE4_X86
    if (stream) _mm_sfence();      /* the streamed lines are visible before the join */
#endif
    return n_bad;
}

#endif
