"""qe4_fast's newer lookups against its float32 bag: float16/bfloat16 outputs, gathers,
max bags and one batched call over several tables (GitHub issue 11, item 3).

Target: float16/bfloat16 outputs and the gather at >= 0.9x the float32 bag's rows/s
(rows read per second: a bag of 40 indices reads 40 rows, a gather of n indices n rows),
with the same threads.  Every output is checked byte for byte against the reference on a
slice before anything is timed.  Times are the best over --rounds interleaved rounds (each
round calls every contender once, so noise on a shared machine hits them alike); only the
ratios in one run mean anything.

Table: N(0,1) float32 [rows, 64] quantized 4-bit minmax (torch's fused rows).  Bags:
2048 bags x 40 indices, uniform or Zipf(1) over the rows (bench_fast.py's inputs).  The
gather reads the same 81,920 indices.  Batched: 8 tables of rows / 8 rows (4-bit and 2-bit,
dims 64 and 32 alternating), 2048 bags of 40 per table, one ``embedding_bags`` call
against a Python loop of ``embedding_bag`` calls and a concatenate.

    python bench/bench_lookups.py             # 1,000,000 rows, 300 rounds (~1.5 min)
    python bench/bench_lookups.py --quick     # 100,000 rows, 50 rounds

Writes the table to bench/results/bench_lookups.txt as well.
"""

import argparse
import os

import numpy as np

import _timing  # noqa: F401  (first: this source tree's qe4 and qe4_fast)
from _timing import HERE, best_interleaved, machine_line, write_results
from bench_fast import BAG_LEN, N_BAGS, bag_inputs, fmt_t, same_bytes
import qe4
import qe4_fast



def check(fast_call, ref_call, what):
    same_bytes(fast_call(), ref_call(), what)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="100,000 rows, 50 rounds")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_lookups.txt"))
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 100_000, 50
    rows, rounds = args.rows, args.rounds
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    table = qe4_fast.quantize(x, 4, "minmax")
    small = qe4.QuantizedTable(table.data[:2000].copy(), bits=4, dim=64)
    lines = [f"bench_lookups: {rows:,} x 64 4-bit table, {N_BAGS} bags x {BAG_LEN}, "
             f"best of {rounds} interleaved rounds; {machine_line()}",
             "rows/s = rows read per second; ratio = rows/s over the float32 sum bag's "
             "(same threads, same indices)", ""]
    header = f"{'case':<34} {'threads':>7} {'time':>12} {'Mrows/s':>9} {'ratio':>7}"
    for zipf in (False, True):
        idx, off, _ = bag_inputs(rows, zipf)
        n = idx.size
        # exactness first, on the first 2,000 rows
        sidx = idx % 2000
        for od in qe4.bag.OUT_DTYPES:
            for mode in ("sum", "max"):
                check(lambda: qe4_fast.embedding_bag(small, sidx, off, mode=mode, out_dtype=od),
                      lambda: qe4.embedding_bag(small, sidx, off, mode=mode, out_dtype=od),
                      f"{mode} bag {od}")
            check(lambda: qe4_fast.embedding(small, sidx, out_dtype=od),
                  lambda: qe4.embedding(small, sidx, out_dtype=od), f"gather {od}")
        lines += [f"-- {'Zipf(1)' if zipf else 'uniform'} indices", header]
        for threads in (1, None):
            cases = [("bag sum float32", lambda: qe4_fast.embedding_bag(
                          table, idx, off, n_threads=threads))]
            for od in ("float16", "bfloat16"):
                cases.append((f"bag sum {od}", lambda od=od: qe4_fast.embedding_bag(
                    table, idx, off, out_dtype=od, n_threads=threads)))
            for od in qe4.bag.OUT_DTYPES:
                cases.append((f"gather {od}", lambda od=od: qe4_fast.embedding(
                    table, idx, out_dtype=od, n_threads=threads)))
            cases.append(("bag max float32", lambda: qe4_fast.embedding_bag(
                table, idx, off, mode="max", n_threads=threads)))
            times, _ = best_interleaved([fn for _, fn in cases], rounds)
            base = n / times[0]
            for (name, _), t in zip(cases, times):
                lines.append(f"{name:<34} {threads or 'all':>7} {fmt_t(t):>12} "
                             f"{n / t / 1e6:9.1f} {n / t / base:6.2f}x")
        lines.append("")
    # several tables: one call against a loop of single-table calls
    n_tables = 8
    tables = [qe4_fast.quantize(x[k::n_tables, :64 if k % 2 == 0 else 32], 4 if k % 2 == 0 else 2,
                                "minmax") for k in range(n_tables)]
    parts = [bag_inputs(t.n_rows, False, seed=k)[0] for k, t in enumerate(tables)]
    per = N_BAGS * BAG_LEN
    indices = np.concatenate(parts)
    offsets = np.arange(n_tables * N_BAGS, dtype=np.int64) * BAG_LEN
    one_off = np.arange(N_BAGS, dtype=np.int64) * BAG_LEN
    check(lambda: qe4_fast.embedding_bags(tables, indices, offsets),
          lambda: np.concatenate([qe4_fast.embedding_bag(t, parts[k], one_off)
                                  for k, t in enumerate(tables)], axis=1), "batched")
    lines += [f"-- {n_tables} tables (4-bit dim 64 and 2-bit dim 32 alternating, "
              f"{tables[0].n_rows:,} rows each), uniform indices", header]
    for threads in (1, None):
        cases = [("loop of embedding_bag + concat", lambda: np.concatenate(
                     [qe4_fast.embedding_bag(t, parts[k], one_off, n_threads=threads)
                      for k, t in enumerate(tables)], axis=1)),
                 ("embedding_bags (one call)", lambda: qe4_fast.embedding_bags(
                     tables, indices, offsets, n_threads=threads)),
                 ("embedding_bags float16", lambda: qe4_fast.embedding_bags(
                     tables, indices, offsets, out_dtype="float16", n_threads=threads))]
        times, _ = best_interleaved([fn for _, fn in cases], rounds)
        base = n_tables * per / times[0]
        for (name, _), t in zip(cases, times):
            lines.append(f"{name:<34} {threads or 'all':>7} {fmt_t(t):>12} "
                         f"{n_tables * per / t / 1e6:9.1f} {n_tables * per / t / base:6.2f}x")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_results(text, args.out)


if __name__ == "__main__":
    main()
