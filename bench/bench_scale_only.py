"""Quantize speed of scale-only groups (grouped, mins="none") against the affine grouped rows.

One run, same process, interleaved rounds (the machine's load hits every contender alike):
qe4_fast quantize rows/s of ``grouped`` bits 4, group 32 with ``mins="none"`` at sub_bits 6 and
8 (levels "nl" when qe4.layouts.SIGNED_LEVELS has its 4-bit table, else "uniform"), and the
uniform signed table at sub_bits 6, against the affine grouped-4 (mins="group", sub_bits 6,
uniform levels), N(0, 1) rows at D = 64 and 256, on 1 and 2 threads.  Each contender's bytes are checked against the NumPy reference on
the first rows before anything is timed.  Prints the load average before and after.

    python bench/bench_scale_only.py [--rows 20000] [--rounds 3]
"""

import argparse

import numpy as np

import _timing as T

import qe4  # noqa: E402
import qe4_fast  # noqa: E402
from qe4 import layouts as L  # noqa: E402

F32 = np.float32


def contenders() -> list[tuple[str, dict[str, object]]]:
    """(name, options) of the compared configurations."""
    nl = L.SIGNED_LEVELS.get("nl") or {}
    levels = "nl" if 4 in nl else "uniform"
    return [("affine grouped-4 (mins=group, sub_bits 6)", {"sub_bits": 6}),
            ("scale-only uniform (mins=none, sub_bits 6)", {"sub_bits": 6, "mins": "none"}),
            (f"scale-only {levels} (mins=none, sub_bits 6)",
             {"sub_bits": 6, "levels": levels, "mins": "none"}),
            (f"scale-only {levels} (mins=none, sub_bits 8)",
             {"sub_bits": 8, "levels": levels, "mins": "none"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(T.machine_line())
    print(T.load_line("before"))
    rng = np.random.default_rng(1)
    for dim in (64, 256):
        x = rng.standard_normal((args.rows, dim)).astype(F32)
        cs = contenders()
        for name, opts in cs:
            T.same_bytes(qe4_fast.quantize(x[:200], 4, "grouped", **opts).data,
                         qe4.quantize(x[:200], 4, "grouped", **opts).data, f"{name}, D={dim}",
                         "bench_scale_only")
        for n_threads in (1, 2):
            fns = [lambda o=opts: qe4_fast.quantize(x, 4, "grouped", n_threads=n_threads, **o)
                   for _, o in cs]
            best, _ = T.best_interleaved(fns, args.rounds)
            base = best[0]
            for (name, _), t in zip(cs, best):
                print(f"D={dim:3d} {n_threads} thread{'s' if n_threads > 1 else ' '}  {name:45s} "
                      f"{args.rows / t / 1e3:8.1f} k rows/s  ({base / t:.2f}x the affine)")
    print(T.load_line("after"))


if __name__ == "__main__":
    main()
