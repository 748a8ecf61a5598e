"""qe4 tables served by FBGEMM's inference TBE (qe4.tbe) equal qe4.embedding_bag byte for
byte: rowwise tables, per-table allocations and mixed tables with index_remapping."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("fbgemm_gpu")

import torch                                 # noqa: E402

import qe4                                   # noqa: E402
from qe4 import allocate as A                # noqa: E402
from qe4 import mixed as M                   # noqa: E402
from qe4.tbe import TBEEmbeddingBags         # noqa: E402

F32 = np.float32
# the rungs TBE serves exactly: every default rung but 8-bit
LADDER = [r.name for r in A.ladder(A.default_ladder(torch_only=True)) if r.bits != 8]  # TBE's widths


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {"users": rng.standard_normal((300, 16)).astype(F32),
            "items": rng.standard_normal((200, 8)).astype(F32),
            "tiny": rng.standard_normal((3, 8)).astype(F32)}


def _bags(tables, n_bags=20, seed=1):
    rng = np.random.default_rng(seed)
    out = {}
    for k, t in tables.items():
        lengths = rng.integers(0, 7, n_bags)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        idx = rng.integers(0, t.n_rows, int(lengths.sum()))
        out[k] = (idx, offsets, rng.standard_normal(idx.size).astype(F32))
    return out


def _check(tables, same_bytes):
    bags = _bags(tables)
    for mode, weighted in (("sum", False), ("mean", False), ("sum", True)):
        m = TBEEmbeddingBags(tables, mode=mode)
        got = m({k: b[0] for k, b in bags.items()}, {k: b[1] for k, b in bags.items()},
                {k: b[2] for k, b in bags.items()} if weighted else None)
        for k, t in tables.items():
            idx, off, w = bags[k]
            same_bytes(got[k].numpy(), qe4.embedding_bag(t, idx, off, mode=mode,
                                                         per_sample_weights=w if weighted else None))


@pytest.mark.parametrize("per", A.PER)
@pytest.mark.parametrize("row_map", M.ROW_MAPS)
def test_allocation_served_by_tbe(per, row_map, same_bytes):
    xs = _model()
    w = {k: qe4.zipf_weights(len(v)) for k, v in xs.items()}
    a = A.allocate(xs, "4bpw", weights=w, ladder=LADDER, per=per, row_map=row_map)
    _check(a.quantize(xs), same_bytes)


def test_every_tier_kind(same_bytes):
    x = _model()["users"]
    choice = np.arange(len(x)) % len(LADDER)
    _check({"t": M.quantize_mixed(x, choice, LADDER)}, same_bytes)


def test_rowwise_tables(same_bytes):
    xs = _model()
    _check({"a": qe4.quantize(xs["users"], 4, "greedy"), "b": qe4.quantize(xs["items"], 2, "minmax")},
           same_bytes)


def test_refuses():
    x = _model()["users"]
    with pytest.raises(ValueError, match="leave 8-bit rungs out of the ladder"):
        TBEEmbeddingBags([qe4.quantize(x, 8, "greedy")])
    with pytest.raises(ValueError, match="layout 'codebook'"):
        TBEEmbeddingBags([qe4.quantize(x, 4, "kmeans")])
    for bits in (3, 5, 6):      # the rowwise bit-stream widths: no TBE type
        with pytest.raises(ValueError, match=f"has bits={bits}; TBE's integer rows are 2, 4 or 8"):
            TBEEmbeddingBags([qe4.quantize(x, bits, "greedy")])
    with pytest.raises(ValueError, match=r"bits=3"):    # a mixed table's 3-bit tier
        TBEEmbeddingBags([M.quantize_mixed(x, np.arange(len(x)) % 2, ["greedy/3", "greedy/4"])])
    with pytest.raises(ValueError, match=r"bits must be one of \(2, 4, 8\), got 3"):
        qe4.from_tbe(np.zeros((2, 8), np.uint8), 3)
    m = TBEEmbeddingBags({"a": qe4.quantize(x, 4, "greedy"), "b": qe4.quantize(x, 4, "greedy")})
    with pytest.raises(ValueError, match="same number of bags"):
        m({"a": np.array([0, 1]), "b": np.array([0])}, {"a": np.array([0, 1]), "b": np.array([0])})
    with pytest.raises(IndexError, match="out of range"):
        m({"a": np.array([300]), "b": np.array([0])}, {"a": np.array([0]), "b": np.array([0])})
