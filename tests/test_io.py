"""The qe4 file format (qe4.io): roundtrips, safetensors compatibility, corruption, atomicity."""

import errno
import json
import os

import numpy as np
import pytest

import qe4
from qe4 import io as qio
from qe4 import layouts as L

RNG = np.random.default_rng(20261124)


def table_of(n_rows=37, dim=7, bits=4, scale_dtype=None, method="minmax", **kwargs):
    x = RNG.standard_normal((n_rows, dim)).astype(np.float32)
    return qe4.quantize(x, bits, method, scale_dtype=scale_dtype, **kwargs)


class AnyExtrasLayout(L.Layout):
    """A layout (registered by the fixture below, for these tests only) that stores any
    named extras, so the file format is checked on every dtype a layout might use."""
    name = "test-any-extras"
    code = 99
    bits = (2, 4, 8)

    def __init__(self, names):
        self.extras = tuple(L.Extra(n, "any array") for n in names)

    def fields(self, dim, bits, float_dtype, extras=None):
        cb = L.code_bytes(dim, bits)
        return (L.Field("codes", 0, np.dtype(np.uint8), cb), L.Field("tail", cb, np.dtype(np.uint8), 3))


@pytest.fixture
def any_extras(monkeypatch):
    """``make(data, dim, extras, **kw)``: a QuantizedTable of the test layout."""
    def make(data, dim, extras, **kw):
        monkeypatch.setitem(L.LAYOUTS, AnyExtrasLayout.name, AnyExtrasLayout(sorted(extras)))
        return qe4.QuantizedTable(data, bits=4, dim=dim, layout=AnyExtrasLayout.name, extras=extras,
                                  **kw)
    return make


def same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.ascontiguousarray(a).view(np.uint8).tobytes() == np.ascontiguousarray(b).view(np.uint8).tobytes()


def leftovers(directory):
    return [f for f in os.listdir(directory) if f.endswith(".qe4tmp")]


# --------------------------------------------------------------------------- roundtrips

@pytest.mark.parametrize("bits,scale_dtype", [(2, None), (4, None), (8, None),
                                              (2, "float32"), (4, "float32")])
@pytest.mark.parametrize("dim", [1, 3, 7, 50, 33])
def test_roundtrip_bytes(tmp_path, bits, scale_dtype, dim):
    t = table_of(dim=dim, bits=bits, scale_dtype=scale_dtype, method="greedy")
    p = tmp_path / "t.qe4"
    qio.save(t, p)
    for mmap in (True, False):
        u = qio.load(p, mmap=mmap)
        assert same_bytes(u.data, t.data)
        assert (u.bits, u.dim, u.method, u.scale_dtype, u.layout, u.params) == \
            (t.bits, t.dim, "greedy", t.scale_dtype, "rowwise", {"n_bins": 200, "ratio": 0.16})
        assert u == t
        assert same_bytes(u.dequantize(), t.dequantize())
    assert leftovers(tmp_path) == []


def test_roundtrip_extras_every_dtype(tmp_path, any_extras):
    extras = {
        "f32": RNG.standard_normal((3, 5)).astype(np.float32),
        "f64": RNG.standard_normal(4),
        "f16": np.array([1.5, -0.0, 65504], np.float16),
        "i64": np.array([[-1, 2**40]], np.int64),
        "i32": np.arange(5, dtype=np.int32),
        "u16": np.array([7, 65535], np.uint16),
        "i8": np.array([-128, 127], np.int8),
        "u8": np.arange(3, dtype=np.uint8),          # odd byte count before others
        "flag": np.array([True, False, True]),
        "big_endian": np.arange(3, dtype=">f4"),
        "empty": np.zeros((0, 4), np.float32),
    }
    t = any_extras(RNG.integers(0, 256, (9, 6), dtype=np.uint8), 5, extras, method="kmeans",
                   scale_dtype="float32", params={"k": 16, "seed": [1, 2]})
    p = tmp_path / "cb.qe4"
    qio.save(t, p)
    u = qio.load(p)
    assert u.layout == AnyExtrasLayout.name and u.params == {"k": 16, "seed": [1, 2]}
    assert sorted(u.extras) == sorted(extras)
    for k, v in extras.items():
        assert u.extras[k].dtype == v.dtype.newbyteorder("=") and u.extras[k].shape == v.shape
        assert u.extras[k].tobytes() == v.astype(v.dtype.newbyteorder("=")).tobytes()
    assert same_bytes(u.data, t.data)
    meta = qio.read_metadata(p)
    assert meta["extras"]["f32"] == ("float32", [3, 5])
    assert meta["n_rows"] == 9 and meta["row_bytes"] == 6 and meta["file_size"] == os.path.getsize(p)


def test_zero_rows(tmp_path):
    t = qe4.QuantizedTable(np.zeros((0, 8), np.uint8), bits=4, dim=7, method="minmax")
    qio.save(t, tmp_path / "z.qe4")
    u = qio.load(tmp_path / "z.qe4")
    assert u.n_rows == 0 and u.row_bytes == 8


def test_table_methods_delegate(tmp_path):
    t = table_of()
    t.save(tmp_path / "m.qe4")
    assert qe4.QuantizedTable.load(tmp_path / "m.qe4") == t


def test_unsupported_extra_dtype(tmp_path, any_extras):
    t = any_extras(np.zeros((2, 7), np.uint8), 7, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match=r"extras\['c'\] has dtype complex64"):
        qio.save(t, tmp_path / "c.qe4")
    assert os.listdir(tmp_path) == []


def test_save_rejects_non_table(tmp_path):
    with pytest.raises(TypeError, match="QuantizedTable"):
        qio.save(np.zeros((2, 8), np.uint8), tmp_path / "x.qe4")


# --------------------------------------------------------------------------- compatibility

def test_readable_by_safetensors_numpy(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file
    t = table_of(bits=4, method="two-tier", n_groups=3)
    qio.save(t, tmp_path / "t.qe4")
    d = load_file(str(tmp_path / "t.qe4"))
    assert sorted(d) == ["data", "extra.codebooks"]
    assert same_bytes(d["data"], t.data)
    assert same_bytes(d["extra.codebooks"], t.extras["codebooks"])
    with safe_open(str(tmp_path / "t.qe4"), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "qe4" and meta["format_version"] == "1"
    assert (meta["bits"], meta["dim"], meta["method"], meta["scale_dtype"], meta["layout"]) == \
        ("4", "7", "two-tier", "float16", "two-tier")
    assert json.loads(meta["params"]) == {"n_groups": 3}


def test_readable_by_safetensors_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    t = table_of(bits=4, dim=8)
    qio.save(t, tmp_path / "t.qe4")
    d = load_file(str(tmp_path / "t.qe4"))
    assert d["data"].dtype == torch.uint8
    assert d["data"].numpy().tobytes() == t.data.tobytes()
    # torch reads the same packed rows as its own fused 4-bit layout
    ref = torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(
        d["data"], torch.arange(t.n_rows), torch.arange(t.n_rows))
    assert ref.numpy().tobytes() == t.dequantize().tobytes()


def test_we_read_files_written_by_safetensors(tmp_path):
    from safetensors.numpy import save_file
    t = table_of(bits=2, dim=12, method="two-tier", n_groups=2, scale_dtype="float32")
    meta = {"format": "qe4", "format_version": "1", "bits": "2", "dim": "12", "method": "two-tier",
            "scale_dtype": "float32", "layout": "two-tier", "params": "{}"}
    save_file({"data": t.data, "extra.codebooks": t.extras["codebooks"]}, str(tmp_path / "s.qe4"),
              metadata=meta)
    u = qio.load(tmp_path / "s.qe4")
    assert u == t and same_bytes(u.dequantize(), t.dequantize())


# --------------------------------------------------------------------------- mmap

def test_mmap_is_read_only_memmap(tmp_path):
    t = table_of(n_rows=500)
    qio.save(t, tmp_path / "t.qe4")
    u = qio.load(tmp_path / "t.qe4")
    assert isinstance(u.data, np.memmap) and not u.data.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        u.data[0, 0] = 1
    out = qe4.embedding_bag(u, np.array([3, 499, 0]), np.array([0, 2]))
    assert out.tobytes() == qe4.embedding_bag(t, np.array([3, 499, 0]), np.array([0, 2])).tobytes()
    v = qio.load(tmp_path / "t.qe4", mmap=False)
    assert not isinstance(v.data, np.memmap) and v.data.flags.writeable


# --------------------------------------------------------------------------- corruption

@pytest.fixture
def good_file(tmp_path):
    t = table_of(n_rows=11, dim=5, method="two-tier", n_groups=3, scale_dtype="float32")
    p = tmp_path / "good.qe4"
    qio.save(t, p)
    return p, p.read_bytes()


def boundaries(raw):
    n = int.from_bytes(raw[:8], "little")
    start = 8 + n
    return sorted({0, 1, 7, 8, 9, start - 1, start, start + 12, start + 24, start + 24 + 8,
                   len(raw) - 1})


def test_truncated_at_every_region_boundary(good_file, tmp_path):
    p, raw = good_file
    for cut in boundaries(raw):
        q = tmp_path / f"cut{cut}.qe4"
        q.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=str(q).replace("\\", "\\\\")):
            qio.load(q)
        with pytest.raises(ValueError):
            qio.read_metadata(q)


def test_truncated_anywhere(good_file, tmp_path):
    p, raw = good_file
    q = tmp_path / "cut.qe4"
    for cut in range(len(raw)):
        q.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            qio.load(q)


def test_trailing_garbage(good_file, tmp_path):
    p, raw = good_file
    q = tmp_path / "long.qe4"
    q.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="trailing garbage"):
        qio.load(q)


def test_flipped_header_bytes_never_crash(good_file, tmp_path):
    """Any single-byte corruption of the header is either rejected with ValueError or reads
    a consistent table (e.g. a changed letter in the method name): never another exception."""
    p, raw = good_file
    n = int.from_bytes(raw[:8], "little")
    q = tmp_path / "flip.qe4"
    rejected = 0
    for i in range(8 + n):
        for mask in (0x01, 0x20, 0x80):
            b = bytearray(raw)
            b[i] ^= mask
            q.write_bytes(bytes(b))
            try:
                u = qio.load(q)
            except ValueError:
                rejected += 1
                continue
            assert same_bytes(u.data[:], qio.load(p).data[:])
    assert rejected > 2 * (8 + n)


def test_random_garbage(tmp_path):
    q = tmp_path / "junk.qe4"
    rng = np.random.default_rng(1)
    for size in (0, 3, 8, 16, 100, 5000):
        for _ in range(5):
            q.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            with pytest.raises(ValueError):
                qio.load(q)
    # a plausible length prefix followed by garbage
    q.write_bytes((40).to_bytes(8, "little") + bytes(range(40)) + b"\0" * 8)
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        qio.load(q)


def write_header(path, header, payload=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)


META = {"format": "qe4", "format_version": "1", "bits": "4", "dim": "4", "method": "minmax",
        "scale_dtype": "float16", "layout": "rowwise", "params": "{}"}


@pytest.mark.parametrize("change,payload,message", [
    ({}, b"\0" * 12, None),
    ({"__metadata__": dict(META, format="other")}, b"\0" * 12, "not a qe4 file"),
    ({"__metadata__": {k: v for k, v in META.items() if k != "format"}}, b"\0" * 12, "not a qe4 file"),
    ({"__metadata__": dict(META, format_version="2")}, b"\0" * 12, "unsupported qe4 format_version '2'"),
    ({"__metadata__": dict(META, bits="four")}, b"\0" * 12, "bits='four' is not an integer"),
    ({"__metadata__": dict(META, bits="7")}, b"\0" * 12, "bits must be one of"),
    ({"__metadata__": dict(META, dim="9")}, b"\0" * 12, "6 bytes per row"),
    ({"__metadata__": dict(META, params="{oops")}, b"\0" * 12, "params='{oops' is not valid UTF-8 JSON"),
    ({"__metadata__": dict(META, params="[1]")}, b"\0" * 12, "params must be a JSON object"),
    ({"__metadata__": dict(META, layout="diagonal")}, b"\0" * 12, "layout='diagonal'"),
    ({"__metadata__": dict(META, scale_dtype="bfloat16")}, b"\0" * 12, "scale_dtype must be one of"),
    ({"__metadata__": {k: v for k, v in META.items() if k != "dim"}}, b"\0" * 12, "missing"),
    ({"__metadata__": dict(META, bits=4)}, b"\0" * 12, "strings to strings"),
    ({"data": {"dtype": "F32", "shape": [2, 6], "data_offsets": [0, 48]}}, b"\0" * 48, "must be U8"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 13]}}, b"\0" * 13, "needs 12 bytes"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [1, 13]}}, b"\0" * 13, "without gaps"),
    ({"data": {"dtype": "U8", "shape": [2, -6], "data_offsets": [0, 12]}}, b"\0" * 12, "non-negative"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [12, 0]}}, b"\0" * 12, "begin <= end"),
    ({"data": {"dtype": "U8", "shape": [2, 6]}}, b"\0" * 12, "exactly dtype, shape and data_offsets"),
    ({"data": {"dtype": "U8", "shape": [12], "data_offsets": [0, 12]}}, b"\0" * 12, r"U8 \[n_rows, row_bytes\]"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 12]},
      "weights": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, b"\0" * 16,
     "unexpected tensor 'weights'"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 12]},
      "extra.x": {"dtype": "BF16", "shape": [1], "data_offsets": [12, 14]}}, b"\0" * 14,
     "dtype BF16"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 12]},
      "extra.x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12,
     "without gaps or overlaps"),
    ({"data": None}, b"", "exactly dtype"),
    ({"data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 12.0]}}, b"\0" * 12, "data_offsets"),
])
def test_malformed_headers(tmp_path, change, payload, message):
    header = {"__metadata__": META, "data": {"dtype": "U8", "shape": [2, 6], "data_offsets": [0, 12]}}
    header.update(change)
    q = tmp_path / "h.qe4"
    write_header(q, header, payload)
    if message is None:
        assert qio.load(q).n_rows == 2
        return
    with pytest.raises(ValueError, match=message):
        qio.load(q)


def test_duplicate_keys_and_non_object(tmp_path):
    q = tmp_path / "d.qe4"
    raw = b'{"data": {"dtype": "U8", "shape": [0, 6], "data_offsets": [0, 0]}, "data": 1}'
    q.write_bytes(len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(ValueError, match="duplicate key 'data'"):
        qio.load(q)
    write_header(q, [1, 2])
    with pytest.raises(ValueError, match="JSON list, not an object"):
        qio.load(q)


def test_huge_header_length(tmp_path):
    q = tmp_path / "big.qe4"
    q.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length .* out of range"):
        qio.load(q)
    q.write_bytes((1000).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="past the end of the file"):
        qio.read_metadata(q)


def test_plain_safetensors_is_not_qe4(tmp_path):
    from safetensors.numpy import save_file
    save_file({"weight": np.ones((2, 2), np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"not a qe4 file .*tensors: weight"):
        qio.read_metadata(tmp_path / "w.safetensors")


def test_npy_is_not_qe4(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="x.npy: not a valid safetensors file: it is a .npy array file"):
        qio.read_metadata(tmp_path / "x.npy")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        qio.load(tmp_path / "nope.qe4")


# --------------------------------------------------------------------------- atomicity

def fail_after(n_calls, exc):
    """A TableWriter._write that writes ``n_calls`` buffers (the last one half) and then raises."""
    calls = [0]
    real = qio.TableWriter._write

    def _write(self, buf):
        calls[0] += 1
        if calls[0] >= n_calls:
            buf = memoryview(buf).cast("B")
            real(self, buf[:len(buf) // 2])
            raise exc
        real(self, buf)
    return _write


@pytest.mark.parametrize("n_calls", [1, 2, 3])
@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file(tmp_path, monkeypatch, n_calls, exc):
    p = tmp_path / "t.qe4"
    old = table_of(n_rows=5)
    qio.save(old, p)
    before = p.read_bytes()
    monkeypatch.setattr(qio.TableWriter, "_write", fail_after(n_calls, exc))
    new = table_of(n_rows=50, method="two-tier", n_groups=2)
    with pytest.raises(type(exc)):
        qio.save(new, p)
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.qe4"]


def test_failed_save_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(qio.TableWriter, "_write",
                        fail_after(2, OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        qio.save(table_of(), tmp_path / "t.qe4")
    assert os.listdir(tmp_path) == []


def test_fsync_failure_discards(tmp_path, monkeypatch):
    def bad_fsync(fd):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(qio.os, "fsync", bad_fsync)
    with pytest.raises(OSError, match="I/O error"):
        qio.save(table_of(), tmp_path / "t.qe4")
    assert os.listdir(tmp_path) == []


def test_writer_chunks_equal_save(tmp_path):
    t = table_of(n_rows=100, dim=9, bits=2, method="greedy")
    qio.save(t, tmp_path / "a.qe4")
    with qio.TableWriter(tmp_path / "b.qe4", n_rows=100, bits=2, dim=9, method="greedy",
                         scale_dtype="float16", params=t.params) as w:
        for a in range(0, 100, 33):
            w.write(t.data[a:a + 33])
        assert not (tmp_path / "b.qe4").exists()     # published only on exit
    assert (tmp_path / "a.qe4").read_bytes() == (tmp_path / "b.qe4").read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "b.qe4").st_mode & 0o777 == 0o666 & ~umask   # not mkstemp's 0600


def test_writer_row_count_enforced(tmp_path):
    t = table_of(n_rows=10)
    kw = dict(n_rows=10, bits=4, dim=7, method="minmax", scale_dtype="float16")
    with pytest.raises(ValueError, match="only 4 of 10 rows"):
        with qio.TableWriter(tmp_path / "t.qe4", **kw) as w:
            w.write(t.data[:4])
    with pytest.raises(ValueError, match="too many rows"):
        with qio.TableWriter(tmp_path / "t.qe4", **kw) as w:
            w.write(t.data)
            w.write(t.data[:1])
    with pytest.raises(ValueError, match=r"chunk must be uint8 \[k, 8\], got uint8 \(10, 7\)"):
        with qio.TableWriter(tmp_path / "t.qe4", **kw) as w:
            w.write(t.data[:, :7])
    with pytest.raises(ValueError, match="chunk must be uint8"):
        with qio.TableWriter(tmp_path / "t.qe4", **kw) as w:
            w.write(t.data.astype(np.int16))
    assert os.listdir(tmp_path) == []


def test_writer_validates_metadata(tmp_path):
    with pytest.raises(ValueError, match="bits must be one of"):
        qio.TableWriter(tmp_path / "t", n_rows=1, bits=7, dim=4, method="m", scale_dtype="float16")
    with pytest.raises(ValueError, match="9 bytes per row"):
        qio.TableWriter(tmp_path / "t", n_rows=1, bits=4, dim=4, method="m",
                        scale_dtype="float16", row_bytes=9)
    # the row size comes from the layout registry (codebook: codes + 16 centroids)
    assert qio.TableWriter(tmp_path / "t", n_rows=1, bits=4, dim=4, method="m",
                           scale_dtype="float16", layout="codebook").row_bytes == 2 + 16 * 2
    with pytest.raises(ValueError, match=r"needs extras\['codebooks'\]"):
        qio.TableWriter(tmp_path / "t", n_rows=1, bits=4, dim=4, method="m",
                        scale_dtype="float16", layout="two-tier")
    with pytest.raises(ValueError, match="n_rows must be"):
        qio.TableWriter(tmp_path / "t", n_rows=-1, bits=4, dim=4, method="m", scale_dtype="float16")
    assert os.listdir(tmp_path) == []
