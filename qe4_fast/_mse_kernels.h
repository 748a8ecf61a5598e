/* The "mse" search of qe4_fast: the C twin of qe4/mse.py (read its notes for the method).
 *
 * QE4_LANES rows at once, stored transposed (lane k = row k) as in the greedy kernel;
 * every lane performs exactly the reference's float32/float64 operations in the
 * reference's column order, so the compiler vectorizes across lanes.  Like the other
 * kernel families the search runs at the one SIMD level of the process (_common.h):
 * qe4_mse_plan_init picks the level's variant (QE4_PER_LEVEL) once per call, and every
 * level performs the same IEEE operations, so the bytes are the same at every level.
 * The only failure is a bad bit width or SIMD level code, refused by qe4_mse_plan_init
 * before any row is touched.
 *
 * Level tables (qe4.mse.mse_params(levels=), the grouped layout's step 1): with p->lev set,
 * a code reads back as lev[q] instead of q; the passes are separate functions
 * (qe4_mse_lev_pass) in a separate instance of qe4_mse_block (its constant use_lev), so the
 * uniform instance is the code without tables.
 */
#ifndef QE4_MSE_KERNELS_H
#define QE4_MSE_KERNELS_H

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function" /* the row-wise kernels this module does not call */
#endif
#include "_rowwise_kernels.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/* One call's work: set by the caller, then qe4_mse_plan_init chooses the level's step. */
typedef struct qe4_mse_plan qe4_mse_plan;
struct qe4_mse_plan {
    const float *x;            /* IN  [n_rows, n_cols], finite, ranges checked */
    int n_cols, bits, fp16;
    float max_trim;
    int n_steps, n_keep, n_iter; /* n_keep <= the number of scan ranges */
    float *scale, *bias, *inv; /* OUT [n_rows] the rows' stored (scale, bias) and 1 / scale */
    uint8_t *out;              /* OUT [n_rows, row_bytes] packed rows, or NULL: parameters only */
    size_t row_bytes;
    const float *lev;          /* IN  [1 << bits] ascending level table, or NULL: uniform (q);
                                * with a table out must be NULL */
    /* set by qe4_mse_plan_init */
    float qmax;
    int n_mid;                 /* with lev: the (1 << bits) - 1 midpoints mid[] */
    float mid[255];
    int (*step)(const qe4_mse_plan *p, int r0, int n, float *work);
};

/* Floats of scratch space one block needs: the transposed rows and, per kept range,
 * its loss and (scale, bias, inv) in every lane. */
static inline size_t qe4_mse_work_floats(int n_cols, int n_keep)
{
    return (size_t)QE4_LANES * (size_t)n_cols + (size_t)4 * QE4_LANES * (size_t)n_keep;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math") /* see the greedy lanes: no value changes */
#endif

/* qe4.rowwise.fused_scale_bias of one lane. */
QE4_INLINE void qe4_fused_params(float lo, float hi, float qmax, int fp16,
                                 float *scale, float *bias, float *inv)
{
    float b = qe4_hv(lo, fp16);
    float rng = hi - b;
    float s = rng / qmax;
    s = rng == 0.0f ? 1.0f : s;
    s = qe4_hv(s, fp16);
    s = s == 0.0f ? 1.0f : s;
    float iv = 1.0f / s;
    int bad = fabsf(iv) == INFINITY;
    *scale = bad ? 1.0f : s;
    *bias = b;
    *inv = bad ? 1.0f : iv;
}

/* Loss and least-squares sums of one candidate per lane: qe4.mse._pass with sums. */
QE4_INLINE void qe4_mse_ls_pass(const float *restrict xt, int n_cols, float qmax,
                                const float *s, const float *b, const float *iv,
                                float *restrict err, float *restrict sq, float *restrict sqq,
                                float *restrict sy, float *restrict syq)
{
    float e[QE4_LANES], a[QE4_LANES], aa[QE4_LANES], y1[QE4_LANES], yq[QE4_LANES];
    for (int k = 0; k < QE4_LANES; k++)
        e[k] = a[k] = aa[k] = y1[k] = yq[k] = 0.0f;
    for (int j = 0; j < n_cols; j++) {
        const float *xj = xt + (size_t)j * QE4_LANES;
        for (int k = 0; k < QE4_LANES; k++) {
            float x = xj[k];
            float y = x - b[k];
            float t = y * iv[k];
            t = t < 0.0f ? 0.0f : t;
            t = t > qmax ? qmax : t;
            t = (t + QE4_RINT_MAGIC) - QE4_RINT_MAGIC;
            float d = x - (t * s[k] + b[k]);
            e[k] = e[k] + d * d;
            a[k] = a[k] + t;
            aa[k] = aa[k] + t * t;
            y1[k] = y1[k] + y;
            yq[k] = yq[k] + y * t;
        }
    }
    for (int k = 0; k < QE4_LANES; k++) {
        err[k] = e[k];
        sq[k] = a[k];
        sqq[k] = aa[k];
        sy[k] = y1[k];
        syq[k] = yq[k];
    }
}

/* The level values v[k] = lev[level_codes(t[k])] of QE4_LANES lanes: lev[the number of
 * midpoints t exceeds] (qe4.mse.level_codes; the midpoints ascend, so the last one exceeded
 * picks the value), a chain of selects the compiler vectorizes across the lanes. */
QE4_INLINE void qe4_lev_values(const float *restrict t, float *restrict v, const float *lev,
                               const float *mid, int n_mid)
{
    for (int k = 0; k < QE4_LANES; k++)
        v[k] = lev[0];
    for (int i = 0; i < n_mid; i++) {
        float mi = mid[i], li = lev[i + 1];
        /* kept a loop (not unrolled into 16 scalars), so that it is the one vectorized */
#pragma GCC unroll 1
        for (int k = 0; k < QE4_LANES; k++)
            v[k] = t[k] > mi ? li : v[k];
    }
}

/* qe4.mse._pass of one candidate per lane with a level table: the loss and (with the constant
 * `sums`; the scan has none) the least-squares sums of the codes' values lev[q]. */
QE4_INLINE void qe4_mse_lev_pass_impl(const float *restrict xt, int n_cols, const float *lev,
                                      const float *mid, int n_mid, const float *s,
                                      const float *b, const float *iv, float *restrict err,
                                      float *restrict sq, float *restrict sqq,
                                      float *restrict sy, float *restrict syq, const int sums)
{
    float e[QE4_LANES], a[QE4_LANES], aa[QE4_LANES], y1[QE4_LANES], yq[QE4_LANES];
    float t[QE4_LANES], v[QE4_LANES];
    for (int k = 0; k < QE4_LANES; k++)
        e[k] = a[k] = aa[k] = y1[k] = yq[k] = 0.0f;
    for (int j = 0; j < n_cols; j++) {
        const float *xj = xt + (size_t)j * QE4_LANES;
        for (int k = 0; k < QE4_LANES; k++)
            t[k] = (xj[k] - b[k]) * iv[k];
        qe4_lev_values(t, v, lev, mid, n_mid);
        for (int k = 0; k < QE4_LANES; k++) {
            float x = xj[k];
            float y = x - b[k];
            float q = v[k];
            float d = x - (q * s[k] + b[k]);
            e[k] = e[k] + d * d;
            if (sums) {
                a[k] = a[k] + q;
                aa[k] = aa[k] + q * q;
                y1[k] = y1[k] + y;
                yq[k] = yq[k] + y * q;
            }
        }
    }
    for (int k = 0; k < QE4_LANES; k++) {
        err[k] = e[k];
        if (sums) {
            sq[k] = a[k];
            sqq[k] = aa[k];
            sy[k] = y1[k];
            syq[k] = yq[k];
        }
    }
}

/* The loss and sums of qe4_mse_lev_pass_impl. */
QE4_INLINE void qe4_mse_lev_pass(const float *restrict xt, int n_cols, const float *lev,
                                 const float *mid, int n_mid, const float *s, const float *b,
                                 const float *iv, float *restrict err, float *restrict sq,
                                 float *restrict sqq, float *restrict sy, float *restrict syq)
{
    qe4_mse_lev_pass_impl(xt, n_cols, lev, mid, n_mid, s, b, iv, err, sq, sqq, sy, syq, 1);
}

/* The loss alone (the scan and the last pass of a chain). */
QE4_INLINE void qe4_mse_lev_loss(const float *restrict xt, int n_cols, const float *lev,
                                 const float *mid, int n_mid, const float *s, const float *b,
                                 const float *iv, float *restrict err)
{
    qe4_mse_lev_pass_impl(xt, n_cols, lev, mid, n_mid, s, b, iv, err, NULL, NULL, NULL, NULL, 0);
}

/* qe4.mse.least_squares_step of one lane; returns 1 when (scale, bias) changed. */
QE4_INLINE int qe4_mse_ls_step(int n_cols, int fp16, float sq, float sqq, float sy, float syq,
                               float *scale, float *bias, float *inv)
{
    double n = (double)n_cols, dq = sq, dqq = sqq, dy = sy, dyq = syq;
    double det = n * dqq - dq * dq;
    int ok = det > 0.0;
    double s = (n * dyq - dq * dy) / (ok ? det : 1.0);
    double c = (dy - s * dq) / n;
    float ns = qe4_hv((float)s, fp16);
    float nb = qe4_hv((float)((double)*bias + c), fp16);
    float ni = 1.0f / (ns > 0.0f ? ns : 1.0f);
    ok = ok & (ns > 0.0f) & (ns < INFINITY) & (fabsf(ni) < INFINITY) & (fabsf(nb) < INFINITY);
    if (!ok)
        return 0;
    int changed = ns != *scale || nb != *bias || qe4_bits(nb) != qe4_bits(*bias);
    *scale = ns;
    *bias = nb;
    *inv = ni;
    return changed;
}

/* One lane: (e, s, b, iv) replaces the best so far when its error is strictly smaller (ties
 * keep the first evaluated). */
QE4_INLINE void qe4_mse_keep_best(float e, float s, float b, float iv, float *best_e,
                                  float *best_s, float *best_b, float *best_i)
{
    int better = e < *best_e;
    *best_e = better ? e : *best_e;
    *best_s = better ? s : *best_s;
    *best_b = better ? b : *best_b;
    *best_i = better ? iv : *best_i;
}

/* The "mse" (scale, bias, inv) of n rows (1 <= n <= QE4_LANES) starting at x; see
 * qe4.mse.mse_params.  n_keep >= 1 (capped at the number of scan ranges by the caller). */
QE4_INLINE void qe4_mse_block(const float *restrict x, int n, int n_cols, float qmax, int fp16,
                          float max_trim, int n_steps, int n_keep, int n_iter, const float *lev,
                          const float *mid, int n_mid, float *work,
                          float *scale_out, float *bias_out, float *inv_out, const int use_lev)
{
    float *restrict xt = work;
    float *keep = work + (size_t)QE4_LANES * n_cols; /* [n_keep][4][QE4_LANES]: err, s, b, inv */
    float xmin[QE4_LANES], xmax[QE4_LANES], delta[QE4_LANES];
    int n_kept[QE4_LANES];

    for (int k = 0; k < QE4_LANES; k++) {
        const float *row = x + (size_t)(k < n ? k : n - 1) * n_cols; /* pad with the last row */
        for (int j = 0; j < n_cols; j++)
            xt[(size_t)j * QE4_LANES + k] = row[j];
        qe4_row_minmax(row, n_cols, &xmin[k], &xmax[k]);
        delta[k] = max_trim * (xmax[k] - xmin[k]) / (float)n_steps;
        n_kept[k] = 0;
    }

    /* 1. scan the grid (i ascending, then j), two ranges per pass; keep the n_keep
     * least losses per lane, a later range after an equal one (a stable sort) */
    int n_grid = (n_steps + 1) * (n_steps + 2) / 2;
    int gi = 0, gj = 0; /* the next grid point */
    for (int g = 0; g < n_grid; g += 2) {
        float s2[2][QE4_LANES], b2[2][QE4_LANES], i2[2][QE4_LANES], e2[2][QE4_LANES];
        int m = n_grid - g < 2 ? n_grid - g : 2;
        for (int c = 0; c < 2; c++) {
            float fi = (float)gi, fj = (float)gj;
            for (int k = 0; k < QE4_LANES; k++)
                qe4_fused_params(xmin[k] + fi * delta[k], xmax[k] - fj * delta[k], qmax, fp16,
                                 &s2[c][k], &b2[c][k], &i2[c][k]);
            if (c < m) { /* advance (i, j); a lone last range leaves slot 1 unused */
                if (++gj > n_steps - gi) {
                    gi++;
                    gj = 0;
                }
            }
        }
        if (!use_lev) {
            qe4_lanes_sqerr2(xt, n_cols, qmax, s2[0], b2[0], i2[0], e2[0], s2[1], b2[1], i2[1],
                             e2[1]);
        } else {
            for (int c = 0; c < m; c++)
                qe4_mse_lev_loss(xt, n_cols, lev, mid, n_mid, s2[c], b2[c], i2[c], e2[c]);
        }
        for (int c = 0; c < m; c++)
            for (int k = 0; k < QE4_LANES; k++) {
                float e = e2[c][k];
                int p = n_kept[k];
                while (p > 0 && e < keep[((size_t)(p - 1) * 4) * QE4_LANES + k])
                    p--;
                if (p >= n_keep)
                    continue;
                int last = n_kept[k] < n_keep ? n_kept[k] : n_keep - 1;
                for (int q = last; q > p; q--)
                    for (int f = 0; f < 4; f++)
                        keep[((size_t)q * 4 + f) * QE4_LANES + k] =
                            keep[((size_t)(q - 1) * 4 + f) * QE4_LANES + k];
                keep[((size_t)p * 4 + 0) * QE4_LANES + k] = e;
                keep[((size_t)p * 4 + 1) * QE4_LANES + k] = s2[c][k];
                keep[((size_t)p * 4 + 2) * QE4_LANES + k] = b2[c][k];
                keep[((size_t)p * 4 + 3) * QE4_LANES + k] = i2[c][k];
                n_kept[k] = n_kept[k] < n_keep ? n_kept[k] + 1 : n_keep;
            }
    }

    float best_e[QE4_LANES], best_s[QE4_LANES], best_b[QE4_LANES], best_i[QE4_LANES];
    for (int k = 0; k < QE4_LANES; k++) {
        best_e[k] = keep[0 * QE4_LANES + k];
        best_s[k] = keep[1 * QE4_LANES + k];
        best_b[k] = keep[2 * QE4_LANES + k];
        best_i[k] = keep[3 * QE4_LANES + k];
    }

    /* 2. refine each kept range by alternating least squares, chain by chain */
    for (int r = 0; r < n_keep; r++) {
        float s[QE4_LANES], b[QE4_LANES], iv[QE4_LANES], e[QE4_LANES];
        float sq[QE4_LANES], sqq[QE4_LANES], sy[QE4_LANES], syq[QE4_LANES];
        for (int k = 0; k < QE4_LANES; k++) {
            s[k] = keep[((size_t)r * 4 + 1) * QE4_LANES + k];
            b[k] = keep[((size_t)r * 4 + 2) * QE4_LANES + k];
            iv[k] = keep[((size_t)r * 4 + 3) * QE4_LANES + k];
        }
        for (int t = 0; t < n_iter; t++) {
            if (!use_lev)
                qe4_mse_ls_pass(xt, n_cols, qmax, s, b, iv, e, sq, sqq, sy, syq);
            else
                qe4_mse_lev_pass(xt, n_cols, lev, mid, n_mid, s, b, iv, e, sq, sqq, sy, syq);
            int changed = 0;
            for (int k = 0; k < QE4_LANES; k++) {
                qe4_mse_keep_best(e[k], s[k], b[k], iv[k], &best_e[k], &best_s[k], &best_b[k],
                                  &best_i[k]);
                changed |= qe4_mse_ls_step(n_cols, fp16, sq[k], sqq[k], sy[k], syq[k],
                                           &s[k], &b[k], &iv[k]);
            }
            if (!changed) /* every lane at a fixed point: later passes repeat this one */
                goto next_chain;
        }
        if (!use_lev)
            qe4_lanes_sqerr2(xt, n_cols, qmax, s, b, iv, e, s, b, iv, sq);
        else
            qe4_mse_lev_loss(xt, n_cols, lev, mid, n_mid, s, b, iv, e);
        for (int k = 0; k < QE4_LANES; k++) {
            qe4_mse_keep_best(e[k], s[k], b[k], iv[k], &best_e[k], &best_s[k], &best_b[k],
                              &best_i[k]);
        }
    next_chain:;
    }
    for (int k = 0; k < n; k++) {
        scale_out[k] = best_s[k];
        bias_out[k] = best_b[k];
        inv_out[k] = best_i[k];
    }
}

/* Rows [r0, r0 + n) of a planned call, n <= QE4_LANES: their (scale, bias, inv), then (when
 * p->out is set) their packed rows.  work: qe4_mse_work_floats floats.  Returns 0. */
QE4_INLINE int qe4_mse_rows(const qe4_mse_plan *p, int r0, int n, float *work)
{
    int n_cols = p->n_cols;
    qe4_mse_block(p->x + (size_t)r0 * n_cols, n, n_cols, p->qmax, p->fp16, p->max_trim,
                  p->n_steps, p->n_keep, p->n_iter, NULL, NULL, 0, work, p->scale + r0,
                  p->bias + r0, p->inv + r0, 0);
    if (p->out != NULL)
        for (int r = r0; r < r0 + n; r++)
            qe4_encode_row(p->x + (size_t)r * n_cols, n_cols, p->bits, p->fp16, p->scale[r],
                           p->bias[r], p->inv[r], p->out + (size_t)r * p->row_bytes);
    return 0;
}
QE4_PER_LEVEL(int, qe4_mse_rows, (const qe4_mse_plan *p, int r0, int n, float *work),
              (p, r0, n, work));

/* The same with p's level table (parameters only: p->out is NULL), its own function so that
 * the uniform one is the code without tables. */
QE4_INLINE int qe4_mse_rows_lev(const qe4_mse_plan *p, int r0, int n, float *work)
{
    int n_cols = p->n_cols;
    qe4_mse_block(p->x + (size_t)r0 * n_cols, n, n_cols, p->qmax, p->fp16, p->max_trim,
                  p->n_steps, p->n_keep, p->n_iter, p->lev, p->mid, p->n_mid, work,
                  p->scale + r0, p->bias + r0, p->inv + r0, 1);
    return 0;
}
QE4_PER_LEVEL(int, qe4_mse_rows_lev, (const qe4_mse_plan *p, int r0, int n, float *work),
              (p, r0, n, work));

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/* Choose p's step (its caller fields set) for SIMD level `simd`: QE4_OK, or QE4_ERR_SIMD /
 * QE4_ERR_BITS (a width qe4_encode_row does not implement); nothing runs then.  With a level
 * table, its midpoints mid[k] = (lev[k] + lev[k + 1]) * 0.5f (float32, as qe4.mse.level_codes). */
static int qe4_mse_plan_init(qe4_mse_plan *p, int simd)
{
    int err = qe4_check_rowwise(p->bits, simd);
    if (err != QE4_OK)
        return err;
    p->qmax = (float)((1 << p->bits) - 1);
    p->n_mid = p->lev != NULL ? (1 << p->bits) - 1 : 0;
    for (int k = 0; k < p->n_mid; k++)
        p->mid[k] = (p->lev[k] + p->lev[k + 1]) * 0.5f;
    p->step = p->lev != NULL ? qe4_mse_rows_lev_at[simd] : qe4_mse_rows_at[simd];
    return QE4_OK;
}

/* Rows [r0, r0 + n) of a planned call (n <= QE4_LANES). */
static inline int qe4_mse_block_run(const qe4_mse_plan *p, int r0, int n, float *work)
{
    return p->step(p, r0, n, work);
}

#endif
