"""Row-update speed of two-tier tables with ``codebooks="keep"`` against the rowwise update.

One run, same process, interleaved rounds (the machine's load hits every contender alike):
``qe4_fast.update_rows`` of a batch of N(0, 1) rows into a 4-bit ``two-tier`` table
(``codebooks="keep"``: each row's best of n_groups codebooks, then its codes; 16 and 256
groups) against the same batch into a 4-bit ``greedy`` (rowwise) table, the update serving
users already have; the NumPy reference's ``codebooks="keep"`` beside them.  D = 64 and 256,
1 and 2 threads.  The bytes of both packages are checked equal before anything is timed.
Prints the load average before and after.

    python bench/bench_update.py [--table-rows 20000] [--batch 2000] [--rounds 3]
"""

import argparse

import numpy as np

import _timing as T

import qe4  # noqa: E402
import qe4_fast  # noqa: E402

F32 = np.float32


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table-rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    return ap.parse_args()


def main() -> None:
    args = arguments()
    print(T.machine_line())
    print(T.load_line("before"))
    rng = np.random.default_rng(1)
    for dim in (64, 256):
        x = rng.standard_normal((args.table_rows, dim)).astype(F32)
        new = rng.standard_normal((args.batch, dim)).astype(F32)
        greedy = qe4_fast.quantize(x, 4, "greedy")
        tiers = {g: qe4_fast.quantize(x, 4, "two-tier", n_groups=g) for g in (16, 256)}
        for g, t in tiers.items():
            ref = qe4.QuantizedTable(np.array(t.data), bits=4, dim=dim, method=t.method,
                                     layout=t.layout, params=t.params, extras=t.extras)
            got = qe4.QuantizedTable(np.array(t.data), bits=4, dim=dim, method=t.method,
                                     layout=t.layout, params=t.params, extras=t.extras)
            qe4.update_rows(ref, 0, new[:200], codebooks="keep")
            qe4_fast.update_rows(got, 0, new[:200], codebooks="keep")
            T.same_bytes(got.data, ref.data, f"keep, {g} groups, D={dim}", "bench_update")
        for n_threads in (1, 2):
            names = ["greedy (rowwise) update", "two-tier keep, 16 groups",
                     "two-tier keep, 256 groups"]
            fns = [lambda: qe4_fast.update_rows(greedy, 0, new, n_threads=n_threads)]
            fns += [lambda t=t: qe4_fast.update_rows(t, 0, new, codebooks="keep",
                                                     n_threads=n_threads) for t in tiers.values()]
            if n_threads == 1:
                names.append("two-tier keep, 16 groups, NumPy reference")
                fns.append(lambda: qe4.update_rows(tiers[16], 0, new, codebooks="keep"))
            best, _ = T.best_interleaved(fns, args.rounds)
            base = best[0]
            for name, t in zip(names, best):
                print(f"D={dim:3d} {n_threads} thread{'s' if n_threads > 1 else ' '}  {name:42s} "
                      f"{args.batch / t / 1e3:8.1f} k rows/s  ({base / t:.2f}x the rowwise update)")
    print(T.load_line("after"))


if __name__ == "__main__":
    main()
