"""The registries (qe4.layouts, qe4.method_registry), the front end and the table type.

Every entry is checked for what it claims (resolvable functions, options whose
defaults pass their checks, row sizes that the compiled twin allocates), every
consumer is checked to take its lists from the registries, and the table type
is checked to be valid when built and to stay valid (issue 10: F1, F13, F14, F15, F17).
"""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qe4
from conftest import float_dtype_configs
from qe4 import engines as E
from qe4 import frontend
from qe4 import io as qio
from qe4 import layouts as L
from qe4 import method_registry as M
from qe4 import stream

try:
    import qe4_fast
    ENGINES = {"reference": qe4, "fast": qe4_fast}
except ImportError:
    qe4_fast = None
    ENGINES = {"reference": qe4}

F32 = np.float32
METHOD_NAMES = M.names()
X = np.random.default_rng(9).standard_normal((23, 13)).astype(F32) * 2


def _cases():
    """(method, bits, scale_dtype) for every method, bit width and float dtype it offers."""
    out = []
    for m in M.METHODS.values():
        for b, sd in float_dtype_configs(m.layout):
            if b in m.allowed_bits:
                out.append((m.name, b, sd))
    return out


CASES = _cases()


# --------------------------------------------------------------------------- entries

@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_entry_is_complete(name):
    m = M.get(name)
    assert m.family in M.FAMILIES and m.layout in L.LAYOUTS
    assert set(m.allowed_bits) <= set(m.layout_entry.bits)
    assert callable(m.reference_function()) and callable(m.encoder())
    assert callable(M.resolve(m.family_entry.check_values))
    if qe4_fast is not None:
        assert callable(m.compiled_encoder())
    for opt in m.options:                     # defaults pass their own checks unchanged
        assert opt(opt.default) == opt.default and opt.doc
    assert set(m.call) <= set(frontend.check_request(m.allowed_bits[0], name).arguments())
    assert M.by_code(m.code) is m


def test_codes_are_unique_and_today_s():
    assert [M.get(n).code for n in ("minmax", "greedy", "exhaustive", "aciq-laplace",
                                    "aciq-gauss")] == [0, 1, 2, 3, 4]
    assert len({m.code for m in M.METHODS.values()}) == len(M.METHODS)
    assert [lay.code for lay in L.LAYOUTS.values()] == [0, 1, 2, 3]     # 3: mixed
    with pytest.raises(ValueError, match="no method has code 99"):
        M.by_code(99)
    with pytest.raises(ValueError, match="layout must be one of"):
        L.get("sparse")


def test_rowwise_method_codes_match_the_compiled_kernels():
    if qe4_fast is None:
        pytest.skip("qe4_fast is not built")
    from qe4_fast import _rowwise
    assert _rowwise.METHOD_CODES == {n: M.get(n).code for n in M.names(family="rowwise")}


@pytest.mark.parametrize("method, bits, scale_dtype", CASES)
def test_row_sizes_come_from_the_layout(method, bits, scale_dtype):
    """Both packages allocate the rows the layout registry describes."""
    request = frontend.check_request(bits, method, scale_dtype=scale_dtype, kwargs={})
    for name, mod in ENGINES.items():
        t = mod.quantize(X, bits, method, scale_dtype=scale_dtype)
        assert t.row_bytes == request.row_bytes(X.shape[1]) == t.layout_entry.row_bytes(
            t.dim, t.bits, t.float_dtype, t.extras), name
        fields = t.fields()
        assert fields[0].name == "codes" and fields[0].nbytes == L.code_bytes(t.dim, bits)
        assert [f.offset for f in fields] == list(np.cumsum([0] + [f.nbytes for f in fields[:-1]]))
        assert t.params == request.params and t.method == method and t.layout == request.layout.name
        # every stored byte counts: the rows and every extra (shared codebooks, ...)
        stored = t.row_bytes * t.n_rows + sum(a.nbytes for a in t.extras.values())
        assert t.bits_per_element == stored * 8 / (t.n_rows * t.dim), name


@pytest.mark.parametrize("bits", [0, 9, 2.0, True, None])
def test_pack_codes_refuses_widths_it_cannot_pack(bits):
    with pytest.raises(ValueError, match=f"bit widths 1 to 8, got {bits!r}"):
        L.pack_codes(np.zeros((1, 4), np.uint8), bits)
    with pytest.raises(ValueError, match=f"bit widths 1 to 8, got {bits!r}"):
        L.unpack_codes(np.zeros((1, 2), np.uint8), bits, 4)


@pytest.mark.parametrize("bits", L.PACK_BITS)
def test_pack_codes_is_a_little_endian_bit_stream(bits):
    """Element c holds stream bits c*bits .. c*bits+bits-1; torch's packing where bits | 8."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2 ** bits, (5, 11), dtype=np.uint8)
    packed = L.pack_codes(codes, bits)
    stream = 0
    for c in range(codes.shape[1]):
        stream |= int(codes[1, c]) << (c * bits)
    want = stream.to_bytes(L.code_bytes(11, bits), "little")
    assert packed[1].tobytes() == want
    if 8 % bits == 0:       # torch's rule: byte c // epb, bit offset (c % epb) * bits
        epb = 8 // bits
        torch_rule = np.zeros((5, -(-11 // epb)), np.uint8)
        for c in range(11):
            torch_rule[:, c // epb] |= codes[:, c] << np.uint8((c % epb) * bits)
        assert packed.tobytes() == torch_rule.tobytes()


# --------------------------------------------------------------------------- consumers

def test_lists_come_from_the_registry():
    from qe4 import cli, dask as qd
    assert qe4.methods() == METHOD_NAMES
    assert stream.STREAMABLE == M.names(per_row=True)
    assert qd.CROSS_ROW_METHODS == M.names(per_row=False)
    q = cli.build_parser()._subparsers._group_actions[0].choices["quantize"]
    acts = {a.dest: a for a in q._actions}
    assert tuple(acts["method"].choices) == METHOD_NAMES
    for m in METHOD_NAMES:
        assert m in acts["method"].help
    flags = {o.name for m in M.METHODS.values() for o in m.options} - {"n_bins", "ratio"}
    assert {f"opt_{o}" for o in flags} <= set(acts)
    assert tuple(acts["bits"].choices) == L.BITS


def test_methods_does_not_swallow_import_errors(monkeypatch):
    """A broken algorithm module is an ImportError when its method runs, never an unknown method."""
    monkeypatch.setitem(sys.modules, "qe4.codebook", None)     # import now raises ImportError
    assert "kmeans" in qe4.methods()
    with pytest.raises(ImportError):
        qe4.quantize(X, 4, "kmeans")


def test_cli_option_flags_reach_the_method(tmp_path, capsys):
    from qe4 import cli
    np.save(tmp_path / "x.npy", X)
    code = cli.main(["quantize", str(tmp_path / "x.npy"), str(tmp_path / "k.qe4"), "--engine",
                     "reference", "--method", "kmeans", "--max-iter", "3", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert qio.load(tmp_path / "k.qe4") == qe4.quantize(X, 4, "kmeans", max_iter=3)
    code = cli.main(["quantize", str(tmp_path / "x.npy"), str(tmp_path / "g.qe4"), "--engine",
                     "reference", "--method", "greedy", "--n-groups", "3"])
    assert code == 2
    assert "unexpected keyword arguments for method 'greedy': ['n_groups']" in capsys.readouterr().err


# --------------------------------------------------------------------------- one front end

BAD_REQUESTS = [
    (dict(bits=7), ValueError, r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 7"),
    (dict(method="best"), ValueError, "method must be one of"),
    (dict(method="kmeans", bits=8), ValueError, "bits=8 is not supported by method 'kmeans'"),
    (dict(method="minmax", max_iter=3), TypeError, r"unexpected keyword arguments .*\['max_iter'\]"),
    (dict(n_bins=0), ValueError, r"n_bins must be in \[1, 1000000\], got 0"),
    (dict(method="kmeans", ratio=1.0), ValueError, r"ratio must be in \[0, 1\), got 1.0"),
    (dict(method="two-tier", n_groups=0), ValueError, "n_groups must be in"),
    (dict(scale_dtype="int8"), ValueError, "scale_dtype must be one of"),
]


@pytest.mark.parametrize("kw, exc, msg", BAD_REQUESTS)
def test_every_entry_point_checks_alike(kw, exc, msg, tmp_path):
    """qe4.quantize, qe4_fast.quantize and streaming raise the same error for the same call."""
    kw = dict(kw)
    bits, method = kw.pop("bits", 4), kw.pop("method", "greedy")
    np.save(tmp_path / "x.npy", X)
    calls = [lambda mod=mod: mod.quantize(X, bits, method, **kw) for mod in ENGINES.values()]
    if method not in M.METHODS or M.get(method).per_row:
        calls.append(lambda: stream.quantize_file(tmp_path / "x.npy", tmp_path / "o.qe4", bits, method,
                                                  engine="reference", **kw))
    messages = set()
    for call in calls:
        with pytest.raises(exc, match=msg) as info:
            call()
        messages.add(str(info.value))
    assert len(messages) == 1
    assert not (tmp_path / "o.qe4").exists()


def test_n_threads_with_the_reference_is_one_check():
    message = "n_threads=2 applies to engine='fast' only (engine='reference' runs on one thread)"
    assert E.check_n_threads("reference", None) is None and E.check_n_threads("reference", 1) == 1
    with pytest.raises(ValueError) as info:
        E.engine("reference", 2)
    assert str(info.value) == message
    t = qe4.quantize(X, 4, "minmax")
    from qe4 import shards as S
    with pytest.raises(ValueError) as info:
        S.ShardedTable.embedding_bag(_one_shard(t), [0], [0], engine="reference", n_threads=2)
    assert str(info.value) == message


def _one_shard(table, tmp=[]):
    import tempfile
    from qe4 import shards as S
    d = tempfile.mkdtemp()
    tmp.append(d)
    return S.write_sharded(table, os.path.join(d, "s"), rows_per_shard=100)


@pytest.mark.skipif(qe4_fast is None, reason="qe4_fast is not built")
def test_shards_pass_n_threads_to_the_fast_engine(monkeypatch):
    seen = []
    real = qe4_fast.embedding_bag

    def spy(*a, n_threads=None, **k):
        seen.append(n_threads)
        return real(*a, n_threads=n_threads, **k)
    monkeypatch.setattr(qe4_fast, "embedding_bag", spy)
    st = _one_shard(qe4.quantize(X, 4, "minmax"))
    st.embedding_bag([0, 3], [0], engine="fast", n_threads=1)
    assert seen == [1]


# --------------------------------------------------------------------------- tables (issue 10)

def _tables():
    return [qe4.quantize(X, 4, m) for m in METHOD_NAMES]


@pytest.mark.parametrize("field", ["data", "bits", "dim", "method", "scale_dtype", "layout",
                                   "extras", "params", "float_dtype", "_data", "anything"])
def test_tables_are_read_only(field):
    """F1: a field cannot be set after construction, so no kernel sees sizes that disagree."""
    for t in _tables():
        with pytest.raises(AttributeError, match="read-only"):
            setattr(t, field, 7)


def test_views_handed_out_cannot_reshape_the_table(same_bytes):
    for t in _tables():
        before = t.dequantize()
        d = t.data
        d.shape = (d.size,)                         # reshaping the view handed out...
        assert t.data.shape == (t.n_rows, t.row_bytes)     # ...does not reach the table
        if t.extras:
            with pytest.raises(TypeError):
                t.extras["codebooks"] = np.zeros((1, 16), np.float16)
            t.extras["codebooks"].shape = (-1,)
            assert t.extras["codebooks"].ndim == 2
        p = t.params
        p["n_bins"] = 1
        assert t.params != p
        same_bytes(t.dequantize(), before)


def test_pickled_tables_are_rebuilt_and_checked():
    for t in _tables():
        assert pickle.loads(pickle.dumps(t)) == t


@pytest.mark.skipif(qe4_fast is None, reason="qe4_fast is not built")
def test_editing_a_table_no_longer_crashes():
    """F1's reproducers, in a subprocess: each raises AttributeError, no signal."""
    code = textwrap.dedent("""
        import numpy as np, qe4_fast
        t = qe4_fast.quantize(np.ones((1000, 64), np.float32), 4, "minmax")
        for field, value in (("dim", 10 ** 7), ("data", np.zeros((1000, 2), np.uint8)),
                             ("scale_dtype", "float32"), ("bits", 2)):
            try:
                setattr(t, field, value)
            except AttributeError:
                pass
            else:
                raise SystemExit(f"{field} was set")
        print(qe4_fast.embedding_bag(t, np.arange(10), np.array([0, 5])).shape,
              qe4_fast.to_tbe(t).shape)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(qe4.__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "64)", "(1000,", "36)"]


BAD_TABLES = [
    (dict(bits=4, dim=64.9), TypeError, "dim must be an integer, got 64.9"),          # F17
    (dict(bits=4, dim=64.0), TypeError, "dim must be an integer, got 64.0"),
    (dict(bits=4, dim=0), ValueError, "dim must be >= 1, got 0"),
    (dict(bits=4.0, dim=64), TypeError, "bits must be an integer"),
    (dict(bits=4, dim=64, layout="codebook"), ValueError,                               # F13
     "data has 36 bytes per row; a codebook table of dim 64 at 4 bits needs 64"),
    (dict(bits=8, dim=64, layout="codebook"), ValueError, r"a codebook table must have bits in \(2, 4\)"),
    (dict(bits=4, dim=64, layout="two-tier"), ValueError, r"needs extras\['codebooks'\]"),
    (dict(bits=4, dim=70, layout="two-tier", extras={"codebooks": np.zeros((3, 8), np.float16)}),
     ValueError, r"extras\['codebooks'\] must have shape \[n_groups, 16\], got \(3, 8\)"),
    (dict(bits=4, dim=70, layout="two-tier", extras={"codebooks": np.zeros((3, 16), np.float32)}),
     ValueError, r"extras\['codebooks'\] must have dtype float16, got float32"),
    (dict(bits=4, dim=64, extras={"codebooks": np.zeros((1, 16), np.float16)}), ValueError,  # F14
     r"extras \['codebooks'\] are not part of a rowwise table"),
    (dict(bits=4, dim=64, layout="sparse"), ValueError, "layout must be one of"),
]


@pytest.mark.parametrize("kw, exc, msg", BAD_TABLES)
def test_malformed_tables_are_refused_when_built(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        qe4.QuantizedTable(np.zeros((5, 36), np.uint8), **kw)


def test_integral_dims_of_any_integer_type_are_taken():
    t = qe4.QuantizedTable(np.zeros((5, 36), np.uint8), bits=np.int64(4), dim=np.int32(64))
    assert type(t.dim) is int and type(t.bits) is int and t.dim == 64


@pytest.mark.parametrize("kw, exc, msg", [c for c in BAD_TABLES if "layout" in c[0]
                                          and c[0]["layout"] != "sparse"] + BAD_TABLES[9:10])
def test_malformed_files_are_refused_at_load_and_by_info(kw, exc, msg, tmp_path, capsys):
    """F13/F14: the same faults in a file: qe4.load and read_metadata name the file, and
    `qe4 info` exits 2 instead of describing it."""
    from safetensors.numpy import save_file
    from qe4 import cli
    kw = dict(kw)
    meta = {"format": "qe4", "format_version": "1", "bits": str(kw.pop("bits")),
            "dim": str(kw.pop("dim")), "method": "x", "scale_dtype": "float16",
            "layout": kw.pop("layout", "rowwise"), "params": "{}"}
    tensors = {"data": np.zeros((5, 36), np.uint8)}
    tensors.update({"extra." + k: v for k, v in kw.pop("extras", {}).items()})
    p = tmp_path / "bad.qe4"
    save_file(tensors, str(p), metadata=meta)
    for read in (qio.load, qio.read_metadata, lambda q: qio.load(q, mmap=False)):
        with pytest.raises(ValueError, match=msg) as info:
            read(p)
        assert str(info.value).startswith(f"{p}: ")
    assert cli.main(["info", str(p)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(p) in err


def test_out_of_range_group_ids_in_a_file(tmp_path, capsys):
    """F13: a two-tier file whose group ids exceed its codebooks: load(mmap=False) and
    `qe4 info` refuse it; a memory-mapped table raises at the first lookup of such a row."""
    from qe4 import cli
    t = qe4.quantize(X, 4, "two-tier", n_groups=3)
    data = t.data.copy()
    data[7, -1] = 200
    bad = qe4.QuantizedTable(data, bits=4, dim=t.dim, method="two-tier", layout="two-tier",
                             extras=t.extras)
    p = tmp_path / "ids.qe4"
    qio.save(bad, p)
    with pytest.raises(ValueError, match=f"{p}: data: a row's group id is out of range for 3"):
        qio.load(p, mmap=False)
    assert cli.main(["info", str(p)]) == 2
    assert "group id is out of range" in capsys.readouterr().err
    mapped = qio.load(p)
    for mod in ENGINES.values():
        with pytest.raises(ValueError, match="group id is out of range for 3 codebooks"):
            mod.dequantize(mapped)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_zero_row_tables_agree(method, same_bytes, tmp_path):
    """F15: a 0-row table of every layout dequantizes to float32 [0, dim] in both packages."""
    t = qe4.quantize(X, 4, method)
    empty = qe4.QuantizedTable(t.data[:0], bits=4, dim=t.dim, method=method, layout=t.layout,
                               scale_dtype=t.scale_dtype, extras=t.extras)
    qio.save(empty, tmp_path / "e.qe4")
    for table in (empty, qio.load(tmp_path / "e.qe4")):
        for mod in ENGINES.values():
            same_bytes(mod.dequantize(table), np.zeros((0, t.dim), F32))
            same_bytes(mod.embedding_bag(table, np.zeros(0, np.int64), np.zeros(2, np.int64)),
                       np.zeros((2, t.dim), F32))


def test_torch_module_weight_and_bits_are_read_only(same_bytes):
    """F1 for qe4.torch.QuantizedEmbeddingBag: weight/bits/dim cannot be replaced, and a
    buffer changed in place to another shape is refused before torch's kernel reads it."""
    torch = pytest.importorskip("torch")
    from qe4.torch import QuantizedEmbeddingBag
    t = qe4.quantize(X[:, :12], 4, "greedy")
    m = QuantizedEmbeddingBag(t)
    for name, value in (("weight", torch.zeros((23, 2), dtype=torch.uint8)), ("bits", 2), ("dim", 99)):
        with pytest.raises(AttributeError, match=f"QuantizedEmbeddingBag.{name} is read-only"):
            setattr(m, name, value)
    idx, off = torch.tensor([0, 22, 5]), torch.tensor([0, 1])
    want = qe4.embedding_bag(t, idx.numpy(), off.numpy())
    same_bytes(m(idx, off).numpy(), want)
    m.load_state_dict(m.state_dict())                   # in place, same shape: still fine
    same_bytes(m(idx, off).numpy(), want)
    m.weight.data = torch.zeros((2, 2), dtype=torch.uint8)
    with pytest.raises(ValueError, match="weight was changed after construction"):
        m(idx, off)


@pytest.mark.skipif(qe4_fast is None, reason="qe4_fast is not built")
def test_unknown_codes_and_widths_raise_in_the_compiled_twin(monkeypatch):
    """A method or bit width registered without a compiled kernel is a clear error in
    qe4_fast, never another method or width in its place; the reference runs it."""
    import dataclasses
    fake = dataclasses.replace(M.get("minmax"), name="new-range", code=99)
    monkeypatch.setitem(M.METHODS, "new-range", fake)
    same = qe4.quantize(X, 4, "new-range")
    assert same.data.tobytes() == qe4.quantize(X, 4, "minmax").data.tobytes()
    with pytest.raises(ValueError, match="no compiled row kernel for method 'new-range' .code 99"):
        qe4_fast.quantize(X, 4, "new-range")
    kfake = dataclasses.replace(M.get("kmeans"), name="new-kmeans", code=98)
    monkeypatch.setitem(M.METHODS, "new-kmeans", kfake)
    with pytest.raises(ValueError, match="no compiled codebook kernel for method 'new-kmeans'"):
        qe4_fast.quantize(X, 4, "new-kmeans")
    widths = tuple(sorted(set(L.RowwiseLayout.bits) | {7}))
    monkeypatch.setattr(L.RowwiseLayout, "bits", widths)
    monkeypatch.setattr(L, "BITS", tuple(sorted(set(L.BITS) | {7})))
    with pytest.raises(ValueError, match="row kernels do not implement bits=7"):
        qe4_fast.quantize(X, 7, "minmax")
    ref = qe4.quantize(X, 7, "minmax")          # the reference runs it: a 7-bit bit stream
    assert ref.row_bytes == L.code_bytes(X.shape[1], 7) + 4 and int(ref.codes().max()) <= 127
