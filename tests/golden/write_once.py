"""Write the golden qe4 files of tests/golden/ (run ONCE; never again).

The files were written by this script with the qe4 of commit 514179a (before the
registry refactor) and are committed; the 3, 5 and 6-bit rowwise files (bit-stream
codes that straddle bytes) were added later, written by the first qe4 that stored
those widths (the commit adding them to the rowwise layout), so they pin that code's
bytes rather than an independent implementation's.  ``codebook-2bit`` (method kmeans)
was written again, by deleting it and running this script, when kmeans gained its
split-merge moves (qe4.codebook.lloyd_centroids): its fit, not its format, changed; the
other kmeans case (max_iter=7, 7 values per row) kept its bytes.  The grouped files were
written again when the grouped method gained its ``levels`` option: their headers' params
now name ``"levels": "uniform"`` (rows and outputs unchanged); the file written before,
``grouped-4bit-before-levels.qe4`` (no ``levels`` in its params), stays, to show such files
still read as uniform levels (tests/test_grouped.py).  They were written again when it gained
its ``mins`` option (params now name ``"mins": "group"``; rows and outputs unchanged, checked
entry by entry against the previous expected.npz); the before-levels file has neither key and
reads as both defaults.
tests/test_format_golden.py loads them and checks every later qe4 reads, looks up and
re-writes them byte for byte.
Re-running this script would overwrite history, so it refuses when the files
exist.  To add a case for a new layout or bit width, add it to CASES and run
the script: it writes only the files that are missing (and their expected
outputs), leaving the existing ones untouched.

    python tests/golden/write_once.py
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":      # run as a script from the source tree; imported by the tests,
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # leave sys.path alone: dask's
                                # spawned workers copy it and would import the unbuilt tree

import qe4  # noqa: E402

# file name -> the qe4.quantize call that made it (bits, method, keyword arguments)
CASES = {
    "rowwise-2bit": (2, "greedy", {}),
    "rowwise-4bit": (4, "greedy", {"n_bins": 50, "ratio": 0.3}),
    "rowwise-8bit": (8, "minmax", {}),
    "rowwise-2bit-float32": (2, "aciq-laplace", {"scale_dtype": "float32"}),
    "rowwise-4bit-float32": (4, "exhaustive", {"scale_dtype": "float32", "n_bins": 40}),
    "rowwise-8bit-aciq": (8, "aciq-gauss", {}),
    # 3, 5 and 6 bits: at DIM = 7 codes straddle bytes (21, 35, 42 bits of codes)
    "rowwise-3bit": (3, "greedy", {}),
    "rowwise-5bit": (5, "mse", {}),
    "rowwise-6bit-float32": (6, "aciq-laplace", {"scale_dtype": "float32"}),
    "codebook-2bit": (2, "kmeans", {}),
    "codebook-4bit": (4, "kmeans-optimal", {}),
    "codebook-4bit-float32": (4, "kmeans", {"scale_dtype": "float32", "max_iter": 7}),
    "two-tier-2bit": (2, "two-tier", {"n_groups": 3, "scale_dtype": "float32"}),
    "two-tier-4bit": (4, "two-tier", {"n_groups": 4}),
    # a mixed-precision table (qe4.mixed.quantize_mixed: every rung of the ladder, a 3-bit
    # row map); "method" "mixed" names the builder, its kwargs are quantize_mixed's
    "mixed-8bit": (8, "mixed", {"choice": [5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 0],
                                "rungs": ["pruned", "greedy/2", "greedy/4", "greedy/8",
                                          "float16", "float32"], "row_map": "tiers"}),
    # group-wise scales (qe4.grouped): groups of 3 over dim 7 (a ragged last group of one
    # value), and one group of 7 at 8 bits
    "grouped-2bit": (2, "grouped", {"group": 3, "sub_bits": 4}),
    "grouped-3bit": (3, "grouped", {"group": 3, "sub_bits": 6}),
    "grouped-4bit": (4, "grouped", {"group": 3, "sub_bits": 6}),
    "grouped-5bit": (5, "grouped", {"group": 2, "sub_bits": 5}),
    "grouped-6bit": (6, "grouped", {"group": 4, "sub_bits": 8}),
    "grouped-8bit": (8, "grouped", {"group": 7, "sub_bits": 7}),
    # non-uniform levels (levels="nl", qe4.layouts.LEVELS): the same bytes, other values
    "grouped-3bit-nl": (3, "grouped", {"group": 3, "sub_bits": 6, "levels": "nl"}),
    "grouped-4bit-nl": (4, "grouped", {"group": 3, "sub_bits": 6, "levels": "nl"}),
    "grouped-6bit-nl": (6, "grouped", {"group": 4, "sub_bits": 8, "levels": "nl"}),
    # scale-only groups (mins="none"): signed sub-scales, no mins, signed level tables
    "grouped-4bit-scale-only": (4, "grouped", {"group": 3, "sub_bits": 6, "mins": "none"}),
    "grouped-4bit-nl-scale-only": (4, "grouped", {"group": 3, "sub_bits": 6, "levels": "nl",
                                                  "mins": "none"}),
    "grouped-6bit-nl-scale-only": (6, "grouped", {"group": 4, "sub_bits": 8, "levels": "nl",
                                                  "mins": "none"}),
}
N_ROWS, DIM = 11, 7          # an odd dim: the last code byte is half padding at 4 bits


def inputs():
    rng = np.random.default_rng(20261201)
    x = (rng.standard_normal((N_ROWS, DIM)) * np.linspace(0.5, 3, N_ROWS)[:, None]).astype(np.float32)
    x[3] = 0.25                                       # a constant row
    x[5, 2] = -0.0
    indices = np.array([0, 3, 3, 10, 5, 1, 9, 2, 7], np.int64)
    offsets = np.array([0, 2, 2, 6], np.int64)        # one empty bag
    weights = rng.uniform(-2, 2, indices.size).astype(np.float32)
    return x, indices, offsets, weights


def build(mod, x, bits, method, kw, **engine):
    """The table of a case: ``mod.quantize``, or for "mixed" ``qe4.mixed.quantize_mixed``
    (``engine`` keywords go to it)."""
    if method == "mixed":
        from qe4.mixed import quantize_mixed
        return quantize_mixed(x, np.array(kw["choice"]), kw["rungs"], row_map=kw["row_map"],
                              **engine)
    return mod.quantize(x, bits, method, **kw)


def main():
    path = os.path.join(HERE, "expected.npz")
    expected = dict(np.load(path)) if os.path.exists(path) else {}
    if not expected:
        expected["x"], expected["indices"], expected["offsets"], expected["weights"] = inputs()
    x, idx, off, w = (expected[k] for k in ("x", "indices", "offsets", "weights"))
    manifest_path = os.path.join(HERE, "manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    for name, (bits, method, kw) in CASES.items():
        file = os.path.join(HERE, name + ".qe4")
        if os.path.exists(file):
            continue
        table = build(qe4, x, bits, method, kw)
        qe4.save(table, file)
        manifest[name] = {"bits": bits, "method": method, "kwargs": kw}
        expected[f"{name}.dequantize"] = qe4.dequantize(table)
        expected[f"{name}.sum"] = qe4.embedding_bag(table, idx, off)
        expected[f"{name}.wsum"] = qe4.embedding_bag(table, idx, off, per_sample_weights=w)
        expected[f"{name}.mean"] = qe4.embedding_bag(table, idx, off, mode="mean")
        print("wrote", file)
    np.savez(path, **expected)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
