/* The grouped layout of qe4_fast: the C twin of qe4/grouped.py (read its notes).
 *
 * A row [codes][subs][d][m]: dim codes of `bits` bits, then the 2 * n_groups sub-scales and
 * sub-mins (sc_0, mn_0, sc_1, ...) of `sub_bits` bits in one bit stream, then the float16
 * super-scale d and super-min m.  Group j holds values j * group .. min(dim, (j+1) * group) - 1
 * and reads back as fma(f32(d) * sc_j, q, f32(m) * mn_j).
 *
 * - qe4_grouped_finish_row: steps 2 to 5 of the search (super-parameters, codes, local search,
 *   least-squares refit) and the row's bytes, from step 1's per-group float32 (scale, min)
 *   (qe4.mse.mse_params, computed by the compiled mse kernel);
 * - qe4_grouped_scale_row: the whole search of a scale-only row (params["mins"] == "none":
 *   [codes][sc_j, two's complement][d], read back as fma(f32(d) * sc_j, lev[q], 0) on a signed
 *   level table; qe4.grouped.scale_params and search_scales), step 1 included;
 * - qe4_grouped_row_values / qe4_grouped_bag: dequantized rows and pooled bags (sum, mean,
 *   weights), a portable path and an AVX2 path (every width; 8 columns a vector in groups of
 *   a multiple of 8, the rest column by column) with the same IEEE operations per element.
 *   Every lookup reads a row's group parameters through qe4_g_super and qe4_g_params only.
 *   The AVX2 bag decodes each position's terms once per chunk of positions (qe4_g_chunk),
 *   then adds 64 columns at a time with the accumulators in registers (qe4_g_block64_avx2,
 *   the fused rowwise bag's scheme); at dim 64 the one block reads the positions straight.
 * Level tables (qe4.layouts.level_table): with t->lev set (qe4_g_set_levels) a code q reads
 * back as fma(scale_j, lev[q], min_j) and step 3 picks the nearest level (qe4.mse.level_codes).
 * The table paths are separate instances of the same functions (a constant `use_lev` argument
 * of always-inline bodies, or their own lookup loops), chosen once per row or bag, so the
 * uniform loops carry no extra branch.
 * Lookups decode either kind of row in qe4_g_super and qe4_g_params only (t->mins).
 * Every function takes validated buffers; none fails.
 */
#ifndef QE4_GROUPED_KERNELS_H
#define QE4_GROUPED_KERNELS_H

#include "_common.h"

typedef struct {
    const uint8_t *data;
    int64_t n_rows, row_bytes;
    int dim, bits, group, sub_bits, n_groups, code_bytes, sub_bytes;
    int mins;         /* QE4_G_MINS_GROUP: [codes][sc, mn pairs][d][m]; QE4_G_MINS_NONE: scale-only
                         [codes][sc_j, two's complement][d] (params["mins"] == "none") */
    const float *lev; /* [1 << bits] ascending level values, or NULL: uniform (q itself) */
    int n_mid;        /* with lev: (1 << bits) - 1 midpoints mid[k] = (lev[k] + lev[k+1]) / 2 */
    int lin;          /* lev is the uniform signed table lev[q] = q - 2**(bits - 1) */
    float mid[255];
    float lev16[16];  /* with lev: lev[0 .. min(16, 1 << bits)), zero-padded to 16 (for loads of 8) */
} qe4_grouped;

/* The kinds of group offset (qe4.layouts.MINS), t->mins. */
enum { QE4_G_MINS_GROUP = 0, QE4_G_MINS_NONE = 1 };

/* Set t's level table (NULL: uniform) and its float32 midpoints, as qe4.mse.level_codes. */
static inline void qe4_g_set_levels(qe4_grouped *t, const float *lev)
{
    t->lev = lev;
    t->n_mid = lev != NULL ? (1 << t->bits) - 1 : 0;
    for (int k = 0; k < t->n_mid; k++)
        t->mid[k] = (lev[k] + lev[k + 1]) * 0.5f;
    for (int k = 0; k < 16; k++)
        t->lev16[k] = lev != NULL && k < (1 << t->bits) ? lev[k] : 0.0f;
    t->lin = lev != NULL;
    for (int k = 0; lev != NULL && k <= t->n_mid; k++)
        t->lin &= lev[k] == (float)(k - (1 << (t->bits - 1)));
}

/* The code of a level value v (qe4.grouped.codes_of: the number of levels below v). */
QE4_INLINE int qe4_g_level_code(const qe4_grouped *g, float v)
{
    int q = 0;
    for (int i = 0; i <= g->n_mid; i++)
        q += g->lev[i] < v;
    return q;
}

QE4_INLINE int qe4_g_len(const qe4_grouped *t, int j)
{
    return j < t->n_groups - 1 ? t->group : t->dim - (t->n_groups - 1) * t->group;
}

QE4_INLINE float qe4_h16(float v) { return qe4_half_to_float(qe4_float_to_half(v)); }

/* Write `n` values of `bits` bits as a little-endian bit stream into out[0 .. nbytes). */
QE4_INLINE void qe4_g_pack(uint8_t *out, int nbytes, const uint8_t *vals, int n, int bits)
{
    memset(out, 0, (size_t)nbytes);
    for (int i = 0; i < n; i++) {
        int64_t at = (int64_t)i * bits;
        uint32_t v = (uint32_t)vals[i] << (at & 7);
        out[at >> 3] |= (uint8_t)v;
        if ((at & 7) + bits > 8)
            out[(at >> 3) + 1] |= (uint8_t)(v >> 8);
    }
}

/* --------------------------------------------------------------------------- quantize */

/* Step 3 for one group: codes of (scale, low) into q (float values) and the group's error. */
QE4_INLINE float qe4_g_codes(const float *x, int len, float scale, float low, float qmax, float *q)
{
    float inv = 1.0f / scale;
    inv = (scale > 0.0f && isfinite(inv)) ? inv : 0.0f;
    float err = 0.0f;
    for (int c = 0; c < len; c++) {
        float t = (x[c] - low) * inv;
        t = t < 0.0f ? 0.0f : t;
        t = t > qmax ? qmax : t;
        t = (t + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
        q[c] = t;
        float e = x[c] - fmaf(scale, t, low);
        err = err + e * e;
    }
    return err;
}

/* The same with t's level table: q the level values lev[level_codes((x - low) * inv)]:
 * lev[the number of midpoints exceeded], a chain of selects (the midpoints ascend, so the
 * last one exceeded picks the value), 16 values at a time so that it vectorizes. */
QE4_INLINE float qe4_g_codes_lev(const qe4_grouped *g, const float *x, int len, float scale,
                                 float low, float *q)
{
    float inv = 1.0f / scale;
    inv = (scale > 0.0f && isfinite(inv)) ? inv : 0.0f;
    float err = 0.0f;
    for (int c0 = 0; c0 < len; c0 += 16) {
        int n = len - c0 < 16 ? len - c0 : 16;
        float tv[16], v[16];
        for (int k = 0; k < 16; k++) {
            tv[k] = k < n ? (x[c0 + k] - low) * inv : 0.0f;
            v[k] = g->lev[0];
        }
        for (int i = 0; i < g->n_mid; i++) {
            float mi = g->mid[i], lv = g->lev[i + 1];
#pragma GCC unroll 1
            for (int k = 0; k < 16; k++)
                v[k] = tv[k] > mi ? lv : v[k];
        }
        for (int k = 0; k < n; k++) {
            q[c0 + k] = v[k];
            float e = x[c0 + k] - fmaf(scale, v[k], low);
            err = err + e * e;
        }
    }
    return err;
}

/* qe4.grouped.MOVES, in order; the scale-only search (qe4_gs_local) takes those that keep mn */
#define QE4_G_N_MOVES 9
static const int qe4_g_moves[QE4_G_N_MOVES][2] = {{0, 0}, {-1, 0}, {1, 0}, {0, -1}, {0, 1},
                                                  {-1, -1}, {-1, 1}, {1, -1}, {1, 1}};

/* Step 4: each group's best move from (sc, mn) under (d, m); writes the chosen sc, mn, the
 * codes q [dim] and the group errors err [n_groups]. */
#define QE4_G_MOVE_LANES 16 /* the 9 moves in the lanes of one loop (lanes 9.. repeat move 0) */

QE4_INLINE void qe4_g_local(const qe4_grouped *t, const float *x, float d, float m, int mlo,
                            int mhi, const int *sc0, const int *mn0, int *sc, int *mn, float *q,
                            float *err, const int use_lev)
{
    int smax = (1 << t->sub_bits) - 1;
    float qmax = (float)((1 << t->bits) - 1);
    for (int j = 0; j < t->n_groups; j++) {
        int len = qe4_g_len(t, j), off = j * t->group;
        int ma[QE4_G_MOVE_LANES], mb[QE4_G_MOVE_LANES];
        float ls[QE4_G_MOVE_LANES], ll[QE4_G_MOVE_LANES], li[QE4_G_MOVE_LANES];
        float acc[QE4_G_MOVE_LANES];
        for (int k = 0; k < QE4_G_MOVE_LANES; k++) {
            int mv = k < QE4_G_N_MOVES ? k : 0;
            int a = sc0[j] + qe4_g_moves[mv][0], b = mn0[j] + qe4_g_moves[mv][1];
            a = a < 0 ? 0 : (a > smax ? smax : a);
            b = b < mlo ? mlo : (b > mhi ? mhi : b);
            ma[k] = a;
            mb[k] = b;
            ls[k] = d * (float)a;
            ll[k] = m * (float)b;
            float inv = 1.0f / ls[k];
            li[k] = (ls[k] > 0.0f && isfinite(inv)) ? inv : 0.0f;
            acc[k] = 0.0f;
        }
        /* every move's error, each lane exactly qe4_g_codes' (qe4_g_codes_lev's) sequence of
         * operations */
        if (!use_lev) {
            for (int c = 0; c < len; c++) {
                float xc = x[off + c];
                for (int k = 0; k < QE4_G_MOVE_LANES; k++) {
                    float v = (xc - ll[k]) * li[k];
                    v = v < 0.0f ? 0.0f : v;
                    v = v > qmax ? qmax : v;
                    v = (v + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
                    float e = xc - fmaf(ls[k], v, ll[k]);
                    acc[k] = acc[k] + e * e;
                }
            }
        } else {
            for (int c = 0; c < len; c++) {
                float xc = x[off + c];
                float tv[QE4_G_MOVE_LANES], v[QE4_G_MOVE_LANES];
                for (int k = 0; k < QE4_G_MOVE_LANES; k++) {
                    tv[k] = (xc - ll[k]) * li[k];
                    v[k] = t->lev[0];
                }
                for (int i = 0; i < t->n_mid; i++) { /* qe4_g_codes_lev's selects, lane-wise */
                    float mi = t->mid[i], lv = t->lev[i + 1];
#pragma GCC unroll 1 /* a loop (not 16 scalars): the one vectorized */
                    for (int k = 0; k < QE4_G_MOVE_LANES; k++)
                        v[k] = tv[k] > mi ? lv : v[k];
                }
                for (int k = 0; k < QE4_G_MOVE_LANES; k++) {
                    float e = xc - fmaf(ls[k], v[k], ll[k]);
                    acc[k] = acc[k] + e * e;
                }
            }
        }
        int best = 0;
        for (int k = 1; k < QE4_G_N_MOVES; k++)
            best = acc[k] < acc[best] ? k : best;
        sc[j] = ma[best];
        mn[j] = mb[best];
        err[j] = use_lev ? qe4_g_codes_lev(t, x + off, len, ls[best], ll[best], q + off)
                         : qe4_g_codes(x + off, len, ls[best], ll[best], qmax, q + off);
    }
}

QE4_INLINE float qe4_g_row_error(const float *err, int n_groups)
{
    float s = 0.0f;
    for (int j = 0; j < n_groups; j++)
        s = s + err[j];
    return s;
}

/* Floats of scratch one row needs (qe4_grouped_finish_row's `work`); iwork: 8 * n_groups ints. */
static inline size_t qe4_grouped_work_floats(int dim, int n_groups)
{
    /* per mode: q, rq [dim], err, rerr [n_groups]; the zeroed scales [n_groups]; codes */
    return (size_t)4 * dim + (size_t)5 * n_groups + (size_t)dim + (size_t)n_groups;
}

/* One sub-min mode of steps 2 to 5 (qe4.grouped.search_mode): (d, m), sc, mn [n_groups] and
 * the codes (*q, float values [dim]); returns the row error.  gs: the group scales with
 * constant groups zeroed. */
QE4_INLINE float qe4_g_mode(const qe4_grouped *t, const float *x, const float *gs,
                            const float *glow, int signed_mins, float *d_out, float *m_out,
                            int *sc, int *mn, float **q, float *work, int *iwork,
                            const int use_lev)
{
    const int G = t->n_groups, dim = t->dim, smax = (1 << t->sub_bits) - 1;
    const int mlo = signed_mins ? -(1 << (t->sub_bits - 1)) : 0;
    const int mhi = signed_mins ? (1 << (t->sub_bits - 1)) - 1 : smax;
    float *qa = work, *rq = work + dim, *err = work + 2 * dim, *rerr = err + G;
    int *sc1 = iwork, *mn1 = iwork + G;

    /* step 2 */
    float smx = 0.0f, ext = 0.0f, aext = -1.0f;
    for (int j = 0; j < G; j++) {
        if (j == 0 || gs[j] > smx)
            smx = gs[j];
        if (fabsf(glow[j]) > aext) {
            aext = fabsf(glow[j]);
            ext = glow[j];
        }
    }
    float d = qe4_h16(smx / (float)smax);
    float m = signed_mins ? qe4_h16(aext / (float)mhi) : qe4_h16(ext / (float)smax);
    for (int j = 0; j < G; j++) {
        float a = d > 0.0f ? rintf(gs[j] / d) : 0.0f;
        float b = m != 0.0f ? rintf(glow[j] / m) : 0.0f;
        a = a < 0.0f ? 0.0f : (a > (float)smax ? (float)smax : a);
        b = b < (float)mlo ? (float)mlo : (b > (float)mhi ? (float)mhi : b);
        sc1[j] = (int)a;
        mn1[j] = (int)b;
    }
    /* step 4 */
    qe4_g_local(t, x, d, m, mlo, mhi, sc1, mn1, sc, mn, qa, err, use_lev);
    float row_err = qe4_g_row_error(err, G);
    *q = qa;
    /* step 5: least-squares refit of (d, m), float64 sums in column order */
    double s_uu = 0, s_uv = 0, s_vv = 0, s_yu = 0, s_yv = 0;
    for (int c = 0; c < dim; c++) {
        int j = c / t->group;
        double u = (double)sc[j] * (double)qa[c], v = (double)mn[j], y = (double)x[c];
        s_uu = s_uu + u * u;
        s_uv = s_uv + u * v;
        s_vv = s_vv + v * v;
        s_yu = s_yu + y * u;
        s_yv = s_yv + y * v;
    }
    double det = s_uu * s_vv - s_uv * s_uv;
    if (det > 0) {
        float rd = qe4_h16((float)((s_yu * s_vv - s_yv * s_uv) / det));
        float rm = qe4_h16((float)((s_yv * s_uu - s_yu * s_uv) / det));
        if (isfinite(rd) && isfinite(rm) && rd > 0.0f) {
            qe4_g_local(t, x, rd, rm, mlo, mhi, sc, mn, sc1, mn1, rq, rerr, use_lev);
            float r_err = qe4_g_row_error(rerr, G);
            if (r_err < row_err) {
                d = rd;
                m = rm;
                memcpy(sc, sc1, (size_t)G * sizeof(int));
                memcpy(mn, mn1, (size_t)G * sizeof(int));
                *q = rq;
                row_err = r_err;
            }
        }
    }
    *d_out = d;
    *m_out = m;
    return row_err;
}

/* Steps 2 to 5 of qe4.grouped.grouped_params for one row x [dim] in both sub-min modes, from
 * step 1's group (scale, low) [n_groups], and the row's bytes into row [row_bytes].
 * Compiled for every SIMD level (qe4_g_finish_row_at; the same IEEE operations at each). */
QE4_INLINE int qe4_g_finish_row_impl(const qe4_grouped *t, const float *x, const float *gscale,
                                     const float *glow, uint8_t *row, float *work, int *iwork,
                                     const int use_lev)
{
    const int G = t->n_groups, dim = t->dim;
    const size_t mode_floats = (size_t)2 * dim + (size_t)2 * G;
    float *gs = work + 2 * mode_floats;
    uint8_t *codes = (uint8_t *)(gs + G);
    int *sc[2] = {iwork, iwork + 4 * G}, *mn[2] = {iwork + G, iwork + 5 * G};
    float d[2], m[2], err[2], *q[2];

    for (int j = 0; j < G; j++) { /* a constant group has scale 0 */
        const float *xj = x + j * t->group;
        int len = qe4_g_len(t, j);
        float lo = xj[0], hi = xj[0];
        for (int c = 1; c < len; c++) {
            lo = xj[c] < lo ? xj[c] : lo;
            hi = xj[c] > hi ? xj[c] : hi;
        }
        gs[j] = hi == lo ? 0.0f : gscale[j];
    }
    for (int k = 0; k < 2; k++)
        err[k] = qe4_g_mode(t, x, gs, glow, k, &d[k], &m[k], sc[k], mn[k], &q[k],
                            work + k * mode_floats, iwork + 2 * G + k * 4 * G, use_lev);
    int k = err[1] < err[0];
    /* the row's bytes: a signed row stores -d (its sign bit) and two's complement sub-mins */
    int smax = (1 << t->sub_bits) - 1;
    if (use_lev) {
        for (int c = 0; c < dim; c++)
            codes[c] = (uint8_t)qe4_g_level_code(t, q[k][c]);
    } else {
        for (int c = 0; c < dim; c++)
            codes[c] = (uint8_t)q[k][c];
    }
    qe4_g_pack(row, t->code_bytes, codes, dim, t->bits);
    for (int j = 0; j < G; j++) {
        codes[2 * j] = (uint8_t)sc[k][j];
        codes[2 * j + 1] = (uint8_t)(mn[k][j] & smax);
    }
    qe4_g_pack(row + t->code_bytes, t->sub_bytes, codes, 2 * G, t->sub_bits);
    uint16_t hd = qe4_float_to_half(k ? -d[k] : d[k]), hm = qe4_float_to_half(m[k]);
    memcpy(row + t->code_bytes + t->sub_bytes, &hd, 2);
    memcpy(row + t->code_bytes + t->sub_bytes + 2, &hm, 2);
    return 0;
}

/* One function per table kind (uniform, or t's level table), so that the uniform one is the
 * code without tables. */
QE4_INLINE int qe4_g_finish_row(const qe4_grouped *t, const float *x, const float *gscale,
                                const float *glow, uint8_t *row, float *work, int *iwork)
{
    return qe4_g_finish_row_impl(t, x, gscale, glow, row, work, iwork, 0);
}

QE4_INLINE int qe4_g_finish_row_lev(const qe4_grouped *t, const float *x, const float *gscale,
                                    const float *glow, uint8_t *row, float *work, int *iwork)
{
    return qe4_g_finish_row_impl(t, x, gscale, glow, row, work, iwork, 1);
}

QE4_PER_LEVEL(int, qe4_g_finish_row,
              (const qe4_grouped *t, const float *x, const float *gscale, const float *glow,
               uint8_t *row, float *work, int *iwork),
              (t, x, gscale, glow, row, work, iwork));
QE4_PER_LEVEL(int, qe4_g_finish_row_lev,
              (const qe4_grouped *t, const float *x, const float *gscale, const float *glow,
               uint8_t *row, float *work, int *iwork),
              (t, x, gscale, glow, row, work, iwork));

/* qe4_g_finish_row (or _lev) at SIMD level `simd` (checked by the caller with qe4_check_simd). */
static void qe4_grouped_finish_row(const qe4_grouped *t, const float *x, const float *gscale,
                                   const float *glow, uint8_t *row, float *work, int *iwork,
                                   int simd)
{
    if (t->lev == NULL)
        qe4_g_finish_row_at[simd](t, x, gscale, glow, row, work, iwork);
    else
        qe4_g_finish_row_lev_at[simd](t, x, gscale, glow, row, work, iwork);
}

/* --------------------------------------------------------------------------- scale-only groups */

/* Rows of mins="none" (qe4.grouped.scale_params, search_scales): [codes][sc_0 .. sc_{G-1}][d],
 * the sub-scales two's complement, no min; group j reads back as fma(f32(d) * sc_j, lev[q], 0)
 * on t's signed level table (always set: "uniform" is lev[q] = q - 2**(bits - 1), t->lin).
 * qe4_grouped_scale_row runs the whole search of one row: step 1 per group (the scan's
 * QE4_GS_SCAN scales in lanes, then the QE4_GS_KEEP chains of least-squares rounds, a scale
 * at a time with the values in lanes), steps 2 to 5 (the moves of SCALE_MOVES, the same way),
 * and writes the row's bytes. */
#define QE4_GS_SCAN 32 /* qe4.grouped.SCALE_SCAN's 16 factors at each end of the table */
#define QE4_GS_KEEP 3  /* SCALE_KEEP */
#define QE4_GS_ITER 3  /* SCALE_ITER */

/* v[k] = lev[level_codes(tv[k])] for the L lanes of tv (qe4.mse.level_codes: lev[the number
 * of midpoints tv exceeds]).  lin (the uniform signed table, lev[q] = q - h, h = 2**(bits-1)):
 * by arithmetic, exactly that count: tv clipped to [-h, h] (beyond the outer midpoints either
 * way), r = rint of it (lev[the count] or the level above it, at a tie), clipped to h - 1,
 * one step down when tv does not exceed the midpoint r - 0.5 below r (never at r = -h: tv is
 * >= -h there).  Else the chain of selects.  Both are selects without branches (they
 * vectorize across the lanes). */
QE4_INLINE void qe4_gs_values(const qe4_grouped *g, const float *tv, float *v, const int L,
                              const int lin)
{
    if (lin) {
        const float h = (float)(1 << (g->bits - 1));
#pragma GCC unroll 1 /* a loop: the one vectorized */
        for (int k = 0; k < L; k++) {
            float tc = tv[k] < -h ? -h : tv[k];
            tc = tc > h ? h : tc;
            float r = (tc + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
            r = r > h - 1.0f ? h - 1.0f : r;
            int up = tc > r - 0.5f; /* this form (not a float select) GCC 12 vectorizes */
            v[k] = r - (float)(1 - up);
        }
        return;
    }
    for (int k = 0; k < L; k++)
        v[k] = g->lev[0];
    for (int i = 0; i < g->n_mid; i++) {
        float mi = g->mid[i], lv = g->lev[i + 1];
#pragma GCC unroll 1 /* a loop (not scalars): the one vectorized */
        for (int k = 0; k < L; k++)
            v[k] = tv[k] > mi ? lv : v[k];
    }
}

/* The reciprocal a scale's codes are found with: f32(1 / s), 0 when s is 0 or that is not
 * finite (qe4.grouped.scale_pass, group_codes: negative scales quantize too). */
QE4_INLINE float qe4_gs_inv(float s)
{
    float iv = 1.0f / s;
    return (s != 0.0f && isfinite(iv)) ? iv : 0.0f;
}

/* The scan's QE4_GS_SCAN scales s of one group x [len], in lanes: the float32 losses
 * err[k] = sum (x - fma(s[k], v, 0))**2 in column order, v = lev[level_codes(x * inv_k)]
 * (qe4.grouped.scale_pass without sums).  s * v is fma(s, v, 0) up to the sign of a zero,
 * which e * e drops. */
QE4_INLINE void qe4_gs_scan(const qe4_grouped *g, const float *x, int len, const float *s,
                            float *err, const int lin)
{
    const int L = QE4_GS_SCAN;
    float inv[QE4_GS_SCAN], acc[QE4_GS_SCAN];
    for (int k = 0; k < L; k++) {
        inv[k] = qe4_gs_inv(s[k]);
        acc[k] = 0.0f;
    }
    for (int c = 0; c < len; c++) {
        float xc = x[c], tv[QE4_GS_SCAN], v[QE4_GS_SCAN];
#pragma GCC unroll 1 /* a loop: the one vectorized */
        for (int k = 0; k < L; k++)
            tv[k] = xc * inv[k];
        qe4_gs_values(g, tv, v, L, lin);
#pragma GCC unroll 1 /* a loop: the one vectorized */
        for (int k = 0; k < L; k++) {
            float e = xc - s[k] * v[k];
            acc[k] = acc[k] + e * e;
        }
    }
    for (int k = 0; k < L; k++)
        err[k] = acc[k];
}

/* One scale s of one group x [len], the values 16 at a time in lanes and every sum in column
 * order: returns the float32 loss sum (x - fma(s, v, 0))**2 (each lane the same operations as
 * qe4_gs_scan's), and with the constant `sums` the float64 sums *svv = sum v * v,
 * *sxv = sum x * v (qe4.grouped.scale_pass; also group_codes and group_errors with min 0,
 * where x - 0 is x); with q (not NULL) the level values v into q [len]. */
QE4_INLINE float qe4_gs_pass1(const qe4_grouped *g, const float *x, int len, float s,
                              double *svv, double *sxv, float *q, const int sums, const int lin)
{
    const float inv = qe4_gs_inv(s);
    float err = 0.0f;
    double a2 = 0.0, ax = 0.0;
    for (int c0 = 0; c0 < len; c0 += 16) {
        int n = len - c0 < 16 ? len - c0 : 16;
        float xb[16], tv[16], v[16], e2[16];
        double p2[16], px[16];
        for (int k = 0; k < 16; k++)
            xb[k] = k < n ? x[c0 + k] : 0.0f;
        for (int k = 0; k < 16; k++)
            tv[k] = xb[k] * inv;
        qe4_gs_values(g, tv, v, 16, lin);
        for (int k = 0; k < 16; k++) {
            float e = xb[k] - s * v[k];
            e2[k] = e * e;
        }
        for (int k = 0; k < n; k++)
            err = err + e2[k];
        if (sums) {
            for (int k = 0; k < 16; k++) {
                p2[k] = (double)v[k] * (double)v[k];
                px[k] = (double)xb[k] * (double)v[k];
            }
            for (int k = 0; k < n; k++) {
                a2 = a2 + p2[k];
                ax = ax + px[k];
            }
        }
        if (q != NULL)
            memcpy(q + c0, v, (size_t)n * sizeof(float));
    }
    if (sums) {
        *svv = a2;
        *sxv = ax;
    }
    return err;
}

/* Scale-only step 1 of one group x [len] (qe4.grouped.scale_params of one row): the scan, the
 * refinement of its QE4_GS_KEEP best (ties: the earlier, as a stable sort) by QE4_GS_ITER
 * least-squares rounds (a chain ends when sum v v is 0 or the new scale 0 or not finite), and
 * the evaluated scale of least error (ties: the first evaluated, in the reference's order:
 * chain by chain, round by round). */
QE4_INLINE float qe4_gs_scale(const qe4_grouped *g, const float *x, int len, const int lin)
{
    float a = x[0], aa = fabsf(x[0]);
    for (int c = 1; c < len; c++) { /* the first value of largest magnitude */
        if (fabsf(x[c]) > aa) {
            aa = fabsf(x[c]);
            a = x[c];
        }
    }
    float s[QE4_GS_SCAN], err[QE4_GS_SCAN];
    for (int e = 0; e < 2; e++) {
        float base = a / g->lev[e ? (1 << g->bits) - 1 : 0];
        for (int k = 0; k < QE4_GS_SCAN / 2; k++)
            s[e * (QE4_GS_SCAN / 2) + k] = base * ((float)(40 - k) / 32.0f);
    }
    qe4_gs_scan(g, x, len, s, err, lin);
    int rank[QE4_GS_KEEP], n_rank = 0;
    for (int i = 0; i < QE4_GS_SCAN; i++) { /* insertion after every kept one of error <= */
        int p = n_rank;
        while (p > 0 && err[i] < err[rank[p - 1]])
            p--;
        if (p >= QE4_GS_KEEP)
            continue;
        for (int r = n_rank < QE4_GS_KEEP ? n_rank : QE4_GS_KEEP - 1; r > p; r--)
            rank[r] = rank[r - 1];
        rank[p] = i;
        n_rank += n_rank < QE4_GS_KEEP;
    }
    float best = s[rank[0]], best_err = err[rank[0]];
    for (int k = 0; k < QE4_GS_KEEP; k++) { /* the chains, in the reference's order */
        float scale = s[rank[k]];
        for (int r = 0; r <= QE4_GS_ITER; r++) {
            double svv = 0.0, sxv = 0.0;
            float e = r < QE4_GS_ITER ? qe4_gs_pass1(g, x, len, scale, &svv, &sxv, NULL, 1, lin)
                                      : qe4_gs_pass1(g, x, len, scale, NULL, NULL, NULL, 0, lin);
            if (e < best_err) {
                best = scale;
                best_err = e;
            }
            if (r == QE4_GS_ITER)
                break;
            float nw = (float)(sxv / (svv > 0 ? svv : 1.0));
            if (!(svv > 0 && isfinite(nw) && nw != 0.0f))
                break; /* refused: the chain ends */
            if (nw == scale)
                break; /* a fixed point: every later round repeats this one (no error below) */
            scale = nw;
        }
    }
    return best;
}

/* Scale-only step 4 (qe4.grouped.local_search, mins="none"): each group's best move of
 * SCALE_MOVES from sc0 under d (ties: the earlier); writes sc, the level values q [dim] and
 * the group errors err [n_groups]. */
QE4_INLINE void qe4_gs_local(const qe4_grouped *t, const float *x, float d, const int *sc0,
                             int *sc, float *q, float *err, const int lin)
{
    const int lo = -(1 << (t->sub_bits - 1)), hi = (1 << (t->sub_bits - 1)) - 1;
    for (int j = 0; j < t->n_groups; j++) {
        int len = qe4_g_len(t, j), off = j * t->group;
        int best_sc = 0;
        float best_err = 0.0f;
        for (int k = 0; k < QE4_G_N_MOVES; k++) {
            if (qe4_g_moves[k][1] != 0)
                continue; /* SCALE_MOVES: the moves of MOVES with mn unchanged, in order */
            int a = sc0[j] + qe4_g_moves[k][0];
            a = a < lo ? lo : (a > hi ? hi : a);
            if (k > 0 && a == sc0[j])
                continue; /* clipped onto move 0 (sc0 is in range): the same error, not lower */
            float e = qe4_gs_pass1(t, x + off, len, d * (float)a, NULL, NULL, NULL, 0, lin);
            if (k == 0 || e < best_err) {
                best_sc = a;
                best_err = e;
            }
        }
        sc[j] = best_sc;
        err[j] = best_err;
        qe4_gs_pass1(t, x + off, len, d * (float)best_sc, NULL, NULL, q + off, 0, lin);
    }
}

/* The whole scale-only search of one row x [dim] and its bytes into row [row_bytes]
 * (qe4.grouped.grouped_params and assemble, mins="none").  work: 3 * dim + 3 * n_groups
 * floats, iwork: 3 * n_groups ints (qe4_grouped_work_floats and finish_row's iwork cover
 * them). */
QE4_INLINE int qe4_gs_row_impl(const qe4_grouped *t, const float *x, uint8_t *row, float *work,
                               int *iwork, const int lin)
{
    const int G = t->n_groups, dim = t->dim;
    const int lo = -(1 << (t->sub_bits - 1)), hi = (1 << (t->sub_bits - 1)) - 1;
    float *q = work, *rq = work + dim, *err = work + 2 * dim, *rerr = err + G, *gs = rerr + G;
    uint8_t *codes = (uint8_t *)(gs + G);
    int *sc1 = iwork, *sc = iwork + G, *rsc = iwork + 2 * G;

    /* step 1, then step 2: d = h(max |s_j| / hi), sc_j = clip(rint(s_j / d), lo, hi) */
    float smx = 0.0f;
    for (int j = 0; j < G; j++) {
        gs[j] = qe4_gs_scale(t, x + j * t->group, qe4_g_len(t, j), lin);
        smx = fabsf(gs[j]) > smx ? fabsf(gs[j]) : smx;
    }
    float d = qe4_h16(smx / (float)hi);
    for (int j = 0; j < G; j++) {
        float a = d > 0.0f ? rintf(gs[j] / d) : 0.0f;
        a = a < (float)lo ? (float)lo : (a > (float)hi ? (float)hi : a);
        sc1[j] = (int)a;
    }
    /* step 4, step 5: the least-squares d of x ~ d * (sc_j * v), float64 sums in column order,
     * and step 4 again from it; kept only if the row's error is lower */
    qe4_gs_local(t, x, d, sc1, sc, q, err, lin);
    float row_err = qe4_g_row_error(err, G);
    double s_uu = 0, s_yu = 0;
    for (int c = 0; c < dim; c++) {
        double u = (double)sc[c / t->group] * (double)q[c];
        s_uu = s_uu + u * u;
        s_yu = s_yu + (double)x[c] * u;
    }
    if (s_uu > 0) {
        float rd = qe4_h16((float)(s_yu / s_uu));
        if (isfinite(rd) && rd > 0.0f) {
            qe4_gs_local(t, x, rd, sc, rsc, rq, rerr, lin);
            if (qe4_g_row_error(rerr, G) < row_err) {
                d = rd;
                memcpy(sc, rsc, (size_t)G * sizeof(int));
                q = rq;
            }
        }
    }
    /* the row's bytes */
    const int h = 1 << (t->bits - 1), mask = (1 << t->sub_bits) - 1;
    for (int c = 0; c < dim; c++)
        codes[c] = (uint8_t)(lin ? (int)q[c] + h : qe4_g_level_code(t, q[c]));
    qe4_g_pack(row, t->code_bytes, codes, dim, t->bits);
    for (int j = 0; j < G; j++)
        codes[j] = (uint8_t)(sc[j] & mask);
    qe4_g_pack(row + t->code_bytes, t->sub_bytes, codes, G, t->sub_bits);
    uint16_t hd = qe4_float_to_half(d);
    memcpy(row + t->code_bytes + t->sub_bytes, &hd, 2);
    return 0;
}

/* One function per table kind: the uniform signed table by arithmetic, or t's table. */
QE4_INLINE int qe4_gs_row_lin(const qe4_grouped *t, const float *x, uint8_t *row, float *work,
                              int *iwork)
{
    return qe4_gs_row_impl(t, x, row, work, iwork, 1);
}

QE4_INLINE int qe4_gs_row_lev(const qe4_grouped *t, const float *x, uint8_t *row, float *work,
                              int *iwork)
{
    return qe4_gs_row_impl(t, x, row, work, iwork, 0);
}

QE4_PER_LEVEL(int, qe4_gs_row_lin,
              (const qe4_grouped *t, const float *x, uint8_t *row, float *work, int *iwork),
              (t, x, row, work, iwork));
QE4_PER_LEVEL(int, qe4_gs_row_lev,
              (const qe4_grouped *t, const float *x, uint8_t *row, float *work, int *iwork),
              (t, x, row, work, iwork));

/* The scale-only search of row x into row at SIMD level `simd` (checked by the caller). */
static void qe4_grouped_scale_row(const qe4_grouped *t, const float *x, uint8_t *row,
                                  float *work, int *iwork, int simd)
{
    if (t->lin)
        qe4_gs_row_lin_at[simd](t, x, row, work, iwork);
    else
        qe4_gs_row_lev_at[simd](t, x, row, work, iwork);
}

/* --------------------------------------------------------------------------- lookups */

/* The `mask` bits (at most 25 of them) of the little-endian bit stream s from bit `at`: one
 * 32-bit load at byte at / 8, which reads up to 3 bytes past the field.  Lookups read fields
 * of a row's codes and of its sub stream only, and each is followed inside the row by at
 * least 4 bytes (the sub stream and d, m; d and m), so the load never leaves the row.  A
 * scale-only row's codes are followed by at least 3 (a sub stream of >= 1 byte and d), as
 * many as a field starting in the codes' last byte needs; its sub stream is read byte by
 * byte (qe4_g_params). */
QE4_INLINE uint32_t qe4_g_bits(const uint8_t *s, int64_t at, uint32_t mask)
{
    uint32_t w;
    memcpy(&w, s + (at >> 3), 4);
    return (w >> (at & 7)) & mask;
}

/* float16 bits -> float32 by the compiler's _Float16 (vcvtph2ps in F16C code): the same value
 * as qe4_half_to_float, except that a signaling NaN comes back quieted, which no caller can
 * see (the lookups only multiply d and m, and a product quiets the NaN anyway). */
QE4_INLINE float qe4_g_half_native(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

/* The row's |d| and m, and whether its sub-mins are signed (the sign bit of d); f16c (a
 * constant): converted by qe4_g_half_native (callers compiled for F16C), else portably. */
QE4_INLINE int qe4_g_super(const qe4_grouped *t, const uint8_t *row, float *d, float *m,
                           const int f16c)
{
    const uint8_t *tail = row + t->code_bytes + t->sub_bytes;
    uint16_t hd, hm;
    if (t->mins == QE4_G_MINS_NONE) { /* scale-only: d as stored (2 bytes), m = 0, not signed */
        memcpy(&hd, tail, 2);
        *d = f16c ? qe4_g_half_native(hd) : qe4_half_to_float(hd);
        *m = 0.0f;
        return 0;
    }
    memcpy(&hd, tail, 2);
    memcpy(&hm, tail + 2, 2);
    *d = f16c ? qe4_g_half_native((uint16_t)(hd & 0x7fffu)) : qe4_half_to_float((uint16_t)(hd & 0x7fffu));
    *m = f16c ? qe4_g_half_native(hm) : qe4_half_to_float(hm);
    return hd >> 15;
}

typedef uint32_t qe4_g_v8u __attribute__((vector_size(32)));
typedef int32_t qe4_g_v8i __attribute__((vector_size(32)));
typedef float qe4_g_v8f __attribute__((vector_size(32)));

/* The bag terms of groups [j0, j0 + n) of a stored row under its super-parameters
 * (qe4_g_super: |d|, m and the sub-min mode), interleaved: st[2k] = w * scale_{j0+k},
 * st[2k+1] = w * min_{j0+k} (weighted), else scale and min themselves, where
 * scale_j = |d| * sc_j and min_j = m * mn_j.  The one function that reads a row's sub stream:
 * every lookup (portable and AVX2, rows and bags) calls it.
 *
 * Group j's fields sc_j, mn_j are adjacent: fields 2j, 2j + 1 of the stream.  Four groups
 * (8 fields, 8 * sub_bits bits from bit 2 * j * sub_bits, a byte boundary when j % 4 == 0)
 * at a time, in GCC vector types (one AVX2 register in AVX2 callers): the 8 or 4 bytes from
 * there (an 8-byte load when the row has 8 left: the fields, the rest of the stream, d, m;
 * else 4 suffice), field i of them in lane i, a signed row's mn_j two's complement
 * ((mn ^ half) - half sign-extends it).  The same float32 products as one group at a time. */
QE4_INLINE void qe4_g_params(const qe4_grouped *t, const uint8_t *row, int j0, int n, float d,
                             float m, int signed_mins, int weighted, float w, float *st)
{
    const uint8_t *subs = row + t->code_bytes;
    const int b = t->sub_bits;
    if (t->mins == QE4_G_MINS_NONE) {
        /* scale-only rows: field j is sc_j (two's complement), min_j = +0; one group at a time
         * from its one or two bytes (the stream is followed by d alone: 2 bytes, too few for
         * the wide loads below) */
        const int sbit = 1 << (b - 1);
        const uint32_t sh[8] = {0, 0, b, b, 2 * b, 2 * b, 3 * b, 3 * b};
        int k = 0;
        /* four groups at a time from a 64-bit load (4 * b + 7 <= 39 bits) while 8 bytes are
         * left in the row from there (the stream and d); the same float32 products */
        for (; k + 4 <= n; k += 4) {
            int64_t at = ((int64_t)j0 + k) * b;
            if ((at >> 3) + 8 > t->sub_bytes + 2)
                break;
            uint64_t u;
            memcpy(&u, subs + (at >> 3), 8);
            uint32_t lo = (uint32_t)(u >> (at & 7));
            qe4_g_v8u f = ((qe4_g_v8u){lo, lo, lo, lo, lo, lo, lo, lo} >>
                           (qe4_g_v8u){sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], sh[6], sh[7]}) &
                          (qe4_g_v8u){(1u << b) - 1u, 0, (1u << b) - 1u, 0, (1u << b) - 1u, 0,
                                      (1u << b) - 1u, 0};
            const qe4_g_v8u hv = {(uint32_t)sbit, 0, (uint32_t)sbit, 0, (uint32_t)sbit, 0,
                                  (uint32_t)sbit, 0};
            qe4_g_v8i v = (qe4_g_v8i)(f ^ hv) - (qe4_g_v8i)hv;   /* odd lanes: 0 */
            const qe4_g_v8f dz = {d, 0.0f, d, 0.0f, d, 0.0f, d, 0.0f};
            qe4_g_v8f r = __builtin_convertvector(v, qe4_g_v8f) * dz; /* odd lanes: +0 */
            if (weighted)
                r = w * r;
            memcpy(st + 2 * k, &r, 32);
        }
        for (; k < n; k++) {
            int64_t at = ((int64_t)j0 + k) * b;
            uint32_t u = subs[at >> 3];
            if ((at & 7) + b > 8)
                u |= (uint32_t)subs[(at >> 3) + 1] << 8;
            int sc = (int)((u >> (at & 7)) & ((1u << b) - 1u));
            float scale = d * (float)(sc >= sbit ? sc - 2 * sbit : sc);
            st[2 * k] = weighted ? w * scale : scale;
            st[2 * k + 1] = weighted ? w * 0.0f : 0.0f;
        }
        return;
    }
    const uint32_t half = signed_mins ? 1u << (b - 1) : 0u;
    const qe4_g_v8u sh = {0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b};
    const qe4_g_v8u mask = (qe4_g_v8u){0, 0, 0, 0, 0, 0, 0, 0} + ((1u << b) - 1u);
    const qe4_g_v8u hv = {0, half, 0, half, 0, half, 0, half};
    const qe4_g_v8f dm = {d, m, d, m, d, m, d, m};
    for (int k = 0; k < n; k += 4, j0 += 4, st += 8) {
        /* j0 % 4 == 0 after the first step; the first may start inside a byte */
        int64_t at = 2 * (int64_t)j0 * b;
        int64_t byte = at >> 3;
        uint64_t u = 0;
        if (t->sub_bytes + 4 - byte >= 8) {
            memcpy(&u, subs + byte, 8);
        } else {
            uint32_t u4;
            memcpy(&u4, subs + byte, 4);
            u = u4;
        }
        u >>= at & 7;
        uint32_t lo = (uint32_t)u, hi = (uint32_t)(u >> (4 * b));
        qe4_g_v8u f = ((qe4_g_v8u){lo, lo, lo, lo, hi, hi, hi, hi} >> sh) & mask;
        qe4_g_v8i v = (qe4_g_v8i)(f ^ hv) - (qe4_g_v8i)hv;
        qe4_g_v8f r = __builtin_convertvector(v, qe4_g_v8f) * dm;
        if (weighted)
            r = w * r;
        int left = n - k;
        if (left >= 4) {
            memcpy(st, &r, 32);
        } else if (left == 2) {
            memcpy(st, &r, 16);
        } else if (left == 1) {
            memcpy(st, &r, 8);
        } else {
            memcpy(st, &r, 16);
            st[4] = r[4];
            st[5] = r[5];
        }
    }
}

/* Group j's bag terms: s = w * scale_j, t = w * min_j (weighted), else scale_j, min_j. */
QE4_INLINE void qe4_g_terms(const qe4_grouped *t, const uint8_t *row, int j, float d, float m,
                            int sgn, int weighted, float w, float *s, float *tt)
{
    float st[2];
    qe4_g_params(t, row, j, 1, d, m, sgn, weighted, w, st);
    *s = st[0];
    *tt = st[1];
}

/* Every cache line of row r (a grouped row is often a few lines: 144 bytes at dim 256). */
QE4_INLINE void qe4_g_prefetch(const qe4_grouped *t, int64_t r)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    __builtin_prefetch(row, 0, 3);
    for (int64_t o = 64; o < t->row_bytes - 1; o += 64)
        __builtin_prefetch(row + o, 0, 3);
    __builtin_prefetch(row + t->row_bytes - 1, 0, 3);
}

/* acc[c] = fma(s, v_c, acc[c] + t) over the codes [c0, c0 + len) of a row, v the code or its
 * level value lev[q] (by the constant use_lev): portable (also the AVX2 paths' tails). */
QE4_INLINE void qe4_g_axpy_portable(const qe4_grouped *t, const uint8_t *codes, int c0, int len,
                                    float s, float tt, float *acc, const int use_lev)
{
    const int bits = t->bits;
    const uint32_t mask = (1u << bits) - 1u;
    int64_t at = (int64_t)c0 * bits;
    for (int c = 0; c < len; c++, at += bits) {
        uint32_t q = qe4_g_bits(codes, at, mask);
        acc[c] = fmaf(s, use_lev ? t->lev[q] : (float)q, acc[c] + tt);
    }
}

/* acc [dim] += row r weighted by w: portable C (uniform, or the level values by use_lev). */
QE4_INLINE void qe4_g_add_row_portable_impl(const qe4_grouped *t, int64_t r, int weighted,
                                            float w, float *acc, const int use_lev)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    float d, m;
    int sgn = qe4_g_super(t, row, &d, &m, 0);
    for (int j = 0; j < t->n_groups; j++) {
        float s, tt;
        qe4_g_terms(t, row, j, d, m, sgn, weighted, w, &s, &tt);
        qe4_g_axpy_portable(t, row, j * t->group, qe4_g_len(t, j), s, tt, acc + j * t->group,
                            use_lev);
    }
}

static void qe4_g_add_row_portable(const qe4_grouped *t, int64_t r, int weighted, float w,
                                   float *acc)
{
    qe4_g_add_row_portable_impl(t, r, weighted, w, acc, 0);
}

static void qe4_g_add_row_portable_lev(const qe4_grouped *t, int64_t r, int weighted, float w,
                                       float *acc)
{
    qe4_g_add_row_portable_impl(t, r, weighted, w, acc, 1);
}

#if QE4_X86
/* The level values of 8 codes of at most 4 bits in the lanes of q (the lanes' bits 0-2 pick
 * from lo = lev[0..7], and at 4 bits bit 3 from hi = lev[8..15]; higher bits must be 0). */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_lev_avx2(__m256i q, __m256 lo, __m256 hi, const int bits)
{
    __m256 a = _mm256_permutevar8x32_ps(lo, q);
    if (bits < 4)
        return a;
    __m256 b = _mm256_permutevar8x32_ps(hi, q);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
}

/* The values of 8 codes q (< 2**bits, one a lane): q itself, or their level values (in
 * registers lo, hi up to 4 bits, else a gather from lev). */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_value_avx2(__m256i q, const float *lev, __m256 lo,
                                                   __m256 hi, const int bits, const int use_lev)
{
    if (!use_lev)
        return _mm256_cvtepi32_ps(q);
    if (bits <= 4)
        return qe4_g_lev_avx2(q, lo, hi, bits);
    return _mm256_i32gather_ps(lev, q, 4);
}

/* The 8 codes of columns [c, c + 8) of a row (c * bits a multiple of 8, so they are the
 * `bits` bytes from c * bits / 8), one a lane.  Loads of 4 bytes (bits <= 4) or 8 (5 to 8)
 * read at most 5 bytes past them, and at least 5 follow the codes in the row (the sub
 * stream, d and m), except at 2 bits, where a 4-byte load reads 2 past them. */
QE4_INLINE QE4_TARGET_AVX2 __m256i qe4_g_codes8_avx2(const uint8_t *codes, int c, const int bits)
{
    const uint8_t *p = codes + ((int64_t)c * bits >> 3);
    if (bits == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    if (bits <= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        const __m256i sh = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits,
                                             6 * bits, 7 * bits);
        return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), sh), mask);
    }
    uint64_t u;
    memcpy(&u, p, 8);
    __m256i v = _mm256_setr_epi32((int)(uint32_t)u, (int)(uint32_t)u, (int)(uint32_t)u,
                                  (int)(uint32_t)u, (int)(uint32_t)(u >> (4 * bits)),
                                  (int)(uint32_t)(u >> (4 * bits)), (int)(uint32_t)(u >> (4 * bits)),
                                  (int)(uint32_t)(u >> (4 * bits)));
    const __m256i sh = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 0, bits, 2 * bits, 3 * bits);
    return _mm256_and_si256(_mm256_srlv_epi32(v, sh), mask);
}

/* acc[c] = fma(s, v_c, acc[c] + t) over the codes [c0, c0 + len) of a row at AVX2: 8 columns
 * at a time while c0 * bits is a multiple of 8, the rest by the portable loop (compiled with
 * FMA here: the same fmaf). */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_axpy_avx2(const qe4_grouped *t, const uint8_t *codes,
                                                int c0, int len, float s, float tt, float *acc,
                                                const int bits, const int use_lev)
{
    __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(tt);
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    if (use_lev && bits <= 4) {
        lo = _mm256_loadu_ps(t->lev16);
        hi = _mm256_loadu_ps(t->lev16 + 8);
    }
    int c = 0;
    if (((int64_t)c0 * bits & 7) == 0) {
        for (; c + 8 <= len; c += 8) {
            __m256 fv = qe4_g_value_avx2(qe4_g_codes8_avx2(codes, c0 + c, bits), t->lev, lo, hi,
                                         bits, use_lev);
            __m256 a = _mm256_add_ps(_mm256_loadu_ps(acc + c), vt);
            _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(vs, fv, a));
        }
    }
    qe4_g_axpy_portable(t, codes, c0 + c, len - c, s, tt, acc + c, use_lev);
}

/* acc [dim] += row r weighted by w, at AVX2 (codes of a constant width `bits`). */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_add_row_avx2_impl(const qe4_grouped *t, int64_t r,
                                                        int weighted, float w, float *acc,
                                                        const int bits, const int use_lev)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    float d, m;
    int sgn = qe4_g_super(t, row, &d, &m, 1);
    for (int j = 0; j < t->n_groups; j++) {
        float s, tt;
        int c0 = j * t->group;
        qe4_g_terms(t, row, j, d, m, sgn, weighted, w, &s, &tt);
        qe4_g_axpy_avx2(t, row, c0, qe4_g_len(t, j), s, tt, acc + c0, bits, use_lev);
    }
}

/* One instance per code width (a constant in the loops) and level kind. */
#define QE4_G_BY_BITS(CALL_OF_BITS)                                                          \
    switch (t->bits) {                                                                       \
    case 2: CALL_OF_BITS(2); break;                                                          \
    case 3: CALL_OF_BITS(3); break;                                                          \
    case 4: CALL_OF_BITS(4); break;                                                          \
    case 5: CALL_OF_BITS(5); break;                                                          \
    case 6: CALL_OF_BITS(6); break;                                                          \
    default: CALL_OF_BITS(8); break;                                                         \
    }

QE4_TARGET_AVX2 static void qe4_g_add_row_avx2(const qe4_grouped *t, int64_t r, int weighted,
                                               float w, float *acc)
{
#define QE4_G_CALL(B) qe4_g_add_row_avx2_impl(t, r, weighted, w, acc, B, 0)
    QE4_G_BY_BITS(QE4_G_CALL)
#undef QE4_G_CALL
}

QE4_TARGET_AVX2 static void qe4_g_add_row_avx2_lev(const qe4_grouped *t, int64_t r, int weighted,
                                                   float w, float *acc)
{
#define QE4_G_CALL(B) qe4_g_add_row_avx2_impl(t, r, weighted, w, acc, B, 1)
    QE4_G_BY_BITS(QE4_G_CALL)
#undef QE4_G_CALL
}
#endif

typedef void (*qe4_g_add_row_fn)(const qe4_grouped *t, int64_t r, int weighted, float w,
                                 float *acc);

/* The row adder of SIMD level `simd` for t's levels (AVX-512 CPUs use the AVX2 one). */
static qe4_g_add_row_fn qe4_g_add_row_at(const qe4_grouped *t, int simd)
{
#if QE4_X86
    if (simd >= QE4_SIMD_AVX2)
        return t->lev != NULL ? qe4_g_add_row_avx2_lev : qe4_g_add_row_avx2;
#endif
    (void)simd;
    return t->lev != NULL ? qe4_g_add_row_portable_lev : qe4_g_add_row_portable;
}

/* Dequantized row r into out [dim]: fma(scale_j, v, min_j) (the bag of one row, weight 1). */
static void qe4_grouped_row_values(const qe4_grouped *t, int64_t r, int simd, float *out)
{
    memset(out, 0, (size_t)t->dim * sizeof(float));
    qe4_g_add_row_at(t, simd)(t, r, 0, 1.0f, out);
}

#if QE4_X86
/* A chunk of a bag at AVX2: up to QE4_G_CHUNK positions, each with its row and the
 * (weighted) bag terms of a run of groups [j0, j0 + ng), ng <= QE4_G_TERMS / QE4_G_CHUNK:
 * position k's group j0 + g at st[2 * (k * ng + g)] (s) and the next float (t). */
#define QE4_G_CHUNK 64
#define QE4_G_TERMS 2048
typedef struct {
    const uint8_t *row[QE4_G_CHUNK];
    float st[2 * QE4_G_TERMS];
} qe4_g_chunk;

/* The rows and terms of positions [p0, p0 + n) for groups [j0, j0 + ng), prefetching every
 * line of the rows QE4_PREFETCH positions ahead (with `prefetch`: in the first run). */
QE4_INLINE void qe4_g_chunk_terms(const qe4_grouped *t, const int64_t *idx, int64_t n_idx,
                                  const float *w, int64_t p0, int n, int j0, int ng,
                                  int prefetch, qe4_g_chunk *ch)
{
    for (int k = 0; k < n; k++) {
        int64_t p = p0 + k;
        if (prefetch && p + QE4_PREFETCH < n_idx)
            qe4_g_prefetch(t, idx[p + QE4_PREFETCH]);
        const uint8_t *row = t->data + idx[p] * t->row_bytes;
        float d, m;
        int sgn = qe4_g_super(t, row, &d, &m, 1);
        ch->row[k] = row;
        qe4_g_params(t, row, j0, ng, d, m, sgn, w != NULL, w != NULL ? w[p] : 1.0f,
                     ch->st + 2 * k * ng);
    }
}

/* One position's step of a column vector in group g of its terms st (qe4_g_params'
 * pairs): fma(s, fv, acc + t). */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_step_avx2(__m256 acc, const float *st, int g, __m256 fv)
{
    __m256 a = _mm256_add_ps(acc, _mm256_broadcast_ss(st + 2 * g + 1));
    return _mm256_fmadd_ps(_mm256_broadcast_ss(st + 2 * g), fv, a);
}

/* The positions of a bag read straight by the fused one-block bag (dim 64: every group's
 * terms fit in registers' reach, no chunk table): idx, n_idx, w and the first position. */
typedef struct {
    const int64_t *idx;
    int64_t n_idx, p0;
    const float *w;
} qe4_g_pos;

/* Position p0 + k of f: prefetches QE4_PREFETCH positions ahead, writes the row's terms of
 * all its groups (at most 8) into st and returns the row. */
QE4_INLINE const uint8_t *qe4_g_pos_terms(const qe4_grouped *t, const qe4_g_pos *f, int k,
                                          float *st)
{
    int64_t p = f->p0 + k;
    if (p + QE4_PREFETCH < f->n_idx)
        qe4_g_prefetch(t, f->idx[p + QE4_PREFETCH]);
    const uint8_t *row = t->data + f->idx[p] * t->row_bytes;
    float d, m;
    int sgn = qe4_g_super(t, row, &d, &m, 1);
    qe4_g_params(t, row, 0, t->n_groups, d, m, sgn, f->w != NULL, f->w != NULL ? f->w[p] : 1.0f,
                 st);
    return row;
}

/* Columns [c0, c0 + 64) (inside the chunk's run of groups, group % 8 == 0) of the chunk's n
 * positions added to out in position order, the 8 accumulators in registers: per element
 * the operations of the row-at-a-time loop.  At 4 bits the 32 code bytes are unpacked at once
 * (the fused rowwise bag's way); at nl levels the nibbles + 0x78 make each byte's bits 0-2
 * the code's and its sign bit the code's bit 3, the lanes qe4_g_lev_avx2 reads. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_block64_avx2(const qe4_grouped *t, const qe4_g_chunk *ch,
                                                   int n, int j0, int ng, int c0, float *out,
                                                   const int bits, const int use_lev,
                                                   const int vpg, const qe4_g_pos *fused)
{
    __m256 acc[8], lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int gv[8]; /* vector v's group in the run */
    if (use_lev && bits <= 4) {
        lo = _mm256_loadu_ps(t->lev16);
        hi = _mm256_loadu_ps(t->lev16 + 8);
    }
#pragma GCC unroll 8
    for (int v = 0; v < 8; v++) {
        acc[v] = _mm256_loadu_ps(out + c0 + 8 * v);
        /* vpg (a constant, or 0): the vectors per group, 8 for a multiple of 64 (the block
         * inside one group), so that the terms' offsets are constants */
        gv[v] = vpg ? (c0 - j0 * t->group) / t->group + v / vpg : (c0 + 8 * v) / t->group - j0;
    }
    float own[2 * 8 + 8]; /* fused: the position's terms */
    for (int k = 0; k < n; k++) {
        const float *st = ch != NULL ? ch->st + 2 * k * ng : own;
        const uint8_t *row = ch != NULL ? ch->row[k] : qe4_g_pos_terms(t, fused, k, own);
        if (bits == 4) {
            const __m256i m4 = _mm256_set1_epi8(0x0f), bias = _mm256_set1_epi8(0x78);
            __m256i b = _mm256_loadu_si256((const __m256i *)(row + c0 / 2));
            __m256i l4 = _mm256_and_si256(b, m4), h4 = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
            __m256i u1 = _mm256_unpacklo_epi8(l4, h4), u2 = _mm256_unpackhi_epi8(l4, h4);
            if (use_lev) {
                u1 = _mm256_add_epi8(u1, bias);
                u2 = _mm256_add_epi8(u2, bias);
            }
            /* codes [0,16) [16,32) [32,48) [48,64) */
            __m128i q[4] = {_mm256_castsi256_si128(u1), _mm256_castsi256_si128(u2),
                            _mm256_extracti128_si256(u1, 1), _mm256_extracti128_si256(u2, 1)};
#pragma GCC unroll 8
            for (int v = 0; v < 8; v++) {
                __m128i qv = (v & 1) ? _mm_srli_si128(q[v >> 1], 8) : q[v >> 1];
                __m256 fv;
                if (use_lev) {
                    __m256i ix = _mm256_cvtepi8_epi32(qv);
                    fv = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, ix),
                                          _mm256_permutevar8x32_ps(hi, ix),
                                          _mm256_castsi256_ps(ix));
                } else {
                    fv = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(qv));
                }
                acc[v] = qe4_g_step_avx2(acc[v], st, gv[v], fv);
            }
        } else {
#pragma GCC unroll 8
            for (int v = 0; v < 8; v++) {
                __m256 fv = qe4_g_value_avx2(qe4_g_codes8_avx2(row, c0 + 8 * v, bits), t->lev,
                                             lo, hi, bits, use_lev);
                acc[v] = qe4_g_step_avx2(acc[v], st, gv[v], fv);
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < 8; v++)
        _mm256_storeu_ps(out + c0 + 8 * v, acc[v]);
}

/* The same for columns [c0, c0 + 8 * nv), nv < 8 (a run's last columns): one vector at a
 * time, its accumulator in a register. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_block_avx2(const qe4_grouped *t, const qe4_g_chunk *ch,
                                                 int n, int j0, int ng, int c0, int nv,
                                                 float *out, const int bits, const int use_lev)
{
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    if (use_lev && bits <= 4) {
        lo = _mm256_loadu_ps(t->lev16);
        hi = _mm256_loadu_ps(t->lev16 + 8);
    }
    for (int v = 0; v < nv; v++) {
        int c = c0 + 8 * v, g = c / t->group - j0;
        __m256 acc = _mm256_loadu_ps(out + c);
        for (int k = 0; k < n; k++) {
            __m256 fv = qe4_g_value_avx2(qe4_g_codes8_avx2(ch->row[k], c, bits), t->lev, lo, hi,
                                         bits, use_lev);
            acc = qe4_g_step_avx2(acc, ch->st + 2 * k * ng, g, fv);
        }
        _mm256_storeu_ps(out + c, acc);
    }
}

/* qe4_g_block64_avx2 with the constant vectors-per-group of t's group (0: other groups). */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_block64_by_vpg(const qe4_grouped *t, const qe4_g_chunk *ch,
                                                     int n, int j0, int ng, int c0, float *out,
                                                     const int bits, const int use_lev,
                                                     const qe4_g_pos *fused)
{
    if (t->group % 64 == 0)
        qe4_g_block64_avx2(t, ch, n, j0, ng, c0, out, bits, use_lev, 8, fused);
    else if (t->group == 32)
        qe4_g_block64_avx2(t, ch, n, j0, ng, c0, out, bits, use_lev, 4, fused);
    else if (t->group == 16)
        qe4_g_block64_avx2(t, ch, n, j0, ng, c0, out, bits, use_lev, 2, fused);
    else if (t->group == 8)
        qe4_g_block64_avx2(t, ch, n, j0, ng, c0, out, bits, use_lev, 1, fused);
    else
        qe4_g_block64_avx2(t, ch, n, j0, ng, c0, out, bits, use_lev, 0, fused);
}

/* A bag at AVX2, QE4_G_CHUNK positions at a time: each run of groups' terms once per
 * position, then its columns block by block (64 columns in registers) when group % 8 == 0,
 * the ragged rest (and every column of other groups) position by position. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_bag_avx2_impl(const qe4_grouped *t, const int64_t *idx,
                                                    int64_t n_idx, const float *w, int64_t start,
                                                    int64_t end, float *out, const int bits,
                                                    const int use_lev)
{
    qe4_g_chunk ch;
    const int G = t->n_groups, run = QE4_G_TERMS / QE4_G_CHUNK;
    const int vec = t->group % 8 == 0;
    memset(out, 0, (size_t)t->dim * sizeof(float));
    if (vec && t->dim == 64) { /* one block: every position straight into the registers */
        for (int64_t p0 = start; p0 < end; p0 += 1 << 20) {
            qe4_g_pos f = {idx, n_idx, p0, w};
            int n = end - p0 < (1 << 20) ? (int)(end - p0) : 1 << 20;
            qe4_g_block64_by_vpg(t, NULL, n, 0, G, 0, out, bits, use_lev, &f);
        }
        return;
    }
    for (int64_t p0 = start; p0 < end; p0 += QE4_G_CHUNK) {
        int n = end - p0 < QE4_G_CHUNK ? (int)(end - p0) : QE4_G_CHUNK;
        for (int j0 = 0; j0 < G; j0 += run) {
            int ng = G - j0 < run ? G - j0 : run;
            qe4_g_chunk_terms(t, idx, n_idx, w, p0, n, j0, ng, j0 == 0, &ch);
            int c0 = j0 * t->group, c1 = j0 + ng < G ? (j0 + ng) * t->group : t->dim;
            int cv = c0 + (vec ? (c1 - c0) / 8 * 8 : 0); /* the vector columns end */
            int c = c0;
            for (; c + 64 <= cv; c += 64)
                qe4_g_block64_by_vpg(t, &ch, n, j0, ng, c, out, bits, use_lev, NULL);
            if (c < cv)
                qe4_g_block_avx2(t, &ch, n, j0, ng, c, (cv - c) / 8, out, bits, use_lev);
            if (cv == c1)
                continue;
            for (int k = 0; k < n; k++) { /* the columns [cv, c1), group by group */
                for (int j = cv / t->group; j < j0 + ng; j++) {
                    int a = j * t->group > cv ? j * t->group : cv;
                    int b = j + 1 < G ? (j + 1) * t->group : t->dim;
                    const float *st = ch.st + 2 * (k * ng + j - j0);
                    qe4_g_axpy_portable(t, ch.row[k], a, b - a, st[0], st[1], out + a, use_lev);
                }
            }
        }
    }
}

QE4_TARGET_AVX2 static void qe4_g_bag_avx2(const qe4_grouped *t, const int64_t *idx,
                                           int64_t n_idx, const float *w, int64_t start,
                                           int64_t end, float *out)
{
#define QE4_G_CALL(B) qe4_g_bag_avx2_impl(t, idx, n_idx, w, start, end, out, B, 0)
    QE4_G_BY_BITS(QE4_G_CALL)
#undef QE4_G_CALL
}

QE4_TARGET_AVX2 static void qe4_g_bag_avx2_lev(const qe4_grouped *t, const int64_t *idx,
                                               int64_t n_idx, const float *w, int64_t start,
                                               int64_t end, float *out)
{
#define QE4_G_CALL(B) qe4_g_bag_avx2_impl(t, idx, n_idx, w, start, end, out, B, 1)
    QE4_G_BY_BITS(QE4_G_CALL)
#undef QE4_G_CALL
}
#endif

/* A bag of positions [start, end), portable, position by position (uniform or levels). */
QE4_INLINE void qe4_g_bag_portable(const qe4_grouped *t, const int64_t *idx, int64_t n_idx,
                                   const float *w, int64_t start, int64_t end, float *out,
                                   const int use_lev)
{
    memset(out, 0, (size_t)t->dim * sizeof(float));
    for (int64_t p = start; p < end; p++) {
        if (p + QE4_PREFETCH < n_idx)
            qe4_g_prefetch(t, idx[p + QE4_PREFETCH]);
        if (use_lev)
            qe4_g_add_row_portable_lev(t, idx[p], w != NULL, w != NULL ? w[p] : 1.0f, out);
        else
            qe4_g_add_row_portable(t, idx[p], w != NULL, w != NULL ? w[p] : 1.0f, out);
    }
}

/* The bag of positions [start, end) of idx [n_idx] (validated) into out [dim]; w NULL or
 * [n_idx].  Rows are prefetched QE4_PREFETCH positions ahead, across bags. */
static void qe4_grouped_bag(const qe4_grouped *t, const int64_t *idx, int64_t n_idx, const float *w,
                            int64_t start, int64_t end, int mean, int simd, float *out)
{
#if QE4_X86
    if (simd >= QE4_SIMD_AVX2) {
        if (t->lev != NULL)
            qe4_g_bag_avx2_lev(t, idx, n_idx, w, start, end, out);
        else
            qe4_g_bag_avx2(t, idx, n_idx, w, start, end, out);
    } else
#endif
    {
        if (t->lev != NULL)
            qe4_g_bag_portable(t, idx, n_idx, w, start, end, out, 1);
        else
            qe4_g_bag_portable(t, idx, n_idx, w, start, end, out, 0);
    }
    if (mean && end > start) {
        float inv = 1.0f / (float)(end - start);
        for (int c = 0; c < t->dim; c++)
            out[c] = out[c] * inv;
    }
}

#endif
