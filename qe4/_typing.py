"""Type aliases of qe4's annotations (imported by the modules only when type checking)."""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: A file path: a string or an ``os.PathLike`` (``pathlib.Path``).
StrPath = Union[str, "os.PathLike[str]"]
#: float32 arrays (dequantized rows, lookup results, errors).
Float32Array = NDArray[np.float32]
#: uint8 arrays (packed rows, codes).
UInt8Array = NDArray[np.uint8]
#: Row indices: an integer array, a slice or anything ``np.asarray`` makes integers of.
Rows = Union[slice, "NDArray[np.integer]", "list[int]", int]
#: float64 arrays (errors, weights, k-means sums).
Float64Array = NDArray[np.float64]
#: int64 arrays (group ids, tiers, bounds).
Int64Array = NDArray[np.int64]
#: Integer arrays of any width (validated indices, offsets).
IntArray = NDArray[np.integer]
#: A (lo, hi) pair of float32 [n_rows] arrays: each row's clipping range.
Ranges = tuple[Float32Array, Float32Array]
#: (lo, hi, path) of a search asked for its path: one (cmin, cmax) pair per iteration.
RangesPath = tuple[Float32Array, Float32Array, "list[Ranges]"]
#: The (scale, bias, inv) float32 [n_rows] arrays of a row-wise encoding.
ScaleBias = tuple[Float32Array, Float32Array, Float32Array]
#: An encoder's output: the packed rows and the layout's extra arrays.
Encoded = tuple[UInt8Array, "dict[str, NDArray[Any]]"]
#: One table, or a model's tables as a list or a dict (qe4.allocate).
Tables = Union["ArrayLike", "list[ArrayLike]", "dict[str, ArrayLike]"]
