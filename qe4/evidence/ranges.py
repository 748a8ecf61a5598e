"""Loss over the clipping grid: the data behind the error-versus-range figures.

The grid is greedy's own: ``cmin_0 = min(x)``, ``cmin_{i+1} = cmin_i + step`` and
``cmax_0 = max(x)``, ``cmax_{j+1} = cmax_j - step`` by repeated float32 additions
(:func:`qe4.rowwise.greedy_range`), with ``step = (max - min) / n_bins``.  Point (i, j)
trims i bins from the low end and j from the high end.  Errors are normalized:
``range_loss**2 / ||x||**2``.
"""

from __future__ import annotations

import numpy as np

import qe4
from typing import Any
from numpy.typing import ArrayLike, NDArray
from qe4 import _validate as V
from qe4 import rowwise as R

F32 = np.float32


def grid(x: NDArray[np.float32], n_bins: int,
         n_steps: int) -> tuple[NDArray[np.float32], NDArray[np.float32], Any, Any]:
    """Bounds of rows ``x`` [n_rows, D]: cmins, cmaxs [n_steps + 1, n_rows], step, thr [n_rows]."""
    xmin, xmax = R.minmax_range(x)
    step = ((xmax - xmin) / F32(n_bins)).astype(F32)
    cmins, cmaxs = [xmin], [xmax]
    for _ in range(n_steps):
        cmins.append((cmins[-1] + step).astype(F32))
        cmaxs.append((cmaxs[-1] - step).astype(F32))
    return np.array(cmins), np.array(cmaxs), step, step


def _norm2(x):
    return (np.asarray(x, np.float64) ** 2).sum(axis=1)


def _index(values, v):
    hit = np.nonzero(values == v)[0]
    return int(hit[0]) if hit.size else None


def row_surface(row: ArrayLike, bits: int = 4, *, n_bins: int = 200, ratio: float = 0.16,
                max_trim: float | None = None, scale_dtype: str | None = None) -> dict[str, Any]:
    """Everything figure 1 draws for one row.

    Returns a dict of plain lists: ``loss`` [(n+1) x (n+1)] normalized error at (i, j)
    (None where the range is empty), ``reachable`` mask of greedy's candidates, the
    greedy ``path`` [(i, j), ...], the (i, j) of ``greedy`` and ``exhaustive``, and
    the continuous (i, j) of the min/max and ACIQ ranges.
    """
    x = V.as_table(np.asarray(row, np.float32).reshape(1, -1), "row")
    sd = V.check_scale_dtype(scale_dtype, bits)
    aciq = {m: R.aciq_range(x, bits, m.split("-")[1]) for m in ("aciq-laplace", "aciq-gauss")}
    xmin, xmax = R.minmax_range(x)
    step = float((xmax - xmin)[0] / F32(n_bins))
    if max_trim is None:
        trims = [int(np.ceil(n_bins * ratio)) + 2]
        for lo, hi in aciq.values():
            if step > 0:
                trims.append(int(np.ceil(max((lo[0] - xmin[0]) / step, (xmax[0] - hi[0]) / step))) + 2)
        max_trim = min(max(trims), n_bins // 2)
    n = max_trim
    cmins, cmaxs, _, _ = grid(x, n_bins, n)
    cmins, cmaxs = cmins[:, 0], cmaxs[:, 0]
    ii, jj = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    lo, hi = cmins[ii.ravel()], cmaxs[jj.ravel()]
    valid = lo < hi
    loss = np.full(lo.shape, np.nan)
    tiled = np.repeat(x, int(valid.sum()), axis=0)
    l32 = qe4.range_loss(tiled, lo[valid], hi[valid], bits, sd)
    l = l32.astype(np.float64)
    loss[valid] = l ** 2 / _norm2(x)[0]
    loss = loss.reshape(n + 1, n + 1)
    # greedy's candidate set: (0, 0), and successors of states whose loop condition holds
    thr = F32(R._min_bins(n_bins, ratio) * F32(step))
    cont = (cmins[:, None] + thr) < cmaxs[None, :]
    reach = np.zeros((n + 1, n + 1), bool)
    reach[0, 0] = True
    for t in range(1, 2 * n + 1):
        for i in range(max(0, t - n), min(t, n) + 1):
            j = t - i
            reach[i, j] = ((i > 0 and reach[i - 1, j] and cont[i - 1, j])
                           or (j > 0 and reach[i, j - 1] and cont[i, j - 1]))
    g_lo, g_hi, path = R.greedy_range(x, bits, n_bins, ratio, sd, return_path=True)
    steps, i, j = [(0, 0)], 0, 0
    for (pmin, pmax), (qmin, _) in zip(path[1:], path[:-1]):
        if np.isnan(pmin[0]):
            break
        if pmin[0] != qmin[0]:
            i += 1
        else:
            j += 1
        steps.append((i, j))
    # exhaustive_range's optimum, read off the grid: least loss over greedy's candidates,
    # ties to the first state in (i + j, i) order (tests check it against exhaustive_range)
    raw = np.full(lo.shape, np.inf, np.float32)
    raw[valid] = l32
    raw = np.where(reach.ravel(), raw, np.inf).reshape(n + 1, n + 1)
    order = sorted(zip(*np.nonzero(reach)), key=lambda ij: (ij[0] + ij[1], ij[0]))
    ei, ej = min(order, key=lambda ij: raw[ij])
    e_lo, e_hi = cmins[ei:ei + 1], cmaxs[ej:ej + 1]
    out = {
        "bits": bits, "n_bins": n_bins, "ratio": ratio, "scale_dtype": sd, "step": step,
        "xmin": float(xmin[0]), "xmax": float(xmax[0]), "values": x[0].tolist(),
        "loss": [[None if np.isnan(v) else float(f"{v:.5g}") for v in r] for r in loss],
        "reachable": reach.astype(int).tolist(),
        "path": steps,
        "greedy": [_index(cmins, g_lo[0]), _index(cmaxs, g_hi[0])],
        "exhaustive": [_index(cmins, e_lo[0]), _index(cmaxs, e_hi[0])],
        "minmax": [0.0, 0.0],
        "ranges": {"minmax": [float(xmin[0]), float(xmax[0])],
                   "greedy": [float(g_lo[0]), float(g_hi[0])],
                   "exhaustive": [float(e_lo[0]), float(e_hi[0])]},
    }
    for m, (lo_, hi_) in aciq.items():
        out["ranges"][m] = [float(lo_[0]), float(hi_[0])]
        out[m] = [float((lo_[0] - xmin[0]) / step) if step else 0.0,
                  float((xmax[0] - hi_[0]) / step) if step else 0.0]
    return out


def clip_curve(x: ArrayLike, bits: int = 4, *, n_bins: int = 200, max_frac: float = 0.5,
               stride: int = 2, scale_dtype: str | None = None) -> dict[str, Any]:
    """Table error against the fraction of each row's range clipped.

    For each total trim ``t`` (in bins, every ``stride``), each row takes the best split
    (i, t - i) over i in steps of ``stride`` ("best split") and, separately, the symmetric
    split (t/2, t/2).  Returns fractions ``t / n_bins`` and both normalized table errors.
    """
    x = V.as_table(x)
    sd = V.check_scale_dtype(scale_dtype, bits)
    n = int(max_frac * n_bins)
    cmins, cmaxs, _, _ = grid(x, n_bins, n)
    den = _norm2(x).sum()
    ts = list(range(0, n + 1, 2 * (stride // 2 or 1)))
    best, sym = [], []
    for t in ts:
        splits = list(range(0, t + 1, stride))
        lo = np.concatenate([cmins[i] for i in splits])
        hi = np.concatenate([cmaxs[t - i] for i in splits])
        tiled = np.tile(x, (len(splits), 1))
        l2 = qe4.range_loss(tiled, lo, hi, bits, sd).astype(np.float64) ** 2
        l2 = l2.reshape(len(splits), -1)
        best.append(float(l2.min(axis=0).sum() / den))
        sym_l = qe4.range_loss(x, cmins[t // 2], cmaxs[t - t // 2], bits, sd).astype(np.float64)
        sym.append(float((sym_l ** 2).sum() / den))
    return {"bits": bits, "n_bins": n_bins, "fraction": [t / n_bins for t in ts],
            "best_split": best, "symmetric": sym}
