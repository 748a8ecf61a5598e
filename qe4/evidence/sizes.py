"""Bytes per row of each stored layout, against float32 and float16 rows."""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence
from qe4 import layouts as L

DIMS = (16, 32, 50, 64, 72, 128)


def row_bytes(dim: int, bits: int, scale_dtype: str | None = "float16") -> int:
    """Bytes of one row-wise quantized row: packed codes then scale and bias.

    >>> row_bytes(72, 4)          # 36 code bytes + fp16 scale + fp16 bias
    40
    >>> row_bytes(64, 8, "float32")   # torch's byte layout
    72
    """
    return L.LAYOUTS["rowwise"].row_bytes(dim, bits, scale_dtype)


def size_table(dims: Sequence[int] = DIMS) -> list[dict[str, Any]]:
    """Rows of the size table: one dict per (dim, layout) with bytes/row and % of float32."""
    layouts = [("fp32", None, None), ("fp16", None, None),
               ("8-bit, fp32 scale/bias", 8, "float32"),
               ("4-bit, fp16 scale/bias", 4, "float16"),
               ("4-bit, fp32 scale/bias", 4, "float32"),
               ("2-bit, fp16 scale/bias", 2, "float16")]
    rows = []
    for dim in dims:
        for name, bits, sd in layouts:
            if bits is None:
                nbytes = dim * (4 if name == "fp32" else 2)
            else:
                nbytes = row_bytes(dim, bits, sd)
            rows.append({"dim": dim, "layout": name, "bits": bits, "bytes_per_row": nbytes,
                         "bits_per_element": 8 * nbytes / dim,
                         "pct_fp32": round(100 * nbytes / (4 * dim), 2)})
    return rows
