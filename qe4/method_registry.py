"""The method registry: one entry per quantization method.

Each :class:`Method` says everything qe4 needs to know about a method: its name and
integer ``code`` (the compiled kernels' number for it), its ``family`` (which encoder
turns its choices into rows), the ``layout`` it makes (:mod:`qe4.layouts`), whether it
is ``per_row`` (each row depends on that row alone, so a table can be quantized in
chunks: streamed, sharded, spread over Dask workers, and the bytes are those of one
call), its keyword ``options`` (with their defaults and checks; saved as the table's
``params``), its reference function in :mod:`qe4` and the compiled kernel that
reproduces it in ``qe4_fast``.

Everything that lists methods reads this registry: :func:`qe4.methods`, the front
end's checks (:mod:`qe4.frontend`), what streaming, shards and Dask accept, the
``params`` written to files, the CLI's choices and help, and the tests'
parametrization.  There is no other list.

This module imports only :mod:`qe4.layouts`; functions are named by
``"module:attribute"`` strings and imported when first used, so listing methods never
imports an algorithm (and an algorithm module that fails to import raises its own
ImportError when a method that needs it runs, never turning into "unknown method").

Adding a method: see CONTRIBUTING.rst ("Adding a method").
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layouts import Layout

from . import layouts as L


# --------------------------------------------------------------------------- option checks

def int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    """A check: an integer (not bool) in [lo, hi]; TypeError / ValueError naming the option."""
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
        return int(value)
    check.rule = f"an integer in [{lo}, {hi}]"
    return check


def one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    """A check: one of the strings ``choices``."""
    def check(value, name):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value
    check.rule = f"one of {choices}"
    return check


def real_in_half_open(lo: float, hi: float) -> Callable[[Any, str], float]:
    """A check: a real number (not bool) in [lo, hi), returned as a Python float."""
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        if not lo <= float(value) < hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}), got {value!r}")
        return float(value)
    check.rule = f"a real number in [{lo}, {hi})"
    return check


@dataclass(frozen=True)
class Option:
    """A keyword option of a method: ``check(value, name)`` returns the value to use."""
    name: str
    default: object
    check: object
    doc: str
    kind: type = None       # the value's type where the default (None) does not tell it

    def __call__(self, value):
        return self.check(value, self.name)

    @property
    def value_type(self) -> type:
        """The type a command-line flag of this option parses to."""
        return self.kind or type(self.default)


#: The search grid of greedy and exhaustive (torch's defaults).  Every method accepts
#: ``n_bins`` and ``ratio`` (they are arguments of ``qe4.quantize``) and they are always
#: checked; only the methods that declare them use them and save them in ``params``.
N_BINS = Option("n_bins", 200, int_in(1, 1_000_000), "bins of the search grid: step = (max - min) / n_bins")
RATIO = Option("ratio", 0.16, real_in_half_open(0, 1),
               "largest fraction of the range the search may trim (stops when max - min <= "
               "float32(n_bins * (1 - ratio)) * step)")
GRID_OPTIONS = (N_BINS, RATIO)


# --------------------------------------------------------------------------- families

@dataclass(frozen=True)
class Family:
    """Methods that share an encoder: ``encoder(request, x)`` in qe4 and
    ``compiled(request, x, n_threads)`` in qe4_fast return ``(data, extras)``;
    ``check_values(request, x, name)`` raises ValueError for data the family cannot
    store (both encoders run it, or an equivalent kernel flag, first)."""
    name: str
    encoder: str
    compiled: str
    check_values: str
    doc: str


FAMILIES = {
    "rowwise": Family("rowwise", "qe4.rowwise:encode", "qe4_fast.rowwise:encode",
                      "qe4.rowwise:check_values",
                      "a clipping range (lo, hi) per row, then a uniform grid of 2**bits levels"),
    "codebook": Family("codebook", "qe4.codebook:encode", "qe4_fast.codebook:encode",
                       "qe4.codebook:check_values",
                       "2**bits centroids per row or per group of rows, codes index them"),
    "mse": Family("mse", "qe4.mse:encode", "qe4_fast.mse:encode", "qe4.rowwise:check_values",
                  "each row's stored (scale, bias) of least L2 error, in the rowwise layout"),
    # group-wise scales inside a row (qe4.grouped)
    "grouped": Family("grouped", "qe4.grouped:encode", "qe4_fast.grouped:encode",
                      "qe4.grouped:check_values",
                      "a scale and min per group of values, sub_bits each under float16 "
                      "super-scales, in the grouped layout"),
}


def resolve(path: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute (ImportError propagates)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Method:
    """One quantization method.

    Attributes
    ----------
    name : str
    code : int
        The method's number in the compiled kernels (unique across methods).
    family : str
        A key of :data:`FAMILIES`.
    layout : str
        The layout of the tables it makes (a key of :data:`qe4.layouts.LAYOUTS`).
    per_row : bool
        Each row's bytes depend on that row only (streamable, shardable, chunkable).
    options : tuple of Option
        Keyword options; their values are the table's ``params``.
    reference : str
        ``"module:function"`` of the method's own computation in qe4.
    call : tuple of str
        The keyword arguments ``reference`` takes after the data, taken from the
        request (``bits``, ``scale_dtype``, ``k`` = 2**bits, and the options).
    fixed : tuple of (str, value)
        Constant keyword arguments of ``reference`` (e.g. ACIQ's distribution).
    summary : str
        One line for help texts.
    bits : tuple of int, optional
        Bit widths, when narrower than the layout's.
    """
    name: str
    code: int
    family: str
    layout: str
    per_row: bool
    reference: str
    summary: str
    options: tuple = ()
    call: tuple = ()
    fixed: tuple = ()
    bits: tuple = field(default=None)

    @cached_property
    def layout_entry(self) -> Layout:
        return L.get(self.layout)

    @property
    def allowed_bits(self) -> tuple[int, ...]:
        return self.bits or self.layout_entry.bits

    @property
    def family_entry(self) -> Family:
        return FAMILIES[self.family]

    def reference_function(self) -> Callable[..., Any]:
        return resolve(self.reference)

    def encoder(self) -> Callable[..., Any]:
        """The reference encoder ``(request, x) -> (data, extras)``."""
        return resolve(self.family_entry.encoder)

    def compiled_encoder(self) -> Callable[..., Any]:
        """The compiled encoder ``(request, x, n_threads) -> (data, extras)`` (ImportError
        when qe4_fast is not built)."""
        return resolve(self.family_entry.compiled)

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check_options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The options' values, defaults filled in, each checked in declared order.

        ``kwargs`` must hold only declared options (see :func:`qe4.frontend.check_request`).
        """
        return {o.name: o(kwargs[o.name]) if o.name in kwargs else o.default for o in self.options}

    def call_reference(self, data: Any, **available: Any) -> Any:
        """``reference(data, **{name: available[name] for name in call}, **fixed)``."""
        kw = {a: available[a] for a in self.call}
        kw.update(self.fixed)
        return self.reference_function()(data, **kw)

    def __repr__(self):
        return f"<method {self.name!r} (code {self.code}, {self.family}, layout {self.layout!r})>"


def real_in_half_open_or_none(lo: float, hi: float) -> Callable[[Any, str], float | None]:
    """A check: None, or a real number (not bool) in [lo, hi)."""
    real = real_in_half_open(lo, hi)

    def check(value, name):
        return None if value is None else real(value, name)
    check.rule = f"None or {real.rule}"
    return check


MAX_TRIM = Option("max_trim", None, real_in_half_open_or_none(0, 1),
                  "mse: largest fraction of the range the scan trims (None: per bit width, "
                  "qe4.mse.MAX_TRIM)", kind=float)
N_STEPS = Option("n_steps", 8, int_in(1, 1000), "mse: scan steps (i + j <= n_steps)")
N_KEEP = Option("n_keep", 3, int_in(1, 10**6), "mse: scanned ranges refined by least squares")
N_ITER = Option("n_iter", 3, int_in(0, 1000), "mse: least-squares rounds per refined range")
MAX_ITER = Option("max_iter", 100, int_in(1, 1_000_000),
                  "most Lloyd updates per row (split-merge moves included)")
N_GROUPS = Option("n_groups", 16, int_in(1, L.MAX_GROUPS), "number of shared codebooks")
# the grouped method (qe4.grouped): its options size the rows (qe4.layouts.GroupedLayout)
GROUP = Option("group", 32, int_in(1, L.MAX_GROUP),
               "grouped: values per group (the last group of a row holds the rest)")
SUB_BITS = Option("sub_bits", 6, int_in(L.SUB_BITS[0], L.SUB_BITS[-1]),
                  "grouped: bits of each group's sub-scale and sub-min")
LEVELS = Option("levels", "uniform", one_of(tuple(L.LEVELS)),
                "grouped: what the codes mean: 'uniform' (GGUF's K formats) or qe4's "
                "non-uniform table 'nl' (qe4.layouts.LEVELS; bits 2 to 6)", kind=str)
MINS = Option("mins", "group", one_of(L.MINS),
              "grouped: 'group' (a sub-min per group, GGUF's K formats) or 'none' (scale-only "
              "groups: signed sub-scales on a signed level table, as GGUF's Q4_0/IQ4_XS)", kind=str)

_ENTRIES = (
    Method("minmax", 0, "rowwise", "rowwise", True, "qe4.rowwise:minmax_range",
           "each row's min and max (torch's default prepack)"),
    Method("greedy", 1, "rowwise", "rowwise", True, "qe4.rowwise:greedy_range",
           "the paper's greedy clipping search (torch's optimized prepack)",
           options=GRID_OPTIONS, call=("bits", "n_bins", "ratio", "scale_dtype")),
    Method("exhaustive", 2, "rowwise", "rowwise", True, "qe4.rowwise:exhaustive_range",
           "the best range on greedy's grid (the oracle greedy is judged against)",
           options=GRID_OPTIONS, call=("bits", "n_bins", "ratio", "scale_dtype")),
    Method("aciq-laplace", 3, "rowwise", "rowwise", True, "qe4.rowwise:aciq_range",
           "ACIQ clipping at mean +- c_b * mean|x - mean| (Laplace prior)",
           call=("bits",), fixed=(("dist", "laplace"),)),
    Method("aciq-gauss", 4, "rowwise", "rowwise", True, "qe4.rowwise:aciq_range",
           "ACIQ clipping at mean +- c_b * std (Gaussian prior)",
           call=("bits",), fixed=(("dist", "gauss"),)),
    Method("kmeans", 5, "codebook", "codebook", True, "qe4.codebook:lloyd_centroids",
           "a per-row codebook by Lloyd's k-means (quantile start, split-merge moves, "
           "no randomness)",
           options=(MAX_ITER,), call=("k", "max_iter")),
    Method("kmeans-optimal", 6, "codebook", "codebook", True, "qe4.codebook:row_optimal_centroids",
           "the exact optimal per-row 1-D k-means codebook (dynamic programming)",
           call=("k",)),
    Method("two-tier", 7, "codebook", "two-tier", False, "qe4.codebook:two_tier_codebooks",
           "n_groups shared codebooks, rows grouped by the ranks of their min and max",
           options=(N_GROUPS,), call=("bits", "n_groups", "scale_dtype")),
    Method("mse", 8, "mse", "rowwise", True, "qe4.mse:mse_params",
           "each row's least-squares stored (scale, bias), searched past greedy's window",
           options=(MAX_TRIM, N_STEPS, N_KEEP, N_ITER),
           call=("bits", "scale_dtype", "max_trim", "n_steps", "n_keep", "n_iter")),
    # group-wise scales inside a row
    Method("grouped", 9, "grouped", "grouped", True, "qe4.grouped:grouped_params",
           "a scale and min per group of values (GGUF K-format-like: sub_bits each under a "
           "float16 super-scale and super-min per row)",
           options=(GROUP, SUB_BITS, LEVELS, MINS),
           call=("bits", "group", "sub_bits", "levels", "mins")),
)


def _register(entries):
    out = {}
    for m in entries:
        if m.name in out or m.code in {o.code for o in out.values()}:
            raise RuntimeError(f"method {m.name!r} or its code {m.code} is registered twice")
        if m.family not in FAMILIES:
            raise RuntimeError(f"method {m.name!r} has unknown family {m.family!r}")
        L.get(m.layout)
        out[m.name] = m
    return out


#: name -> Method, in code order.
METHODS = _register(_ENTRIES)


def names(*, family: str | None = None, layout: str | None = None,
          per_row: bool | None = None) -> tuple[str, ...]:
    """Method names (registry order), optionally only those of a family/layout/kind."""
    return tuple(m.name for m in METHODS.values()
                 if (family is None or m.family == family) and (layout is None or m.layout == layout)
                 and (per_row is None or m.per_row == per_row))


def get(name: str) -> Method:
    """The entry of method ``name``: TypeError for a non-string, ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {name!r}")
    m = METHODS.get(name)
    if m is None:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return m


def by_code(code: int) -> Method:
    """The entry whose compiled ``code`` is ``code`` (ValueError if none)."""
    for m in METHODS.values():
        if m.code == code:
            return m
    raise ValueError(f"no method has code {code!r}")


def help_text() -> str:
    """``name: summary`` of every method, for help texts (the CLI's ``--method``)."""
    return "; ".join(f"{m.name}{'' if m.per_row else ' (whole table in memory)'}: {m.summary}"
                     for m in METHODS.values())
