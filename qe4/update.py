"""Replacing rows of a quantized table: in memory, or in a qe4 file.

New float rows are quantized with the table's own method, bit width, scale dtype and
parameters, and their packed bytes replace rows ``start .. start + len(x) - 1``.  Rows are
quantized independently (every method of the rowwise and per-row codebook layouts), so
the updated table is byte for byte the table :func:`qe4.quantize` would make from the
updated float rows.

Two-tier tables and ``codebooks="keep"``
----------------------------------------
A ``two-tier`` table's codebooks are fitted to all rows together, so no row update can be
a fresh :func:`qe4.quantize`: new rows would change every other row.  By default such a
table is refused.  With ``codebooks="keep"`` (the only mode, and only for two-tier tables)
the new rows are encoded against the table's existing codebooks instead:

* each new row takes the codebook with the smallest squared error (ties to the lower
  group id), :func:`qe4.codebook.best_books`: the error of codebook ``c`` is
  ``sum_j (float64(x_j) - float64(c[code_j]))**2``, float64, summed sequentially over the
  columns, with ``code_j`` the nearest centroid (ties to the lower one, the two-tier
  encoder's :func:`qe4.codebook.assign_codes`);
* the row stores those codes and that group id, as the layout stores them
  (:func:`qe4.codebook.encode_with_books`);
* every other row, the codebooks, ``params`` and ``extras`` stay byte for byte unchanged.

So a new row's bytes depend only on its values and the codebooks: updating rows one by one
or together gives the same bytes, in both packages, at every thread count.  The codebooks
are not refitted and the grouping rule of :func:`qe4.quantize` (ranks of row minima and
maxima over the whole table) is not applied, so re-encoding an old row's floats need not
give back its old bytes, and rows unlike every codebook's rows get a larger error than a
refit would: re-quantize the whole table from time to time (``qe4.table_error`` measures
the drift).  The stored codebooks must be finite and sorted ascending, as the layout
stores them; every update checks both (:func:`qe4.codebook.check_books`), so a tampered
file or a hand-built table is refused rather than encoded against.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from .table import QuantizedTable
    from ._typing import Float32Array, StrPath, UInt8Array

from . import _validate as V
from . import io

_CHUNK_BYTES = 64 << 20     # rows copied per write when a file is rewritten

#: The values of ``codebooks=``: None (the default: rows are quantized afresh, shared
#: codebooks refused) and "keep" (two-tier only: encode against the table's codebooks).
CODEBOOK_MODES = (None, "keep")


def update_rows(table: QuantizedTable, start: int, x: ArrayLike, *, method: str | None = None,
                codebooks: str | None = None, **options: Any) -> None:
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
    codebooks : {None, "keep"}
        None (default): the rows are what :func:`qe4.quantize` makes of them; a
        ``two-tier`` table is refused.  ``"keep"``: ``two-tier`` tables only; each new
        row is encoded with the existing codebook that gives it the smallest squared
        error, and the codebooks and other rows are not changed (the exact rule: the
        module notes of :mod:`qe4.update`).
    **options
        Method options; default: the table's ``params`` (e.g. ``n_bins``, ``ratio``).
        Refused with ``codebooks="keep"`` (nothing is fitted: the codebooks encode).

    Raises
    ------
    TypeError, ValueError, IndexError
        Not a table, a two-tier table without ``codebooks="keep"`` (or ``"keep"`` with
        another layout, or a bad ``codebooks`` value), a read-only table, a bad ``start``
        or row range (IndexError), ``x`` of the wrong width, a method or options that do
        not reproduce the table's layout, or anything :func:`qe4.quantize` refuses.

    Notes
    -----
    Concurrent readers of ``table`` may see some rows old and some new while the bytes
    are copied; the new rows are computed completely before the first byte is written,
    so an error leaves the table unchanged.

    Examples
    --------
    >>> import numpy as np, qe4
    >>> x = np.random.default_rng(0).standard_normal((100, 16), dtype=np.float32)
    >>> t = qe4.quantize(x, 4, "two-tier", n_groups=4)
    >>> books = t.extras["codebooks"].copy()
    >>> qe4.update_rows(t, 10, x[:2] * 2, codebooks="keep")
    >>> bool((t.extras["codebooks"] == books).all())
    True
    """
    _write_rows(table, start, x, method, options, REFERENCE, codebooks)


def update_file(path: StrPath, start: int, x: ArrayLike, *, method: str | None = None,
                in_place: bool = False, codebooks: str | None = None, **options: Any) -> None:
    """Re-quantize rows ``start`` to ``start + len(x) - 1`` of the qe4 file at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        A qe4 file (:func:`qe4.save`).
    start, x, method, codebooks, **options
        As for :func:`update_rows` (``codebooks="keep"``: the file's codebooks, read from
        it, are kept; only the new rows' bytes change).
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
    _update_file(path, start, x, method, in_place, options, REFERENCE, codebooks)


# --------------------------------------------------------------------------- shared steps

class Engine(NamedTuple):
    """What an engine (package) brings to an update; both packages share the rest."""
    #: ``quantize(x, bits, method, scale_dtype, options)``: the engine's quantize.
    quantize: Callable[..., QuantizedTable]
    #: ``encode_with_books(x, books, bits, scale_dtype)``: two-tier rows against fixed
    #: float32 codebooks (:func:`qe4.codebook.encode_with_books`).
    encode_with_books: Callable[..., UInt8Array]


def _quantize(x, bits, method, scale_dtype, options):
    from .api import quantize
    return quantize(x, bits, method, scale_dtype=scale_dtype, **options)


def _encode_with_books(x, books, bits, scale_dtype):
    from .codebook import encode_with_books
    return encode_with_books(x, books, bits, scale_dtype)


REFERENCE = Engine(_quantize, _encode_with_books)


def check_codebooks_mode(table: QuantizedTable, codebooks: object) -> bool:
    """Validate ``codebooks=`` against the table's layout; True for ``"keep"``."""
    if not (codebooks is None or (isinstance(codebooks, str) and codebooks in CODEBOOK_MODES)):
        raise ValueError(f"codebooks must be None or 'keep', got {codebooks!r}")
    if table.layout == "two-tier" and codebooks is None:
        raise ValueError("two-tier tables cannot be updated row by row: their codebooks are "
                         "fitted to all rows together; re-quantize the whole table, or pass "
                         "codebooks='keep' to encode the new rows with the existing codebooks")
    if codebooks == "keep" and table.layout != "two-tier":
        raise ValueError(f"codebooks='keep' applies to two-tier tables only (shared codebooks); "
                         f"this table's layout is {table.layout!r}, whose rows are quantized "
                         "on their own: leave codebooks=None")
    return codebooks == "keep"


def new_rows(table: QuantizedTable, start: int, x: ArrayLike, method: str | None,
             options: Mapping[str, Any], engine: Engine,
             codebooks: str | None = None) -> UInt8Array:
    """Validate an update and return the packed new rows (uint8 [n, row_bytes]).

    ``engine`` is the package's :class:`Engine`.  Shared by both packages, so both raise
    the same errors.
    """
    V.check_table(table)
    keep = check_codebooks_mode(table, codebooks)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"start must be an integer, got {start!r}")
    x = V.as_table(x)
    n = x.shape[0]
    if x.shape[1] != table.dim:
        raise ValueError(f"x has {x.shape[1]} columns; the table's rows have dim {table.dim}")
    if not 0 <= start <= table.n_rows - n:
        raise IndexError(f"rows {int(start)} .. {int(start) + n - 1} (start={int(start)}, "
                         f"{n} rows of x) are out of range for a table of {table.n_rows} rows")
    if keep:
        return _kept_rows(table, x, method, options, engine)
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
    new = engine.quantize(x, table.bits, method, table.scale_dtype, params)
    if new.layout != table.layout or new.row_bytes != table.row_bytes or new.extras:
        raise ValueError(f"method {method!r} with {params} makes {new.layout!r} rows of "
                         f"{new.row_bytes} bytes; the table has {table.layout!r} rows of "
                         f"{table.row_bytes} bytes")
    return new.data


def _kept_rows(table: QuantizedTable, x: Float32Array, method: str | None,
               options: Mapping[str, Any], engine: Engine) -> UInt8Array:
    """``codebooks="keep"``: rows of ``x`` against the table's own codebooks."""
    from . import codebook as C
    from .frontend import check_request
    if method is not None and method != table.method:
        raise ValueError(f"the table was made with method {table.method!r}; with "
                         f"codebooks='keep' its codebooks encode the rows: leave method=None")
    if options:
        raise ValueError(f"options {dict(options)} do not apply with codebooks='keep': the "
                         "table's codebooks encode the rows (nothing is fitted)")
    request = check_request(table.bits, table.method, scale_dtype=table.scale_dtype,
                            kwargs=table.params, family="codebook")
    C.check_values(request, x)             # what qe4.quantize refuses for this table
    books = C.check_books(table.extras["codebooks"])
    rows = engine.encode_with_books(x, books, table.bits, table.scale_dtype)
    if rows.shape != (x.shape[0], table.row_bytes):
        raise AssertionError(f"qe4: kept-codebook rows of shape {rows.shape}, "
                             f"expected {(x.shape[0], table.row_bytes)}")
    return rows


def _write_rows(table, start, x, method, options, engine, codebooks=None):
    rows = new_rows(table, start, x, method, options, engine, codebooks)
    if not table.data.flags.writeable:
        raise ValueError("table.data is read-only (a table loaded with mmap=True?): use "
                         "qe4.update_file(path, ...) or load the table with mmap=False")
    table.data[start:start + rows.shape[0]] = rows


def _update_file(path, start, x, method, in_place, options, engine, codebooks=None):
    path = os.fspath(path)
    table = io.load(path, mmap=True)
    rows = new_rows(table, start, x, method, options, engine, codebooks)
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
