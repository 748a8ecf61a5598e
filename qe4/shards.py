"""Sharded tables: one quantized table stored as a directory of row-range shards.

A sharded table is a directory holding

- shard files ``shard-00000-<run>.qe4``, ``shard-00001-<run>.qe4``, ..., named with a
  tag unique to the run that wrote them, each an ordinary single-file qe4 table
  (:func:`qe4.io.save`) holding the rows ``[start, stop)`` and recording, in its
  header metadata ``qe4_shard``, its own ``start``, ``stop`` and ``run``;
- ``index.json``, written last::

    {"format": "qe4-sharded", "version": 2, "run": "3f9c0a1b2c4d",
     "n_rows": 1000000, "dim": 64, "bits": 4, "method": "greedy",
     "scale_dtype": "float16", "layout": "rowwise", "row_bytes": 36,
     "params": {"n_bins": 200, "ratio": 0.16}, "extras": [],
     "shards": [{"file": "shard-00000-3f9c0a1b2c4d.qe4", "start": 0, "stop": 250000,
                 "file_bytes": 9000512, "nbytes": 9000000, "sha256": "9f2c..."}, ...]}

  ``file_bytes`` is the size of the shard file, ``nbytes`` the bytes of its table
  (:attr:`qe4.QuantizedTable.nbytes`), ``sha256`` the SHA-256 of the whole shard
  file (its header, rows and any layout arrays); ``extras`` names the layout
  arrays of the shards (none for rowwise and per-row codebook tables; a table
  with arrays shared by all its rows, e.g. two-tier, can only be one shard).

The directory is never silently incomplete.  Writers publish ``index.json``
atomically (temporary file, fsync, rename) only after every shard file is in
place and matches the size and checksum its writer reported; an interrupted
first write leaves a directory without an index, which :func:`open_sharded` refuses.
Writing over an existing table (``overwrite=True``) writes the new run's shards
beside the old ones and swaps the index in one rename: until then the old table
stays complete and readable, a failure part-way (disk full) leaves it as it was
(:func:`write_sharded` also removes the new run's partial shards), and only after
the swap are the old shard files removed.

Reading is lazy: :func:`open_sharded` checks the index (the shards tile
``[0, n_rows)`` exactly, every file exists with the recorded size, and with
``verify=True`` every checksum), and each shard is memory-mapped on first use,
when its header must record the row range and run of its index entry (so
swapped or stale shard files are refused even without ``verify``).  Pooled
lookups (:meth:`ShardedTable.embedding_bag`) gather only the rows the bags
reference, so a table larger than memory can serve lookups.  Version 1 indexes
(shards without ``qe4_shard`` metadata) are still read, without that check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .table import QuantizedTable
    from ._typing import Float32Array, StrPath

from . import _validate as V
from . import engines as E
from . import io as qio
from . import layouts as L
from .io import _fsync_dir
from .table import QuantizedTable

__all__ = ["open_sharded", "write_sharded", "ShardedTable"]

FORMAT = "qe4-sharded"
VERSION = 2
READ_VERSIONS = (1, 2)
INDEX = "index.json"
SHARD_META = "qe4_shard"            # a shard file's own {"start", "stop", "run"}
MAX_INDEX_BYTES = 100_000_000
SHARD_SUFFIX = ".qe4"
_SHARD_NAME = re.compile(r"^shard-\d{5,}(-[0-9a-z]{1,32})?\.qe4$")
_LEFTOVER = re.compile(r"^\.(shard-.*\.qe4tmp|index\.json\.\d+\.tmp)$")  # of interrupted writers
_META_KEYS = ("dim", "bits", "method", "scale_dtype", "layout", "params", "row_bytes", "extras")
_SHARD_KEYS = ("file", "start", "stop", "file_bytes", "nbytes", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def new_run_tag():
    """A fresh tag for one run's shard file names (12 lowercase hex digits)."""
    return secrets.token_hex(6)


def shard_name(i, tag=None):
    """File name of shard ``i``: ``shard-00000.qe4``, or ``shard-00000-<tag>.qe4``.

    A tag unique to one run (:func:`qe4.dask.to_sharded` uses one) keeps a
    straggling writer of an earlier, abandoned run from replacing a file the
    current index refers to.
    """
    return f"shard-{i:05d}{'' if tag is None else '-' + tag}{SHARD_SUFFIX}"


def engine_function(engine, name):
    """Function ``name`` of the engine (:func:`qe4.engines.get_engine`); no fallback."""
    return getattr(E.get_engine(engine), name)


def table_meta(table):
    """The per-table metadata every shard of one sharded table must share."""
    return {"dim": table.dim, "bits": table.bits, "method": table.method,
            "scale_dtype": table.scale_dtype, "layout": table.layout,
            "params": json.loads(json.dumps(table.params)), "row_bytes": table.row_bytes,
            "extras": sorted(table.extras)}


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing

def write_shard(table, path, i, start, tag=None):
    """Write ``table`` as shard ``i`` (rows ``start:start + n_rows``) of the table in ``path``.

    The file is written atomically by :func:`qe4.io.save`.  Returns the shard's
    index entry plus ``"meta"`` (:func:`table_meta`), which :func:`publish_index`
    checks and drops.  Safe to call again for the same shard (a retried task
    rewrites the same bytes).
    """
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"shard {i} must be a QuantizedTable, got {type(table).__name__}")
    name = shard_name(i, tag)
    full = os.path.join(path, name)
    start, stop = int(start), int(start) + table.n_rows
    qio.save(table, full, metadata={SHARD_META: json.dumps(
        {"start": start, "stop": stop, "run": tag}, sort_keys=True)})
    return {"file": name, "start": start, "stop": stop, "run": tag,
            "file_bytes": os.path.getsize(full), "nbytes": table.nbytes,
            "sha256": file_sha256(full), "meta": table_meta(table)}


def prepare_dir(path, overwrite=False):
    """Create ``path`` for a new sharded table, or (``overwrite``) check that it holds
    only a sharded table (its files are replaced when the new index is published).

    Nothing is removed here: the old table stays readable until :func:`publish_index`
    swaps the index.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"path {path!r} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise FileExistsError(
                f"path {path!r} is not empty; pass overwrite=True to replace the table in it")
        stray = [f for f in os.listdir(path) if f != INDEX and not _SHARD_NAME.match(f)
                 and not _LEFTOVER.match(f)]
        if stray:
            raise FileExistsError(
                f"path {path!r} holds files that are not part of a sharded table ({stray[:3]}); "
                "refusing to overwrite it")
    os.makedirs(path, exist_ok=True)
    return path


def _remove_unlisted(path, keep):
    """Remove shard files and writers' leftovers of ``path`` that are not in ``keep``."""
    for f in os.listdir(path):
        if f not in keep and f != INDEX and (_SHARD_NAME.match(f) or _LEFTOVER.match(f)):
            try:
                os.remove(os.path.join(path, f))
            except FileNotFoundError:
                pass


def publish_index(path, entries, *, verify=True):
    """Check the shards described by ``entries`` and write ``index.json`` atomically.

    ``entries`` are what :func:`write_shard` returned, in any order.  Raises
    ValueError (and writes nothing) if the shards disagree on their metadata, do
    not tile ``[0, n_rows)``, or a file is missing, has another size or (with
    ``verify``) another checksum than its writer reported.
    """
    path = os.fspath(path)
    entries = sorted(entries, key=lambda e: e["start"])
    if not entries:
        raise ValueError("a sharded table needs at least one shard")
    runs = {e.get("run") for e in entries}
    if len(runs) != 1:
        raise ValueError(f"the shards come from different runs {sorted(map(str, runs))}")
    meta = entries[0]["meta"]
    for e in entries:
        if e["meta"] != meta:
            diff = sorted(k for k in meta if meta[k] != e["meta"].get(k))
            raise ValueError(f"shard {e['file']} disagrees with shard {entries[0]['file']} on {diff}: "
                             f"{ {k: e['meta'].get(k) for k in diff} } vs { {k: meta[k] for k in diff} }")
    shards = [{k: e[k] for k in _SHARD_KEYS} for e in entries]
    index = {"format": FORMAT, "version": VERSION, "run": runs.pop(),
             "n_rows": shards[-1]["stop"], **meta, "shards": shards}
    check_index(index)
    check_files(path, index, verify=verify)
    tmp = os.path.join(path, f".{INDEX}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, INDEX))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(path)
    _remove_unlisted(path, {sh["file"] for sh in shards})    # the replaced table's files
    return index


def write_sharded(table_or_chunks: QuantizedTable | Iterable[QuantizedTable], path: StrPath,
                  rows_per_shard: int | None = None, *, overwrite: bool = False,
                  verify: bool = True) -> ShardedTable:
    """Write a sharded table and return it opened (:class:`ShardedTable`).

    Parameters
    ----------
    table_or_chunks : QuantizedTable or iterable of QuantizedTable
        A whole table, cut into shards of ``rows_per_shard`` rows, or consecutive
        row chunks of one table (e.g. from :func:`qe4.dask.quantize`), one shard each.
    path : str or os.PathLike
        Directory to create (or empty, or with ``overwrite=True`` a sharded table to replace).
    rows_per_shard : int
        Required with a whole table; the last shard holds the remainder.
    overwrite : bool
    verify : bool
        Re-read every shard file and compare its checksum before publishing the index.
    """
    if isinstance(table_or_chunks, QuantizedTable):
        table = table_or_chunks
        rows_per_shard = V.check_positive_int(rows_per_shard, "rows_per_shard")
        _require_splittable(table)
        chunks = (QuantizedTable(table.data[s:s + rows_per_shard], bits=table.bits, dim=table.dim,
                                 method=table.method, scale_dtype=table.scale_dtype,
                                 layout=table.layout, params=table.params)
                  for s in range(0, table.n_rows, rows_per_shard))
    else:
        if rows_per_shard is not None:
            raise ValueError("rows_per_shard applies to a whole table, not to a sequence of chunks")
        chunks = table_or_chunks
    path = prepare_dir(path, overwrite)
    tag = new_run_tag()
    entries, start = [], 0
    try:
        for i, chunk in enumerate(chunks):
            entries.append(write_shard(chunk, path, i, start, tag))
            start += chunk.n_rows
        publish_index(path, entries, verify=verify)
    except BaseException:          # the old table (if any) is untouched: drop this run's files
        for f in os.listdir(path):
            if f"-{tag}{SHARD_SUFFIX}" in f:
                try:
                    os.remove(os.path.join(path, f))
                except FileNotFoundError:
                    pass
        raise
    return open_sharded(path)


def _require_splittable(table):
    """Only tables whose every byte lives in its rows can be cut by rows."""
    if not table.layout_entry.self_contained:
        raise ValueError(
            f"a {table.layout!r} table with layout arrays {sorted(table.extras)} cannot be cut into "
            "row shards: its rows depend on arrays shared by the whole table")


# --------------------------------------------------------------------------- checking

def _is_int(v):
    return type(v) is int        # JSON integers only: not bool, not 3.0


def check_index(index):
    """Raise ValueError unless ``index`` is a well-formed index whose shards tile [0, n_rows).

    Every count is a JSON integer, ``row_bytes`` fits the layout (exactly, for rowwise
    tables), every checksum is 64 hex digits and every file name a shard's.
    """
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"not a qe4 sharded-table index (format must be {FORMAT!r})")
    if index.get("version") not in READ_VERSIONS:
        raise ValueError(f"unsupported sharded-table version {index.get('version')!r} "
                         f"(this qe4 reads versions {list(READ_VERSIONS)})")
    missing = [k for k in ("n_rows", "shards") + _META_KEYS if k not in index]
    if index["version"] >= 2 and "run" not in index:
        missing.append("run")
    if missing:
        raise ValueError(f"index is missing the fields {missing}")
    n_rows, shards = index["n_rows"], index["shards"]
    if not _is_int(n_rows) or n_rows < 1:
        raise ValueError(f"index: n_rows must be a positive integer, got {n_rows!r}")
    run = index.get("run")
    if run is not None and not (isinstance(run, str) and re.fullmatch(r"[0-9a-z]{1,32}", run)):
        raise ValueError(f"index: run must be a tag of 1 to 32 lowercase letters and digits, got {run!r}")
    _check_table_meta(index)
    if not isinstance(shards, list) or not shards:
        raise ValueError("index: shards must be a non-empty list")
    names = set()
    expect = 0
    for k, s in enumerate(shards):
        if not isinstance(s, dict) or any(f not in s for f in _SHARD_KEYS):
            raise ValueError(f"index: shard entry {k} is malformed: {s!r}")
        if not isinstance(s["file"], str) or not _SHARD_NAME.match(s["file"]) or s["file"] in names:
            raise ValueError(f"index: shard entry {k} has a bad or repeated file name {s['file']!r}")
        names.add(s["file"])
        for f in ("start", "stop", "file_bytes", "nbytes"):
            if not _is_int(s[f]) or s[f] < 0:
                raise ValueError(f"index: shard {s['file']} has {f}={s[f]!r}, not a non-negative "
                                 "integer")
        if not isinstance(s["sha256"], str) or not _SHA256.fullmatch(s["sha256"]):
            raise ValueError(f"index: shard {s['file']} has sha256={s['sha256']!r}, not 64 hex digits")
        if s["start"] != expect:
            what = "overlaps the previous shard" if s["start"] < expect else "leaves a gap"
            raise ValueError(f"index: shard {s['file']} starts at row {s['start']}, expected {expect} "
                             f"(it {what}); the shards must tile [0, {n_rows}) in order")
        if s["stop"] <= s["start"]:
            raise ValueError(f"index: shard {s['file']} has an empty or reversed row range "
                             f"[{s['start']}, {s['stop']})")
        if s["nbytes"] < (s["stop"] - s["start"]) * index["row_bytes"]:
            raise ValueError(f"index: shard {s['file']} has nbytes={s['nbytes']}, fewer than its "
                             f"{s['stop'] - s['start']} rows of {index['row_bytes']} bytes")
        expect = s["stop"]
    if expect != n_rows:
        raise ValueError(f"index: the shards cover rows [0, {expect}) but n_rows is {n_rows}")


def _check_table_meta(index):
    """The per-table fields: types, and row_bytes consistent with the layout."""
    for k in ("dim", "bits", "row_bytes"):
        if not _is_int(index[k]) or index[k] < 1:
            raise ValueError(f"index: {k} must be a positive integer, got {index[k]!r}")
    for k in ("method", "scale_dtype", "layout"):
        if not isinstance(index[k], str):
            raise ValueError(f"index: {k} must be a string, got {index[k]!r}")
    if not isinstance(index["params"], dict):
        raise ValueError(f"index: params must be an object, got {index['params']!r}")
    if not isinstance(index["extras"], list) or not all(isinstance(e, str) for e in index["extras"]):
        raise ValueError(f"index: extras must be a list of names, got {index['extras']!r}")
    if index["extras"]:     # a layout with extras (two-tier): the shard files hold them,
        lay = L.LAYOUTS.get(index["layout"])    # checked by the table type when first used
        if lay is None or index["bits"] not in lay.bits:
            raise ValueError(f"index: inconsistent table fields: layout={index['layout']!r} "
                             f"bits={index['bits']!r}")
        if index["scale_dtype"] not in V.SCALE_DTYPES:
            raise ValueError(f"index: inconsistent table fields: scale_dtype={index['scale_dtype']!r}")
        bits, dim = index["bits"], index["dim"]
        most = -(-dim * bits // 8) + 4 * 2 ** bits
        if index["row_bytes"] > most:
            raise ValueError(f"index: row_bytes={index['row_bytes']} is more than any {bits}-bit "
                             f"layout of dim {dim} uses ({most})")
        return
    try:        # the table type checks bits, dim, scale_dtype, layout (and rowwise row_bytes)
        empty = QuantizedTable(np.zeros((0, index["row_bytes"]), np.uint8), bits=index["bits"],
                               dim=index["dim"], method=index["method"],
                               scale_dtype=index["scale_dtype"], layout=index["layout"],
                               params=index["params"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"index: inconsistent table fields: {exc}") from None
    # any layout: codes plus at most 2**bits float32 centroids per row
    most = empty.code_bytes + 4 * 2 ** empty.bits
    if index["row_bytes"] > most:
        raise ValueError(f"index: row_bytes={index['row_bytes']} is more than any {empty.bits}-bit "
                         f"layout of dim {empty.dim} uses ({most})")


def check_files(path, index, *, verify=False):
    """Raise ValueError unless every shard file exists with its recorded size (and checksum)."""
    for s in index["shards"]:
        full = os.path.join(path, s["file"])
        if not os.path.isfile(full):
            raise ValueError(f"sharded table {path!r}: shard file {s['file']} is missing")
        size = os.path.getsize(full)
        if size != s["file_bytes"]:
            raise ValueError(f"sharded table {path!r}: shard file {s['file']} has {size} bytes, "
                             f"the index records {s['file_bytes']}")
        if verify and file_sha256(full) != s["sha256"]:
            raise ValueError(f"sharded table {path!r}: shard file {s['file']} does not match its "
                             "SHA-256 checksum in the index (corrupt or replaced)")


def open_sharded(path: StrPath, *, verify: bool = False) -> ShardedTable:
    """Open a sharded table lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The table's directory.
    verify : bool
        Also recompute every shard's SHA-256 (reads the whole table once).

    Returns
    -------
    ShardedTable

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        No index (an unfinished or interrupted write), a malformed index, shards
        that do not tile ``[0, n_rows)``, a missing shard file, a size or checksum
        mismatch.  The message names the problem.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no sharded table at {path!r} (not a directory)")
    index_path = os.path.join(path, INDEX)
    if not os.path.isfile(index_path):
        raise ValueError(f"{path!r} is not a complete sharded table: {INDEX} is missing "
                         "(the write was interrupted or has not finished)")
    with open(index_path, "rb") as f:
        raw = f.read(MAX_INDEX_BYTES + 1)
    index = qio.loads_bounded(raw, f"{index_path!r}", max_bytes=MAX_INDEX_BYTES,
                              object_pairs_hook=qio._no_duplicates)
    check_index(index)
    check_files(path, index, verify=verify)
    return ShardedTable(path, index)


# --------------------------------------------------------------------------- reading

class ShardedTable:
    """A quantized table stored as row-range shards; use :func:`open_sharded`.

    Shards are memory-mapped on first use.  Row access and lookups return the
    same bytes and values as the concatenated table (:meth:`to_table`) would.
    """

    def __init__(self, path: StrPath, index: dict[str, Any]) -> None:
        self.path = path
        self.index = index
        self.n_rows = index["n_rows"]
        self.dim = index["dim"]
        self.bits = index["bits"]
        self.method = index["method"]
        self.scale_dtype = index["scale_dtype"]
        self.layout = index["layout"]
        self.params = dict(index["params"])
        self.row_bytes = index["row_bytes"]
        self.bounds = np.array([0] + [s["stop"] for s in index["shards"]], np.int64)
        self._shards = [None] * len(index["shards"])

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    @property
    def nbytes(self) -> int:
        """Bytes of all shards' tables (rows plus layout arrays), as for a QuantizedTable."""
        return sum(s["nbytes"] for s in self.index["shards"])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    def __len__(self):
        return self.n_rows

    def __repr__(self):
        return (f"ShardedTable({self.path!r}, n_rows={self.n_rows}, dim={self.dim}, bits={self.bits}, "
                f"method={self.method!r}, layout={self.layout!r}, n_shards={self.n_shards})")

    def shard(self, i: int) -> QuantizedTable:
        """Shard ``i`` as a memory-mapped QuantizedTable (opened and checked on first use)."""
        if self._shards[i] is None:
            entry = self.index["shards"][i]
            table, hdr = qio._load(os.path.join(self.path, entry["file"]), mmap=True)
            want = {k: self.index[k] for k in _META_KEYS}
            got = table_meta(table)
            if got != want or table.n_rows != entry["stop"] - entry["start"]:
                raise ValueError(
                    f"sharded table {self.path!r}: shard file {entry['file']} holds a table "
                    f"({table.n_rows} rows, {got}) that does not match the index "
                    f"({entry['stop'] - entry['start']} rows, {want})")
            if self.index["version"] >= 2:
                self._check_shard_meta(entry, hdr.metadata.get(SHARD_META))
            self._shards[i] = table
        else:      # the file must still have its size (ValueError, not SIGBUS)
            V.check_table(self._shards[i])
        return self._shards[i]

    def _check_shard_meta(self, entry, raw):
        want = {"start": entry["start"], "stop": entry["stop"], "run": self.index["run"]}
        try:
            got = qio.loads_bounded(raw, "qe4_shard") if raw is not None else None
        except ValueError:
            got = raw
        if got != want:
            raise ValueError(
                f"sharded table {self.path!r}: shard file {entry['file']} records {SHARD_META}="
                f"{got!r}, but the index expects {want} (shard files swapped, or left by "
                "another run?)")

    def _empty(self, data):
        return QuantizedTable(data, bits=self.bits, dim=self.dim, method=self.method,
                              scale_dtype=self.scale_dtype, layout=self.layout, params=self.params)

    def _require_self_contained(self):
        if self.index["extras"]:
            raise ValueError(f"row access across shards needs rows that hold all their bytes; this "
                             f"{self.layout!r} table has layout arrays {self.index['extras']}; "
                             "open its shards with .shard(i)")

    def rows(self, indices: ArrayLike) -> QuantizedTable:
        """The rows ``indices`` (in that order, repeats allowed) as a new QuantizedTable.

        Raises IndexError for an index outside ``[0, n_rows)``.
        """
        self._require_self_contained()
        idx = V._as_int_array(indices, "indices")
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        idx = idx.astype(np.int64)
        bad = (idx < 0) | (idx >= self.n_rows)
        if bad.any():
            p = int(np.argmax(bad))
            raise IndexError(f"indices[{p}] = {int(idx[p])} is out of range for a table of "
                             f"{self.n_rows} rows")
        out = np.empty((idx.size, self.row_bytes), np.uint8)
        which = np.searchsorted(self.bounds, idx, side="right") - 1
        order = np.argsort(which, kind="stable")          # positions grouped by shard
        cuts = np.searchsorted(which[order], np.arange(self.n_shards + 1))
        for i in np.nonzero(np.diff(cuts))[0]:            # only the shards that are referenced
            sel = order[cuts[i]:cuts[i + 1]]
            out[sel] = self.shard(int(i)).data[idx[sel] - self.bounds[i]]
        return self._empty(out)

    def slice(self, start: int = 0, stop: int | None = None) -> QuantizedTable:
        """Rows ``[start, stop)`` as a new QuantizedTable (Python slice rules for the bounds)."""
        self._require_self_contained()
        start, stop, _ = slice(start, stop).indices(self.n_rows)
        stop = max(start, stop)
        out = np.empty((stop - start, self.row_bytes), np.uint8)
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        for i in range(max(first, 0), self.n_shards):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            if lo >= stop:
                break
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out[a - start:b - start] = self.shard(i).data[a - lo:b - lo]
        return self._empty(out)

    def dequantize(self, start: int = 0, stop: int | None = None) -> Float32Array:
        """float32 rows ``[start, stop)`` (see :func:`qe4.dequantize`)."""
        from .api import dequantize
        return dequantize(self.slice(start, stop))

    def to_table(self) -> QuantizedTable:
        """The whole table as one in-memory QuantizedTable (only for tables that fit)."""
        return self.slice(0, self.n_rows)

    def embedding_bag(self, indices: ArrayLike, offsets: ArrayLike | None = None, *,
                      mode: str = "sum", per_sample_weights: ArrayLike | None = None,
                      include_last_offset: bool = False, out_dtype: str = "float32",
                      engine: str = "reference", n_threads: int | None = None) -> NDArray[Any]:
        """:func:`qe4.embedding_bag` over the sharded table, reading only the referenced rows.

        Arguments are validated against the whole table exactly as
        :func:`qe4.embedding_bag` does (same exceptions and messages).  The
        distinct referenced rows are gathered into a small table and the indices
        remapped to it; every bag then sees the same rows in the same order, so
        the result is byte-identical to ``qe4.embedding_bag(self.to_table(), ...)``.
        ``engine="fast"`` pools with ``qe4_fast.embedding_bag(..., n_threads=n_threads)``.
        """
        eng = E.engine(engine, n_threads)
        out_dtype = V.check_out_dtype(out_dtype)
        idx, starts, w = V.check_bag_args(indices, offsets, self.n_rows, per_sample_weights,
                                          include_last_offset, mode, V.LOOKUP_MODES)
        used, local = np.unique(idx, return_inverse=True)
        sub = self.rows(used)
        return eng.call("embedding_bag", sub, local.reshape(-1).astype(np.int64), starts,
                        mode=mode, per_sample_weights=w, include_last_offset=True,
                        out_dtype=out_dtype)
