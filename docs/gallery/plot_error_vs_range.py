"""
Error versus clipping range
===========================

How much of each row's range should be clipped?  For the 2,000 most frequent GloVe rows,
this page trims a fraction ``f`` of every row's range (the best split between the low and the
high end, out of five) and measures the table error at 4 and 2 bits, relative to min/max.
The greedy search stops at 16% (``ratio = 0.16``): the right place at 4 bits, far too early at
2 bits, where the exhaustive search over greedy's grid cannot help either.
"""

import matplotlib.pyplot as plt
import numpy as np

import qe4
from qe4.datasets import load_glove_top20k

x, _ = load_glove_top20k()
x = x[:2000]
den = float((x.astype(np.float64) ** 2).sum())
fractions = np.linspace(0.0, 0.5, 26)
splits = np.linspace(0.0, 1.0, 5)          # share of the trim taken from the low end
xmin, xmax = x.min(axis=1), x.max(axis=1)
rng = xmax - xmin

fig, axs = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
for ax, bits in zip(axs, (4, 2)):
    sums = []
    for f in fractions:
        best = np.full(x.shape[0], np.inf)
        for a in splits:
            lo = (xmin + np.float32(a * f) * rng).astype(np.float32)
            hi = (xmax - np.float32((1 - a) * f) * rng).astype(np.float32)
            best = np.minimum(best, qe4.range_loss(x, lo, hi, bits).astype(np.float64) ** 2)
        sums.append(best.sum() / den)
    curve = np.array(sums)
    base = curve[0]
    ax.plot(100 * fractions, curve / base, "-o", ms=3, label="clip a fraction of every row")
    for method, style in (("greedy", "--"), ("exhaustive", ":")):
        e = qe4.table_error(x, qe4.quantize(x, bits, method))
        ax.axhline(e / base, ls=style, color="k", lw=1.2, label=f"{method}: {e / base:.3f}")
    ax.axvline(16, color="#d62728", lw=1, alpha=0.6)
    ax.text(16.5, ax.get_ylim()[1] * 0.98, "greedy's stop", color="#d62728", va="top", fontsize=8)
    k = int(np.argmin(curve))
    ax.set_title(f"{bits}-bit: best at {100 * fractions[k]:.0f}% clipped "
                 f"({curve[k] / base:.3f} of min/max)", fontsize=10)
    ax.set_xlabel("% of each row's range clipped")
    ax.set_ylabel("table error / min-max error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
