"""qe4.export: every target layout read back by its consumer's own reader, hand-worked bytes,
the search never worse than min/max, and bad input (layouts: docs/exports.rst)."""

import ctypes
import itertools
import os

import numpy as np
import pytest

from qe4 import export as E
from qe4.cli import main
from qe4.datasets import load_glove_top20k
from qe4.metrics import table_error

ROWS = np.array([0, 1, 2, 3, 7, 50, 99, 100, 119, 2], np.int64)   # a repeat, the heavy-tailed top rows


@pytest.fixture(scope="module")
def glove():
    """120 GloVe rows (the first 100 are the heavy-tailed most frequent ones), 50 and 64 columns."""
    x, _ = load_glove_top20k()
    x = np.concatenate([x[:100], x[-20:]])
    x64 = np.concatenate([x, x[:, :14]], 1)
    return {50: np.ascontiguousarray(x), 64: np.ascontiguousarray(x64),
            256: np.ascontiguousarray(np.concatenate([x64, -x64[:, ::-1], x64 * 2, x64[::-1]], 1))}


def _cases():
    """Every format with every combination of its option choices (from the registry)."""
    for fmt, target in E.FORMATS.items():
        names = sorted(target.choices)
        for values in itertools.product(*(target.choices[n] for n in names)):
            yield pytest.param(fmt, dict(zip(names, values)),
                               id=fmt + "-" + "-".join(str(v) for v in values))


def _group_options(fmt, dim):
    return {"executorch": {"group_size": 32 if dim % 32 == 0 else None},
            "compressed-tensors": {"group_size": 32 if dim % 32 == 0 else None},
            "onnx": {"block_size": 16}, "gguf": {}}[fmt]


# --------------------------------------------------------------------------- consumers

def _read_gguf(e, tmp_path, idx):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "t.gguf"
    e.save(path)
    t = gguf.GGUFReader(str(path)).tensors[0]
    assert t.name == "token_embd.weight"
    assert t.tensor_type == getattr(gguf.GGMLQuantizationType, e.options["qtype"])
    assert [int(s) for s in t.shape] == [e.shape[1], e.shape[0]]   # ggml order: ne0 = dim
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)[idx]


def _read_onnx(e, tmp_path, idx):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "t.onnx"
    e.save(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"indices": idx})[0]


def _torch_tensors(e):
    import torch
    out = {}
    for k, v in e.tensors.items():
        t = torch.from_numpy(np.array(v))
        out[k] = t.view(torch.bfloat16) if e.dtypes[k] == "bfloat16" else t
    return out


def _read_compressed_tensors(e, tmp_path, idx):
    pytest.importorskip("torch")
    base = pytest.importorskip("compressed_tensors.compressors.pack_quantized.base")
    from compressed_tensors.quantization import QuantizationConfig
    scheme = QuantizationConfig.model_validate(e.quantization_config()).config_groups["group_0"]
    w = base.PackedQuantizationCompressor.decompress(_torch_tensors(e), scheme)["weight"]
    return w.float().numpy()[idx]


def _executorch_runtime():
    """ExecuTorch's runtime with its quantized CPU kernels registered (they register when their
    shared library loads; the wheel's Python side does not load it for the runtime)."""
    pytest.importorskip("torch")
    et = pytest.importorskip("executorch")
    pytest.importorskip("executorch.exir.passes._quant_patterns_and_replacements")
    lib = os.path.join(list(et.__path__)[0], "lib", "libexecutorch_kernels_quantized.so")
    if not os.path.exists(lib):
        pytest.skip("executorch wheel without libexecutorch_kernels_quantized.so")
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    from executorch.runtime import Runtime
    return Runtime.get()


def _executorch_program(e):
    import torch
    t = _torch_tensors(e)
    op = getattr(torch.ops.quantized_decomposed, e.options["op"]).dtype
    qmin, qmax = e.options["weight_quant_min"], e.options["weight_quant_max"]
    out_dtype = getattr(torch, e.options["scale_dtype"])

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in t.items():
                self.register_buffer(k, v)
            self.zp = t.get("weight_zero_points")

        def forward(self, indices):
            return op(self.weight, self.weight_scales, self.zp, qmin, qmax, indices, dtype=out_dtype)

    return Lookup()


# Lowering a program takes ~2.5 s, so the ExecuTorch kernel runs on these cases (every
# float16-with-zero-point case: the kernel rounds its float32 result to float16 there) and the
# rest go through the op's Python reference, which is exact for them (one rounding).
ET_KERNEL = {(2, "float16", True), (4, "float16", True), (8, "float16", True),
             (4, "float32", True), (8, "float32", False)}


def _read_executorch(e, tmp_path, idx):
    import torch
    from executorch.exir import to_edge
    o = e.options
    fp16_zp = o["scale_dtype"] == "float16" and o["zero_point"]
    if not fp16_zp and ((o["bits"], o["scale_dtype"], o["zero_point"]) not in ET_KERNEL
                        or e.shape[1] != 64):
        pytest.importorskip("executorch.exir.passes._quant_patterns_and_replacements")
        return _executorch_program(e)(torch.from_numpy(idx)).float().numpy()
    rt = _executorch_runtime()
    module = _executorch_program(e)
    edge = to_edge(torch.export.export(module, (torch.from_numpy(idx),)))
    program = rt.load_program(edge.to_executorch().buffer)
    out = program.load_method("forward").execute([torch.from_numpy(idx)])[0]
    return out.float().numpy()


READERS = {"gguf": _read_gguf, "onnx": _read_onnx, "compressed-tensors": _read_compressed_tensors,
           "executorch": _read_executorch}


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                            "ignore::UserWarning")
@pytest.mark.parametrize("dim", [64, 50])
@pytest.mark.parametrize("fmt, options", list(_cases()))
def test_consumer_reads_back_the_exact_values(glove, tmp_path, same_bytes, fmt, options, dim):
    """The consumer's own reader reconstructs exactly ``Export.dequantize()`` (bytes)."""
    x = glove[256] if options.get("qtype") == "Q4_K" and dim == 64 else glove[dim]
    try:
        e = E.export(x, fmt, **options, **_group_options(fmt, dim))
    except ValueError as exc:        # layouts that cannot hold 50 columns say so
        assert dim == 50 and ("divisible" in str(exc) or "even" in str(exc)), exc
        return
    got = READERS[fmt](e, tmp_path, ROWS)
    same_bytes(np.asarray(got, np.float32), e.dequantize()[ROWS])
    assert e.error == pytest.approx(table_error(x, e.dequantize()), rel=1e-9)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_executorch_python_reference_op_agrees_with_float32_scales(glove, same_bytes, bits):
    """The op's Python reference (what torch.export traces) gives the same values as the
    kernel for float32 scales.  (With float16 scales it computes in float16: documented.)"""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch.exir.passes._quant_patterns_and_replacements")
    e = E.to_executorch(glove[64], bits, group_size=16)
    got = _executorch_program(e)(torch.from_numpy(ROWS))
    same_bytes(got.numpy(), e.dequantize()[ROWS])


# --------------------------------------------------------------------------- hand-worked bytes

HALF = (np.arange(16, dtype=np.float32) - 8) * np.float32(0.5)      # -4.0, -3.5, ..., 3.5


def test_executorch_4bit_bytes_even_element_in_the_high_nibble(same_bytes):
    # codes q = x / 0.5 = -8..7 stored as q + 8 = 0..15; byte k = (u[2k] << 4) | u[2k+1]
    e = E.to_executorch(HALF[None], 4, zero_point=False)
    same_bytes(e.tensors["weight"], np.array([[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]], np.uint8))
    same_bytes(e.tensors["weight_scales"], np.array([[0.5]], np.float32))
    assert "weight_zero_points" not in e.tensors and e.error == 0.0
    assert (e.options["weight_quant_min"], e.options["weight_quant_max"]) == (-8, 7)


def test_executorch_2bit_and_8bit_bytes(same_bytes):
    # 2 bits: codes -2..1 stored as q + 2 = 0..3, element 4k + i at bits 2i: 0b11_10_01_00
    e = E.to_executorch(np.array([[-2.0, -1.0, 0.0, 1.0]], np.float32), 2, zero_point=False)
    same_bytes(e.tensors["weight"], np.array([[0xE4]], np.uint8))
    e = E.to_executorch(np.array([[-1.0, 0.5, 0.0, 0.25]], np.float32), 8, zero_point=False)
    same_bytes(e.tensors["weight"], np.array([[-128, 64, 0, 32]], np.int8))   # scale 1/128
    same_bytes(e.tensors["weight_scales"], np.array([[2.0 ** -7]], np.float32))


def test_executorch_float_zero_point_bytes(same_bytes):
    # x = 1, 2, ..., 16: scale 1, zero point -8 - 1 / 1 = -9 (float), codes x - 9 = -8..7
    x = np.arange(1, 17, dtype=np.float32)[None]
    e = E.to_executorch(x, 4, search="minmax")
    same_bytes(e.tensors["weight_scales"], np.array([[1.0]], np.float32))
    same_bytes(e.tensors["weight_zero_points"], np.array([[-9.0]], np.float32))
    same_bytes(e.tensors["weight"], np.array([[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]], np.uint8))
    same_bytes(e.dequantize(), x)


def test_gguf_q4_0_bytes_value_j_low_nibble_value_j_plus_16_high(same_bytes):
    # d = max / -8 = -4 / -8 = 0.5 (fp16 0x3800); codes q - 8 = x / 0.5: first half 0..15,
    # second half (reversed) 15..0; byte j = u[j] | u[j + 16] << 4
    x = np.concatenate([HALF, HALF[::-1]])[None]
    e = E.to_gguf(x, "Q4_0")
    expect = [0x00, 0x38] + [j | (15 - j) << 4 for j in range(16)]
    same_bytes(e.tensors["blocks"], np.array([expect], np.uint8))
    assert e.bits_per_weight == 4.5 and e.error == 0.0


def test_gguf_q8_0_and_q4_1_bytes(same_bytes):
    # Q8_0: extreme -16 -> d = -16 / -128 = 0.125 (fp16 0x3000), codes x / d = 8 * (k - 16)
    x = (np.arange(32, dtype=np.float32) - 16)[None]
    e = E.to_gguf(x, "Q8_0")
    codes = (8 * (np.arange(32) - 16)).astype(np.int8).view(np.uint8)
    same_bytes(e.tensors["blocks"], np.concatenate([[0x00, 0x30], codes]).astype(np.uint8)[None])
    # Q4_1: x = 1 + (k mod 16): m = 1.0 (0x3C00), d = 15 / 15 = 1.0, codes k mod 16
    x = (1 + np.arange(32) % 16).astype(np.float32)[None]
    e = E.to_gguf(x, "Q4_1", search="minmax")
    expect = [0x00, 0x3C, 0x00, 0x3C] + [j | j << 4 for j in range(16)]
    same_bytes(e.tensors["blocks"], np.array([expect], np.uint8))
    assert e.bits_per_weight == 5.0 and e.error == 0.0


def test_gguf_q4_k_bytes(same_bytes):
    """One super-block worked by hand: group j holds j * 0.5 + k * 0.25 for k = 0..15 (twice):
    scale_j = 0.25, min_j = j / 2, so d = 0.25 / 63 rounded, dmin = -m, and the codes k."""
    k = np.tile(np.arange(16, dtype=np.float32), 2)
    x = np.concatenate([np.float32(j * 0.5) + k * np.float32(0.25) for j in range(8)])[None]
    e = E.to_gguf(x, "Q4_K", search="minmax")
    b = e.tensors["blocks"][0]
    assert b.size == 144 and e.bits_per_weight == 4.5
    d, dmin = b[:4].view("<f2").astype(np.float32)
    sc = np.concatenate([b[4:8] & 63, (b[12:16] & 15) | ((b[4:8] >> 6) << 4)])
    mn = np.concatenate([b[8:12] & 63, (b[12:16] >> 4) | ((b[8:12] >> 6) << 4)])
    # llama.cpp's decode (get_scale_min_k4, low nibbles = values l, high = l + 32 per 64)
    q = np.stack([b[16:].reshape(4, 32) & 15, b[16:].reshape(4, 32) >> 4], 1).reshape(-1)
    dl, ml = np.repeat(d * sc.astype(np.float32), 32), np.repeat(dmin * mn.astype(np.float32), 32)
    same_bytes((dl * q - ml).astype(np.float32)[None], e.dequantize())
    same_bytes(q.astype(np.uint8), np.tile(np.arange(16, dtype=np.uint8), 16))
    assert dmin <= 0 and mn[0] == 0 and (np.diff(mn.astype(int)) >= 0).all()
    assert e.error < 1e-6


def test_gguf_q4_k_beats_llama_cpp(same_bytes):
    """N(0, 1) rows at 4.5 bits per element: qe4's Q4_K search against llama.cpp's own
    quantizer with its weighted search, 0.00500 (issue 12's measurement; the gguf package
    cannot quantize Q4_K, so the figure is quoted)."""
    x = np.random.default_rng(0).standard_normal((400, 256), dtype=np.float32)
    e = E.to_gguf(x, "Q4_K")
    assert e.bits_per_weight == 4.5 and e.error < 0.00500


def test_onnx_4bit_bytes_even_element_in_the_low_nibble(same_bytes):
    # no zero points: the operator uses 8, so codes are x / 0.5 + 8 = 0..15; byte k = u[2k] | u[2k+1] << 4
    e = E.to_onnx(HALF[None], 4, block_size=16, zero_point=False)
    same_bytes(e.tensors["data"], np.array([[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]], np.uint8))
    same_bytes(e.tensors["scales"], np.array([[0.5]], np.float32))
    # zero points of blocks 2k and 2k + 1 share a byte, block 2k in the low nibble
    x = np.concatenate([np.arange(1, 17), np.arange(3, 19), np.arange(5, 21)]).astype(np.float32)[None]
    e = E.to_onnx(x, 4, block_size=16, search="minmax")
    # block b = value 1 + 2b .. 16 + 2b: scale 1, zero point rint(0 - (1 + 2b)) clipped at 0
    same_bytes(e.tensors["zero_points"], np.array([[0x00, 0x00]], np.uint8))
    assert e.tensors["scales"].shape == (1, 3)


def test_compressed_tensors_int32_words(same_bytes):
    # codes -8..7 stored as q + 8 = 0..15, value c at bit 4 * (c % 8) of word c // 8
    e = E.to_compressed_tensors(HALF[None], 4)
    same_bytes(e.tensors["weight_packed"], np.array([[0x76543210, 0xFEDCBA98 - 2 ** 32]], np.int32))
    same_bytes(e.tensors["weight_shape"], np.array([1, 16], np.int64))
    same_bytes(e.tensors["weight_scale"], np.array([[0x3F00]], np.uint16))   # bfloat16 0.5
    assert e.dtypes["weight_scale"] == "bfloat16"


def test_compressed_tensors_zero_points_packed_down_the_rows(same_bytes):
    # 9 rows of 1..16 + r: scale 1, zero point rint(-8 - (1 + r)) clipped to -8; 9 zero points
    # of 4 bits along the rows fill two int32 words per group column (8 + 1 values)
    x = (np.arange(1, 17)[None] + np.arange(9)[:, None]).astype(np.float32) * np.float32(0.0625)
    e = E.to_compressed_tensors(x, 4, symmetric=False, scale_dtype="float32", search="minmax")
    assert e.tensors["weight_zero_point"].shape == (2, 1)
    zp = e.tensors["weight_zero_point"].view(np.uint32)
    codes = [(int(zp[w, 0]) >> (4 * k)) & 0xF for w in range(2) for k in range(8)][:9]
    s = e.tensors["weight_scale"][:, 0]
    expect = np.clip(np.rint(np.float32(-8) - x[:, 0] / s), -8, 7).astype(int) + 8
    assert codes == list(expect)


# --------------------------------------------------------------------------- the search

@pytest.mark.parametrize("fmt, options", list(_cases()))
def test_search_is_never_worse_than_minmax(glove, fmt, options):
    x = glove[256] if options.get("qtype") == "Q4_K" else glove[64]
    opts = {**options, **_group_options(fmt, 64)}
    searched = E.export(x, fmt, **opts)
    plain = E.export(x, fmt, **opts, search="minmax")
    assert searched.error <= plain.error
    assert searched.bits_per_weight == plain.bits_per_weight


@pytest.mark.parametrize("qtype", [t for t in E.GGUF_TYPES if t != "Q4_K"])   # gguf cannot
def test_gguf_beats_the_gguf_reference_quantizer(glove, qtype):           # quantize Q4_K
    gguf = pytest.importorskip("gguf")
    x = glove[64]
    t = getattr(gguf.GGMLQuantizationType, qtype)
    ref = gguf.quants.dequantize(gguf.quants.quantize(x, t), t)
    e = E.to_gguf(x, qtype)
    assert e.error < table_error(x, ref)
    assert E.to_gguf(x, qtype, search="minmax").error <= table_error(x, ref) * (1 + 1e-6)


def test_two_bit_asymmetric_grid_reaches_the_symmetric_optimum(glove):
    """An asymmetric grid holds every symmetric one, so its search is never worse."""
    x = glove[64]
    for fmt, key in (("executorch", "zero_point"), ("onnx", "zero_point")):
        bits = 2 if fmt == "executorch" else 4
        asym = E.export(x, fmt, bits=bits, **{key: True})
        sym = E.export(x, fmt, bits=bits, **{key: False})
        assert asym.error <= sym.error


def test_bits_per_weight(glove):
    x = glove[64]
    # 4-bit codes + float32 scale and zero point per 32 values = 4 + 64 / 32
    assert E.to_executorch(x, 4, group_size=32).bits_per_weight == 6.0
    assert E.to_gguf(x, "Q8_0").bits_per_weight == 8.5
    # weight_shape (metadata) is not counted; 16-bit scales per 64 values
    assert E.to_compressed_tensors(x, 4).bits_per_weight == 4.25
    # 4-bit data + float16 scale + 4-bit zero point per 16 values
    assert E.to_onnx(x, 4, block_size=16, scale_dtype="float16").bits_per_weight == 5.25


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, words", [
    (lambda x: E.to_executorch(x, 3), ValueError,
     r"bits must be one of \(2, 4, 8\) for ExecuTorch, got 3"),
    (lambda x: E.to_executorch(x, 6), ValueError, r"for ExecuTorch, got 6"),
    (lambda x: E.to_executorch(x, 4.0), TypeError, "bits must be an integer"),
    (lambda x: E.to_compressed_tensors(x, 5), ValueError,
     r"bits must be one of \(2, 4, 8\) for compressed-tensors, got 5"),
    (lambda x: E.to_executorch(x, 4, group_size=24), ValueError, "group_size=24"),
    (lambda x: E.to_executorch(x, 4, scale_dtype="bfloat16"), ValueError, "scale_dtype"),
    (lambda x: E.to_executorch(x[:, :63], 4), ValueError, "divisible by 2"),
    (lambda x: E.to_gguf(x[:, :48], "Q4_0"), ValueError, "divisible by 32"),
    (lambda x: E.to_gguf(x, "Q2_K"), ValueError, "qtype"),
    (lambda x: E.to_gguf(x, "Q4_K"), ValueError, "Q4_K needs dim divisible by 256, got 64"),
    (lambda x: E.to_gguf(np.tile(x, 4) * np.float32(1e9), "Q4_K"), ValueError, "float16"),
    (lambda x: E.to_gguf(x, 4), TypeError, "qtype"),
    (lambda x: E.to_onnx(x, 2), ValueError, "bits"),
    (lambda x: E.to_onnx(x, 4, block_size=24), ValueError, "block_size"),
    (lambda x: E.to_onnx(x, 4, block_size=0), ValueError, "block_size"),
    (lambda x: E.to_compressed_tensors(x, 4, group_size=5), ValueError, "group_size=5"),
    (lambda x: E.export(x, "tflite"), ValueError, "format"),
    (lambda x: E.export(x, "gguf", search="mse2"), ValueError, "search"),
    (lambda x: E.export(x, "gguf", n_bins=0), ValueError, "n_bins"),
    (lambda x: E.export(x.astype(np.int32), "gguf"), TypeError, "x"),
    (lambda x: E.export(np.where(x > 2, np.nan, x), "onnx"), ValueError, "finite"),
    (lambda x: E.to_gguf(x * np.float32(1e6), "Q4_0"), ValueError, "float16"),
    (lambda x: E.to_gguf(x, "Q4_0").quantization_config(), ValueError, "compressed-tensors"),
])
def test_bad_input_raises_naming_the_argument(glove, call, exc, words):
    with pytest.raises(exc, match=words):
        call(glove[64])


def test_fp16_zero_point_overflow_falls_back_to_a_symmetric_group(same_bytes):
    """A group far from zero with a tiny range: its float16 zero point would be inf."""
    x = np.full((1, 32), 1000.0, np.float32) + np.arange(32, dtype=np.float32) * np.float32(1e-3)
    e = E.to_executorch(x, 4, scale_dtype="float16")
    assert np.isfinite(e.dequantize()).all() and e.error < 1e-3


# --------------------------------------------------------------------------- files and CLI

def test_save_is_atomic_and_safetensors_exports_load(glove, tmp_path, same_bytes):
    from safetensors.numpy import load_file
    e = E.to_executorch(glove[64], 4, group_size=32)
    path = tmp_path / "et.safetensors"
    e.save(path)
    got = load_file(str(path))
    for k, v in e.tensors.items():
        same_bytes(got[k], v)
    e = E.to_compressed_tensors(glove[64], 4, scale_dtype="float16")
    e.save(path, name="model.embed_tokens")
    got = load_file(str(path))
    same_bytes(got["model.embed_tokens.weight_packed"], e.tensors["weight_packed"])
    assert [p.name for p in tmp_path.iterdir()] == ["et.safetensors"]   # no temporary left


def test_cli_export(glove, tmp_path, capsys):
    src = tmp_path / "x.npy"
    np.save(src, glove[64])
    out = tmp_path / "x.safetensors"
    assert main(["export", str(src), str(out), "--format", "compressed-tensors", "--bits", "4",
                 "--group-size", "32", "--scale-dtype", "float16"]) == 0
    text = capsys.readouterr().out
    assert "4.625 bits/weight" in text and "quantization_config" in text and out.exists()
    assert main(["export", str(src), str(tmp_path / "y.gguf"), "--format", "gguf",
                 "--bits", "4"]) == 2
    assert "--bits does not apply to --format gguf" in capsys.readouterr().err
    assert main(["export", str(src), str(tmp_path / "y.onnx"), "--format", "onnx",
                 "--qtype", "Q4_0"]) == 2
    assert not (tmp_path / "y.onnx").exists() and not (tmp_path / "y.gguf").exists()
