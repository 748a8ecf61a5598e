"""Scale-only groups (the grouped method's ``mins="none"``, qe4.grouped): the row format, its
reconstruction worked by hand, the search's guarantees and errors, the signed level tables,
bad input.  Byte identity of qe4_fast is in tests/test_grouped.py (parametrized over
qe4.layouts.MINS); here both packages read the hand-made rows."""

import re

import numpy as np
import pytest

import qe4
from qe4 import grouped as G
from qe4 import layouts as L
from qe4.rowwise import fma32

F32 = np.float32
LAYOUT = L.LAYOUTS["grouped"]
# (bits, levels) of every signed table (qe4.layouts.SIGNED_LEVELS, uniform at every width)
SIGNED = [(bits, name) for name, tables in L.SIGNED_LEVELS.items() for bits in LAYOUT.bits
          if tables is None or bits in tables]


def opts(group=32, sub_bits=6, levels="uniform"):
    return {"group": group, "sub_bits": sub_bits, "levels": levels, "mins": "none"}


def engines():
    fast = pytest.importorskip("qe4_fast")
    return (qe4, fast)


@pytest.mark.parametrize("dim, group, sub_bits", [(64, 32, 6), (64, 32, 8), (256, 32, 6),
                                                  (50, 16, 5), (7, 3, 3), (1, 32, 2)])
@pytest.mark.parametrize("bits", LAYOUT.bits)
def test_row_fields(bits, dim, group, sub_bits):
    """[codes][n_groups signed sub-scales][d]: no sub-mins and no super-min."""
    p = opts(group, sub_bits)
    n_groups = -(-dim // group)
    cb, sb = L.code_bytes(dim, bits), -(-n_groups * sub_bits // 8)
    assert LAYOUT.sub_bytes(dim, p) == sb
    assert LAYOUT.row_bytes(dim, bits, "float16", params=p) == cb + sb + 2
    assert [f.name for f in LAYOUT.fields(dim, bits, "float16", params=p)] == ["codes", "subs", "d"]


def test_bits_per_element_at_the_gguf_rungs():
    """IQ4_XS's 4.25 bits per value at dim 256 (6-bit sub-scales per 32, one float16); at dim 64
    4.5 (IQ4_NL's); Q6_K's 6.5625 with 8-bit sub-scales per 16."""
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(F32)
    assert qe4.quantize(x, 4, "grouped", **opts()).bits_per_element == 4.25
    assert qe4.quantize(x[:, :64], 4, "grouped", **opts()).bits_per_element == 4.5
    assert qe4.quantize(x, 6, "grouped", **opts(16, 8)).bits_per_element == 6.5625


def test_reconstruction_by_hand(same_bytes):
    """x_hat = fma(f32(d) * sc_j, level[q], +0): sc_j two's complement, a negative sub-scale
    mirrors the table, a zero product reads +0."""
    bits, dim, group, sub_bits = 4, 4, 2, 6
    d, sc, q = 0.5, (3, -5), (0, 15, 8, 9)                      # uniform level[q] = q - 8
    codes = L.pack_codes(np.array([q], np.uint8), bits)
    subs = L.pack_codes(np.array([[s & 63 for s in sc]], np.uint8), sub_bits)
    row = np.concatenate([codes, subs, np.array([d], "<f2").view(np.uint8)[None]], axis=1)
    want = np.array([[-12.0, 10.5, 0.0, -2.5]], F32)
    for mod in engines():
        t = qe4.QuantizedTable(row, bits=bits, dim=dim, method="grouped", layout="grouped",
                               params=opts(group, sub_bits))
        same_bytes(mod.dequantize(t), want)
        same_bytes(mod.embedding_bag(t, [0, 0], [0], per_sample_weights=np.array([2, -1], F32)),
                   fma32(-1.0, want, fma32(2.0, want, 0.0)))
    nl = L.level_table(opts(levels="nl"), 4)
    t = qe4.QuantizedTable(row, bits=bits, dim=dim, method="grouped", layout="grouped",
                           params=opts(group, sub_bits, "nl"))
    scale = np.array([1.5, 1.5, -2.5, -2.5], F32)
    for mod in engines():
        same_bytes(mod.dequantize(t), fma32(scale, nl[list(q)], 0.0)[None])


@pytest.mark.parametrize("bits, levels", SIGNED)
def test_search_beats_its_own_start(bits, levels):
    """Every row's error is at most that of its step-2 start (sub-scales rounded from step 1)
    and the stored rows decode to the codes the search chose."""
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((60, 40)) * np.exp(rng.uniform(-2, 2, (60, 1)))).astype(F32)
    x[0] = 0.0
    x[1] = -0.75
    t = qe4.quantize(x, bits, "grouped", **opts(8, 6, levels))
    err = ((qe4.dequantize(t).astype(np.float64) - x) ** 2).sum(axis=1)
    table = L.level_table(t.params, bits)
    d, sc = G.super_scale(G.group_scales(x, 8, table), 6)
    xg, valid = G.split_groups(x, 8)
    scale, _ = G.group_values(d, np.zeros_like(d), sc, np.zeros_like(sc))
    v = G.group_codes(xg, scale, np.zeros_like(scale), bits, table)
    start = (((xg - scale[..., None].astype(np.float64) * v) ** 2) * valid).sum(axis=(1, 2))
    assert (err <= start * (1 + 1e-4) + 1e-30).all()
    assert err[0] == 0.0                                             # the zero row is exact


def test_scale_params_mirrors_the_table():
    """A group whose largest value is negative gets a positive scale on the nl table (its
    long negative end), one whose largest value is positive a negative scale."""
    table = L.level_table(opts(levels="nl"), 4)
    x = np.random.default_rng(1).standard_normal((400, 32)).astype(F32)
    s = G.scale_params(x, table)
    a = x[np.arange(400), np.argmax(np.abs(x), axis=1)]
    assert (np.sign(s) == -np.sign(a)).mean() > 0.6
    assert (s < 0).mean() > 0.2 and (s > 0).mean() > 0.2


def test_error_per_bit_against_gguf():
    """N(0, 1): the nl table at 4.25 bits per value (dim 256) and 4.5 (dim 64) below 0.95x
    llama.cpp's searched IQ4_XS (0.00571) and IQ4_NL (0.00562) figures (issue 12's table;
    bench/bench_frontier.py measures 100,000 rows)."""
    x = np.random.default_rng(2).standard_normal((600, 256)).astype(F32)
    for data, bound in ((x, 0.95 * 0.00571), (x[:, :64], 0.95 * 0.00562)):
        t = qe4.quantize(data, 4, "grouped", **opts(levels="nl"))
        err = float(((qe4.dequantize(t) - data) ** 2).sum() / (data ** 2).sum())
        assert 0.0050 < err < bound


def test_signed_level_tables_are_sound():
    """Ascending, from level[0] = -2**(bits - 1), multiples of 1/1024; "nl" at every width
    of the affine table and asymmetric (its negative end the long one)."""
    assert set(L.SIGNED_LEVELS["nl"]) == set(L.LEVELS["nl"])
    for bits, levels in SIGNED:
        table = L.level_table(opts(levels=levels), bits)
        assert table.dtype == F32 and table.shape == (2 ** bits,)
        assert table[0] == -2 ** (bits - 1) and (np.diff(table) > 0).all()
        assert (table * 1024 == np.rint(table * 1024)).all()
        if levels == "nl":
            assert -table[0] > table[-1] > 0
    assert L.level_table(opts(), 3).tolist() == [-4, -3, -2, -1, 0, 1, 2, 3]


def test_params_saved_and_files(tmp_path, same_bytes):
    x = np.random.default_rng(3).standard_normal((9, 20)).astype(F32)
    t = qe4.quantize(x, 4, "grouped", group=8, mins="none", levels="nl")
    assert t.params == {"group": 8, "sub_bits": 6, "levels": "nl", "mins": "none"}
    qe4.save(t, tmp_path / "s.qe4")
    back = qe4.load(tmp_path / "s.qe4")
    assert back.params == t.params
    same_bytes(back.data, t.data)
    same_bytes(qe4.dequantize(back), qe4.dequantize(t))


def test_bad_mins():
    x = np.ones((2, 8), F32)
    with pytest.raises(ValueError, match=re.escape("mins must be one of ('group', 'none'), got 'None'")):
        qe4.quantize(x, 4, "grouped", mins="None")
    t = qe4.quantize(x, 4, "grouped", mins="none")
    for bad in ("min", 0, None):
        with pytest.raises(ValueError, match=re.escape(f"params['mins'] must be one of "
                                                       f"('group', 'none'), got {bad!r}")):
            qe4.QuantizedTable(t.data, bits=4, dim=8, method="grouped", layout="grouped",
                               params={**t.params, "mins": bad})
    with pytest.raises(ValueError, match="data has 7 bytes per row; a grouped 4-bit table"):
        qe4.QuantizedTable(t.data, bits=4, dim=8, method="grouped", layout="grouped",
                           params={**t.params, "mins": "group"})
