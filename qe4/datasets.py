"""The bundled demo table: the 20,000 most frequent rows of GloVe 6B 50d (PDDL-1.0)."""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import DTypeLike, NDArray

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def load_glove_top20k(dtype: DTypeLike = np.float32) -> tuple[NDArray[np.floating], list[str]]:
    """Return (table [20000, 50], words [20000]) in frequency order (row 0 = "the").

    Stored as float16 (2 MB); widened exactly to ``dtype``.  Credit: Pennington, Socher
    and Manning, "GloVe: Global Vectors for Word Representation" (EMNLP 2014), PDDL-1.0.
    """
    table = np.load(os.path.join(DATA_DIR, "glove_6b_50d_top20k.npy")).astype(dtype)
    with open(os.path.join(DATA_DIR, "glove_6b_50d_top20k_words.txt"), encoding="utf-8") as f:
        words = f.read().split("\n")[:table.shape[0]]
    return table, words
