/* Kernels of qe4_fast._codebook: codebook quantization, dequantization and bags.
 *
 * The numerics are specified in qe4/codebook.py; every function here reproduces one
 * reference step bit for bit (float64 fitting arithmetic in the same order, no
 * contraction: the module is compiled with -ffp-contract=off).  Every function works on
 * ONE row, group or bag; callers run them on any number of threads.
 * Stored bytes are little-endian (_common.h refuses big-endian hosts).  Method, layout, bit
 * width and SIMD level codes are checked once per call by cb_check (a switch whose default is
 * an error, raised by the Cython wrapper), so the per-row code never meets a bad one.
 */
#ifndef QE4_CODEBOOK_KERNELS_H
#define QE4_CODEBOOK_KERNELS_H

#include <stdlib.h>

#include "_common.h"

/* QE4_OK when the kernels implement method (-1: not used by the caller), layout (-1: not
 * used) and bits, and this CPU runs SIMD level simd; else the QE4_ERR_* code. */
static int cb_check(int method, int layout, int bits, int simd)
{
    int err = qe4_check_simd(simd);
    if (err != QE4_OK)
        return err;
    switch (method) {
    case -1:
    case QE4_KMEANS:
    case QE4_KMEANS_OPTIMAL:
        break;
    default:
        return QE4_ERR_METHOD;
    }
    switch (layout) {
    case -1:
    case QE4_LAYOUT_CODEBOOK:
    case QE4_LAYOUT_TWO_TIER:
        break;
    default:
        return QE4_ERR_LAYOUT;
    }
    switch (bits) {
    case 2:
    case 4:
        return QE4_OK;
    default:
        return QE4_ERR_BITS;
    }
}

/* qe4.codebook.store_centroids for one value: float64 -> float32 -> storage, + 0.0 */
static inline float cb_store(double c, int f16)
{
    float f = (float)c;
    if (f16)
        f = qe4_half_to_float(qe4_float_to_half(f));
    return f + 0.0f;
}

/* ascending insertion sort of v[0..n) of type T (short arrays; no NaN) */
#define CB_INSERTION_SORT(T, v, n)                     \
    do {                                               \
        for (int64_t i_ = 1; i_ < (int64_t)(n); i_++) {  \
            T t_ = (v)[i_];                            \
            int64_t j_ = i_ - 1;                       \
            while (j_ >= 0 && (v)[j_] > t_) {          \
                (v)[j_ + 1] = (v)[j_];                 \
                j_--;                                  \
            }                                          \
            (v)[j_ + 1] = t_;                          \
        }                                              \
    } while (0)

static void cb_sort_floats(float *v, int n)
{
    CB_INSERTION_SORT(float, v, n);
}

static int cb_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* qe4.codebook.sorted_rows for one row: float64(x + 0.0f), ascending (no NaN here) */
static void cb_sort_row(const float *x, int64_t n, double *xs)
{
    for (int64_t i = 0; i < n; i++)
        xs[i] = (double)(x[i] + 0.0f);
    if (n > 64)
        qsort(xs, (size_t)n, sizeof(double), cb_cmp_double);
    else
        CB_INSERTION_SORT(double, xs, n);
}

/* ------------------------------------------------------------------ exact 1-D k-means */

typedef struct {
    const double *P1, *P2, *PW;  /* prefix sums [n + 1] */
    const double *inv;           /* inv[m] = 1.0 / m for unit-weight points, or NULL */
    double *Fprev, *Fcur;        /* [n + 1] */
    int64_t n;
} cb_dp;

/* qe4.codebook._cost: q - (s * s) * (1.0 / m) */
static inline double cb_cost(const cb_dp *d, int64_t a, int64_t b)
{
    double s = d->P1[b] - d->P1[a];
    double q = d->P2[b] - d->P2[a];
    double r = d->inv ? d->inv[b - a] : 1.0 / (d->PW[b] - d->PW[a]);
    return q - (s * s) * r;
}

/* One layer by divide and conquer (qe4.codebook.optimal_partition), with an explicit
 * stack: per node scan a = a_lo .. min(a_hi, mid - 1), keep the first strict minimum.
 * Nodes are independent given their parents, so the visiting order does not matter. */
static void cb_solve(cb_dp *d, int32_t *A, int64_t b_lo, int64_t b_hi, int64_t a_lo, int64_t a_hi)
{
    int64_t stack[4 * 64];           /* depth <= log2(n) + 1 <= 64 nodes pending */
    int64_t top = 0;
    const double *P1 = d->P1, *P2 = d->P2, *PW = d->PW, *F = d->Fprev, *inv = d->inv;
    double *G = d->Fcur;
    for (;;) {
        while (b_lo <= b_hi) {
            int64_t mid = (b_lo + b_hi) / 2;
            int64_t hi = a_hi < mid - 1 ? a_hi : mid - 1;
            const double p1 = P1[mid], p2 = P2[mid];
            double best = F[a_lo] + cb_cost(d, a_lo, mid);
            int64_t best_a = a_lo;
            if (inv) {      /* unit weights: the same value as 1.0 / m, from a table */
                const double *im = inv + mid;
                for (int64_t a = a_lo + 1; a <= hi; a++) {
                    double s = p1 - P1[a], q = p2 - P2[a];
                    double v = F[a] + (q - (s * s) * im[-a]);
                    if (v < best) {
                        best = v;
                        best_a = a;
                    }
                }
            } else {
                for (int64_t a = a_lo + 1; a <= hi; a++) {
                    double s = p1 - P1[a], q = p2 - P2[a];
                    double v = F[a] + (q - (s * s) * (1.0 / (PW[mid] - PW[a])));
                    if (v < best) {
                        best = v;
                        best_a = a;
                    }
                }
            }
            G[mid] = best;
            A[mid] = (int32_t)best_a;
            if (mid + 1 <= b_hi) {   /* right child later */
                stack[top++] = mid + 1;
                stack[top++] = b_hi;
                stack[top++] = best_a;
                stack[top++] = a_hi;
            }
            b_hi = mid - 1;          /* left child now */
            a_hi = best_a;
        }
        if (top == 0)
            return;
        a_hi = stack[--top];
        a_lo = stack[--top];
        b_hi = stack[--top];
        b_lo = stack[--top];
    }
}

/* Optimal partition of n points into k <= n clusters: bounds[0..k].
 * A: scratch int32 [(k - 1) * (n + 1)]. */
static void cb_optimal_partition(cb_dp *d, int64_t k, int32_t *A, int64_t *bounds)
{
    int64_t n = d->n;
    int64_t last1 = k == 1 ? n : n - (k - 1);
    for (int64_t b = 1; b <= last1; b++)
        d->Fprev[b] = cb_cost(d, 0, b);
    for (int64_t j = 2; j <= k; j++) {
        int64_t b_lo = j == k ? n : j, b_hi = j == k ? n : n - (k - j);
        cb_solve(d, A + (j - 2) * (n + 1), b_lo, b_hi, j - 1, n - 1);
        double *t = d->Fprev;
        d->Fprev = d->Fcur;
        d->Fcur = t;
    }
    bounds[0] = 0;
    bounds[k] = n;
    for (int64_t j = k; j >= 2; j--)
        bounds[j - 1] = A[(j - 2) * (n + 1) + bounds[j]];
}

/* qe4.codebook.prefix_sums (cumsum: P[1] = a[0], P[t + 1] = P[t] + a[t]) */
static void cb_prefix(const double *a, int64_t n, double *P)
{
    P[0] = 0.0;
    if (n > 0)
        P[1] = a[0];
    for (int64_t t = 1; t < n; t++)
        P[t + 1] = P[t] + a[t];
}

/* qe4.codebook.partition_centroids: shift + S / m per cluster, padded to k_out */
static void cb_partition_centroids(const double *s, const double *w, const int64_t *bounds,
                                   int64_t k, double shift, int64_t k_out, double *c)
{
    for (int64_t i = 0; i < k; i++) {
        double S = 0.0, m = 0.0;
        for (int64_t t = bounds[i]; t < bounds[i + 1]; t++) {
            S += s[t];
            m += w[t];
        }
        c[i] = shift + S / m;
    }
    for (int64_t i = k; i < k_out; i++)
        c[i] = c[k - 1];
}

/* ------------------------------------------------------------------ per-row work space */

typedef struct {
    int64_t n, K;
    double *xs, *s, *q, *w, *P1, *P2, *PW, *Fa, *Fb, *c64, *sums, *cnts, *gain, *cost;
    int32_t *A, *codes, *prev, *cut, *part;
    int64_t *bounds;
    float *cents;
    void *block;
} cb_work;

static void cb_work_free(cb_work *wk)
{
    free(wk->block);
    wk->block = NULL;
}

/* Allocate scratch for n points and K centroids; 0 on success, -1 when out of memory. */
static int cb_work_init(cb_work *wk, int64_t n, int64_t K)
{
    size_t nd = (size_t)(4 * n + 5 * (n + 1) + 5 * K);
    size_t ni = (size_t)((K > 1 ? K - 1 : 1) * (n + 1) + 2 * n + 2 * K);
    size_t bytes = nd * 8 + (size_t)(K + 1) * 8 + ni * 4 + (size_t)K * 4 + 64;
    char *p = (char *)malloc(bytes);
    wk->block = p;
    if (!p)
        return -1;
    wk->n = n;
    wk->K = K;
    double *dp = (double *)p;
    wk->xs = dp; dp += n;
    wk->s = dp; dp += n;
    wk->q = dp; dp += n;
    wk->w = dp; dp += n;
    wk->P1 = dp; dp += n + 1;
    wk->P2 = dp; dp += n + 1;
    wk->PW = dp; dp += n + 1;
    wk->Fa = dp; dp += n + 1;
    wk->Fb = dp; dp += n + 1;
    wk->c64 = dp; dp += K;
    wk->sums = dp; dp += K;
    wk->cnts = dp; dp += K;
    wk->gain = dp; dp += K;
    wk->cost = dp; dp += K;
    wk->bounds = (int64_t *)dp;
    int32_t *ip = (int32_t *)(wk->bounds + K + 1);
    wk->A = ip; ip += (K > 1 ? K - 1 : 1) * (n + 1);
    wk->codes = ip; ip += n;
    wk->prev = ip; ip += n;
    wk->cut = ip; ip += K;
    wk->part = ip; ip += K;
    wk->cents = (float *)ip;
    return 0;
}

/* Exact 1-D k-means of the points (s, q, w) [n] -> float64 centroids wk->c64 [K].
 * inv: 1/m table for unit weights (or NULL). */
static void cb_points_optimal(cb_work *wk, int64_t n, double shift, const double *inv)
{
    int64_t k = wk->K < n ? wk->K : n;
    cb_prefix(wk->s, n, wk->P1);
    cb_prefix(wk->q, n, wk->P2);
    cb_prefix(wk->w, n, wk->PW);
    cb_dp d = {wk->P1, wk->P2, wk->PW, inv, wk->Fa, wk->Fb, n};
    cb_optimal_partition(&d, k, wk->A, wk->bounds);
    cb_partition_centroids(wk->s, wk->w, wk->bounds, k, shift, wk->K, wk->c64);
}

/* qe4.codebook.row_optimal_centroids for the sorted row wk->xs [n] */
static void cb_row_optimal(cb_work *wk, const double *inv)
{
    int64_t n = wk->n;
    double shift = wk->xs[n / 2];
    for (int64_t t = 0; t < n; t++) {
        double y = wk->xs[t] - shift;
        wk->s[t] = y;
        wk->q[t] = y * y;
        wk->w[t] = 1.0;
    }
    cb_points_optimal(wk, n, shift, inv);
}

/* qe4.codebook.between: the squared error added by merging clusters (s1, m1), (s2, m2) */
static inline double cb_between(double s1, double m1, double s2, double m2)
{
    double d = s1 / m1 - s2 / m2;
    return ((m1 * m2) / (m1 + m2)) * (d * d);
}

/* qe4.codebook.relocate for one row: the split-merge move of the centroids wk->c64 [K]
 * from Lloyd's converged assignment wk->codes [n] (non-decreasing) and the prefix sums
 * P [n + 1] of the sorted row.  Returns 1 when it moved (c64 sorted again), else 0. */
static int cb_relocate(cb_work *wk, const double *P)
{
    int64_t n = wk->n, K = wk->K;
    const int32_t *codes = wk->codes;
    int64_t *a = wk->bounds;                     /* a[i] = #{t : codes[t] < i}, [K + 1] */
    double *c = wk->c64, *S = wk->sums, *m = wk->cnts, *gain = wk->gain, *cost = wk->cost;
    int32_t *cut = wk->cut, *part = wk->part;
    for (int64_t i = 0; i <= K; i++)
        a[i] = 0;
    for (int64_t t = 0; t < n; t++)
        a[codes[t] + 1]++;
    for (int64_t i = 1; i <= K; i++)
        a[i] += a[i - 1];
    for (int64_t i = 0; i < K; i++) {
        m[i] = (double)(a[i + 1] - a[i]);
        S[i] = P[a[i + 1]] - P[a[i]];
        gain[i] = -INFINITY;
        cut[i] = 0;
    }
    for (int64_t t = 1; t < n; t++) {            /* a cut before t, inside t's cluster */
        int32_t j = codes[t];
        if (codes[t - 1] != j)
            continue;
        int64_t lo = a[j], hi = a[j + 1];
        double g = cb_between(P[t] - P[lo], (double)(t - lo), P[hi] - P[t], (double)(hi - t));
        if (g > gain[j]) {
            gain[j] = g;
            cut[j] = (int32_t)t;
        }
    }
    for (int64_t i = 0; i < K; i++) {
        if (m[i] == 0.0) {
            cost[i] = 0.0;
            part[i] = (int32_t)i;
            continue;
        }
        double left = INFINITY, right = INFINITY;
        if (i > 0 && m[i - 1] > 0.0)
            left = cb_between(S[i], m[i], S[i - 1], m[i - 1]);
        if (i < K - 1 && m[i + 1] > 0.0)
            right = cb_between(S[i], m[i], S[i + 1], m[i + 1]);
        cost[i] = right < left ? right : left;
        part[i] = (int32_t)(right < left ? i + 1 : i - 1);
    }
    double best = -INFINITY;
    int64_t bi = 0, bj = 0;
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            if (j == i || j == part[i])
                continue;
            double v = gain[j] - cost[i];
            if (v > best) {
                best = v;
                bi = i;
                bj = j;
            }
        }
    if (!(best > 0.0))
        return 0;
    int64_t q = part[bi];
    if (m[bi] > 0.0)
        c[q] = (S[bi] + S[q]) / (m[bi] + m[q]);
    int64_t lo = a[bj], hi = a[bj + 1], tc = cut[bj];
    c[bi] = (P[hi] - P[tc]) / (double)(hi - tc);
    c[bj] = (P[tc] - P[lo]) / (double)(tc - lo);
    CB_INSERTION_SORT(double, c, K);
    return 1;
}

/* Lloyd's assignment of the sorted row wk->xs to wk->c64 into wk->codes: #{i : x > mid_i};
 * 1 when it differs from wk->prev.  The midpoints are sorted in practice (a cluster's mean
 * lies between its midpoints, an empty cluster keeps its centroid), and then, the row being
 * sorted, one merge-like sweep counts them in O(n + K); a rounding that unsorts them takes
 * the plain count. */
static int cb_lloyd_assign(cb_work *wk)
{
    int64_t n = wk->n, K = wk->K;
    const double *xs = wk->xs, *c = wk->c64;
    double mids[16];
    int sorted = 1;
    for (int64_t i = 1; i < K; i++) {
        mids[i - 1] = (c[i - 1] + c[i]) * 0.5;
        sorted &= i == 1 || mids[i - 2] <= mids[i - 1];
    }
    int moved = 0;
    int32_t code = 0;
    for (int64_t t = 0; t < n; t++) {
        if (sorted) {
            while (code < K - 1 && xs[t] > mids[code])
                code++;
        } else {
            code = 0;
            for (int64_t i = 0; i < K - 1; i++)
                code += xs[t] > mids[i];
        }
        wk->codes[t] = code;
        moved |= code != wk->prev[t];
    }
    return moved;
}

/* qe4.codebook.lloyd_centroids for the sorted row wk->xs [n] (prefix sums in wk->P1) */
static void cb_row_lloyd(cb_work *wk, int64_t max_iter)
{
    int64_t n = wk->n, K = wk->K;
    const double *xs = wk->xs;
    double *c = wk->c64;
    for (int64_t i = 0; i < K; i++)
        c[i] = xs[((2 * i + 1) * n) / (2 * K)];
    cb_prefix(xs, n, wk->P1);
    for (int64_t t = 0; t < n; t++)
        wk->prev[t] = -1;
    for (int64_t it = 0; it < max_iter; it++) {
        if (!cb_lloyd_assign(wk)) {              /* Lloyd converged: move a centroid */
            if (!cb_relocate(wk, wk->P1))
                break;
            cb_lloyd_assign(wk);
        }
        for (int64_t i = 0; i < K; i++)
            wk->sums[i] = wk->cnts[i] = 0.0;
        for (int64_t t = 0; t < n; t++) {
            wk->prev[t] = wk->codes[t];
            wk->sums[wk->codes[t]] += xs[t];
            wk->cnts[wk->codes[t]] += 1.0;
        }
        for (int64_t i = 0; i < K; i++)
            if (wk->cnts[i] > 0)
                c[i] = wk->sums[i] / wk->cnts[i];
    }
}

/* ------------------------------------------------------------------ two-tier bins */

#define CB_SLOTS (1 << 19)

/* Slot of a value's bin key (qe4.codebook.bin_keys: float32 bits rounded to 11 significant
 * bits, +0.0 for zeros): the key's 19 high bits, mapped so that slot order is value order. */
static inline int32_t cb_slot(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x0FFFu + ((u >> 13) & 1u)) & 0xFFFFE000u;
    if ((u & 0x7FFFFFFFu) == 0)
        u = 0;                                   /* -0.0 -> +0.0 */
    uint32_t t = u >> 13;
    return (int32_t)((t & 0x40000u) ? 0x3FFFFu - (t & 0x3FFFFu) : 0x40000u + t);
}

static inline float cb_slot_key(int32_t slot)
{
    uint32_t t = slot >= 0x40000 ? (uint32_t)slot - 0x40000u : 0x40000u | (0x3FFFFu - (uint32_t)slot);
    uint32_t u = t << 13;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* qe4.codebook.group_points for the rows `rows` [m] (ascending) of x [., dim]: the binned
 * points in key order into s, q, w (capacity >= min(m * dim, CB_SLOTS)); returns n_bins.
 * rank: scratch int32 [CB_SLOTS], all -1 on entry and on return. */
static int64_t cb_group_points(const float *x, int64_t dim, const int64_t *rows, int64_t m,
                               int32_t *rank, double *s, double *q, double *w, double *shift)
{
    int64_t nb = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < dim; j++)
            rank[cb_slot(x[rows[i] * dim + j])] = 0;       /* mark */
    for (int32_t t = 0; t < CB_SLOTS; t++)
        if (rank[t] == 0)
            rank[t] = (int32_t)(nb++ + 1);                 /* 1-based until the shift is known */
    int32_t mid_slot = 0;
    for (int32_t t = 0; t < CB_SLOTS; t++)
        if (rank[t] == nb / 2 + 1) {
            mid_slot = t;
            break;
        }
    double sh = (double)cb_slot_key(mid_slot);
    for (int64_t b = 0; b < nb; b++)
        s[b] = q[b] = w[b] = 0.0;
    for (int64_t i = 0; i < m; i++) {
        const float *row = x + rows[i] * dim;
        for (int64_t j = 0; j < dim; j++) {
            int64_t b = rank[cb_slot(row[j])] - 1;
            double y = (double)row[j] - sh;
            s[b] += y;
            q[b] += y * y;
            w[b] += 1.0;
        }
    }
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < dim; j++)
            rank[cb_slot(x[rows[i] * dim + j])] = -1;
    *shift = sh;
    return nb;
}

/* ------------------------------------------------------------------ codes and rows */

/* The K - 1 midpoints of sorted float32 cents [K] (qe4.codebook.assign_codes, float64). */
static inline void cb_mids(const float *cents, int K, double *mids)
{
    for (int i = 1; i < K; i++)
        mids[i - 1] = ((double)cents[i - 1] + (double)cents[i]) * 0.5;
}

/* The code of v: #{mids < v}, by binary search (mids sorted; K a power of two). */
static inline int cb_code(double v, const double *mids, int K)
{
    int code = 0;
    for (int step = K / 2; step >= 1; step /= 2)
        if (v > mids[code + step - 1])
            code += step;
    return code;
}

/* qe4.codebook.assign_codes + pack_codes for one row: sorted float32 cents [K]. */
static void cb_assign_pack(const float *x, int64_t dim, const float *cents, int K, int bits,
                           uint8_t *out)
{
    double mids[16];
    cb_mids(cents, K, mids);
    int64_t nb = (dim * bits + 7) / 8;
    memset(out, 0, (size_t)nb);
    int epb = 8 / bits;
    for (int64_t j = 0; j < dim; j++) {
        int code = cb_code((double)x[j], mids, K);
        out[j / epb] |= (uint8_t)(code << ((j % epb) * bits));
    }
}

/* Squared error of coding x [dim] with sorted cents [K], double, summed over j ascending
 * (each product rounded: -ffp-contract=off); stops early, returning a partial sum, once the
 * sum reaches `stop`: sums of squares never fall, so that codebook cannot be strictly
 * better. */
static double cb_book_error(const float *x, int64_t dim, const float *cents, int K, double stop)
{
    double mids[16], err = 0.0;
    cb_mids(cents, K, mids);
    for (int64_t j = 0; j < dim && err < stop; j++) {
        double d = (double)x[j] - (double)cents[cb_code((double)x[j], mids, K)];
        err += d * d;
    }
    return err;
}

/* qe4.codebook.best_books for one row: the first of the n_books sorted codebooks books
 * [n_books, K] with the least error (cb_book_error), books tried in ascending order, so a
 * later book wins only when strictly better (ties to the lower index). */
static int64_t cb_best_book(const float *x, int64_t dim, const float *books, int64_t n_books,
                            int K)
{
    int64_t arg = 0;
    double best = cb_book_error(x, dim, books, K, INFINITY);
    for (int64_t g = 1; g < n_books; g++) {
        double err = cb_book_error(x, dim, books + g * K, K, best);
        if (err < best) {
            best = err;
            arg = g;
        }
    }
    return arg;
}

/* Fit, store and encode one row of a "codebook" table.  Row = [codes][K centroids].
 * method QE4_KMEANS (Lloyd) or QE4_KMEANS_OPTIMAL (checked by cb_check: any other code leaves
 * the centroids unset, never runs another method). */
static void cb_encode_row(cb_work *wk, const float *x, int method, int64_t max_iter, int bits,
                          int f16, const double *inv, uint8_t *row)
{
    int64_t n = wk->n, K = wk->K;
    cb_sort_row(x, n, wk->xs);
    switch (method) {
    case QE4_KMEANS:
        cb_row_lloyd(wk, max_iter);
        break;
    case QE4_KMEANS_OPTIMAL:
        cb_row_optimal(wk, inv);
        break;
    default:
        return;
    }
    for (int64_t i = 0; i < K; i++)
        wk->cents[i] = cb_store(wk->c64[i], f16);
    cb_sort_floats(wk->cents, (int)K);
    int64_t nb = (n * bits + 7) / 8;
    cb_assign_pack(x, n, wk->cents, (int)K, bits, row);
    uint8_t *dst = row + nb;
    for (int64_t i = 0; i < K; i++) {
        if (f16) {
            uint16_t h = qe4_float_to_half(wk->cents[i]);
            memcpy(dst + 2 * i, &h, 2);
        } else {
            memcpy(dst + 4 * i, &wk->cents[i], 4);
        }
    }
}

/* The K float32 centroids of row r (layout QE4_LAYOUT_CODEBOOK: in the row;
 * QE4_LAYOUT_TWO_TIER: books[gid] with the id after the codes, id_bytes 1 or 2). */
static inline const float *cb_row_cents(const uint8_t *row, int64_t code_bytes, int layout,
                                        int f16, int K, int id_bytes, const float *books,
                                        float *tmp)
{
    const uint8_t *p = row + code_bytes;
    if (layout == QE4_LAYOUT_TWO_TIER) {
        int64_t g = id_bytes == 1 ? p[0] : (int64_t)p[0] | ((int64_t)p[1] << 8);
        return books + g * K;
    }
    if (f16) {
        for (int i = 0; i < K; i++)
            tmp[i] = qe4_load_f16(p + 2 * i);
    } else {
        memcpy(tmp, p, (size_t)K * 4);
    }
    return tmp;
}

/* values of one row: out[j] = cents[code_j] (bits 2 or 4, see cb_check) */
static inline void cb_row_values(const uint8_t *row, int64_t dim, int bits, const float *cents,
                                 float *out)
{
    int64_t j = 0;
    switch (bits) {
    case 4:
        for (; j + 1 < dim; j += 2) {
            uint8_t b = row[j >> 1];
            out[j] = cents[b & 15];
            out[j + 1] = cents[b >> 4];
        }
        if (j < dim)
            out[j] = cents[row[j >> 1] & 15];
        break;
    case 2:
        for (; j < dim; j++)
            out[j] = cents[(row[j >> 2] >> ((j & 3) * 2)) & 3];
        break;
    default:
        break;
    }
}

#if QE4_X86

/* AVX2 + FMA + F16C path of cb_bag for 4-bit rows (SIMD level avx2 and above).
 * Each lane does the scalar path's operation on its element (an exact table lookup, then
 * one IEEE add or fma), so the bytes are those of the scalar loop. */
QE4_TARGET_AVX2
static int cb_bag4_avx2(const uint8_t *data, int64_t row_bytes, int64_t code_bytes,
                        int64_t dim, int layout, int f16, int id_bytes, const float *books,
                        int64_t n_groups, const int64_t *idx, int64_t n_idx, int64_t p0,
                        int64_t p1, const float *weights, float *acc)
{
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i fifteen = _mm256_set1_epi32(15), seven = _mm256_set1_epi32(7);
    int64_t d8 = dim & ~(int64_t)7;
    for (int64_t p = p0; p < p1; p++) {
        if (p + QE4_PREFETCH < n_idx)   /* also across bags */
            qe4_prefetch_row(data + idx[p + QE4_PREFETCH] * row_bytes, row_bytes);
        const uint8_t *row = data + idx[p] * row_bytes;
        const uint8_t *cp = row + code_bytes;
        __m256 lo, hi;
        float c[16];
        if (layout == QE4_LAYOUT_TWO_TIER) {
            int64_t g = id_bytes == 1 ? cp[0] : (int64_t)cp[0] | ((int64_t)cp[1] << 8);
            if (g >= n_groups)
                return 1;
            lo = _mm256_loadu_ps(books + 16 * g);
            hi = _mm256_loadu_ps(books + 16 * g + 8);
        } else if (f16) {
            lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)cp));
            hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(cp + 16)));
        } else {
            lo = _mm256_loadu_ps((const float *)cp);
            hi = _mm256_loadu_ps((const float *)(cp + 32));
        }
        _mm256_storeu_ps(c, lo);
        _mm256_storeu_ps(c + 8, hi);
        __m256 w = _mm256_set1_ps(weights ? weights[p] : 1.0f);
        int64_t j = 0;
        for (; j < d8; j += 8) {
            uint32_t packed;
            memcpy(&packed, row + j / 2, 4);
            __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)packed), shifts),
                                         fifteen);
            __m256 vlo = _mm256_permutevar8x32_ps(lo, q);
            __m256 vhi = _mm256_permutevar8x32_ps(hi, q);
            __m256 v = _mm256_blendv_ps(vlo, vhi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(q, seven)));
            __m256 a = _mm256_loadu_ps(acc + j);
            a = weights ? _mm256_fmadd_ps(w, v, a) : _mm256_add_ps(a, v);
            _mm256_storeu_ps(acc + j, a);
        }
        for (; j < dim; j++) {
            float v = c[(row[j >> 1] >> ((j & 1) * 4)) & 15];
            acc[j] = weights ? fmaf(weights[p], v, acc[j]) : acc[j] + v;
        }
    }
    return 0;
}

/* AVX-512F path of cb_bag for 4-bit rows with dim >= 32 (SIMD level avx512).  The row's 16
 * centroids ARE the vpermps table: each code byte is widened to a dword lane once, vpermps
 * reads the low 4 bits of a lane (the low nibble = an even column) and, after a shift, the
 * high nibble (the next, odd column).  Columns go in blocks of 64 (then one of 32) held in
 * registers across the bag's rows; even and odd columns sit in separate accumulators,
 * interleaved back at the store.  Per element this is the scalar path's operation (exact
 * table lookup, then fma(w, c, acc) or acc + c, rows in order), so the bytes are the same. */
#define CB_AVX512 QE4_TARGET_AVX512

/* The row's 16 centroids as one vector (layouts as in cb_row_cents); 1 for a bad group id. */
CB_AVX512 static inline int cb_cents16_avx512(const uint8_t *cp, int layout, int f16,
                                              int id_bytes, const float *books,
                                              int64_t n_groups, __m512 *c)
{
    if (layout == QE4_LAYOUT_TWO_TIER) {
        int64_t g = id_bytes == 1 ? cp[0] : (int64_t)cp[0] | ((int64_t)cp[1] << 8);
        if (g >= n_groups)
            return 1;
        *c = _mm512_loadu_ps(books + 16 * g);
    } else if (f16) {
        *c = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)cp));
    } else {
        *c = _mm512_loadu_ps((const float *)cp);
    }
    return 0;
}

/* columns j0 .. j0 + 32 * (1 + wide) of acc; prefetch: ask for later rows (first block only) */
CB_AVX512 static inline int cb_block_avx512_t(const uint8_t *data, int64_t row_bytes,
                                              int64_t code_bytes, int layout, int f16,
                                              int id_bytes, const float *books, int64_t n_groups,
                                              const int64_t *idx, int64_t n_idx, int64_t p0,
                                              int64_t p1, const float *weights, int64_t j0,
                                              int prefetch, float *acc, const int weighted,
                                              const int wide)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t p = p0; p < p1; p++) {
        if (prefetch && p + QE4_PREFETCH < n_idx)   /* also across bags */
            qe4_prefetch_row(data + idx[p + QE4_PREFETCH] * row_bytes, row_bytes);
        const uint8_t *row = data + idx[p] * row_bytes;
        __m512 c;
        if (cb_cents16_avx512(row + code_bytes, layout, f16, id_bytes, books, n_groups, &c))
            return 1;
        __m512 w = _mm512_set1_ps(weighted ? weights[p] : 1.0f);
        __m512i x0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + j0 / 2)));
        __m512 v0 = _mm512_permutexvar_ps(x0, c);
        __m512 v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(x0, 4), c);
        a0 = weighted ? _mm512_fmadd_ps(w, v0, a0) : _mm512_add_ps(a0, v0);
        a1 = weighted ? _mm512_fmadd_ps(w, v1, a1) : _mm512_add_ps(a1, v1);
        if (wide) {
            __m128i b1 = _mm_loadu_si128((const __m128i *)(row + j0 / 2 + 16));
            __m512i x1 = _mm512_cvtepu8_epi32(b1);
            __m512 v2 = _mm512_permutexvar_ps(x1, c);
            __m512 v3 = _mm512_permutexvar_ps(_mm512_srli_epi32(x1, 4), c);
            a2 = weighted ? _mm512_fmadd_ps(w, v2, a2) : _mm512_add_ps(a2, v2);
            a3 = weighted ? _mm512_fmadd_ps(w, v3, a3) : _mm512_add_ps(a3, v3);
        }
    }
    /* column 2i of a group of 32 is lane i of the even accumulator, 2i + 1 lane i of the odd */
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19,
                                         4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27,
                                         12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(acc + j0, _mm512_permutex2var_ps(a0, lo, a1));
    _mm512_storeu_ps(acc + j0 + 16, _mm512_permutex2var_ps(a0, hi, a1));
    if (wide) {
        _mm512_storeu_ps(acc + j0 + 32, _mm512_permutex2var_ps(a2, lo, a3));
        _mm512_storeu_ps(acc + j0 + 48, _mm512_permutex2var_ps(a2, hi, a3));
    }
    return 0;
}

/* All columns of a bag in blocks of 64 and 32; returns the first column left (< 32 remain)
 * or -1 for a bad group id. */
CB_AVX512 static int64_t cb_bag4_avx512(const uint8_t *data, int64_t row_bytes,
                                        int64_t code_bytes, int64_t dim, int layout, int f16,
                                        int id_bytes, const float *books, int64_t n_groups,
                                        const int64_t *idx, int64_t n_idx, int64_t p0, int64_t p1,
                                        const float *weights, float *acc)
{
    int64_t j0 = 0;
    int bad = 0;
    for (; j0 + 32 <= dim && !bad; j0 += j0 + 64 <= dim ? 64 : 32) {
        int wide = j0 + 64 <= dim, pf = j0 == 0;
#define CB_BLOCK(W, WIDE)                                                                  \
        cb_block_avx512_t(data, row_bytes, code_bytes, layout, f16, id_bytes, books, n_groups, \
                          idx, n_idx, p0, p1, weights, j0, pf, acc, W, WIDE)
        if (weights)
            bad = wide ? CB_BLOCK(1, 1) : CB_BLOCK(1, 0);
        else
            bad = wide ? CB_BLOCK(0, 1) : CB_BLOCK(0, 0);
#undef CB_BLOCK
    }
    return bad ? -1 : j0;
}

#endif

/* One bag: acc = fma(w, c[code], acc + 0) (unweighted: acc + c, the same bits since acc is
 * never -0.0), mean: acc * (1.0f / len).  vals: scratch [dim].  Returns 1 (and leaves acc
 * unfinished) when a two-tier row's group id is >= n_groups, else 0.
 * simd: a QE4_SIMD_* level, checked by cb_check. */
static int cb_bag(const uint8_t *data, int64_t row_bytes, int64_t code_bytes, int64_t dim,
                  int bits, int layout, int f16, int id_bytes, const float *books, int64_t n_groups,
                  const int64_t *idx, int64_t n_idx, int64_t p0, int64_t p1, const float *weights,
                  int mean, float *acc, float *vals, int simd)
{
    int K = 1 << bits;
    int64_t len = p1 - p0;
    float tmp[16];
    for (int64_t j = 0; j < dim; j++)
        acc[j] = 0.0f;
#if QE4_X86
    if (simd >= QE4_SIMD_AVX512 && bits == 4 && dim >= 32) {
        int64_t j0 = cb_bag4_avx512(data, row_bytes, code_bytes, dim, layout, f16, id_bytes,
                                    books, n_groups, idx, n_idx, p0, p1, weights, acc);
        if (j0 < 0)
            return 1;
        for (int64_t p = p0; j0 < dim && p < p1; p++) {   /* the < 32 columns left */
            const uint8_t *row = data + idx[p] * row_bytes;  /* group ids checked above */
            const float *c = cb_row_cents(row, code_bytes, layout, f16, K, id_bytes, books, tmp);
            for (int64_t j = j0; j < dim; j++) {
                float v = c[(row[j >> 1] >> ((j & 1) * 4)) & 15];
                acc[j] = weights ? fmaf(weights[p], v, acc[j]) : acc[j] + v;
            }
        }
        p0 = p1;
    }
    if (simd >= QE4_SIMD_AVX2 && bits == 4) {
        if (cb_bag4_avx2(data, row_bytes, code_bytes, dim, layout, f16, id_bytes, books,
                         n_groups, idx, n_idx, p0, p1, weights, acc))
            return 1;
        p0 = p1;
    }
#endif
    for (int64_t p = p0; p < p1; p++) {
        if (p + QE4_PREFETCH < n_idx)   /* rows are random: ask for a later row's lines early */
            qe4_prefetch_row(data + idx[p + QE4_PREFETCH] * row_bytes, row_bytes);
        const uint8_t *row = data + idx[p] * row_bytes;
        if (layout == QE4_LAYOUT_TWO_TIER) {
            const uint8_t *cp = row + code_bytes;
            if ((id_bytes == 1 ? cp[0] : (int64_t)cp[0] | ((int64_t)cp[1] << 8)) >= n_groups)
                return 1;
        }
        const float *c = cb_row_cents(row, code_bytes, layout, f16, K, id_bytes, books, tmp);
        cb_row_values(row, dim, bits, c, vals);
        if (weights) {
            float w = weights[p];
            for (int64_t j = 0; j < dim; j++)
                acc[j] = fmaf(w, vals[j], acc[j]);
        } else {
            for (int64_t j = 0; j < dim; j++)
                acc[j] = acc[j] + vals[j];
        }
    }
    if (mean && len > 0) {
        float r = 1.0f / (float)len;
        for (int64_t j = 0; j < dim; j++)
            acc[j] = acc[j] * r;
    }
    return 0;
}

#endif
