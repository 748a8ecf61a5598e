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

Every run's bytes are compared with the single-process bytes (the script exits
with an error if any differ).  It prints wall-clock rows/s (and per core, and
the ratio to run 1) and rows per CPU-second: rows divided by the CPU time this
process (client, scheduler, checksums) and the worker processes used during the
run.  On a machine shared with other jobs the wall-clock rates understate what
dedicated cores do; the CPU-second rates and their ratios carry over.
Results: ``bench/results/bench_dask.txt``.

    python bench/bench_dask.py [--rows 100000] [--dim 64] [--method greedy]
        [--engine fast|reference] [--workers 2] [--chunk-rows 25000]
"""

import argparse
import logging
import os
import shutil
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


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

    def cpu_run(fn, workers=None):
        """(wall s, CPU s of this process, CPU s of the workers, result) of fn()."""
        w0 = sum(workers.run(time.process_time).values()) if workers else 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        w1 = sum(workers.run(time.process_time).values()) if workers else 0.0
        return t, c, w1 - w0, out

    single = lambda: quantize(x, args.bits, args.method, **threads)   # noqa: E731
    first = cpu_run(single)
    want = first[3]
    runs = []       # (name, cores, wall s, client CPU s, worker CPU s, bytes)
    if engine == "fast" and w > 1:
        t, c, _, got = cpu_run(lambda: quantize(x, args.bits, args.method, n_threads=w))
        runs.append((f"one process, {w} threads", w, t, c, 0.0, _same(got.data, want.data)))

    out_dir = tempfile.mkdtemp(prefix="qe4-bench-dask-")
    try:
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                          scheduler_port=0, dashboard_address=":0",
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            d = da.concatenate([da.from_delayed(delayed(_block)(i, r, args.dim), (r, args.dim),
                                                np.float32) for i, r in enumerate(sizes)]).persist()
            wait(d)
            opts = dict(engine=engine, n_threads=1)
            qd.to_table(d[:args.chunk_rows * w], args.bits, args.method, **opts)   # warm the workers
            t, c, cw, got = cpu_run(lambda: qd.to_table(d, args.bits, args.method, **opts), client)
            runs.append((f"LocalCluster {w} x 1, to_table", w, t, c, cw, _same(got.data, want.data)))
            path = os.path.join(out_dir, "t")
            t, c, cw, st = cpu_run(lambda: qd.to_sharded(d, path, args.bits, args.method, **opts),
                                   client)
            runs.append((f"LocalCluster {w} x 1, to_sharded", w, t, c, cw,
                         _same(st.to_table().data, want.data)))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    again = cpu_run(single)
    best = min(first, again, key=lambda r: r[0])
    runs.insert(0, ("one process, 1 thread", 1, best[0], best[1], 0.0, _same(again[3].data, want.data)))
    wall_rate, cpu_rate = n / best[0], n / best[1]
    print(f"{'run':<34}{'cores':>6}{'wall s':>8}{'rows/s':>10}{'/core':>9}{'vs 1':>6}"
          f"{'client':>8}{'workers':>8}{'rows/CPU-s':>11}{'vs 1':>6}  bytes")
    for name, cores, t, c, cw, same in runs:
        rate, per_cpu = n / t, n / (c + cw)
        print(f"{name:<34}{cores:>6}{t:>8.3f}{rate:>10.0f}{rate / cores:>9.0f}"
              f"{rate / wall_rate:>6.2f}{c:>8.2f}{cw:>8.2f}{per_cpu:>11.0f}{per_cpu / cpu_rate:>6.2f}  {same}")
    for name, _, t, _, _, _ in runs:
        if name.startswith("LocalCluster") and engine == "fast" and w > 1:
            print(f"{name}: {runs[1][2] / t:.2f}x the rows/s of one process with {w} threads "
                  "(same cores, shared memory: the fair peer on one machine)")
    row_in, row_out = 4 * args.dim, want.row_bytes
    print(f"""
wall: elapsed seconds; /core = rows/s / cores; vs 1 = ratio to one process, 1 thread.
client/workers: CPU seconds used by this process (client, scheduler, checksums) and by the
worker processes during the run; rows/CPU-s = rows / (client + workers) CPU seconds, the
per-core throughput to expect on dedicated cores (wall-clock rates on a machine shared
with other jobs understate it).  At {cpu_rate:.0f} rows per CPU-second a core reads
{cpu_rate * row_in / 1e6:.1f} MB/s of float32 rows and writes {cpu_rate * row_out / 1e6:.1f} MB/s of packed rows ({row_in} -> {row_out} bytes per row).""")
    if any(r[-1] != "equal" for r in runs):
        raise SystemExit("bytes differ from the single-process run: the timings above are void")


def _block(i, n_rows, dim):
    """Chunk ``i`` of the table: N(0,1) float32 from the seed (0, i)."""
    return np.random.default_rng([0, i]).standard_normal((n_rows, dim), dtype=np.float32)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return "equal" if a.shape == b.shape and np.array_equal(a, b) else "DIFFERENT"


if __name__ == "__main__":
    main()
