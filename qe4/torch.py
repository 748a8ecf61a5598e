"""PyTorch interop: torch's packed rows, quantizing ``nn.Embedding`` weights, and a
module that pools quantized rows with torch's own operators.

torch is an optional dependency (``pip install "qe4[torch]"``).  Exchange is by
bytes: a rowwise :class:`qe4.QuantizedTable` with torch's scale dtype *is*
torch's ``embedding_bag_{4,2}bit_prepack`` / ``embedding_bag_byte_prepack``
output, so :func:`to_torch` and :func:`from_torch` only copy.

The torch operators behind :class:`QuantizedEmbeddingBag` do not check their
arguments (an ``offsets[0] != 0`` or decreasing offsets give garbage, ``mode``
"mean" is silently a sum).  The module validates through the same helper as
:func:`qe4.embedding_bag` and computes the mean itself, so its output equals
:func:`qe4.embedding_bag` byte for byte.
"""

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError('qe4.torch needs PyTorch: pip install "qe4[torch]"') from exc

import numpy as np

from . import _validate as V
from .table import QuantizedTable
from .api import quantize

__all__ = ["to_torch", "from_torch", "quantize_embedding", "QuantizedEmbeddingBag", "to_torch_tiers",
           "MixedEmbeddingBag"]

# torch's scale/bias dtype per bit width (fused N-bit rows: fp16; byte rows: fp32)
TORCH_SCALE_DTYPE = {2: "float16", 4: "float16", 8: "float32"}
_BAG_OPS = {2: "embedding_bag_2bit_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets",
            8: "embedding_bag_byte_rowwise_offsets"}


def _check_torch_compatible(table):
    """Raise ValueError unless torch's quantized embedding-bag ops can read ``table``."""
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"table must be a QuantizedTable, got {type(table).__name__}")
    if table.layout != "rowwise":
        raise ValueError(f"table has layout {table.layout!r}; torch reads only rowwise tables")
    want = TORCH_SCALE_DTYPE[table.bits]
    if table.scale_dtype != want:
        raise ValueError(f"table stores {table.scale_dtype} scale/bias; torch's {table.bits}-bit "
                         f"rows use {want} (quantize with scale_dtype=None)")
    epb = 8 // table.bits
    if table.dim % epb:
        raise ValueError(f"table has dim {table.dim}; torch's {table.bits}-bit rows need dim % "
                         f"{epb} == 0 (torch infers dim from the row width)")


def to_torch(table):
    """The packed rows as the uint8 CPU tensor torch's quantized ops consume.

    Parameters
    ----------
    table : QuantizedTable
        Rowwise, with torch's scale dtype (float16 at 2/4 bits, float32 at 8
        bits), and ``dim`` a multiple of ``8 // bits``.

    Returns
    -------
    torch.Tensor, uint8 [n_rows, row_bytes] (a copy of ``table.data``)

    Raises
    ------
    TypeError
        ``table`` is not a QuantizedTable.
    ValueError
        torch cannot read the table (codebook layout, float32 scales at 2/4 bits,
        or a dim torch would infer wrongly); the message says which.
    """
    _check_torch_compatible(table)
    return torch.from_numpy(np.array(table.data, dtype=np.uint8, order="C"))


def from_torch(tensor, bits, dim=None):
    """A :class:`QuantizedTable` from torch's packed rows (copied to CPU memory).

    ``tensor`` is the output of ``torch.ops.quantized.embedding_bag_{4,2}bit_prepack``
    (``bits`` 4 or 2) or ``embedding_bag_byte_prepack`` (``bits=8``).  ``dim``
    defaults to what torch infers from the row width.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.uint8:
        raise TypeError(f"tensor must have dtype torch.uint8, got {tensor.dtype}")
    return QuantizedTable.from_fused(tensor.detach().cpu().numpy(), bits, dim)


def _weight_array(module_or_weight):
    """The float weight of an ``nn.Embedding``/``nn.EmbeddingBag``/tensor as a NumPy array."""
    if isinstance(module_or_weight, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
        weight = module_or_weight.weight
    elif isinstance(module_or_weight, torch.Tensor):
        weight = module_or_weight
    else:
        raise TypeError("module_or_weight must be an nn.Embedding, nn.EmbeddingBag or a tensor, "
                        f"got {type(module_or_weight).__name__}")
    if weight.dtype not in (torch.float16, torch.float32, torch.float64):
        raise TypeError(f"module_or_weight must hold float16, float32 or float64 weights, "
                        f"got {weight.dtype}")
    return weight.detach().cpu().numpy()


def quantize_embedding(module_or_weight, bits=4, method="greedy", **kwargs):
    """Quantize the weight of an ``nn.Embedding``, ``nn.EmbeddingBag`` or a 2-D tensor.

    Equivalent to ``qe4.quantize(weight.detach().cpu().numpy(), bits, method, **kwargs)``
    (see :func:`qe4.quantize` for the numerics and every keyword).  With the defaults
    the bytes equal ``torch.ops.quantized.embedding_bag_4bit_prepack(weight, True)``.
    """
    return quantize(_weight_array(module_or_weight), bits, method, **kwargs)


class QuantizedEmbeddingBag(torch.nn.Module):
    """Sum or mean of quantized rows per bag, using torch's quantized operators.

    Parameters
    ----------
    table : QuantizedTable
        torch-compatible (see :func:`to_torch`).  Its bytes become the buffer
        ``weight`` (uint8 [n_rows, row_bytes]), saved in the state dict.
    mode : {"sum", "mean"}
    include_last_offset : bool
        As in ``nn.EmbeddingBag``: ``offsets`` has ``n_bags + 1`` entries.

    Notes
    -----
    ``forward`` validates like :func:`qe4.embedding_bag`, then calls
    ``torch.ops.quantized.embedding_bag_{4bit,2bit,byte}_rowwise_offsets`` (always a
    sum: the op ignores its ``mode``) and, for ``"mean"``, multiplies each non-empty
    bag by ``float32(1 / len)``: the spec's mean, so the output equals
    ``qe4.embedding_bag(table, ...)`` byte for byte.
    """

    def __init__(self, table, mode="sum", include_last_offset=False):
        super().__init__()
        packed = to_torch(table)
        if not isinstance(mode, str) or mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        object.__setattr__(self, "_bits", table.bits)
        object.__setattr__(self, "_dim", table.dim)
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self.register_buffer("weight", packed)
        object.__setattr__(self, "_weight_shape", tuple(packed.shape))

    _READ_ONLY = ("weight", "bits", "dim")

    def __setattr__(self, name, value):
        # the packed rows, their bit width and dim are fixed at construction (issue 10 F1):
        # the kernels must never see sizes that disagree.  load_state_dict copies into the
        # buffer in place (same shape), which stays allowed.
        if name in self._READ_ONLY and "_weight_shape" in self.__dict__:
            raise AttributeError(f"QuantizedEmbeddingBag.{name} is read-only; build a new module "
                                 "(QuantizedEmbeddingBag(table) or .from_float)")
        super().__setattr__(name, value)

    @property
    def bits(self):
        return self._bits

    @property
    def dim(self):
        return self._dim

    def _checked_weight(self):
        """The weight buffer, refused unless it still has the shape, dtype and layout it
        was built with (an in-place resize or a replaced buffer would be read out of bounds)."""
        w = self.weight
        if (tuple(w.shape) != self._weight_shape or w.dtype != torch.uint8 or not w.is_contiguous()
                or w.device.type != "cpu"):
            raise ValueError(f"weight was changed after construction: it is {w.dtype} "
                             f"{tuple(w.shape)} on {w.device}, the module was built for "
                             f"torch.uint8 {self._weight_shape} on cpu (contiguous)")
        return w

    @classmethod
    def from_float(cls, module, bits=4, method="greedy", *, mode=None, include_last_offset=None,
                   **kwargs):
        """Quantize an ``nn.EmbeddingBag`` or ``nn.Embedding`` (or a weight tensor).

        ``mode`` and ``include_last_offset`` default to the module's (``"sum"`` and
        False for an ``nn.Embedding`` or a tensor).  Other keywords go to
        :func:`qe4.quantize`.
        """
        if isinstance(module, torch.nn.EmbeddingBag):
            if module.padding_idx is not None:
                raise ValueError("module has padding_idx set; QuantizedEmbeddingBag does not "
                                 "support padding_idx (torch's quantized ops have no equivalent)")
            if module.max_norm is not None:
                raise ValueError("module has max_norm set; quantized rows cannot be renormalized")
            mode = module.mode if mode is None else mode
            if include_last_offset is None:
                include_last_offset = module.include_last_offset
        table = quantize_embedding(module, bits, method, **kwargs)
        return cls(table, mode="sum" if mode is None else mode,
                   include_last_offset=bool(include_last_offset))

    @property
    def num_embeddings(self):
        return self._weight_shape[0]

    @property
    def embedding_dim(self):
        return self.dim

    def table(self):
        """The current ``weight`` buffer as a :class:`QuantizedTable` (a copy)."""
        return from_torch(self._checked_weight(), self.bits, self.dim)

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.dim}, bits={self.bits}, mode={self.mode!r}, "
                f"include_last_offset={self.include_last_offset}")

    def forward(self, input, offsets=None, per_sample_weights=None):
        """Pooled rows, float32 [n_bags, dim] on the weight's device (CPU).

        ``input`` and ``offsets`` are int32/int64 tensors or arrays, as for
        :func:`qe4.embedding_bag` (2-D ``input`` means fixed-length bags).
        """
        weight = self._checked_weight()
        idx, starts, w = V.check_bag_args(
            _numpy(input, "input"), None if offsets is None else _numpy(offsets, "offsets"),
            self.num_embeddings, None if per_sample_weights is None
            else _numpy(per_sample_weights, "per_sample_weights"),
            self.include_last_offset, self.mode)     # also refuses mean + weights
        op = getattr(torch.ops.quantized, _BAG_OPS[self.bits])
        out = op(weight, torch.from_numpy(idx), torch.from_numpy(starts),
                 per_sample_weights=None if w is None else torch.from_numpy(w),
                 include_last_offset=True)
        return _mean(out, starts) if self.mode == "mean" else out


def _mean(out, starts):
    """``out`` times float32(1 / len) per non-empty bag (an empty bag stays zero)."""
    lengths = np.diff(starts)
    factor = np.ones(lengths.size, np.float32)
    full = lengths > 0
    factor[full] = np.float32(1.0) / lengths[full].astype(np.float32)
    return out * torch.from_numpy(factor)[:, None]


def _numpy(a, name):
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bfloat16:
            raise TypeError(f"{name} must be an int32/int64 or float32 tensor, got {a.dtype}")
        return a.detach().cpu().numpy()
    return a


# --------------------------------------------------------------------------- mixed tables

def to_torch_tiers(table):
    """A mixed table (:mod:`qe4.mixed`) as torch's per-tier tables and row mappings.

    Returns a list, one entry per tier that stores rows (pruned tiers have none), of
    ``(weight, mapping)``: ``weight`` is torch's packed rows (uint8, what
    ``embedding_bag_{2bit,4bit,byte}_rowwise_offsets`` read) for a quantized tier, or
    the float32 values (float16 widened exactly) for a float tier; ``mapping`` is
    int32 [n_rows] (the ``compressed_indices_mapping`` of torch's pruned lookups):
    the row's position in this tier, -1 for rows stored elsewhere or pruned.  It costs
    4 bytes per row per tier (torch's format; qe4's own map takes about 0.5 B/row).

    Raises
    ------
    ValueError
        ``table`` is not mixed, or a tier torch cannot read (codebooks; float32 scales
        at 2/4 bits; a dim torch would infer wrongly).
    """
    from . import mixed
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"table must be a QuantizedTable, got {type(table).__name__}")
    if table.layout != "mixed":
        raise ValueError(f"table has layout {table.layout!r}; to_torch_tiers takes mixed tables "
                         "(to_torch reads rowwise ones)")
    extras = table.extras
    tier = mixed.tier_of_rows(extras, table.n_rows)
    out = []
    for t in range(mixed.tier_kinds(extras).shape[0]):
        sub = mixed.sub_table(extras, t, table.dim)
        if sub is None:
            continue
        rows = np.flatnonzero(tier == t)
        mapping = np.full(table.n_rows, -1, np.int32)
        mapping[rows] = np.arange(rows.size, dtype=np.int32)
        weight = (torch.from_numpy(np.asarray(sub, np.float32).copy()) if isinstance(sub, np.ndarray)
                  else to_torch(sub))
        out.append((weight, torch.from_numpy(mapping)))
    return out


class MixedEmbeddingBag(torch.nn.Module):
    """Sum or mean per bag of a mixed-precision table (:mod:`qe4.mixed`) with torch's operators.

    Each tier is one torch table with its ``compressed_indices_mapping``
    (:func:`to_torch_tiers`): quantized tiers are pooled by
    ``torch.ops.quantized.embedding_bag_{2bit,4bit,byte}_rowwise_offsets`` with
    ``pruned_weights=True`` (rows mapped to -1 are skipped), float tiers by
    ``torch.nn.functional.embedding_bag`` over the positions in the tier.  The tiers'
    bags are added in tier order and the mean applied last, as :func:`qe4.embedding_bag`
    defines it, so the output equals ``qe4.embedding_bag(table, ...)`` byte for byte.

    Parameters
    ----------
    table : QuantizedTable
        Of layout ``"mixed"`` whose tiers torch reads (see :func:`to_torch_tiers`).
    mode : {"sum", "mean"}
    include_last_offset : bool
    """

    def __init__(self, table, mode="sum", include_last_offset=False):
        super().__init__()
        from . import mixed
        if not isinstance(mode, str) or mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        tiers = to_torch_tiers(table)
        kinds = [k for k in mixed.tier_kinds(table.extras) if k[0] != mixed.PRUNED]
        self.ops = [None if k[0] == mixed.FLOAT else _BAG_OPS[int(k[1])] for k in kinds]
        self.n_rows, self.dim = table.n_rows, table.dim
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        for t, (weight, mapping) in enumerate(tiers):
            self.register_buffer(f"weight{t}", weight)
            self.register_buffer(f"mapping{t}", mapping)

    @property
    def num_embeddings(self):
        return self.n_rows

    @property
    def embedding_dim(self):
        return self.dim

    def extra_repr(self):
        return (f"{self.n_rows}, {self.dim}, tiers={self.ops}, mode={self.mode!r}, "
                f"include_last_offset={self.include_last_offset}")

    def forward(self, input, offsets=None, per_sample_weights=None):
        """Pooled rows, float32 [n_bags, dim]; arguments as for :func:`qe4.embedding_bag`."""
        idx, starts, w = V.check_bag_args(
            _numpy(input, "input"), None if offsets is None else _numpy(offsets, "offsets"),
            self.n_rows, None if per_sample_weights is None
            else _numpy(per_sample_weights, "per_sample_weights"),
            self.include_last_offset, self.mode)
        idx_t, starts_t = torch.from_numpy(idx), torch.from_numpy(starts)
        w_t = None if w is None else torch.from_numpy(w)
        out = torch.zeros(starts.size - 1, self.dim, dtype=torch.float32)
        for t, op in enumerate(self.ops):
            weight, mapping = getattr(self, f"weight{t}"), getattr(self, f"mapping{t}")
            if op is not None:
                part = getattr(torch.ops.quantized, op)(
                    weight, idx_t, starts_t, pruned_weights=True, per_sample_weights=w_t,
                    compressed_indices_mapping=mapping, include_last_offset=True)
            else:
                local = mapping[idx_t].long()
                mine = local >= 0
                sub = torch.zeros(idx.size + 1, dtype=torch.int64)
                sub[1:] = torch.cumsum(mine, 0)
                part = torch.nn.functional.embedding_bag(
                    local[mine], weight, sub[starts_t], mode="sum", include_last_offset=True,
                    per_sample_weights=None if w_t is None else w_t[mine])
            out = out + part
        return _mean(out, starts) if self.mode == "mean" else out
