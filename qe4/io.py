"""The qe4 file format: a safetensors file holding one :class:`QuantizedTable`.

A qe4 file is a plain safetensors file (readable by ``safetensors.numpy``,
``safetensors.torch`` and any other safetensors reader)::

    [u64 little-endian N][N bytes of JSON header, space-padded to a multiple of 8][buffer]

Header::

    {"__metadata__": {"format": "qe4", "format_version": "1", "bits": "4", "dim": "50",
                      "method": "greedy", "scale_dtype": "float16", "layout": "rowwise",
                      "params": "{\\"n_bins\\": 200, \\"ratio\\": 0.16}"},
     "extra.<name>": {"dtype": "F32", "shape": [...], "data_offsets": [b, e]},   # 0 or more
     "data":         {"dtype": "U8", "shape": [n_rows, row_bytes], "data_offsets": [b, e]}}

Offsets are relative to the buffer, tensors tile it without gaps, the extras come
first (widest dtype first, so every one is aligned) and the packed rows last, so a
writer can stream them.  Every metadata value is a string (a safetensors rule).

Writing is atomic: a temporary file in the destination directory is filled,
flushed and fsynced, then renamed over ``path`` and the directory fsynced.  An
error or interrupt at any point removes the temporary file; ``path`` then either
does not exist or still holds its previous content.  No pickle is involved anywhere.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from collections.abc import Mapping
    from .table import QuantizedTable
    from ._typing import StrPath

from . import _mapped
from . import _validate as V
from . import layouts as L
from .table import FORMAT_VERSION, QuantizedTable

FORMAT = "qe4"
MAX_HEADER_BYTES = 100_000_000      # safetensors' own limit
MAX_JSON_DEPTH = 64                 # a qe4 header nests 3 deep; Python's parser recurses per level
DATA_KEY = "data"
EXTRA_PREFIX = "extra."

# safetensors dtype name <-> numpy dtype (little-endian)
_DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}
_NAMES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}


def _st_dtype(arr, what):
    """safetensors dtype name of a numpy array (TypeError if it has none)."""
    name = _NAMES.get((arr.dtype.kind, arr.dtype.itemsize))
    if name is None:
        raise TypeError(f"{what} has dtype {arr.dtype}, which safetensors cannot store")
    return name


# --------------------------------------------------------------------------- reading

class _Header:
    """A validated safetensors header: tensors, metadata and where the buffer starts."""

    def __init__(self, path, tensors, metadata, buffer_start, file_size):
        self.path = path
        self.tensors = tensors          # name -> (dtype, shape tuple, begin, end), buffer-relative
        self.metadata = metadata        # dict str -> str
        self.buffer_start = buffer_start
        self.file_size = file_size

    def offset(self, name):
        """Absolute file offset of tensor ``name``."""
        return self.buffer_start + self.tensors[name][2]


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in the header")
        out[k] = v
    return out


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text ``raw`` (bytes), strings skipped.

    Linear and non-recursive, so it can vet text before ``json.loads`` (which
    recurses once per level: RecursionError at ~1,000 levels, and a C stack
    overflow with a raised recursion limit).
    """
    text = np.frombuffer(_JSON_STRING.sub(b'""', raw), np.uint8)
    steps = (np.isin(text, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(text, (ord("]"), ord("}"))))
    return int(np.cumsum(steps).max(initial=0))


def loads_bounded(raw: bytes | str, what: str, max_bytes: int = MAX_HEADER_BYTES,
                  max_depth: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` of ``raw`` (bytes or str) after bounding its size and nesting depth.

    Raises ValueError starting with ``what`` (e.g. "<file>: the header") when
    ``raw`` is larger than ``max_bytes``, nests deeper than ``max_depth``, or is
    not UTF-8 JSON.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise ValueError(f"{what} is {len(raw)} bytes of JSON, more than the {max_bytes} allowed")
    depth = json_depth(raw)
    if depth > max_depth:
        raise ValueError(f"{what} nests {depth} levels deep, more than the {max_depth} "
                         "levels allowed")
    try:
        return json.loads(raw.decode("utf-8"), **kwargs)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what} is not valid UTF-8 JSON ({exc})") from None


def read_safetensors_header(path: StrPath) -> _Header:
    """Read and validate the header of any safetensors file (no tensor data is read).

    Checks the length prefix, the JSON, every tensor's dtype, shape and offsets
    (inside the file, sizes matching shape x itemsize, tiling the buffer with no
    gap or overlap, the buffer ending at the end of the file) and that the
    metadata maps strings to strings.  Raises ValueError naming ``path`` and the
    problem; OSError if the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f, path):
    """read_safetensors_header of the open binary file ``f`` (read from its start)."""
    def bad(msg):
        return ValueError(f"{path}: not a valid safetensors file: {msg}")

    f.seek(0)
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise bad(f"the file is {file_size} bytes, too short for the 8-byte header length")
    if prefix.startswith(b"\x93NUMPY"):
        raise bad("it is a .npy array file")
    n = int.from_bytes(prefix, "little")
    if n < 2 or n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} is out of range [2, {MAX_HEADER_BYTES}]")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the file ({file_size} bytes; truncated?)")
    raw = f.read(n)
    header = loads_bounded(raw, f"{path}: not a valid safetensors file: the header",
                           object_pairs_hook=_no_duplicates)
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    buffer_start = 8 + n
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} must have exactly dtype, shape and data_offsets, got {info!r}")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"tensor {name!r} has dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
                type(s) is int and s >= 0 for s in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(
                type(o) is int and o >= 0 for o in offs) or offs[0] > offs[1]:
            raise bad(f"tensor {name!r} has data_offsets {offs!r}, not [begin, end] with 0 <= begin <= end")
        np_dtype = _DTYPES.get(dtype)
        if np_dtype is not None:
            nbytes = int(np.prod(shape, dtype=object)) * np_dtype.itemsize
            if nbytes != offs[1] - offs[0]:
                raise bad(f"tensor {name!r} of dtype {dtype} and shape {shape} needs {nbytes} bytes, "
                          f"its data_offsets {offs} span {offs[1] - offs[0]}")
        tensors[name] = (dtype, tuple(shape), offs[0], offs[1])
    end = 0
    for name, (_, _, b, e) in sorted(tensors.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if b != end:
            raise bad(f"tensor {name!r} starts at buffer offset {b}, expected {end} "
                      "(tensors must tile the buffer without gaps or overlaps)")
        end = e
    if buffer_start + end != file_size:
        raise bad(f"the tensors end at byte {buffer_start + end} but the file has {file_size} bytes"
                  + (" (truncated?)" if buffer_start + end > file_size else " (trailing garbage)"))
    return _Header(path, tensors, metadata, buffer_start, file_size)


_CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")


def _parse_qe4(hdr):
    """Check a header describes a qe4 table; return the QuantizedTable keyword arguments."""
    path, meta = hdr.path, hdr.metadata

    def bad(msg):
        return ValueError(f"{path}: {msg}")

    if meta.get("format") != FORMAT:
        names = ", ".join(sorted(hdr.tensors)) or "none"
        raise bad(f"not a qe4 file (a safetensors file whose metadata has format="
                  f"{meta.get('format')!r}, expected 'qe4'; tensors: {names})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise bad(f"unsupported qe4 format_version {meta.get('format_version')!r} "
                  f"(this qe4 reads version {FORMAT_VERSION})")
    missing = [k for k in ("bits", "dim", "method", "scale_dtype", "layout", "params") if k not in meta]
    if missing:
        raise bad(f"qe4 metadata is missing {missing}")
    kw = {}
    for key in ("bits", "dim"):
        # the writer's spelling only: str(int) in ASCII digits (int() would also take
        # " 4 ", "4_0", "+4" or Arabic-Indic digits)
        if not _CANONICAL_INT.fullmatch(meta[key]):
            raise bad(f"metadata {key}={meta[key]!r} is not an integer written in ASCII digits")
        kw[key] = int(meta[key])
    if meta["layout"] not in L.LAYOUTS:
        raise bad(f"metadata layout={meta['layout']!r} is not one of {tuple(L.LAYOUTS)}")
    params = loads_bounded(meta["params"], f"{path}: metadata params={meta['params'][:200]!r}")
    if not isinstance(params, dict):
        raise bad(f"metadata params must be a JSON object, got {meta['params']!r}")
    kw.update(method=meta["method"], scale_dtype=meta["scale_dtype"], layout=meta["layout"],
              params=params)
    if DATA_KEY not in hdr.tensors:
        raise bad("the file has no 'data' tensor")
    dtype, shape, _, _ = hdr.tensors[DATA_KEY]
    if dtype != "U8" or len(shape) != 2:
        raise bad(f"tensor 'data' must be U8 [n_rows, row_bytes], got {dtype} {list(shape)}")
    for name, (dt, _, _, _) in hdr.tensors.items():
        if name != DATA_KEY and not name.startswith(EXTRA_PREFIX):
            raise bad(f"unexpected tensor {name!r} (a qe4 file holds 'data' and 'extra.*' only)")
        if dt not in _DTYPES:
            raise bad(f"tensor {name!r} has dtype {dt}, which qe4 does not read")
    _check_layout(hdr, kw)
    return kw


def _check_layout(hdr, kw):
    """The layout's structural rules (:meth:`qe4.layouts.Layout.validate`) on the header
    alone, before any tensor is read: a malformed codebook/two-tier file (wrong row
    width, missing, unknown or misshapen extras, a bit width the layout lacks) is refused
    naming the file, by :func:`load` and :func:`read_metadata` (so ``qe4 info``) alike."""
    # zero-byte stand-ins with each extra's dtype and shape: nothing is allocated or read
    extras = {name[len(EXTRA_PREFIX):]: np.broadcast_to(np.zeros((), _DTYPES[d].newbyteorder("=")), s)
              for name, (d, s, _, _) in hdr.tensors.items() if name != DATA_KEY}
    shape = hdr.tensors[DATA_KEY][1]
    try:
        bits = V.check_bits(kw["bits"])
        L.check_dim(kw["dim"])
        L.get(kw["layout"]).validate(shape[0], shape[1], bits, kw["dim"], kw["scale_dtype"], extras)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{hdr.path}: inconsistent qe4 metadata: {exc}") from None


def read_metadata(path: StrPath) -> dict[str, Any]:
    """The metadata of a qe4 file, from its header alone (cheap).

    Returns a dict with the string metadata decoded (``bits`` and ``dim`` as
    int, ``params`` as a dict) plus ``n_rows``, ``row_bytes``, ``extras``
    ({name: (dtype, shape)}), ``data_bytes`` (rows plus extras) and ``file_size``.
    Raises ValueError naming the path when the file is not a valid qe4 file.
    """
    hdr = read_safetensors_header(path)
    kw = _parse_qe4(hdr)
    shape = hdr.tensors[DATA_KEY][1]
    extras = {n[len(EXTRA_PREFIX):]: (str(_DTYPES[d]), list(s))
              for n, (d, s, _, _) in hdr.tensors.items() if n != DATA_KEY}
    return dict(hdr.metadata, **kw, n_rows=shape[0], row_bytes=shape[1], extras=extras,
                data_bytes=sum(e - b for _, _, b, e in hdr.tensors.values()),
                file_size=hdr.file_size)


def load(path: StrPath, *, mmap: bool = True, check_finite: bool = True) -> QuantizedTable:
    """Read a qe4 file written by :func:`save` or :class:`TableWriter`.

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool
        True (default): ``table.data`` (and each layout array in ``table.extras``)
        is a read-only ``np.memmap`` of the file, so lookups touch only the pages
        they need and loading reads only the header.  Every qe4 function that
        takes the table first checks the file still has its size (one ``fstat``),
        so a file truncated after loading raises ValueError instead of crashing
        the process with SIGBUS; a file truncated *during* a call can still crash
        it, and a file rewritten in place with the same size changes the rows
        under the table.  False: the file is read into memory once (writable
        arrays), immune to later changes of the file.
    check_finite : bool
        Check that every stored scale, bias and centroid is finite (a NaN or inf
        there, in a file that is otherwise valid, would make lookups return NaN).
        This reads those fields of every row: about 0.3x the time of reading the
        file with ``mmap=False`` (0.2x: +20%), and with ``mmap=True`` it pages
        the rows in once (see the README); pass False to skip it.

    Returns
    -------
    QuantizedTable

    Raises
    ------
    ValueError
        The file is truncated, corrupt, not a qe4 file, or its metadata is
        inconsistent (e.g. ``row_bytes`` does not match bits/dim/scale_dtype, or the
        extras do not match the layout: checked from the header, before any tensor is
        read).  With ``mmap=False`` also a row breaking its layout's value rules (a
        two-tier group id out of range; memory-mapped tables report it at the first
        lookup of that row, so opening a file never reads all its rows).  The message
        names the path and the problem.
    """
    return _load(path, mmap=mmap, check_finite=check_finite)[0]


def _load(path, *, mmap=True, check_finite=True):
    """:func:`load`, also returning the file's validated header (one read of the file)."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=False) as f:
        try:
            hdr = _read_header(f, path)
            kw = _parse_qe4(hdr)
            if mmap and hdr.file_size > hdr.buffer_start:
                arrays = _map_arrays(f, hdr)
                fd = None            # the registered mapping owns it now
            else:
                arrays = _read_arrays(f, hdr)
        finally:
            if fd is not None:
                os.close(fd)
    data = arrays.pop(DATA_KEY)
    extras = {name[len(EXTRA_PREFIX):]: arr for name, arr in arrays.items()}
    try:
        table = QuantizedTable(data, extras=extras, **kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: inconsistent qe4 metadata: {exc}") from None
    if not mmap:        # the rows are in memory: their value rules cost one pass (group ids)
        check_rows(table, path)
    if check_finite:
        check_stored_floats(table, path)
    return table, hdr


def check_rows(table: QuantizedTable, path: StrPath) -> None:
    """The layout's value rules over every row (:meth:`qe4.layouts.Layout.check_rows`,
    e.g. two-tier group ids), with errors naming ``path``."""
    try:
        table.layout_entry.check_rows(table.data, table.extras)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


_FINITE_BLOCK_BYTES = 1 << 18


# non-finite (inf or NaN) <=> exponent all ones <=> (bits & ~sign) >= the bits of +inf
_INF_BITS = {"float16": ("<u2", 0x7FFF, 0x7C00), "float32": ("<u4", 0x7FFFFFFF, 0x7F800000)}


def _nonfinite(raw, dtype):
    """Mask of the non-finite little-endian ``dtype`` values in uint8 ``raw`` [n, k * itemsize]
    (its last axis contiguous), computed on the bits: no conversion, no copy of ``raw``."""
    view, magnitude, inf = _INF_BITS[dtype]
    bits = np.bitwise_and(raw.view(view), magnitude)
    return bits >= inf if int(bits.max(initial=0)) >= inf else None


def check_stored_floats(table: QuantizedTable, path: StrPath = "table") -> None:
    """Raise ValueError if a stored scale, bias or centroid of ``table`` is NaN or inf.

    Rowwise rows hold a scale and a bias, codebook rows their centroids, two-tier
    tables ``extras["codebooks"]``; rows are read in blocks, so the memory used does
    not grow with the table.
    """
    if table.scale_dtype not in _INF_BITS:
        return
    dt = np.dtype(table.scale_dtype).newbyteorder("<")
    if table.layout == "two-tier":
        books = table.extras.get("codebooks")
        if books is None or books.dtype != dt or books.ndim != 2:
            return      # not a valid two-tier table: the table checks say why
        rows = books.reshape(books.shape[0], -1).view(np.uint8)
        what = "codebook {} has a non-finite centroid"
    elif table.layout in ("rowwise", "codebook"):
        rows = table.data[:, table.code_bytes:]
        what = "row {} has a non-finite stored " + (
            "scale/bias" if table.layout == "rowwise" else "centroid")
    else:
        return
    if rows.shape[1] % dt.itemsize or not rows.shape[1]:
        return
    step = max(1, _FINITE_BLOCK_BYTES // rows.shape[1])    # 256 KiB of fields per block
    for a in range(0, rows.shape[0], step):
        bad = _nonfinite(rows[a:a + step], table.scale_dtype)
        if bad is not None:
            r, k = np.argwhere(bad)[0]
            value = rows[a + r].view(dt)[k]
            raise ValueError(f"{path}: {what.format(a + r)} ({value!r}): the file is corrupt "
                             "(check_finite=False loads it anyway)")


def _native(arr):
    """``arr`` in native byte order (a copy only on big-endian machines)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _map_arrays(f, hdr):
    """Every tensor as a read-only view of one memory map of the buffer, registered
    with :mod:`qe4._mapped` (the size check that turns SIGBUS into ValueError)."""
    buf = np.memmap(f, dtype=np.uint8, mode="r", offset=hdr.buffer_start,
                    shape=(hdr.file_size - hdr.buffer_start,))
    _mapped.register(buf._mmap, f.fileno(), hdr.path, hdr.file_size)
    out = {}
    for name, (dtype, shape, b, e) in hdr.tensors.items():
        arr = buf[b:e].view(_DTYPES[dtype]).reshape(shape)
        out[name] = _native(arr)
    return out


def _read_arrays(f, hdr):
    """Every tensor read into its own (writable) array: one copy, no intermediate bytes."""
    out = {}
    for name, (dtype, shape, b, e) in hdr.tensors.items():
        arr = np.empty(shape, _DTYPES[dtype])
        view = memoryview(arr.reshape(-1).view(np.uint8))
        f.seek(hdr.buffer_start + b)
        got = 0
        while got < e - b:
            n = f.readinto(view[got:])
            if not n:    # the file shrank since the header was read
                raise ValueError(f"{hdr.path}: tensor {name!r} is truncated")
            got += n
        out[name] = _native(arr)
    return out


# --------------------------------------------------------------------------- writing

def _metadata(bits, dim, method, scale_dtype, layout, params):
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "bits": str(bits),
            "dim": str(dim), "method": str(method), "scale_dtype": str(scale_dtype),
            "layout": str(layout), "params": json.dumps(params or {}, sort_keys=True)}


def check_output_path(path: StrPath, name: str = "path") -> str:
    """``path`` as a str, refused (before any work is done) when it cannot be written:
    empty, an existing directory, or in a directory that does not exist."""
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{name} must name a file, got {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path!r} is a directory; name the file to write")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name} {path!r}: directory {parent!r} does not exist")
    return path


# Temporary files are named .<target>.<host>-<pid>.<random>.qe4tmp, so that a later writer
# of the same target can remove those of writers that died (kill -9, power loss).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP_SUFFIX = ".qe4tmp"


def _temp_prefix(path):
    return f".{os.path.basename(path)}.{_HOST}-{os.getpid()}."


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True      # exists (another user's), or cannot tell: keep its file
    return True


def remove_stale_temps(path: StrPath) -> list[str]:
    """Remove temporary files left beside ``path`` by writers of it that died on this
    host (their pid no longer exists).  Returns the names removed.  POSIX only (a
    process cannot be probed without side effects elsewhere); files of live writers
    and of other hosts are kept."""
    if os.name != "posix":
        return []
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.{_HOST}-") + r"(\d+)\.[A-Za-z0-9_]+"
                         + re.escape(_TEMP_SUFFIX))
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for f in names:
        m = pattern.fullmatch(f)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, f))
                removed.append(f)
            except OSError:
                pass     # removed by someone else meanwhile, or not ours to remove
    return removed


class TableWriter:
    """Write a qe4 file incrementally and publish it atomically.

    The header is written first (all sizes are known up front), then the
    extras, then the rows as they come, in order::

        with TableWriter(path, n_rows=n, bits=4, dim=64, method="greedy",
                         scale_dtype="float16") as w:
            for chunk in chunks:          # uint8 [k, row_bytes]
                w.write(chunk)

    Only a clean exit of the ``with`` block after exactly ``n_rows`` rows
    publishes the file (flush, fsync, ``os.replace`` onto ``path``, fsync of the
    directory).  Anything else (an exception, KeyboardInterrupt, too few rows)
    removes the temporary file and leaves ``path`` untouched.

    Parameters
    ----------
    path : str or os.PathLike
    n_rows, bits, dim, method, scale_dtype, layout, params, extras
        As in :class:`QuantizedTable`; the metadata is validated by building an
        empty table with it.
    row_bytes : int, optional
        Bytes per row; by default the layout's (:meth:`qe4.layouts.Layout.row_bytes`
        for bits/dim/scale_dtype and the extras).
    metadata : dict of str -> str, optional
        More header metadata (e.g. a shard's row range); may not replace qe4's keys.

    The temporary file is ``.<name>.<host>-<pid>.<random>.qe4tmp`` beside ``path``;
    entering the ``with`` block first removes such files of writers of ``path``
    that died on this host without cleaning up (``kill -9``).
    """

    def __init__(self, path: StrPath, *, n_rows: int, bits: int, dim: int, method: str,
                 scale_dtype: str, layout: str = "rowwise", params: Mapping[str, Any] | None = None,
                 extras: Mapping[str, ArrayLike] | None = None, row_bytes: int | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.path = check_output_path(path)
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise ValueError(f"n_rows must be a non-negative integer, got {n_rows!r}")
        self.n_rows = int(n_rows)
        extras = {str(k): np.asarray(v) for k, v in (extras or {}).items()}
        if row_bytes is None:       # the layout's row size (validated with the rest below)
            bits = V.check_bits(bits)
            if scale_dtype not in V.SCALE_DTYPES:
                raise ValueError(f"scale_dtype must be one of {V.SCALE_DTYPES}, got {scale_dtype!r}")
            row_bytes = L.get(layout).row_bytes(L.check_dim(dim), bits, scale_dtype, extras)
        self.row_bytes = int(row_bytes)
        # validates bits/dim/scale_dtype/layout/extras and row_bytes against them (rows of
        # 0 bytes, as in mixed tables, cost nothing: validate with every row)
        QuantizedTable(np.zeros((self.n_rows if self.row_bytes == 0 else 0, self.row_bytes), np.uint8),
                       bits=bits, dim=dim, method=method, scale_dtype=scale_dtype, layout=layout,
                       params=params, extras=extras)
        self.extras = []
        for name in sorted(extras, key=lambda k: (-extras[k].dtype.itemsize, k)):
            arr = extras[name]
            st = _st_dtype(arr, f"extras[{name!r}]")
            self.extras.append((EXTRA_PREFIX + name, st,
                                np.ascontiguousarray(arr, dtype=_DTYPES[st])))
        meta = _metadata(int(bits), int(dim), method, scale_dtype, layout, params)
        for k, v in (metadata or {}).items():
            if not isinstance(k, str) or not isinstance(v, str) or k in meta:
                raise ValueError(f"metadata must map new string keys to strings, got {k!r}: {v!r}")
            meta[k] = v
        self._header = self._build_header(meta)
        self.rows_written = 0
        self._file = None
        self._tmp = None

    def _build_header(self, meta):
        header = {"__metadata__": meta}
        offset = 0
        for name, st, arr in self.extras:
            header[name] = {"dtype": st, "shape": list(arr.shape),
                            "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
        end = offset + self.n_rows * self.row_bytes
        header[DATA_KEY] = {"dtype": "U8", "shape": [self.n_rows, self.row_bytes],
                            "data_offsets": [offset, end]}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)       # buffer starts 8-byte aligned
        if offset % 8 == 0:                 # and the packed rows start on a 64-byte cache line
            raw += b" " * (-(8 + len(raw) + offset) % 64)   # (memory-mapped rows stay aligned)
        self.file_size = 8 + len(raw) + end
        return len(raw).to_bytes(8, "little") + raw

    def _write(self, buf):
        """Write bytes to the temporary file (one place, so tests can inject failures)."""
        self._file.write(buf)

    def __enter__(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        remove_stale_temps(self.path)
        fd, self._tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(self.path),
                                         suffix=_TEMP_SUFFIX)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            self._file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        try:
            self._write(self._header)
            for _, _, arr in self.extras:
                self._write(arr.reshape(-1).view(np.uint8).data)
        except BaseException:
            self._discard()
            raise
        return self

    def write(self, chunk: ArrayLike) -> None:
        """Append rows: uint8 [k, row_bytes], in order."""
        if self._file is None:
            raise ValueError("TableWriter.write called outside its with block")
        if not isinstance(chunk, np.ndarray) or chunk.dtype != np.uint8 or chunk.ndim != 2 \
                or chunk.shape[1] != self.row_bytes:
            got = (f"{chunk.dtype} {chunk.shape}" if isinstance(chunk, np.ndarray)
                   else type(chunk).__name__)
            raise ValueError(f"chunk must be uint8 [k, {self.row_bytes}], got {got}")
        if self.rows_written + chunk.shape[0] > self.n_rows:
            raise ValueError(f"too many rows: {self.rows_written} written + {chunk.shape[0]} "
                             f"> n_rows = {self.n_rows}")
        if chunk.size:
            self._write(np.ascontiguousarray(chunk).reshape(-1).data)
        self.rows_written += chunk.shape[0]

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._discard()
            return False
        if self.rows_written != self.n_rows:
            self._discard()
            raise ValueError(f"{self.path}: only {self.rows_written} of {self.n_rows} rows were "
                             "written; the file was not created")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self._discard()
            raise
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return False

    def _discard(self):
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass        # e.g. ENOSPC again while flushing the buffer we are dropping
            self._file = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return      # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass        # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def save(table: QuantizedTable, path: StrPath, *,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write ``table`` to ``path`` as a qe4 safetensors file, atomically.

    See the module docstring for the layout.  On any failure (disk full,
    interrupt) the temporary file is removed and an existing ``path`` is left as it was.
    ``metadata``: more string metadata for the header (see :class:`TableWriter`).
    """
    V.check_table(table)
    with TableWriter(path, n_rows=table.n_rows, bits=table.bits, dim=table.dim,
                     method=table.method, scale_dtype=table.scale_dtype, layout=table.layout,
                     params=table.params, extras=table.extras, row_bytes=table.row_bytes,
                     metadata=metadata) as w:
        w.write(np.ascontiguousarray(table.data))
