"""qe4_fast.codebook against the reference qe4.codebook: bytes, lookups, threads, errors."""

import inspect

import numpy as np
import pytest

import qe4
from qe4 import codebook as C

FC = pytest.importorskip("qe4_fast.codebook", reason="qe4_fast is not built")
from qe4_fast import _simd  # noqa: E402  (after the skip: qe4_fast is built)

F32 = np.float32
DIMS = (1, 7, 16, 33, 64)
THREADS = (1, 2, 7)


def _opts(method):
    return {"n_groups": 5} if method == "two-tier" else {}


def _table(dim, seed=0, n_rows=41):
    rng = np.random.default_rng(seed + dim)
    x = rng.standard_t(4, (n_rows, dim)).astype(F32)
    x[1] = 1.5                                   # constant row
    x[2, ::2] = -0.0                             # signed zeros
    x[3] *= F32(1e-6)                            # tiny range
    x[4] *= F32(3000.0)                          # large values, still float16-safe
    return x


def test_signatures_match():
    for name in ("quantize_codebook", "dequantize_codebook"):
        ref = inspect.signature(getattr(C, name)).parameters
        fast = dict(inspect.signature(getattr(FC, name)).parameters)
        assert fast.pop("n_threads").default is None
        assert list(fast) == list(ref)


@pytest.mark.parametrize("method", C.METHODS)
@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("dim", DIMS)
def test_quantize_and_dequantize_bytes(method, bits, dim, same_bytes):
    x = _table(dim)
    ref = qe4.quantize(x, bits, method, **_opts(method))
    deq = qe4.dequantize(ref)
    for nt in THREADS:
        fast = FC.quantize_codebook(x, bits, method, n_threads=nt, **_opts(method))
        same_bytes(fast.data, ref.data)
        assert fast.extras.keys() == ref.extras.keys()
        for k in ref.extras:
            same_bytes(fast.extras[k], ref.extras[k])
        assert (fast.layout, fast.method, fast.params, fast.scale_dtype) == \
            (ref.layout, ref.method, ref.params, ref.scale_dtype)
        same_bytes(FC.dequantize_codebook(ref, n_threads=nt), deq)


@pytest.mark.parametrize("method", C.METHODS)
def test_float32_centroids_and_odd_inputs(method, same_bytes):
    x = _table(33, seed=9) * F32(1e5)
    x[0, 0] = F32(3e38)
    x[0, 1] = F32(-3e38)
    for src in (x, np.asfortranarray(x), x.astype(">f4"), x.astype(np.float64)):
        ref = qe4.quantize(src, 4, method, scale_dtype="float32", **_opts(method))
        fast = FC.quantize_codebook(src, 4, method, scale_dtype="float32", n_threads=2,
                                    **_opts(method))
        same_bytes(fast.data, ref.data)
    ro = _table(16)
    ro.flags.writeable = False
    same_bytes(FC.quantize_codebook(ro, 2, method, **_opts(method)).data,
               qe4.quantize(ro, 2, method, **_opts(method)).data)


@pytest.mark.parametrize("n_groups", (1, 3, 16, 300))
def test_two_tier_group_counts(n_groups, same_bytes):
    x = _table(12, n_rows=70)
    ref = qe4.quantize(x, 4, "two-tier", n_groups=n_groups)
    fast = FC.quantize_codebook(x, 4, "two-tier", n_groups=n_groups, n_threads=7)
    assert fast == ref
    same_bytes(FC.dequantize_codebook(fast), qe4.dequantize(ref))


def test_lloyd_max_iter(same_bytes):
    x = _table(64, seed=3)
    for it in (1, 2, 5, 1000):
        same_bytes(FC.quantize_codebook(x, 4, "kmeans", max_iter=it).data,
                   qe4.quantize(x, 4, "kmeans", max_iter=it).data)


@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("dim", (1, 2, 3, 7, 17, 64, 257))
def test_lloyd_moves_bytes(bits, dim, same_bytes):
    # the split-merge moves on ties, few distinct values, fewer values than centroids and
    # wide ranges, at every move budget and thread count
    rng = np.random.default_rng(dim)
    x = np.concatenate([rng.standard_normal((8, dim)),
                        np.round(rng.standard_normal((8, dim)) * 2) / 2,   # many ties
                        rng.integers(0, 3, (8, dim)),                     # three values
                        np.exp(3 * rng.standard_normal((8, dim)))]).astype(F32)
    for it in (1, 2, 3, 7, 100):
        ref = qe4.quantize(x, bits, "kmeans", max_iter=it, scale_dtype="float32")
        for nt in THREADS:
            same_bytes(FC.quantize_codebook(x, bits, "kmeans", max_iter=it,
                                            scale_dtype="float32", n_threads=nt).data, ref.data)


@pytest.mark.parametrize("method", C.METHODS)
@pytest.mark.parametrize("bits", C.BITS)
@pytest.mark.parametrize("simd", _simd.levels_up_to_chosen())
def test_bags_bytes(method, bits, simd, same_bytes, monkeypatch):
    from qe4 import _validate as V
    # avx512: AVX-512F (4 bits, blocks of 64 and 32 columns), avx2: AVX2, portable: C loops
    monkeypatch.setattr(_simd, "LEVEL", simd)
    rng = np.random.default_rng(bits)
    for dim, sd in ((1, None), (7, "float32"), (33, None), (64, "float32"), (31, None),
                    (96, "float32"), (130, None)):
        t = qe4.quantize(_table(dim), bits, method, scale_dtype=sd, **_opts(method))
        idx = rng.integers(0, t.n_rows, 60)
        off = np.array([0, 0, 5, 6, 30, 30, 59])
        w = rng.standard_normal(60).astype(F32)
        for mode, weights in (("sum", None), ("mean", None), ("sum", w)):
            ref = qe4.embedding_bag(t, idx, off, mode=mode, per_sample_weights=weights)
            i, s, ww = V.check_bag_args(idx, off, t.n_rows, weights, False, mode)
            for nt in THREADS:
                same_bytes(FC.embedding_bag_codebook(t, i, s, ww, mode, nt), ref)
    empty = FC.embedding_bag_codebook(t, np.zeros(0, np.int64), np.zeros(1, np.int64), None,
                                      "sum", 2)
    assert empty.shape == (0, t.dim)


def test_public_qe4_fast_dispatch(same_bytes):
    qf = pytest.importorskip("qe4_fast")
    # dequantize/embedding_bag live in qe4_fast.bag (re-exported by qe4_fast once wired)
    lookups = qf if hasattr(qf, "embedding_bag") else pytest.importorskip("qe4_fast.bag")
    x = _table(16)
    for method in C.METHODS:
        ref = qe4.quantize(x, 4, method)
        fast = qf.quantize(x, 4, method, n_threads=2)
        assert fast == ref
        same_bytes(lookups.dequantize(fast, n_threads=2), qe4.dequantize(ref))
        same_bytes(lookups.embedding_bag(fast, [[0, 3], [5, 5]], mode="mean"),
                   qe4.embedding_bag(ref, [[0, 3], [5, 5]], mode="mean"))


BAD = [
    ((8, "kmeans"), {}),
    ((3, "kmeans-optimal"), {}),
    ((4, "kmeans"), {"n_groups": 2}),
    ((4, "two-tier"), {"max_iter": 2}),
    ((4, "kmeans"), {"max_iter": 0}),
    ((4, "kmeans"), {"max_iter": 1.5}),
    ((4, "two-tier"), {"n_groups": 70000}),
    ((4, "two-tier"), {"n_groups": False}),
    ((4, "kmeans-optimal"), {"scale_dtype": "float64"}),
    ((4, "nope"), {}),
]


def _raises_alike(ref_call, fast_call):
    with pytest.raises((TypeError, ValueError)) as ref:
        ref_call()
    with pytest.raises(ref.type) as fast:
        fast_call()
    assert str(fast.value) == str(ref.value)


@pytest.mark.parametrize("args, kw", BAD)
def test_bad_parameters_raise_alike(args, kw):
    x = _table(8)
    qf = pytest.importorskip("qe4_fast")
    _raises_alike(lambda: qe4.quantize(x, *args, **kw), lambda: qf.quantize(x, *args, **kw))
    if args[1] in C.METHODS:
        _raises_alike(lambda: C.quantize_codebook(x, *args, **kw),
                      lambda: FC.quantize_codebook(x, *args, **kw))


@pytest.mark.parametrize("x", [
    np.array([[1.0, np.nan]], F32), np.array([[1.0, np.inf]], F32), np.array([[7e4, 1.0]], F32),
    np.zeros((0, 4), F32), np.zeros((3,), F32), np.array([[1, 2]], np.int64), [[1.0], [2.0, 3.0]],
])
@pytest.mark.parametrize("method", C.METHODS)
def test_bad_tables_raise_alike(x, method):
    with pytest.raises((TypeError, ValueError)) as ref:
        qe4.quantize(x, 4, method)
    with pytest.raises(ref.type) as fast:
        FC.quantize_codebook(x, 4, method, n_threads=2)
    assert str(fast.value) == str(ref.value)


def test_corrupt_tables_raise_alike():
    x = _table(8)
    t = qe4.quantize(x, 2, "two-tier", n_groups=2)
    bad = qe4.QuantizedTable(t.data.copy(), bits=2, dim=8, method="two-tier", layout="two-tier",
                             extras=t.extras)
    bad.data[4, -1] = 9
    with pytest.raises(ValueError, match="group id is out of range") as ref:
        qe4.dequantize(bad)
    with pytest.raises(ValueError) as fast:
        FC.dequantize_codebook(bad)
    assert str(fast.value) == str(ref.value)
    with pytest.raises(ValueError) as ref:
        qe4.embedding_bag(bad, [4], [0])
    with pytest.raises(ValueError) as fast:
        FC.embedding_bag_codebook(bad, np.array([4]), np.array([0, 1]), None, "sum", 1)
    assert str(fast.value) == str(ref.value)
    with pytest.raises(TypeError, match="n_threads"):
        FC.quantize_codebook(x, 4, "kmeans", n_threads=1.0)
    with pytest.raises(ValueError, match="n_threads"):
        FC.quantize_codebook(x, 4, "kmeans", n_threads=0)


def test_random_tables_property(same_bytes):
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    hnp = pytest.importorskip("hypothesis.extra.numpy")
    values = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-7, 3e4]),
                       st.floats(-60000, 60000, width=32))

    @hyp.settings(max_examples=60, deadline=None, derandomize=True)
    @hyp.given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                            elements=values),
               method=st.sampled_from(C.METHODS), bits=st.sampled_from(C.BITS),
               n_threads=st.sampled_from(THREADS))
    def check(x, method, bits, n_threads):
        ref = qe4.quantize(x, bits, method, **_opts(method))
        fast = FC.quantize_codebook(x, bits, method, n_threads=n_threads, **_opts(method))
        assert fast == ref
        same_bytes(FC.dequantize_codebook(fast, n_threads=n_threads), qe4.dequantize(ref))

    check()


@pytest.mark.parametrize("simd", _simd.levels_up_to_chosen())
def test_bad_group_id_in_4bit_bags(simd, monkeypatch):
    monkeypatch.setattr(_simd, "LEVEL", simd)               # AVX-512F, AVX2, portable
    t = qe4.quantize(_table(40), 4, "two-tier", n_groups=3)
    bad = qe4.QuantizedTable(t.data.copy(), bits=4, dim=40, method="two-tier", layout="two-tier",
                             extras=t.extras)
    bad.data[6, -1] = 3                                     # the first id >= n_groups
    idx, off = np.array([0, 1, 2, 6, 5]), np.array([0, 2])
    with pytest.raises(ValueError) as ref:
        qe4.embedding_bag(bad, idx, off)
    with pytest.raises(ValueError) as fast:
        FC.embedding_bag_codebook(bad, idx, np.array([0, 2, 5]), None, "sum", 2)
    assert str(fast.value) == str(ref.value)


@pytest.mark.parametrize("method", C.METHODS)
def test_wide_rows(method, same_bytes):
    x = _table(130, n_rows=9)                    # rows longer than 64 values are qsorted
    same_bytes(FC.quantize_codebook(x, 4, method, n_threads=2, **_opts(method)).data,
               qe4.quantize(x, 4, method, **_opts(method)).data)
