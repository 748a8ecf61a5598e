"""The qe4 command line (qe4.cli), run in-process through main(argv) plus one real subprocess."""

import os
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import qe4
from qe4 import cli
from qe4 import io as qio
from qe4 import stream

try:
    stream.get_engine("fast")
    HAVE_FAST = True
except ImportError:
    HAVE_FAST = False


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help():
    exe = os.path.join(sysconfig.get_path("scripts"), "qe4")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "qe4.cli"]
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for name in ("quantize", "info", "demo", "plot", "evidence"):
        assert name in r.stdout


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "quantize" in out
    code, out, _ = run(capsys, "quantize", "--help")
    assert code == 0 and "--max-memory" in out and "--engine" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"qe4 {qe4.__version__}"


@pytest.fixture
def npy(tmp_path):
    x = np.random.default_rng(3).standard_normal((500, 24)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return x, tmp_path / "x.npy"


def test_quantize_then_info(capsys, tmp_path, npy):
    x, src = npy
    dst = tmp_path / "x.qe4"
    code, out, err = run(capsys, "quantize", str(src), str(dst), "--engine", "reference",
                         "--max-memory", "64K")
    assert code == 0, err
    t = qio.load(dst)
    assert t == qe4.quantize(x, 4, "greedy")
    want_error = qe4.table_error(x, t)
    m = re.search(r"normalized error\s+(\S+)", out)
    assert float(m.group(1)) == pytest.approx(want_error, rel=1e-3)
    assert "500 x 24 float32" in out and "16 bytes/row" in out
    assert re.search(r"compression\s+\d+\.\d+x", out) and "rows/s" in out
    assert re.search(r"\d+ chunk\(s\)", out)

    code, out, err = run(capsys, "info", str(dst))
    assert code == 0, err
    assert re.search(r"shape\s+500 x 24", out)
    assert re.search(r"bits\s+4\n", out) and re.search(r"method\s+greedy", out)
    assert re.search(r"bytes/row\s+16 packed", out)
    assert "6.00x vs float32" in out           # 96 bytes of float32 per row / 16
    assert f"{os.path.getsize(dst):,} bytes" in out


def test_quantize_options(capsys, tmp_path, npy):
    x, src = npy
    dst = tmp_path / "y.qe4"
    code, _, err = run(capsys, "quantize", str(src), str(dst), "--engine", "reference", "--bits", "2",
                       "--method", "exhaustive", "--n-bins", "50", "--ratio", "0.3",
                       "--scale-dtype", "float32", "--no-progress")
    assert code == 0, err
    assert qio.load(dst) == qe4.quantize(x, 2, "exhaustive", n_bins=50, ratio=0.3, scale_dtype="float32")
    assert qio.read_metadata(dst)["params"] == {"n_bins": 50, "ratio": 0.3}


def test_quantize_safetensors_tensor(capsys, tmp_path):
    from safetensors.numpy import save_file
    a = np.random.default_rng(4).standard_normal((40, 8)).astype(np.float16)
    save_file({"a": a, "b": a[:3]}, str(tmp_path / "m.safetensors"))
    code, _, err = run(capsys, "quantize", str(tmp_path / "m.safetensors"), str(tmp_path / "a.qe4"),
                       "--engine", "reference", "--tensor", "a", "--method", "minmax")
    assert code == 0, err
    assert qio.load(tmp_path / "a.qe4") == qe4.quantize(a, 4, "minmax")


def test_quantize_codebook_method_in_memory(capsys, tmp_path, npy):
    if "kmeans" not in qe4.methods():
        pytest.skip("qe4.codebook is not available")
    x, src = npy
    code, out, err = run(capsys, "quantize", str(src), str(tmp_path / "k.qe4"), "--engine", "reference",
                         "--method", "two-tier", "--bits", "2")
    assert code == 0, err
    assert "whole table in memory" in err
    assert qio.load(tmp_path / "k.qe4") == qe4.quantize(x, 2, "two-tier")
    code, out, _ = run(capsys, "info", str(tmp_path / "k.qe4"))
    assert code == 0 and "two-tier" in out
    # the per-row codebooks stream, chunk by chunk, to the same bytes
    code, out, err = run(capsys, "quantize", str(src), str(tmp_path / "m.qe4"), "--engine", "reference",
                         "--method", "kmeans-optimal", "--bits", "4", "--max-memory", "20K")
    assert code == 0 and "whole table" not in err, err
    assert qio.load(tmp_path / "m.qe4") == qe4.quantize(x, 4, "kmeans-optimal")


@pytest.mark.parametrize("argv,message", [
    (["quantize", "{src}", "{dst}", "--bits", "7"], "argument --bits: invalid choice: 7"),
    (["quantize", "{src}", "{dst}", "--method", "best"], "argument --method: invalid choice: 'best'"),
    (["quantize", "{src}", "{dst}", "--max-memory", "lots"], "cannot read a size from 'lots'"),
    (["quantize", "{src}", "{dst}", "--engine", "gpu"], "invalid choice: 'gpu'"),
    (["quantize", "{src}", "{dst}", "--engine", "reference", "--threads", "2"],
     "n_threads=2 applies to engine='fast' only"),
    (["quantize", "{src}", "{dst}", "--engine", "reference", "--ratio", "1.5"], "ratio must be in"),
    (["quantize", "{src}"], "the following arguments are required: OUT"),
    (["quantize", "{tmp}/missing.npy", "{dst}", "--engine", "reference"], "No such file"),
    (["quantize", "{src}", "{tmp}/no/such/dir/x.qe4", "--engine", "reference"], "does not exist"),
    (["info", "{src}"], "not a valid safetensors file"),
    (["info", "{tmp}/missing.qe4"], "No such file"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
    (["demo", "--methods", "best"], "argument --methods: invalid choice: 'best'"),
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, npy, argv, message):
    _, src = npy
    argv = [a.format(src=src, dst=tmp_path / "o.qe4", tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.qe4").exists()


def test_bad_input_names_global_row(capsys, tmp_path, npy):
    x, src = npy
    x[321, 4] = np.inf
    np.save(src, x)
    code, _, err = run(capsys, "quantize", str(src), str(tmp_path / "o.qe4"), "--engine", "reference",
                       "--max-memory", "32K")
    assert code == 2 and "row 321, column 4 is inf" in err


def test_info_on_plain_safetensors(capsys, tmp_path):
    from safetensors.numpy import save_file
    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "w.safetensors"))
    code, _, err = run(capsys, "info", str(tmp_path / "w.safetensors"))
    assert code == 2 and "not a qe4 file" in err


def test_missing_fast_engine(capsys, monkeypatch, npy, tmp_path):
    monkeypatch.setitem(sys.modules, "qe4_fast", None)
    _, src = npy
    code, _, err = run(capsys, "quantize", str(src), str(tmp_path / "o.qe4"))
    assert code == 2 and "build_ext --inplace" in err and "engine='reference'" in err
    code, _, err = run(capsys, "demo")
    assert code == 2 and "build_ext --inplace" in err


def test_demo_subset_reference(capsys):
    code, out, err = run(capsys, "demo", "--engine", "reference", "--methods", "minmax", "aciq-gauss",
                         "--bits", "4")
    assert code == 0, err
    # 29 bytes per row of 50 values: 29 * 8 / 50 = 4.640 bits per element
    assert re.search(r"^minmax\s+4\s+29\.00\s+4\.640\s+6\.90x\s+8\.701e-03\s+1\.703e-02\s", out, re.M)
    assert re.search(r"^aciq-gauss\s+4\s+29\.00\s+4\.640\s+6\.90x", out, re.M)
    assert "GloVe" in out and "Pennington" in out


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FAST, reason="qe4_fast is not built")
def test_demo_all_methods_fast(capsys):
    code, out, err = run(capsys, "demo")
    assert code == 0, err
    for method in qe4.methods():
        for bits in (2, 4):
            assert re.search(rf"^{re.escape(method)}\s+{bits}\s", out, re.M), (method, bits)
    # the greedy search beats min/max at 4 bits on this table, and exhaustive beats greedy
    err4 = {m: float(re.search(rf"^{m}\s+4\s+\S+\s+\S+\s+\S+\s+(\S+)", out, re.M).group(1))
            for m in ("minmax", "greedy", "exhaustive")}
    assert err4["exhaustive"] <= err4["greedy"] < err4["minmax"]
    assert "Pennington" in out


def test_plot_and_evidence_are_wired(capsys, monkeypatch):
    calls = []

    class Fake:
        @staticmethod
        def configure_parser(p):
            p.add_argument("--flag", action="store_true")

        @staticmethod
        def run(args):
            calls.append((args.command, args.flag))

    monkeypatch.setitem(sys.modules, "qe4.plots", Fake)
    monkeypatch.setitem(sys.modules, "qe4.evidence", Fake)
    assert cli.main(["plot", "--flag"]) == 0
    assert cli.main(["evidence"]) == 0
    assert calls == [("plot", True), ("evidence", False)]
    monkeypatch.setitem(sys.modules, "qe4.plots", None)
    code, _, err = run(capsys, "plot")
    assert code == 2 and "qe4 plot is not available" in err


# --------------------------------------------------------------------------- --budget

@pytest.fixture
def counts(tmp_path, npy):
    x, _ = npy
    w = qe4.zipf_weights(len(x))
    np.save(tmp_path / "w.npy", w)
    return w, tmp_path / "w.npy"


def _summary(out):
    m = re.search(r"^summary\s+([\d,]+) bytes stored, (\S+) bits/element, weighted error (\S+), "
                  r"mix (.*)$", out, re.M)
    assert m, out
    return int(m.group(1).replace(",", "")), m.group(2), float(m.group(3)), m.group(4)


@pytest.mark.parametrize("budget", ["3.0bpw", "5K", "4000"])
def test_quantize_budget_then_info(capsys, tmp_path, npy, counts, budget):
    from qe4 import allocate as A
    x, src = npy
    w, wpath = counts
    dst = tmp_path / "m.qe4"
    code, out, err = run(capsys, "quantize", str(src), str(dst), "--budget", budget, "--weights",
                         str(wpath), "--engine", "reference", "--max-memory", "400K", "--no-progress")
    assert code == 0, err
    alloc = A.allocate(x, budget, weights=w, engine="reference")
    t = qio.load(dst)
    assert t == alloc.quantize(x, engine="reference")
    nbytes, bpw, error, mix = _summary(out)
    assert nbytes == t.nbytes == alloc.nbytes <= alloc.budget
    assert bpw == f"{8 * t.nbytes / x.size:.3f}"
    assert f"{error:.4e}" == f"{alloc.error:.4e}"
    assert error == pytest.approx(qe4.table_error(x, qe4.dequantize(t), w), rel=1e-3)
    used = [(name, rows) for name, (rows, _) in alloc.mix().items() if rows]
    assert mix == ", ".join(f"{name} {100 * rows / len(x):.2f}%" for name, rows in used)
    assert f"= {alloc.budget:,} bytes" in out and re.search(r"\d+ chunk\(s\)", out)

    code, out, err = run(capsys, "info", str(dst))
    assert code == 0, err
    assert re.search(rf"bits/element\s+{8 * t.nbytes / x.size:.3f} ", out)
    rows_bytes = 0
    for t_, (name, rows) in enumerate(used):
        nb = t.extras[f"tier{t_}"].nbytes if name != "pruned" else 0
        rows_bytes += nb
        assert re.search(rf"^{t_}\s+{re.escape(name)}\s+\S+\s+\d+\s+\S+\s+{rows:,}\s+"
                         rf"{100 * rows / len(x):.2f}%\s+{nb:,}\s", out, re.M), (name, out)
    assert f"tiers, {t.nbytes - rows_bytes:,} bytes with the tier table" in out


def test_quantize_budget_renumbered_rows(capsys, tmp_path, npy, counts):
    from qe4 import allocate as A
    x, src = npy
    w, wpath = counts
    code, out, err = run(capsys, "quantize", str(src), str(tmp_path / "m.qe4"), "--budget", "3bpw",
                         "--weights", str(wpath), "--row-map", "renumber", "--order",
                         str(tmp_path / "order.npy"), "--ladder", "pruned, minmax/2,greedy/4",
                         "--engine", "reference", "--no-progress")
    assert code == 0, err
    alloc = A.allocate(x, "3bpw", weights=w, ladder=["pruned", "minmax/2", "greedy/4"],
                       row_map="renumber", engine="reference")
    t = qio.load(tmp_path / "m.qe4")
    assert t == alloc.quantize(x, engine="reference")
    order = np.load(tmp_path / "order.npy")
    assert order.dtype == np.int64
    assert order.view(np.uint8).tobytes() == alloc.renumbering().view(np.uint8).tobytes()
    assert "renumbered rows" in out and "order[new_row] = original row" in out
    code, out, _ = run(capsys, "info", str(tmp_path / "m.qe4"))
    assert code == 0 and re.search(r"row map\s+renumber, ", out)


def test_quantize_budget_interrupted_leaves_nothing(capsys, tmp_path, npy, monkeypatch):
    from qe4 import mixed
    _, src = npy
    real = mixed.build_mixed

    def interrupted(chunks, *args, **kwargs):
        def some():
            for k, c in enumerate(chunks):
                if k == 1:
                    raise KeyboardInterrupt
                yield c
        return real(some(), *args, **kwargs)

    monkeypatch.setattr(mixed, "build_mixed", interrupted)
    code, _, err = run(capsys, "quantize", str(src), str(tmp_path / "m.qe4"), "--budget", "3bpw",
                       "--engine", "reference", "--max-memory", "400K", "--row-map", "renumber",
                       "--order", str(tmp_path / "o.npy"))
    assert code == 130 and "no output file was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]    # no table, order or temps


@pytest.mark.parametrize("argv,message", [
    (["--budget", "lots"], "argument --budget: cannot read a budget from 'lots'"),
    (["--budget=-3bpw"], "cannot read a budget from '-3bpw'"),
    (["--budget", "0.5bpw", "--ladder", "greedy/2,greedy/4"],
     "budget of 750 bytes is below the 5,016 bytes of the cheapest rung (greedy/2)"),
    (["--budget", "15"], "budget of 15 bytes is below the 16 bytes of the cheapest rung (pruned)"),
    (["--budget", "3bpw", "--ladder", "greedy/4"], "budget of 4,500 bytes is below the 8,016 bytes "
     "of the cheapest rung (greedy/4)"),
    (["--budget", "3bpw", "--weights", "{tmp}/short.npy"],
     "--weights {tmp}/short.npy: weights must have shape (500,), got (499,)"),
    (["--budget", "3bpw", "--weights", "{tmp}/negative.npy"], "weights[7] = -1.0"),
    (["--budget", "3bpw", "--weights", "{tmp}/nan.npy"], "weights[3] = nan"),
    (["--budget", "3bpw", "--weights", "{tmp}/bool.npy"], "must be a numeric array, got dtype bool"),
    (["--budget", "3bpw", "--weights", "{tmp}/words.npy"], "must be a numeric array, got dtype <U"),
    (["--budget", "3bpw", "--weights", "{tmp}/text.txt"], "--weights {tmp}/text.txt: not a readable "
     ".npy file"),
    (["--budget", "3bpw", "--weights", "{tmp}/none.npy"], "No such file"),
    (["--budget", "3bpw", "--bits", "2"], "--bits cannot be combined with --budget"),
    (["--budget", "3bpw", "--preset", qe4.preset_registry.names()[0]],
     "--preset cannot be combined with --budget"),
    (["--budget", "3bpw", "--method", "minmax", "--ratio", "0.2"],
     "--method, --ratio cannot be combined with --budget"),
    (["--budget", "3bpw", "--scale-dtype", "float32"], "--scale-dtype cannot be combined"),
    (["--budget", "3bpw", "--max-trim", "0.5"], "--max-trim cannot be combined with --budget"),
    (["--weights", "{tmp}/w.npy"], "--weights only apply with --budget"),
    (["--ladder", "greedy/4", "--row-map", "renumber"], "--ladder, --row-map only apply with --budget"),
    (["--budget", "3bpw", "--row-map", "renumber"], "--row-map renumber needs --order"),
    (["--budget", "3bpw", "--order", "{tmp}/o.npy"], "--order needs --row-map renumber"),
    (["--budget", "3bpw", "--row-map", "renumber", "--order", "{dst}"], "must differ from IN and OUT"),
    (["--budget", "3bpw", "--ladder", "greedy/4,fp8"], "--ladder 'greedy/4,fp8': unknown ladder rung"),
    (["--budget", "3bpw", "--ladder", "greedy/4,greedy/4"], "ladder repeats a rung"),
    (["--budget", "3bpw", "--ladder", "two-tier/4"], "method must be one of"),
    (["--budget", "3bpw", "--ladder", ","], "ladder must hold at least one rung"),
    (["--budget", "3bpw", "--threads", "2"], "n_threads=2 applies to engine='fast' only"),
])
def test_budget_errors_exit_2_with_one_line(capsys, tmp_path, npy, argv, message):
    _, src = npy
    np.save(tmp_path / "w.npy", np.ones(500))
    np.save(tmp_path / "short.npy", np.ones(499))
    np.save(tmp_path / "negative.npy", np.where(np.arange(500) == 7, -1.0, 1.0))
    np.save(tmp_path / "nan.npy", np.where(np.arange(500) == 3, np.nan, 1.0))
    np.save(tmp_path / "bool.npy", np.ones(500, bool))
    np.save(tmp_path / "words.npy", np.array(["a"] * 500))
    (tmp_path / "text.txt").write_text("1\n" * 500)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(tmp=tmp_path, dst=tmp_path / "o.qe4") for a in argv]
    code, out, err = run(capsys, "quantize", str(src), str(tmp_path / "o.qe4"), "--engine",
                         "reference", *argv)
    assert code == 2, (out, err)
    assert message.format(tmp=tmp_path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before        # nothing written
