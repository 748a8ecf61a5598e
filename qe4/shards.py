"""Sharded tables: one quantized table stored as a directory of row-range shards.

A sharded table is a directory holding

- shard files ``shard-00000.qe4``, ``shard-00001.qe4``, ... (``shard-00000-<tag>.qe4``
  when written by :func:`qe4.dask.to_sharded`, the tag unique to the run), each an
  ordinary single-file qe4 table (:func:`qe4.io.save`) holding the rows ``[start, stop)``;
- ``index.json``, written last::

    {"format": "qe4-sharded", "version": 1,
     "n_rows": 1000000, "dim": 64, "bits": 4, "method": "greedy",
     "scale_dtype": "float16", "layout": "rowwise", "row_bytes": 36,
     "params": {"n_bins": 200, "ratio": 0.16}, "extras": [],
     "shards": [{"file": "shard-00000.qe4", "start": 0, "stop": 250000,
                 "file_bytes": 9000512, "nbytes": 9000000, "sha256": "9f2c..."}, ...]}

  ``file_bytes`` is the size of the shard file, ``nbytes`` the bytes of its table
  (:attr:`qe4.QuantizedTable.nbytes`), ``sha256`` the SHA-256 of the whole shard
  file (its header, rows and any layout arrays); ``extras`` names the layout
  arrays of the shards (none for rowwise and per-row codebook tables; a table
  with arrays shared by all its rows, e.g. two-tier, can only be one shard).

The directory is never silently incomplete.  Writers publish ``index.json``
atomically (temporary file, fsync, rename) only after every shard file is in
place and matches the size and checksum its writer reported; an interrupted
write leaves a directory without an index, which :func:`open_sharded` refuses.
Writing over an existing table removes its index first.

Reading is lazy: :func:`open_sharded` checks the index (the shards tile
``[0, n_rows)`` exactly, every file exists with the recorded size, and with
``verify=True`` every checksum), and each shard is memory-mapped on first use.
Pooled lookups (:meth:`ShardedTable.embedding_bag`) gather only the rows the
bags reference, so a table larger than memory can serve lookups.
"""

import hashlib
import json
import os
import re

import numpy as np

from . import _validate as V
from . import engines as E
from . import io as qio
from .io import _fsync_dir
from .table import QuantizedTable

__all__ = ["open_sharded", "write_sharded", "ShardedTable"]

FORMAT = "qe4-sharded"
VERSION = 1
INDEX = "index.json"
SHARD_SUFFIX = ".qe4"
_SHARD_NAME = re.compile(r"^shard-\d{5,}(-[0-9a-z]{1,32})?\.qe4$")
_LEFTOVER = re.compile(r"^\.(shard-.*\.qe4tmp|index\.json\.\d+\.tmp)$")  # of interrupted writers
_META_KEYS = ("dim", "bits", "method", "scale_dtype", "layout", "params", "row_bytes", "extras")


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
    qio.save(table, full)
    return {"file": name, "start": int(start), "stop": int(start) + table.n_rows,
            "file_bytes": os.path.getsize(full), "nbytes": table.nbytes,
            "sha256": file_sha256(full), "meta": table_meta(table)}


def prepare_dir(path, overwrite=False):
    """Create ``path`` for a new sharded table; with ``overwrite``, unpublish the old one.

    The old index is removed before anything else, so from that moment the
    directory reads as incomplete until the new index is published.
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
        if os.path.exists(os.path.join(path, INDEX)):
            os.remove(os.path.join(path, INDEX))
            _fsync_dir(path)
        for f in os.listdir(path):
            if _SHARD_NAME.match(f) or _LEFTOVER.match(f):
                os.remove(os.path.join(path, f))
    os.makedirs(path, exist_ok=True)
    return path


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
    meta = entries[0]["meta"]
    for e in entries:
        if e["meta"] != meta:
            diff = sorted(k for k in meta if meta[k] != e["meta"].get(k))
            raise ValueError(f"shard {e['file']} disagrees with shard {entries[0]['file']} on {diff}: "
                             f"{ {k: e['meta'].get(k) for k in diff} } vs { {k: meta[k] for k in diff} }")
    shards = [{k: e[k] for k in ("file", "start", "stop", "file_bytes", "nbytes", "sha256")}
              for e in entries]
    index = {"format": FORMAT, "version": VERSION, "n_rows": shards[-1]["stop"], **meta,
             "shards": shards}
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
    return index


def write_sharded(table_or_chunks, path, rows_per_shard=None, *, overwrite=False, verify=True):
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
    entries, start = [], 0
    for i, chunk in enumerate(chunks):
        entries.append(write_shard(chunk, path, i, start))
        start += chunk.n_rows
    publish_index(path, entries, verify=verify)
    return open_sharded(path)


def _require_splittable(table):
    """Only tables whose every byte lives in its rows can be cut by rows."""
    if not table.layout_entry.self_contained:
        raise ValueError(
            f"a {table.layout!r} table with layout arrays {sorted(table.extras)} cannot be cut into "
            "row shards: its rows depend on arrays shared by the whole table")


# --------------------------------------------------------------------------- checking

def check_index(index):
    """Raise ValueError unless ``index`` is a well-formed index whose shards tile [0, n_rows)."""
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"not a qe4 sharded-table index (format must be {FORMAT!r})")
    if index.get("version") != VERSION:
        raise ValueError(f"unsupported sharded-table version {index.get('version')!r} "
                         f"(this qe4 reads version {VERSION})")
    missing = [k for k in ("n_rows", "shards") + _META_KEYS if k not in index]
    if missing:
        raise ValueError(f"index is missing the fields {missing}")
    n_rows, shards = index["n_rows"], index["shards"]
    if not isinstance(n_rows, int) or n_rows < 1:
        raise ValueError(f"index: n_rows must be a positive integer, got {n_rows!r}")
    if not isinstance(shards, list) or not shards:
        raise ValueError("index: shards must be a non-empty list")
    names = set()
    expect = 0
    for k, s in enumerate(shards):
        if not isinstance(s, dict) or any(f not in s for f in ("file", "start", "stop",
                                                               "file_bytes", "nbytes", "sha256")):
            raise ValueError(f"index: shard entry {k} is malformed: {s!r}")
        if not isinstance(s["file"], str) or not _SHARD_NAME.match(s["file"]) or s["file"] in names:
            raise ValueError(f"index: shard entry {k} has a bad or repeated file name {s['file']!r}")
        names.add(s["file"])
        if s["start"] != expect:
            what = "overlaps the previous shard" if s["start"] < expect else "leaves a gap"
            raise ValueError(f"index: shard {s['file']} starts at row {s['start']}, expected {expect} "
                             f"(it {what}); the shards must tile [0, {n_rows}) in order")
        if not isinstance(s["stop"], int) or s["stop"] <= s["start"]:
            raise ValueError(f"index: shard {s['file']} has an empty or reversed row range "
                             f"[{s['start']}, {s['stop']})")
        expect = s["stop"]
    if expect != n_rows:
        raise ValueError(f"index: the shards cover rows [0, {expect}) but n_rows is {n_rows}")


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


def open_sharded(path, *, verify=False):
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
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{index_path!r} is not valid JSON: {exc}") from exc
    check_index(index)
    check_files(path, index, verify=verify)
    return ShardedTable(path, index)


# --------------------------------------------------------------------------- reading

class ShardedTable:
    """A quantized table stored as row-range shards; use :func:`open_sharded`.

    Shards are memory-mapped on first use.  Row access and lookups return the
    same bytes and values as the concatenated table (:meth:`to_table`) would.
    """

    def __init__(self, path, index):
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
    def n_shards(self):
        return len(self._shards)

    @property
    def nbytes(self):
        """Bytes of all shards' tables (rows plus layout arrays), as for a QuantizedTable."""
        return sum(s["nbytes"] for s in self.index["shards"])

    @property
    def shape(self):
        return (self.n_rows, self.dim)

    def __len__(self):
        return self.n_rows

    def __repr__(self):
        return (f"ShardedTable({self.path!r}, n_rows={self.n_rows}, dim={self.dim}, bits={self.bits}, "
                f"method={self.method!r}, layout={self.layout!r}, n_shards={self.n_shards})")

    def shard(self, i):
        """Shard ``i`` as a memory-mapped QuantizedTable (opened and checked on first use)."""
        if self._shards[i] is None:
            entry = self.index["shards"][i]
            table = qio.load(os.path.join(self.path, entry["file"]), mmap=True)
            want = {k: self.index[k] for k in _META_KEYS}
            got = table_meta(table)
            if got != want or table.n_rows != entry["stop"] - entry["start"]:
                raise ValueError(
                    f"sharded table {self.path!r}: shard file {entry['file']} holds a table "
                    f"({table.n_rows} rows, {got}) that does not match the index "
                    f"({entry['stop'] - entry['start']} rows, {want})")
            self._shards[i] = table
        return self._shards[i]

    def _empty(self, data):
        return QuantizedTable(data, bits=self.bits, dim=self.dim, method=self.method,
                              scale_dtype=self.scale_dtype, layout=self.layout, params=self.params)

    def _require_self_contained(self):
        if self.index["extras"]:
            raise ValueError(f"row access across shards needs rows that hold all their bytes; this "
                             f"{self.layout!r} table has layout arrays {self.index['extras']}; "
                             "open its shards with .shard(i)")

    def rows(self, indices):
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

    def slice(self, start=0, stop=None):
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

    def dequantize(self, start=0, stop=None):
        """float32 rows ``[start, stop)`` (see :func:`qe4.dequantize`)."""
        from .api import dequantize
        return dequantize(self.slice(start, stop))

    def to_table(self):
        """The whole table as one in-memory QuantizedTable (only for tables that fit)."""
        return self.slice(0, self.n_rows)

    def embedding_bag(self, indices, offsets=None, *, mode="sum", per_sample_weights=None,
                      include_last_offset=False, out_dtype="float32", engine="reference",
                      n_threads=None):
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
