"""The README's reliability promises, one test each: hostile files, files that change under
a reader, interrupted and killed writers, resource bounds.

Cases that crashed the process before (SIGBUS, SIGSEGV) run in a subprocess and assert a
clean exit with a clear exception.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

import qe4
from qe4 import cli, stream
from qe4 import io as qio
from qe4 import shards as S
from qe4.engines import ENGINES, get_engine

# subprocesses run where the qe4 under test lives (the source tree of an in-place build,
# site-packages of an installed one), so they import the same, built package
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__import__("qe4").__file__)))
RNG = np.random.default_rng(20261201)


def available_engines():
    out = []
    for name in ENGINES:
        try:
            get_engine(name)
            out.append(name)
        except ImportError:
            pass
    return out


ENGINES_HERE = available_engines()


def run_python(code, *args, timeout=120, **kw):
    """Run ``code`` in a fresh interpreter importing this tree's qe4; returns the result."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def assert_clean(r, *expected):
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by that signal)\n{r.stderr}"
    for e in expected:
        assert e in r.stdout, r.stdout + r.stderr


def weights(n_rows, dim):
    return RNG.standard_normal((n_rows, dim)).astype(np.float32)


def write_raw(path, header, payload=b""):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + payload)


def temps(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".qe4tmp"))


# --------------------------------------------------------------------------- F2: mapped files

@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_lookup_after_the_file_shrank_raises_not_sigbus(tmp_path, engine):
    p = tmp_path / "t.qe4"
    qe4.save(qe4.quantize(weights(4000, 64), 4, "minmax"), p)     # ~150 KB, many pages
    r = run_python(f"""
        import os, sys, numpy as np, qe4
        from qe4.engines import get_engine
        mod = get_engine({engine!r})
        t = qe4.load(sys.argv[1])
        kept = qe4.load(sys.argv[1], mmap=False)
        os.truncate(sys.argv[1], 4096)
        calls = {{"embedding_bag": lambda: mod.embedding_bag(t, np.arange(3990, 4000), np.array([0, 5])),
                  "dequantize": lambda: mod.dequantize(t),
                  "to_tbe": lambda: mod.to_tbe(t),
                  "save": lambda: qe4.save(t, sys.argv[1] + ".copy")}}
        for name, call in calls.items():
            try:
                call()
                print(name, "returned")
            except ValueError as exc:
                assert "truncated or rewritten in place" in str(exc) and sys.argv[1] in str(exc), exc
                print(name, "ValueError")
        print("copy", mod.dequantize(kept).shape)
        """, p)
    assert_clean(r, "embedding_bag ValueError", "dequantize ValueError", "to_tbe ValueError",
                 "save ValueError", "copy (4000, 64)")


def test_sharded_lookup_after_a_shard_shrank(tmp_path):
    st = S.write_sharded(qe4.quantize(weights(3000, 64), 4, "minmax"), tmp_path / "s", 1000)
    r = run_python("""
        import os, sys, numpy as np
        from qe4 import shards as S
        st = S.open_sharded(sys.argv[1])
        st.rows([0, 2999])                     # maps shards 0 and 2
        os.truncate(os.path.join(sys.argv[1], st.index["shards"][2]["file"]), 4096)
        try:
            st.rows([2998])
            print("returned")
        except ValueError as exc:
            assert "truncated or rewritten" in str(exc), exc
            print("ValueError")
        """, st.path)
    assert_clean(r, "ValueError")


def test_cli_input_truncated_mid_run(tmp_path):
    # the input shrinks after the first chunk: an error naming the file, no output, no temp file
    src, dst = tmp_path / "x.npy", tmp_path / "x.qe4"
    np.save(src, weights(20000, 32))
    r = run_python("""
        import os, sys
        from qe4 import cli, stream
        real = stream.frontend.encode
        def first_then_truncate(*a):
            out = real(*a)
            os.truncate(sys.argv[1], 300000)
            return out
        stream.frontend.encode = first_then_truncate
        print("exit", cli.main(["quantize", sys.argv[1], sys.argv[2], "--method", "minmax",
                                "--max-memory", "256K", "--no-progress"]))
        """, src, dst)
    assert_clean(r, "exit 2")
    assert "was truncated while being read" in r.stderr and str(src) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not dst.exists() and temps(tmp_path) == []


# --------------------------------------------------------------------------- F3: deep JSON

DEEP = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"


def test_deeply_nested_header(tmp_path, capsys):
    p = tmp_path / "deep.qe4"
    write_raw(p, DEEP)
    with pytest.raises(ValueError, match=r"deep.qe4: .*nests 200001 levels deep"):
        qe4.load(p)
    code = cli.main(["info", str(p)])
    err = capsys.readouterr().err
    assert code == 2 and "nests 200001 levels deep" in err and len(err.strip().splitlines()) == 1


def test_deeply_nested_params_and_index(tmp_path):
    meta = {"format": "qe4", "format_version": "1", "bits": "4", "dim": "2", "method": "minmax",
            "scale_dtype": "float16", "layout": "rowwise", "params": DEEP.decode()}
    p = tmp_path / "params.qe4"
    write_raw(p, {"__metadata__": meta, "data": {"dtype": "U8", "shape": [1, 5],
                                                  "data_offsets": [0, 5]}}, b"\0" * 5)
    with pytest.raises(ValueError, match="metadata params=.* nests 200001 levels deep"):
        qe4.load(p)
    d = tmp_path / "s"
    d.mkdir()
    (d / S.INDEX).write_bytes(DEEP)
    with pytest.raises(ValueError, match="index.json' nests 200001 levels deep"):
        S.open_sharded(d)


def test_deep_header_with_a_raised_recursion_limit(tmp_path):
    # json's C parser recursed past the C stack (SIGSEGV) when the limit was raised
    p, d = tmp_path / "deep.qe4", tmp_path / "s"
    write_raw(p, DEEP)
    d.mkdir()
    (d / S.INDEX).write_bytes(DEEP)
    r = run_python("""
        import sys
        sys.setrecursionlimit(10**7)
        import qe4
        from qe4 import shards
        for f in (lambda: qe4.load(sys.argv[1]), lambda: shards.open_sharded(sys.argv[2])):
            try:
                f()
            except ValueError as exc:
                print("ValueError", "nests 200001 levels deep" in str(exc))
        """, p, d)
    assert_clean(r)
    assert r.stdout.split("\n")[:2] == ["ValueError True"] * 2


# --------------------------------------------------------------------------- F6, F8, F16: shards

def test_swapped_shards_are_refused_without_verify(tmp_path):
    table = qe4.quantize(weights(90, 8), 4, "minmax")
    st = S.write_sharded(table, tmp_path / "s", 30)
    a, b = (os.path.join(st.path, s["file"]) for s in st.index["shards"][:2])
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)               # same sizes, same metadata: only the rows differ
    opened = S.open_sharded(st.path)
    with pytest.raises(ValueError, match=r"records qe4_shard=\{'run': '\w+', 'start': 30, 'stop': 60\}"
                                         r", but the index expects \{'start': 0, 'stop': 30"):
        opened.rows([0])


def test_shards_swapped_after_a_verified_open_are_refused(tmp_path):
    table = qe4.quantize(weights(90, 8), 4, "minmax")
    st = S.write_sharded(table, tmp_path / "s", 30)
    opened = S.open_sharded(st.path, verify=True)
    other = S.write_sharded(table, tmp_path / "o", 30)       # another run: same bytes, other tag
    os.replace(os.path.join(other.path, other.index["shards"][1]["file"]),
               os.path.join(st.path, st.index["shards"][1]["file"]))
    opened.rows([0])
    with pytest.raises(ValueError, match="left by another run"):
        opened.rows([45])


def _index_cases():
    return [
        ("row_bytes", 10 ** 12, "data has 1000000000000 bytes per row"),
        ("row_bytes", True, "row_bytes must be a positive integer, got True"),
        ("n_rows", 90.0, "n_rows must be a positive integer, got 90.0"),
        ("dim", "8", "dim must be a positive integer, got '8'"),
        ("run", "../x", "run must be a tag"),
        ("shard.start", 0.0, "has start=0.0, not a non-negative integer"),
        ("shard.stop", 30.0, "has stop=30.0, not a non-negative integer"),
        ("shard.file_bytes", -1, "has file_bytes=-1"),
        ("shard.sha256", "abc", "has sha256='abc', not 64 hex digits"),
        ("shard.nbytes", 3, "has nbytes=3, fewer than its 30 rows of 8 bytes"),
    ]


@pytest.mark.parametrize("key, value, message", _index_cases())
def test_index_fields_are_validated(tmp_path, key, value, message):
    st = S.write_sharded(qe4.quantize(weights(90, 8), 4, "minmax"), tmp_path / "s", 30)
    path = os.path.join(st.path, S.INDEX)
    with open(path) as f:
        index = json.load(f)
    if key.startswith("shard."):
        index["shards"][0][key[6:]] = value
    else:
        index[key] = value
    with open(path, "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=message):
        S.open_sharded(st.path)


def test_codebook_row_bytes_is_bounded(tmp_path):
    st = S.write_sharded(qe4.quantize(weights(40, 8), 4, "kmeans"), tmp_path / "s", 20)
    path = os.path.join(st.path, S.INDEX)
    with open(path) as f:
        index = json.load(f)
    index["row_bytes"] = 10 ** 12
    with open(path, "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match="1000000000000 bytes per row; a codebook table of dim 8 "
                                         "at 4 bits needs 36"):
        S.open_sharded(st.path)


def test_index_with_duplicate_keys_is_refused(tmp_path):
    st = S.write_sharded(qe4.quantize(weights(90, 8), 4, "minmax"), tmp_path / "s", 30)
    path = os.path.join(st.path, S.INDEX)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('"n_rows": 90', '"n_rows": 90, "n_rows": 60', 1))
    with pytest.raises(ValueError, match="duplicate key 'n_rows'"):
        S.open_sharded(st.path)


# --------------------------------------------------------------------------- F7: killed writers

def test_sigterm_during_cli_quantize_removes_the_temp_file(tmp_path):
    src, dst = tmp_path / "x.npy", tmp_path / "x.qe4"
    np.save(src, weights(4000, 64))
    p = subprocess.Popen([sys.executable, "-m", "qe4.cli", "quantize", str(src), str(dst),
                          "--engine", "reference", "--method", "exhaustive", "--n-bins", "400",
                          "--max-memory", "64K", "--no-progress"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not temps(tmp_path) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert temps(tmp_path), "the writer never started"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, err
    assert err.strip() == "qe4: terminated (no output file was written)"
    assert not dst.exists() and temps(tmp_path) == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = qio._HOST
    stale = f".t.qe4.{host}-{dead.pid}.abc_12.qe4tmp"
    live = f".t.qe4.{host}-1.def34.qe4tmp"                 # pid 1 always exists
    remote = f".t.qe4.otherhost{host}-{dead.pid}.ghi56.qe4tmp"
    other = f".u.qe4.{host}-{dead.pid}.jkl78.qe4tmp"       # a writer of another file
    for name in (stale, live, remote, other):
        (tmp_path / name).write_bytes(b"\0" * 100)
    qe4.save(qe4.quantize(weights(5, 4), 4, "minmax"), tmp_path / "t.qe4")
    assert temps(tmp_path) == sorted([live, remote, other])


def test_temp_file_names_carry_host_and_pid(tmp_path, monkeypatch):
    seen = []
    real = qio.TableWriter._write

    def spy(self, buf):
        seen.append(os.path.basename(self._tmp))
        real(self, buf)

    monkeypatch.setattr(qio.TableWriter, "_write", spy)
    qe4.save(qe4.quantize(weights(5, 4), 4, "minmax"), tmp_path / "t.qe4")
    assert seen[0].startswith(f".t.qe4.{qio._HOST}-{os.getpid()}.") and seen[0].endswith(".qe4tmp")


# --------------------------------------------------------------------------- F14: extras in RAM

def _two_tier_file(path, n_groups=65536, n_rows=70000):
    from qe4 import codebook as C
    books = np.sort(RNG.standard_normal((n_groups, 16)).astype(np.float32), axis=1)
    gid = np.arange(n_rows) % n_groups
    data, extras = C.two_tier_rows(np.zeros((n_rows, 4), np.uint8), gid, books, 4, "float32")
    table = qe4.QuantizedTable(data, bits=4, dim=4, method="two-tier", scale_dtype="float32",
                               layout="two-tier", extras=extras, params={"n_groups": n_groups})
    qe4.save(table, path)
    return table


def _peak(f):
    tracemalloc.start()
    try:
        out = f()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_extras_are_read_once_or_mapped(tmp_path, same_bytes):
    p = tmp_path / "tt.qe4"
    table = _two_tier_file(p)
    books = table.extras["codebooks"].nbytes                    # 4 MiB
    loaded, peak = _peak(lambda: qe4.load(p, mmap=False))
    assert peak < 1.25 * os.path.getsize(p), (peak, os.path.getsize(p))  # was twice the extras
    same_bytes(loaded.extras["codebooks"], table.extras["codebooks"])
    mapped, peak = _peak(lambda: qe4.load(p))
    assert peak < books / 8, peak             # mapped: only the finiteness check's blocks
    base = mapped.extras["codebooks"]          # a read-only view of the file's mapping
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    same_bytes(mapped.extras["codebooks"], table.extras["codebooks"])
    same_bytes(qe4.dequantize(mapped), qe4.dequantize(table))


# --------------------------------------------------------------------------- F17: parsing

@pytest.mark.parametrize("value", [" 4 ", "\u0664", "4_0", "+4", "04", "4.0"])
def test_metadata_integers_are_ascii_digits_only(tmp_path, value):
    p = tmp_path / "t.qe4"
    qe4.save(qe4.quantize(weights(3, 4), 4, "minmax"), p)
    hdr = qio.read_safetensors_header(p)
    meta = dict(hdr.metadata, bits=value)
    with open(p, "rb") as f:
        f.seek(hdr.buffer_start)
        payload = f.read()
    header = {"__metadata__": meta, **{n: {"dtype": d, "shape": list(s), "data_offsets": [b, e]}
                                       for n, (d, s, b, e) in hdr.tensors.items()}}
    write_raw(p, header, payload)
    with pytest.raises(ValueError, match=r"metadata bits=.* is not an integer written in ASCII digits"):
        qe4.load(p)


def test_max_memory_below_one_byte(capsys, tmp_path):
    code = cli.main(["quantize", "in.npy", str(tmp_path / "o.qe4"), "--max-memory", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "size '0.5' is less than one byte" in err


@pytest.fixture
def small_npy(tmp_path):
    np.save(tmp_path / "x.npy", weights(50, 8))
    return tmp_path / "x.npy"


def test_empty_output_path_is_refused(capsys, tmp_path, small_npy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["quantize", str(small_npy), "", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "qe4: error: OUT must name a file, got ''"
    assert temps(tmp_path) == temps(tmp_path.parent) == []


@pytest.mark.parametrize("method", ["minmax", "two-tier"])
def test_output_directory_is_refused_before_any_work(capsys, tmp_path, small_npy, monkeypatch,
                                                     method):
    def no_work(*a, **k):
        raise AssertionError("the input was read")

    monkeypatch.setattr(stream, "Source", no_work)
    code = cli.main(["quantize", str(small_npy), str(tmp_path), "--method", method,
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"OUT {str(tmp_path)!r} is a directory" in err
    with pytest.raises(IsADirectoryError, match="dst .* is a directory"):
        stream.quantize_file(small_npy, tmp_path, 4, "minmax")


# --------------------------------------------------------------------------- F19: memory bounds

def test_fortran_ordered_input_streams_the_same_bytes(tmp_path, same_bytes):
    x = weights(3001, 13)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "b.npy", np.asfortranarray(x.astype(">f8")))     # big-endian too
    for name in ("c", "f", "b"):
        info = stream.quantize_file(tmp_path / f"{name}.npy", tmp_path / f"{name}.qe4", 4, "minmax",
                                    engine="reference", max_memory="64K")
        assert info["n_chunks"] > 10
        same_bytes(qe4.load(tmp_path / f"{name}.qe4").data, qe4.quantize(x, 4, "minmax").data)


def test_fortran_ordered_input_stays_within_max_memory(tmp_path):
    # 64 MiB Fortran-ordered input, 8 MiB budget: the resident set grew by the whole
    # input (1.13 GB on a 1 GiB file) when rows were read through a memory map
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status (VmHWM: the peak resident set)")
    np.save(tmp_path / "f.npy", np.asfortranarray(weights(1 << 18, 64)))
    r = run_python("""
        import sys
        from qe4 import stream

        def peak_kib():    # VmHWM starts afresh at exec (ru_maxrss would carry the parent's)
            with open("/proc/self/status") as f:
                return int(next(l for l in f if l.startswith("VmHWM")).split()[1])

        stream.get_engine("reference")
        before = peak_kib()
        stream.quantize_file(sys.argv[1], sys.argv[2], 4, "minmax", engine="reference",
                             max_memory="8M")
        print("grew_kib", peak_kib() - before)
        """, tmp_path / "f.npy", tmp_path / "f.qe4")
    assert_clean(r, "grew_kib")
    grew = int(r.stdout.split()[-1])
    assert grew < 24 * 1024, f"resident set grew by {grew} KiB for an 8 MiB budget"


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_error_measurement_is_bounded(tmp_path, engine):
    np.save(tmp_path / "x.npy", weights(1 << 14, 64))                  # 4 MiB
    kw = dict(engine=engine, max_memory="1G")

    def run(measure):
        return stream.quantize_file(tmp_path / "x.npy", tmp_path / "x.qe4", 4, "minmax",
                                    measure_error=measure, **kw)

    _, plain = _peak(lambda: run(False))
    info, measured = _peak(lambda: run(True))
    block = (1 << 17) * 36      # one block of stream.ERROR_BLOCK_VALUES values, 36 bytes each
    assert measured - plain < block + (1 << 20), (plain, measured)     # was 36 bytes per value
    x = np.load(tmp_path / "x.npy")
    x_hat = qe4.dequantize(qe4.load(tmp_path / "x.qe4")).astype(np.float64)
    want = ((x - x_hat) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
    assert abs(info["error"] - want) <= 1e-12 * want


def test_small_budget_is_honoured_with_error_measurement(tmp_path):
    np.save(tmp_path / "x.npy", weights(1 << 13, 64))                  # 2 MiB
    info, peak = _peak(lambda: stream.quantize_file(
        tmp_path / "x.npy", tmp_path / "x.qe4", 4, "minmax", engine="reference",
        max_memory="512K", measure_error=True))
    assert info["n_chunks"] > 4 and peak < (512 << 10) + (256 << 10), peak


# --------------------------------------------------------------------------- F5: long searches

@pytest.mark.parametrize("engine", ENGINES_HERE)
@pytest.mark.parametrize("call", ["quantize", "row_ranges"])
def test_exhaustive_cost_is_bounded(engine, call):
    x = weights(2, 8)
    with pytest.raises(ValueError) as exc:
        getattr(get_engine(engine), call)(x, 4, "exhaustive", n_bins=1_000_000)
    assert str(exc.value).startswith(
        "method 'exhaustive' with n_bins=1000000 and ratio=0.16 would evaluate about "
        "12,800,560,006 candidate ranges per row")
    assert "more than the 1,000,000 allowed" in str(exc.value)
    if engine == "fast":            # 0.9M candidates: allowed (the reference takes minutes)
        getattr(get_engine(engine), call)(x, 4, "exhaustive", n_bins=6000)


def test_exhaustive_cost_is_bounded_when_streaming(tmp_path):
    np.save(tmp_path / "x.npy", weights(4, 8))
    with pytest.raises(ValueError, match="would evaluate about 12,800,560,006 candidate"):
        stream.quantize_file(tmp_path / "x.npy", tmp_path / "x.qe4", 4, "exhaustive",
                             n_bins=1_000_000)


@pytest.mark.skipif("fast" not in ENGINES_HERE, reason="qe4_fast is not built")
@pytest.mark.parametrize("method, options", [("exhaustive", {"n_bins": 5000}),
                                             ("kmeans-optimal", {})])
def test_ctrl_c_interrupts_a_long_compiled_call(method, options):
    # ~10 s of kernel work; SIGINT must end it within about a second (it waited for all of it)
    n_rows = 120 if method == "exhaustive" else 60000
    dim = 64 if method == "exhaustive" else 256
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import numpy as np, qe4_fast
        x = np.random.default_rng(0).standard_normal(({n_rows}, {dim})).astype(np.float32)
        print("go", flush=True)
        try:
            qe4_fast.quantize(x, 4, {method!r}, n_threads=2, **{options!r})
            print("finished")
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        """)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "go"
        time.sleep(1.0)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        latency = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and out.strip() == "KeyboardInterrupt", out + err
    assert latency < 2.0, f"Ctrl-C took {latency:.1f} s to interrupt {method}"


@pytest.mark.skipif("fast" not in ENGINES_HERE, reason="qe4_fast is not built")
def test_blocked_calls_give_the_same_bytes(same_bytes, monkeypatch):
    import qe4_fast
    from qe4_fast import _blocks
    x = weights(301, 33)
    whole = {m: qe4_fast.quantize(x, 4, m, n_threads=2).data for m in ("greedy", "exhaustive")}
    monkeypatch.setattr(_blocks, "WORK_PER_CALL", 1)          # the smallest blocks
    for m, data in whole.items():
        same_bytes(qe4_fast.quantize(x, 4, m, n_threads=2).data, data)
        same_bytes(qe4_fast.quantize(x, 4, m, n_threads=2).data, qe4.quantize(x, 4, m).data)
    lo, hi = qe4_fast.row_ranges(x, 4, "exhaustive", n_threads=2)
    same_bytes(lo, qe4.row_ranges(x, 4, "exhaustive")[0])
    for m in ("kmeans", "two-tier"):
        same_bytes(qe4_fast.quantize(x, 4, m, n_threads=2).data, qe4.quantize(x, 4, m).data)


# --------------------------------------------------------------------------- F9: range_loss

def _range_loss_cases():
    x = weights(3, 5)
    lo, hi = x.min(axis=1), x.max(axis=1)
    return [
        ((x, lo, hi, -1), ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got -1"),
        ((x, lo, hi, 7), ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 7"),
        ((x, lo, hi, 100), ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 100"),
        ((x, lo, hi, 4.0), TypeError, "bits must be an integer, got 4.0"),
        ((x, lo, hi, 4, "bogus"), ValueError, "scale_dtype must be one of"),
        ((x.astype(np.complex64), lo, hi), TypeError, "x must have dtype float16, float32 or float64"),
        ((x[0], lo[0], hi[0]), ValueError, r"x must be 2-D \[n_rows, n_cols\], got shape \(5,\)"),
        ((x, hi, lo), ValueError, r"lo must be <= hi: lo\[0\] = .* > hi\[0\]"),
        ((x, lo[:2], hi), ValueError, r"lo must be a scalar or have shape \(3,\), got shape \(2,\)"),
        ((x, lo.astype(np.complex64), hi), TypeError, "lo must be a real number or array, got dtype complex64"),
        ((x, lo, np.full(3, np.nan)), ValueError, r"hi must be finite in float32: hi\[0\] = "),
        ((x, -1e6, 1e6), ValueError, r"overflows the float16 scale/bias"),
        ((x, lo, hi, 4, "float16"), None, None),
        ((x, -1e6, 1e6, 4, "float32"), None, None),
    ]


@pytest.mark.parametrize("args, kind, message", _range_loss_cases())
def test_range_loss_validates_like_quantize(args, kind, message, same_bytes):
    results = []
    for engine in ENGINES_HERE:
        f = get_engine(engine).range_loss
        if kind is None:
            results.append(f(*args))
            continue
        with pytest.raises(kind, match=message) as exc:
            f(*args)
        results.append(str(exc.value))
    if kind is None:
        for r in results[1:]:
            same_bytes(r, results[0])
    else:
        assert len(set(results)) == 1, results      # the same message in both packages


# --------------------------------------------------------------------------- F10: group ids

@pytest.mark.skipif("fast" not in ENGINES_HERE, reason="qe4_fast is not built")
def test_two_tier_dequantize_kernel_bounds_checks_group_ids():
    from qe4_fast import _codebook
    data = np.zeros((3, 5), np.uint8)
    data[1, 4] = 200                                  # group id 200 of a 1-codebook table
    books = np.arange(16, dtype=np.float32).reshape(1, 16)
    out = np.full((3, 8), 7.0, np.float32)
    two_tier = _codebook.LAYOUT_CODES["two-tier"]
    assert _codebook.dequantize(data, 8, 4, two_tier, 0, 1, books, out, 2) == 1
    assert not out[1].any() and (out[[0, 2]] == 0.0).all()     # row 1 zeroed, never looked up


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_two_tier_bad_group_id_raises(engine):
    t = qe4.quantize(weights(40, 8), 4, "two-tier", n_groups=3)
    t.data[7, t.code_bytes] = 9
    with pytest.raises(ValueError, match="group id is out of range for 3 codebooks"):
        get_engine(engine).dequantize(t)


# --------------------------------------------------------------------------- F11: stored floats

def _poisoned(tmp_path, method, value, where):
    t = qe4.quantize(weights(50, 8), 4, method) if method != "two-tier" else \
        qe4.quantize(weights(50, 8), 4, method, n_groups=2)
    if where == "extras":
        books = t.extras["codebooks"].copy()
        with np.errstate(over="ignore"):
            books[1, 3] = value
        t = qe4.QuantizedTable(t.data, bits=4, dim=8, method=t.method, scale_dtype=t.scale_dtype,
                               layout=t.layout, extras={"codebooks": books}, params=t.params)
    else:
        dt = np.dtype(t.scale_dtype).newbyteorder("<")
        row = t.data[17, t.code_bytes:].view(dt)
        with np.errstate(over="ignore"):
            row[where] = value
    p = tmp_path / "bad.qe4"
    qe4.save(t, p)
    return p


@pytest.mark.parametrize("method, where", [("minmax", 0), ("minmax", 1), ("kmeans", 5),
                                           ("two-tier", "extras")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mmap", [True, False])
def test_non_finite_stored_floats_are_refused_at_load(tmp_path, method, where, value, mmap):
    p = _poisoned(tmp_path, method, value, where)
    what = "codebook 1 has a non-finite centroid" if where == "extras" else \
        "row 17 has a non-finite stored (scale/bias|centroid)"
    with pytest.raises(ValueError, match=f"bad.qe4: {what}"):
        qe4.load(p, mmap=mmap)
    t = qe4.load(p, mmap=mmap, check_finite=False)            # opt out: it loads as it is
    if method == "minmax":
        with np.errstate(invalid="ignore", over="ignore"):
            assert not np.isfinite(qe4.dequantize(t)[17]).all()


def test_float32_scales_are_checked(tmp_path):
    t = qe4.quantize(weights(9, 8), 4, "minmax", scale_dtype="float32")
    t.data[4, t.code_bytes + 4:t.code_bytes + 8] = np.array([np.inf], "<f4").view(np.uint8)
    qe4.save(t, tmp_path / "f32.qe4")
    with pytest.raises(ValueError, match=r"row 4 has a non-finite stored scale/bias \(np.float32\(inf\)\)"):
        qe4.load(tmp_path / "f32.qe4")


# --------------------------------------------------------------------------- F12: bag arguments

def _bag_cases():
    idx2 = np.array([[0, 1, 2], [3, 4, 5]])
    return [
        (dict(indices=idx2, per_sample_weights=np.ones((3, 2), np.float32)), ValueError,
         r"per_sample_weights must have the shape of indices \(2, 3\), got \(3, 2\)"),
        (dict(indices=idx2.reshape(-1), offsets=[0, 3], per_sample_weights=np.ones((2, 3), np.float32)),
         ValueError, r"per_sample_weights must have the shape of indices \(6,\), got \(2, 3\)"),
        (dict(indices=idx2.reshape(-1), offsets=[0, 3, 6], include_last_offset="no"), TypeError,
         "include_last_offset must be a bool, got 'no'"),
        (dict(indices=idx2.reshape(-1), offsets=[0, 3], include_last_offset=1), TypeError,
         "include_last_offset must be a bool, got 1"),
        (dict(indices=np.ma.masked_array([0, 1, 2], mask=[0, 1, 0]), offsets=[0]), TypeError,
         "indices is a masked array"),
        (dict(indices=[0, 1, 2], offsets=np.ma.masked_array([0, 1])), TypeError,
         "offsets is a masked array"),
        (dict(indices=[0, 1, 2], offsets=[0],
              per_sample_weights=np.ma.masked_array(np.ones(3, np.float32), mask=[0, 0, 1])),
         TypeError, "per_sample_weights is a masked array"),
    ]


@pytest.mark.parametrize("kw, kind, message", _bag_cases())
def test_bag_arguments_are_strict(kw, kind, message):
    t = qe4.quantize(weights(10, 8), 4, "minmax")
    messages = []
    for engine in ENGINES_HERE:
        with pytest.raises(kind, match=message) as exc:
            get_engine(engine).embedding_bag(t, **kw)
        messages.append(str(exc.value))
    assert len(set(messages)) == 1


@pytest.mark.parametrize("engine", ENGINES_HERE)
def test_masked_input_is_refused(engine):
    x = np.ma.masked_array(weights(4, 8), mask=np.eye(4, 8, dtype=bool))
    with pytest.raises(TypeError, match="x is a masked array, whose mask qe4 would ignore"):
        get_engine(engine).quantize(x, 4, "minmax")
