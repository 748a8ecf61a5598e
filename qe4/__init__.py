"""qe4: post-training 4-bit quantization of embedding tables.

The readable NumPy specification (this package) of row-wise asymmetric uniform
quantization with the greedy clipping search of Guan et al. (arXiv 1911.02079),
codebook quantization, FBGEMM/torch-compatible packed rows and pooled lookups.
``qe4_fast`` is its compiled, byte-identical twin.
"""

from .bag import embedding, embedding_bag, embedding_bags
from .io import load, save
from .metrics import row_errors, table_error, zipf_weights
from .rowwise import range_loss, row_ranges
from .table import QuantizedTable
from .api import dequantize, from_tbe, methods, presets, quantize, to_tbe
from .update import update_file, update_rows

__version__ = "0.1.0"

__all__ = [
    "QuantizedTable", "quantize", "dequantize", "embedding", "embedding_bag", "embedding_bags",
    "row_ranges", "range_loss",
    "to_tbe", "from_tbe", "methods", "presets", "save", "load", "row_errors", "table_error", "zipf_weights",
    "update_rows", "update_file",
]
