/* Row kernels of qe4_fast._bag: embedding bags and dequantization of fused rowwise rows.
 *
 * A row is [codes][scale][bias] (qe4.layouts.pack_codes: a bit stream, low bits first; scale/bias little-endian
 * float16 or float32).  Every function here handles ONE bag or ONE row, in a fixed order:
 * bags/rows are independent, so the caller may run them on any number of threads and the
 * bytes never change.  Columns are independent accumulators too, so SIMD along the row
 * keeps each element's sequence of roundings exactly that of qe4.embedding_bag:
 *
 *     acc[j] = 0;  for p in bag:  acc[j] = fma(s_p, q_p[j], acc[j] + t_p)
 *     (s_p = w_p * scale, t_p = w_p * bias, float32; unweighted: s_p = scale, t_p = bias)
 *
 * Fused vs unfused.  fma(s, q, a) rounds s*q + a once.  When s*q is exactly representable
 * in float32, fl(s*q) == s*q and fl(a + fl(s*q)) is that same single rounding, so the
 * unfused form is bit-identical.  s*q is exact whenever s is a float16 value and q an
 * integer in [0, 255]: s = m * 2^e with an integer |m| < 2^11 and e >= -24, so
 * s*q = (m*q) * 2^e with |m*q| < 2^19 <= 2^24 (at most 19 significant bits), and a nonzero
 * |s*q| lies in [2^-24, 65504 * 255], inside float32's normal range: no rounding.  Hence the
 * portable kernel uses (acc + t) + s*q for unweighted float16 tables (libm's fmaf is a slow
 * call), and the AVX2+FMA kernel may use vfmadd for them.  Weighted bags (s = fl(w*scale) has
 * up to 24 significant bits) and float32 scales need a true fma: fmaf() in the portable
 * kernel (libm, correctly rounded), vfmadd*ps / vfmadd*ss in the AVX2+FMA kernel, which is
 * used at the SIMD levels avx2 and avx512, with an AVX-512F block for 4-bit rows at avx512
 * (the level is chosen once per process, see _common.h; qe4_bag_check refuses a level the
 * CPU does not run and a bit width without a kernel before any bag is computed).
 *
 * Compiled with -ffp-contract=off (setup.py): the compiler never fuses on its own.
 */
#ifndef QE4_BAG_KERNELS_H
#define QE4_BAG_KERNELS_H

#include "_common.h"

typedef struct {
    const uint8_t *data;   /* [n_rows, row_bytes], C-contiguous */
    int64_t n_rows;
    int64_t row_bytes;
    int64_t code_bytes;    /* ceil(dim * bits / 8) */
    int64_t dim;
    int bits;              /* 2, 3, 4, 5, 6 or 8 */
    int f16;               /* 1: float16 scale/bias, 0: float32 */
} qe4_rows;

/* QE4_OK when the kernels run at SIMD level simd on this CPU and implement `bits`. */
static int qe4_bag_check(int bits, int simd)
{
    return qe4_check_rowwise(bits, simd);
}

/* ------------------------------------------------------------------ scalar helpers */

/* The row's scale (k = 0) or bias (k = 1), widened to float32. */
static inline float qe4_qparam(const qe4_rows *t, const uint8_t *row, int k)
{
    const uint8_t *p = row + t->code_bytes + (t->f16 ? 2 : 4) * k;
    return t->f16 ? qe4_load_f16(p) : qe4_load_f32(p);
}

/* Code j of a packed row, as a float. */
static inline float qe4_code_value(const uint8_t *c, int bits, int64_t j)
{
    return (float)qe4_unpack_code(c, bits, j);
}

/* Prefetch row r (random rows miss the cache). */
QE4_INLINE void qe4_prefetch_table_row(const qe4_rows *t, int64_t r)
{
    qe4_prefetch_row(t->data + r * t->row_bytes, t->row_bytes);
}

/* Weighted positions scale both terms: s = w*scale, t = w*bias (float32). */
static inline void qe4_weigh(const float *w, int64_t p, float *s, float *b)
{
    if (w != NULL) {
        *s = w[p] * *s;
        *b = w[p] * *b;
    }
}

/* One element: init ? op(s, q, t) : op(s, q, acc + t), op fused or not (see the header). */
#define QE4_STEP(acc, s, q, t, fused, init)                                   \
    do {                                                                      \
        float a_ = (init) ? (t) : (acc) + (t);                                \
        (acc) = (fused) ? fmaf((s), (q), a_) : a_ + (s) * (q);                \
    } while (0)

/* ------------------------------------------------------------------ portable rows */

static inline __attribute__((always_inline)) void
qe4_row_generic_t(const uint8_t *c, int bits, int64_t dim, float s, float t, float *acc,
                  const int fused, const int init)
{
    int64_t j;
    switch (bits) { /* qe4_bag_check refused any other width; a constant width per case */
    case 8:
        for (j = 0; j < dim; j++) QE4_STEP(acc[j], s, (float)c[j], t, fused, init);
        break;
    case 4:   /* a byte at a time, its two codes as two statements: GCC vectorizes this
                 (SSE2, NEON) where the per-code shift of qe4_code_value stays scalar */
        for (j = 0; j + 2 <= dim; j += 2) {
            const uint8_t b = c[j / 2];
            QE4_STEP(acc[j], s, (float)(b & 15), t, fused, init);
            QE4_STEP(acc[j + 1], s, (float)(b >> 4), t, fused, init);
        }
        for (; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, 4, j), t, fused, init);
        break;
    case 2:
        for (j = 0; j + 4 <= dim; j += 4) {
            const uint8_t b = c[j / 4];
            QE4_STEP(acc[j], s, (float)(b & 3), t, fused, init);
            QE4_STEP(acc[j + 1], s, (float)((b >> 2) & 3), t, fused, init);
            QE4_STEP(acc[j + 2], s, (float)((b >> 4) & 3), t, fused, init);
            QE4_STEP(acc[j + 3], s, (float)(b >> 6), t, fused, init);
        }
        for (; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, 2, j), t, fused, init);
        break;
    case 3:
        for (j = 0; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, 3, j), t, fused, init);
        break;
    case 5:
        for (j = 0; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, 5, j), t, fused, init);
        break;
    case 6:
        for (j = 0; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, 6, j), t, fused, init);
        break;
    default:
        break;
    }
}

static void qe4_row_generic(const uint8_t *c, int bits, int64_t dim, float s, float t,
                            float *acc, int fused, int init)
{
    if (fused) {
        if (init) qe4_row_generic_t(c, bits, dim, s, t, acc, 1, 1);
        else qe4_row_generic_t(c, bits, dim, s, t, acc, 1, 0);
    } else {
        if (init) qe4_row_generic_t(c, bits, dim, s, t, acc, 0, 1);
        else qe4_row_generic_t(c, bits, dim, s, t, acc, 0, 0);
    }
}

/* Row r's bytes.  The indices were validated in Python, but the kernel reads the caller's
 * own index array (no private copy): if another Python thread rewrote it during the call
 * (a data race in the caller's program), an index could be out of range here.  It is then
 * read as row 0, so the kernel never reads outside the table: wrong sums for a racing
 * caller, never a crash.  One well-predicted compare per position. */
static inline const uint8_t *qe4_row_at(const qe4_rows *t, int64_t r)
{
    if ((uint64_t)r >= (uint64_t)t->n_rows) r = 0;
    return t->data + r * t->row_bytes;
}

/* ------------------------------------------------------------------ portable bag */

static void qe4_bag_generic(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                            int64_t start, int64_t end, float *out)
{
    int fused = (w != NULL) || !t->f16;
    int64_t p, j;
    for (j = 0; j < t->dim; j++) out[j] = 0.0f;
    for (p = start; p < end; p++) {
        if (p + QE4_PREFETCH < n_idx) qe4_prefetch_table_row(t, idx[p + QE4_PREFETCH]);
        const uint8_t *row = qe4_row_at(t, idx[p]);
        float s = qe4_qparam(t, row, 0), b = qe4_qparam(t, row, 1);
        qe4_weigh(w, p, &s, &b);
        qe4_row_generic(row, t->bits, t->dim, s, b, out, fused, 0);
    }
}

/* ------------------------------------------------------------------ AVX2 + FMA + F16C */
#if QE4_X86
#define QE4_AVX2 QE4_TARGET_AVX2

/* Every step is fma(s, q, acc + t) with a real FMA instruction (exact for all tables). */

QE4_INLINE QE4_AVX2 void qe4_qparams_avx2(const qe4_rows *t, const uint8_t *row, float *s, float *b)
{
    const uint8_t *p = row + t->code_bytes;
    if (t->f16) {
        uint32_t u;
        memcpy(&u, p, 4);
        __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128((int)u));
        *s = _mm_cvtss_f32(v);
        *b = _mm_cvtss_f32(_mm_movehdup_ps(v));
    } else {
        memcpy(s, p, 4);
        memcpy(b, p + 4, 4);
    }
}

/* Row of position p with its (weighted) s and t; prefetches position p + QE4_PREFETCH. */
QE4_INLINE QE4_AVX2 const uint8_t *qe4_position_avx2(const qe4_rows *t, const int64_t *idx,
                                                     int64_t n_idx, const float *w, int64_t p,
                                                     int prefetch, float *s, float *b)
{
    if (prefetch && p + QE4_PREFETCH < n_idx) qe4_prefetch_table_row(t, idx[p + QE4_PREFETCH]);
    const uint8_t *row = qe4_row_at(t, idx[p]);
    qe4_qparams_avx2(t, row, s, b);
    qe4_weigh(w, p, s, b);
    return row;
}

/* The n bytes at p (n <= 8, a constant after inlining) as a little-endian integer, by loads
 * of 4, 2 and 1 bytes straight into registers (a memcpy of n bytes into a wider local went
 * through the stack: a failed store-to-load forward per call, 10x slower bags). */
QE4_INLINE uint64_t qe4_load_le(const uint8_t *p, const int n)
{
    uint64_t v = 0;
    int k = 0;
    if (n - k >= 4) {
        uint32_t w;
        memcpy(&w, p + k, 4);
        v |= (uint64_t)w << (8 * k);
        k += 4;
    }
    if (n - k >= 2) {
        uint16_t w;
        memcpy(&w, p + k, 2);
        v |= (uint64_t)w << (8 * k);
        k += 2;
    }
    if (n - k >= 1)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

/* 8 codes of 3, 5 or 6 bits -> 8 floats: the `bits` bytes from j * bits / 8 (j % 8 == 0, so
 * the chunk starts on a byte and ends on one: every byte read is a code byte of the row).
 * Codes 0-3 are the low 4 * bits bits of that little-endian word, codes 4-7 the next
 * 4 * bits; each half fits a 32-bit lane (4 * 6 = 24 bits), shifted by 0, b, 2b, 3b. */
QE4_INLINE QE4_AVX2 __m256 qe4_stream8_avx2(const uint8_t *c, const int bits, int64_t j)
{
    uint64_t u = qe4_load_le(c + j * bits / 8, bits);
    if (bits == 3) { /* all 8 codes in 24 bits: one broadcast */
        __m256i v3 = _mm256_srlv_epi32(_mm256_set1_epi32((int)u),
                                       _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
        return _mm256_cvtepi32_ps(_mm256_and_si256(v3, _mm256_set1_epi32(7)));
    }
    uint32_t lo = (uint32_t)u, hi = (uint32_t)(u >> (4 * bits));
    __m256i w = _mm256_setr_epi32((int)lo, (int)lo, (int)lo, (int)lo, (int)hi, (int)hi, (int)hi, (int)hi);
    __m256i sh = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 0, bits, 2 * bits, 3 * bits);
    __m256i v = _mm256_srlv_epi32(w, sh);
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32((1 << bits) - 1)));
}

/* 8 codes -> 8 floats, for the chunk of codes starting at element j (j % 8 == 0). */
QE4_INLINE QE4_AVX2 __m256 qe4_codes8_avx2(const uint8_t *c, int bits, int64_t j)
{
    uint32_t u = 0;
    __m256i v;
    switch (bits) { /* qe4_bag_check refused any other width */
    case 8:
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + j))));
    case 4:
        memcpy(&u, c + j / 2, 4);
        v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    case 2:
        memcpy(&u, c + j / 4, 2);
        v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
        return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(3)));
    case 3:
        return qe4_stream8_avx2(c, 3, j);
    case 5:
        return qe4_stream8_avx2(c, 5, j);
    case 6:
        return qe4_stream8_avx2(c, 6, j);
    default:
        return _mm256_setzero_ps();
    }
}

/* 16 4-bit codes (8 bytes at c) in element order, as bytes. */
QE4_INLINE QE4_AVX2 __m128i qe4_nibbles16_avx2(const uint8_t *c)
{
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i b = _mm_loadl_epi64((const __m128i *)c);
    return _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
}

QE4_INLINE QE4_AVX2 __m256 qe4_lo8_avx2(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)); }
QE4_INLINE QE4_AVX2 __m256 qe4_hi8_avx2(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8))); }

/* acc[0:dim] = fma(s, q, init ? t : acc + t), columns in chunks of 16/8, then a scalar tail. */
QE4_INLINE QE4_AVX2 void qe4_row_avx2_t(const uint8_t *c, int bits, int64_t dim, float s, float t,
                                        float *acc, const int init)
{
    __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(t);
    int64_t j = 0;
    if (bits == 4) {
        for (; j + 16 <= dim; j += 16) {
            __m128i q = qe4_nibbles16_avx2(c + j / 2);
            __m256 a0 = init ? vt : _mm256_add_ps(_mm256_loadu_ps(acc + j), vt);
            __m256 a1 = init ? vt : _mm256_add_ps(_mm256_loadu_ps(acc + j + 8), vt);
            _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(vs, qe4_lo8_avx2(q), a0));
            _mm256_storeu_ps(acc + j + 8, _mm256_fmadd_ps(vs, qe4_hi8_avx2(q), a1));
        }
    }
    for (; j + 8 <= dim; j += 8) {
        __m256 a = init ? vt : _mm256_add_ps(_mm256_loadu_ps(acc + j), vt);
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(vs, qe4_codes8_avx2(c, bits, j), a));
    }
    for (; j < dim; j++) QE4_STEP(acc[j], s, qe4_code_value(c, bits, j), t, 1, init);
}

QE4_AVX2 static void qe4_row_avx2(const uint8_t *c, int bits, int64_t dim, float s, float t,
                                  float *acc, int init)
{
    if (init) qe4_row_avx2_t(c, bits, dim, s, t, acc, 1);
    else qe4_row_avx2_t(c, bits, dim, s, t, acc, 0);
}

/* Columns [j0, j0 + 64) of a bag, the 8 accumulators held in registers. */
QE4_INLINE QE4_AVX2 void qe4_block64_avx2_t(const qe4_rows *t, const int64_t *idx, int64_t n_idx,
                                            const float *w, int64_t start, int64_t end,
                                            int64_t j0, float *out, const int bits)
{
    __m256 acc[8];
    int64_t p;
    int k;
    for (k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (p = start; p < end; p++) {
        float s, b;
        const uint8_t *row = qe4_position_avx2(t, idx, n_idx, w, p, j0 == 0, &s, &b);
        __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(b);
        for (k = 0; k < 8; k++) acc[k] = _mm256_add_ps(acc[k], vt);
        if (bits == 4) {
            /* 64 nibbles: unpacking within 128-bit lanes gives codes [0,16) and [32,48) in
             * u1, [16,32) and [48,64) in u2 */
            const __m256i m = _mm256_set1_epi8(0x0f);
            __m256i b = _mm256_loadu_si256((const __m256i *)(row + j0 / 2));
            __m256i lo = _mm256_and_si256(b, m), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
            __m256i u1 = _mm256_unpacklo_epi8(lo, hi), u2 = _mm256_unpackhi_epi8(lo, hi);
            __m128i q[4] = {_mm256_castsi256_si128(u1), _mm256_castsi256_si128(u2),
                            _mm256_extracti128_si256(u1, 1), _mm256_extracti128_si256(u2, 1)};
            for (k = 0; k < 4; k++) {
                acc[2 * k] = _mm256_fmadd_ps(vs, qe4_lo8_avx2(q[k]), acc[2 * k]);
                acc[2 * k + 1] = _mm256_fmadd_ps(vs, qe4_hi8_avx2(q[k]), acc[2 * k + 1]);
            }
        } else {
            for (k = 0; k < 8; k++)
                acc[k] = _mm256_fmadd_ps(vs, qe4_codes8_avx2(row, bits, j0 + 8 * k), acc[k]);
        }
    }
    for (k = 0; k < 8; k++) _mm256_storeu_ps(out + j0 + 8 * k, acc[k]);
}

/* The 4-bit block of 64 columns, AVX2, in its own (not inlined) function: inside
 * qe4_bag_avx2 the constants of the other widths stay live and two of the eight
 * accumulators went to the stack, a store-to-load forward on their chain every row.
 *
 * Each group of 8 code bytes (16 columns) is widened to 8 dword lanes straight from memory
 * (vpmovzxbd); lane i holds columns 2i (low nibble, `& 15`) and 2i + 1 (high nibble, `>> 4`),
 * so ae[k] accumulates the even columns of group k and ao[k] the odd ones, interleaved back
 * at the store (as the AVX-512 block does): 4 loads, 4 ands and 4 shifts per row where the
 * in-register unpack took 13 shuffles.  Scale and bias come in one broadcast of their 4 (or 8)
 * bytes, converted together ([s, b, s, b, ...]; a weight multiplies both lanes, the float32
 * products w*scale and w*bias of qe4_weigh) and spread by vpermilps.  Same per-element
 * operations as qe4_block64_avx2_t: acc = fma(s, q, acc + t).  prefetch: position
 * p + QE4_PREFETCH's row (its first and last byte), done in the block of columns 0. */
QE4_INLINE QE4_AVX2 void qe4_block4x64_avx2_t(const qe4_rows *t, const int64_t *idx, int64_t n_idx,
                                              const float *w, int64_t start, int64_t end,
                                              int64_t j0, float *out, const int weighted,
                                              const int f16, const int prefetch)
{
    const __m256i m = _mm256_set1_epi32(15);
    const uint8_t *data = t->data;
    const int64_t rb = t->row_bytes, cb = t->code_bytes;
    __m256 ae[4], ao[4];
    int64_t p;
    int k;
    for (k = 0; k < 4; k++) ae[k] = ao[k] = _mm256_setzero_ps();
    for (p = start; p < end; p++) {
        if (prefetch && p + QE4_PREFETCH < n_idx)
            qe4_prefetch_row(data + idx[p + QE4_PREFETCH] * rb, rb);
        const uint8_t *row = qe4_row_at(t, idx[p]);
        __m256 sb;
        if (f16) {
            uint32_t u;
            memcpy(&u, row + cb, 4);
            sb = _mm256_cvtph_ps(_mm_set1_epi32((int)u));
        } else {
            double d;
            memcpy(&d, row + cb, 8);
            sb = _mm256_castpd_ps(_mm256_set1_pd(d));
        }
        if (weighted) sb = _mm256_mul_ps(_mm256_set1_ps(w[p]), sb);
        const __m256 vs = _mm256_permute_ps(sb, 0x00), vt = _mm256_permute_ps(sb, 0x55);
        const uint8_t *c = row + j0 / 2;
        for (k = 0; k < 4; k++) {
            __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + 8 * k)));
            __m256 qe = _mm256_cvtepi32_ps(_mm256_and_si256(x, m));
            __m256 qo = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
            ae[k] = _mm256_fmadd_ps(vs, qe, _mm256_add_ps(ae[k], vt));
            ao[k] = _mm256_fmadd_ps(vs, qo, _mm256_add_ps(ao[k], vt));
        }
    }
    /* unpacklo: columns 0-3 | 8-11 of the group, unpackhi: 4-7 | 12-15 */
    for (k = 0; k < 4; k++) {
        __m256 lo = _mm256_unpacklo_ps(ae[k], ao[k]), hi = _mm256_unpackhi_ps(ae[k], ao[k]);
        _mm256_storeu_ps(out + j0 + 16 * k, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(out + j0 + 16 * k + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
}

__attribute__((noinline)) QE4_AVX2 static void
qe4_block4x64_avx2(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                   int64_t start, int64_t end, int64_t j0, float *out)
{
    const int pf = j0 == 0;
#define QE4_B4(weighted, f16, prefetch) \
    qe4_block4x64_avx2_t(t, idx, n_idx, w, start, end, j0, out, weighted, f16, prefetch)
    if (w != NULL) {
        if (t->f16) { if (pf) QE4_B4(1, 1, 1); else QE4_B4(1, 1, 0); }
        else { if (pf) QE4_B4(1, 0, 1); else QE4_B4(1, 0, 0); }
    } else {
        if (t->f16) { if (pf) QE4_B4(0, 1, 1); else QE4_B4(0, 1, 0); }
        else { if (pf) QE4_B4(0, 0, 1); else QE4_B4(0, 0, 0); }
    }
#undef QE4_B4
}

/* Bags m0 .. m1 - 1 of a 4-bit table of exactly 64 columns at level AVX2 (out: [m1, 64]):
 * the block's variant is chosen once for the run of bags, not once per bag (bags of ~40
 * rows paid the dispatch of qe4_bag, qe4_bag_avx2 and qe4_block4x64_avx2 each time).  The
 * bags and their bytes are those of qe4_bag; mean scales as it does. */
__attribute__((noinline)) QE4_AVX2 static void
qe4_bags4x64_avx2(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                  const int64_t *starts, int64_t m0, int64_t m1, int mean, float *out)
{
    int64_t m;
    int j;
#define QE4_B4S(weighted, f16)                                                                \
    for (m = m0; m < m1; m++) {                                                              \
        float *o = out + m * 64;                                                             \
        qe4_block4x64_avx2_t(t, idx, n_idx, w, starts[m], starts[m + 1], 0, o, weighted, f16, 1); \
        if (mean && starts[m + 1] > starts[m]) {                                             \
            float inv = 1.0f / (float)(starts[m + 1] - starts[m]);                           \
            for (j = 0; j < 64; j++) o[j] *= inv;                                            \
        }                                                                                    \
    }
    if (w != NULL) {
        if (t->f16) QE4_B4S(1, 1) else QE4_B4S(1, 0)
    } else {
        if (t->f16) QE4_B4S(0, 1) else QE4_B4S(0, 0)
    }
#undef QE4_B4S
}

/* AVX-512F variant of the 4-bit block: four 16-lane accumulators, fewer instructions per row
 * (the same per-element operations: zmm lanes are just wider columns).  Each code byte is
 * widened to a dword lane once; vpermps with the table 0.0 .. 15.0 turns the low 4 bits of a
 * lane into the exact float of the low nibble (it ignores the higher bits) and, after a shift,
 * of the high nibble.  So a0/a2 hold the even columns, a1/a3 the odd ones, interleaved back
 * at the store. */
#define QE4_AVX512 QE4_TARGET_AVX512

QE4_INLINE QE4_AVX512 void qe4_block64_avx512_t(const qe4_rows *t, const int64_t *idx, int64_t n_idx,
                                                const float *w, int64_t start, int64_t end,
                                                int64_t j0, float *out, const int weighted)
{
    const __m512 lut = _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f,
                                      10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t p;
    for (p = start; p < end; p++) {
        float s, b;
        const uint8_t *row = qe4_position_avx2(t, idx, n_idx, weighted ? w : NULL, p, j0 == 0, &s, &b);
        __m512 vs = _mm512_set1_ps(s), vt = _mm512_set1_ps(b);
        /* x0: bytes 0..15 (columns j0 .. j0+31), x1: bytes 16..31 (columns j0+32 .. j0+63) */
        __m512i x0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + j0 / 2)));
        __m512i x1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + j0 / 2 + 16)));
        a0 = _mm512_fmadd_ps(vs, _mm512_permutexvar_ps(x0, lut), _mm512_add_ps(a0, vt));
        a1 = _mm512_fmadd_ps(vs, _mm512_permutexvar_ps(_mm512_srli_epi32(x0, 4), lut), _mm512_add_ps(a1, vt));
        a2 = _mm512_fmadd_ps(vs, _mm512_permutexvar_ps(x1, lut), _mm512_add_ps(a2, vt));
        a3 = _mm512_fmadd_ps(vs, _mm512_permutexvar_ps(_mm512_srli_epi32(x1, 4), lut), _mm512_add_ps(a3, vt));
    }
    /* column 2i of a group is lane i of the even accumulator, column 2i+1 lane i of the odd */
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out + j0, _mm512_permutex2var_ps(a0, lo, a1));
    _mm512_storeu_ps(out + j0 + 16, _mm512_permutex2var_ps(a0, hi, a1));
    _mm512_storeu_ps(out + j0 + 32, _mm512_permutex2var_ps(a2, lo, a3));
    _mm512_storeu_ps(out + j0 + 48, _mm512_permutex2var_ps(a2, hi, a3));
}

QE4_AVX512 static void qe4_block64_avx512(const qe4_rows *t, const int64_t *idx, int64_t n_idx,
                                          const float *w, int64_t start, int64_t end, int64_t j0,
                                          float *out)
{
    if (w != NULL) qe4_block64_avx512_t(t, idx, n_idx, w, start, end, j0, out, 1);
    else qe4_block64_avx512_t(t, idx, n_idx, w, start, end, j0, out, 0);
}

QE4_AVX2 static void qe4_bag_avx2(const qe4_rows *t, const int64_t *idx, int64_t n_idx,
                                  const float *w, int64_t start, int64_t end, float *out, int level)
{
    int64_t p, j, j0 = 0;
    for (; j0 + 64 <= t->dim; j0 += 64) {
        if (level >= QE4_SIMD_AVX512 && t->bits == 4) {
            qe4_block64_avx512(t, idx, n_idx, w, start, end, j0, out);
            continue;
        }
        switch (t->bits) { /* qe4_bag_check refused any other width */
        case 8: qe4_block64_avx2_t(t, idx, n_idx, w, start, end, j0, out, 8); break;
        case 4: qe4_block4x64_avx2(t, idx, n_idx, w, start, end, j0, out); break;
        case 2: qe4_block64_avx2_t(t, idx, n_idx, w, start, end, j0, out, 2); break;
        case 3: qe4_block64_avx2_t(t, idx, n_idx, w, start, end, j0, out, 3); break;
        case 5: qe4_block64_avx2_t(t, idx, n_idx, w, start, end, j0, out, 5); break;
        case 6: qe4_block64_avx2_t(t, idx, n_idx, w, start, end, j0, out, 6); break;
        default: break;
        }
    }
    if (j0 == t->dim) return;
    /* the remaining columns accumulate in out[j0:dim], position by position */
    for (j = j0; j < t->dim; j++) out[j] = 0.0f;
    for (p = start; p < end; p++) {
        float s, b;
        const uint8_t *row = qe4_position_avx2(t, idx, n_idx, w, p, j0 == 0, &s, &b);
        qe4_row_avx2_t(row + j0 * t->bits / 8, t->bits, t->dim - j0, s, b, out + j0, 0);
    }
}

QE4_AVX2 static void qe4_dequantize_row_avx2(const qe4_rows *t, int64_t r, float *out)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    float s, b;
    qe4_qparams_avx2(t, row, &s, &b);
    qe4_row_avx2(row, t->bits, t->dim, s, b, out, 1);
}
#else
static void qe4_bag_avx2(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                         int64_t start, int64_t end, float *out, int level)
{
    (void)level;
    qe4_bag_generic(t, idx, n_idx, w, start, end, out);
}

static void qe4_dequantize_row_avx2(const qe4_rows *t, int64_t r, float *out)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    qe4_row_generic(row, t->bits, t->dim, qe4_qparam(t, row, 0), qe4_qparam(t, row, 1), out, !t->f16, 1);
}
#endif

/* ------------------------------------------------------------------ public kernels */

/* out[0:dim] = pooled rows idx[start:end] (weights w[start:end] or NULL; mean divides by
 * the length).  n_idx bounds the prefetch look-ahead.  Indices are valid (checked before).
 * simd: a QE4_SIMD_* level and t->bits a width accepted by qe4_bag_check. */
static void qe4_bag(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                    int64_t start, int64_t end, int mean, int simd, float *out)
{
    int64_t j;
    if (simd >= QE4_SIMD_AVX2) qe4_bag_avx2(t, idx, n_idx, w, start, end, out, simd);
    else qe4_bag_generic(t, idx, n_idx, w, start, end, out);
    if (mean && end > start) {
        float inv = 1.0f / (float)(end - start);
        for (j = 0; j < t->dim; j++) out[j] *= inv;
    }
}

/* out[m * dim : (m + 1) * dim] = qe4_bag of bag m (positions starts[m] .. starts[m + 1]) for
 * the bags m0 .. m1 - 1, in order. */
static void qe4_bags(const qe4_rows *t, const int64_t *idx, int64_t n_idx, const float *w,
                     const int64_t *starts, int64_t m0, int64_t m1, int mean, int simd, float *out)
{
    int64_t m;
#if QE4_X86
    if (simd == QE4_SIMD_AVX2 && t->bits == 4 && t->dim == 64) {
        qe4_bags4x64_avx2(t, idx, n_idx, w, starts, m0, m1, mean, out);
        return;
    }
#endif
    for (m = m0; m < m1; m++)
        qe4_bag(t, idx, n_idx, w, starts[m], starts[m + 1], mean, simd, out + m * t->dim);
}

/* out[0:dim] = fma(scale, q, bias) of row r. */
static void qe4_dequantize_row(const qe4_rows *t, int64_t r, int simd, float *out)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    if (simd >= QE4_SIMD_AVX2) qe4_dequantize_row_avx2(t, r, out);
    else qe4_row_generic(row, t->bits, t->dim, qe4_qparam(t, row, 0), qe4_qparam(t, row, 1), out, !t->f16, 1);
}

#endif
