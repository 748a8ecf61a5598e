"""PyTorch interop: torch's packed rows, quantizing ``nn.Embedding`` weights, modules
that look up quantized rows (``QuantizedEmbedding``, ``QuantizedEmbeddingBag``) and
:func:`quantize_model`, which replaces every embedding of a model.

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

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError('qe4.torch needs PyTorch: pip install "qe4[torch]"') from exc

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _validate as V
from . import layouts as L
from .bag import check_lookup_table
from .engines import get_engine
from .table import QuantizedTable
from .api import quantize

__all__ = ["to_torch", "from_torch", "quantize_embedding", "QuantizedEmbedding",
           "QuantizedEmbeddingBag", "quantize_model", "to_torch_tiers", "MixedEmbeddingBag"]

# torch's scale/bias dtype per bit width it serves (fused N-bit rows: fp16; byte rows: fp32);
# the rowwise layout's other widths (3, 5, 6) have no torch op
TORCH_SCALE_DTYPE = {2: "float16", 4: "float16", 8: "float32"}
assert tuple(TORCH_SCALE_DTYPE) == L.LAYOUTS["rowwise"].torch_bits
_BAG_OPS = {2: "embedding_bag_2bit_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets",
            8: "embedding_bag_byte_rowwise_offsets"}


def _check_torch_compatible(table):
    """Raise ValueError unless torch's quantized embedding-bag ops can read ``table``."""
    if not isinstance(table, QuantizedTable):
        raise TypeError(f"table must be a QuantizedTable, got {type(table).__name__}")
    if table.layout != "rowwise":
        raise ValueError(f"table has layout {table.layout!r}; torch reads only rowwise tables")
    if table.bits not in TORCH_SCALE_DTYPE:
        raise ValueError(f"table has bits={table.bits}; torch's fused ops read only "
                         f"{'/'.join(map(str, TORCH_SCALE_DTYPE))}-bit rows (qe4 and qe4_fast read "
                         f"every width: use engine='fast' or 'reference')")
    want = TORCH_SCALE_DTYPE[table.bits]
    if table.scale_dtype != want:
        raise ValueError(f"table stores {table.scale_dtype} scale/bias; torch's {table.bits}-bit "
                         f"rows use {want} (quantize with scale_dtype=None)")
    epb = 8 // table.bits
    if table.dim % epb:
        raise ValueError(f"table has dim {table.dim}; torch's {table.bits}-bit rows need dim % "
                         f"{epb} == 0 (torch infers dim from the row width)")


def to_torch(table: QuantizedTable) -> torch.Tensor:
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


def from_torch(tensor: torch.Tensor, bits: int, dim: int | None = None) -> QuantizedTable:
    """A :class:`QuantizedTable` from torch's packed rows (copied to CPU memory).

    ``tensor`` is the output of ``torch.ops.quantized.embedding_bag_{4,2}bit_prepack``
    (``bits`` 4 or 2) or ``embedding_bag_byte_prepack`` (``bits=8``).  ``dim``
    defaults to what torch infers from the row width.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.uint8:
        raise TypeError(f"tensor must have dtype torch.uint8, got {tensor.dtype}")
    V.check_bits(bits, tuple(TORCH_SCALE_DTYPE))        # torch packs no other width
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


def quantize_embedding(module_or_weight: torch.nn.Module | torch.Tensor, bits: int = 4,
                       method: str = "greedy", **kwargs: Any) -> QuantizedTable:
    """Quantize the weight of an ``nn.Embedding``, ``nn.EmbeddingBag`` or a 2-D tensor.

    Equivalent to ``qe4.quantize(weight.detach().cpu().numpy(), bits, method, **kwargs)``
    (see :func:`qe4.quantize` for the numerics and every keyword).  With the defaults
    the bytes equal ``torch.ops.quantized.embedding_bag_4bit_prepack(weight, True)``.
    """
    return quantize(_weight_array(module_or_weight), bits, method, **kwargs)


class _TableModule(torch.nn.Module):
    """A :class:`QuantizedTable` held in a module's state.

    ``state_dict()`` holds the packed rows (buffer ``weight``, uint8), the layout's extra
    arrays (buffers ``extra_<name>``) and, as torch's extra state, the table's metadata
    and the module's options.  ``load_state_dict`` accepts the state of any table (other
    bits, layout or shape): the module then holds that table.
    """

    _OPTIONS = ()          # names of the module options kept in the extra state

    def _hold(self, table):
        self._meta = dict(bits=table.bits, dim=table.dim, method=table.method,
                          scale_dtype=table.scale_dtype, layout=table.layout,
                          params=dict(table.params))
        self.register_buffer("weight", torch.from_numpy(np.array(table.data, np.uint8, order="C")))
        self.__dict__["_weight_shape"] = tuple(self.weight.shape)
        for name in [n for n in self._buffers if n.startswith("extra_")]:
            del self._buffers[name]
        for name, arr in table.extras.items():
            self.register_buffer("extra_" + name, torch.from_numpy(np.array(arr, order="C")))

    _READ_ONLY = ("weight", "bits", "dim")

    def __setattr__(self, name, value):
        # the packed rows, their bit width and dim are fixed once held (issue 10 F1): the
        # kernels must never see sizes that disagree.  load_state_dict replaces the buffers
        # through _load_from_state_dict, which stays allowed.
        if name in self._READ_ONLY and "_weight_shape" in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.{name} is read-only; build a new module "
                                 f"({type(self).__name__}(table) or .from_float)")
        super().__setattr__(name, value)

    def _checked_weight(self):
        """The weight buffer, refused unless it still has the shape, dtype and layout it was
        held with (an in-place resize or a replaced buffer would be read out of bounds)."""
        w = self.weight
        if (tuple(w.shape) != self._weight_shape or w.dtype != torch.uint8 or not w.is_contiguous()
                or w.device.type != "cpu"):
            raise ValueError(f"weight was changed after construction: it is {w.dtype} "
                             f"{tuple(w.shape)} on {w.device}, the module holds a table of "
                             f"torch.uint8 {self._weight_shape} on cpu (contiguous)")
        return w

    def _table(self):
        """The held table, sharing the buffers' memory (CPU)."""
        extras = {n[len("extra_"):]: b.detach().cpu().numpy() for n, b in self._buffers.items()
                  if n.startswith("extra_")}
        return QuantizedTable(self._checked_weight().detach().numpy(), extras=extras, **self._meta)

    def table(self):
        """The held table as a :class:`QuantizedTable` (a copy)."""
        t = self._table()
        return QuantizedTable(t.data.copy(), extras={k: v.copy() for k, v in t.extras.items()},
                              **self._meta)

    @property
    def num_embeddings(self):
        return self.weight.shape[0]

    @property
    def embedding_dim(self):
        return self._meta["dim"]

    @property
    def bits(self):
        return self._meta["bits"]

    @property
    def dim(self):
        return self._meta["dim"]

    def get_extra_state(self):
        return {"table": dict(self._meta), "options": {k: getattr(self, k) for k in self._OPTIONS}}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or set(state) != {"table", "options"}:
            raise ValueError(f"not the extra state of a {type(self).__name__}: {state!r}")
        old = self._meta
        self._meta = dict(state["table"])
        try:
            check_lookup_table(self._table())      # the buffers and metadata must agree
        except (TypeError, ValueError):
            self._meta = old
            raise
        for k, v in state["options"].items():
            if k in self._OPTIONS:
                setattr(self, k, v)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # take the incoming table's shapes and extras, then let torch copy and check
        names = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
        w = state_dict.get(prefix + "weight")
        if w is not None and (w.dtype != torch.uint8 or "_extra_state" not in names):
            error_msgs.append(f"{prefix}weight is a {w.dtype} tensor without a qe4 table's "
                              f"extra state: the saved module was not a {type(self).__name__} "
                              "(quantize the saved model's tables the same way)")
            return
        if "weight" in names:
            self._buffers["weight"] = torch.empty_like(state_dict[prefix + "weight"])
            self.__dict__["_weight_shape"] = tuple(self.weight.shape)
        for name in [n for n in self._buffers if n.startswith("extra_") and n not in names]:
            del self._buffers[name]
        for name in names:
            if name.startswith("extra_") and "." not in name:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _engine(self):
        return get_engine(self.engine)

    def _engine_kwargs(self):
        return {} if self.engine == "reference" else {"n_threads": self.n_threads}


def _check_engine(engine, allowed):
    if engine not in allowed:
        raise ValueError(f"engine must be one of {allowed}, got {engine!r}")
    if engine != "torch":
        get_engine(engine)                    # ImportError now if qe4_fast is not built
    return engine


def _to_tensor(out, out_dtype):
    if out_dtype == "bfloat16":
        return torch.from_numpy(out.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(out)


class QuantizedEmbedding(_TableModule):
    """A drop-in for ``nn.Embedding`` at inference, reading quantized rows.

    ``module(input)`` returns the rows of ``input`` (an int tensor of any shape):
    ``[*input.shape, embedding_dim]``, exactly :func:`qe4.embedding` (the dequantized
    rows; float32, or float16/bfloat16 with ``out_dtype``).

    Parameters
    ----------
    table : QuantizedTable
        Any layout.  Held in the state dict (see below).
    padding_idx : int, optional
        As ``nn.Embedding``'s (negative counts from the end; stored normalized).  At
        inference ``nn.Embedding`` returns its weight's row there, and so does this
        module: the quantized row (exactly zeros when the float row was zeros, as
        ``nn.Embedding`` initialises it; a trained model may hold anything there).
    out_dtype : {"float32", "float16", "bfloat16"}
    engine : {"fast", "reference"}
        ``qe4_fast`` (default) or the NumPy reference; the bytes are the same.
    n_threads : int, optional
        Threads of the fast engine (None: all usable cores).

    Notes
    -----
    ``state_dict()`` holds ``weight`` (uint8 packed rows), ``extra_<name>`` (layout
    arrays) and the metadata, so ``load_state_dict`` restores any quantized table.
    ``max_norm`` is refused by :meth:`from_float` (torch renormalizes the float rows in
    place at lookup, which quantized rows cannot do); ``scale_grad_by_freq`` and
    ``sparse`` only change gradients and have no effect here (there are none).
    """

    _OPTIONS = ("padding_idx", "out_dtype")

    def __init__(self, table: QuantizedTable, padding_idx: int | None = None, *,
                 out_dtype: str = "float32", engine: str = "fast",
                 n_threads: int | None = None) -> None:
        super().__init__()
        V.check_table(table)
        self.engine = _check_engine(engine, ("fast", "reference"))
        self.out_dtype = V.check_out_dtype(out_dtype)
        self.n_threads = n_threads
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx must be an integer or None, got {padding_idx!r}")
            if not -table.n_rows <= padding_idx < table.n_rows:
                raise ValueError(f"padding_idx must be within num_embeddings = {table.n_rows}, "
                                 f"got {padding_idx}")
            padding_idx = int(padding_idx) % table.n_rows
        self.padding_idx = padding_idx
        self.max_norm = None
        self._hold(table)

    @classmethod
    def from_float(cls, module: torch.nn.Module | torch.Tensor, bits: int = 4,
                   method: str = "greedy", *, out_dtype: str = "float32", engine: str = "fast",
                   n_threads: int | None = None, **kwargs: Any) -> QuantizedEmbedding:
        """Quantize an ``nn.Embedding`` (or a 2-D weight tensor); keywords as
        :func:`qe4.quantize` (``scale_dtype``, ``n_bins``, method options)."""
        padding_idx = None
        if isinstance(module, torch.nn.Embedding):
            if module.max_norm is not None:
                raise ValueError("module has max_norm set; quantized rows cannot be renormalized "
                                 "(torch rescales the float rows in place at lookup)")
            padding_idx = module.padding_idx
        elif isinstance(module, torch.nn.EmbeddingBag):
            raise TypeError("module is an nn.EmbeddingBag: use QuantizedEmbeddingBag.from_float")
        table = _quantize_with(engine, n_threads, _weight_array(module), bits, method, kwargs)
        return cls(table, padding_idx, out_dtype=out_dtype, engine=engine, n_threads=n_threads)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, "
                f"layout={self._meta['layout']!r}, method={self._meta['method']!r}"
                + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
                + (f", out_dtype={self.out_dtype!r}" if self.out_dtype != "float32" else ""))

    def forward(self, input: torch.Tensor | ArrayLike) -> torch.Tensor:
        """Rows of ``input`` (int32/int64 tensor or array, any shape)."""
        out = self._engine().embedding(self._table(), _numpy(input, "input"),
                                       out_dtype=self.out_dtype, **self._engine_kwargs())
        return _to_tensor(out, self.out_dtype)


class QuantizedEmbeddingBag(_TableModule):
    """Sum, mean or max of quantized rows per bag (a drop-in for ``nn.EmbeddingBag``).

    Parameters
    ----------
    table : QuantizedTable
        With ``engine="torch"``: torch-compatible (see :func:`to_torch`).  With the
        other engines: any layout.  Its bytes become the buffer ``weight`` (uint8
        [n_rows, row_bytes]), saved in the state dict with the table's metadata.
    mode : {"sum", "mean", "max"}
        ``"max"`` needs ``engine="fast"`` or ``"reference"`` (torch's quantized ops
        have no max).
    include_last_offset : bool
        As in ``nn.EmbeddingBag``: ``offsets`` has ``n_bags + 1`` entries.
    engine : {"torch", "fast", "reference"}
        ``"torch"`` (default): torch's quantized operators; ``"fast"``/``"reference"``:
        :func:`qe4.embedding_bag` of ``qe4_fast`` / ``qe4``.  Same bytes.
    out_dtype : {"float32", "float16", "bfloat16"}
        The fast and reference engines only.
    n_threads : int, optional
        Threads of the fast engine.

    Notes
    -----
    ``forward`` validates like :func:`qe4.embedding_bag`, then calls
    ``torch.ops.quantized.embedding_bag_{4bit,2bit,byte}_rowwise_offsets`` (always a
    sum: the op ignores its ``mode``) and, for ``"mean"``, multiplies each non-empty
    bag by ``float32(1 / len)``: the spec's mean, so the output equals
    ``qe4.embedding_bag(table, ...)`` byte for byte.
    """

    _OPTIONS = ("mode", "include_last_offset", "out_dtype")

    def __init__(self, table: QuantizedTable, mode: str = "sum", include_last_offset: bool = False,
                 *, engine: str = "torch", out_dtype: str = "float32",
                 n_threads: int | None = None) -> None:
        super().__init__()
        self.engine = _check_engine(engine, ("torch", "fast", "reference"))
        modes = ("sum", "mean") if engine == "torch" else V.LOOKUP_MODES
        if engine == "torch":
            _check_torch_compatible(table)
        else:
            V.check_table(table)
        if not isinstance(mode, str) or mode not in modes:
            raise ValueError(f"mode must be one of {modes} with engine={engine!r}, got {mode!r}")
        self.out_dtype = V.check_out_dtype(out_dtype)
        if engine == "torch" and self.out_dtype != "float32":
            raise ValueError("out_dtype other than 'float32' needs engine='fast' or 'reference'")
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self.n_threads = n_threads
        self._hold(table)

    @classmethod
    def from_float(cls, module: torch.nn.Module | torch.Tensor, bits: int = 4,
                   method: str = "greedy", *, mode: str | None = None,
                   include_last_offset: bool | None = None, engine: str = "torch",
                   out_dtype: str = "float32", n_threads: int | None = None,
                   **kwargs: Any) -> QuantizedEmbeddingBag:
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
        engine_q = "fast" if engine == "torch" and _has_fast() else engine
        table = _quantize_with("reference" if engine_q == "torch" else engine_q, n_threads,
                               _weight_array(module), bits, method, kwargs)
        return cls(table, mode="sum" if mode is None else mode,
                   include_last_offset=bool(include_last_offset), engine=engine,
                   out_dtype=out_dtype, n_threads=n_threads)

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        if self.engine == "torch":         # a loaded table torch cannot read: qe4 reads it
            try:
                _check_torch_compatible(self._table())
            except ValueError:
                self.engine = "fast" if _has_fast() else "reference"

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.dim}, bits={self.bits}, mode={self.mode!r}, "
                f"include_last_offset={self.include_last_offset}"
                + (f", engine={self.engine!r}" if self.engine != "torch" else ""))

    def forward(self, input: torch.Tensor | ArrayLike,
                offsets: torch.Tensor | ArrayLike | None = None,
                per_sample_weights: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """Pooled rows, [n_bags, dim] on the weight's device (CPU).

        ``input`` and ``offsets`` are int32/int64 tensors or arrays, as for
        :func:`qe4.embedding_bag` (2-D ``input`` means fixed-length bags).
        """
        args = (_numpy(input, "input"), None if offsets is None else _numpy(offsets, "offsets"))
        w = None if per_sample_weights is None else _numpy(per_sample_weights, "per_sample_weights")
        if self.engine != "torch":
            out = self._engine().embedding_bag(
                self._table(), *args, mode=self.mode, per_sample_weights=w,
                include_last_offset=self.include_last_offset, out_dtype=self.out_dtype,
                **self._engine_kwargs())
            return _to_tensor(out, self.out_dtype)
        weight = self._checked_weight()
        idx, starts, w = V.check_bag_args(*args, self.num_embeddings, w,
                                          self.include_last_offset, self.mode)  # refuses mean + weights
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


def _has_fast():
    try:
        get_engine("fast")
    except ImportError:
        return False
    return True


def _quantize_with(engine, n_threads, weight, bits, method, kwargs):
    """``quantize`` of ``engine`` (``n_threads`` for the fast one); the same bytes."""
    if engine == "fast":
        kwargs = dict(kwargs, n_threads=n_threads)
    return get_engine(engine).quantize(weight, bits, method, **kwargs)


# --------------------------------------------------------------------------- whole models

def quantize_model(model: torch.nn.Module, bits: int | None = None, method: str | None = None, *,
                   tables: Mapping[str, Mapping[str, Any] | QuantizedTable | None] | None = None,
                   budget: int | str | None = None,
                   allocator: Callable[[dict[str, Any], Any], Mapping[str, Any]] | None = None,
                   row_weights: Mapping[str, ArrayLike] | None = None,
                   engine: str = "fast", out_dtype: str = "float32", n_threads: int | None = None,
                   inplace: bool = False, **options: Any) -> torch.nn.Module:
    """Replace every ``nn.Embedding`` and ``nn.EmbeddingBag`` of ``model`` by its quantized
    module (:class:`QuantizedEmbedding`, :class:`QuantizedEmbeddingBag`).

    Parameters
    ----------
    model : torch.nn.Module
    bits, method, **options
        The default choice for every table (see :func:`qe4.quantize`: 4-bit greedy when
        not given; ``preset=`` is one of the options).  Not with ``budget`` and the
        default allocator, which chooses every table's precision.
    tables : dict, optional
        Per-table choices by module name (as in ``model.named_modules()``): a dict of
        :func:`qe4.quantize` arguments overriding the default (``{"bits": 2}``,
        ``{"method": "two-tier", "n_groups": 256}``), a ready :class:`QuantizedTable`,
        or None to keep that table in float.  Unknown names are an error.
    budget : int or str, optional
        A byte budget for all tables together: bytes, a size (``"2.5G"``) or bits per
        element over every table's elements (``"3.0bpw"``), handed to ``allocator``
        (below); its choices come before ``tables``' overrides.  With the default
        allocator each table gets one precision, the bytes of the quantized tables (and
        of those kept in float32) stay within the budget, and ``bits``, ``method`` and
        ``**options`` are not used for the tables it chooses.
    allocator : callable, optional
        ``allocator(weights, budget) -> {name: choice}`` with ``weights`` a dict of module
        name -> weight array (float, as the module holds it) and a choice as in
        ``tables``.  Default: :func:`qe4.allocate.choose_tables` (one rung per table of
        its default ladder, called with ``engine`` and ``n_threads`` too).
    row_weights : dict, optional
        Access counts or importance of each table's rows, by module name (arrays
        [num_embeddings]), handed to ``allocator`` as ``weights=`` (see
        :func:`qe4.allocate.choose_tables`); only with ``budget``.
    engine : {"fast", "reference"}
        Quantizes the tables and runs the lookups (``QuantizedEmbeddingBag`` of a
        torch-compatible table and mode sum/mean uses torch's operators instead, as
        ``engine="torch"``).
    out_dtype : {"float32", "float16", "bfloat16"}
        Output of every quantized module.
    n_threads : int, optional
        Threads of the fast engine.
    inplace : bool
        False (default): a deep copy of ``model`` is quantized and returned.

    Returns
    -------
    torch.nn.Module
        The quantized model.  Its ``state_dict()`` holds each table's packed bytes and
        metadata; ``quantize_model(fresh_model, ...)`` followed by ``load_state_dict``
        restores it, even when the saved tables were made with other choices.
    """
    embeddings = {name: m for name, m in model.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))}
    tables = dict(tables or {})
    unknown = sorted(set(tables) - set(embeddings))
    if unknown:
        raise ValueError(f"tables names modules that are not embeddings of the model: {unknown}; "
                         f"its embeddings are {sorted(embeddings)}")
    _check_engine(engine, ("fast", "reference"))
    V.check_out_dtype(out_dtype)
    choices = {}
    if budget is None and row_weights is not None:
        raise ValueError("row_weights applies with budget= only (it weighs the rows of the "
                         "allocation)")
    if budget is not None and embeddings:
        kw = {} if row_weights is None else {"weights": row_weights}
        given = [n for n, v in (("bits", bits), ("method", method)) if v is not None] + sorted(options)
        if allocator is None and given:
            raise ValueError(f"{', '.join(given)} cannot be combined with budget=, which chooses "
                             "every table's precision from qe4.allocate's ladder (choose the "
                             "rungs with allocator=functools.partial(qe4.allocate.choose_tables, "
                             "ladder=[...]))")
        if allocator is None:
            from .allocate import choose_tables as allocator
            kw.update(engine=engine, n_threads=n_threads)
        choices = dict(allocator({n: _weight_array(m) for n, m in embeddings.items()}, budget, **kw))
    choices.update(tables)
    if not inplace:
        model = copy.deepcopy(model)
    for name in embeddings:
        choice = choices.get(name, {})
        if choice is None:
            continue
        module = model.get_submodule(name)
        new = _quantized_module(module, choice, bits, method, options, engine, out_dtype, n_threads)
        parent, _, attr = name.rpartition(".")
        if not attr:
            return new                          # the model itself is an embedding
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def _quantized_module(module, choice, bits, method, options, engine, out_dtype, n_threads):
    if isinstance(choice, QuantizedTable):
        table = choice
        if table.n_rows != module.weight.shape[0] or table.dim != module.weight.shape[1]:
            raise ValueError(f"a table of shape {table.shape} cannot replace a module of weight "
                             f"shape {tuple(module.weight.shape)}")
    else:
        if not isinstance(choice, dict):
            raise TypeError(f"a table choice must be a dict, a QuantizedTable or None, got "
                            f"{type(choice).__name__}")
        kw = dict(options, **choice)
        table = _quantize_with(engine, n_threads, _weight_array(module), kw.pop("bits", bits),
                               kw.pop("method", method), kw)
    if isinstance(module, torch.nn.Embedding):
        if module.max_norm is not None:
            raise ValueError("module has max_norm set; quantized rows cannot be renormalized "
                             "(torch rescales the float rows in place at lookup)")
        return QuantizedEmbedding(table, module.padding_idx, out_dtype=out_dtype, engine=engine,
                                  n_threads=n_threads)
    if module.padding_idx is not None or module.max_norm is not None:
        raise ValueError("an nn.EmbeddingBag with padding_idx or max_norm cannot be quantized")
    try:
        if module.mode == "max" or out_dtype != "float32":
            raise ValueError
        _check_torch_compatible(table)
        bag_engine = "torch"
    except ValueError:
        bag_engine = engine
    return QuantizedEmbeddingBag(table, module.mode, module.include_last_offset, engine=bag_engine,
                                 out_dtype=out_dtype, n_threads=n_threads)


def _numpy(a, name):
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bfloat16:
            raise TypeError(f"{name} must be an int32/int64 or float32 tensor, got {a.dtype}")
        return a.detach().cpu().numpy()
    return a


# --------------------------------------------------------------------------- mixed tables

def to_torch_tiers(table: QuantizedTable) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
        if isinstance(sub, np.ndarray):
            weight = torch.from_numpy(np.asarray(sub, np.float32).copy())
        else:
            try:
                weight = to_torch(sub)
            except ValueError as exc:        # e.g. a 3-bit tier: say which tier
                raise ValueError(f"tier {t} of the mixed table: {exc}") from None
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

    def __init__(self, table: QuantizedTable, mode: str = "sum",
                 include_last_offset: bool = False) -> None:
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
    def num_embeddings(self) -> int:
        return self.n_rows

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def extra_repr(self) -> str:
        return (f"{self.n_rows}, {self.dim}, tiers={self.ops}, mode={self.mode!r}, "
                f"include_last_offset={self.include_last_offset}")

    def forward(self, input: torch.Tensor | ArrayLike,
                offsets: torch.Tensor | ArrayLike | None = None,
                per_sample_weights: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
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
