"""Out-of-core quantization (issue 6): peak memory and throughput of ``qe4.stream.quantize_file``.

Two measurements, each in a fresh subprocess so its peak RSS is its own:

1. a table that fits in RAM (``--mem-rows``), quantized both ways: in memory
   (``np.load`` + ``quantize`` + ``qe4.io.save``) and streamed (``quantize_file``).
   The two output files must be byte-identical (checked first); then the
   rows/s ratio streamed / in-memory and both peak RSS values are printed;
2. a table larger than half of RAM (``--rows``, default: just over half of RAM),
   streamed only: peak RSS against the table size.

The tables are float32 N(0, 1) rows with per-row scales and a few heavy rows, written
chunk-wise to ``--workdir`` (deleted afterwards unless ``--keep``).

    python bench/bench_stream.py --rows 2000000 --mem-rows 500000     # quick
    python bench/bench_stream.py                                       # full size (> RAM / 2)
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

# run from a source checkout: the repository root (with the built qe4_fast) comes first
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 1 << 30


def ram_bytes():
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- data

def write_table(path, n_rows, dim, seed=0, chunk=1 << 20):
    """A float32 .npy [n_rows, dim] written chunk by chunk (never all in memory)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, dim)})
        for start in range(0, n_rows, chunk):
            k = min(chunk, n_rows - start)
            x = rng.standard_normal((k, dim), dtype=np.float32)
            x *= rng.uniform(0.05, 2.0, (k, 1)).astype(np.float32)
            x[::97] *= np.float32(25.0)
            f.write(x.data)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- child runs

class PeakRSS:
    """Samples VmRSS from /proc/self/status every 10 ms; VmHWM and ru_maxrss at the end."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.status("VmRSS"))
            time.sleep(0.01)

    def __enter__(self):
        self.baseline = self.status("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.hwm = self.status("VmHWM")
        self.maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args):
    import qe4  # noqa: F401  (imports count in the baseline, not the peak delta)
    from qe4 import stream
    from qe4.io import save
    mod = stream.get_engine(args.engine)
    kw = {"n_threads": args.threads} if args.engine == "fast" else {}
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if args.child == "stream":
            info = stream.quantize_file(args.src, args.dst, args.bits, args.method, engine=args.engine,
                                        n_threads=args.threads, max_memory=args.max_memory,
                                        progress=False)
            n_rows, extra = info["n_rows"], {"chunk_rows": info["chunk_rows"],
                                             "n_chunks": info["n_chunks"]}
        else:
            x = np.load(args.src)
            t_load = time.perf_counter() - t0
            table = mod.quantize(x, args.bits, args.method, **kw)
            save(table, args.dst)
            n_rows, extra = x.shape[0], {"load_seconds": t_load}
        seconds = time.perf_counter() - t0
    print(json.dumps(dict(extra, mode=args.child, seconds=seconds, rows_per_s=n_rows / seconds,
                          baseline=rss.baseline, sampled_peak=rss.peak, vm_hwm=rss.hwm,
                          ru_maxrss=rss.maxrss)))


def run_child(mode, src, dst, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--src", src, "--dst", dst,
           "--engine", args.engine, "--bits", str(args.bits), "--method", args.method]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.max_memory is not None:
        cmd += ["--max-memory", str(args.max_memory)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main

def gib(n):
    return f"{n / GiB:.2f} GiB"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None,
                   help="rows of the big (streamed) table; default: just over half of RAM; 0 skips it")
    p.add_argument("--mem-rows", type=int, default=2_000_000, help="rows of the table that fits")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--method", default="greedy")
    p.add_argument("--engine", choices=("fast", "reference"), default="fast")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-memory", type=int, default=None, help="bytes (default: qe4.stream's)")
    p.add_argument("--workdir", default=None, help="where the big files go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--child", choices=("stream", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from qe4 import stream
    stream.get_engine(args.engine)     # fail early, with build instructions, if fast is missing
    ram = ram_bytes()
    row_in = 4 * args.dim
    if args.rows is None:
        args.rows = int(0.55 * ram) // row_in + 1
    work = tempfile.mkdtemp(prefix="qe4_bench_stream_", dir=args.workdir)
    print(f"machine: {os.cpu_count()} cores, RAM {gib(ram)}; engine {args.engine}, threads "
          f"{args.threads or 'all'}, {args.bits}-bit {args.method}, dim {args.dim}; workdir {work}")
    try:
        # 1. a table that fits: in memory vs streamed, bytes first
        small = os.path.join(work, "small.npy")
        t = time.perf_counter()
        write_table(small, args.mem_rows, args.dim, seed=1)
        print(f"\n[1] {args.mem_rows:,} x {args.dim} float32 ({gib(args.mem_rows * row_in)}) "
              f"written in {time.perf_counter() - t:.1f} s")
        mem = run_child("memory", small, os.path.join(work, "small_mem.qe4"), args)
        st = run_child("stream", small, os.path.join(work, "small_stream.qe4"), args)
        same = _same_file(os.path.join(work, "small_mem.qe4"), os.path.join(work, "small_stream.qe4"))
        print(f"    output files byte-identical: {same}")
        if not same:
            raise SystemExit("streamed output differs from the in-memory output")
        for r in (mem, st):
            print(f"    {r['mode']:>6}: {r['seconds']:8.2f} s, {r['rows_per_s']:12,.0f} rows/s, peak RSS "
                  f"{gib(r['vm_hwm'])} (sampled {gib(r['sampled_peak'])}, baseline {gib(r['baseline'])})"
                  + (f", {r['n_chunks']} chunks of {r['chunk_rows']:,} rows" if r["mode"] == "stream" else ""))
        print(f"    ratio streamed / in-memory: throughput {st['rows_per_s'] / mem['rows_per_s']:.3f}, "
              f"peak RSS {st['vm_hwm'] / mem['vm_hwm']:.3f}")
        os.remove(small)

        # 2. a table larger than half of RAM, streamed
        if args.rows:
            big = os.path.join(work, "big.npy")
            t = time.perf_counter()
            write_table(big, args.rows, args.dim, seed=2)
            size = os.path.getsize(big)
            print(f"\n[2] {args.rows:,} x {args.dim} float32 = {gib(size)} "
                  f"({100 * size / ram:.0f}% of RAM) written in {time.perf_counter() - t:.1f} s")
            r = run_child("stream", big, os.path.join(work, "big.qe4"), args)
            print(f"    stream: {r['seconds']:8.2f} s, {r['rows_per_s']:12,.0f} rows/s, peak RSS "
                  f"{gib(r['vm_hwm'])} (sampled {gib(r['sampled_peak'])}, baseline {gib(r['baseline'])}), "
                  f"{r['n_chunks']} chunks of {r['chunk_rows']:,} rows")
            print(f"    peak RSS / table size: {r['vm_hwm'] / size:.4f}; throughput vs the in-memory run "
                  f"of [1]: {r['rows_per_s'] / mem['rows_per_s']:.3f}; output "
                  f"{gib(os.path.getsize(os.path.join(work, 'big.qe4')))}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _same_file(a, b, block=1 << 24):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True


if __name__ == "__main__":
    main()
