"""Fit the grouped layout's non-uniform level tables (qe4.layouts.LEVELS["nl"]).

Lloyd's alternation on the layout's own step 1: N(0, 1) groups of 32 values (the
grouped presets' group; embedding rows are near-Gaussian within a group), starting from
uniform levels ``0 .. qmax``:

1. each group's float32 (scale, min) of least error on the current table
   (:func:`qe4.mse.mse_params` with ``levels=``: the scan of clipping ranges and the
   least-squares refinement) and its codes (nearest level);
2. each level moves to the weighted mean of the normalized values ``t = (x - min) / scale``
   coded to it, weights ``scale**2`` (so that the step minimizes the error in x units);
3. the table is mapped affinely back to ``level[0] = 0``, ``level[qmax] = qmax`` (scale and
   min absorb any affine map) and symmetrized, ``level[k] = (level[k] + qmax -
   level[qmax - k]) / 2`` (the Gaussian is symmetric: this halves the sampling noise).

With ``--mins none`` it fits the signed tables of scale-only groups
(qe4.layouts.SIGNED_LEVELS["nl"]) the same way on scale-only step 1
(:func:`qe4.grouped.scale_params`, which mirrors the table to the side of each group's
largest value): each level moves to the weighted mean of ``t = x / scale`` coded to it,
the table is rescaled to ``level[0] = -2**(bits - 1)`` (a scale absorbs only a factor) and
is not symmetrized (an asymmetric table is what the mirroring uses), starting from the
uniform ``q - 2**(bits - 1)``.

After ``--rounds`` rounds each level is rounded to a multiple of 1/1024.  The script
prints each table (in 1024ths, as qe4/layouts.py writes them) and the normalized error
of the uniform and the fitted table on fresh N(0, 1) groups (step 1 only: float32 group
parameters, the floor the stored sub-scales then approach).

    python bench/fit_levels.py [--bits 2 3 4 5 6] [--groups 40000] [--rounds 20] [--mins none]

The signed tables were fitted with ``--mins none --groups 20000 --rounds 40``.
"""

import argparse

import numpy as np

import _timing  # noqa: F401  (puts this checkout first on sys.path)

from qe4 import grouped as G  # noqa: E402
from qe4 import mse as MSE  # noqa: E402

F32 = np.float32


def step1(x, levels):
    """Step 1 on a level table: float32 (scale, min) [n] and codes [n, len]."""
    bits = int(np.log2(len(levels)))
    scale, low, inv = MSE.mse_params(x, bits, "float32", levels=levels)
    t = ((x - low[:, None]) * inv[:, None]).astype(F32)
    return scale, low, MSE.level_codes(t, levels)


def error(x, levels):
    scale, low, q = step1(x, levels)
    xh = scale[:, None].astype(np.float64) * levels[q] + low[:, None]
    return float(((x - xh) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


def fit(x, bits, rounds):
    qmax = 2 ** bits - 1
    levels = np.arange(qmax + 1, dtype=np.float64)
    for _ in range(rounds):
        scale, low, q = step1(x, levels.astype(F32))
        t = (x - low[:, None].astype(np.float64)) / np.where(scale > 0, scale, 1.0)[:, None]
        w = np.broadcast_to((scale.astype(np.float64) ** 2)[:, None], x.shape)
        num = np.bincount(q.ravel(), (w * t).ravel(), qmax + 1)
        den = np.bincount(q.ravel(), w.ravel(), qmax + 1)
        new = np.where(den > 0, num / np.where(den > 0, den, 1.0), levels)
        new = (new - new[0]) / (new[-1] - new[0]) * qmax
        levels = (new + qmax - new[::-1]) / 2
    return np.rint(levels * 1024).astype(int)


def signed_step1(x, levels):
    """Scale-only step 1 on a signed table: float32 scales [n] and codes [n, len]."""
    scale = G.scale_params(x, levels)
    inv = np.where(scale != 0, F32(1.0) / np.where(scale != 0, scale, F32(1.0)), F32(0.0))
    return scale, MSE.level_codes((x * inv[:, None]).astype(F32), levels)


def signed_error(x, levels):
    scale, q = signed_step1(x, levels)
    xh = scale[:, None].astype(np.float64) * levels[q]
    return float(((x - xh) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


def signed_fit(x, bits, rounds):
    half = 2 ** (bits - 1)
    levels = np.arange(2 * half, dtype=np.float64) - half
    for _ in range(rounds):
        scale, q = signed_step1(x, levels.astype(F32))
        s = np.where(scale != 0, scale, 1.0).astype(np.float64)[:, None]
        t = x / s
        w = np.broadcast_to(s ** 2, x.shape)
        num = np.bincount(q.ravel(), (w * t).ravel(), 2 * half)
        den = np.bincount(q.ravel(), w.ravel(), 2 * half)
        new = np.sort(np.where(den > 0, num / np.where(den > 0, den, 1.0), levels))
        levels = new / -new[0] * half
    return np.rint(levels * 1024).astype(int)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--groups", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--mins", choices=("group", "none"), default="group")
    args = ap.parse_args()
    train = np.random.default_rng(0).standard_normal((args.groups, 32)).astype(F32)
    test = np.random.default_rng(1).standard_normal((args.groups, 32)).astype(F32)
    for bits in args.bits:
        if args.mins == "none":
            table = signed_fit(train, bits, args.rounds)
            half = 2 ** (bits - 1)
            uniform = signed_error(test, (np.arange(2 * half) - half).astype(F32))
            fitted = signed_error(test, (table / 1024).astype(F32))
            print(f"bits {bits} (mins none): uniform {uniform:.6g}, nl {fitted:.6g} "
                  f"({fitted / uniform:.4f}x)")
            print(f"    {bits}: _in_1024ths({', '.join(map(str, table))}),", flush=True)
            continue
        table = fit(train, bits, args.rounds)
        uniform = error(test, np.arange(2 ** bits, dtype=F32))
        fitted = error(test, (table / 1024).astype(F32))
        print(f"bits {bits}: uniform {uniform:.6g}, nl {fitted:.6g} ({fitted / uniform:.4f}x)")
        print(f"    {bits}: _in_1024ths({', '.join(map(str, table))}),", flush=True)


if __name__ == "__main__":
    main()
