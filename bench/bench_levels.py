"""Non-uniform levels (levels="nl") against uniform ones in the compiled grouped layout:
quantize rows/s and embedding_bag speed, bits=4, group=32, sub_bits=6, N(0, 1) rows.

Checks exactness first (qe4_fast against qe4 on a sample), then prints the times and the
ratio nl / uniform, measured interleaved in one run (best of --rounds).

    python bench/bench_levels.py [--rounds 5] [--threads 1]
"""

import argparse
import os

import numpy as np

import _timing  # noqa: F401  (puts this checkout first on sys.path)
from _timing import best_interleaved

import qe4
import qe4_fast


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    nt = args.threads
    rng = np.random.default_rng(0)
    simd = qe4_fast._simd.SIMD_LEVELS[qe4_fast._simd.LEVEL]
    print(f"load: {os.getloadavg()}, n_threads={nt}, SIMD={simd}")
    for dim, n_rows in ((64, 20000), (256, 5000)):
        x = rng.standard_normal((n_rows, dim)).astype(np.float32)
        opts = {lv: dict(group=32, sub_bits=6, levels=lv) for lv in ("uniform", "nl")}
        for lv, o in opts.items():      # exactness first
            want = qe4.quantize(x[:64], 4, "grouped", **o)
            got = qe4_fast.quantize(x[:64], 4, "grouped", n_threads=nt, **o)
            assert got.data.tobytes() == want.data.tobytes(), lv
        (tu, tn), (qu, qn) = best_interleaved(
            [lambda o=opts[lv]: qe4_fast.quantize(x, 4, "grouped", n_threads=nt, **o)
             for lv in ("uniform", "nl")], args.rounds)
        print(f"dim {dim:3d} quantize: uniform {n_rows / tu:9.0f} rows/s, nl {n_rows / tn:9.0f} "
              f"rows/s, time nl / uniform {tn / tu:.2f}")
        idx = rng.integers(0, n_rows, 200000)
        off = np.arange(0, idx.size, 20)
        w = rng.random(idx.size, dtype=np.float32)
        for mode, pw in (("sum", None), ("weighted", w)):
            for t in (qu, qn):
                want = qe4.embedding_bag(t, idx[:2000], off[:100], per_sample_weights=
                                         None if pw is None else pw[:2000])
                got = qe4_fast.embedding_bag(t, idx[:2000], off[:100], n_threads=nt,
                                             per_sample_weights=None if pw is None else pw[:2000])
                assert got.tobytes() == want.tobytes()
            (bu, bn), _ = best_interleaved(
                [lambda t=t: qe4_fast.embedding_bag(t, idx, off, per_sample_weights=pw,
                                                    n_threads=nt) for t in (qu, qn)],
                args.rounds * 4)
            print(f"dim {dim:3d} bag {mode:8s}: uniform {idx.size / bu / 1e6:6.1f} M lookups/s, "
                  f"nl {idx.size / bn / 1e6:6.1f} M lookups/s, time nl / uniform {bn / bu:.2f}")


if __name__ == "__main__":
    main()
