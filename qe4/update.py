"""Replacing rows of a quantized table: in memory, or in a qe4 file.

New float rows are quantized with the table's own method, bit width, scale dtype and
parameters, and their packed bytes replace rows ``start .. start + len(x) - 1``.  Rows are
quantized independently (every method of the rowwise and per-row codebook layouts), so
the updated table is byte for byte the table :func:`qe4.quantize` would make from the
updated float rows.

``two-tier`` tables are refused: their codebooks are fitted to all rows together, so new
rows would either change every other row or be encoded with codebooks that were not fitted
to them; re-quantize the whole table instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from .table import QuantizedTable
    from ._typing import StrPath, UInt8Array

from . import _validate as V
from . import io

_CHUNK_BYTES = 64 << 20     # rows copied per write when a file is rewritten


def update_rows(table: QuantizedTable, start: int, x: ArrayLike, *, method: str | None = None,
                **options: Any) -> None:
    """Re-quantize rows ``start`` to ``start + len(x) - 1`` of ``table`` from ``x``, in place.

    Parameters
    ----------
    table : QuantizedTable
        Its ``data`` must be writable (a table loaded with ``mmap=True`` is read-only:
        use :func:`update_file` for files).
    start : int
        The first row to replace.
    x : array_like [n, dim], float
        The new float rows (validated as :func:`qe4.quantize` validates its input).
    method : str, optional
        Only for tables whose ``method`` is not one :func:`qe4.quantize` knows (e.g.
        ``"fused"``: bytes imported from torch); otherwise the table's method is used
        and naming another one is an error (the table would record a wrong method).
    **options
        Method options; default: the table's ``params`` (e.g. ``n_bins``, ``ratio``).

    Raises
    ------
    TypeError, ValueError, IndexError
        Not a table, a two-tier table, a read-only table, a bad ``start`` or row range
        (IndexError), ``x`` of the wrong width, a method or options that do not
        reproduce the table's layout, or anything :func:`qe4.quantize` refuses.

    Notes
    -----
    Concurrent readers of ``table`` may see some rows old and some new while the bytes
    are copied; the new rows are computed completely before the first byte is written,
    so an error leaves the table unchanged.
    """
    _write_rows(table, start, x, method, options, _quantize)


def update_file(path: StrPath, start: int, x: ArrayLike, *, method: str | None = None,
                in_place: bool = False, **options: Any) -> None:
    """Re-quantize rows ``start`` to ``start + len(x) - 1`` of the qe4 file at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        A qe4 file (:func:`qe4.save`).
    start, x, method, **options
        As for :func:`update_rows`.
    in_place : bool
        False (default): the file is rewritten atomically (:class:`qe4.io.TableWriter`:
        a temporary file is filled, fsynced and renamed over ``path``), so ``path``
        holds either the old or the new table, whatever happens; readers that already
        opened (or memory-mapped) it keep the old one.  Costs a copy of the file.
        True: only the new rows' bytes are written into the file, then fsynced.  Fast for
        big files, but NOT atomic: an interrupt or crash during the write can leave some
        rows old and some new (a row even torn), and processes that memory-mapped the
        file see the bytes change under them.

    Raises
    ------
    As :func:`update_rows`, plus ValueError for a file that is not a valid qe4 file and
    OSError from the file system.
    """
    _update_file(path, start, x, method, in_place, options, _quantize)


# --------------------------------------------------------------------------- shared steps

def _quantize(x, bits, method, scale_dtype, options):
    from .api import quantize
    return quantize(x, bits, method, scale_dtype=scale_dtype, **options)


def new_rows(table: QuantizedTable, start: int, x: ArrayLike, method: str | None,
             options: Mapping[str, Any], quantize: Callable[..., QuantizedTable]) -> UInt8Array:
    """Validate an update and return the packed new rows (uint8 [n, row_bytes]).

    ``quantize(x, bits, method, scale_dtype, options)`` is the engine's quantize.  Shared
    by both packages, so both raise the same errors.
    """
    V.check_table(table)
    if table.layout == "two-tier":
        raise ValueError("two-tier tables cannot be updated row by row: their codebooks are "
                         "fitted to all rows together; re-quantize the whole table")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"start must be an integer, got {start!r}")
    x = V.as_table(x)
    n = x.shape[0]
    if x.shape[1] != table.dim:
        raise ValueError(f"x has {x.shape[1]} columns; the table's rows have dim {table.dim}")
    if not 0 <= start <= table.n_rows - n:
        raise IndexError(f"rows {int(start)} .. {int(start) + n - 1} (start={int(start)}, "
                         f"{n} rows of x) are out of range for a table of {table.n_rows} rows")
    from .api import methods
    known = table.method in methods()
    if method is None:
        if not known:
            raise ValueError(f"the table's method is {table.method!r}, which qe4.quantize does "
                             "not know (bytes imported from elsewhere): pass method=")
        method = table.method
    elif known and method != table.method:
        raise ValueError(f"the table was made with method {table.method!r}; rows re-quantized "
                         f"with {method!r} would make its recorded method wrong")
    params = dict(table.params if method == table.method else {}, **options)
    new = quantize(x, table.bits, method, table.scale_dtype, params)
    if new.layout != table.layout or new.row_bytes != table.row_bytes or new.extras:
        raise ValueError(f"method {method!r} with {params} makes {new.layout!r} rows of "
                         f"{new.row_bytes} bytes; the table has {table.layout!r} rows of "
                         f"{table.row_bytes} bytes")
    return new.data


def _write_rows(table, start, x, method, options, quantize):
    rows = new_rows(table, start, x, method, options, quantize)
    if not table.data.flags.writeable:
        raise ValueError("table.data is read-only (a table loaded with mmap=True?): use "
                         "qe4.update_file(path, ...) or load the table with mmap=False")
    table.data[start:start + rows.shape[0]] = rows


def _update_file(path, start, x, method, in_place, options, quantize):
    path = os.fspath(path)
    table = io.load(path, mmap=True)
    rows = new_rows(table, start, x, method, options, quantize)
    stop = start + rows.shape[0]
    if in_place:
        offset = io.read_safetensors_header(path).offset(io.DATA_KEY) + start * table.row_bytes
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(np.ascontiguousarray(rows).data)
            f.flush()
            os.fsync(f.fileno())
        return
    step = max(1, _CHUNK_BYTES // max(1, table.row_bytes))
    with io.TableWriter(path, n_rows=table.n_rows, bits=table.bits, dim=table.dim,
                        method=table.method, scale_dtype=table.scale_dtype, layout=table.layout,
                        params=table.params, extras=table.extras, row_bytes=table.row_bytes) as w:
        for a, b in ((0, start), (stop, table.n_rows)):
            for r in range(a, b, step):
                w.write(np.asarray(table.data[r:min(r + step, b)]))
            if a == 0:
                w.write(rows)
    del table          # closes the memory map of the replaced file
