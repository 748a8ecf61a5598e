"""What the finiteness check of stored scales/biases costs at load (issue 10 F11).

One 1,000,000 x 64 4-bit table (34 MiB file, in the page cache); best of N interleaved
rounds of ``qe4.load(path, mmap=..., check_finite=...)``; prints the times and the ratio
with/without the check, and writes bench/results/bench_load_check.txt.

    python bench/bench_load_check.py [--rounds 15]      (~20 s)
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qe4  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.rows, 64)).astype(np.float32)
    table = qe4.quantize(x, 4, "minmax")
    del x
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.qe4")
        qe4.save(table, path)
        size = os.path.getsize(path)
        cases = [(m, c) for m in (False, True) for c in (False, True)]
        best = {k: float("inf") for k in cases}
        for _ in range(args.rounds):
            for m, c in cases:
                t0 = time.perf_counter()
                qe4.load(path, mmap=m, check_finite=c)
                best[m, c] = min(best[m, c], time.perf_counter() - t0)
    lines = [f"qe4.load of a {args.rows:,} x 64 4-bit table ({size / 2**20:.1f} MiB, page cache), "
             f"best of {args.rounds}",
             f"{'mmap':<6} {'no check ms':>12} {'check ms':>10} {'ratio':>7} {'check alone ms':>15}"]
    for m in (False, True):
        a, b = best[m, False], best[m, True]
        lines.append(f"{str(m):<6} {a * 1e3:>12.2f} {b * 1e3:>10.2f} {b / a:>7.2f} "
                     f"{(b - a) * 1e3:>15.2f}")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "bench_load_check.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
