"""The old name of :mod:`qe4.api` (it held the whole public API, not only the uniform
methods).  Kept so existing imports work; new code imports :mod:`qe4.api`."""

from .api import assemble_rows, dequantize, from_tbe, methods, quantize, to_tbe  # noqa: F401
from . import _validate as V  # noqa: F401  (old code reached the validators through here)
