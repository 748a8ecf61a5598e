"""Figures of qe4: error versus clipping range, rate-distortion, per-row error, downstream quality.

Every figure is drawn from the cached evidence results (``bench/results/evidence.json``,
written by ``qe4 evidence``) in seconds::

    qe4 plot                                  # every figure into figures/
    qe4 plot --table emb.npy --row 7 --bits 4 # error over the clipping grid of one row

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no global backend change), so this module is safe to import anywhere.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any
import argparse
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from ._typing import StrPath

DEFAULT_RESULTS = os.path.join("bench", "results", "evidence.json")
DEFAULT_OUT = "figures"
DPI = 100

# fixed style per method; unknown (e.g. newly added codebook) methods get the next free style
STYLE = {
    "minmax": ("#7f7f7f", "o"), "greedy": ("#d62728", "*"), "exhaustive": ("#1f77b4", "X"),
    "aciq-laplace": ("#2ca02c", "^"), "aciq-gauss": ("#9467bd", "s"),
    "kmeans": ("#8c564b", "D"), "kmeans-optimal": ("#e377c2", "P"), "two-tier": ("#17becf", "h"),
    "faiss-sq": ("#bcbd22", "v"), "bnb-nf4": ("#ff7f0e", "<"),
    "fp16": ("#000000", "d"), "fp32": ("#000000", "."),
}
_SPARE = [("#393b79", ">"), ("#637939", "p"), ("#843c39", "H"), ("#7b4173", "8")]


def style(method: str) -> tuple[str, str]:
    """(color, marker) of a method, stable across figures."""
    if method not in STYLE:
        STYLE[method] = _SPARE[(len(STYLE) - 12) % len(_SPARE)]
    return STYLE[method]


def label(method: str) -> str:
    return {"faiss-sq": "faiss ScalarQuantizer (peer)", "bnb-nf4": "bitsandbytes NF4 (peer)",
            "minmax": "minmax (naive)"}.get(method, method)


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=DPI)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- figure 1

def draw_range_surface(ax: Axes, surf: Mapping[str, Any], title: str | None = None) -> Axes:
    """Heat map of normalized error over (low-end trim i, high-end trim j) of one row,
    with greedy's candidate region, its path and choice, the exhaustive optimum, min/max
    and the ACIQ ranges.  ``surf`` is :func:`qe4.evidence.ranges.row_surface` output."""
    from matplotlib.colors import LogNorm
    loss = np.array([[np.nan if v is None else v for v in r] for r in surf["loss"]], float)
    n = loss.shape[0] - 1
    pos = loss[np.isfinite(loss) & (loss > 0)]
    # colours resolve the region near the optimum; larger errors saturate (colour bar "max")
    norm = LogNorm(vmin=pos.min(), vmax=min(pos.max(), 8 * pos.min())) if pos.size else None
    # rows of ``loss`` are i (x axis), columns j (y axis): imshow wants [y, x]
    im = ax.imshow(loss.T, origin="lower", extent=(-0.5, n + 0.5, -0.5, n + 0.5),
                   cmap="viridis", norm=norm, aspect="equal", interpolation="nearest")
    reach = np.array(surf["reachable"], float)
    # view: greedy's candidate region with a margin; ranges beyond it sit on the edge, labelled
    extent = int(max(np.nonzero(reach.any(axis=1))[0].max(), np.nonzero(reach.any(axis=0))[0].max()))
    view = min(n, int(extent * 1.35) + 2)
    ax.contour(np.arange(n + 1), np.arange(n + 1), reach.T, levels=[0.5], colors="w",
               linestyles=":", linewidths=1.2)
    path = np.array(surf["path"], float)
    ax.plot(path[:, 0], path[:, 1], "-", color="w", lw=1.6, label="greedy path", gid="greedy-path")
    marks = [("minmax", "minmax"), ("greedy", "greedy choice"), ("exhaustive", "exhaustive optimum"),
             ("aciq-laplace", "ACIQ Laplace"), ("aciq-gauss", "ACIQ Gauss")]
    for key, text in marks:
        if surf.get(key) is None or None in surf[key]:
            continue
        i, j = surf[key]
        c, m = style(key)
        off = i > view or j > view
        err = ""
        ii, jj = int(round(min(i, n))), int(round(min(j, n)))
        if np.isfinite(loss[ii, jj]):
            err = f" ({loss[ii, jj]:.2e})"
        where = f" at i={i:.0f}, j={j:.0f}: off view" if off else ""
        ax.plot(min(i, view), min(j, view), m, color=c, ms=13 if m == "*" else 9, mec="w", mew=1.2,
                linestyle="none", label=text + err + where, gid=f"mark-{key}", zorder=5, clip_on=False)
    ax.set_xlabel(f"i = bins trimmed from the low end (1 bin = 1/{surf['n_bins']} of the range)")
    ax.set_ylabel("j = bins trimmed from the high end")
    ax.set_xlim(-0.5, view + 0.5)
    ax.set_ylim(-0.5, view + 0.5)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7.5, framealpha=0.85)
    cb = ax.figure.colorbar(im, ax=ax, shrink=0.85, extend="max")
    cb.set_label("normalized error ||x - x̂||² / ||x||²")
    return ax


def draw_clip_curves(ax: Axes, curves: Sequence[Mapping[str, Any]], bits: int) -> None:
    """Table error against the fraction of each row's range clipped (best split per total)."""
    for k, c in enumerate(x for x in curves if x["bits"] == bits):
        col = ["#d62728", "#1f77b4"][k % 2]
        f = np.array(c["fraction"]) * 100
        b0 = c["best_split"][0]
        ax.plot(f, np.array(c["best_split"]) / b0, "-", color=col, lw=2,
                label=f"{c['label']}: best low/high split", gid=f"curve-{k}")
        ax.plot(f, np.array(c["symmetric"]) / b0, "--", color=col, lw=1.2,
                label=f"{c['label']}: symmetric trim")
        k_min = int(np.argmin(c["best_split"]))
        ax.plot(f[k_min], c["best_split"][k_min] / b0, "o", color=col, ms=7)
        ax.annotate(f"{100 * (c['best_split'][k_min] / b0 - 1):+.0f}% at {f[k_min]:.0f}%",
                    (f[k_min], c["best_split"][k_min] / b0), textcoords="offset points",
                    xytext=(0, -14 if k % 2 == 0 else 9), ha="center", fontsize=8, color=col)
    lows = [min(c["best_split"]) / c["best_split"][0] for c in curves if c["bits"] == bits]
    ax.set_ylim(top=min(ax.get_ylim()[1], 1.6), bottom=min(lows) - 0.08)
    ax.axvline(100 * 0.16, color="k", ls=":", lw=1)
    ax.text(16.5, ax.get_ylim()[0] + 0.02, "greedy's stop\n(ratio = 0.16)", va="bottom", fontsize=8)
    ax.axhline(1.0, color="#7f7f7f", lw=0.8)
    if bits >= 4:
        ax.set_xlim(-1, 30)
    ax.set_xlabel("% of each row's range clipped (low + high)")
    ax.set_ylabel("table error relative to min/max (no clipping)")
    ax.set_title(f"GloVe, {bits}-bit: error vs clipping ratio", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper right")
    ax.grid(alpha=0.3)


def _row_title(row, bits):
    return (f"GloVe row {row['row']} \"{row['word']}\" (excess kurtosis {row['excess_kurtosis']:.1f}), "
            f"{bits}-bit")


def fig_error_vs_range(results: Mapping[str, Any], bits: int = 4) -> Figure:
    g = results["glove"]["figures"]
    fig = _figure(13, 11)
    axs = fig.subplots(2, 2)
    for ax, key in zip(axs[0], ("heavy", "typical")):
        row = g["rows"][key]
        draw_range_surface(ax, row["surface"][str(bits)], _row_title(row, bits))
    draw_clip_curves(axs[1, 0], g["curves"], bits)
    draw_clip_curves(axs[1, 1], g["curves"], 2 if bits != 2 else 4)
    fig.suptitle("Error versus clipping range (greedy grid: n_bins = 200; dotted white = "
                 "greedy's candidate region)", fontsize=12)
    return fig


def fig_error_vs_range_2bit(results: Mapping[str, Any]) -> Figure:
    g = results["glove"]["figures"]
    fig = _figure(13, 5.8)
    axs = fig.subplots(1, 2)
    for ax, key in zip(axs, ("heavy", "typical")):
        row = g["rows"][key]
        draw_range_surface(ax, row["surface"]["2"], _row_title(row, 2))
    fig.suptitle("2-bit: the loss surface is rugged and greedy's one-step descent stops early",
                 fontsize=12)
    return fig


# --------------------------------------------------------------------------- figure 2

def _by_method(res):
    out = {}
    for r in res:
        out.setdefault(r["method"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["bits_per_element"])
    return out


def fig_rate_distortion(results: Mapping[str, Any]) -> Figure:
    res = results["glove"]["results"]
    fig = _figure(13, 5.5)
    axs = fig.subplots(1, 2)
    for ax, key, name in ((axs[0], "table_error", "table error"),
                          (axs[1], "weighted_error", "frequency-weighted (Zipf) error")):
        for method, rs in _by_method(res).items():
            if method in ("fp32", "fp16"):
                continue
            c, m = style(method)
            xs = [r["bits_per_element"] for r in rs]
            ys = [r[key] for r in rs]
            ls = "none" if len(rs) == 1 else ("--" if rs[0]["family"] == "peer" else "-")
            ax.plot(xs, ys, marker=m, color=c, ls=ls, ms=8, label=label(method), gid=f"rd-{method}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        for method, x0 in (("fp16", 16), ("fp32", 32)):
            r = next((r for r in res if r["method"] == method), None)
            if r is not None:
                ax.axvline(x0, color="k", ls=":", lw=1.2, gid=f"rd-{method}")
                ax.text(x0 * 0.97, ax.get_ylim()[1], f"{method}\nerror {r[key]:.1e}", ha="right",
                        va="top", fontsize=8)
        ax.set_xticks([2, 3, 4, 6, 8, 16, 32])
        ax.set_xticklabels(["2", "3", "4", "6", "8", "16", "32"])
        ax.set_xlabel("stored bits per element (codes + per-row scale/bias or codebooks)")
        ax.set_ylabel(f"normalized {name}")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"GloVe 400k x 50: {name} vs size", fontsize=10)
    axs[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Rate-distortion on GloVe 6B 50d: every method at 2/4/8 bits, fp16 and peers "
                 "measured in the same run", fontsize=12)
    return fig


# --------------------------------------------------------------------------- figure 3

def draw_row_error_cdf(ax: Axes, res: Sequence[Mapping[str, Any]], bits: int) -> bool:
    p = None
    lo, hi = np.inf, 0.0
    for r in res:
        if r["bits"] != bits:
            continue
        q = np.array(r["row_error_quantiles"])
        p = np.linspace(0, 1, len(q))
        c, m = style(r["method"])
        ax.plot(np.maximum(q, 1e-12), p, color=c, lw=1.6,
                ls="--" if r["family"] == "peer" else "-", label=label(r["method"]),
                gid=f"cdf-{r['method']}")
        mid = len(q) // 2
        ax.plot(q[mid], p[mid], m, color=c, ms=7)
        lo, hi = min(lo, max(q[0], 1e-12)), max(hi, q[-3])   # view: up to the 99th percentile
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("per-row normalized error ||x_r - x̂_r||² / ||x_r||²")
    ax.set_ylabel("fraction of rows with error ≤ x (axis ends at the 99th percentile)")
    ax.set_title(f"GloVe rows, {bits}-bit: CDF of per-row error (marker = median)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if p is not None:
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7.5, loc="lower right")
    return p is not None


def draw_row_thresholds(ax: Axes, row: Mapping[str, Any], bits: int) -> None:
    """Histogram of one row's values with each uniform method's (lo, hi) and codebook levels."""
    surf = row["surface"][str(bits)]
    vals = np.array(surf["values"])
    ax.hist(vals, bins=30, color="#c7c7c7", edgecolor="#7f7f7f")
    top = ax.get_ylim()[1] * 1.6
    ax.set_ylim(top=top * 1.03)
    uniform = surf["ranges"]
    levels = row["levels"][str(bits)]
    k = 0
    for method in list(uniform) + [m for m in levels if m not in uniform]:
        c, m = style(method)
        lv = levels.get(method, [])
        if method in uniform:
            lo, hi = uniform[method]
            ax.plot([lo, hi], [top * (0.97 - 0.05 * k)] * 2, marker="|", ms=10, color=c, lw=2.5,
                    label=f"{method}: [{lo:.2f}, {hi:.2f}]", gid=f"thr-{method}")
        else:
            ax.plot(lv, [top * (0.97 - 0.05 * k)] * len(lv), m, color=c, ms=5, ls="none",
                    label=f"{method}: its {len(lv)} levels", gid=f"thr-{method}")
        k += 1
    ax.set_xlabel("element value")
    ax.set_ylabel("elements per bin")
    ax.set_title(f"Row {row['row']} \"{row['word']}\": histogram; {bits}-bit ranges (bars) and "
                 "codebook levels", fontsize=10)
    ax.legend(fontsize=7.5, loc="center right")


def fig_row_errors(results: Mapping[str, Any]) -> Figure:
    res = results["glove"]["results"]
    fig = _figure(16, 5.2)
    axs = fig.subplots(1, 3)
    draw_row_error_cdf(axs[0], res, 4)
    draw_row_error_cdf(axs[1], res, 2)
    draw_row_thresholds(axs[2], results["glove"]["figures"]["rows"]["heavy"], 4)
    fig.suptitle("Per-row error by method (GloVe 6B 50d, all 400k rows) and one heavy-tailed row",
                 fontsize=12)
    return fig


# --------------------------------------------------------------------------- figure 4

def draw_analogy(ax: Axes, g: Mapping[str, Any]) -> None:
    if not g.get("n_questions"):
        ax.text(0.5, 0.5, "no analogy questions in these results\n(gensim's questions-words.txt "
                "was not installed)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    fp32 = next(r["analogy"] for r in g["results"] if r["method"] == "fp32")
    for method, rs in _by_method([r for r in g["results"] if r["bits"]]).items():
        c, m = style(method)
        ax.plot([r["bits_per_element"] for r in rs], [r["analogy"] for r in rs], marker=m, color=c,
                ls="--" if rs[0]["family"] == "peer" else "-", ms=8, label=label(method),
                gid=f"ana-{method}")
    ax.axhline(fp32, color="k", ls=":", lw=1.2, label=f"fp32 ({fp32:.4f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([2, 3, 4, 6, 8])
    ax.set_xticklabels(["2", "3", "4", "6", "8"])
    ax.set_xlabel("stored bits per element")
    ax.set_ylabel("Google analogy accuracy (3CosAdd)")
    ax.set_title(f"GloVe 6B 50d: analogies over the top {g['analogy_vocab']:,} words "
                 f"({g['n_questions']:,} questions)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)


ML_METRICS = (("mf_rmse", "Δ RMSE, MF (lower is better)"),
              ("dlrm_auc", "Δ AUC, DLRM-style (higher is better)"),
              ("dlrm_logloss", "Δ log loss, DLRM-style (lower is better)"))


def draw_ml_deltas(ax: Axes, ml: Mapping[str, Any], key: str, bits: int, ylab: str,
                   show_xlabels: bool) -> None:
    """Bars: mean paired delta vs fp32 per method at one bit width; dots: each seed."""
    order = list(STYLE)
    rs = sorted((r for r in ml["results"].values() if r["bits"] == bits),
                key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    for k, r in enumerate(rs):
        c, m = style(r["method"])
        d = np.asarray(r["delta"][key], float)
        ax.bar(k, d.mean(), color=c, alpha=0.55, yerr=d.std() if len(d) > 1 else 0, capsize=3,
               gid=f"ml-{key}-{bits}-{r['method']}")
        ax.plot(np.full(len(d), k), d, m, color=c, ms=5, mec="k", mew=0.4, ls="none")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([r["method"] for r in rs] if show_xlabels else [], rotation=50, ha="right",
                       fontsize=8)
    ax.set_ylabel(ylab, fontsize=8.5)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3, axis="y")


def fig_downstream(results: Mapping[str, Any]) -> Figure:
    g = results.get("glove")
    ml = results.get("movielens")
    has_ml = bool(ml and "results" in ml)
    bit_list = sorted({r["bits"] for r in ml["results"].values()}) if has_ml else []
    fig = _figure(7 + 4.2 * max(len(bit_list), 1), 10)
    gs = fig.add_gridspec(3, 1 + max(len(bit_list), 1), width_ratios=[1.6] + [1] * max(len(bit_list), 1))
    if g:
        draw_analogy(fig.add_subplot(gs[:, 0]), g)
    if has_ml:
        for col, b in enumerate(bit_list, start=1):
            for row, (key, ylab) in enumerate(ML_METRICS):
                ax = fig.add_subplot(gs[row, col])
                draw_ml_deltas(ax, ml, key, b, ylab, row == len(ML_METRICS) - 1)
                if row == 0:
                    ax.set_title(f"MovieLens-100k, {b}-bit tables\n(bar: mean ± sd over "
                                 f"{len(ml['seeds'])} seeds; dots: each seed)", fontsize=10)
    else:
        ax = fig.add_subplot(gs[:, 1])
        ax.text(0.5, 0.5, "MovieLens not run\n" + str((ml or {}).get("skipped", "")), ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
    fig.suptitle("Downstream quality after post-training quantization of the embedding tables "
                 "(MovieLens: change against the same trained model in fp32)", fontsize=12)
    return fig


# --------------------------------------------------------------------------- budget

def fig_budget(results: Mapping[str, Any]) -> Figure:
    """Weighted error and downstream quality against bits per element: uniform methods
    (one precision for every row) against qe4.allocate (a rung per row under the budget).

    ``results`` is ``bench/results/bench_budget.json`` (``bench/bench_budget.py``).
    """
    pts = results["points"]
    fig = _figure(13, 9)
    axs = fig.subplots(2, 2)
    panels = (
        (axs[0, 0], "glove", "weighted_error", "GloVe: frequency-weighted error", True),
        (axs[0, 1], "glove", "analogy", "GloVe: analogy accuracy (30k words)", False),
        (axs[1, 0], "mf_rmse", "delta", "MovieLens MF: test RMSE - fp32 (mean of seeds)", False),
        (axs[1, 1], "dlrm_auc", "delta", "MovieLens DLRM: test AUC - fp32 (mean of seeds)", False),
    )
    for ax, data, key, title, log in panels:
        mine = [p for p in pts if p["data"] == data]
        kinds = sorted({p["kind"] for p in mine if p["kind"] != "fp32"}, key=lambda k: k != "allocate")
        for kind in kinds:
            rs = sorted((p for p in mine if p["kind"] == kind), key=lambda p: p["bpw"])
            ys = [float(np.mean(p[key])) for p in rs]
            c, m = {"allocate": ("#000000", "o"), "per-table": ("#555555", "s")}.get(kind) \
                or style(kind)
            ax.plot([p["bpw"] for p in rs], ys, marker=m, color=c, ms=7, gid=f"budget-{kind}",
                    lw=2.2 if kind == "allocate" else 1.2,
                    label={"allocate": "qe4.allocate (rung per row)",
                           "per-table": "qe4.allocate (rung per table)"}.get(kind)
                    or f"uniform {label(kind)}")
        ref = next((p for p in mine if p["kind"] == "fp32"), None)
        if ref is not None and key == "analogy":
            ax.axhline(ref[key], color="k", ls=":", lw=1.2)
            ax.text(ax.get_xlim()[1], ref[key], "fp32", ha="right", va="bottom", fontsize=8)
        if key == "delta":
            ax.axhline(0.0, color="k", ls=":", lw=1.0)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("stored bits per element (every byte: codes, scales, tier headers, row map)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Spending a byte budget where it matters (ladder {', '.join(results['ladder'])})",
                 fontsize=12)
    return fig


# --------------------------------------------------------------------------- frontier

#: The 16-level Lloyd-Max quantizer of N(0, 1): its mean squared error (Max 1960).
LLOYD_MAX_16 = 0.009501


def fig_frontier(results: Mapping[str, Any]) -> Figure:
    """Error against stored bits per element for every preset and the peers measured in
    the same run (``bench/results/bench_frontier.json``, written by
    ``bench/bench_frontier.py``), one panel per table.  N(0, 1) panels carry the Gaussian
    Shannon bound ``D(R) = 2**(-2R)`` and the 16-level Lloyd-Max value at 4 bits; llama.cpp's
    K/IQ formats, which no installable package quantizes, are hollow anchors with their
    published figures (labelled as such)."""
    panels = results["tables"]
    fig = _figure(6.5 * min(len(panels), 2), 5.2 * -(-len(panels) // 2))
    axs = np.atleast_1d(fig.subplots(-(-len(panels) // 2), min(len(panels), 2))).ravel()
    for ax, panel in zip(axs, panels):
        pts = panel["points"]
        kinds = {"qe4": ("#1f77b4", "o"), "peer": ("#d62728", "s"), "anchor": ("#7f7f7f", "D")}
        for kind, (c, m) in kinds.items():
            ps = [q for q in pts if q["kind"] == kind]
            if not ps:
                continue
            face = "none" if kind == "anchor" else c
            ax.scatter([q["bpw"] for q in ps], [q["error"] for q in ps], marker=m, s=40,
                       edgecolors=c, facecolors=face, label={"qe4": "qe4 presets", "peer":
                       "peers, measured here", "anchor": "llama.cpp's figures (issue 12)"}[kind],
                       gid=f"frontier-{kind}", zorder=3)
            for q in ps:
                ax.annotate(q["name"], (q["bpw"], q["error"]), fontsize=6.5, xytext=(3, 2),
                            textcoords="offset points", color=c)
        if panel.get("gaussian"):
            r = np.linspace(1.8, 9.2, 100)
            ax.plot(r, 2.0 ** (-2 * r), color="k", ls="--", lw=1, label="Shannon bound 2^(-2R)",
                    gid="frontier-shannon")
            ax.scatter([4.0], [LLOYD_MAX_16], marker="*", s=90, color="k", zorder=4,
                       label=f"16-level Lloyd-Max ({LLOYD_MAX_16})", gid="frontier-lloyd-max")
        ax.set_yscale("log")
        ax.set_xlabel("stored bits per element (every byte counted)")
        ax.set_ylabel("normalized error ||X - X_hat||^2 / ||X||^2")
        ax.set_title(panel["name"], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    for ax in axs[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("The quality-per-bit frontier: qe4's presets against peers, one run", fontsize=12)
    return fig


# --------------------------------------------------------------------------- driver

FIGURES = {
    "error_vs_range.png": fig_error_vs_range,
    "error_vs_range_2bit.png": fig_error_vs_range_2bit,
    "rate_distortion.png": fig_rate_distortion,
    "row_errors.png": fig_row_errors,
    "downstream.png": fig_downstream,
}


def plot_all(results: Mapping[str, Any], out_dir: StrPath = DEFAULT_OUT) -> list[str]:
    """Write every figure the cached ``results`` support; returns the paths written."""
    paths = []
    for name, fn in FIGURES.items():
        if "glove" not in results and name != "downstream.png":
            continue
        paths.append(_save(fn(results), os.path.join(out_dir, name)))
    return paths


def fig_table_row(table: ArrayLike, row: int, bits: int = 4, n_bins: int = 200,
                  ratio: float = 0.16) -> Figure:
    """Error over the clipping grid of one row of any table (the ``--table`` mode)."""
    from .evidence.ranges import row_surface
    surf = row_surface(np.asarray(table)[row], bits, n_bins=n_bins, ratio=ratio)
    fig = _figure(7.5, 6.5)
    draw_range_surface(fig.subplots(), surf, f"row {row}, {bits}-bit: normalized error over the trim grid")
    return fig


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``qe4 plot`` options to an argparse (sub)parser."""
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"cached results of `qe4 evidence` (default {DEFAULT_RESULTS})")
    parser.add_argument("--out", default=None,
                        help=f"output directory (default {DEFAULT_OUT}) or, with --table, a .png path")
    parser.add_argument("--table", default=None, help="a .npy table [n_rows, dim]: plot one row's grid")
    parser.add_argument("--row", type=int, default=0, help="row of --table (default 0)")
    parser.add_argument("--bits", type=int, default=4, choices=(2, 4, 8), help="bit width for --table")
    parser.add_argument("--n-bins", type=int, default=200, help="grid of --table (default 200)")
    parser.add_argument("--ratio", type=float, default=0.16, help="greedy ratio for --table")
    parser.add_argument("--no-rst", action="store_true", help="do not rewrite RESULTS.rst")
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``qe4 plot``; returns 0."""
    if args.table is not None:
        table = np.load(args.table, mmap_mode="r", allow_pickle=False)
        if table.ndim != 2:
            raise ValueError(f"--table must hold a 2-D array, got shape {table.shape}")
        if not -table.shape[0] <= args.row < table.shape[0]:
            raise IndexError(f"--row {args.row} is out of range for a table of {table.shape[0]} rows")
        out = args.out or f"error_vs_range_row{args.row}.png"
        if os.path.isdir(out):
            out = os.path.join(out, f"error_vs_range_row{args.row}.png")
        print(_save(fig_table_row(table, args.row, args.bits, args.n_bins, args.ratio), out))
        return 0
    if not os.path.exists(args.results):
        raise FileNotFoundError(f"--results {args.results!r} does not exist: run `qe4 evidence` first")
    with open(args.results, encoding="utf-8") as f:
        results = json.load(f)
    out_dir = args.out or DEFAULT_OUT
    paths = plot_all(results, out_dir)
    if not args.no_rst:
        from .evidence.report import write_rst
        paths.append(write_rst(results, os.path.join(out_dir, "RESULTS.rst"), out_dir))
    for p in paths:
        print(p, file=sys.stdout)
    return 0
