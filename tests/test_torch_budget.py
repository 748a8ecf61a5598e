"""qe4.torch.quantize_model under a byte budget: one precision per table chosen by
qe4.allocate.choose_tables, bytes within the budget, lookups equal to qe4's, state dicts
that round-trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qe4  # noqa: E402
from qe4 import allocate as A  # noqa: E402
from qe4.torch import QuantizedEmbedding, QuantizedEmbeddingBag, quantize_model  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.users = torch.nn.Embedding(300, 16, padding_idx=0)
        self.items = torch.nn.EmbeddingBag(200, 8, mode="sum")
        self.tags = torch.nn.EmbeddingBag(40, 8, mode="mean")
        self.rare = torch.nn.Embedding(100, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, u, bags, tags, r):
        return self.users(u), self.items(bags), self.tags(tags), self.rare(r)


NAMES = ("users", "items", "tags", "rare")


def _inputs():
    g = torch.Generator().manual_seed(2)
    return (torch.randint(0, 300, (6, 3), generator=g), torch.randint(0, 200, (5, 4), generator=g),
            torch.randint(0, 40, (3, 2), generator=g), torch.randint(0, 100, (7,), generator=g))


def _counts():
    rng = np.random.default_rng(3)
    return {"users": rng.zipf(1.3, 300).astype(float), "items": rng.zipf(1.5, 200).astype(float),
            "rare": np.zeros(100)}          # tags: every row once


def _stored(q, model):
    """Bytes of the model's tables as stored: quantized tables, and float32 ones kept."""
    total = 0
    for name in NAMES:
        m = getattr(q, name)
        total += m.table().nbytes if hasattr(m, "table") else 4 * getattr(model, name).weight.numel()
    return total


def _lookups_equal_qe4(q, same_bytes):
    u, bags, tags, r = _inputs()
    out = q(u, bags, tags, r)
    want = []
    for name, idx in zip(NAMES, (u, bags, tags, r)):
        m = getattr(q, name)
        if not hasattr(m, "table"):
            want.append(None)
        elif isinstance(m, QuantizedEmbedding):
            want.append(qe4.embedding(m.table(), idx.numpy()))
        else:
            want.append(qe4.embedding_bag(m.table(), idx.numpy(), mode=m.mode))
    for got, w in zip(out, want):
        if w is not None:
            same_bytes(got.detach().numpy(), w)
    return out


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("budget", ["2.0bpw", "3.0bpw", "5.5bpw", 9000])
def test_quantize_model_under_a_budget(same_bytes, engine, budget):
    model = Model()
    counts = _counts()
    q = quantize_model(model, budget=budget, row_weights=counts, engine=engine)
    weights = {n: getattr(model, n).weight.detach().numpy() for n in NAMES}
    chosen = A.choose_tables(weights, budget, weights=counts, engine="reference")
    n_elements = sum(w.size for w in weights.values())
    assert _stored(q, model) <= chosen.allocation.nbytes <= A.parse_budget(budget, n_elements)
    for name in NAMES:
        m, choice = getattr(q, name), chosen[name]
        if choice is None:                                # kept in float32: the module itself
            assert type(m) is type(getattr(model, name))
            continue
        kind = QuantizedEmbedding if isinstance(getattr(model, name), torch.nn.Embedding) \
            else QuantizedEmbeddingBag
        assert isinstance(m, kind) and m.table() == choice
    assert q.users.padding_idx == 0 and q.tags.mode == "mean"
    out = _lookups_equal_qe4(q, same_bytes)
    # the state dict restores into a model quantized another way
    other = quantize_model(Model(), 8, "minmax", engine=engine)
    other.load_state_dict(q.state_dict())
    for name in NAMES:
        a, b = getattr(other, name), getattr(q, name)
        if hasattr(b, "table"):
            assert a.table() == b.table()
    if all(hasattr(getattr(q, n), "table") for n in NAMES):
        for a, b in zip(other(*_inputs()), out):
            same_bytes(a.detach().numpy(), b.detach().numpy())


def test_budget_spends_on_the_read_tables():
    q = quantize_model(Model(), budget="3.0bpw", row_weights=_counts())
    rare = q.rare.table()
    assert rare.layout == "mixed" and rare.params["rungs"] == ["pruned"]    # never read
    assert (q.rare(torch.arange(100)) == 0).all()
    assert hasattr(q.users, "table") and q.users.table().layout == "rowwise"


def test_budget_refusals():
    model = Model()
    with pytest.raises(ValueError, match="cannot read a budget from 'lots'"):
        quantize_model(model, budget="lots")
    least = r"budget of 63 bytes is below the 64 bytes of the cheapest rung \(pruned\)"
    with pytest.raises(ValueError, match=least):          # 4 tables x 16-byte tier headers
        quantize_model(model, budget=63)
    with pytest.raises(ValueError, match="row_weights applies with budget= only"):
        quantize_model(model, row_weights=_counts())
    with pytest.raises(ValueError, match=r"weights names tables that are not in tables: \['head'\]"):
        quantize_model(model, budget="3bpw", row_weights={"head": np.ones(3)})
    with pytest.raises(ValueError, match=r"weights\['users'\] must have shape \(300,\)"):
        quantize_model(model, budget="3bpw", row_weights={"users": np.ones(3)})
    for kw, given in ((dict(bits=2), "bits"), (dict(method="minmax", n_bins=50), "method, n_bins")):
        with pytest.raises(ValueError, match=f"^{given} cannot be combined with budget="):
            quantize_model(model, budget="3bpw", **kw)
    # a model without embeddings has nothing to allocate
    lin = torch.nn.Linear(3, 3)
    assert isinstance(quantize_model(lin, budget="3bpw"), torch.nn.Linear)


def test_budget_with_a_chosen_ladder(same_bytes):
    import functools
    model = Model()
    ladder = ["pruned", "minmax/2", "greedy/4"]
    q = quantize_model(model, budget="3.0bpw", row_weights=_counts(),
                       allocator=functools.partial(A.choose_tables, ladder=ladder))
    weights = {n: getattr(model, n).weight.detach().numpy() for n in NAMES}
    want = A.choose_tables(weights, "3.0bpw", weights=_counts(), ladder=ladder)
    assert [r.name for r in want.allocation.ladder] == ladder
    for name in NAMES:
        assert getattr(q, name).table() == want[name]
    _lookups_equal_qe4(q, same_bytes)
