"""
Serving with torch, and through an export
=========================================

A 4-bit greedy table *is* the input of torch's
``embedding_bag_4bit_rowwise_offsets``: :class:`qe4.torch.QuantizedEmbeddingBag` serves the
bytes :func:`qe4.quantize` wrote, and its output equals :func:`qe4.embedding_bag` bit for
bit.  The same float table exported for ONNX Runtime (:func:`qe4.export.to_onnx`) serves
through ``com.microsoft.GatherBlockQuantized``.  The figure compares each with the float32
bags of the unquantized table.
"""

import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import torch

import qe4
import qe4.export
import qe4.torch
from qe4.datasets import load_glove_top20k

x, _ = load_glove_top20k()
x = x[:5000]                     # the 5,000 most frequent words
emb = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(x), mode="mean")

# 2,000 bags of 20 rows drawn with Zipf frequencies (rows are in frequency order)
rng = np.random.default_rng(0)
p = 1.0 / np.arange(1, len(x) + 1)
indices = rng.choice(len(x), size=2000 * 20, p=p / p.sum())
offsets = np.arange(0, indices.size, 20)
ti, to = torch.from_numpy(indices), torch.from_numpy(offsets)
reference = emb(ti, to).numpy()


def rel_err(bags):
    return np.linalg.norm(bags - reference, axis=1) / np.linalg.norm(reference, axis=1)


errors = {}
for method in ("minmax", "greedy"):
    table = qe4.quantize(x, 4, method)
    module = qe4.torch.QuantizedEmbeddingBag(table, mode="mean")
    out = module(ti, to).numpy()
    same = qe4.embedding_bag(table, indices, offsets, mode="mean")
    assert out.view(np.uint8).tobytes() == same.view(np.uint8).tobytes()
    errors[f"torch op, qe4 {method} ({8 * table.nbytes / x.size:.2f} bits/value)"] = rel_err(out)
    print(f"{method}: table error {qe4.table_error(x, table):.4e}")

e = qe4.export.to_onnx(x, 4, block_size=32, scale_dtype="float16")
session = ort.InferenceSession(qe4.export.onnx_model(e).SerializeToString(),
                               providers=["CPUExecutionProvider"])
rows = session.run(None, {"indices": indices.astype(np.int64)})[0]
onnx_bags = rows.reshape(-1, 20, x.shape[1]).mean(axis=1)
onnx_bags = onnx_bags.astype(np.float32)
errors[f"ONNX Runtime, export block 32 ({e.bits_per_weight:.2f} bits/value)"] = rel_err(onnx_bags)

for name, err in errors.items():
    print(f"{name}: median relative bag error {np.median(err):.4f}")

fig, ax = plt.subplots(figsize=(8, 4))
bins = np.linspace(0, max(np.quantile(v, 0.995) for v in errors.values()), 60).tolist()
for name, err in errors.items():
    ax.hist(err, bins=bins, histtype="step", lw=1.8, label=name)
ax.set_xlabel("||bag - float32 bag|| / ||float32 bag||  (2,000 mean bags of 20 Zipf rows)")
ax.set_ylabel("bags")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Greedy has the lower error per row, yet min/max has the lower error per bag here.  Zipf
# bags hold the most frequent rows many times over, and those are the heavy-tailed rows whose
# extreme values greedy clips: a clipping error repeats in every copy and does not average
# out, while min/max's rounding errors are smaller at the extremes that dominate the bag.
# Which error matters is the model's question; ``qe4 evidence`` measures the downstream
# effect (analogy accuracy, RMSE, AUC).
