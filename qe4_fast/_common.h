/* Shared by every qe4_fast kernel header: float16 conversion, packed-code access, prefetch,
 * inline macros, error codes, and the one SIMD level choice (CPU detection and targets).
 *
 * SIMD levels.  Every kernel family (row-wise quantization, bags, codebooks) runs at one of
 * three levels, chosen once per process by qe4_fast._simd (the widest the CPU has, or the
 * environment variable QE4_SIMD) and passed to every kernel call as an int:
 *
 *     QE4_SIMD_PORTABLE  plain C (SSE2 on x86-64: the compiler's baseline)
 *     QE4_SIMD_AVX2      AVX2 + FMA + F16C
 *     QE4_SIMD_AVX512    AVX-512 F, BW, CD, DQ and VL, plus the AVX2 level's features
 *
 * A kernel entry point checks the level with qe4_check_simd (a level this CPU cannot run is
 * an error reported to Python, never an illegal instruction) and picks its code for the level
 * once per call: a switch over hand-written intrinsics (bags, codebooks), or a table of
 * QE4_PER_LEVEL variants of the same C compiled for each target (row-wise).  Every level
 * performs the same IEEE operations in the same order (-ffp-contract=off), so the bytes are
 * the same at every level.
 *
 * Errors.  Kernels never raise; a function that can meet a bad code (method, bit width,
 * layout, SIMD level) returns one of the QE4_ERR_* codes below from a switch whose default is
 * that error, and the Cython wrapper (qe4_fast/_common.pxd) turns it into a ValueError.
 * Nothing ever falls through to another method or width.
 */
#ifndef QE4_COMMON_H
#define QE4_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "qe4_fast assumes a little-endian host (stored rows are little-endian)"
#endif

#define QE4_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ error codes */

enum {
    QE4_OK = 0,
    QE4_ERR_METHOD = 1, /* unknown method code */
    QE4_ERR_BITS = 2,   /* a bit width the kernel does not implement */
    QE4_ERR_LAYOUT = 3, /* unknown layout code */
    QE4_ERR_SIMD = 4    /* unknown SIMD level, or one this CPU cannot run */
};

/* Method and layout codes, one code space for every kernel family (the registry's codes;
 * the kernel modules export them as METHOD_CODES and LAYOUT_CODES). */
enum {
    QE4_MINMAX = 0,
    QE4_GREEDY = 1,
    QE4_EXHAUSTIVE = 2,
    QE4_ACIQ_LAPLACE = 3,
    QE4_ACIQ_GAUSS = 4,
    QE4_KMEANS = 5,
    QE4_KMEANS_OPTIMAL = 6,
    QE4_TWO_TIER = 7
};
enum { QE4_LAYOUT_ROWWISE = 0, QE4_LAYOUT_CODEBOOK = 1, QE4_LAYOUT_TWO_TIER = 2 };
/* the grouped layout and method (qe4_fast/_grouped_kernels.h) */
enum { QE4_GROUPED = 9, QE4_LAYOUT_GROUPED = 4 };

/* ------------------------------------------------------------------ float bits, float16 */

QE4_INLINE uint32_t qe4_bits(float v) { uint32_t u; memcpy(&u, &v, 4); return u; }
QE4_INLINE float qe4_float(uint32_t u) { float v; memcpy(&v, &u, 4); return v; }

/* 1.5 * 2^23: (v + M) - M == rint(v) for |v| < 2^22 (round to nearest-even) */
#define QE4_RINT_MAGIC 12582912.0f

/* float16 bits -> float32, exact, as numpy's astype(float32): the 15 low bits moved into a
 * float32's exponent/mantissa give the value times 2^-112 (also for subnormals), undone by an
 * exact power-of-two multiply; inf and NaN keep their payload. */
QE4_INLINE float qe4_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em >= 0x7c00u)
        return qe4_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    return qe4_float(qe4_bits(qe4_float(em << 13) * 0x1p112f) | sign);
}

/* float32 -> float16 bits, round to nearest-even, as numpy's astype(float16): >= 65520 in
 * magnitude gives inf, tiny values float16 subnormals or zero, a NaN keeps its top payload
 * bits (at least one set). */
QE4_INLINE uint16_t qe4_float_to_half(float v)
{
    uint32_t u = qe4_bits(v);
    uint16_t s = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) { /* NaN */
        uint32_t m = (a & 0x7fffffu) >> 13;
        return (uint16_t)(s | 0x7c00u | (m ? m : 1u));
    }
    if (a >= 0x477ff000u) /* >= 65520 rounds to inf */
        return (uint16_t)(s | 0x7c00u);
    if (a >= 0x38800000u) { /* normal float16: drop 13 mantissa bits, ties to even */
        a += 0x0fffu + ((a >> 13) & 1u);
        return (uint16_t)(s | ((a - 0x38000000u) >> 13));
    }
    /* subnormal float16: a multiple of 2^-24; v * 2^24 is exact and < 1024 */
    float m = qe4_float(a) * 16777216.0f;
    m = (m + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
    return (uint16_t)(s | (uint16_t)m); /* m == 1024 encodes the smallest normal */
}

/* qe4_half_to_float(qe4_float_to_half(v)) for finite and infinite v, without branches (it
 * vectorizes across lanes); a NaN stays a NaN (quieted).  Checked against numpy for every
 * float32 when written. */
QE4_INLINE float qe4_round_half(float v)
{
    uint32_t u = qe4_bits(v);
    uint32_t a = u & 0x7fffffffu;
    uint32_t norm = (a + 0x0fffu + ((a >> 13) & 1u)) & ~0x1fffu;
    uint32_t sub = qe4_bits((qe4_float(a) + 0.75f) - 0.75f); /* multiple of 2^-24, ties even */
    uint32_t r = a >= 0x38800000u ? norm : sub;
    r = a >= 0x477ff000u ? 0x7f800000u : r;
    r = a > 0x7f800000u ? (a | 0x00400000u) : r;
    return qe4_float(r | (u & 0x80000000u));
}

/* Little-endian loads of stored parameters (the host is little-endian, see above). */
QE4_INLINE float qe4_load_f32(const uint8_t *p) { float f; memcpy(&f, p, 4); return f; }
QE4_INLINE float qe4_load_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return qe4_half_to_float(h);
}

/* ------------------------------------------------------------------ packed codes */

/* Code j of a packed row (qe4.layouts.pack_codes: a bit stream, low bits first): stream bits
 * j * bits .. j * bits + bits - 1.  When bits divides 8 that is byte j / (8 / bits) at bit
 * offset (j % (8 / bits)) * bits; at 3, 5, 6 and 7 bits a code may straddle two bytes, and
 * the second byte is read only when it does (never past the code bytes).  bits is 1 to 8
 * (checked by the entry point). */
QE4_INLINE uint32_t qe4_unpack_code(const uint8_t *codes, int bits, int64_t j)
{
    const uint32_t mask = (1u << bits) - 1u;
    if ((8 % bits) == 0) {
        int per_byte = 8 / bits;
        return (codes[j / per_byte] >> ((j % per_byte) * bits)) & mask;
    }
    int64_t at = j * bits;
    uint32_t w = codes[at >> 3];
    if ((at & 7) + bits > 8)
        w |= (uint32_t)codes[(at >> 3) + 1] << 8;
    return (w >> (at & 7)) & mask;
}

/* ------------------------------------------------------------------ prefetch */

/* Lookups prefetch the row QE4_PREFETCH positions ahead (random rows miss the cache). */
#ifndef QE4_PREFETCH
#define QE4_PREFETCH 32
#endif

/* Both ends of a row, without a branch on whether it straddles two cache lines (that branch
 * is unpredictable for random rows; a second prefetch of the same line is cheap).
 *
 * Every function that wraps a prefetch must be QE4_INLINE (always_inline).  GCC's IPA
 * pure-const pass sees a prefetch as free of side effects: a wrapper it does not inline
 * early (e.g. a plain static inline one called from a target("avx2") function) is marked
 * const, and its void calls are deleted as dead code, silently.  That happened once and made
 * the random-row bags 5x slower; tests/test_fast_build.py counts the prefetch instructions of
 * the built lookup kernels. */
QE4_INLINE void qe4_prefetch_row(const uint8_t *row, int64_t row_bytes)
{
    __builtin_prefetch(row, 0, 3);
    __builtin_prefetch(row + row_bytes - 1, 0, 3);
}

/* ------------------------------------------------------------------ SIMD levels */

enum { QE4_SIMD_PORTABLE = 0, QE4_SIMD_AVX2 = 1, QE4_SIMD_AVX512 = 2, QE4_SIMD_LEVELS = 3 };

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define QE4_X86 1
#include <immintrin.h>
#define QE4_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QE4_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,f16c")))

/* The widest level this CPU and OS run (__builtin_cpu_supports also checks, with XGETBV,
 * that the OS saves the AVX and AVX-512 registers).  Cached: the answer never changes. */
static int qe4_cpu_simd_level(void)
{
    static int level = -1;
    if (level < 0) {
        int l = QE4_SIMD_PORTABLE;
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("f16c")) {
            l = QE4_SIMD_AVX2;
            if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
                && __builtin_cpu_supports("avx512vl"))
                l = QE4_SIMD_AVX512;
        }
        level = l;
    }
    return level;
}
#else
#define QE4_X86 0
#define QE4_TARGET_AVX2
#define QE4_TARGET_AVX512
static int qe4_cpu_simd_level(void) { return QE4_SIMD_PORTABLE; }
#endif

/* QE4_OK when this CPU runs `level`, else QE4_ERR_SIMD. */
static inline int qe4_check_simd(int level)
{
    switch (level) {
    case QE4_SIMD_PORTABLE:
    case QE4_SIMD_AVX2:
    case QE4_SIMD_AVX512:
        return level <= qe4_cpu_simd_level() ? QE4_OK : QE4_ERR_SIMD;
    default:
        return QE4_ERR_SIMD;
    }
}

/* QE4_OK when this CPU runs `level` and `bits` is a width of the rowwise layout
 * (qe4.layouts.RowwiseLayout.bits: 2, 3, 4, 5, 6, 8), which every rowwise kernel (the
 * encoders, bags, dequantize, lookups) implements; else QE4_ERR_SIMD or QE4_ERR_BITS. */
static inline int qe4_check_rowwise(int bits, int level)
{
    int err = qe4_check_simd(level);
    if (err != QE4_OK)
        return err;
    switch (bits) {
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:
    case 8:
        return QE4_OK;
    default:
        return QE4_ERR_BITS;
    }
}

/* NAME compiled once per SIMD level from the same C: NAME must be a QE4_INLINE function
 * returning RET; PARAMS is its parenthesized parameter list and ARGS the matching argument
 * names.  Defines NAME_portable, NAME_avx2, NAME_avx512 and the table NAME_at[level] of
 * pointers to them (index it with a level checked by qe4_check_simd). */
#define QE4_PER_LEVEL(RET, NAME, PARAMS, ARGS)                                               \
    static RET NAME##_portable PARAMS { return NAME ARGS; }                                  \
    QE4_TARGET_AVX2 static RET NAME##_avx2 PARAMS { return NAME ARGS; }                      \
    QE4_TARGET_AVX512 static RET NAME##_avx512 PARAMS { return NAME ARGS; }                  \
    static RET (*const NAME##_at[QE4_SIMD_LEVELS]) PARAMS = {NAME##_portable, NAME##_avx2, \
                                                             NAME##_avx512}

#endif
