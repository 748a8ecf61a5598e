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
 *   weights), a portable path and an AVX2 path (4- and 8-bit codes in groups of a multiple
 *   of 8) with the same IEEE operations per element.
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

static const int qe4_g_moves[9][2] = {{0, 0}, {-1, 0}, {1, 0}, {0, -1}, {0, 1},
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
            int mv = k < 9 ? k : 0;
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
        for (int k = 1; k < 9; k++)
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

static const int qe4_gs_moves[3] = {0, -1, 1};

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
        for (int k = 0; k < 3; k++) {
            int a = sc0[j] + qe4_gs_moves[k];
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

/* Group j's (scale, min) of a stored row (scale-only rows: d * sc_j, sc_j sign-extended,
 * and min +0). */
QE4_INLINE void qe4_g_params(const qe4_grouped *t, const uint8_t *row, int j, float d, float m,
                             int signed_mins, float *scale, float *low)
{
    const uint8_t *subs = row + t->code_bytes;
    if (t->mins == QE4_G_MINS_NONE) {
        int sc = (int)qe4_unpack_code(subs, t->sub_bits, j);
        if (sc >= (1 << (t->sub_bits - 1)))
            sc -= 1 << t->sub_bits;
        *scale = d * (float)sc;
        *low = 0.0f;
        return;
    }
    int mn = (int)qe4_unpack_code(subs, t->sub_bits, 2 * (int64_t)j + 1);
    if (signed_mins && mn >= (1 << (t->sub_bits - 1)))
        mn -= 1 << t->sub_bits;
    *scale = d * (float)qe4_unpack_code(subs, t->sub_bits, 2 * (int64_t)j);
    *low = m * (float)mn;
}

/* The row's |d| and m, and whether its sub-mins are signed (the sign bit of d); scale-only
 * rows: d as stored, m = 0, not signed. */
QE4_INLINE int qe4_g_super(const qe4_grouped *t, const uint8_t *row, float *d, float *m)
{
    const uint8_t *tail = row + t->code_bytes + t->sub_bytes;
    if (t->mins == QE4_G_MINS_NONE) {
        *d = qe4_load_f16(tail);
        *m = 0.0f;
        return 0;
    }
    uint16_t hd;
    memcpy(&hd, tail, 2);
    *d = qe4_half_to_float((uint16_t)(hd & 0x7fffu));
    *m = qe4_load_f16(tail + 2);
    return hd >> 15;
}

/* acc[c] = fma(s, q_c, acc[c] + t) over the codes [c0, c0 + len) of a row: portable. */
QE4_INLINE void qe4_g_axpy_portable(const uint8_t *codes, int bits, int c0, int len, float s,
                                    float tt, float *acc)
{
    for (int c = 0; c < len; c++)
        acc[c] = fmaf(s, (float)qe4_unpack_code(codes, bits, (int64_t)c0 + c), acc[c] + tt);
}

/* The same with the level values: acc[c] = fma(s, lev[q_c], acc[c] + t). */
QE4_INLINE void qe4_g_axpy_portable_lev(const uint8_t *codes, int bits, const float *lev, int c0,
                                        int len, float s, float tt, float *acc)
{
    for (int c = 0; c < len; c++)
        acc[c] = fmaf(s, lev[qe4_unpack_code(codes, bits, (int64_t)c0 + c)], acc[c] + tt);
}

/* One of the two, by the constant use_lev. */
QE4_INLINE void qe4_g_axpy_any(const qe4_grouped *t, const uint8_t *codes, int c0, int len,
                               float s, float tt, float *acc, const int use_lev)
{
    if (use_lev)
        qe4_g_axpy_portable_lev(codes, t->bits, t->lev, c0, len, s, tt, acc);
    else
        qe4_g_axpy_portable(codes, t->bits, c0, len, s, tt, acc);
}

/* Group j's bag terms: s = w * scale_j, t = w * min_j (weighted), else scale_j, min_j. */
QE4_INLINE void qe4_g_terms(const qe4_grouped *t, const uint8_t *row, int j, float d, float m,
                            int sgn, int weighted, float w, float *s, float *tt)
{
    qe4_g_params(t, row, j, d, m, sgn, s, tt);
    if (weighted) {
        *s = w * *s;
        *tt = w * *tt;
    }
}

/* acc [dim] += row r weighted by w: portable C (uniform, or the level values by use_lev). */
QE4_INLINE void qe4_g_add_row_portable_impl(const qe4_grouped *t, int64_t r, int weighted,
                                            float w, float *acc, const int use_lev)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    float d, m;
    int sgn = qe4_g_super(t, row, &d, &m);
    for (int j = 0; j < t->n_groups; j++) {
        float s, tt;
        qe4_g_terms(t, row, j, d, m, sgn, weighted, w, &s, &tt);
        qe4_g_axpy_any(t, row, j * t->group, qe4_g_len(t, j), s, tt, acc + j * t->group, use_lev);
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
/* The level values of 8 4-bit codes in the low 4 bits of each lane of `raw` (the higher bits
 * are ignored) from a 16-value table in two registers (lo: lev[0..7], hi: lev[8..15]): a
 * lookup in each (bits 0-2) and a blend on bit 3 (moved to the sign bit blendv reads). */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_lev16_avx2(__m256i raw, __m256 lo, __m256 hi)
{
    __m256 a = _mm256_permutevar8x32_ps(lo, raw), b = _mm256_permutevar8x32_ps(hi, raw);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(raw, 28)));
}

/* The values of 8 4-bit codes (low 4 bits of each lane of raw): q itself (uniform), or the
 * level values in registers lo, hi. */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_vals4_avx2(__m256i raw, __m256 lo, __m256 hi,
                                                   const int use_lev)
{
    if (use_lev)
        return qe4_g_lev16_avx2(raw, lo, hi);
    return _mm256_cvtepi32_ps(_mm256_and_si256(raw, _mm256_set1_epi32(15)));
}

/* The values of 8 8-bit codes q: q itself, or the level values (a gather from lev). */
QE4_INLINE QE4_TARGET_AVX2 __m256 qe4_g_vals8_avx2(__m256i q, const float *lev, const int use_lev)
{
    return use_lev ? _mm256_i32gather_ps(lev, q, 4) : _mm256_cvtepi32_ps(q);
}

/* qe4_g_axpy_any for 4- or 8-bit codes, len % 8 == 0 and c0 * bits a multiple of 8: AVX2. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_axpy_avx2(const qe4_grouped *t, const uint8_t *codes,
                                                int c0, int len, float s, float tt, float *acc,
                                                const int use_lev)
{
    const int bits = t->bits;
    __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(tt);
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    if (use_lev && bits == 4) {
        lo = _mm256_loadu_ps(t->lev);
        hi = _mm256_loadu_ps(t->lev + 8);
    }
    const uint8_t *p = codes + ((int64_t)c0 * bits >> 3);
    if (bits == 4) {
        const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        for (int c = 0; c < len; c += 8) {
            uint32_t w;
            memcpy(&w, p + c / 2, 4);
            __m256i raw = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), shifts);
            __m256 a = _mm256_loadu_ps(acc + c);
            __m256 fv = qe4_g_vals4_avx2(raw, lo, hi, use_lev);
            _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(vs, fv, _mm256_add_ps(a, vt)));
        }
    } else {
        for (int c = 0; c < len; c += 8) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + c)));
            __m256 a = _mm256_loadu_ps(acc + c);
            __m256 fv = qe4_g_vals8_avx2(v, t->lev, use_lev);
            _mm256_storeu_ps(acc + c, _mm256_fmadd_ps(vs, fv, _mm256_add_ps(a, vt)));
        }
    }
}

/* acc [dim] += row r weighted by w: AVX2 for the groups it can take, the portable loop
 * (compiled with FMA here: the same fmaf) for the others. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_add_row_avx2_impl(const qe4_grouped *t, int64_t r,
                                                        int weighted, float w, float *acc,
                                                        const int use_lev)
{
    const uint8_t *row = t->data + r * t->row_bytes;
    float d, m;
    int sgn = qe4_g_super(t, row, &d, &m);
    int vec = t->bits == 4 || t->bits == 8;
    for (int j = 0; j < t->n_groups; j++) {
        float s, tt;
        int len = qe4_g_len(t, j), c0 = j * t->group;
        qe4_g_terms(t, row, j, d, m, sgn, weighted, w, &s, &tt);
        if (vec && (len & 7) == 0 && ((int64_t)c0 * t->bits & 7) == 0)
            qe4_g_axpy_avx2(t, row, c0, len, s, tt, acc + c0, use_lev);
        else
            qe4_g_axpy_any(t, row, c0, len, s, tt, acc + c0, use_lev);
    }
}

QE4_TARGET_AVX2 static void qe4_g_add_row_avx2(const qe4_grouped *t, int64_t r, int weighted,
                                               float w, float *acc)
{
    qe4_g_add_row_avx2_impl(t, r, weighted, w, acc, 0);
}

QE4_TARGET_AVX2 static void qe4_g_add_row_avx2_lev(const qe4_grouped *t, int64_t r, int weighted,
                                                   float w, float *acc)
{
    qe4_g_add_row_avx2_impl(t, r, weighted, w, acc, 1);
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
/* The positions [p0, p0 + n) of a bag (n <= QE4_G_CHUNK): row pointers, |d|, m, sign, weight. */
#define QE4_G_CHUNK 64
typedef struct {
    const uint8_t *row[QE4_G_CHUNK];
    float d[QE4_G_CHUNK], m[QE4_G_CHUNK], w[QE4_G_CHUNK];
    int sgn[QE4_G_CHUNK];
} qe4_g_rows;

QE4_INLINE void qe4_g_load_rows(const qe4_grouped *t, const int64_t *idx, int64_t n_idx,
                                const float *w, int64_t p0, int n, qe4_g_rows *r)
{
    for (int k = 0; k < n; k++) {
        int64_t p = p0 + k;
        if (p + QE4_PREFETCH < n_idx)
            qe4_prefetch_row(t->data + idx[p + QE4_PREFETCH] * t->row_bytes, t->row_bytes);
        r->row[k] = t->data + idx[p] * t->row_bytes;
        r->sgn[k] = qe4_g_super(t, r->row[k], &r->d[k], &r->m[k]);
        r->w[k] = w != NULL ? w[p] : 1.0f;
    }
}

/* Group j of positions r [0, n), columns [c0, c0 + 8 * nv) (nv <= 8, 4- or 8-bit codes),
 * added to acc in position order with the accumulators in registers: the same operations
 * per element as the row-at-a-time loop. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_bag_block_avx2(const qe4_grouped *t, const qe4_g_rows *r,
                                                     int n, int weighted, int j, int c0, int nv,
                                                     float *out, const int use_lev)
{
    __m256 acc[8];
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    if (use_lev && t->bits == 4) {
        lo = _mm256_loadu_ps(t->lev);
        hi = _mm256_loadu_ps(t->lev + 8);
    }
    for (int v = 0; v < nv; v++)
        acc[v] = _mm256_loadu_ps(out + c0 + 8 * v);
    for (int k = 0; k < n; k++) {
        float s, tt;
        qe4_g_terms(t, r->row[k], j, r->d[k], r->m[k], r->sgn[k], weighted, r->w[k], &s, &tt);
        __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(tt);
        const uint8_t *code = r->row[k] + ((int64_t)c0 * t->bits >> 3);
        for (int v = 0; v < nv; v++) {
            __m256 fv;
            if (t->bits == 4) {
                uint32_t word;
                memcpy(&word, code + 4 * v, 4);
                __m256i raw = _mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts);
                fv = qe4_g_vals4_avx2(raw, lo, hi, use_lev);
            } else {
                __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(code + 8 * v)));
                fv = qe4_g_vals8_avx2(q, t->lev, use_lev);
            }
            acc[v] = _mm256_fmadd_ps(vs, fv, _mm256_add_ps(acc[v], vt));
        }
    }
    for (int v = 0; v < nv; v++)
        _mm256_storeu_ps(out + c0 + 8 * v, acc[v]);
}

/* A bag at AVX2, QE4_G_CHUNK positions at a time: the groups it can take block by block
 * (above), the others position by position. */
QE4_INLINE QE4_TARGET_AVX2 void qe4_g_bag_avx2_impl(const qe4_grouped *t, const int64_t *idx,
                                                    int64_t n_idx, const float *w, int64_t start,
                                                    int64_t end, float *out, const int use_lev)
{
    qe4_g_rows r;
    int vec = t->bits == 4 || t->bits == 8;
    memset(out, 0, (size_t)t->dim * sizeof(float));
    for (int64_t p0 = start; p0 < end; p0 += QE4_G_CHUNK) {
        int n = end - p0 < QE4_G_CHUNK ? (int)(end - p0) : QE4_G_CHUNK;
        qe4_g_load_rows(t, idx, n_idx, w, p0, n, &r);
        for (int j = 0; j < t->n_groups; j++) {
            int len = qe4_g_len(t, j), c0 = j * t->group;
            if (vec && (len & 7) == 0 && ((int64_t)c0 * t->bits & 7) == 0) {
                for (int cb = 0; cb < len; cb += 64) {
                    int nv = (len - cb) / 8 < 8 ? (len - cb) / 8 : 8;
                    qe4_g_bag_block_avx2(t, &r, n, w != NULL, j, c0 + cb, nv, out, use_lev);
                }
                continue;
            }
            for (int k = 0; k < n; k++) {
                float s, tt;
                qe4_g_terms(t, r.row[k], j, r.d[k], r.m[k], r.sgn[k], w != NULL, r.w[k], &s, &tt);
                qe4_g_axpy_any(t, r.row[k], c0, len, s, tt, out + c0, use_lev);
            }
        }
    }
}

QE4_TARGET_AVX2 static void qe4_g_bag_avx2(const qe4_grouped *t, const int64_t *idx,
                                           int64_t n_idx, const float *w, int64_t start,
                                           int64_t end, float *out)
{
    qe4_g_bag_avx2_impl(t, idx, n_idx, w, start, end, out, 0);
}

QE4_TARGET_AVX2 static void qe4_g_bag_avx2_lev(const qe4_grouped *t, const int64_t *idx,
                                               int64_t n_idx, const float *w, int64_t start,
                                               int64_t end, float *out)
{
    qe4_g_bag_avx2_impl(t, idx, n_idx, w, start, end, out, 1);
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
            qe4_prefetch_row(t->data + idx[p + QE4_PREFETCH] * t->row_bytes, t->row_bytes);
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
