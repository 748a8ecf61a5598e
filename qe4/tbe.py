"""Serving qe4 tables with FBGEMM's inference TBE (``IntNBitTableBatchedEmbeddingBagsCodegen``).

TorchRec and FBGEMM serve a model's embedding tables from one table-batched embedding
(TBE) operator with a precision per table (``weights_tys``) and, for pruned tables, an
``index_remapping`` (row -> stored row, -1 = pruned).  :class:`TBEEmbeddingBags` builds
that operator from qe4 tables and pools with it:

* a rowwise 2- or 4-bit table (float16 scale/bias) is one TBE table of type INT2/INT4
  (its rows moved to TBE's ``[scale][bias][codes]`` layout, see :func:`qe4.to_tbe`);
* a mixed table (:mod:`qe4.mixed`) is one TBE table per tier that stores rows (INT2,
  INT4, FP16 or FP32), each with the tier's mapping (:func:`qe4.torch.to_torch_tiers`);
  the table's indices are fed to each of its tiers and the tiers' bags added in tier
  order.  A per-table allocation (``qe4.allocate(..., per="table")``) gives one tier per
  table: one TBE table each, as TBE and TorchRec serve them.

TBE pools in SUM mode and the mean is applied afterwards, so every output equals
``qe4.embedding_bag(table, ...)`` byte for byte (FBGEMM's INT2/INT4 kernels use the
fused-row arithmetic of :mod:`qe4.bag`; its FP16/FP32 kernels ``acc = fma(w, v, acc)``,
the float-tier rule of :mod:`qe4.mixed`).  Not servable, with a clear error: 8-bit
rows (TBE's INT8 rows carry float16 scale/bias, qe4's 8-bit rows torch's float32 ones;
leave ``greedy/8`` out of the ladder), 3, 5 and 6-bit rows (no TBE type), codebook layouts,
float32 scale/bias at 2/4 bits.

Needs torch and fbgemm-gpu-cpu 1.8.0 (``pip install "qe4[torch]"`` and
``pip install --no-deps fbgemm-gpu-cpu==1.8.0``): ImportError otherwise.
"""

from __future__ import annotations

try:
    import torch
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen)
except ImportError as exc:   # pragma: no cover - exercised only without fbgemm
    raise ImportError('qe4.tbe needs torch and FBGEMM: pip install "qe4[torch]" and '
                      "pip install --no-deps fbgemm-gpu-cpu==1.8.0") from exc

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _validate as V
from . import mixed as M
from .table import QuantizedTable
from .torch import _mean, _numpy, to_torch_tiers

__all__ = ["TBEEmbeddingBags"]

_INT_TYS = {2: SparseType.INT2, 4: SparseType.INT4}


def _tiers(table, name):
    """[(weight type, rows uint8/float array, mapping int32 [n_rows] or None)] of a table."""
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"{name} must be a QuantizedTable, got {type(table).__name__}")
    if table.layout == "rowwise":
        return [(_int_ty(table.bits, table.scale_dtype, name), table.data, None)]
    if table.layout != "mixed":
        raise ValueError(f"{name} has layout {table.layout!r}; TBE serves rowwise 2/4-bit and "
                         "mixed tables")
    kinds = [k for k in M.tier_kinds(table.extras) if k[0] != M.PRUNED]
    out = []
    for (kind, bits, fdt, _), (weight, mapping) in zip(kinds, to_torch_tiers(table)):
        if kind == M.FLOAT:
            ty = SparseType.FP32 if bits == 32 else SparseType.FP16
            rows = weight.numpy() if bits == 32 else weight.numpy().astype(np.float16)
        else:
            ty, rows = _int_ty(int(bits), M.FLOAT_DTYPES[fdt], name), weight.numpy()
        out.append((ty, rows, mapping))
    return out


def _int_ty(bits, scale_dtype, name):
    if bits not in (*_INT_TYS, 8):
        raise ValueError(f"{name} has bits={bits}; TBE's integer rows are 2, 4 or 8 bits "
                         "(qe4 and qe4_fast serve the others: qe4.embedding_bag)")
    if bits not in _INT_TYS or scale_dtype != "float16":
        raise ValueError(f"{name}: TBE cannot serve {bits}-bit rows with {scale_dtype} scale/bias "
                         "exactly (its INT8 rows carry float16 scale/bias; qe4's 8-bit rows are "
                         "torch's float32 ones): leave 8-bit rungs out of the ladder")
    return _INT_TYS[bits]


class TBEEmbeddingBags(torch.nn.Module):
    """One FBGEMM TBE serving several qe4 tables (a model), on CPU.

    Parameters
    ----------
    tables : list or dict of QuantizedTable
        Rowwise 2/4-bit tables (float16 scale/bias) or mixed tables.
    mode : {"sum", "mean"}

    Attributes
    ----------
    tbe : IntNBitTableBatchedEmbeddingBagsCodegen
        The operator (FP32 output, SUM pooling), one TBE table per stored tier.
    """

    def __init__(self, tables: list[QuantizedTable] | dict[str, QuantizedTable],
                 mode: str = "sum") -> None:
        super().__init__()
        if not isinstance(mode, str) or mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        self.names = list(tables) if isinstance(tables, dict) else None
        tables = list(tables.values()) if isinstance(tables, dict) else list(tables)
        if not tables:
            raise ValueError("tables must hold at least one table")
        self.mode = mode
        self.shapes = [(t.n_rows, t.dim) for t in tables]
        specs, remap, data, self.feature_tables = [], [], [], []
        for f, t in enumerate(tables):
            label = f"tables[{self.names[f]!r}]" if self.names else f"tables[{f}]"
            tiers = _tiers(t, label)
            self.feature_tables.append(list(range(len(specs), len(specs) + len(tiers))))
            for ty, rows, mapping in tiers:
                specs.append((f"t{len(specs)}", rows.shape[0], t.dim, ty, EmbeddingLocation.HOST))
                remap.append(mapping)
                data.append((ty, np.ascontiguousarray(rows)))
        self.n_tables = len(specs)
        if not specs:       # every table pruned: nothing to serve, bags are zeros
            self.tbe = None
            return
        use_remap = any(m is not None for m in remap)
        self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            specs, index_remapping=[m if m is not None else torch.arange(n, dtype=torch.int32)
                                    for m, (_, n, *_r) in zip(remap, specs)] if use_remap else None,
            pooling_mode=PoolingMode.SUM, device="cpu", output_dtype=SparseType.FP32)
        self.tbe.fill_random_weights()
        for (weights, qparams), (ty, rows) in zip(self.tbe.split_embedding_weights(), data):
            if qparams is None:                              # float rows: the values' bytes
                weights.copy_(torch.from_numpy(rows.view(np.uint8).reshape(weights.shape)))
                continue
            # fused rows [codes][fp16 scale][fp16 bias] -> TBE's codes (padded) and qparams
            cb = rows.shape[1] - 4
            weights.zero_()
            weights[:, :cb].copy_(torch.from_numpy(np.ascontiguousarray(rows[:, :cb])))
            qparams.copy_(torch.from_numpy(np.ascontiguousarray(rows[:, cb:])))

    def forward(self, indices: torch.Tensor | ArrayLike | list[Any] | dict[str, Any],
                offsets: torch.Tensor | ArrayLike | list[Any] | dict[str, Any] | None = None,
                per_sample_weights: torch.Tensor | ArrayLike | list[Any] | dict[str, Any]
                | None = None) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        """Pooled rows of every table: a list (or dict) of float32 [n_bags, dim] tensors.

        ``indices``, ``offsets`` and ``per_sample_weights`` hold one entry per table (a
        list or a dict like ``tables``), each as for :func:`qe4.embedding_bag`; every
        table must have the same number of bags (TBE's batch).
        """
        keys = self.names if self.names else range(len(self.shapes))
        get = (lambda a, k: None if a is None else a[k])
        checked = [V.check_bag_args(_numpy(get(indices, k), "indices"),
                                    None if get(offsets, k) is None else _numpy(get(offsets, k), "offsets"),
                                    self.shapes[f][0],
                                    None if get(per_sample_weights, k) is None
                                    else _numpy(get(per_sample_weights, k), "per_sample_weights"),
                                    False, self.mode)
                   for f, k in enumerate(keys)]
        n_bags = {c[1].size - 1 for c in checked}
        if len(n_bags) != 1:
            raise ValueError(f"every table must have the same number of bags, got {sorted(n_bags)}")
        n_bags = n_bags.pop()
        weighted = per_sample_weights is not None
        if weighted and any(c[2] is None for c in checked):
            raise ValueError("per_sample_weights must be given for every table or for none")
        outs = [torch.zeros(n_bags, d, dtype=torch.float32) for _, d in self.shapes]
        if self.tbe is not None:
            idx, off, wts = [], [], []
            base = 0
            for f, (i, s, w) in enumerate(checked):
                for _ in self.feature_tables[f]:                # the table's indices, per tier
                    idx.append(i)
                    off.append(s[:-1] + base)
                    wts.append(w)
                    base += i.size
            off.append(np.array([base]))
            pooled = self.tbe(torch.from_numpy(np.concatenate(idx).astype(np.int32)),
                              torch.from_numpy(np.concatenate(off).astype(np.int32)),
                              torch.from_numpy(np.concatenate(wts)) if weighted else None)
            cols = 0
            for f, tiers in enumerate(self.feature_tables):
                d = self.shapes[f][1]
                for _ in tiers:
                    outs[f] = outs[f] + pooled[:, cols:cols + d]
                    cols += d
        if self.mode == "mean":
            outs = [_mean(o, c[1]) for o, c in zip(outs, checked)]
        return dict(zip(self.names, outs)) if self.names else outs
