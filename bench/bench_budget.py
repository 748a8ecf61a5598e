"""Spending a byte budget where it matters: qe4.allocate against uniform 4-bit greedy.

GloVe 6B 50d (400,000 x 50, file order = frequency order, weights 1/(rank+1)):
frequency-weighted error ``sum w ||x - x_hat||^2 / sum w ||x||^2`` of the allocation at
the bytes of uniform 4-bit greedy (29 B/row, 4.64 bpw) and at 3.0 bpw, every byte of the
mixed table counted (sub-table rows, tier headers, the row map), with the row map
(``tiers``) and with renumbered rows (``renumber``), and the Google-analogy accuracy of
the 30k most frequent words.  Targets: <= 0.25x greedy's error at its bytes; at 3.0 bpw
no worse than greedy.

MovieLens-100k (qe4.evidence.movielens: biased MF of dim 64 and a DLRM-style model with
9 tables of dim 16), per seed: train, then swap every embedding table for its
reconstruction and measure test RMSE (MF) and AUC (DLRM), paired against the same fp32
model.  Allocation at 3.0 bpw over each model's tables with weights = the training
split's own access counts, against uniform 4-bit greedy (4.5 bpw MF, 6 bpw DLRM).
Target: Delta AUC and Delta RMSE no worse than greedy's, over >= 3 seeds.

Every table is stored by qe4_fast and read back through its mixed table (the bytes
counted are those stored).

The allocation per row is compared with uniform greedy, and so is one precision per table
(``per="table"``, what TBE and TorchRec serve).  Across seeds the comparison is paired:
per seed, the allocation's delta minus greedy/4's delta on the same trained model; the
mean of those differences, its standard error and the seeds where the allocation is no
worse are printed.

    python bench/bench_budget.py [--ladder pruned,greedy/2,...] [--seeds 0,1,2]
        [--threads 2] [--skip-glove] [--skip-movielens] [--quick]

Prints the tables and writes them to bench/results/bench_budget.txt, the curves (every
uniform method and the allocation at a grid of bpw) to bench/results/bench_budget.json,
and the figure figures/budget.png (qe4.plots.fig_budget).  ``--quick`` (a check that the
script runs: the first 50,000 GloVe rows, 2 training epochs) writes
bench/results/bench_budget_quick.{txt,json} and no figure.
"""

import argparse
import json
import os
import time

import numpy as np

import qe4
import qe4_fast
from qe4 import allocate as A


BPW_GRID = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.64, 5.5, 6.5, 8.0)
UNIFORM = (("minmax", 2), ("greedy", 2), ("minmax", 4), ("greedy", 4), ("minmax", 8),
           ("greedy", 8))


def glove(ladder, nt, say, curve, n_rows=None):
    from qe4.evidence import glove as G
    x, words = G.load_glove(n_rows)
    w = 1.0 / np.arange(1, x.shape[0] + 1)
    questions = G.load_analogies(words)
    vocab = G.ANALOGY_VOCAB
    t0 = time.perf_counter()
    errors = A.rung_errors(x, ladder, n_threads=nt)
    say(f"GloVe 6B 50d {x.shape[0]:,} x {x.shape[1]}; ladder {[r.name for r in A.ladder(ladder)]}; "
        f"per-row errors of every rung in {time.perf_counter() - t0:.1f} s")
    g4 = qe4_fast.quantize(x, 4, "greedy", n_threads=nt)
    g_err = qe4.table_error(x, qe4_fast.dequantize(g4, n_threads=nt), w)
    acc32 = G.analogy_accuracy(x[:vocab], questions)
    say(f"{'table':<34} {'bytes':>11} {'B/row':>6} {'bpw':>6} {'w. error':>10} {'x greedy':>9} "
        f"{'analogy':>8}")
    say(f"{'fp32':<34} {x.nbytes:>11,} {x.nbytes / len(x):>6.2f} {32.0:>6.2f} {0.0:>10.4e} "
        f"{0.0:>9.3f} {acc32:>8.4f}")
    acc = G.analogy_accuracy(qe4_fast.dequantize(g4, n_threads=nt)[:vocab], questions)
    say(f"{'uniform greedy/4':<34} {g4.nbytes:>11,} {g4.nbytes / len(x):>6.2f} "
        f"{8 * g4.nbytes / x.size:>6.2f} {g_err:>10.4e} {1.0:>9.3f} {acc:>8.4f}")
    for label, budget in (("at greedy/4's bytes", g4.nbytes), ("at 3.0 bpw", "3.0bpw")):
        for row_map in ("tiers", "renumber"):
            a = A.allocate(x, budget, weights=w, ladder=ladder, errors=errors, row_map=row_map,
                           n_threads=nt)
            t = a.quantize(x, n_threads=nt)
            xh = qe4_fast.dequantize(t, n_threads=nt)
            if row_map == "renumber":       # back to the original row order
                xh = xh[np.argsort(a.renumbering())]
            err = qe4.table_error(x, xh, w)
            assert t.nbytes == a.nbytes and abs(err - a.error) <= 1e-9 * max(err, 1e-30)
            acc = G.analogy_accuracy(xh[:vocab], questions)
            name = f"allocate {label} ({row_map})"
            say(f"{name:<34} {t.nbytes:>11,} {t.nbytes / len(x):>6.2f} "
                f"{8 * t.nbytes / x.size:>6.2f} {err:>10.4e} {err / g_err:>9.3f} {acc:>8.4f}")
            if row_map == "tiers":
                mix = ", ".join(f"{k} {100 * n / len(x):.2f}%" for k, (n, _) in a.mix().items() if n)
                say(f"    mix: {mix}")
    for method, bits in UNIFORM:
        t = qe4_fast.quantize(x, bits, method, n_threads=nt)
        xh = qe4_fast.dequantize(t, n_threads=nt)
        curve.append({"data": "glove", "kind": method, "bpw": 8 * t.nbytes / x.size,
                      "weighted_error": qe4.table_error(x, xh, w),
                      "analogy": G.analogy_accuracy(xh[:vocab], questions)})
    for bpw in BPW_GRID:
        a = A.allocate(x, f"{bpw}bpw", weights=w, ladder=ladder, errors=errors, n_threads=nt)
        xh = qe4_fast.dequantize(a.quantize(x, n_threads=nt), n_threads=nt)
        curve.append({"data": "glove", "kind": "allocate", "bpw": a.bpw, "weighted_error": a.error,
                      "analogy": G.analogy_accuracy(xh[:vocab], questions)})
    curve.append({"data": "glove", "kind": "fp32", "bpw": 32.0, "weighted_error": 0.0,
                  "analogy": acc32})


def movielens(ladder, seeds, nt, say, curve, epochs=(25, 8)):
    import torch
    from qe4.evidence import movielens as ML
    torch.set_num_threads(1)
    feats, rating, card = ML.load()
    click = (rating >= 4).astype(np.float32)
    MF, DLRM = ML._models()
    mse, bce = torch.nn.MSELoss(), torch.nn.BCEWithLogitsLoss()
    say("")
    say(f"MovieLens-100k: {len(rating):,} ratings; seeds {list(seeds)}; deltas against the "
        "same fp32 model (RMSE: lower is better, AUC: higher is better)")
    rows = {}
    for seed in seeds:
        tr, va, te = ML.split(len(rating), seed)
        torch.manual_seed(seed)
        mf = ML._train(MF(card[0], card[1], ML.MF_DIM, float(rating[tr].mean())), mse, ML.rmse,
                       feats, rating, tr, va, epochs=epochs[0], lr=5e-3, wd=1e-4, seed=seed)
        torch.manual_seed(seed)
        dlrm = ML._train(DLRM(card, ML.DLRM_DIM), bce, ML.logloss, feats, click, tr, va,
                         epochs=epochs[1], lr=2e-3, wd=1e-6, seed=seed)
        base = ML._evaluate((mf, dlrm), feats, rating, click, te)
        for model, metric, cols in ((mf, "mf_rmse", (0, 1)), (dlrm, "dlrm_auc", range(9))):
            tables = model.tables()
            counts = {name: np.bincount(feats[tr, c], minlength=tables[name].shape[0])
                      for name, c in zip(tables, cols)}
            xs = {k: v.detach().numpy().copy() for k, v in tables.items()}
            n_el = sum(v.size for v in xs.values())
            builds = [(f"greedy/{b}", "greedy", _uniform(nt, b)) for b in (2, 4, 8)]
            builds += [(f"allocate {bpw}bpw", "allocate", _allocated(ladder, counts, nt, bpw))
                       for bpw in (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)]
            builds += [("per table 3.0bpw", "per-table",
                        _allocated(ladder, counts, nt, 3.0, per="table"))]
            for label, kind, build in builds:
                recon, nbytes = build(xs)
                res = _swapped(ML, tables, recon, (mf, dlrm), feats, rating, click, te)
                r = rows.setdefault((metric, label), {"bpw": 8 * nbytes / n_el, "delta": [],
                                                      "kind": kind})
                r["delta"].append(res[metric] - base[metric])
    say(f"{'model':<6} {'table':<18} {'bpw':>6}  {'mean delta':>11}  per seed")
    for (metric, label), r in rows.items():
        d = r["delta"]
        curve.append({"data": metric, "kind": r["kind"], "bpw": r["bpw"], "delta": d})
        say(f"{metric.split('_')[0].upper():<6} {label:<18} {r['bpw']:>6.3f}  {np.mean(d):>+11.5f}  "
            + " ".join(f"{v:+.5f}" for v in d))
    say("")
    say("paired against uniform greedy/4 on the same trained model (positive = worse):")
    for metric, sign in (("mf_rmse", 1), ("dlrm_auc", -1)):
        g = np.array(rows[(metric, "greedy/4")]["delta"])
        for label in ("allocate 3.0bpw", "per table 3.0bpw"):
            worse = sign * (np.array(rows[(metric, label)]["delta"]) - g)
            se = worse.std(ddof=1) / np.sqrt(worse.size) if worse.size > 1 else float("nan")
            say(f"{metric}: {label} minus greedy/4 per seed "
                + " ".join(f"{v:+.5f}" for v in worse)
                + f"; mean {worse.mean():+.5f} (standard error {se:.5f}), no worse in "
                f"{int((worse <= 0).sum())}/{worse.size} seeds: "
                + ("met" if worse.mean() <= 0 else "NOT met"))


def _uniform(nt, bits):
    def build(xs):
        out, nbytes = {}, 0
        for k, x in xs.items():
            t = qe4_fast.quantize(x, bits, "greedy", n_threads=nt)
            out[k], nbytes = qe4_fast.dequantize(t, n_threads=nt), nbytes + t.nbytes
        return out, nbytes
    return build


def _allocated(ladder, counts, nt, bpw, per="row"):
    def build(xs):
        a = A.allocate(xs, f"{bpw}bpw", weights=counts, ladder=ladder, per=per, n_threads=nt)
        tables = a.quantize(xs, n_threads=nt)
        return ({k: qe4_fast.dequantize(t, n_threads=nt) for k, t in tables.items()},
                sum(t.nbytes for t in tables.values()))
    return build


def _swapped(ML, tables, recon, models, feats, rating, click, te):
    import torch
    saved = {k: w.detach().clone() for k, w in tables.items()}
    try:
        with torch.no_grad():
            for k, w in tables.items():
                w.copy_(torch.from_numpy(recon[k]))
        return ML._evaluate(models, feats, rating, click, te)
    finally:
        with torch.no_grad():
            for k, w in tables.items():
                w.copy_(saved[k])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ladder", default=None, help="comma-separated rungs (default: qe4's)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-glove", action="store_true")
    ap.add_argument("--skip-movielens", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="check the script runs: 50,000 GloVe rows, 2 epochs; *_quick outputs")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ladder = args.ladder.split(",") if args.ladder else None
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    curve = []
    if not args.skip_glove:
        glove(ladder, args.threads, say, curve, n_rows=50_000 if args.quick else None)
    if not args.skip_movielens:
        movielens(ladder, seeds, args.threads, say, curve, epochs=(2, 2) if args.quick else (25, 8))
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    name = "bench_budget_quick" if args.quick else "bench_budget"
    with open(os.path.join(here, name + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(here, name + ".json"), "w") as f:
        json.dump({"ladder": [r.name for r in A.ladder(ladder)], "points": curve}, f, indent=1)
    if args.quick:
        print(f"wrote {here}/{name}.txt and {name}.json")
        return
    from qe4 import plots
    fig = plots.fig_budget({"ladder": [r.name for r in A.ladder(ladder)], "points": curve})
    path = os.path.join(os.path.dirname(here), "..", "figures", "budget.png")
    plots._save(fig, os.path.normpath(path))
    print(f"wrote {here}/bench_budget.txt, bench_budget.json and figures/budget.png")


if __name__ == "__main__":
    main()
