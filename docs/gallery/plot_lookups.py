"""
Serving lookups: gathers, float16 outputs, batched bags, torch
==============================================================

Lookups read the packed rows directly, never a dequantized copy of the table:
:func:`qe4.embedding` gathers rows (any index shape), :func:`qe4.embedding_bag` pools them,
and :func:`qe4.embedding_bags` pools the bags of several tables in one call, as FBGEMM's
table-batched embedding does.  Each computes in float32 and, with ``out_dtype="float16"``
(or ``"bfloat16"``), rounds the result once.  :class:`qe4.torch.QuantizedEmbedding` serves
the same bytes inside a torch model (skipped below when torch is not installed).
"""

import matplotlib.pyplot as plt
import numpy as np

import qe4
from qe4.datasets import load_glove_top20k

x, words = load_glove_top20k()
rng = np.random.default_rng(0)
p = 1.0 / np.arange(1, len(x) + 1)
p /= p.sum()

# two tables of one model: words at 4 bits (greedy), a second feature table at 2 bits (mse)
words_t = qe4.quantize(x, 4, "greedy")
feats = x[::-1, :24].copy()                       # 20,000 x 24, another table's shape
feats_t = qe4.quantize(feats, 2, "mse")

# a gather: a [64, 16] block of Zipf-drawn ids -> [64, 16, 50] rows, float32 and float16
ids = rng.choice(len(x), size=(64, 16), p=p)
rows32 = qe4.embedding(words_t, ids)
rows16 = qe4.embedding(words_t, ids, out_dtype="float16")
assert rows16.tobytes() == rows32.astype(np.float16).tobytes()   # rounded once, from float32
exact = x[ids]
err32 = np.linalg.norm(rows32 - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
err16 = np.linalg.norm(rows16.astype(np.float32) - exact, axis=-1) / np.linalg.norm(exact, axis=-1)
print(f"gather {ids.shape} -> {rows32.shape}; median row error float32 out {np.median(err32):.4f}, "
      f"float16 out {np.median(err16):.4f}")

# one batched call: 500 bags of 1..30 rows per table, table-major, offsets as in TBE
n_bags = 500
sizes = [rng.integers(1, 31, n_bags) for _ in range(2)]
idx = [rng.choice(t.n_rows, size=s.sum(), p=p) for t, s in zip((words_t, feats_t), sizes)]
indices = np.concatenate(idx)
offsets = np.concatenate([np.cumsum(np.r_[0, s[:-1]]) + k * sizes[0].sum()
                          for k, s in enumerate(sizes)])
bags = qe4.embedding_bags([words_t, feats_t], indices, offsets, mode="mean")
print(f"embedding_bags over two tables -> {bags.shape} (columns: 50 + 24)")
for k, (t, src) in enumerate(((words_t, x), (feats_t, feats))):
    starts = np.cumsum(np.r_[0, sizes[k][:-1]])
    alone = qe4.embedding_bag(t, idx[k], starts, mode="mean")
    cols = slice(0, 50) if k == 0 else slice(50, 74)
    assert bags[:, cols].tobytes() == alone.tobytes()    # the tables are independent lookups
bag_err = []
for k, src in enumerate((x, feats)):
    starts = np.cumsum(np.r_[0, sizes[k][:-1]])
    ref = np.add.reduceat(src[idx[k]], starts, axis=0) / sizes[k][:, None]
    got = bags[:, :50] if k == 0 else bags[:, 50:]
    bag_err.append(np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1))

# torch, when it is installed: the module serves the same bytes as qe4.embedding
try:
    import torch

    import qe4.torch
    have_torch = True
except ImportError:
    have_torch = False
    print("torch is not installed: the QuantizedEmbedding part is skipped")
if have_torch:
    module = qe4.torch.QuantizedEmbedding(words_t, out_dtype="float16")
    out = module(torch.from_numpy(ids))
    assert out.dtype == torch.float16 and out.numpy().tobytes() == rows16.tobytes()
    print(f"qe4.torch.QuantizedEmbedding: {module}; same bytes as qe4.embedding")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
bins = np.linspace(0, np.quantile(err16, 0.995), 50)
ax0.hist(err32.ravel(), bins=bins, histtype="step", lw=1.8, label="float32 output")
ax0.hist(err16.ravel(), bins=bins, histtype="step", lw=1.8, ls="--", label="float16 output")
ax0.set_xlabel("||row - float row|| / ||float row||  (4-bit greedy gather)")
ax0.set_ylabel("rows")
ax0.legend(fontsize=8)
for e, name in zip(bag_err, ("words: greedy 4-bit, dim 50", "features: mse 2-bit, dim 24")):
    ax1.hist(e, bins=40, histtype="step", lw=1.8, label=name)
ax1.set_xlabel("||bag - float bag|| / ||float bag||  (one embedding_bags call)")
ax1.set_ylabel("bags")
ax1.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Rounding the output to float16 adds far less error than the 4-bit codes themselves, and
# halves the bytes a lookup returns.  The mean of a bag averages independent rounding errors
# out, so bags are closer to their float values than single rows.
