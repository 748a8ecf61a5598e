"""The one front end of quantization: validate and plan once, compute, assemble once.

:func:`qe4.quantize`, ``qe4_fast.quantize``, streaming (:mod:`qe4.stream`), Dask
(:mod:`qe4.dask`) and the CLI all go through :func:`check_request` and
:func:`encode`, so they check their arguments in the same order and raise the same
errors by construction, save the same ``params`` and assemble the table the same way.

The order of the checks (each raises TypeError for a wrong type, ValueError for a
wrong value, naming the argument):

0. ``preset`` (if given) is a registered preset and no argument it sets is passed too;
1. ``bits`` is a bit width some layout stores (:data:`qe4.layouts.BITS`);
2. ``method`` is a registered method (of the family asked for, if any);
3. the method is per-row when the caller needs one (streaming, Dask);
4. the method's layout stores ``bits``;
5. no keyword argument the method does not declare;
6. ``n_bins`` then ``ratio`` (arguments of every method; used and saved only by
   the methods that declare them);
7. the method's own options, in declared order;
8. ``scale_dtype`` for the method's layout;
   then the search cost per row (:func:`qe4._validate.check_search_cost`: the
   exhaustive search's bound);
9. then, with the data: ``x`` (:func:`qe4._validate.as_float_rows`: type, shape,
   emptiness), and the encoder's value checks (finiteness, float16 overflow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from collections.abc import Mapping
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .engines import Engine
    from .layouts import Layout
    from ._typing import Float32Array, UInt8Array

from . import _validate as V
from . import engines as E
from . import method_registry as M
from . import preset_registry as P
from .table import QuantizedTable


@dataclass(frozen=True)
class Request:
    """A checked quantization request (everything but the data)."""
    method: M.Method
    bits: int
    scale_dtype: str
    n_bins: int
    ratio: float
    options: dict

    @property
    def layout(self) -> Layout:
        return self.method.layout_entry

    @property
    def float_dtype(self) -> str:
        return self.scale_dtype

    @property
    def params(self) -> dict[str, Any]:
        """The ``params`` saved with the table: the method's options (copy)."""
        return dict(self.options)

    def arguments(self) -> dict[str, Any]:
        """Everything a method's reference function may take (see ``Method.call``)."""
        return dict(self.options, bits=self.bits, scale_dtype=self.scale_dtype, k=2 ** self.bits,
                    n_bins=self.n_bins, ratio=self.ratio)

    def extras_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the layout's extras, known before the data (for row sizes)."""
        if self.layout.name == "two-tier":
            return {"codebooks": (self.options["n_groups"], 2 ** self.bits)}
        return {}

    def check_values(self, x: Float32Array, name: str = "x") -> None:
        """The family's value checks of float32 rows ``x`` (finite, float16 overflow)."""
        M.resolve(self.method.family_entry.check_values)(self, x, name)

    def row_bytes(self, dim: int) -> int:
        """Bytes of one row of the table this request makes for ``dim`` columns."""
        return self.layout.row_bytes(dim, self.bits, self.scale_dtype, self.extras_shapes())


def check_request(bits: int | None, method: str | None, n_bins: int = 200, ratio: float = 0.16,
                  scale_dtype: str | None = None, kwargs: Mapping[str, Any] | None = None, *,
                  family: str | None = None, per_row_for: str | None = None,
                  preset: str | None = None) -> Request:
    """Check a quantization request in the front end's order; return a :class:`Request`.

    ``family`` restricts the methods to one family (``qe4.row_ranges``: "rowwise").
    ``per_row_for`` names a caller that quantizes in row chunks (e.g. "streamed"): a
    method that is not per-row is then refused with a message saying why.  ``preset``
    (:mod:`qe4.preset_registry`) supplies bits, method, scale_dtype and options, checked first;
    without one, ``bits=None`` means 4 and ``method=None`` "greedy".
    """
    bits, method, scale_dtype, kwargs = P.resolve(preset, bits, method, scale_dtype, kwargs)
    bits = V.check_bits(bits)
    entry = M.get(V.check_method(method, M.names(family=family)))
    if per_row_for is not None and not entry.per_row:
        raise ValueError(f"method {method!r} is not row-wise and cannot be {per_row_for}: its rows "
                         "depend on the whole table, so row chunks would not reproduce one call; "
                         "quantize the table in memory with qe4.quantize (and write it with qe4.save)")
    if bits not in entry.allowed_bits:
        raise ValueError(f"bits={bits} is not supported by method {method!r} (its {entry.layout} "
                         f"layout stores bits in {entry.allowed_bits})")
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - {o.name for o in entry.options})
    if unknown:
        raise TypeError(f"unexpected keyword arguments for method {method!r}: {unknown}")
    grid = {"n_bins": M.N_BINS(n_bins), "ratio": M.RATIO(ratio)}
    kwargs.update({k: v for k, v in (("n_bins", n_bins), ("ratio", ratio))
                   if k in {o.name for o in entry.options}})
    options = entry.check_options(kwargs)
    scale_dtype = V.check_scale_dtype(scale_dtype, bits, entry.layout)
    V.check_search_cost(entry.name, grid["n_bins"], grid["ratio"])
    return Request(entry, bits, scale_dtype, grid["n_bins"], grid["ratio"], options)


def encode(request: Request, x: Float32Array, engine: Engine) -> QuantizedTable:
    """Quantize validated rows ``x`` (:func:`qe4._validate.as_float_rows`, ``finite=False``)
    with ``engine`` (:class:`qe4.engines.Engine`) and assemble the table."""
    data, extras = engine.encode(request, x)
    return make_table(request, data, extras, x.shape[1])


def make_table(request: Request, data: UInt8Array, extras: Mapping[str, NDArray[Any]],
               dim: int) -> QuantizedTable:
    """The :class:`QuantizedTable` of a request's encoded rows (validated by its layout)."""
    return QuantizedTable(data, bits=request.bits, dim=dim, method=request.method.name,
                          scale_dtype=request.scale_dtype, layout=request.method.layout,
                          extras=extras, params=request.params)


def quantize(x: ArrayLike, bits: int | None, method: str | None, n_bins: int, ratio: float,
             scale_dtype: str | None, kwargs: Mapping[str, Any] | None, *,
             engine: str = "reference", n_threads: int | None = None,
             family: str | None = None, preset: str | None = None) -> QuantizedTable:
    """The whole front end: check, validate ``x``, encode with the engine, assemble."""
    eng = E.engine(engine, n_threads)
    request = check_request(bits, method, n_bins, ratio, scale_dtype, kwargs, family=family,
                            preset=preset)
    return encode(request, V.as_float_rows(x, finite=False), eng)
