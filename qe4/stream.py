"""Out-of-core quantization: quantize a table on disk, chunk by chunk, into a qe4 file.

The input is memory-mapped; row chunks sized to a memory budget are converted to
float32, validated (errors name the global row index), quantized by the chosen
engine and appended to a :class:`qe4.io.TableWriter`, which publishes the output
atomically only when every row is written.  Row-wise methods treat every row
independently, so the result is byte-identical to quantizing the whole table in memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .allocate import Rung
    from ._typing import StrPath

from . import engines as E
from . import frontend
from . import method_registry as M
from .engines import get_engine  # noqa: F401  (an old import path)
from .io import _TEMP_SUFFIX, TableWriter, _read_header, _temp_prefix, check_output_path
from .table import QuantizedTable

_ST_FLOATS = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}

# bytes of float32 workspace per input value an engine needs beyond the chunk itself
# (the reference's greedy search holds a transposed copy, candidate copies and loss temporaries)
_WORKSPACE = {"reference": 12, "fast": 2}

DEFAULT_MAX_MEMORY_CAP = 1 << 30


#: The methods that stream: the per-row methods of the registry (each row on its own).
STREAMABLE = M.names(per_row=True)


# --------------------------------------------------------------------------- sources

class Source:
    """A 2-D float table in a .npy or .safetensors file, read row block by row block.

    :meth:`read` copies rows into memory with ordinary reads (never a memory map:
    a file truncated while it is read gives a ValueError, not SIGBUS), so reading a
    file larger than RAM keeps the resident set to one block.  A Fortran-ordered
    ``.npy`` is read column segment by column segment, which costs the same memory
    as a C-ordered one.
    """

    def __init__(self, path: StrPath, tensor: str | None = None) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        try:
            magic = self._file.read(6)
            self.file_size = os.fstat(self._file.fileno()).st_size
            if magic == b"\x93NUMPY":
                if tensor is not None:
                    raise ValueError(f"{self.path}: tensor={tensor!r} applies to .safetensors inputs only")
                shape, dtype, offset, order = self._npy()
            else:
                shape, dtype, offset, order = self._safetensors(tensor)
            if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
                raise TypeError(f"{self.path}: the table must have dtype float16, float32 or "
                                f"float64, got {dtype}")
            if len(shape) != 2:
                raise ValueError(f"{self.path}: the table must be 2-D [n_rows, n_cols], got shape {shape}")
            if shape[0] == 0 or shape[1] == 0:
                raise ValueError(f"{self.path}: the table must have at least one row and one column, "
                                 f"got shape {shape}")
            if offset + shape[0] * shape[1] * dtype.itemsize > self.file_size:
                raise ValueError(f"{self.path}: the file has {self.file_size} bytes, too few for a "
                                 f"{shape[0]} x {shape[1]} {dtype} table (truncated?)")
        except BaseException:
            self._file.close()
            raise
        self.dtype = dtype
        self.n_rows, self.n_cols = int(shape[0]), int(shape[1])
        self.offset = offset
        self.row_major = order == "C"

    def _npy(self):
        f = self._file
        try:
            f.seek(0)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{self.path}: not a readable .npy file ({exc})") from None
        if dtype.hasobject:
            raise ValueError(f"{self.path}: not a readable .npy file (it holds Python objects, "
                             "which would need unpickling)")
        return shape, dtype, f.tell(), "F" if fortran and len(shape) > 1 else "C"

    def _safetensors(self, tensor):
        try:
            hdr = _read_header(self._file, self.path)
        except ValueError as exc:
            raise ValueError(f"{exc} (inputs must be .npy or .safetensors files)") from None
        if tensor is None:
            floats = [n for n, (d, s, _, _) in hdr.tensors.items() if len(s) == 2 and d in _ST_FLOATS]
            if len(floats) != 1:
                raise ValueError(
                    f"{self.path}: holds {len(floats)} 2-D float tensors "
                    f"({', '.join(sorted(floats)) or 'none'}); name the one to quantize with tensor=")
            tensor = floats[0]
        if tensor not in hdr.tensors:
            raise ValueError(f"{self.path}: no tensor named {tensor!r} "
                             f"(it has: {', '.join(sorted(hdr.tensors)) or 'none'})")
        dtype, shape, _, _ = hdr.tensors[tensor]
        if dtype not in _ST_FLOATS:
            raise TypeError(f"{self.path}: tensor {tensor!r} has dtype {dtype}; "
                            "only F16, F32 and F64 tables can be quantized")
        self.tensor = tensor
        return shape, _ST_FLOATS[dtype], hdr.offset(tensor), "C"

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.n_cols * self.dtype.itemsize

    def _read_into(self, buf, offset):
        """Fill the bytes of ``buf`` from file offset ``offset``; ValueError if the file ends."""
        view = memoryview(buf).cast("B")
        self._file.seek(offset)
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                size = os.fstat(self._file.fileno()).st_size
                raise ValueError(f"{self.path}: the file ended at byte {offset + got} (it now has "
                                 f"{size} bytes, {self.file_size} when opened): it was truncated "
                                 "while being read")
            got += n

    def read(self, start: int, stop: int) -> NDArray[np.floating]:
        """Rows ``[start, stop)`` as a new array [stop - start, n_cols] in the file's dtype
        (native byte order; Fortran-ordered for a Fortran-ordered .npy)."""
        k, item = stop - start, self.dtype.itemsize
        if self.row_major:
            out = np.empty((k, self.n_cols), self.dtype)
            self._read_into(out, self.offset + start * self.n_cols * item)
        else:    # column j holds rows [0, n_rows) contiguously: read each column's segment
            cols = np.empty((self.n_cols, k), self.dtype)
            for j in range(self.n_cols):
                self._read_into(cols[j], self.offset + (j * self.n_rows + start) * item)
            out = cols.T
        return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- chunking

def default_max_memory() -> int:
    """A quarter of the currently available RAM, between 64 MiB and 1 GiB."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 1 << 30
    return int(min(max(avail // 4, 64 << 20), DEFAULT_MAX_MEMORY_CAP))


# values per block of the error measurement (float64 temporaries: ~5 MiB, whatever the chunk)
ERROR_BLOCK_VALUES = 1 << 17


def bytes_per_row(n_cols: int, in_itemsize: int, row_bytes: int, engine: str,
                  measure_error: bool = False) -> int:
    """Peak working bytes one row costs: the input chunk, its float32 copy, the
    engine's workspace and the packed output (twice: result and write buffer).
    The error measurement works in fixed blocks of :data:`ERROR_BLOCK_VALUES`
    values (:func:`error_block_bytes`), whatever the chunk size."""
    return n_cols * (in_itemsize + 4 + 4 * _WORKSPACE[engine]) + 2 * row_bytes


def error_bytes_per_row(n_cols: int) -> int:
    """Working bytes per row of one block of the error measurement: a float32
    reconstruction and four float64 temporaries."""
    return n_cols * (4 + 4 * 8)


def plan_chunks(max_memory: int, n_rows: int, n_cols: int, per_row: int,
                measure_error: bool) -> tuple[int, int]:
    """(chunk_rows, error_rows): rows per chunk and per block of the error measurement,
    so that one chunk plus one error block fit in ``max_memory`` (ValueError if one
    row does not)."""
    per_err = error_bytes_per_row(n_cols) if measure_error else 0
    if max_memory < per_row + per_err:
        raise ValueError(f"max_memory={max_memory} bytes is less than one row of {n_cols} "
                         f"columns needs ({per_row + per_err} bytes"
                         + (f", {per_err} of them to measure the error)" if per_err else ")"))
    block = max(1, ERROR_BLOCK_VALUES // n_cols)
    if measure_error and max_memory - block * per_err >= block * per_row:
        chunk_rows = (max_memory - block * per_err) // per_row
    else:        # small budgets: the error block is the whole chunk
        chunk_rows = max_memory // (per_row + per_err)
        block = chunk_rows
    chunk_rows = int(min(n_rows, chunk_rows))
    return chunk_rows, int(min(block, chunk_rows))


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '100000' -> bytes (binary multiples); at least 1 byte
    unless the text is a plain 0."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text),
                     re.IGNORECASE | re.ASCII)
    if not m:
        raise ValueError(f"cannot read a size from {text!r} (examples: 2G, 512M, 1000000)")
    n = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if n == 0 and float(m.group(1)) != 0:
        raise ValueError(f"size {text!r} is less than one byte (a number without a unit "
                         "counts bytes; examples: 2G, 512M, 1000000)")
    return n


# --------------------------------------------------------------------------- validation

def _as_float32_chunk(block, start, label):
    """float32 copy of a row block, finite, with errors naming the global row."""
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(block, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ValueError(f"{label} must be finite: row {start + r}, column {c} is {float(block[r, c])!r}"
                         + (" (overflows float32)" if np.isfinite(block[r, c]) else ""))
    return x


@contextlib.contextmanager
def _global_rows(start, label):
    """Re-raise a chunk's ValueError with its row made global (``row N`` or ``x[N, c]``
    becomes N + ``start``) and the input named."""
    try:
        yield
    except ValueError as exc:
        msg = str(exc)
        m = re.search(r"\brow (\d+)\b", msg) or re.search(r"\w\[(\d+), \d+\]", msg)
        if not m:
            raise
        msg = msg[:m.start(1)] + str(start + int(m.group(1))) + msg[m.end(1):]
        raise ValueError(msg if msg.startswith(label) else f"{label}: {msg}") from None


# --------------------------------------------------------------------------- main entry

def quantize_file(src: StrPath, dst: StrPath, bits: int = 4, method: str = "greedy", *,
                  n_bins: int = 200, ratio: float = 0.16, scale_dtype: str | None = None,
                  max_memory: int | str | None = None, engine: str = "fast",
                  n_threads: int | None = None, progress: bool | None = None,
                  tensor: str | None = None, measure_error: bool = False,
                  **kwargs: Any) -> dict[str, Any]:
    """Quantize a table stored on disk into a qe4 file, without loading it into RAM.

    Parameters
    ----------
    src : path
        A ``.npy`` file (float16/32/64, 2-D) or a ``.safetensors`` file holding a
        single 2-D float tensor (or name it with ``tensor``).  The file is
        memory-mapped and read chunk by chunk.
    dst : path
        The qe4 file to write (see :mod:`qe4.io`).  Written atomically: it appears
        only when complete, and an interrupted or failed run leaves no file at ``dst``.
    bits, method, n_bins, ratio, scale_dtype
        As in :func:`qe4.quantize`.  Only the row-wise methods
        (``qe4._validate.UNIFORM_METHODS``) and the per-row codebook methods (``"kmeans"``,
        ``"kmeans-optimal"``, with their options in ``**kwargs``) stream; ``"two-tier"``
        clusters rows across the whole table and cannot.
    max_memory : int or str, optional
        Working-memory budget in bytes (or a size like ``"2G"``) for one chunk: its input
        rows, their float32 copy, the engine's workspace and the output rows.
        Default: :func:`default_max_memory`.
    engine : {"fast", "reference"}
        ``"fast"`` uses the compiled ``qe4_fast`` (an ImportError explains how to build
        it when missing; there is no silent fallback), ``"reference"`` uses ``qe4``.
    n_threads : int, optional
        Threads of the fast engine (None = all usable cores).
    progress : bool or None
        A tqdm bar (rows/s, ETA) on stderr; None shows it only when stderr is a terminal.
    tensor : str, optional
        The tensor to read from a safetensors input.
    measure_error : bool
        Also compute the normalized error ``sum ||x - x_hat||^2 / sum ||x||^2`` (float64),
        chunk by chunk.

    Returns
    -------
    dict
        ``n_rows, n_cols, in_dtype, in_bytes, out_bytes, chunk_rows, n_chunks, seconds,
        engine, error`` (``error`` is None unless ``measure_error``).

    Raises
    ------
    ValueError, TypeError
        Bad parameters, or bad input; input errors name the global row index.
    ImportError
        ``engine="fast"`` without a built ``qe4_fast``.
    """
    t0 = time.perf_counter()
    request = frontend.check_request(bits, method, n_bins, ratio, scale_dtype, kwargs,
                                     per_row_for="streamed")
    eng = E.engine(engine, n_threads)
    max_memory = _check_max_memory(max_memory)
    src, dst = _check_paths(src, dst)

    with Source(src, tensor) as source:
        n_rows, n_cols = source.n_rows, source.n_cols
        row_bytes = request.row_bytes(n_cols)
        per_row = bytes_per_row(n_cols, source.dtype.itemsize, row_bytes, engine, measure_error)
        chunk_rows, error_rows = plan_chunks(max_memory, n_rows, n_cols, per_row, measure_error)
        label = f"{src}" + (f" tensor {source.tensor!r}" if getattr(source, "tensor", None) else "")
        num = den = 0.0
        bar = _progress_bar(progress, n_rows, os.path.basename(dst))
        try:
            with TableWriter(dst, n_rows=n_rows, bits=request.bits, dim=n_cols, method=method,
                             scale_dtype=request.scale_dtype, layout=request.layout.name,
                             params=request.params, row_bytes=row_bytes) as writer:
                for start in range(0, n_rows, chunk_rows):
                    stop = min(start + chunk_rows, n_rows)
                    x = _as_float32_chunk(source.read(start, stop), start, label)
                    with _global_rows(start, label):
                        request.check_values(x, name=label)
                        table = frontend.encode(request, x, eng)
                    writer.write(table.data)
                    if measure_error:
                        a, b = _error_terms(eng, x, table, error_rows)
                        num, den = num + a, den + b
                    del x, table
                    bar.update(stop - start)
        finally:
            bar.close()
        error = (num / den if den else (0.0 if num == 0 else float("inf"))) \
            if measure_error else None
        return _summary(source, dst, chunk_rows, t0, engine, error=error)


def _check_max_memory(max_memory):
    """``max_memory`` in bytes (default :func:`default_max_memory`; a size string is parsed)."""
    if max_memory is None:
        return default_max_memory()
    if isinstance(max_memory, str):
        max_memory = parse_size(max_memory)
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return int(max_memory)


def _check_paths(src, dst):
    """(src, dst) as str; dst writable (:func:`qe4.io.check_output_path`) and not src."""
    src, dst = os.fspath(src), check_output_path(dst, "dst")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"dst {dst!r} is the input file; choose another output path")
    return src, dst


def _summary(source, dst, chunk_rows, t0, engine, **more):
    """The dict :func:`quantize_file` and :func:`quantize_file_budget` return."""
    return dict({"n_rows": source.n_rows, "n_cols": source.n_cols, "in_dtype": str(source.dtype),
                 "in_bytes": source.file_size, "out_bytes": os.path.getsize(dst),
                 "chunk_rows": chunk_rows, "n_chunks": -(-source.n_rows // chunk_rows),
                 "seconds": time.perf_counter() - t0, "engine": engine}, **more)


def _error_terms(eng, x, table, step):
    """Sums of squared error and squared norm of one chunk, in float64, block by block
    of ``step`` rows (see :func:`plan_chunks`)."""
    num = den = 0.0
    for a in range(0, x.shape[0], step):
        part = QuantizedTable(table.data[a:a + step], bits=table.bits, dim=table.dim,
                              method=table.method, scale_dtype=table.scale_dtype,
                              layout=table.layout, extras=table.extras, params=table.params)
        x_hat = eng.call("dequantize", part).astype(np.float64)
        x64 = x[a:a + step].astype(np.float64)
        num += float(((x64 - x_hat) ** 2).sum())
        den += float((x64 ** 2).sum())
    return num, den


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(progress, total, desc):
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit="row", unit_scale=True, desc=desc, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


# --------------------------------------------------------------------------- budget

def quantize_file_budget(src: StrPath, dst: StrPath, budget: int | str, *,
                         weights: ArrayLike | None = None,
                         ladder: Sequence[str | Rung] | None = None, row_map: str = "tiers",
                         max_memory: int | str | None = None, engine: str = "fast",
                         n_threads: int | None = None, progress: bool | None = None,
                         tensor: str | None = None) -> dict[str, Any]:
    """Quantize a table on disk under a byte budget into a mixed-precision qe4 file.

    Two passes over the memory-mapped input, chunk by chunk: the first computes every
    row's squared error under every rung (:func:`qe4.allocate.rung_errors`), then
    :func:`qe4.allocate.allocate`'s solver chooses the rungs; the second quantizes each
    chunk's rows by their rung into the sub-tables (temporary memory-mapped files beside
    ``dst``) and the row map, and the file is written atomically.  The bytes equal
    :func:`qe4.mixed.quantize_mixed` on the whole table (the rungs are row-wise).

    Parameters
    ----------
    src, dst, max_memory, engine, n_threads, progress, tensor
        As for :func:`quantize_file`.  ``max_memory`` bounds one chunk's working set,
        not the allocation's: the per-row errors, weights and norms take
        ``8 * (n_rungs + 2)`` bytes per row, and the solver's hulls and temporaries
        about 27 bytes per row per rung more at its peak (measured: 160 B/row with
        the 6-rung default ladder).  The rows themselves are never all in memory, so a
        table bigger than memory streams when its rows are wider than that.
    budget : int or str
        Bytes, a size (``"2.5G"``) or bits per element (``"3.0bpw"``); see
        :func:`qe4.allocate.parse_budget`.
    weights : array [n_rows], optional
        Access counts or importance of the rows (default 1), given up front.
    ladder, row_map
        As for :func:`qe4.allocate.allocate`.

    Returns
    -------
    dict
        ``n_rows, n_cols, in_dtype, in_bytes, out_bytes, chunk_rows, n_chunks, seconds,
        engine, error`` (the weighted normalized error) and ``allocation`` (the
        :class:`qe4.allocate.Allocation`).
    """
    import tempfile

    from . import allocate as A
    from . import mixed as MX
    from .io import save
    t0 = time.perf_counter()
    rungs = A.ladder(ladder)
    if row_map not in MX.ROW_MAPS:
        raise ValueError(f"row_map must be one of {MX.ROW_MAPS}, got {row_map!r}")
    E.engine(engine, n_threads)  # the fast engine is built and n_threads fits it, or a clear error
    max_memory = _check_max_memory(max_memory)
    src, dst = _check_paths(src, dst)
    with Source(src, tensor) as source:
        n_rows, n_cols = source.n_rows, source.n_cols
        w = A._weights(weights, None, [(n_rows, n_cols)])[0]
        budget = A.parse_budget(budget, n_rows * n_cols)
        A.check_budget(budget, [n_rows], [n_cols], rungs)      # before reading any row
        widest = max(r.row_bytes(n_cols) for r in rungs)
        per_row = bytes_per_row(n_cols, source.dtype.itemsize, widest, engine, True)
        if max_memory < per_row * MX.SUPER:
            raise ValueError(f"max_memory={max_memory} bytes is less than {MX.SUPER} rows of "
                             f"{n_cols} columns need ({per_row * MX.SUPER} bytes)")
        # chunks of whole rank-directory blocks, so the row map is written chunk by chunk
        chunk_rows = int(min(n_rows, max_memory // per_row)) // MX.SUPER * MX.SUPER or n_rows
        label = f"{src}" + (f" tensor {source.tensor!r}" if getattr(source, "tensor", None) else "")

        def chunks():
            for start in range(0, n_rows, chunk_rows):
                stop = min(start + chunk_rows, n_rows)
                yield start, stop, _as_float32_chunk(source.read(start, stop), start, label)

        errors = np.empty((n_rows, len(rungs)))
        norms = np.empty(n_rows)
        bar = _progress_bar(progress, 2 * n_rows, os.path.basename(dst))
        try:
            for start, stop, x in chunks():
                with _global_rows(start, label):
                    errors[start:stop] = A.rung_errors(x, rungs, engine=engine, n_threads=n_threads)
                norms[start:stop] = A._row_norms(x, engine, n_threads)
                bar.update(stop - start)
            alloc = A.solve([errors], [w], [norms], [n_cols], budget, rungs, row_map=row_map,
                            engine=engine, n_threads=n_threads, overwrite_errors=True)
            del errors, norms
            temps = []

            def new_array(shape, dtype):
                # the sub-tables live in files beside dst, named as qe4.io names its temporary
                # files: those of a run that died (kill -9) go with qe4.io.remove_stale_temps
                if 0 in shape:
                    return np.empty(shape, dtype)
                fd, path = tempfile.mkstemp(prefix=_temp_prefix(dst), suffix=_TEMP_SUFFIX,
                                            dir=os.path.dirname(os.path.abspath(dst)))
                os.close(fd)
                temps.append(path)
                return np.memmap(path, dtype=dtype, mode="w+", shape=shape)

            def counted():
                for start, stop, x in chunks():
                    yield start, stop, x
                    bar.update(stop - start)

            try:
                table = MX.build_mixed(counted(), alloc.choices[0], rungs, n_cols, row_map=row_map,
                                       engine=engine, n_threads=n_threads, new_array=new_array)
                save(table, dst)
                nbytes = table.nbytes
                del table
            finally:
                for path in temps:
                    with contextlib.suppress(OSError):
                        os.remove(path)
        finally:
            bar.close()
        return _summary(source, dst, chunk_rows, t0, engine, error=alloc.error,
                        allocation=alloc, nbytes=nbytes)
