"""qe4.plots: every figure renders from a small cached-results fixture with the expected artists."""

import argparse
import json

import numpy as np
import pytest

import qe4
import qe4.datasets
from conftest import ROWWISE_METHODS
from qe4 import plots
from qe4.evidence import common as C
from qe4.evidence import glove, sizes

METHODS = list(ROWWISE_METHODS)
PNG = b"\x89PNG\r\n\x1a\n"


def _fake_movielens(methods, bits=(2, 4), seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    res = {}
    for m in methods:
        for b in bits:
            res[f"{m}@{b}"] = {"method": m, "bits": b, "family": "qe4", "bits_per_element": b + 0.5,
                               "delta": {k: rng.normal(0, 1e-3, len(seeds)).tolist()
                                         for k in ("mf_rmse", "dlrm_auc", "dlrm_logloss")}}
    return {"n_ratings": 100, "n_users": 10, "n_items": 20, "mean_rating": 3.5, "seeds": list(seeds),
            "fp32": [{"mf_rmse": 0.93, "dlrm_auc": 0.78, "dlrm_logloss": 0.56}] * len(seeds),
            "mf": {"dim": 64, "tables": ["user", "item"]},
            "dlrm": {"dim": 16, "tables": ["user", "item"]}, "results": res}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Cached results in the evidence format from 120 bundled GloVe rows (reference engine)."""
    table, words = qe4.datasets.load_glove_top20k()
    methods = METHODS + [m for m in qe4.methods() if m == "kmeans"]
    g = glove.run(C.Engine("reference"), table=table[:120], words=words[:120], bits=(2, 4),
                  quiet=True, curve_rows=40, methods=methods)
    res = {"meta": {"engine": "reference", "methods": {m: [2, 4] for m in methods}},
           "sizes": sizes.size_table(), "glove": g, "movielens": _fake_movielens(METHODS)}
    path = tmp_path_factory.mktemp("cache") / "evidence.json"
    path.write_text(json.dumps(res))
    return json.loads(path.read_text()), path


def _gids(fig):
    out = set()
    for ax in fig.axes:
        for a in ax.get_children():
            if a.get_gid():
                out.add(a.get_gid())
    return out


def test_error_vs_range_has_path_and_every_marker(results):
    fig = plots.fig_error_vs_range(results[0])
    ax = fig.axes[0]
    gids = {a.get_gid() for a in ax.get_lines()}
    assert {"greedy-path", "mark-minmax", "mark-greedy", "mark-exhaustive", "mark-aciq-laplace",
            "mark-aciq-gauss"} <= gids
    path = next(a for a in ax.get_lines() if a.get_gid() == "greedy-path")
    surf = results[0]["glove"]["figures"]["rows"]["heavy"]["surface"]["4"]
    assert np.array_equal(np.column_stack(path.get_data()), np.array(surf["path"], float))
    assert ax.get_xlabel().startswith("i = bins trimmed") and ax.get_title()
    assert len(ax.images) == 1                      # the heat map
    assert {"curve-0", "curve-1"} <= _gids(fig)     # 1-D error vs clipping ratio curves


def test_rate_distortion_has_every_method_and_baselines(results):
    fig = plots.fig_rate_distortion(results[0])
    gids = _gids(fig)
    assert {f"rd-{m}" for m in results[0]["glove"]["figures"]["rows"]["heavy"]["levels"]["4"]} <= gids
    assert {f"rd-{m}" for m in METHODS} | {"rd-fp16", "rd-fp32"} <= gids
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "bits per element" in ax.get_xlabel()
    assert ax.get_legend() is not None


def test_row_error_cdf_and_thresholds(results):
    fig = plots.fig_row_errors(results[0])
    gids = _gids(fig)
    assert {f"cdf-{m}" for m in METHODS} <= gids
    assert {f"thr-{m}" for m in METHODS} <= gids
    cdf = next(a for a in fig.axes[0].get_lines() if a.get_gid() == "cdf-greedy")
    q = np.array(next(r for r in results[0]["glove"]["results"]
                      if r["method"] == "greedy" and r["bits"] == 4)["row_error_quantiles"])
    assert np.array_equal(cdf.get_xdata(), np.maximum(q, 1e-12))
    assert cdf.get_ydata()[0] == 0.0 and cdf.get_ydata()[-1] == 1.0


def test_downstream_has_analogy_lines_and_movielens_bars(results):
    fig = plots.fig_downstream(results[0])
    gids = set()
    for ax in fig.axes:
        gids |= {a.get_gid() for a in ax.get_lines()} | {p.get_gid() for p in ax.patches}
    if results[0]["glove"]["n_questions"]:      # gensim's analogy file installed
        assert {f"ana-{m}" for m in METHODS} <= gids
    else:                                        # the panel says why it is empty
        assert "no analogy questions" in fig.axes[0].texts[0].get_text()
    assert {f"ml-{k}-{b}-{m}" for k in ("mf_rmse", "dlrm_auc", "dlrm_logloss")
            for b in (2, 4) for m in METHODS} <= gids
    assert len(fig.axes) == 1 + 3 * 2


def test_downstream_without_movielens(results):
    res = dict(results[0], movielens={"skipped": "no torch"})
    fig = plots.fig_downstream(res)
    assert any("no torch" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_plot_cli_regenerates_every_figure(results, tmp_path):
    parser = plots.configure_parser(argparse.ArgumentParser())
    out = tmp_path / "figs"
    assert plots.run(parser.parse_args(["--results", str(results[1]), "--out", str(out)])) == 0
    for name in plots.FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) < 300_000
    rst = (out / "RESULTS.rst").read_text()
    assert "13.89%" in rst and f".. figure:: {out}/rate_distortion.png" in rst
    try:
        import docutils.core
        from docutils.writers import null
    except ImportError:
        return
    docutils.core.publish_string(rst, writer=null.Writer(),
                                 settings_overrides={"report_level": 2, "halt_level": 2})


def test_plot_cli_table_row(tmp_path):
    x = np.random.default_rng(1).standard_t(3, size=(5, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    parser = plots.configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--table", str(tmp_path / "t.npy"), "--row", "2", "--out", str(tmp_path)])
    assert plots.run(args) == 0
    assert (tmp_path / "error_vs_range_row2.png").read_bytes()[:8] == PNG
    with pytest.raises(IndexError, match="--row 9"):
        plots.run(parser.parse_args(["--table", str(tmp_path / "t.npy"), "--row", "9"]))
    np.save(tmp_path / "v.npy", x[0])
    with pytest.raises(ValueError, match="2-D"):
        plots.run(parser.parse_args(["--table", str(tmp_path / "v.npy")]))


def test_plot_cli_missing_results(tmp_path):
    parser = plots.configure_parser(argparse.ArgumentParser())
    with pytest.raises(FileNotFoundError, match="qe4 evidence"):
        plots.run(parser.parse_args(["--results", str(tmp_path / "none.json")]))


def test_unknown_method_gets_a_style():
    c, m = plots.style("some-new-method")
    assert plots.style("some-new-method") == (c, m) and (c, m) not in [plots.STYLE["greedy"]]
