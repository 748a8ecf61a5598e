"""Mixed-precision tables served by torch: per-tier tables with torch's pruned-row mapping
(qe4.torch.MixedEmbeddingBag) equal qe4.embedding_bag byte for byte."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qe4                                   # noqa: E402
import qe4.torch as QT                       # noqa: E402
from qe4 import allocate as A                # noqa: E402
from qe4 import mixed as M                   # noqa: E402

F32 = np.float32
# every rung of the default ladder torch reads (all of them)
LADDER = A.ladder(A.default_ladder(torch_only=True))      # the widths torch serves


def _table(row_map, n=500, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(F32)
    x[:3] *= F32(30)
    choice = rng.integers(0, len(LADDER), n)     # every rung used
    return M.quantize_mixed(x, choice, LADDER, row_map=row_map)


@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_module_equals_qe4(row_map, same_bytes):
    t = _table(row_map)
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 9, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    idx = rng.integers(0, t.n_rows, int(lengths.sum()))
    w = rng.standard_normal(idx.size).astype(F32)
    for mode, weights in (("sum", None), ("mean", None), ("sum", w)):
        m = QT.MixedEmbeddingBag(t, mode=mode)
        got = m(torch.from_numpy(idx), torch.from_numpy(offsets),
                None if weights is None else torch.from_numpy(weights))
        same_bytes(got.numpy(), qe4.embedding_bag(t, idx, offsets, mode=mode,
                                                  per_sample_weights=weights))
    fixed = idx[:40].reshape(8, 5)
    same_bytes(QT.MixedEmbeddingBag(t)(torch.from_numpy(fixed)).numpy(),
               qe4.embedding_bag(t, fixed))


def test_tiers_and_mappings(same_bytes):
    t = _table("tiers", n=60)
    tiers = QT.to_torch_tiers(t)
    kinds = M.tier_kinds(t.extras)
    assert len(tiers) == int((kinds[:, 0] != M.PRUNED).sum())
    stored = np.zeros(t.n_rows, int)
    for weight, mapping in tiers:
        m = mapping.numpy()
        assert m.dtype == np.int32 and m.shape == (60,)
        stored += m >= 0
        assert sorted(m[m >= 0].tolist()) == list(range(weight.shape[0]))
    pruned = qe4.dequantize(t).any(axis=1) == 0
    same_bytes(stored, (~pruned).astype(int))


def test_refuses():
    with pytest.raises(ValueError, match="takes mixed tables"):
        QT.to_torch_tiers(qe4.quantize(np.ones((2, 4), F32), 4, "minmax"))
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(F32)
    t = M.quantize_mixed(x, np.full(10, 1), LADDER, engine="reference")   # 2-bit, dim 6
    with pytest.raises(ValueError, match="dim % 4 == 0"):
        QT.MixedEmbeddingBag(t)
    with pytest.raises(ValueError, match="mode must be"):
        QT.MixedEmbeddingBag(_table("tiers"), mode="max")


def test_a_3bit_tier_is_refused_naming_the_tier():
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(F32)
    t = M.quantize_mixed(x, np.arange(40) % 2, ["greedy/4", "greedy/3"])
    msg = r"tier 1 of the mixed table: table has bits=3; torch's fused ops read only 2/4/8-bit rows"
    with pytest.raises(ValueError, match=msg):
        QT.to_torch_tiers(t)
    with pytest.raises(ValueError, match=msg):
        QT.MixedEmbeddingBag(t)
