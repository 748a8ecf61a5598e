"""Quantize a table that lives in a Dask array, on one machine or a cluster.

Optional: needs ``dask`` (and ``distributed`` for a cluster), the ``qe4[dask]`` extra.

Every uniform method, and every per-row codebook method, quantizes each row on
its own, so a table cut into row chunks and quantized chunk by chunk gives
exactly the bytes of one :func:`qe4.quantize` call on the whole table.  This
module does that with Dask and reassembles the chunks into one
:class:`qe4.QuantizedTable` (:func:`to_table`) or writes them, one shard per
chunk, as a sharded table (:func:`to_sharded`, :mod:`qe4.shards`) that
:func:`qe4.shards.open_sharded` opens lazily and whose
:meth:`~qe4.shards.ShardedTable.embedding_bag` serves lookups.

Examples
--------
On one machine (a local cluster of worker processes)::

    import dask.array as da
    from distributed import Client, LocalCluster
    import qe4.dask

    x = da.from_zarr("weights.zarr")                  # [n_rows, dim] float32, any row chunks
    with LocalCluster(n_workers=8, threads_per_worker=1) as cluster, Client(cluster):
        table = qe4.dask.to_sharded(x, "/data/weights.q4", bits=4, method="greedy",
                                    engine="fast", n_threads=1)
    table.embedding_bag(indices, offsets)

On a multi-machine cluster the code is the same; only the client changes::

    client = Client("tcp://scheduler:8786")          # dask-scheduler / dask-worker, or
                                                      # dask-jobqueue, dask-kubernetes, ...
    qe4.dask.to_sharded(x, "/shared/weights.q4", bits=4, method="greedy")

What a multi-machine run needs:

- **The same software on every worker and the client**: ``qe4`` (and, for
  ``engine="fast"``, its compiled ``qe4_fast`` modules, built the same way:
  ``pip install qe4[dask]`` from the same wheel), NumPy and matching
  ``dask``/``distributed`` versions (``client.get_versions(check=True)``
  reports mismatches).  ``engine="fast"`` never falls back: a worker without
  ``qe4_fast`` fails the task with an ImportError saying so.
- **The input readable by the workers**: ``darr`` must be built from storage the
  workers can read (Zarr/HDF5 on shared storage, an object store through
  ``da.from_zarr("s3://...")``, or arrays generated on the workers); a
  ``da.from_array`` of a NumPy array in the client's memory ships the whole
  table through the scheduler.
- **For to_sharded, a shared POSIX filesystem** (NFS, Lustre, GPFS, CephFS, a
  cloud file share) mounted under the same path on the client and every worker.
  Each worker writes its shards with an atomic rename into that directory and
  the client reads them back to verify them before publishing the index, so a
  path only some machines can see fails at that check ("shard file ... is
  missing") instead of producing a table.  Object stores (S3, GCS) are not
  written directly: they have no atomic rename.  Write to a shared filesystem
  and copy the finished directory (``index.json`` last), or use
  :func:`to_table` and :func:`qe4.io.save` on the client for tables that fit
  in its memory.

Row chunks
----------
``darr`` is rechunked to span all columns (``darr.rechunk({1: -1})``); its row
chunks are kept.  Each row chunk is one task, one
:class:`~qe4.QuantizedTable` and, with :func:`to_sharded`, one shard file, so
choose chunks of ~10^5-10^6 rows (tens of MB): big enough to amortise the
scheduler's overhead per task (about a millisecond), small enough that a lost
worker costs little to redo and that there are several chunks per core.

Faults
------
Tasks are pure: a task lost with a dead worker is recomputed on another one
and rewrites the same shard file with the same bytes (shard files are written
to a temporary name and renamed, so a worker killed mid-write leaves only a
hidden ``.shard-*.qe4tmp`` file, never a torn shard).  If the scheduler gives
up (a task involved in more than ``distributed.scheduler.allowed-failures``
worker deaths: KilledWorker), or any chunk fails (e.g. a NaN in the input),
:func:`to_sharded` raises and never writes ``index.json``: the shards already
written stay on disk, but :func:`~qe4.shards.open_sharded` refuses a directory
without an index, and with ``overwrite=True`` still serves the table the
directory held before (the new index replaces the old one only when every shard
is in place; a later successful run clears the leftovers).  Each run names its
shards with its own tag, so tasks of an abandoned run that are still running
cannot replace files of a newer one.
``timeout`` (seconds) bounds the wait for the cluster.

Throughput
----------
Each task does exactly the single-process work on its rows, so a cluster's
rate is (number of worker cores) x (one core's rate) minus the overhead of
moving chunks and results and of scheduling: with ``engine="reference"`` the
NumPy work dominates and a cluster scales with its cores; with ``engine="fast"``
each task's fixed costs (the worker's event loop, serializing the result,
writing and checksumming a shard) weigh about as much as the kernel, so build
the input where it is computed (Zarr chunks read by the workers, not
``da.from_array`` on the client) and make sure storage keeps up: greedy with
``engine="fast"`` becomes I/O-bound long before compute-bound.
``python bench/bench_dask.py`` measures one process against a LocalCluster in
one run, in wall-clock rows/s and rows per CPU-second; measured numbers are in
``bench/results/bench_dask.txt`` and the README, not here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import dask.array as da
    from .shards import ShardedTable
    from ._typing import StrPath

from . import engines as E
from . import frontend
from . import method_registry as M
from . import shards as S
from .table import QuantizedTable

__all__ = ["quantize", "to_table", "to_sharded", "QuantizedChunks", "concat_tables"]

# Methods whose rows depend on other rows (from the method registry): quantizing them
# chunk by chunk would not reproduce a single-machine run.
CROSS_ROW_METHODS = M.names(per_row=False)


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError("qe4.dask needs dask: pip install 'qe4[dask]'") from exc
    return dask, da


class QuantizedChunks:
    """A lazily quantized table: one Dask task per row chunk.

    Returned by :func:`quantize`.  Nothing runs until :meth:`compute`,
    :meth:`to_table` or :meth:`to_sharded`.

    Attributes
    ----------
    chunks : list of dask.delayed.Delayed
        Chunk ``i`` computes to a :class:`~qe4.QuantizedTable` of the rows
        ``starts[i]:starts[i + 1]``: its ``.data`` holds the packed rows, its
        ``bits``, ``dim``, ``method``, ``scale_dtype``, ``layout`` and ``params``
        are the chunk's metadata (the same for every chunk).
    starts : int64 ndarray [n_chunks + 1]
        Row offsets of the chunks.
    n_rows, dim, bits, method, row_bytes : int, int, int, str, int
    """

    def __init__(self, chunks: list[Any], starts: Sequence[int] | NDArray[np.int64], dim: int,
                 bits: int, method: str, row_bytes: int) -> None:
        self.chunks = chunks
        self.starts = starts
        self.n_rows = int(starts[-1])
        self.dim = dim
        self.bits = bits
        self.method = method
        self.row_bytes = row_bytes

    def packed(self) -> da.Array:
        """The packed rows as a lazy uint8 dask array [n_rows, row_bytes], chunked like the input.

        For Dask-native storage of the bytes (``.to_zarr(...)``); the metadata
        needed to read them back is that of :meth:`compute`'s tables.
        """
        _, da = _dask()
        return da.concatenate([
            da.from_delayed(chunk.data, (int(b - a), self.row_bytes), np.uint8)
            for chunk, a, b in zip(self.chunks, self.starts[:-1], self.starts[1:])])

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def __repr__(self):
        return (f"QuantizedChunks(n_rows={self.n_rows}, dim={self.dim}, bits={self.bits}, "
                f"method={self.method!r}, n_chunks={self.n_chunks})")

    def compute(self, *, timeout: float | None = None) -> list[QuantizedTable]:
        """Run the tasks; return the chunks as a list of QuantizedTable."""
        return list(_compute(self.chunks, timeout))

    def to_table(self, *, timeout: float | None = None) -> QuantizedTable:
        """Run the tasks and concatenate the chunks into one QuantizedTable.

        The bytes equal those of ``qe4.quantize`` on the whole table.  The whole
        table is gathered in the client's memory.
        """
        return concat_tables(self.compute(timeout=timeout))

    def to_sharded(self, path: StrPath, *, overwrite: bool = False, verify: bool = True,
                   timeout: float | None = None) -> ShardedTable:
        """Run the tasks, each writing its chunk as one shard of a sharded table at ``path``.

        Workers write the shard files (atomically) into ``path``; the client
        then checks that every shard arrived with the size and checksum its
        worker reported (``verify=False`` skips re-reading the files for the
        checksum) and writes ``index.json`` last.  Any failure raises and leaves
        no index.  Returns the opened :class:`~qe4.shards.ShardedTable`.
        """
        dask, _ = _dask()
        path = S.prepare_dir(os.path.abspath(os.fspath(path)), overwrite)
        tag = uuid.uuid4().hex[:12]        # this run's file names: stragglers of others can't clash
        tasks = [dask.delayed(S.write_shard, pure=True)(chunk, path, i, int(self.starts[i]), tag)
                 for i, chunk in enumerate(self.chunks)]
        entries = _compute(tasks, timeout)
        try:
            S.publish_index(path, entries, verify=verify)
        except ValueError as exc:
            if "is missing" in str(exc):
                raise ValueError(f"{exc}: to_sharded needs {path!r} on a filesystem shared by the "
                                 "client and every worker, under the same path") from exc
            raise
        return S.open_sharded(path)


def quantize(darr: da.Array, bits: int = 4, method: str = "greedy", *, engine: str = "fast",
             n_threads: int | None = 1, **kwargs: Any) -> QuantizedChunks:
    """Quantize a Dask array of rows lazily, one task per row chunk.

    Parameters
    ----------
    darr : dask.array.Array [n_rows, n_cols], float16/float32/float64
        Rechunked to span all columns (``darr.rechunk({1: -1})``); the row chunks
        are kept (they must be known, not NaN).
    bits : {2, 3, 4, 5, 6, 8}
    method : str
        Any method of :func:`qe4.quantize` except those that cluster rows across
        the table (``CROSS_ROW_METHODS``), whose result depends on the chunking.
    engine : {"fast", "reference"}
        ``"fast"``: ``qe4_fast.quantize(..., n_threads=n_threads)`` on the
        workers (ImportError if it is not built; no fallback).
        ``"reference"``: :func:`qe4.quantize`.
    n_threads : int or None
        Threads per task for ``engine="fast"``.  Keep 1 with one Dask thread per
        core; ``engine="reference"`` accepts only 1 or None.
    **kwargs
        Passed to ``quantize`` (``n_bins``, ``ratio``, ``scale_dtype``, codebook options).

    Returns
    -------
    QuantizedChunks

    Raises
    ------
    TypeError
        ``darr`` is not a Dask array of floats.
    ValueError
        ``darr`` is not 2-D or is empty, has unknown chunk sizes; a bad ``bits``,
        ``method``, ``engine`` or parameter.  Bad values inside a chunk (NaN,
        float16 overflow) raise ValueError naming the chunk's rows when computed.
    ImportError
        ``engine="fast"`` without a built ``qe4_fast``.
    """
    dask, da = _dask()
    if not isinstance(darr, da.Array):
        raise TypeError(f"darr must be a dask.array.Array, got {type(darr).__name__}")
    if darr.ndim != 2:
        raise ValueError(f"darr must be 2-D [n_rows, n_cols], got shape {darr.shape}")
    if darr.dtype.kind != "f" or darr.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"darr must have dtype float16, float32 or float64, got {darr.dtype}")
    if any(np.isnan(c) for c in darr.chunks[0]) or np.isnan(darr.shape[1]):
        raise ValueError("darr has unknown chunk sizes; call darr.compute_chunk_sizes() first")
    if darr.shape[0] == 0 or darr.shape[1] == 0:
        raise ValueError(f"darr must have at least one row and one column, got shape {darr.shape}")
    kwargs = dict(kwargs)
    request = frontend.check_request(bits, method, kwargs.pop("n_bins", 200),
                                     kwargs.pop("ratio", 0.16), kwargs.pop("scale_dtype", None),
                                     kwargs, per_row_for="quantized in row chunks")
    E.engine(engine, n_threads)        # the engine and n_threads, checked now on the client
    opts = dict(kwargs, n_bins=request.n_bins, ratio=request.ratio, scale_dtype=request.scale_dtype,
                n_threads=n_threads)
    darr = darr.rechunk({1: -1})
    starts = np.concatenate([[0], np.cumsum(darr.chunks[0])]).astype(np.int64)
    blocks = darr.to_delayed().reshape(-1)
    run = dask.delayed(_quantize_chunk, pure=True)
    chunks = [run(block, int(starts[i]), int(starts[i + 1]), request.bits, method, engine, opts)
              for i, block in enumerate(blocks)]
    return QuantizedChunks(chunks, starts, int(darr.shape[1]), request.bits, method,
                           request.row_bytes(int(darr.shape[1])))


def _quantize_chunk(block, start, stop, bits, method, engine, opts):
    """One task: quantize the rows ``start:stop`` (runs on a worker)."""
    opts = dict(opts)
    eng = E.engine(engine, opts.pop("n_threads"))
    try:
        return eng.call("quantize", block, bits, method, **opts)
    except (TypeError, ValueError) as exc:
        if type(exc) not in (TypeError, ValueError):
            raise
        raise type(exc)(f"darr rows [{start}, {stop}) (row numbers below count from {start}): "
                        f"{exc}") from exc


def concat_tables(tables: Sequence[QuantizedTable]) -> QuantizedTable:
    """Concatenate consecutive row chunks of one table into a QuantizedTable.

    Raises ValueError if the chunks disagree on their metadata or carry
    layout arrays shared by the whole table (which row chunks cannot have).
    """
    tables = list(tables)
    if not tables:
        raise ValueError("no chunks to concatenate")
    first = tables[0]
    meta = S.table_meta(first)
    for i, t in enumerate(tables):
        if S.table_meta(t) != meta:
            raise ValueError(f"chunk {i} has metadata {S.table_meta(t)}, chunk 0 has {meta}")
        if t.extras:
            raise ValueError(f"chunk {i} has layout arrays {sorted(t.extras)}; row chunks of such a "
                             "table cannot be concatenated")
    data = np.concatenate([t.data for t in tables], axis=0)
    return QuantizedTable(data, bits=first.bits, dim=first.dim, method=first.method,
                          scale_dtype=first.scale_dtype, layout=first.layout, params=first.params)


def to_table(darr: da.Array, bits: int = 4, method: str = "greedy", *, engine: str = "fast",
             n_threads: int | None = 1, timeout: float | None = None,
             **kwargs: Any) -> QuantizedTable:
    """Quantize ``darr`` on the current Dask scheduler and gather one QuantizedTable.

    Byte-identical to ``qe4.quantize(darr.compute(), bits, method, **kwargs)``.
    See :func:`quantize` for the arguments; ``timeout`` (seconds, needs a
    ``distributed`` client) bounds the wait.
    """
    return quantize(darr, bits, method, engine=engine, n_threads=n_threads,
                    **kwargs).to_table(timeout=timeout)


def to_sharded(darr: da.Array, path: StrPath, bits: int = 4, method: str = "greedy", *,
               engine: str = "fast", n_threads: int | None = 1, overwrite: bool = False,
               verify: bool = True, timeout: float | None = None, **kwargs: Any) -> ShardedTable:
    """Quantize ``darr`` on the workers and write a sharded table, one shard per row chunk.

    Returns the opened :class:`~qe4.shards.ShardedTable`; see
    :meth:`QuantizedChunks.to_sharded` for the guarantees and :func:`quantize`
    for the arguments.
    """
    return quantize(darr, bits, method, engine=engine, n_threads=n_threads, **kwargs).to_sharded(
        path, overwrite=overwrite, verify=verify, timeout=timeout)


def _compute(tasks, timeout):
    """Compute Dask tasks; with ``timeout``, on the distributed client, waiting at most that long."""
    dask, _ = _dask()
    if timeout is None:
        return dask.compute(*tasks)
    try:
        from distributed import get_client, wait
        client = get_client()
    except (ImportError, ValueError) as exc:
        raise ValueError(f"timeout needs a dask.distributed Client ({exc})") from exc
    futures = client.compute(list(tasks))
    try:
        wait(futures, timeout=timeout)
        return client.gather(futures)
    finally:
        client.cancel(futures)
