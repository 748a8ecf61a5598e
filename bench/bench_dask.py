"""Throughput of qe4.dask on a LocalCluster against one process on the same table.

Builds an N(0,1) float32 table (default 100,000 x 64), chunk by chunk from seeds
(0, chunk number): the client builds the whole table for the single-process runs,
the workers build their own chunks and keep them in memory (``persist``) before
the clock starts, as a cluster reading its input from storage would.  Then in one run:

1. one process: ``engine.quantize(x, n_threads=1)`` (the per-core peer), timed
   before and after the cluster runs, the faster of the two kept (the machine
   may be shared);
2. one process, ``n_threads=<workers>`` (fast engine only: the threaded peer);
3. ``qe4.dask.to_table`` on a LocalCluster of ``--workers`` processes x 1 thread
   (gathers the packed rows to the client);
4. ``qe4.dask.to_sharded`` on the same cluster (workers write shard files, the
   client re-reads every shard to verify its checksum, then writes the index).

Bytes are checked first (every run equals the single-process bytes), then it
prints rows/s, rows/s per core and the ratios against run 1.  "per core" divides
by the cores the run used (workers x threads); on a machine shared with other
jobs the ratios are what to read, not the absolute rates.

    python bench/bench_dask.py [--rows 200000] [--dim 64] [--method greedy]
        [--engine fast|reference] [--workers 2] [--chunk-rows 25000]
"""

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--method", default="greedy")
    p.add_argument("--engine", choices=("fast", "reference"), default=None,
                   help="default: fast if qe4_fast is built, else reference (said in the output)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-rows", type=int, default=25_000)
    args = p.parse_args(argv)

    import dask.array as da
    from dask import delayed
    from distributed import Client, LocalCluster, wait

    import qe4.dask as qd
    from qe4.shards import engine_function

    engine = args.engine
    if engine is None:
        try:
            engine_function("fast", "quantize")
            engine = "fast"
        except ImportError as exc:
            print(f"qe4_fast not available ({exc}); using engine='reference'")
            engine = "reference"
    quantize = engine_function(engine, "quantize")
    threads = {"n_threads": 1} if engine == "fast" else {}

    n, w = args.rows, args.workers
    sizes = [min(args.chunk_rows, n - s) for s in range(0, n, args.chunk_rows)]
    x = np.concatenate([_block(i, r, args.dim) for i, r in enumerate(sizes)])
    print(f"table {n} x {args.dim} float32 N(0,1), {args.bits} bits, method {args.method!r}, "
          f"engine {engine!r}, chunks of {args.chunk_rows} rows, {os.cpu_count()} CPUs visible")

    t_single, want = timed(lambda: quantize(x, args.bits, args.method, **threads))
    runs = []
    if engine == "fast" and w > 1:
        t, got = timed(lambda: quantize(x, args.bits, args.method, n_threads=w))
        runs.append((f"one process, {w} threads", w, t, _same(got.data, want.data)))

    out_dir = tempfile.mkdtemp(prefix="qe4-bench-dask-")
    try:
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                          scheduler_port=0, dashboard_address=":0") as cluster, Client(cluster):
            d = da.concatenate([da.from_delayed(delayed(_block)(i, r, args.dim), (r, args.dim),
                                                np.float32) for i, r in enumerate(sizes)]).persist()
            wait(d)
            opts = dict(engine=engine, n_threads=1)
            qd.to_table(d[:args.chunk_rows * w], args.bits, args.method, **opts)   # warm the workers
            t, got = timed(lambda: qd.to_table(d, args.bits, args.method, **opts))
            runs.append((f"LocalCluster {w} x 1, to_table", w, t, _same(got.data, want.data)))
            path = os.path.join(out_dir, "t")
            t, st = timed(lambda: qd.to_sharded(d, path, args.bits, args.method, **opts))
            runs.append((f"LocalCluster {w} x 1, to_sharded", w, t,
                         _same(st.to_table().data, want.data)))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    t_again, again = timed(lambda: quantize(x, args.bits, args.method, **threads))
    runs.insert(0, ("one process, 1 thread", 1, min(t_single, t_again), _same(again.data, want.data)))
    single_rate = n / min(t_single, t_again)
    print(f"{'run':<36}{'cores':>6}{'seconds':>9}{'rows/s':>11}{'rows/s/core':>13}"
          f"{'speedup':>9}{'per-core eff':>14}  bytes")
    for name, cores, t, same in runs:
        rate = n / t
        print(f"{name:<36}{cores:>6}{t:>9.3f}{rate:>11.0f}{rate / cores:>13.0f}"
              f"{rate / single_rate:>9.2f}{rate / cores / single_rate:>14.2f}  {same}")
    peer = [t for name, _, t, _ in runs if "threads" in name]
    if peer:
        for name, _, t, _ in runs:
            if name.startswith("LocalCluster"):
                print(f"{name}: {peer[0] / t:.2f}x the rows/s of one process with {w} threads "
                      "(same cores, shared memory: the fair peer on one machine)")
    row_in, row_out = 4 * args.dim, want.row_bytes
    print(f"\nspeedup = rows/s / one process 1 thread; per-core eff = (rows/s per core) / "
          f"(one process rows/s).\nExpect on a multi-machine cluster about the LocalCluster "
          f"rows/s per core per worker core, if storage keeps up: each core then reads "
          f"{single_rate * row_in / 1e6:.1f} MB/s of float32 rows and writes "
          f"{single_rate * row_out / 1e6:.1f} MB/s of packed rows "
          f"({row_in} -> {row_out} bytes per row).")


def _block(i, n_rows, dim):
    """Chunk ``i`` of the table: N(0,1) float32 from the seed (0, i)."""
    return np.random.default_rng([0, i]).standard_normal((n_rows, dim), dtype=np.float32)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return "equal" if a.shape == b.shape and np.array_equal(a, b) else "DIFFERENT"


if __name__ == "__main__":
    main()
