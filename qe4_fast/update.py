"""Compiled row updates: :func:`qe4.update_rows` and :func:`qe4.update_file` with
``qe4_fast.quantize`` doing the quantization, and with ``codebooks="keep"`` the compiled
:func:`qe4_fast.codebook.encode_with_books` the encoding (same validation, same bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from qe4.table import QuantizedTable
    from qe4._typing import StrPath

from qe4 import update as U

from ._threads import shares_cores


def _engine(n_threads):
    def quantize(x, bits, method, scale_dtype, options):
        from . import quantize
        return quantize(x, bits, method, scale_dtype=scale_dtype, n_threads=n_threads, **options)

    def encode_with_books(x, books, bits, scale_dtype):
        from .codebook import encode_with_books
        return encode_with_books(x, books, bits, scale_dtype, n_threads=n_threads)
    return U.Engine(quantize, encode_with_books)


@shares_cores
def update_rows(table: QuantizedTable, start: int, x: ArrayLike, *, method: str | None = None,
                codebooks: str | None = None, n_threads: int | None = None,
                **options: Any) -> None:
    """Re-quantize rows of ``table`` in place; see :func:`qe4.update_rows`.

    ``n_threads``: None = all usable cores (the new rows are quantized, or with
    ``codebooks="keep"`` encoded against the codebooks, in parallel).
    """
    U._write_rows(table, start, x, method, options, _engine(n_threads), codebooks)


@shares_cores
def update_file(path: StrPath, start: int, x: ArrayLike, *, method: str | None = None,
                in_place: bool = False, codebooks: str | None = None,
                n_threads: int | None = None, **options: Any) -> None:
    """Re-quantize rows of the qe4 file at ``path``; see :func:`qe4.update_file`."""
    U._update_file(path, start, x, method, in_place, options, _engine(n_threads), codebooks)
