"""How fast is the NumPy reference?  qe4 (one core) against torch's single-threaded prepack.

Checks bytes first (qe4 == torch for minmax and greedy), then times each method on an
N(0,1) table (default 100,000 x 64, seed 0) and prints seconds and the ratio
torch time / qe4 time (below 1 means the reference is slower, as expected of a spec).

    python bench/bench_reference.py [--rows 100000] [--dim 64]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import qe4


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.rows, args.dim), dtype=np.float32)
    try:
        import torch
        torch.set_num_threads(1)
        w = torch.from_numpy(x)
        peers = {
            "minmax": lambda: torch.ops.quantized.embedding_bag_4bit_prepack(w).numpy(),
            "greedy": lambda: torch.ops.quantized.embedding_bag_4bit_prepack(w, True, 200, 0.16).numpy(),
        }
    except ImportError:
        peers = {}
        print("torch not installed: reporting qe4 times only")
    print(f"table {args.rows} x {args.dim} float32 N(0,1), 4 bits, qe4 reference on one core")
    print(f"{'method':<14}{'qe4 s':>10}{'torch s':>10}{'torch/qe4':>11}  bytes")
    for method in qe4.methods():
        if method in ("exhaustive", "kmeans", "kmeans-optimal", "two-tier") and args.rows > 20_000:
            rows = 20_000   # the oracles are slower: time a slice and say so
        else:
            rows = args.rows
        xs = x[:rows]
        t_q, table = best_of(lambda: qe4.quantize(xs, 4, method), args.repeat)
        check, t_p = "", float("nan")
        if method in peers and rows == args.rows:
            t_p, ref = best_of(peers[method], args.repeat)
            check = "equal" if np.array_equal(ref.view(np.uint8), table.data.view(np.uint8)) else "DIFFER"
        label = method if rows == args.rows else f"{method}[{rows}]"
        print(f"{label:<14}{t_q:>10.3f}{t_p:>10.3f}{t_p / t_q:>11.3f}  {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
