"""Out-of-core quantization (qe4.stream): byte-identical to in-memory, errors, interruptions."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import qe4
from qe4 import frontend
from qe4 import io as qio
from qe4 import stream

RNG = np.random.default_rng(6)

try:
    stream.get_engine("fast")
    ENGINES = ["reference", "fast"]
except ImportError:
    ENGINES = ["reference"]


def table(n_rows=300, n_cols=13, dtype=np.float32):
    x = RNG.standard_normal((n_rows, n_cols)) * RNG.uniform(0.1, 3, (n_rows, 1))
    x[::17] *= 40          # heavy rows so the clipping search moves
    return x.astype(dtype)


def small_budget(n_cols, dtype, bits, engine, rows=23, scale_dtype=None):
    """A max_memory that yields chunks of ``rows`` rows."""
    row_bytes = -(-n_cols * bits // 8) + (8 if bits == 8 or scale_dtype == "float32" else 4)
    return rows * stream.bytes_per_row(n_cols, np.dtype(dtype).itemsize, row_bytes, engine)


def in_memory_file(x, path, bits, method, scale_dtype=None):
    qio.save(qe4.quantize(x, bits, method, scale_dtype=scale_dtype), path)
    return path.read_bytes()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bits,method,scale_dtype", [
    (4, "greedy", None), (2, "greedy", None), (8, "greedy", None), (4, "minmax", None),
    (4, "aciq-laplace", None), (2, "exhaustive", None), (4, "greedy", "float32")])
def test_npy_byte_identical_to_in_memory(tmp_path, engine, bits, method, scale_dtype):
    x = table()
    np.save(tmp_path / "x.npy", x)
    info = stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", bits, method,
                                scale_dtype=scale_dtype, engine=engine,
                                max_memory=small_budget(13, np.float32, bits, engine,
                                                                        scale_dtype=scale_dtype))
    assert info["chunk_rows"] == 23 and info["n_chunks"] == 14 and info["n_rows"] == 300
    assert (tmp_path / "s.qe4").read_bytes() == in_memory_file(x, tmp_path / "m.qe4", bits, method,
                                                               scale_dtype)
    assert info["out_bytes"] == os.path.getsize(tmp_path / "s.qe4")


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ">f4"])
def test_npy_dtypes_and_fortran_order(tmp_path, dtype):
    x = table(n_rows=101, n_cols=7, dtype=dtype)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    want = in_memory_file(x, tmp_path / "m.qe4", 4, "greedy")
    for name in ("c", "f"):
        stream.quantize_file(tmp_path / f"{name}.npy", tmp_path / f"{name}.qe4", engine="reference",
                             max_memory=small_budget(7, dtype, 4, "reference", rows=10))
        assert (tmp_path / f"{name}.qe4").read_bytes() == want


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_safetensors_byte_identical(tmp_path, dtype):
    from safetensors.numpy import save_file
    x = table(n_rows=150, n_cols=10, dtype=dtype)
    save_file({"emb": x, "bias": np.ones(3, np.float32)}, str(tmp_path / "x.safetensors"))
    info = stream.quantize_file(tmp_path / "x.safetensors", tmp_path / "s.qe4", engine="reference",
                                max_memory=small_budget(10, dtype, 4, "reference", rows=16))
    assert info["n_chunks"] == 10
    assert (tmp_path / "s.qe4").read_bytes() == in_memory_file(x, tmp_path / "m.qe4", 4, "greedy")


def test_safetensors_tensor_choice(tmp_path):
    from safetensors.numpy import save_file
    a, b = table(n_rows=20, n_cols=4), table(n_rows=30, n_cols=6)
    save_file({"a": a, "b": b}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match=r"holds 2 2-D float tensors \(a, b\); name the one"):
        stream.quantize_file(tmp_path / "two.safetensors", tmp_path / "o.qe4", engine="reference")
    with pytest.raises(ValueError, match="no tensor named 'c'"):
        stream.quantize_file(tmp_path / "two.safetensors", tmp_path / "o.qe4", engine="reference",
                             tensor="c")
    stream.quantize_file(tmp_path / "two.safetensors", tmp_path / "o.qe4", 2, "minmax",
                         engine="reference", tensor="b")
    assert qio.load(tmp_path / "o.qe4") == qe4.quantize(b, 2, "minmax")
    save_file({"i": np.ones((3, 3), np.int32)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(TypeError, match="tensor 'i' has dtype I32"):
        stream.quantize_file(tmp_path / "int.safetensors", tmp_path / "o2.qe4", engine="reference",
                             tensor="i")
    assert not (tmp_path / "o2.qe4").exists()


def test_measured_error_matches_table_error(tmp_path):
    x = table()
    np.save(tmp_path / "x.npy", x)
    info = stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                                measure_error=True, max_memory=small_budget(13, np.float32, 4,
                                                                             "reference", rows=40))
    assert info["error"] == pytest.approx(qe4.table_error(x, qe4.quantize(x)), rel=1e-12)


# --------------------------------------------------------------------------- bad input

def test_nan_error_names_global_row(tmp_path):
    x = table()
    x[7 * 23 + 3, 5] = np.nan            # chunk 7 of 23-row chunks
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=rf"x\.npy must be finite: row {7 * 23 + 3}, column 5 is "):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                             max_memory=small_budget(13, np.float32, 4, "reference"))
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_float64_overflow_and_fp16_range_name_global_row(tmp_path):
    x = table(dtype=np.float64)
    x[250, 2] = 1e300
    np.save(tmp_path / "x.npy", x)
    budget = small_budget(13, np.float64, 4, "reference")
    with pytest.raises(ValueError, match=r"row 250, column 2 is .*overflows float32"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                             max_memory=budget)
    x[250, 2] = 1e6                       # finite, but beyond the float16 bias
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"x\.npy: row 250 has range .*overflows the float16"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                             max_memory=budget)
    stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                         scale_dtype="float32", max_memory=budget)
    assert sorted(os.listdir(tmp_path)) == ["s.qe4", "x.npy"]


@pytest.mark.parametrize("arr,exc,message", [
    (np.ones((3, 4), np.int32), TypeError, "dtype float16, float32 or float64, got int32"),
    (np.ones(4, np.float32), ValueError, r"must be 2-D \[n_rows, n_cols\], got shape \(4,\)"),
    (np.ones((0, 4), np.float32), ValueError, "at least one row"),
    (np.array([[1, None]], dtype=object), ValueError, "not a readable .npy file"),
    (np.ones((2, 2), np.complex64), TypeError, "got complex64"),
])
def test_bad_inputs(tmp_path, arr, exc, message):
    np.save(tmp_path / "x.npy", arr, allow_pickle=True)
    with pytest.raises(exc, match=message):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference")
    assert not (tmp_path / "s.qe4").exists()


def test_bad_files_and_parameters(tmp_path):
    np.save(tmp_path / "x.npy", table(n_rows=5))
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a table")
    ok = dict(engine="reference")
    with pytest.raises(ValueError, match="not a valid safetensors file.*must be .npy or .safetensors"):
        stream.quantize_file(tmp_path / "junk.bin", tmp_path / "s.qe4", **ok)
    with pytest.raises(FileNotFoundError):
        stream.quantize_file(tmp_path / "none.npy", tmp_path / "s.qe4", **ok)
    with pytest.raises(ValueError, match="bits must be one of"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", bits=7, **ok)
    with pytest.raises(ValueError, match="method must be one of"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", method="best", **ok)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", n_iter=3, **ok)
    with pytest.raises(ValueError, match="engine must be 'fast' or 'reference'"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="gpu")
    with pytest.raises(ValueError, match="n_threads=2 applies to engine='fast' only"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", n_threads=2, **ok)
    with pytest.raises(ValueError, match="max_memory=100 bytes is less than one row"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", max_memory=100, **ok)
    with pytest.raises(ValueError, match="max_memory must be a positive"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", max_memory=-5, **ok)
    with pytest.raises(ValueError, match="cannot read a size from '2X'"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", max_memory="2X", **ok)
    with pytest.raises(ValueError, match="npy.* applies to .safetensors inputs only"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", tensor="emb", **ok)
    with pytest.raises(ValueError, match="is the input file"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "x.npy", **ok)
    assert sorted(os.listdir(tmp_path)) == ["junk.bin", "x.npy"]


def test_parse_size():
    assert stream.parse_size("2G") == 2 << 30
    assert stream.parse_size("512m") == 512 << 20
    assert stream.parse_size("1.5GiB") == 3 << 29
    assert stream.parse_size("1000") == 1000
    assert stream.parse_size("64KB") == 64 << 10


def test_default_max_memory_is_bounded():
    assert 64 << 20 <= stream.default_max_memory() <= 1 << 30


def test_missing_fast_engine_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "qe4_fast", None)
    np.save(tmp_path / "x.npy", table(n_rows=5))
    with pytest.raises(ImportError, match=r"build_ext --inplace.*engine='reference'"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4")
    assert not (tmp_path / "s.qe4").exists()


def test_progress_bar(tmp_path, capsys):
    np.save(tmp_path / "x.npy", table(n_rows=50))
    stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", 4, "minmax", engine="reference",
                         progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and "row/s" in err
    stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", 4, "minmax", engine="reference")
    assert capsys.readouterr().err == ""     # stderr is not a terminal under pytest


# --------------------------------------------------------------------------- interruptions

def no_complete_output(directory, dst_name="s.qe4"):
    """Nothing at dst; any leftover temp file (from kill -9) is rejected by qe4.io.load."""
    assert not os.path.exists(os.path.join(directory, dst_name))
    for f in os.listdir(directory):
        if f.endswith(".qe4tmp"):
            assert f.startswith("." + dst_name + ".")
            with pytest.raises(ValueError):
                qio.load(os.path.join(directory, f))


def test_keyboard_interrupt_mid_run(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", table())
    real, calls = frontend.encode, [0]

    def interrupted(*a, **k):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(frontend, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                             max_memory=small_budget(13, np.float32, 4, "reference"))
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.parametrize("after", [1, 2, 6])
def test_disk_full_mid_run(tmp_path, monkeypatch, after):
    np.save(tmp_path / "x.npy", table())
    (tmp_path / "s.qe4").write_bytes(b"previous")
    real, calls = qio.TableWriter._write, [0]

    def full(self, buf):
        calls[0] += 1
        if calls[0] >= after:
            real(self, bytes(buf)[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, buf)
    monkeypatch.setattr(qio.TableWriter, "_write", full)
    with pytest.raises(OSError, match="No space left on device"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="reference",
                             max_memory=small_budget(13, np.float32, 4, "reference"))
    assert sorted(os.listdir(tmp_path)) == ["s.qe4", "x.npy"]
    assert (tmp_path / "s.qe4").read_bytes() == b"previous"


RUNNER = textwrap.dedent("""
    import sys
    from qe4 import stream
    stream.quantize_file(sys.argv[1], sys.argv[2], 4, "greedy", engine="reference",
                         max_memory=int(sys.argv[3]), progress=False)
""")


def start_and_wait_mid_write(tmp_path):
    x = table(n_rows=40_000, n_cols=16)
    np.save(tmp_path / "x.npy", x)
    budget = small_budget(16, np.float32, 4, "reference", rows=200)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "x.npy"),
                             str(tmp_path / "s.qe4"), str(budget)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tmps = [f for f in os.listdir(tmp_path) if f.endswith(".qe4tmp")]
        if tmps and os.path.getsize(tmp_path / tmps[0]) > 5 * 200 * 12:
            return proc
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    raise AssertionError("the run never got mid-write")


@pytest.mark.slow
def test_kill_9_mid_write_leaves_nothing_complete(tmp_path):
    proc = start_and_wait_mid_write(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    no_complete_output(tmp_path)
    assert any(f.endswith(".qe4tmp") for f in os.listdir(tmp_path))   # really was mid-write


@pytest.mark.slow
def test_sigint_mid_write_removes_temp_file(tmp_path):
    proc = start_and_wait_mid_write(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.skipif("fast" not in ENGINES, reason="qe4_fast is not built")
@pytest.mark.parametrize("n_threads", [1, 2, 7])
def test_fast_engine_threads_byte_identical(tmp_path, n_threads):
    x = table(n_rows=500, n_cols=33)
    np.save(tmp_path / "x.npy", x)
    stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", engine="fast", n_threads=n_threads,
                         max_memory=small_budget(33, np.float32, 4, "fast", rows=64))
    assert (tmp_path / "s.qe4").read_bytes() == in_memory_file(x, tmp_path / "m.qe4", 4, "greedy")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bits,method,kwargs", [
    (4, "kmeans-optimal", {}), (2, "kmeans", {"max_iter": 7}), (4, "kmeans", {})])
def test_per_row_codebooks_stream_byte_identical(tmp_path, engine, bits, method, kwargs):
    x = table()
    np.save(tmp_path / "x.npy", x)
    info = stream.quantize_file(tmp_path / "x.npy", tmp_path / "s.qe4", bits, method, engine=engine,
                                max_memory=40 * stream.bytes_per_row(13, 4, 64, engine), **kwargs)
    assert info["n_chunks"] > 1
    whole = qe4.quantize(x, bits, method, **kwargs)
    assert qio.load(tmp_path / "s.qe4") == whole and whole.layout == "codebook"


def test_codebook_stream_rejects_before_writing(tmp_path):
    x = table()
    x[201, 3] = 70000.0            # beyond float16 centroids
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(TypeError, match="n_groups"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "a.qe4", 4, "kmeans", n_groups=3,
                             engine="reference")
    with pytest.raises(ValueError, match="not row-wise and cannot be streamed"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "a.qe4", 4, "two-tier", engine="reference")
    with pytest.raises(ValueError, match=r"x\.npy\[201, 3\] = .*70000"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "a.qe4", 4, "kmeans-optimal",
                             engine="reference", max_memory=30 * stream.bytes_per_row(13, 4, 64, "reference"))
    assert os.listdir(tmp_path) == ["x.npy"]
