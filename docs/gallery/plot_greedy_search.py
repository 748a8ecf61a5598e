"""
The greedy search, step by step, on one heavy-tailed GloVe row
==============================================================

The paper's greedy search picks each row's clipping range ``(lo, hi)`` by walking a grid:
start from the row's min and max, and at every step trim one bin (1/200 of the range) from
whichever end loses less, remembering the best strict local minimum met on the way
(:ref:`greedy`).  This page runs it on the most heavy-tailed of the 1,000 most frequent
GloVe rows, prints the first steps and draws the path over the loss surface.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import qe4
from qe4 import rowwise
from qe4.datasets import load_glove_top20k

x, words = load_glove_top20k()
top = x[:1000].astype(np.float64)
z = (top - top.mean(axis=1, keepdims=True)) / top.std(axis=1, keepdims=True)
kurtosis = (z ** 4).mean(axis=1) - 3
r = int(np.argmax(kurtosis))
row = x[r:r + 1]
print(f"row {r} ({words[r]!r}): excess kurtosis {kurtosis[r]:.1f}, "
      f"min {row.min():.4f}, max {row.max():.4f}")

# %%
# The walk
# --------
# :func:`qe4.rowwise.greedy_range` returns the path it took; at each state both candidate
# moves are scored with :func:`qe4.range_loss`, the search's own objective.
bits, n_bins = 4, 200
lo, hi, path = rowwise.greedy_range(row, bits, n_bins, return_path=True)
step = np.float32((row.max() - row.min()) / np.float32(n_bins))
moves, i, j = [(0, 0)], 0, 0
print(" step   i   j   loss(trim low)  loss(trim high)  move")
for k, ((cmin, cmax), (nmin, _)) in enumerate(zip(path[:-1], path[1:])):
    if np.isnan(nmin[0]):
        break
    left = qe4.range_loss(row, cmin + step, cmax, bits)[0]
    right = qe4.range_loss(row, cmin, cmax - step, bits)[0]
    if nmin[0] != cmin[0]:
        i += 1
    else:
        j += 1
    moves.append((i, j))
    if k < 8 or k % 8 == 0:
        print(f"{k:5d} {moves[-2][0]:3d} {moves[-2][1]:3d}   {left:14.6f}  {right:15.6f}  "
              f"{'low' if nmin[0] != cmin[0] else 'high'}")
gi = int(round(float((lo[0] - row.min()) / step)))
gj = int(round(float((row.max() - hi[0]) / step)))
print(f"{len(moves) - 1} steps; kept (i, j) = ({gi}, {gj}): range [{lo[0]:.4f}, {hi[0]:.4f}]")

# %%
# The loss surface
# ----------------
# Every point (i, j) of the grid, i bins trimmed from the low end and j from the high end.
# The bounds are built by repeated float32 additions, exactly as the search builds them
# (``np.cumsum`` adds sequentially).
n = 60
cmins = np.cumsum(np.r_[row.min(), np.full(n, step)].astype(np.float32), dtype=np.float32)
cmaxs = np.cumsum(np.r_[row.max(), np.full(n, -step)].astype(np.float32), dtype=np.float32)
ii, jj = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
loss = qe4.range_loss(np.repeat(row, ii.size, axis=0), cmins[ii.ravel()], cmaxs[jj.ravel()], bits)
err = (loss.astype(np.float64) ** 2 / float((row.astype(np.float64) ** 2).sum())).reshape(ii.shape)

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[1.15, 1])
im = ax.imshow(err.T, origin="lower", cmap="viridis", norm=LogNorm(err.min(), 6 * err.min()),
               interpolation="nearest")
p = np.array(moves)
ax.plot(p[:, 0], p[:, 1], "w-", lw=1.6, label="greedy path")
bi, bj = np.unravel_index(np.argmin(err), err.shape)
ax.plot(bi, bj, "s", mfc="none", mec="#d62728", mew=2, ms=16, label=f"grid optimum ({err[bi, bj]:.2e})")
ax.plot(gi, gj, "*", color="#ff7f0e", ms=13, mec="w", zorder=5,
        label=f"greedy choice ({err[gi, gj]:.2e})")
ax.plot(0, 0, "o", color="#7f7f7f", ms=9, mec="w", label=f"min/max ({err[0, 0]:.2e})")
ax.set_xlabel("i: bins trimmed from the low end")
ax.set_ylabel("j: bins trimmed from the high end")
ax.set_title(f"row {r} {words[r]!r}, {bits}-bit: normalized error", fontsize=10)
ax.legend(fontsize=8, loc="upper right")
fig.colorbar(im, ax=ax, shrink=0.85, extend="max", label="||x - x_hat||² / ||x||²")

ax2.hist(row[0], bins=40, color="#9ecae1")
for v, c, name in ((row.min(), "#7f7f7f", "min/max"), (row.max(), "#7f7f7f", None),
                   (lo[0], "#ff7f0e", "greedy range"), (hi[0], "#ff7f0e", None)):
    ax2.axvline(v, color=c, lw=2, label=name)
ax2.set_title("the row's values and the two ranges", fontsize=10)
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The trimmed range is narrower where the tail is long: the step between adjacent codes
# shrinks, which lowers the error of the many values in the body more than clipping raises
# it for the few in the tail.
