"""qe4_fast's dispatch: one SIMD level for every kernel family, codes with error defaults.

- ``qe4_fast.simd_level()`` and ``QE4_SIMD`` (forced levels in subprocesses, bad values and
  levels the CPU lacks fail at import naming the variable and the value);
- every row-wise method and width gives the reference's bytes at every level the CPU runs
  (the bag and codebook tests run their levels in their own files);
- unknown method, layout, bit-width and SIMD-level codes raise ValueError from the compiled
  kernels themselves, before any output is written;
- the codes the compiled modules dispatch on equal the Python side's;
- the float16 conversions every kernel shares equal numpy's.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import qe4
from qe4 import _validate as V
from qe4 import codebook as C
from qe4.table import LAYOUTS
from conftest import float_dtype_configs

qe4_fast = pytest.importorskip("qe4_fast", reason="qe4_fast is not built")
from qe4_fast import _bag, _codebook, _lookup, _rowwise, _simd  # noqa: E402

F32 = np.float32
CPU = _rowwise.cpu_simd_level()
LEVELS = _simd.levels_up_to_chosen()
ROOT = os.path.dirname(os.path.dirname(qe4_fast.__file__))


def _run(code, **env):
    """Run ``code`` in a fresh interpreter with ``env`` added to the environment."""
    full = {k: v for k, v in os.environ.items() if k != _simd.ENV}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def _data(n_rows, n_cols, seed=0):
    rng = np.random.default_rng(seed + n_cols)
    x = rng.standard_normal((n_rows, n_cols)).astype(F32)
    x *= np.exp(rng.uniform(-8, 6, (n_rows, 1))).astype(F32)
    x[0] = 3.0                                   # constant row
    return x


# ----------------------------------------------------------------------------- the level

def test_simd_level_is_the_chosen_level():
    assert qe4_fast.simd_level() == _simd.SIMD_LEVELS[_simd.LEVEL]
    assert _simd.SIMD_LEVELS == ("portable", "avx2", "avx512")
    forced = os.environ.get(_simd.ENV)
    assert qe4_fast.simd_level() == (forced if forced else _simd.SIMD_LEVELS[CPU])


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo")
def test_cpu_level_matches_proc_cpuinfo():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f
                      if line.startswith("flags")), None)
    if flags is None:
        pytest.skip("/proc/cpuinfo lists no x86 flags")
    avx2 = {"avx2", "fma", "f16c"} <= set(flags)
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(flags)
    assert CPU == (2 if avx512 else 1 if avx2 else 0)


DIGEST = """
import hashlib, numpy as np, qe4_fast
def digest():
    x = np.random.default_rng(5).standard_normal((70, 67)).astype(np.float32)
    idx, off = np.random.default_rng(6).integers(0, 70, 90), np.array([0, 4, 4, 50])
    h = hashlib.sha256()
    for m in ("minmax", "greedy", "aciq-gauss", "kmeans", "two-tier"):
        for b in (2, 4):
            t = qe4_fast.quantize(x, b, m, **({"n_groups": 3} if m == "two-tier" else {}))
            for a in (t.data, qe4_fast.dequantize(t), qe4_fast.embedding_bag(t, idx, off)):
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
"""


@pytest.mark.parametrize("level", _simd.SIMD_LEVELS[:CPU + 1])
def test_forced_level_gives_the_same_bytes(level):
    """QE4_SIMD=level in a fresh process: simd_level() reports it and every family's bytes
    (quantize, dequantize and bags; row-wise and codebook) equal this process's."""
    out = _run(DIGEST + "print(qe4_fast.simd_level(), digest())", **{_simd.ENV: level})
    assert out.returncode == 0, out.stderr
    namespace = {}
    exec(DIGEST, namespace)
    assert out.stdout.split() == [level, namespace["digest"]()]


@pytest.mark.parametrize("value", ["sse2", "AVX2", " avx2", "native", "1"])
def test_unknown_level_is_an_error_at_import(value):
    out = _run("import qe4_fast", **{_simd.ENV: value})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: environment variable QE4_SIMD=")
    assert repr(value) in last and "portable, avx2, avx512" in last


def test_empty_value_means_the_widest_level():
    out = _run("import qe4_fast; print(qe4_fast.simd_level())", **{_simd.ENV: ""})
    assert out.stdout.strip() == _simd.SIMD_LEVELS[CPU]


@pytest.mark.skipif(CPU == 2, reason="this CPU runs every level")
def test_level_the_cpu_lacks_is_an_error_at_import():
    out = _run("import qe4_fast", **{_simd.ENV: "avx512"})
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0
    assert last == (f"ValueError: environment variable QE4_SIMD='avx512': this CPU does not run "
                    f"the avx512 kernels (the widest level it runs is {_simd.SIMD_LEVELS[CPU]})")


@pytest.mark.parametrize("cpu", [0, 1, 2])
def test_choose_level(cpu):
    for value in (None, ""):
        assert _simd.choose_level(value, cpu) == cpu
    for level, name in enumerate(_simd.SIMD_LEVELS):
        if level <= cpu:
            assert _simd.choose_level(name, cpu) == level
        else:
            with pytest.raises(ValueError, match=f"QE4_SIMD='{name}': this CPU does not run"):
                _simd.choose_level(name, cpu)


# ----------------------------------------------------------------------------- bytes per level

@pytest.mark.parametrize("method", V.UNIFORM_METHODS)
def test_rowwise_bytes_at_every_level(method, same_bytes, monkeypatch):
    """Every row-wise method and width at each level the CPU runs equals the reference
    (widths that hit every vector tail, a block of QE4_LANES rows and a partial one; a
    coarse search grid keeps the reference's searches quick)."""
    opts = {"n_bins": 24} if method in ("greedy", "exhaustive") else {}
    for n_rows, n_cols in ((17, 1), (20, 7), (33, 33), (9, 130)):
        x = _data(n_rows, n_cols)
        for bits, sd in float_dtype_configs("rowwise"):
            ref = qe4.quantize(x, bits, method, scale_dtype=sd, **opts).data
            lo, hi = qe4.row_ranges(x, bits, method, scale_dtype=sd, **opts)
            for level in LEVELS:
                monkeypatch.setattr(_simd, "LEVEL", level)
                t = qe4_fast.quantize(x, bits, method, scale_dtype=sd, n_threads=2, **opts)
                same_bytes(t.data, ref)
                got = qe4_fast.row_ranges(x, bits, method, scale_dtype=sd, **opts)
                same_bytes(got[0], lo)
                same_bytes(got[1], hi)


def test_mse_bytes_at_every_level(same_bytes, monkeypatch):
    """The mse search and its rows at each level the CPU runs equal the reference, at every
    rowwise width (small search: its kernels run at the one level like the others)."""
    opts = {"n_steps": 3, "n_keep": 2, "n_iter": 2}
    for n_rows, n_cols in ((17, 1), (20, 7), (9, 130)):
        x = _data(n_rows, n_cols)
        for bits, sd in float_dtype_configs("rowwise"):
            ref = qe4.quantize(x, bits, "mse", scale_dtype=sd, **opts).data
            for level in LEVELS:
                monkeypatch.setattr(_simd, "LEVEL", level)
                same_bytes(qe4_fast.quantize(x, bits, "mse", scale_dtype=sd, n_threads=2,
                                             **opts).data, ref)


def test_mse_kernels_refuse_bad_codes():
    from qe4_fast import _mse
    x = _data(20, 9)
    work = np.zeros((1, _mse.work_floats(9, 1)), F32)
    par = [np.full(20, 7.0, F32) for _ in range(3)]
    out = np.full((20, 9), 0xAB, np.uint8)
    for bits, simd, match in ((7, _simd.LEVEL, "no kernel for bits=7"),
                              (1, _simd.LEVEL, "no kernel for bits=1"),
                              (4, 3, "SIMD level code 3"), (4, -1, "SIMD level code -1")):
        with pytest.raises(ValueError, match="qe4_fast._mse.mse_rows: " + match):
            _mse.mse_rows(x, bits, True, 0.5, 2, 1, 1, work, *par, out, 1, simd)
        assert np.all(out == 0xAB) and all(np.all(p == 7.0) for p in par)   # nothing written


# ----------------------------------------------------------------------------- bad codes

def _rowwise_args(method=0, bits=4, simd=None):
    x = _data(20, 9)
    n = x.shape[0]
    work = np.zeros((1, _rowwise.work_floats(9, 1, 864)), F32)
    lo, hi = np.full(n, 7.0, F32), np.full(n, 7.0, F32)
    out = np.full((n, 9), 0xAB, np.uint8)
    return (x, bits, method, True, 200.0, 32.0, 0.0, 864, work, lo, hi, out, 1,
            _simd.LEVEL if simd is None else simd), (lo, hi, out)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": 5}, "unknown method code 5"),
    ({"method": -1}, "unknown method code -1"),
    ({"bits": 7}, "no kernel for bits=7"),
    ({"bits": 1}, "no kernel for bits=1"),
    ({"bits": 16}, "no kernel for bits=16"),
    ({"simd": 3}, "SIMD level code 3"),
    ({"simd": -1}, "SIMD level code -1"),
])
def test_rowwise_kernels_refuse_bad_codes(kwargs, match):
    args, outputs = _rowwise_args(**kwargs)
    before = [a.copy() for a in outputs]
    with pytest.raises(ValueError, match=match):
        _rowwise.quantize_rows(*args)
    for a, b in zip(outputs, before):
        assert a.tobytes() == b.tobytes()            # nothing written
    if "method" not in kwargs:
        x, lo, hi = args[0], outputs[0], outputs[1]
        with pytest.raises(ValueError, match=match):
            _rowwise.row_minmax(x, kwargs.get("bits", 4), True, lo, hi, 1,
                                kwargs.get("simd", _simd.LEVEL))


def test_rowwise_work_floats_refuses_a_bad_method():
    with pytest.raises(ValueError, match="work_floats: unknown method code 9"):
        _rowwise.work_floats(8, 9, 100)


@pytest.mark.skipif(CPU == 2, reason="this CPU runs every level")
def test_kernels_refuse_a_level_the_cpu_lacks():
    args, _ = _rowwise_args(simd=2)
    with pytest.raises(ValueError, match=r"SIMD level code 2 \(avx512\) is not one this CPU runs"):
        _rowwise.quantize_rows(*args)


def _bag_args(bits=4, simd=None):
    t = qe4.quantize(_data(6, 16), 4, "minmax")
    out = np.full((2, 16), -7.5, F32)
    return (t.data, bits, 16, True, np.array([0, 1, 5], np.int64), np.array([0, 2, 3], np.int64),
            None, False, out, 1, _simd.LEVEL if simd is None else simd), out


@pytest.mark.parametrize("kwargs, match", [({"bits": 7}, "bits=7"), ({"bits": 1}, "bits=1"),
                                           ({"simd": 7}, "SIMD level code 7")])
def test_bag_kernels_refuse_bad_codes(kwargs, match):
    args, out = _bag_args(**kwargs)
    with pytest.raises(ValueError, match="embedding_bag_rowwise: .*" + match):
        _bag.embedding_bag_rowwise(*args)
    assert np.all(out == -7.5)
    deq = np.full((6, 16), -7.5, F32)
    with pytest.raises(ValueError, match="dequantize_rowwise: .*" + match):
        _bag.dequantize_rowwise(args[0], args[1], 16, True, deq, 1, args[-1])
    assert np.all(deq == -7.5)


def test_codebook_kernels_refuse_bad_codes():
    x = _data(5, 8)
    out = np.full((5, 4 + 32), 0xAB, np.uint8)
    for method in (_rowwise.METHOD_CODES["exhaustive"], _codebook.METHOD_CODES["two-tier"], 99):
        with pytest.raises(ValueError, match=f"encode_rows: unknown method code {method}"):
            _codebook.encode_rows(x, 4, method, 1, 1, out, 1)
    with pytest.raises(ValueError, match="encode_rows: no kernel for bits=8"):
        _codebook.encode_rows(x, 8, _codebook.METHOD_CODES["kmeans"], 1, 1, out, 1)
    assert np.all(out == 0xAB)
    t = qe4.quantize(x, 4, "kmeans")
    books = np.zeros((1, 16), F32)
    deq = np.full((5, 8), -7.5, F32)
    for layout in (_rowwise.LAYOUT_CODES["rowwise"], 3, -2):
        with pytest.raises(ValueError, match=f"dequantize: unknown layout code {layout}"):
            _codebook.dequantize(t.data, 8, 4, layout, 1, 0, books, deq, 1)
    with pytest.raises(ValueError, match="dequantize: no kernel for bits=3"):
        _codebook.dequantize(t.data, 8, 3, _codebook.LAYOUT_CODES["codebook"], 1, 0, books, deq, 1)
    assert np.all(deq == -7.5)
    bag = np.full((1, 8), -7.5, F32)
    idx, starts = np.array([0, 1], np.int64), np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match="embedding_bag: SIMD level code 5"):
        _codebook.embedding_bag(t.data, 8, 4, _codebook.LAYOUT_CODES["codebook"], 1, 0, books,
                                idx, starts, None, 0, bag, 1, 5)
    with pytest.raises(ValueError, match="embedding_bag: unknown layout code 0"):
        _codebook.embedding_bag(t.data, 8, 4, 0, 1, 0, books, idx, starts, None, 0, bag, 1,
                                _simd.LEVEL)
    assert np.all(bag == -7.5)
    two = np.full((5, 5), 0xAB, np.uint8)
    with pytest.raises(ValueError, match="encode_two_tier: no kernel for bits=3"):
        _codebook.encode_two_tier(x, np.zeros(5, np.int64), books, 3, 1, two, 1)
    assert np.all(two == 0xAB)


def test_lookup_kernels_refuse_bad_codes():
    t = qe4.quantize(_data(6, 16), 4, "minmax")
    spec = (t.data, _lookup.LAYOUTS["rowwise"], 4, 16, 1, 0, np.zeros((1, 16), F32))
    idx, starts = np.array([0, 1, 5], np.int64), np.array([0, 2, 3], np.int64)
    out = np.full((2, 64), 0xAB, np.uint8)
    ok = dict(mode=_lookup.MODES["sum"], kind=_lookup.KINDS["float32"], simd=_simd.LEVEL)

    def bags(spec=spec, mode=ok["mode"], kind=ok["kind"], simd=ok["simd"]):
        return _lookup.bags([spec], idx, starts, None, 2, mode, kind, out,
                            np.zeros(1, np.int64), 16, 1, simd)

    for kwargs, match in (({"mode": 3}, "unknown mode code 3"),
                          ({"kind": 5}, "unknown output kind code 5"),
                          ({"simd": 4}, "SIMD level code 4"),
                          ({"spec": spec[:1] + (7,) + spec[2:]}, "unknown layout code 7"),
                          ({"spec": spec[:2] + (7,) + spec[3:]}, "no kernel for bits=7")):
        with pytest.raises(ValueError, match="qe4_fast._lookup.bags: " + match):
            bags(**kwargs)
    with pytest.raises(ValueError, match="qe4_fast._lookup.gather: unknown output kind code 9"):
        _lookup.gather(spec, idx, 9, out, 1, _simd.LEVEL)
    with pytest.raises(ValueError, match="qe4_fast._lookup.gather: no kernel for bits=7"):
        _lookup.gather(spec[:2] + (7,) + spec[3:], idx, 0, out, 1, _simd.LEVEL)
    assert np.all(out == 0xAB)
    with pytest.raises(ValueError, match="round_floats: SIMD level code 3"):
        _lookup.round_floats(np.ones(4, F32), 1, np.zeros(8, np.uint8), 3)


def test_reference_refuses_an_unknown_range_method():
    """The reference has no fall-through either (the twin of the C default): a name the
    method registry does not hold is refused before anything runs."""
    from qe4 import method_registry as M
    with pytest.raises(ValueError, match="aciq-cauchy"):
        M.get("aciq-cauchy")
    with pytest.raises(ValueError, match="aciq-cauchy"):
        qe4.quantize(_data(3, 4), 4, "aciq-cauchy")


# ----------------------------------------------------------------------------- codes

def test_method_and_layout_codes_match_the_registries():
    """The compiled modules share one code space, the registries': each method entry's
    ``code`` and each layout entry's ``code``; each module exports the codes of the
    methods it computes."""
    from qe4 import layouts as L
    from qe4 import method_registry as M
    compiled = {**_rowwise.METHOD_CODES, **_codebook.METHOD_CODES}
    assert compiled == {name: M.get(name).code for name in compiled}
    assert set(_rowwise.METHOD_CODES) == set(M.names(family="rowwise")) & set(compiled)
    assert _rowwise.LAYOUT_CODES == {name: L.get(name).code for name in _rowwise.LAYOUT_CODES}
    assert set(_rowwise.LAYOUT_CODES) <= set(L.LAYOUTS)
    assert _lookup.LAYOUTS == _rowwise.LAYOUT_CODES


# ----------------------------------------------------------------------------- float16

def test_half_to_float_is_numpys_for_every_half():
    h = np.arange(2 ** 16, dtype=np.uint16)
    out = np.empty(h.size, F32)
    _rowwise.half_to_float(h, out)
    assert out.view(np.uint32).tobytes() == h.view(np.float16).astype(F32).view(np.uint32).tobytes()


def test_float_to_half_is_numpys():
    """Every sign, exponent and top 7 mantissa bits, with low bits at each rounding edge (a
    tie to even each way, just below and above), plus random floats; NaNs included."""
    high = np.arange(2 ** 16, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2FFF, 0x3000, 0x3001,
                    0x7FFF, 0x8000, 0xE000, 0xFFFF], np.uint32)
    bits = np.concatenate([(high[:, None] | low).ravel(),
                           np.random.default_rng(0).integers(0, 2 ** 32, 2 ** 18, dtype=np.uint32)])
    v = bits.view(F32)
    got = np.empty(v.size, np.uint16)
    _rowwise.float_to_half(v, got)
    with np.errstate(over="ignore", invalid="ignore"):
        want = v.astype(np.float16).view(np.uint16)
    assert got.tobytes() == want.tobytes()
    rounded = np.empty(v.size, F32)
    _rowwise.round_half(v, rounded)
    back = np.empty(v.size, F32)
    _rowwise.half_to_float(got, back)
    nan = np.isnan(v)
    assert rounded[~nan].tobytes() == back[~nan].tobytes()
    assert np.isnan(rounded[nan]).all()
