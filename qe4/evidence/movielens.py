"""The paper's setting on MovieLens-100k: train small recommenders, quantize their
embedding tables post-training, and measure the change in quality, paired per seed.

Data: recbole's bundled ``dataset_example/ml-100k`` files, located without importing
recbole (GroupLens terms: research use, no redistribution; never committed here).
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .common import Engine

from . import common as C

MF_DIM = 64
DLRM_DIM = 16
FEATURES = ("user", "item", "zip3", "year", "hour", "occupation", "age", "weekday", "gender")


def data_dir() -> str:
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        raise ImportError("recbole is not installed (pip install --no-deps recbole==1.2.1)")
    path = os.path.join(os.path.dirname(spec.origin), "dataset_example", "ml-100k")
    if not os.path.exists(os.path.join(path, "ml-100k.inter")):
        raise ImportError(f"recbole has no ml-100k example files under {path}")
    return path


def _read(path):
    import pandas as pd
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def _codes(series):
    """Contiguous int64 ids of a categorical column (sorted category order)."""
    _, inv = np.unique(series.to_numpy(), return_inverse=True)
    return inv.astype(np.int64)


def load(max_rows: int | None = None) -> tuple[NDArray[np.int64], NDArray[np.float32], list[int]]:
    """(features int64 [n, 9] in FEATURES order, ratings float32 [n], cardinalities)."""
    import pandas as pd
    d = data_dir()
    inter = _read(os.path.join(d, "ml-100k.inter"))
    if max_rows is not None:
        inter = inter.iloc[:max_rows]
    users = _read(os.path.join(d, "ml-100k.user"))
    items = _read(os.path.join(d, "ml-100k.item"))
    df = inter.merge(users, on="user_id", how="left").merge(items[["item_id", "release_year"]],
                                                             on="item_id", how="left")
    ts = pd.to_datetime(df["timestamp"].astype(float).astype(np.int64), unit="s", utc=True)
    age = df["age"].astype(int)
    cols = {
        "user": df["user_id"], "item": df["item_id"], "zip3": df["zip_code"].str[:3],
        "year": df["release_year"].fillna(""), "hour": ts.dt.hour.astype(str),
        "occupation": df["occupation"],
        "age": pd.cut(age, [0, 17, 24, 34, 44, 49, 55, 200]).astype(str),
        "weekday": ts.dt.day_of_week.astype(str), "gender": df["gender"],
    }
    feats = np.stack([_codes(cols[f]) for f in FEATURES], axis=1)
    card = [int(feats[:, k].max()) + 1 for k in range(len(FEATURES))]
    return feats, df["rating"].astype(np.float32).to_numpy(), card


def split(n: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Random 80/10/10 split of ``n`` interactions."""
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(0.8 * n), int(0.9 * n)
    return perm[:a], perm[a:b], perm[b:]


# --------------------------------------------------------------------------- models

def _models():
    import torch
    from torch import nn

    class MF(nn.Module):
        """Biased matrix factorization: mu + b_u + b_i + <p_u, q_i>."""

        def __init__(self, n_users, n_items, dim, mu):
            super().__init__()
            self.user = nn.Embedding(n_users, dim)
            self.item = nn.Embedding(n_items, dim)
            self.ub = nn.Embedding(n_users, 1)
            self.ib = nn.Embedding(n_items, 1)
            for e in (self.user, self.item):
                nn.init.normal_(e.weight, std=0.05)
            for e in (self.ub, self.ib):
                nn.init.zeros_(e.weight)
            self.mu = mu

        def forward(self, f):
            u, i = f[:, 0], f[:, 1]
            return (self.mu + self.ub(u)[:, 0] + self.ib(i)[:, 0]
                    + (self.user(u) * self.item(i)).sum(1))

        def tables(self):
            return {"user": self.user.weight, "item": self.item.weight}

    class DLRM(nn.Module):
        """DLRM-style click model: one table per feature, pairwise dots, MLP 128-64-1."""

        def __init__(self, card, dim):
            super().__init__()
            self.emb = nn.ModuleList(nn.Embedding(c, dim) for c in card)
            for e in self.emb:
                nn.init.normal_(e.weight, std=0.05)
            k = len(card)
            self.pairs = torch.triu_indices(k, k, offset=1)
            self.mlp = nn.Sequential(nn.Linear(k * dim + self.pairs.shape[1], 128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, f):
            e = torch.stack([t(f[:, k]) for k, t in enumerate(self.emb)], dim=1)   # [B, k, d]
            dots = torch.bmm(e, e.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
            return self.mlp(torch.cat([e.flatten(1), dots], dim=1))[:, 0]

        def tables(self):
            return {FEATURES[k]: t.weight for k, t in enumerate(self.emb)}

    return MF, DLRM


def _train(model, loss_fn, metric, feats, target, tr, va, *, epochs, lr, wd, seed, batch=1024):
    """Adam with minibatches; keeps the state of the best validation epoch."""
    import torch
    g = torch.Generator().manual_seed(seed)
    f_tr, y_tr = torch.from_numpy(feats[tr]), torch.from_numpy(target[tr])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    best, best_state = np.inf, None
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        for s in range(0, len(tr), batch):
            b = perm[s:s + batch]
            opt.zero_grad()
            loss_fn(model(f_tr[b]), y_tr[b]).backward()
            opt.step()
        score = metric(_predict(model, feats[va]), target[va])
        if score < best:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model


def _predict(model, feats):
    import torch
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(feats)).numpy().astype(np.float64)


def rmse(pred: ArrayLike, y: ArrayLike) -> float:
    return float(np.sqrt(np.mean((np.clip(pred, 1.0, 5.0) - y) ** 2)))


def auc(score: ArrayLike, y: ArrayLike) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    from scipy.stats import rankdata
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(logit: ArrayLike, y: ArrayLike) -> float:
    """Mean binary cross-entropy of logits (numerically stable)."""
    z = np.asarray(logit, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - np.asarray(y) * z))


# --------------------------------------------------------------------------- experiment

def _evaluate(models, feats, rating, click, te):
    mf, dlrm = models
    p = _predict(mf, feats[te])
    z = _predict(dlrm, feats[te])
    return {"mf_rmse": rmse(p, rating[te]), "dlrm_auc": auc(z, click[te]),
            "dlrm_logloss": logloss(z, click[te])}


def _quantized_eval(engine, models, method, bits, peers, feats, rating, click, te):
    """Swap every embedding table for its dequantized self, evaluate, restore."""
    import torch
    saved, nbytes, nelem = [], 0, 0
    for model in models:
        for w in model.tables().values():
            x = w.detach().numpy().copy()
            xh, nb, _ = C.reconstruct(engine, x, bits, method, peers)
            saved.append((w, x))
            nbytes += nb
            nelem += x.size
            with torch.no_grad():
                w.copy_(torch.from_numpy(xh))
    try:
        return _evaluate(models, feats, rating, click, te), 8 * nbytes / nelem
    finally:
        with torch.no_grad():
            for w, x in saved:
                w.copy_(torch.from_numpy(x))


def run(engine: Engine, *, seeds: Sequence[int] = (0, 1, 2), bits: Sequence[int] = (2, 3, 4),
        peers: dict[str, Any] | None = None, quiet: bool = False, epochs: int | None = None,
        max_rows: int | None = None, methods: Iterable[str] | None = None) -> dict[str, Any]:
    """Train MF and DLRM per seed, quantize post-training with every method; JSON-ready dict."""
    import torch
    torch.set_num_threads(1)      # 2 threads ran 15x slower per step on this busy 2-core machine
    peers = peers or {}
    feats, rating, card = load(max_rows)
    click = (rating >= 4).astype(np.float32)
    n = len(rating)
    C.log(f"movielens: {n} ratings, {card[0]} users, {card[1]} items, mean rating {rating.mean():.5f}",
          quiet)
    MF, DLRM = _models()
    methods = C.qe4_methods(methods)
    todo = C.jobs(methods, peers, bits)
    out = {"n_ratings": n, "n_users": card[0], "n_items": card[1], "cardinalities": dict(zip(FEATURES, card)),
           "mean_rating": float(rating.mean()), "seeds": list(seeds), "fp32": [],
           "mf": {"dim": MF_DIM, "tables": ["user", "item"]},
           "dlrm": {"dim": DLRM_DIM, "tables": list(FEATURES)}, "results": {}}
    mse = torch.nn.MSELoss()
    bce = torch.nn.BCEWithLogitsLoss()
    for seed in C.progress(seeds, "movielens seeds", quiet=quiet):
        t0 = time.perf_counter()
        tr, va, te = split(n, seed)
        torch.manual_seed(seed)
        mf = _train(MF(card[0], card[1], MF_DIM, float(rating[tr].mean())), mse, rmse, feats, rating,
                    tr, va, epochs=epochs or 25, lr=5e-3, wd=1e-4, seed=seed)
        torch.manual_seed(seed)
        dlrm = _train(DLRM(card, DLRM_DIM), bce, logloss, feats, click, tr, va,
                      epochs=epochs or 8, lr=2e-3, wd=1e-6, seed=seed)
        base = _evaluate((mf, dlrm), feats, rating, click, te)
        base["train_seconds"] = time.perf_counter() - t0
        out["fp32"].append(base)
        C.log(f"  seed {seed}: fp32 RMSE {base['mf_rmse']:.4f}  AUC {base['dlrm_auc']:.4f}"
              f"  logloss {base['dlrm_logloss']:.4f}  (trained in {base['train_seconds']:.0f} s)", quiet)
        for method, b, family in todo:
            res, bpe = _quantized_eval(engine, (mf, dlrm), method, b, peers, feats, rating, click, te)
            key = f"{method}@{b}"
            eng = engine.engine_for(method) if family == "qe4" else "peer"
            r = out["results"].setdefault(key, {"method": method, "bits": b, "family": family,
                                                "engine": eng, "bits_per_element": bpe, "delta": {}})
            for k, v in res.items():
                r["delta"].setdefault(k, []).append(v - base[k])
    return out
