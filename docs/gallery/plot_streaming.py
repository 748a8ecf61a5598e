"""
Streaming a table bigger than memory
====================================

:func:`qe4.stream.quantize_file` (``qe4 quantize IN OUT --max-memory 2G``) memory-maps the
input and quantizes row chunks sized to a working-memory budget, writing the output as it
goes; the file appears only when complete.  This page runs exactly that code on a small
table (50,000 GloVe-like rows, 10 MB) with budgets far below its size, and checks that every
budget gives the bytes of one in-memory call (:func:`qe4_fast.quantize`, whose bytes are
:func:`qe4.quantize`'s).  The same code streamed a
12.95 GiB table at a peak resident memory of 0.33 GiB (:doc:`/big_tables`).
"""

import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import qe4
import qe4.stream
import qe4_fast
from qe4.datasets import load_glove_top20k

glove, _ = load_glove_top20k()
rng = np.random.default_rng(0)
# 50,000 rows: the GloVe rows, then resampled copies with their own noise
extra = glove[rng.integers(0, len(glove), 30_000)]
extra = extra + rng.normal(0, 0.05, extra.shape).astype(np.float32)
table = np.concatenate([glove, extra])
work = tempfile.mkdtemp(prefix="qe4-stream-")
src = os.path.join(work, "table.npy")
np.save(src, table)
print(f"input: {table.shape[0]:,} x {table.shape[1]} float32, {os.path.getsize(src) / 2**20:.1f} MiB")

expected = qe4_fast.quantize(table, 4, "greedy")
budgets = ["512K", "2M", "8M"]
chunks = []
for budget in budgets:
    dst = os.path.join(work, f"table-{budget}.qe4")
    info = qe4.stream.quantize_file(src, dst, 4, "greedy", max_memory=budget,
                                    progress=False, measure_error=True)
    got = qe4.load(dst)
    assert np.array_equal(np.asarray(got.data), expected.data)       # the same bytes
    chunks.append(info["n_chunks"])
    print(f"budget {budget:>4}: {info['n_chunks']:4d} chunks of <= {info['chunk_rows']:6,} rows, "
          f"error {info['error']:.4e}, identical to in-memory")

fig, ax = plt.subplots(figsize=(7, 3.8))
ax.bar(budgets, chunks, color="#6baed6")
for k, c in enumerate(chunks):
    ax.text(k, c, f"{c} chunks", ha="center", va="bottom", fontsize=9)
ax.set_yscale("log")
ax.set_xlabel("working-memory budget (--max-memory)")
ax.set_ylabel("chunks")
ax.set_title(f"one {os.path.getsize(src) / 2**20:.0f} MiB table, three budgets, identical output",
             fontsize=10)
fig.tight_layout()
plt.show()
