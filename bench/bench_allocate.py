"""qe4.allocate: per-row errors at the rungs' quantize speed, and the solver on 10M rows.

1. Exactness first: on the first --check-rows rows, the reference and the compiled
   engine give the same per-row errors and the same choices (bytes compared).
2. Per-row errors: N(0,1) float32 [--rows x 64] (seed 0), every rung of the default
   ladder.  For each rung: qe4_fast.quantize (the rung's own speed) against the time
   qe4.allocate.rung_errors spends on that rung (quantize + reconstruct + squared
   error), both at --threads threads.  Target: errors at the rungs' quantize speed.
3. The solver: --solve-rows rows (10M) x 6 rungs, given the per-row errors (part 2's
   errors tiled, each copy with its own Zipf(1.05) weights over a random order, so
   every row's slopes differ), budgets 3.0 bpw and 4.64 bpw (the bytes of uniform
   4-bit greedy at dim 50 scale); best of --repeat.  Target: under 10 s on 2 threads.
4. Quality, on part 2's table with Zipf(1.05) weights: weighted error of the
   allocation against uniform 4-bit greedy at the same bytes (every map byte counted).

    python bench/bench_allocate.py [--rows 1000000] [--solve-rows 10000000] [--threads 2]
        [--check-rows 20000] [--repeat 3]
    python bench/bench_allocate.py --quick     # 100,000 rows, 1,000,000 solver rows

Prints the tables and writes them to bench/results/bench_allocate.txt.
"""

import argparse
import os

import numpy as np

import _timing  # noqa: F401  (first: this source tree's qe4 and qe4_fast)
from _timing import RESULTS, best_of, machine_line, write_results
import qe4
import qe4_fast
from qe4 import allocate as A

DIM = 64


def zipf(n, rng, exponent=1.05):
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w[rng.permutation(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--solve-rows", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ladder", default=None,
                    help="comma-separated rungs (default: qe4's; the issue's 6-rung target: "
                         "pruned,mse/2,mse/4,mse/8,float16,float32)")
    ap.add_argument("--quick", action="store_true",
                    help="100,000 rows, 1,000,000 solver rows, 5,000 check rows, best of 1")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_allocate.txt"))
    args = ap.parse_args()
    if args.quick:
        args.rows, args.solve_rows = min(args.rows, 100_000), min(args.solve_rows, 1_000_000)
        args.check_rows, args.repeat = min(args.check_rows, 5_000), 1
    nt = args.threads
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, DIM), dtype=np.float32)
    rungs = A.ladder(args.ladder.split(",") if args.ladder else None)
    say(f"qe4.allocate bench: {args.rows:,} x {DIM} N(0,1), ladder {[r.name for r in rungs]}, "
        f"{nt} threads; {machine_line()}")

    # 1. exactness
    sub = x[:args.check_rows]
    w_sub = zipf(len(sub), rng)
    e_ref = A.rung_errors(sub, rungs, engine="reference")
    e_fast = A.rung_errors(sub, rungs, n_threads=nt)
    assert e_ref.tobytes() == e_fast.tobytes(), "per-row errors differ between the engines"
    a_ref = A.allocate(sub, "3.0bpw", weights=w_sub, errors=e_ref, ladder=rungs,
                       engine="reference")
    a_fast = A.allocate(sub, "3.0bpw", weights=w_sub, errors=e_ref, ladder=rungs, n_threads=nt)
    assert a_ref.choices[0].tobytes() == a_fast.choices[0].tobytes(), "choices differ"
    say(f"exact: reference and qe4_fast errors and choices equal on {len(sub):,} rows")

    # 2. per-row errors at quantize speed
    say("")
    say(f"{'rung':<10} {'quantize s':>11} {'errors s':>9} {'errors/quantize':>16}")
    total_q = total_e = 0.0
    errors = np.empty((args.rows, len(rungs)))
    for k, rung in enumerate(rungs):
        if rung.kind == "quantized":
            tq, _ = best_of(lambda: qe4_fast.quantize(x, rung.bits, rung.method, n_threads=nt))
        else:
            tq, _ = best_of(lambda: rung.quantize(x, "fast", nt))
        te, col = best_of(lambda: A.rung_errors(x, [rung], n_threads=nt))
        errors[:, k] = col[:, 0]
        total_q += tq
        total_e += te
        say(f"{rung.name:<10} {tq:>11.3f} {te:>9.3f} {te / max(tq, 1e-9):>15.2f}x")
    say(f"{'all':<10} {total_q:>11.3f} {total_e:>9.3f} {total_e / total_q:>15.2f}x")

    # 3. the solver on --solve-rows rows
    copies = -(-args.solve_rows // args.rows)
    big = np.tile(errors, (copies, 1))[:args.solve_rows]
    norms = np.tile(errors[:, 0], copies)[:args.solve_rows]   # pruned error = ||x||^2
    w = zipf(args.solve_rows, rng)
    say("")
    say(f"solver: {args.solve_rows:,} rows x {len(rungs)} rungs, errors given, best of "
        f"{args.repeat}")
    say(f"{'budget':<9} {'seconds':>8} {'bytes':>14} {'bpw':>7} {'weighted error':>15}")
    for label, bpw in (("3.0bpw", 3.0), ("4.64bpw", 4.64)):
        budget = A.parse_budget(f"{bpw}bpw", args.solve_rows * DIM)
        t, a = best_of(lambda: A.solve([big], [w], [norms], [DIM], budget, rungs, n_threads=nt),
                     args.repeat)
        say(f"{label:<9} {t:>8.2f} {a.nbytes:>14,} {a.bpw:>7.3f} {a.error:>15.4e}")
    del big

    # 4. quality at the bytes of uniform 4-bit greedy
    wq = zipf(args.rows, np.random.default_rng(1))
    t4 = qe4_fast.quantize(x, 4, "greedy", n_threads=nt)
    uni = qe4.table_error(x, qe4_fast.dequantize(t4, n_threads=nt), wq)
    a = A.allocate(x, t4.nbytes, weights=wq, errors=errors, ladder=rungs, n_threads=nt)
    say("")
    say(f"quality ({args.rows:,} rows, Zipf(1.05) weights): uniform greedy/4 {t4.nbytes:,} B "
        f"weighted error {uni:.4e}; allocation {a.nbytes:,} B {a.error:.4e} "
        f"= {a.error / uni:.3f}x")
    say(a.summary())

    out = write_results("\n".join(lines), args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
