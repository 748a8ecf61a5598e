"""
Rate-distortion: every method, and the exports
==============================================

Bits stored per value (codes plus every scale, bias, centroid and group id) against the
normalized table error, on the 2,000 most frequent GloVe rows (50 columns).  The same float
table is also exported to ExecuTorch, ONNX Runtime and compressed-tensors layouts, each with
its own search, and with ``search="minmax"`` (the projects' reference quantizers) for
comparison.
"""

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

import qe4
import qe4.export
from qe4.datasets import load_glove_top20k

x, _ = load_glove_top20k()
x = x[:2000]
n_values = x.size

points = []
for method in qe4.methods():
    for bits in (2, 4, 8):
        try:
            t = qe4.quantize(x, bits, method)
        except ValueError:            # e.g. codebooks at 8 bits
            continue
        points.append((method, bits, 8 * t.nbytes / n_values, qe4.table_error(x, t)))
for method, bits, bpw, err in points:
    print(f"{method:15s} {bits} bits: {bpw:6.3f} bits/value, error {err:.3e}")

exports: list[tuple[str, str, dict[str, Any]]] = [
    ("ExecuTorch 4-bit, group 25", "executorch", dict(bits=4, group_size=25)),
    ("ExecuTorch 8-bit", "executorch", dict(bits=8)),
    ("ONNX 4-bit, block 16", "onnx", dict(bits=4, block_size=16, scale_dtype="float16")),
    ("compressed-tensors 4-bit", "compressed-tensors", dict(bits=4, symmetric=False)),
    ("compressed-tensors 2-bit", "compressed-tensors", dict(bits=2))]
rows = []
for name, fmt, opts in exports:
    searched = qe4.export.export(x, fmt, **opts)
    plain = qe4.export.export(x, fmt, **opts, search="minmax")
    rows.append((name, searched, plain))
    print(f"{name:28s} {searched.bits_per_weight:6.3f} bits/value: error {searched.error:.3e} "
          f"(min/max {plain.error:.3e}, {100 * (searched.error / plain.error - 1):+.1f}%)")

fig, ax = plt.subplots(figsize=(8.5, 5.5))
for method in dict.fromkeys(m for m, *_ in points):
    pts = sorted((b, e) for m, _, b, e in points if m == method)
    ax.plot(*zip(*pts), "-o", ms=5, label=method)
for name, s, p in rows:
    ax.plot([p.bits_per_weight, s.bits_per_weight], [p.error, s.error], "k:", lw=1)
    ax.plot(s.bits_per_weight, s.error, "D", ms=7, mfc="none", mew=1.5, label=f"export: {name}")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("stored bits per value (log scale)")
ax.set_ylabel("normalized error ||x - x_hat||² / ||x||²")
ax.set_title("GloVe, 2,000 most frequent rows (dotted: export with search='minmax')", fontsize=10)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()
