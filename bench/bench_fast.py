"""qe4_fast against torch (and the qe4 reference), one table for GitHub issue 3.

For each function: the time of qe4_fast with 2 threads and with 1 thread, the peer torch
op, the NumPy reference, and the ratios peer / fast and reference / fast (above 1 means
qe4_fast is faster; ratios below 1 are printed as they are).  Every output is checked
byte for byte before anything is timed (qe4_fast == torch where torch computes the same
thing, qe4_fast == qe4 on a slice everywhere).  The machine's memory bandwidth (a NumPy
copy of 1 GiB) is measured in the same run, and the bandwidth-bound kernels print the
GB/s they reach.  Times are the best of --repeat runs; on a shared machine only the
ratios mean anything.

Table: N(0,1) float32 [rows, 64], seed 0.  Bags: 2048 bags x 40 indices, uniform or
Zipf(1) over rows (rows shuffled), per-sample weights N(0,1).  The reference is timed
on --ref-rows rows and scaled to the full table (marked *); exhaustive runs on a slice
of --exhaustive-rows rows (its peer: torch's greedy prepack on that slice).

    python bench/bench_fast.py            # full: 1,000,000 rows (torch greedy takes ~20 s)
    python bench/bench_fast.py --quick    # 100,000 rows
    python bench/bench_fast.py --rows 200000 --repeat 5

Writes the table to bench/results/bench_fast.txt as well.
"""

import argparse
import os

import numpy as np

import _timing  # noqa: F401  (first: this source tree's qe4 and qe4_fast)
from _timing import best_interleaved, best_of, machine_line, write_results
import qe4
import qe4_fast

HERE = os.path.dirname(os.path.abspath(__file__))
N_BAGS, BAG_LEN = 2048, 40


def same_bytes(a, b, what):
    _timing.same_bytes(a, b, what, "bench_fast")


def memory_bandwidth(repeat):
    """GB/s of a NumPy copy of 1 GiB (read + write counted: 2 GiB moved)."""
    n = 1 << 30
    src = np.ones(n, np.uint8)
    dst = np.empty_like(src)
    t, _ = best_of(lambda: np.copyto(dst, src), max(repeat, 3))
    del src, dst
    return 2 * n / t / 1e9


def bag_inputs(n_rows, zipf, seed=1):
    rng = np.random.default_rng(seed)
    n = N_BAGS * BAG_LEN
    if zipf:
        p = qe4.zipf_weights(n_rows)
        ranks = rng.choice(n_rows, size=n, p=p / p.sum())
        indices = rng.permutation(n_rows)[ranks]
    else:
        indices = rng.integers(0, n_rows, n)
    offsets = np.arange(N_BAGS, dtype=np.int64) * BAG_LEN
    weights = rng.standard_normal(n).astype(np.float32)
    return indices.astype(np.int64), offsets, weights


def fmt_t(t):
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:9.0f} us"
    return f"{t * 1e3:9.1f} ms" if t < 10 else f"{t:9.2f} s "


def fmt_r(a, b):
    return "-" if a is None or b is None else f"{a / b:8.2f}x"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="100,000 rows (overrides --rows)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bag-rounds", type=int, default=300,
                   help="interleaved rounds (torch, 2 threads, 1 thread) for the bag timings")
    p.add_argument("--ref-rows", type=int, default=20_000)
    p.add_argument("--exhaustive-rows", type=int, default=5_000)
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_fast.txt"))
    args = p.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    rep = args.repeat
    ref_rows = min(args.ref_rows, rows)
    ex_rows = min(args.exhaustive_rows, rows)

    import torch
    import torch.nn.functional as F
    torch.set_num_threads(2)
    tq = torch.ops.quantized

    x = np.random.default_rng(0).standard_normal((rows, args.dim), dtype=np.float32)
    xt = torch.from_numpy(x)
    x_ref, x_ex = x[:ref_rows], x[:ex_rows]
    bw = memory_bandwidth(rep)
    results = []   # (name, fast2, fast1, peer_name, peer, ref, ref_scaled, gbytes)

    def fast_pair(fn):
        t2, out = best_of(lambda: fn(2), rep)
        t1, _ = best_of(lambda: fn(1), rep)
        return t2, t1, out

    def ref_time(fn, n):
        t, out = best_of(fn, 1)
        return t * rows / n, out

    # ---------------------------------------------------------------- quantize
    for name, bits, method, peer_name, peer_fn, r in [
        ("greedy 4-bit", 4, "greedy", "4bit_prepack(w, True)",
         lambda: tq.embedding_bag_4bit_prepack(xt, True, 200, 0.16), 1),
        ("minmax 4-bit", 4, "minmax", "4bit_prepack(w, False)",
         lambda: tq.embedding_bag_4bit_prepack(xt, False), rep),
        ("greedy 2-bit", 2, "greedy", "2bit_prepack(w, True)",
         lambda: tq.embedding_bag_2bit_prepack(xt, True, 200, 0.16), 1),
    ]:
        peer, peer_out = best_of(peer_fn, r)
        t2, t1, fast = fast_pair(lambda n: qe4_fast.quantize(x, bits, method, n_threads=n))
        same_bytes(fast.data, peer_out.numpy(), f"{name} vs torch")
        ref, ref_out = ref_time(lambda: qe4.quantize(x_ref, bits, method), ref_rows)
        same_bytes(fast.data[:ref_rows], ref_out.data, f"{name} vs qe4")
        gb = (x.nbytes + fast.data.nbytes) / 1e9 if method == "minmax" else None
        results.append((name, t2, t1, peer_name, peer, ref, ref_rows < rows, gb))
        if method == "minmax":
            table4 = fast
            packed_t = torch.from_numpy(table4.data)   # the same bytes in the same memory: the
            #                                            lookups compare on equal cache terms

    # exhaustive on a slice; its peer is torch's greedy on the same slice
    xt_ex = torch.from_numpy(np.ascontiguousarray(x_ex))
    peer, _ = best_of(lambda: tq.embedding_bag_4bit_prepack(xt_ex, True, 200, 0.16), 1)
    t2, t1, fast = fast_pair(lambda n: qe4_fast.quantize(x_ex, 4, "exhaustive", n_threads=n))
    n_chk = min(200, ex_rows)
    t_ref, ref_out = best_of(lambda: qe4.quantize(x_ex[:n_chk], 4, "exhaustive"), 1)
    same_bytes(fast.data[:n_chk], ref_out.data, "exhaustive vs qe4")
    results.append((f"exhaustive 4-bit ({ex_rows} rows)", t2, t1, "4bit_prepack(w, True)", peer,
                    t_ref * ex_rows / n_chk, True, None))

    # ---------------------------------------------------------------- dequantize and bags
    try:
        deq = qe4_fast.dequantize
        bag = qe4_fast.embedding_bag
    except AttributeError:   # the bag kernels are built by another module
        deq = bag = None
    if deq is not None:
        peer, peer_out = best_of(lambda: tq.embedding_bag_4bit_unpack(packed_t), rep)
        t2, t1, fast = fast_pair(lambda n: deq(table4, n_threads=n))
        same_bytes(fast, peer_out.numpy(), "dequantize vs torch")
        small = qe4.QuantizedTable(table4.data[:ref_rows], bits=4, dim=args.dim, method="minmax")
        ref, ref_out = ref_time(lambda: qe4.dequantize(small), ref_rows)
        same_bytes(fast[:ref_rows], ref_out, "dequantize vs qe4")
        results.append(("dequantize 4-bit", t2, t1, "4bit_unpack", peer, ref, ref_rows < rows,
                        (table4.data.nbytes + fast.nbytes) / 1e9))

        w_fp32 = torch.from_numpy(x)
        for name, zipf, mode, weighted in [("bag sum, uniform", False, "sum", False),
                                           ("bag sum, Zipf", True, "sum", False),
                                           ("bag weighted sum, Zipf", True, "sum", True),
                                           ("bag mean, Zipf", True, "mean", False)]:
            idx, off, wts = bag_inputs(rows, zipf)
            psw = wts if weighted else None
            it, ot = torch.from_numpy(idx), torch.from_numpy(off)
            wt = torch.from_numpy(wts) if weighted else None

            def peer_fn():
                # torch's 4-bit op ignores mode (always sums): the peer of "mean" is its sum
                return tq.embedding_bag_4bit_rowwise_offsets(packed_t, it, ot, False, 0, False, wt,
                                                             None, False)
            def fast_fn(n):
                return lambda: bag(table4, idx, off, mode=mode, per_sample_weights=psw, n_threads=n)
            (peer, t2, t1), (peer_out, fast, _) = best_interleaved(
                [peer_fn, fast_fn(2), fast_fn(1)], args.bag_rounds)
            if mode == "sum":
                same_bytes(fast, peer_out.numpy(), f"{name} vs torch")
            ref, ref_out = best_of(lambda: qe4.embedding_bag(table4, idx, off, mode=mode,
                                                             per_sample_weights=psw), 1)
            same_bytes(fast, ref_out, f"{name} vs qe4")
            fp32, _ = best_of(lambda: F.embedding_bag(it, w_fp32, ot, mode=mode, per_sample_weights=wt), rep)
            results.append((name, t2, t1, "4bit_rowwise_offsets" + (" (sums)" if mode == "mean" else ""),
                            peer, ref, False, None))
            results.append((f"  context: fp32 F.embedding_bag {mode}", None, None, "F.embedding_bag",
                            fp32, None, False, None))

    # ---------------------------------------------------------------- table
    lines = [
        f"bench_fast: qe4_fast vs torch {torch.__version__} and the qe4 reference; "
        f"table {rows} x {args.dim} float32 N(0,1); bags {N_BAGS} x {BAG_LEN}",
        f"machine: {machine_line()}, best of {rep} (bags: best of {args.bag_rounds} "
        "interleaved rounds); bytes checked equal before timing",
        f"memory bandwidth (NumPy copy of 1 GiB, read+write): {bw:.1f} GB/s",
        "ratios: peer/fast2, peer/1T (qe4_fast on 1 thread) and qe4/fast2 (> 1: qe4_fast faster); "
        "1T/2T = thread scaling; "
        "* = reference timed on a slice and scaled",
        "",
        f"{'function':34s} {'fast 2T':>12s} {'fast 1T':>12s} {'1T/2T':>7s}  {'peer (torch.ops.quantized)':28s}"
        f" {'peer':>12s} {'peer/fast':>9s} {'peer/1T':>8s} {'qe4 ref':>13s} {'qe4/fast':>9s} {'GB/s':>6s}",
    ]
    for name, t2, t1, peer_name, peer, ref, scaled, gb in results:
        scal = "-" if t1 is None else f"{t1 / t2:6.2f}x"
        refs = "-" if ref is None else fmt_t(ref) + ("*" if scaled else " ")
        gbs = "-" if gb is None else f"{gb / t2:6.1f}"
        lines.append(f"{name:34s} {fmt_t(t2):>12s} {fmt_t(t1):>12s} {scal:>7s}  {peer_name:28s}"
                     f" {fmt_t(peer):>12s} {fmt_r(peer, t2) if t2 else '':>9s}"
                     f" {fmt_r(peer, t1) if t1 else '':>8s} {refs:>13s}"
                     f" {fmt_r(ref, t2) if t2 else '':>9s} {gbs:>6s}")
    if deq is None:
        lines.append("(dequantize / embedding-bag rows skipped: qe4_fast.bag is not available)")
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out)


if __name__ == "__main__":
    main()
