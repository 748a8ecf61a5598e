/* Row-wise quantization kernels of qe4_fast: the C twin of qe4/rowwise.py.
 *
 * Every function here reproduces the reference bit for bit: IEEE float32, round to
 * nearest-even, no FMA contraction (-ffp-contract=off), the reference's sequential
 * order along each row.  Kernels take validated buffers; the only failure is a bad
 * method, bit width or SIMD level code, refused by qe4_rowwise_plan_init (a switch whose
 * default is an error, see _common.h) before any row is touched.
 *
 * The greedy search runs QE4_LANES rows at once, transposed (lane k = row k), each
 * lane keeping its row's column order: the arithmetic per lane is exactly the
 * scalar reference, the compiler vectorizes across lanes.  Every step of a block
 * (ranges by method, encoding, the fused minmax pass) is compiled once per SIMD level
 * (QE4_PER_LEVEL) and the plan picks the level's variants once per call; the
 * operations are the same IEEE operations at every width, so every level gives the
 * same bits.
 */
#ifndef QE4_ROWWISE_KERNELS_H
#define QE4_ROWWISE_KERNELS_H

#include "_common.h"

#define QE4_LANES 16

/* One call's work, planned once (qe4_rowwise_plan_init) and then run block by block
 * (qe4_rowwise_block) on any number of threads. */
typedef struct qe4_rowwise_plan qe4_rowwise_plan;

/* One step over rows [r0, r0 + n), n <= QE4_LANES, with per-thread scratch `work`
 * (qe4_rowwise_work_floats); returns the number of rows it flags (see qe4_range_bad). */
typedef int (*qe4_rowwise_step)(const qe4_rowwise_plan *p, int r0, int n, float *work);

struct qe4_rowwise_plan {
    /* set by the caller */
    const float *x;            /* IN  [n_rows, n_cols], finite */
    int n_cols, bits, fp16;
    float n_bins, min_bins;    /* greedy and exhaustive */
    float aciq_c;              /* aciq-laplace and aciq-gauss */
    int max_levels;            /* exhaustive: a guard far beyond any level a search reaches */
    float *lo, *hi;            /* OUT [n_rows] chosen ranges (not used by the fused minmax pass) */
    uint8_t *out;              /* OUT [n_rows, row_bytes] packed rows, or NULL: ranges only */
    size_t row_bytes;
    /* set by qe4_rowwise_plan_init */
    float qmax;
    qe4_rowwise_step ranges;   /* the method's ranges, or the fused minmax pass */
    qe4_rowwise_step encode;   /* scale/bias and codes from the ranges, or NULL */
};

/* A step body compiled for every SIMD level: name_at[level] (see QE4_PER_LEVEL). */
#define QE4_STEP_AT_EVERY_LEVEL(name)                                                      \
    QE4_PER_LEVEL(int, name, (const qe4_rowwise_plan *p, int r0, int n, float *work),     \
                  (p, r0, n, work))

/* ------------------------------------------------------------------ ranges */

/* Min and max of a row; "+ 0.0f" makes a zero bound +0.0 (qe4's convention), so the
 * reduction order is free and 16 independent partial results vectorize.  Returns 1
 * when the row holds an inf or a NaN (x * 0 is exactly 0 for every finite x). */
QE4_INLINE int qe4_row_minmax(const float *x, int n_cols, float *lo, float *hi)
{
    float mn = x[0], mx = x[0], zero = x[0] * 0.0f;
    int j = 0;
    if (n_cols >= 16) {
        float pmn[16], pmx[16], pz[16];
        for (int k = 0; k < 16; k++) {
            pmn[k] = pmx[k] = x[k];
            pz[k] = x[k] * 0.0f;
        }
        for (j = 16; j + 16 <= n_cols; j += 16)
            for (int k = 0; k < 16; k++) {
                float v = x[j + k];
                pmn[k] = v < pmn[k] ? v : pmn[k];
                pmx[k] = v > pmx[k] ? v : pmx[k];
                pz[k] = pz[k] + v * 0.0f;
            }
        for (int k = 0; k < 16; k++) {
            mn = pmn[k] < mn ? pmn[k] : mn;
            mx = pmx[k] > mx ? pmx[k] : mx;
            zero = zero + pz[k];
        }
    }
    for (; j < n_cols; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
        zero = zero + x[j] * 0.0f;
    }
    *lo = mn + 0.0f;
    *hi = mx + 0.0f;
    return zero != 0.0f;
}

/* h(v): round to the stored scale/bias dtype and back (identity for float32). */
QE4_INLINE float qe4_hv(float v, int fp16) { return fp16 ? qe4_round_half(v) : v; }

/* range_loss parameters of one candidate (lo, hi): h(lo), scale, inv. */
QE4_INLINE void qe4_loss_params(float lo, float hi, float qmax, int fp16,
                                float *lo_h, float *scale, float *inv)
{
    float l = qe4_hv(lo, fp16);
    float rng = hi - l;
    float s = qe4_hv(rng / qmax, fp16);
    s = rng == 0.0f ? 1.0f : s;
    *lo_h = l;
    *scale = s;
    *inv = 1.0f / (s == 0.0f ? 1.0f : s);
}

/* range_loss of one row, scalar, columns in order. */
static inline float qe4_row_loss(const float *x, int n_cols, float lo, float hi, float qmax, int fp16)
{
    float l, s, inv, acc = 0.0f;
    qe4_loss_params(lo, hi, qmax, fp16, &l, &s, &inv);
    for (int j = 0; j < n_cols; j++) {
        float t = (x[j] - l) * inv;
        t = t < 0.0f ? 0.0f : t;      /* clamp first (NaN stays NaN), then rint */
        t = t > qmax ? qmax : t;
        t = (t + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
        float d = x[j] - (t * s + l);
        acc = acc + d * d;
    }
    return sqrtf(acc);
}

/* The greedy lanes are compiled as non-trapping (floating-point exception flags are
 * never read): GCC then turns their per-lane clamps and selects into SIMD max/min and
 * blends on AVX2/SSE2 too (without it only AVX-512 masking vectorizes them, ~4x slower
 * elsewhere).  No value changes: this is not -ffast-math (rounding, NaN, signed zeros
 * and operation order are untouched), and the tests compare every byte.  Scoped to the
 * greedy functions: elsewhere it makes GCC prefer scalar conditional moves. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

/* Squared L2 errors of QE4_LANES rows stored transposed, xt[j * QE4_LANES + k] = row k,
 * column j, each quantized with two candidates at once (they share the loads of x): codes
 * clip(rint((x - bias) * inv), 0, qmax), error sum_j (x - (q * scale + bias))^2 in column
 * order.  The range search (qe4_lanes_loss2) and the mse search (_mse_kernels.h) both
 * evaluate their candidates with it. */
QE4_INLINE void qe4_lanes_sqerr2(const float *restrict xt, int n_cols, float qmax,
                                 const float *sa, const float *ba, const float *ia,
                                 float *restrict ea, const float *sb, const float *bb,
                                 const float *ib, float *restrict eb)
{
    float aa[QE4_LANES], ab[QE4_LANES];
    for (int k = 0; k < QE4_LANES; k++)
        aa[k] = ab[k] = 0.0f;
    for (int j = 0; j < n_cols; j++) {
        const float *xj = xt + (size_t)j * QE4_LANES;
        for (int k = 0; k < QE4_LANES; k++) {
            float x = xj[k];
            float ta = (x - ba[k]) * ia[k];
            float tb = (x - bb[k]) * ib[k];
            ta = ta < 0.0f ? 0.0f : ta;
            tb = tb < 0.0f ? 0.0f : tb;
            ta = ta > qmax ? qmax : ta;
            tb = tb > qmax ? qmax : tb;
            ta = (ta + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
            tb = (tb + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
            float da = x - (ta * sa[k] + ba[k]);
            float db = x - (tb * sb[k] + bb[k]);
            aa[k] = aa[k] + da * da;
            ab[k] = ab[k] + db * db;
        }
    }
    for (int k = 0; k < QE4_LANES; k++) {
        ea[k] = aa[k];
        eb[k] = ab[k];
    }
}

/* range_loss of QE4_LANES rows stored transposed (see qe4_lanes_sqerr2) for two candidate
 * ranges at once. */
QE4_INLINE void qe4_lanes_loss2(const float *restrict xt, int n_cols, float qmax, int fp16,
                                   const float *lo_a, const float *hi_a, float *restrict out_a,
                                   const float *lo_b, const float *hi_b, float *restrict out_b)
{
    float la[QE4_LANES], sa[QE4_LANES], ia[QE4_LANES], aa[QE4_LANES];
    float lb[QE4_LANES], sb[QE4_LANES], ib[QE4_LANES], ab[QE4_LANES];
    for (int k = 0; k < QE4_LANES; k++) {
        qe4_loss_params(lo_a[k], hi_a[k], qmax, fp16, &la[k], &sa[k], &ia[k]);
        qe4_loss_params(lo_b[k], hi_b[k], qmax, fp16, &lb[k], &sb[k], &ib[k]);
    }
    qe4_lanes_sqerr2(xt, n_cols, qmax, sa, la, ia, aa, sb, lb, ib, ab);
    for (int k = 0; k < QE4_LANES; k++) {
        out_a[k] = sqrtf(aa[k]);
        out_b[k] = sqrtf(ab[k]);
    }
}

/* Greedy search (docs/numerics.rst, "The greedy range search") of n rows
 * (1 <= n <= QE4_LANES) starting at x.
 * work: QE4_LANES * n_cols floats.  A lane whose state stops changing while its loop
 * condition still holds (steps absorbed by rounding: the reference loops forever)
 * stops there; that is the limit of the reference's endless loop. */
QE4_INLINE void qe4_greedy_block(const float *restrict x, int n, int n_cols, float qmax, int fp16,
                                 float n_bins, float min_bins, float *work, float *lo_out,
                                 float *hi_out)
{
    float xmin[QE4_LANES], xmax[QE4_LANES], step[QE4_LANES], thr[QE4_LANES];
    float cmin[QE4_LANES], cmax[QE4_LANES], cur[QE4_LANES], best[QE4_LANES];
    float lo[QE4_LANES], hi[QE4_LANES];
    float llo[QE4_LANES], lhi[QE4_LANES], rlo[QE4_LANES], rhi[QE4_LANES];
    float l_left[QE4_LANES], l_right[QE4_LANES];
    int active[QE4_LANES];
    float *restrict xt = work;

    for (int k = 0; k < QE4_LANES; k++) {
        const float *row = x + (size_t)(k < n ? k : n - 1) * n_cols; /* pad with the last row */
        for (int j = 0; j < n_cols; j++)
            xt[(size_t)j * QE4_LANES + k] = row[j];
        qe4_row_minmax(row, n_cols, &xmin[k], &xmax[k]);
        step[k] = (xmax[k] - xmin[k]) / n_bins;
        thr[k] = min_bins * step[k];
    }
    qe4_lanes_loss2(xt, n_cols, qmax, fp16, xmin, xmax, cur, xmin, xmax, best);
    int n_active = 0;
    for (int k = 0; k < QE4_LANES; k++) {
        best[k] = cur[k];
        cmin[k] = lo[k] = xmin[k];
        cmax[k] = hi[k] = xmax[k];
        active[k] = k < n && cmin[k] + thr[k] < cmax[k];
        n_active += active[k];
    }
    while (n_active) {
        for (int k = 0; k < QE4_LANES; k++) {
            llo[k] = cmin[k] + step[k];
            lhi[k] = cmax[k];
            rlo[k] = cmin[k];
            rhi[k] = cmax[k] - step[k];
        }
        qe4_lanes_loss2(xt, n_cols, qmax, fp16, llo, lhi, l_left, rlo, rhi, l_right);
        /* every comparison first, unconditionally, then integer selects: both loops
         * vectorize across lanes */
        int c_left[QE4_LANES], c_right[QE4_LANES], c_best[QE4_LANES], go_left[QE4_LANES];
        for (int k = 0; k < QE4_LANES; k++) {
            c_left[k] = cur[k] < l_left[k];
            c_right[k] = cur[k] < l_right[k];
            c_best[k] = cur[k] < best[k];
            go_left[k] = l_left[k] < l_right[k];
        }
        for (int k = 0; k < QE4_LANES; k++) {
            int act = active[k];
            int keep = act & c_left[k] & c_right[k] & c_best[k];
            best[k] = keep ? cur[k] : best[k];
            lo[k] = keep ? cmin[k] : lo[k];
            hi[k] = keep ? cmax[k] : hi[k];
            int left = act & go_left[k], right = act & !go_left[k];
            cur[k] = left ? l_left[k] : (right ? l_right[k] : cur[k]);
            cmin[k] = left ? llo[k] : cmin[k];
            cmax[k] = right ? rhi[k] : cmax[k];
        }
        n_active = 0;
        for (int k = 0; k < QE4_LANES; k++) {
            /* a lane whose bound did not move (step absorbed) stops, as in the reference */
            int moved = go_left[k] ? llo[k] != rlo[k] : rhi[k] != lhi[k];
            active[k] = active[k] & moved & (cmin[k] + thr[k] < cmax[k]);
            n_active += active[k];
        }
    }
    for (int k = 0; k < n; k++) {
        lo_out[k] = lo[k];
        hi_out[k] = hi[k];
    }
}

/* Ranges of rows [r0, r0 + n) by the greedy search. */
QE4_INLINE int qe4_step_greedy(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    qe4_greedy_block(p->x + (size_t)r0 * p->n_cols, n, p->n_cols, p->qmax, p->fp16, p->n_bins,
                     p->min_bins, work, p->lo + r0, p->hi + r0);
    return 0;
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_greedy);

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* Exhaustive search over greedy's reachable grid (qe4.rowwise.exhaustive_range) of one row.
 * A successor whose bound does not move (step absorbed by rounding) is not expanded, as in
 * the reference.  work: 4 * (max_levels + 2) floats; max_levels (4 * n_bins + 64) is far
 * beyond any level a search reaches, a guard only. */
static void qe4_exhaustive_row(const float *x, int n_cols, float qmax, int fp16, float n_bins,
                               float min_bins, int max_levels, float *work, float *lo_out, float *hi_out)
{
    int cap = max_levels + 2;
    float *cmins = work, *cmaxs = work + cap, *reach = work + 2 * cap, *nxt = work + 3 * cap;
    float xmin, xmax;
    qe4_row_minmax(x, n_cols, &xmin, &xmax);
    float step = (xmax - xmin) / n_bins;
    float thr = min_bins * step;
    float best = qe4_row_loss(x, n_cols, xmin, xmax, qmax, fp16);
    float lo = xmin, hi = xmax;
    cmins[0] = xmin;
    cmaxs[0] = xmax;
    reach[0] = 1.0f;
    for (int t = 0; t < max_levels; t++) {
        cmins[t + 1] = cmins[t] + step;
        cmaxs[t + 1] = cmaxs[t] - step;
        int any = 0;
        for (int i = 0; i <= t + 1; i++)
            nxt[i] = 0.0f;
        for (int i = 0; i <= t; i++) { /* from (i, j = t - i): (i, j + 1) and (i + 1, j) */
            int j = t - i;
            if (reach[i] == 0.0f || !(cmins[i] + thr < cmaxs[j]))
                continue;
            if (cmaxs[j + 1] != cmaxs[j]) {
                nxt[i] = 1.0f;
                any = 1;
            }
            if (cmins[i + 1] != cmins[i]) {
                nxt[i + 1] = 1.0f;
                any = 1;
            }
        }
        if (!any)
            break;
        for (int i = 0; i <= t + 1; i++) {
            reach[i] = nxt[i];
            if (nxt[i] == 0.0f)
                continue;
            float loss = qe4_row_loss(x, n_cols, cmins[i], cmaxs[t + 1 - i], qmax, fp16);
            if (loss < best) {
                best = loss;
                lo = cmins[i];
                hi = cmaxs[t + 1 - i];
            }
        }
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* ACIQ range of one row (qe4.rowwise.aciq_range): means summed in column order. */
static void qe4_aciq_row(const float *x, int n_cols, int gauss, float c, float *lo_out, float *hi_out)
{
    float xmin, xmax, acc = 0.0f, dacc = 0.0f;
    float fn = (float)n_cols;
    qe4_row_minmax(x, n_cols, &xmin, &xmax);
    for (int j = 0; j < n_cols; j++)
        acc = acc + x[j];
    float mean = acc / fn;
    for (int j = 0; j < n_cols; j++) {
        float d = x[j] - mean;
        dacc = dacc + (gauss ? d * d : fabsf(d));
    }
    float alpha = gauss ? c * sqrtf(dacc / fn) : c * (dacc / fn);
    /* np.maximum / np.minimum propagate NaN: only reachable when a float32 sum of the
     * row overflows (values near 3.4e38), where the reference stores NaN; so does this */
    float a = mean - alpha;
    float lo = a != a ? a : (a > xmin ? a : xmin);
    lo = (lo != lo ? lo : (lo < xmax ? lo : xmax)) + 0.0f;
    float b = lo + 2.0f * alpha;
    float hi = b != b ? b : (b < xmax ? b : xmax);
    hi = (hi != hi ? hi : (hi > lo ? hi : lo)) + 0.0f;
    *lo_out = lo;
    *hi_out = hi;
}

/* ------------------------------------------------------------------ codes */

/* Stored scale and bias and the reciprocal used to quantize (qe4.rowwise.scale_bias). */
QE4_INLINE void qe4_scale_bias(float lo, float hi, int bits, int fp16,
                                  float *scale, float *bias, float *inv)
{
    if (bits == 8) {
        float rng = hi - lo;
        *scale = rng / 255.0f;
        *bias = lo + 0.0f;
        *inv = 255.0f / (rng + 1e-8f);
        return;
    }
    float qmax = (float)((1 << bits) - 1);
    float b = qe4_hv(lo, fp16);
    float rng = hi - b;
    float s = rng == 0.0f ? 1.0f : rng / qmax;
    s = qe4_hv(s, fp16);
    if (s == 0.0f)
        s = 1.0f;
    float i = 1.0f / s;
    if (isinf(i))
        s = i = 1.0f;
    *scale = s;
    *bias = b; /* a tiny negative lo keeps its float16 -0.0, as in torch */
    *inv = i;
}

/* One code, clip(rint((x - bias) * inv), 0, qmax): clamped first, then rounded by the
 * magic number, whose float bits then hold the integer in their low bits. */
QE4_INLINE uint32_t qe4_quantize_code(float x, float bias, float inv, float qmax)
{
    float t = (x - bias) * inv;
    t = t < 0.0f ? 0.0f : t;
    t = t > qmax ? qmax : t;
    return qe4_bits(t + QE4_RINT_MAGIC) & 0xffu;
}

/* Codes of a row at 3, 5 or 6 bits: a bit stream, low bits first (qe4.layouts.pack_codes),
 * so a code may straddle two bytes.  Returns the number of code bytes written. */
QE4_INLINE int qe4_encode_stream(const float *restrict x, int n_cols, const int bits, float bias,
                                 float inv, float qmax, uint8_t *restrict out)
{
    uint32_t acc = 0;
    int n_acc = 0, o = 0;
    for (int j = 0; j < n_cols; j++) {
        acc |= qe4_quantize_code(x[j], bias, inv, qmax) << n_acc;
        n_acc += bits;
        if (n_acc >= 8) {   /* bits <= 8: at most one whole byte is ready */
            out[o++] = (uint8_t)acc;
            acc >>= 8;
            n_acc -= 8;
        }
    }
    if (n_acc > 0)
        out[o++] = (uint8_t)acc;
    return o;
}

/* One packed row: codes low bits first, then scale and bias little-endian (float16 when
 * fp16, else float32).  Unused high bits of the last code byte are zero.  bits is 2, 3, 4,
 * 5, 6 or 8: qe4_rowwise_plan_init and qe4_mse_plan_init (qe4_check_rowwise) refuse any other width before a row
 * is encoded, so the default case (which writes nothing) is never reached. */
QE4_INLINE void qe4_encode_row(const float *restrict x, int n_cols, int bits, int fp16,
                               float scale, float bias, float inv, uint8_t *restrict out)
{
    float qmax = (float)((1 << bits) - 1);
    int nb, full;
    switch (bits) {
    case 8:
        for (int j = 0; j < n_cols; j++)
            out[j] = (uint8_t)qe4_quantize_code(x[j], bias, inv, qmax);
        nb = n_cols;
        break;
    case 4:
        full = n_cols / 2;
        for (int c = 0; c < full; c++)
            out[c] = (uint8_t)(qe4_quantize_code(x[2 * c], bias, inv, qmax)
                               | (qe4_quantize_code(x[2 * c + 1], bias, inv, qmax) << 4));
        if (n_cols & 1)
            out[full] = (uint8_t)qe4_quantize_code(x[n_cols - 1], bias, inv, qmax);
        nb = (n_cols + 1) / 2;
        break;
    case 2:
        full = n_cols / 4;
        for (int c = 0; c < full; c++)
            out[c] = (uint8_t)(qe4_quantize_code(x[4 * c], bias, inv, qmax)
                               | (qe4_quantize_code(x[4 * c + 1], bias, inv, qmax) << 2)
                               | (qe4_quantize_code(x[4 * c + 2], bias, inv, qmax) << 4)
                               | (qe4_quantize_code(x[4 * c + 3], bias, inv, qmax) << 6));
        if (n_cols & 3) {
            uint32_t v = 0;
            for (int j = 4 * full; j < n_cols; j++)
                v |= qe4_quantize_code(x[j], bias, inv, qmax) << (2 * (j - 4 * full));
            out[full] = (uint8_t)v;
        }
        nb = (n_cols + 3) / 4;
        break;
    case 3: /* a constant width per case, so each loop compiles for its own shifts */
        nb = qe4_encode_stream(x, n_cols, 3, bias, inv, qmax, out);
        break;
    case 5:
        nb = qe4_encode_stream(x, n_cols, 5, bias, inv, qmax, out);
        break;
    case 6:
        nb = qe4_encode_stream(x, n_cols, 6, bias, inv, qmax, out);
        break;
    default:
        return;
    }
    if (fp16) {
        uint16_t hs = qe4_float_to_half(scale), hb = qe4_float_to_half(bias);
        out[nb] = (uint8_t)(hs & 0xff);
        out[nb + 1] = (uint8_t)(hs >> 8);
        out[nb + 2] = (uint8_t)(hb & 0xff);
        out[nb + 3] = (uint8_t)(hb >> 8);
    } else {
        uint32_t us = qe4_bits(scale), ub = qe4_bits(bias);
        for (int i = 0; i < 4; i++) {
            out[nb + i] = (uint8_t)(us >> (8 * i));
            out[nb + 4 + i] = (uint8_t)(ub >> (8 * i));
        }
    }
}

/* ------------------------------------------------------------------ blocks */

/* 1 when the row with min lo and max hi fails qe4._validate.check_fp16_ranges (the
 * float16 scale/bias would overflow, or for float32 tables the range overflows);
 * the Python wrapper then calls that helper, which raises the reference's error. */
QE4_INLINE int qe4_range_bad(float lo, float hi, int bits, int fp16, int n_cols)
{
    float rng = hi - lo;
    float big = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
    if (!fp16) {
        float sum_bound = big * (float)(2 * n_cols);
        return !(rng - rng == 0.0f) || !(sum_bound - sum_bound == 0.0f);
    }
    float scale = rng / (float)((1 << bits) - 1);
    return !(big < 65520.0f) || !(scale < 65520.0f); /* values that round to float16 inf */
}

/* Min and max of rows [r0, r0 + n); returns how many of them are non-finite or fail
 * check_fp16_ranges (the Python wrapper then calls those helpers, which raise). */
QE4_INLINE int qe4_step_minmax(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    int n_bad = 0, n_cols = p->n_cols;
    (void)work;
    for (int r = r0; r < r0 + n; r++)
        n_bad += qe4_row_minmax(p->x + (size_t)r * n_cols, n_cols, &p->lo[r], &p->hi[r])
                 | qe4_range_bad(p->lo[r], p->hi[r], p->bits, p->fp16, n_cols);
    return n_bad;
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_minmax);

/* Ranges of rows [r0, r0 + n) by the exhaustive search (work: 4 * (max_levels + 2) floats). */
QE4_INLINE int qe4_step_exhaustive(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    for (int r = r0; r < r0 + n; r++)
        qe4_exhaustive_row(p->x + (size_t)r * p->n_cols, p->n_cols, p->qmax, p->fp16, p->n_bins,
                           p->min_bins, p->max_levels, work, &p->lo[r], &p->hi[r]);
    return 0;
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_exhaustive);

/* Ranges of rows [r0, r0 + n) by ACIQ (Laplace or Gauss). */
QE4_INLINE int qe4_step_aciq(const qe4_rowwise_plan *p, int r0, int n, int gauss)
{
    for (int r = r0; r < r0 + n; r++)
        qe4_aciq_row(p->x + (size_t)r * p->n_cols, p->n_cols, gauss, p->aciq_c, &p->lo[r],
                     &p->hi[r]);
    return 0;
}
QE4_INLINE int qe4_step_aciq_laplace(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    (void)work;
    return qe4_step_aciq(p, r0, n, 0);
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_aciq_laplace);
QE4_INLINE int qe4_step_aciq_gauss(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    (void)work;
    return qe4_step_aciq(p, r0, n, 1);
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_aciq_gauss);

/* Packed rows [r0, r0 + n) from their ranges: scale/bias, codes, packing. */
QE4_INLINE int qe4_step_encode(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    (void)work;
    for (int r = r0; r < r0 + n; r++) {
        float scale, bias, inv;
        qe4_scale_bias(p->lo[r], p->hi[r], p->bits, p->fp16, &scale, &bias, &inv);
        qe4_encode_row(p->x + (size_t)r * p->n_cols, p->n_cols, p->bits, p->fp16, scale, bias,
                       inv, p->out + (size_t)r * p->row_bytes);
    }
    return 0;
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_encode);

/* ------------------------------------------------------------------ minmax, fused */

/* GCC vector extensions (16 floats; each level lowers them to its own SIMD width): the
 * min/max partials are written as explicit compare-and-select, which every level turns
 * into SIMD compares and blends (GCC's auto-vectorizer keeps the trapping scalar
 * compares of the plain loop).  Same IEEE operations, so the same bits. */
typedef float qe4_v16f __attribute__((vector_size(64), aligned(4)));
typedef int32_t qe4_v16i __attribute__((vector_size(64), aligned(4)));
typedef float qe4_v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t qe4_v8i __attribute__((vector_size(32), aligned(4)));
typedef float qe4_v4f __attribute__((vector_size(16), aligned(4)));
typedef int32_t qe4_v4i __attribute__((vector_size(16), aligned(4)));
typedef float qe4_v2f __attribute__((vector_size(8), aligned(4)));
typedef int32_t qe4_v2i __attribute__((vector_size(8), aligned(4)));

#define QE4_VSEL(m, a, b, vf, vi) ((vf)(((vi)(a) & (m)) | ((vi)(b) & ~(m))))
/* v's high half against its low half (lanes LO and HI): select by op (< for min, > for
 * max) into a vector of type vf (mask type vi), or add them */
#define QE4_HALF_SEL(v, op, vf, vi, LO, HI)                                                 \
    ({                                                                                      \
        vf lo_ = __builtin_shufflevector(v, v, LO), hi_ = __builtin_shufflevector(v, v, HI); \
        QE4_VSEL(hi_ op lo_, hi_, lo_, vf, vi);                                             \
    })
#define QE4_HALF_ADD(v, LO, HI) (__builtin_shufflevector(v, v, LO) + __builtin_shufflevector(v, v, HI))
#define QE4_L16 0, 1, 2, 3, 4, 5, 6, 7
#define QE4_H16 8, 9, 10, 11, 12, 13, 14, 15
#define QE4_L8 0, 1, 2, 3
#define QE4_H8 4, 5, 6, 7
#define QE4_L4 0, 1
#define QE4_H4 2, 3

/* qe4_row_minmax for the fused pass: the same lo, hi and flag (a NaN row is flagged;
 * its lo/hi are never used).  The order of the min/max reduction is free because a
 * zero bound is made +0.0; an overlapping last load only repeats values (and adds
 * x * 0 once more, still 0 for every finite x). */
QE4_INLINE int qe4_row_minmax_simd(const float *restrict x, int n_cols, float *lo, float *hi)
{
    if (n_cols < 16)
        return qe4_row_minmax(x, n_cols, lo, hi);
    qe4_v16f v, mn, mx, z;
    memcpy(&mn, x, sizeof mn);
    mx = mn;
    z = mn * 0.0f;
    for (int j = 16; j < n_cols; j += 16) {
        memcpy(&v, x + (j + 16 <= n_cols ? j : n_cols - 16), sizeof v);
        mn = QE4_VSEL(v < mn, v, mn, qe4_v16f, qe4_v16i);
        mx = QE4_VSEL(v > mx, v, mx, qe4_v16f, qe4_v16i);
        z = z + v * 0.0f;
    }
    /* a tree, halving the vectors: 4 dependent steps, not 15 */
    qe4_v8f mn8 = QE4_HALF_SEL(mn, <, qe4_v8f, qe4_v8i, QE4_L16, QE4_H16);
    qe4_v8f mx8 = QE4_HALF_SEL(mx, >, qe4_v8f, qe4_v8i, QE4_L16, QE4_H16);
    qe4_v8f z8 = QE4_HALF_ADD(z, QE4_L16, QE4_H16);
    qe4_v4f mn4 = QE4_HALF_SEL(mn8, <, qe4_v4f, qe4_v4i, QE4_L8, QE4_H8);
    qe4_v4f mx4 = QE4_HALF_SEL(mx8, >, qe4_v4f, qe4_v4i, QE4_L8, QE4_H8);
    qe4_v4f z4 = QE4_HALF_ADD(z8, QE4_L8, QE4_H8);
    qe4_v2f mn2 = QE4_HALF_SEL(mn4, <, qe4_v2f, qe4_v2i, QE4_L4, QE4_H4);
    qe4_v2f mx2 = QE4_HALF_SEL(mx4, >, qe4_v2f, qe4_v2i, QE4_L4, QE4_H4);
    qe4_v2f z2 = QE4_HALF_ADD(z4, QE4_L4, QE4_H4);
    float a = mn2[1] < mn2[0] ? mn2[1] : mn2[0];
    float b = mx2[1] > mx2[0] ? mx2[1] : mx2[0];
    float c = z2[0] + z2[1];
    *lo = a + 0.0f;
    *hi = b + 0.0f;
    return c != 0.0f;
}

/* qe4_range_bad and qe4_scale_bias of QE4_LANES rows, written without branches so that
 * the loops vectorize across rows.  The same operations as those two functions; a value
 * computed and then not selected never changes a result.  This function and its caller
 * (whose flags the inlined loops take) are compiled non-trapping, as the greedy lanes:
 * no value changes. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
QE4_INLINE void qe4_lanes_scale_bias(const float *restrict lo, const float *restrict hi, int bits,
                                     int fp16, int n_cols, int *restrict bad,
                                     float *restrict scale, float *restrict bias,
                                     float *restrict inv)
{
    float qmax = (float)((1 << bits) - 1), n2 = (float)(2 * n_cols);
    for (int k = 0; k < QE4_LANES; k++) { /* qe4_range_bad */
        float rng = hi[k] - lo[k], al = fabsf(lo[k]), ah = fabsf(hi[k]);
        float big = al > ah ? al : ah;
        float sb = big * n2, sc = rng / qmax;
        int b16 = !(big < 65520.0f) | !(sc < 65520.0f);
        int b32 = !(rng - rng == 0.0f) | !(sb - sb == 0.0f);
        bad[k] |= fp16 ? b16 : b32;
    }
    if (bits == 8) {
        for (int k = 0; k < QE4_LANES; k++) {
            float rng = hi[k] - lo[k];
            scale[k] = rng / 255.0f;
            bias[k] = lo[k] + 0.0f;
            inv[k] = 255.0f / (rng + 1e-8f);
        }
        return;
    }
    for (int k = 0; k < QE4_LANES; k++)
        bias[k] = fp16 ? qe4_round_half(lo[k]) : lo[k];
    for (int k = 0; k < QE4_LANES; k++) {
        float r = hi[k] - bias[k];
        float s = r / qmax;
        scale[k] = r == 0.0f ? 1.0f : s;
    }
    for (int k = 0; k < QE4_LANES; k++)
        scale[k] = fp16 ? qe4_round_half(scale[k]) : scale[k];
    for (int k = 0; k < QE4_LANES; k++) {
        float s = scale[k] == 0.0f ? 1.0f : scale[k];
        float iv = 1.0f / s;
        int inf = fabsf(iv) == INFINITY;
        scale[k] = inf ? 1.0f : s;
        inv[k] = inf ? 1.0f : iv;
    }
}

/* Min, max, check and packed row of rows [r0, r0 + n), n <= QE4_LANES: qe4_minmax_rows
 * followed by qe4_encode_block, in one pass while the rows are in L1.  Each step runs
 * over all the rows before the next (the rows are independent, so their latencies
 * overlap).  The ranges are not kept (quantize does not return them).  Returns the number
 * of flagged rows. */
QE4_INLINE int qe4_minmax_encode_rows(const float *x, int r0, int n, int n_cols, int bits,
                                      int fp16, uint8_t *out, size_t row_bytes)
{
    float lo[QE4_LANES], hi[QE4_LANES], scale[QE4_LANES], bias[QE4_LANES], inv[QE4_LANES];
    int bad[QE4_LANES], n_bad = 0;
    const float *xb = x + (size_t)r0 * n_cols;
    for (int k = 0; k < QE4_LANES; k++) /* rows past n repeat the last row */
        bad[k] = qe4_row_minmax_simd(xb + (size_t)(k < n ? k : n - 1) * n_cols, n_cols,
                                     &lo[k], &hi[k]);
    qe4_lanes_scale_bias(lo, hi, bits, fp16, n_cols, bad, scale, bias, inv);
    for (int k = 0; k < n; k++)
        n_bad += bad[k];
    for (int k = 0; k < n; k++)
        qe4_encode_row(xb + (size_t)k * n_cols, n_cols, bits, fp16, scale[k], bias[k], inv[k],
                       out + (size_t)(r0 + k) * row_bytes);
    return n_bad;
}

QE4_INLINE int qe4_step_fused_minmax(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    (void)work;
    return qe4_minmax_encode_rows(p->x, r0, n, p->n_cols, p->bits, p->fp16, p->out,
                                  p->row_bytes);
}
QE4_STEP_AT_EVERY_LEVEL(qe4_step_fused_minmax);

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* ------------------------------------------------------------------ plan */

/* Floats of per-thread scratch a block of `method` needs, or -1 for an unknown method. */
static int64_t qe4_rowwise_work_floats(int method, int n_cols, int max_levels)
{
    switch (method) {
    case QE4_EXHAUSTIVE:
        return 4 * ((int64_t)max_levels + 2);
    case QE4_MINMAX:
    case QE4_GREEDY:
    case QE4_ACIQ_LAPLACE:
    case QE4_ACIQ_GAUSS:
        return (int64_t)QE4_LANES * n_cols;
    default:
        return -1;
    }
}

/* Choose the steps of p (whose caller fields are set) for `method` at SIMD level `simd`:
 * QE4_OK, or QE4_ERR_SIMD / QE4_ERR_BITS / QE4_ERR_METHOD (nothing runs).  Method minmax
 * with output rows is the fused pass, which keeps no ranges. */
static int qe4_rowwise_plan_init(qe4_rowwise_plan *p, int method, int simd)
{
    int err = qe4_check_rowwise(p->bits, simd);
    if (err != QE4_OK)
        return err;
    p->qmax = (float)((1 << p->bits) - 1);
    p->encode = p->out != NULL ? qe4_step_encode_at[simd] : NULL;
    switch (method) {
    case QE4_MINMAX:
        p->ranges = p->out != NULL ? qe4_step_fused_minmax_at[simd] : qe4_step_minmax_at[simd];
        if (p->out != NULL)
            p->encode = NULL;
        return QE4_OK;
    case QE4_GREEDY:
        p->ranges = qe4_step_greedy_at[simd];
        return QE4_OK;
    case QE4_EXHAUSTIVE:
        p->ranges = qe4_step_exhaustive_at[simd];
        return QE4_OK;
    case QE4_ACIQ_LAPLACE:
        p->ranges = qe4_step_aciq_laplace_at[simd];
        return QE4_OK;
    case QE4_ACIQ_GAUSS:
        p->ranges = qe4_step_aciq_gauss_at[simd];
        return QE4_OK;
    default:
        return QE4_ERR_METHOD;
    }
}

/* Rows [r0, r0 + n) of a planned call, n <= QE4_LANES; returns the number of flagged rows. */
static inline int qe4_rowwise_block(const qe4_rowwise_plan *p, int r0, int n, float *work)
{
    int n_bad = p->ranges(p, r0, n, work);
    if (p->encode != NULL)
        p->encode(p, r0, n, work);
    return n_bad;
}

#endif
