"""Spend a byte budget where it matters: a precision per row (or per table) under a budget.

Real tables are read unevenly: a few percent of the rows take most lookups.
:func:`allocate` chooses, for every row of one table or of many (a model), one *rung*
of a *ladder* of storage choices (pruned, 2/4/8-bit row-wise, float16, float32, ...)
so that the access-weighted squared error is the least possible within a byte
budget, every stored byte counted (codes, scales, the row map, the sub-tables'
headers).  :func:`qe4.mixed.quantize_mixed` then stores that choice as one
mixed-precision table.

The objective, for tables ``t`` with rows ``r``, weights ``w`` (access counts or
importance, 1 by default) and the chosen rung ``k(r)``::

    minimize   sum_t sum_r w[t, r] * ||x[t, r] - x_hat_k(r)[t, r]||^2
    subject to sum_t (sum_r row_bytes_k(r)(dim_t) + overhead_t) <= budget

The squared errors come from quantizing every row with every rung
(:func:`rung_errors`, in float64 summed along the row in column order); the choice is
the exact Lagrangian solution on each row's lower convex hull plus a greedy fill of
the integer remainder (:mod:`qe4._lagrange`).  ``per="table"`` gives each table one
rung (what FBGEMM's TBE and TorchRec serve): the same solver, with whole tables as the
items.

The reported ``error`` is normalized like :func:`qe4.table_error`:
``sum w ||x - x_hat||^2 / sum w ||x||^2`` over every row of every table.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from .table import QuantizedTable
    from ._typing import Float32Array, Float64Array, Int64Array, IntArray, Tables

from . import layouts as L
from . import _lagrange
from . import _validate as V
from . import engines as E
from . import frontend
from . import method_registry as M

F32 = np.float32
F64 = np.float64
PER = ("row", "table")


# --------------------------------------------------------------------------- rungs

class Rung:
    """One storage choice for a row: pruned, a float dtype, or a quantization method.

    Parameters
    ----------
    name : str
        ``"pruned"`` (the row is not stored and reads as zeros, torch's -1 rule),
        ``"float16"``, ``"float32"`` (the row's values, rounded to nearest-even), or
        ``"<method>/<bits>"``: the row quantized by :func:`qe4.quantize` with that
        method and bit width at its default options (e.g. ``"greedy/4"``).

    Attributes
    ----------
    kind : {"pruned", "float", "quantized"}
    method, bits : str, int or None
        For quantized rungs.
    """

    def __init__(self, name: str | Rung) -> None:
        if isinstance(name, Rung):
            name = name.name
        if not isinstance(name, str):
            raise TypeError(f"a ladder rung must be a string such as 'greedy/4', got {name!r}")
        self.name = name
        self.method = self.bits = None
        if name == "pruned":
            self.kind = "pruned"
        elif name in ("float16", "float32"):
            self.kind = "float"
        else:
            m = re.fullmatch(r"([a-z0-9-]+)/(\d+)", name)
            if not m:
                raise ValueError(f"unknown ladder rung {name!r}: expected 'pruned', 'float16', "
                                 "'float32' or '<method>/<bits>' such as 'greedy/4'")
            V.check_method(m.group(1), M.names(per_row=True))   # a rung is one row's choice
            self.request = frontend.check_request(int(m.group(2)), m.group(1))
            lay, mixed = self.request.layout, L.LAYOUTS["mixed"]
            if not mixed.holds(lay):
                raise ValueError(f"ladder rung {name!r}: {lay.name} rows cannot be a tier of a "
                                 f"mixed table (tiers hold {mixed.tier_layouts} rows, whose size "
                                 "depends on dim and bits alone)")
            self.kind, self.method, self.bits = "quantized", m.group(1), self.request.bits

    def row_bytes(self, dim: int) -> int:
        """Bytes one row of ``dim`` columns takes in this rung."""
        if self.kind == "pruned":
            return 0
        if self.kind == "float":
            return dim * np.dtype(self.name).itemsize
        return self.request.row_bytes(dim)

    def quantize(self, x: Float32Array, engine: str = "fast",
                 n_threads: int | None = None) -> QuantizedTable | NDArray[Any] | None:
        """The rows of ``x`` in this rung: a QuantizedTable, a float array or None (pruned)."""
        if self.kind == "pruned":
            return None
        if self.kind == "float":
            return _round_float(x, self.name)
        return _engine_call(engine, "quantize", n_threads, x, self.bits, self.method)

    def reconstruct(self, x: Float32Array, engine: str = "fast",
                    n_threads: int | None = None) -> Float32Array:
        """float32 reconstruction of the rows of ``x`` stored in this rung."""
        if self.kind == "pruned":
            return np.zeros_like(x)
        if self.kind == "float":
            return _round_float(x, self.name).astype(F32)
        return _engine_call(engine, "dequantize", n_threads, self.quantize(x, engine, n_threads))

    def __eq__(self, other):
        return isinstance(other, Rung) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Rung({self.name!r})"


def _round_float(x, dtype):
    with np.errstate(over="ignore"):
        out = np.asarray(x, F32).astype(dtype)
    if not np.isfinite(out).all():
        r = int(np.argmax(~np.isfinite(out).all(axis=1)))
        raise ValueError(f"x: row {r} overflows {dtype}; leave the float16 rung out of the ladder")
    return out


def _engine_call(engine, name, n_threads, *args):
    """``name(*args)`` of the engine (``n_threads`` for the fast one; see qe4.engines)."""
    return E.engine(engine, n_threads).call(name, *args)


#: The method of the default ladder's quantized rungs.  "mse" (the range search of least
#: squared error per row) makes better rungs than "greedy" for the allocation: on the
#: first 100,000 rows of GloVe 6B 50d with weights 1/(rank+1), the weighted error of the
#: allocation (row map "tiers") is 1.23x that of uniform 4-bit greedy at 3.0 bpw against
#: 1.82x with greedy rungs, and 0.154x against 0.197x at greedy's 29 B/row; the per-row
#: errors of the ladder take 1.4x as long (qe4_fast, 2 threads).
DEFAULT_METHOD = "mse"


def default_ladder(torch_only: bool = False) -> tuple[str, ...]:
    """The default rungs, from the registries: ``pruned``, :data:`DEFAULT_METHOD` at every
    bit width its layout stores, ``float16``, ``float32``.

    ``torch_only=True`` keeps the widths torch's fused ops and FBGEMM's TBE serve
    (:attr:`qe4.layouts.RowwiseLayout.torch_bits`: 2, 4, 8), so that every tier of a mixed
    table has a torch op (:func:`qe4.torch.to_torch_tiers`); :func:`choose_tables` (one
    precision per table, for TBE/TorchRec) uses it.  The 3, 5 and 6-bit rungs are in the
    default because they lower the error at every budget (bench/bench_budget.py, GloVe 50k
    rows weighted 1/(rank+1): 0.115x uniform 4-bit greedy's weighted error at its bytes
    with them, 0.170x without); qe4's own lookups and :class:`qe4.torch.MixedEmbeddingBag`
    serve them.
    """
    entry = M.get(DEFAULT_METHOD)
    bits = [b for b in entry.allowed_bits if not torch_only or b in entry.layout_entry.torch_bits]
    return ("pruned", *(f"{DEFAULT_METHOD}/{b}" for b in sorted(bits)), "float16", "float32")


def ladder(rungs: str | Rung | Sequence[str | Rung] | None = None) -> tuple[Rung, ...]:
    """The ladder as a tuple of :class:`Rung` (default: :func:`default_ladder`)."""
    names = default_ladder() if rungs is None else rungs
    if isinstance(names, (str, Rung)):
        names = [names]
    out = tuple(Rung(n) for n in names)
    if not out:
        raise ValueError("ladder must hold at least one rung")
    if len(set(out)) != len(out):
        raise ValueError(f"ladder repeats a rung: {[r.name for r in out]}")
    return out


# --------------------------------------------------------------------------- errors

def squared_errors(x: ArrayLike, x_hat: ArrayLike) -> Float64Array:
    """Per-row squared error ``sum_j (x[r, j] - x_hat[r, j])**2`` as float64 [n_rows].

    Each difference is taken in float64 (exact for float32 inputs of similar
    magnitude) and the squares are summed along the row in column order, so the
    compiled twin (``qe4_fast.allocate``) returns the same bits.
    """
    x = np.asarray(x, F32)
    x_hat = np.asarray(x_hat, F32)
    acc = np.zeros(x.shape[0], F64)
    for j in range(x.shape[1]):
        d = x[:, j].astype(F64) - x_hat[:, j].astype(F64)
        acc += d * d
    return acc


def rung_errors(x: ArrayLike, rungs: Sequence[str | Rung] | None = None, *, engine: str = "fast",
                n_threads: int | None = None, chunk_rows: int = 65536) -> Float64Array:
    """Squared error of every row of ``x`` under every rung: float64 [n_rows, n_rungs].

    Rows are quantized and reconstructed ``chunk_rows`` at a time with ``engine``
    (the rungs are row-wise, so the chunking does not change a byte), and
    :func:`squared_errors` compares them with ``x``.
    """
    x = V.as_table(x)
    rungs = ladder(rungs)
    chunk_rows = V.check_positive_int(chunk_rows, "chunk_rows")
    sq = _errors_kernel(engine, n_threads)
    out = np.empty((x.shape[0], len(rungs)), F64)
    for a in range(0, x.shape[0], chunk_rows):
        part = x[a:a + chunk_rows]
        for k, rung in enumerate(rungs):
            if rung.name == "float32":
                out[a:a + chunk_rows, k] = 0.0
            else:
                out[a:a + chunk_rows, k] = sq(part, rung.reconstruct(part, engine, n_threads))
    return out


def _kernel(engine, n_threads, reference, name):
    """``reference``, or qe4_fast.allocate's twin ``name`` with ``n_threads`` (same values).
    The engine and ``n_threads`` are checked as everywhere (:func:`qe4.engines.engine`)."""
    E.engine(engine, n_threads)
    if engine == "reference":
        return reference
    import qe4_fast.allocate as F
    fn = getattr(F, name)
    return lambda *args: fn(*args, n_threads=n_threads)


def _errors_kernel(engine, n_threads):
    return _kernel(engine, n_threads, squared_errors, "squared_errors")


# --------------------------------------------------------------------------- budget

def parse_budget(budget: int | str, n_elements: int) -> int:
    """A budget in bytes from an int (bytes) or a string: ``"3.0bpw"``, ``"2.5G"``, ``"1000000"``.

    ``bpw`` is bits per stored element (``n_elements`` = rows x dims summed over the
    tables): ``floor(bpw * n_elements / 8)`` bytes.  Sizes take binary multiples
    (``2.5G`` = 2.5 * 2**30 bytes), as ``qe4 quantize --max-memory`` does.
    """
    if isinstance(budget, bool):
        raise TypeError(f"budget must be an int (bytes) or a string such as '3.0bpw', got {budget!r}")
    if isinstance(budget, numbers.Integral):
        if budget < 0:
            raise ValueError(f"budget must be >= 0 bytes, got {budget}")
        return int(budget)
    if not isinstance(budget, str):
        raise TypeError(f"budget must be an int (bytes) or a string such as '3.0bpw', got {budget!r}")
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*bpw\s*", budget, re.IGNORECASE)
    if m:
        return int(float(m.group(1)) * n_elements // 8)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", budget, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a budget from {budget!r} (examples: 3.0bpw, 2.5G, 500M, "
                         "1000000)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


# --------------------------------------------------------------------------- allocate

def _tables(x, name):
    """(names, list) from one 2-D array, a sequence of them or a dict of them."""
    if isinstance(x, dict):
        return list(x), list(x.values())
    if isinstance(x, (list, tuple)):
        return [str(i) for i in range(len(x))], list(x)
    return None, [x]


def _weights(weights, names, shapes):
    """float64 weights per table (1 when None), finite and >= 0, one per row."""
    if weights is None:
        return [np.ones(n, F64) for n, _ in shapes]
    if names is None:
        weights = [weights]
    elif isinstance(weights, dict):
        if set(weights) != set(names):
            raise ValueError(f"weights must have the tables' keys {names}, got {list(weights)}")
        weights = [weights[k] for k in names]
    elif not isinstance(weights, (list, tuple)) or len(weights) != len(names):
        raise ValueError(f"weights must hold one array per table ({len(names)}), got "
                         f"{type(weights).__name__}")
    out = []
    for i, (w, (n, _)) in enumerate(zip(weights, shapes)):
        label = "weights" if names is None else f"weights[{names[i]!r}]"
        w = np.asarray(w)
        if w.dtype.kind not in "iuf":
            raise TypeError(f"{label} must be a numeric array, got dtype {w.dtype}")
        w = w.astype(F64)
        if w.shape != (n,):
            raise ValueError(f"{label} must have shape ({n},), got {w.shape}")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"{label} must be finite and >= 0: {label}[{r}] = {float(w[r])!r}")
        out.append(w)
    return out


class Allocation:
    """The result of :func:`allocate`: a rung per row (or per table), and what it costs.

    Attributes
    ----------
    ladder : tuple of Rung
    per : {"row", "table"}
    row_map : {"tiers", "renumber"}
    names : list of str or None
        The tables' keys (None for a single table).
    choices : list of int8 ndarray [n_rows]
        The ladder index of each row, one array per table.
    dims : list of int
    budget : int
        The budget in bytes.
    nbytes : int
        Bytes the stored tables take, every array counted (rows, row map, tier counts);
        ``<= budget``.
    error : float
        ``sum w ||x - x_hat||^2 / sum w ||x||^2`` over every row of every table.
    table_errors, table_nbytes : list
        The same per table.
    """

    def __init__(self, *, ladder: Sequence[Rung], per: str, row_map: str, names: list[str] | None,
                 choices: list[IntArray], dims: list[int], budget: int, nbytes: int,
                 table_nbytes: list[int], dist: Sequence[float], norm: Sequence[float]) -> None:
        self.ladder, self.per, self.row_map, self.names = ladder, per, row_map, names
        self.choices, self.dims, self.budget = choices, dims, budget
        self.nbytes, self.table_nbytes = nbytes, table_nbytes
        self.table_errors = [d / n if n > 0 else 0.0 for d, n in zip(dist, norm)]
        self.error = float(sum(dist) / sum(norm)) if sum(norm) > 0 else 0.0

    @property
    def n_elements(self) -> int:
        return int(sum(c.size * d for c, d in zip(self.choices, self.dims)))

    @property
    def bpw(self) -> float:
        """Achieved bits per stored element: ``8 * nbytes / n_elements``."""
        return 8 * self.nbytes / self.n_elements

    def mix(self) -> dict[str, tuple[int, int]]:
        """{rung name: (n_rows, bytes of those rows)} over every table, in ladder order."""
        out = {}
        for k, rung in enumerate(self.ladder):
            rows = [int(np.count_nonzero(c == k)) for c in self.choices]
            out[rung.name] = (sum(rows), sum(n * rung.row_bytes(d) for n, d in zip(rows, self.dims)))
        return out

    def summary(self) -> str:
        """A few lines: budget, achieved bytes and bpw, error, and the mix."""
        n_rows = sum(c.size for c in self.choices)
        lines = [f"budget {self.budget:,} bytes; stored {self.nbytes:,} bytes = "
                 f"{self.bpw:.3f} bits/element, {self.nbytes / n_rows:.2f} B/row "
                 f"({self.per} mode, {len(self.choices)} table(s), {n_rows:,} rows)",
                 f"weighted error {self.error:.4e}"]
        for name, (rows, nb) in self.mix().items():
            lines.append(f"  {name:<16} {rows:>12,} rows  {100 * rows / n_rows:6.2f}%  "
                         f"{nb:>14,} bytes")
        return "\n".join(lines)

    def quantize(self, x: Tables, *, engine: str = "fast", n_threads: int | None = None
                 ) -> QuantizedTable | list[QuantizedTable] | dict[str, QuantizedTable]:
        """Store the tables of ``x`` (those allocated, same structure) as chosen.

        Returns a mixed :class:`qe4.QuantizedTable` (:func:`qe4.mixed.quantize_mixed`) for
        one table, else a list or dict of them.  With ``row_map="renumber"`` each table's
        rows are renumbered by :meth:`renumbering`.
        """
        from .mixed import quantize_mixed
        names, xs = _tables(x, "x")
        if (names is None) != (self.names is None) or (names and names != self.names) \
                or len(xs) != len(self.choices):
            raise ValueError("x must hold the tables that were allocated, in the same structure")
        out = [quantize_mixed(t, c, self.ladder, row_map=self.row_map, engine=engine,
                              n_threads=n_threads) for t, c in zip(xs, self.choices)]
        if names is None:
            return out[0]
        return dict(zip(names, out)) if isinstance(x, dict) else out

    def renumbering(self, table: int | str = 0) -> Int64Array:
        """``order[new_row] = original row`` of a table (``row_map="renumber"``); see
        :func:`qe4.mixed.renumbering`.  ``table`` is an index or a key."""
        from .mixed import renumbering
        i = self.names.index(table) if isinstance(table, str) else table
        return renumbering(self.choices[i])

    def __repr__(self):
        return (f"Allocation(per={self.per!r}, tables={len(self.choices)}, budget={self.budget}, "
                f"nbytes={self.nbytes}, bpw={self.bpw:.3f}, error={self.error:.4e})")


def allocate(x: Tables, budget: int | str, *,
             weights: ArrayLike | Sequence[ArrayLike] | dict[str, ArrayLike] | None = None,
             ladder: Sequence[str | Rung] | None = None, per: str = "row", row_map: str = "tiers",
             errors: ArrayLike | Sequence[ArrayLike] | dict[str, ArrayLike] | None = None,
             engine: str = "fast", n_threads: int | None = None) -> Allocation:
    """Choose a rung of ``ladder`` for every row (or table) to minimize weighted error.

    Parameters
    ----------
    x : 2-D float array, or a list / dict of them (a model's tables)
    budget : int or str
        Total bytes (int, or a size such as ``"2.5G"``) or bits per element
        (``"3.0bpw"``); see :func:`parse_budget`.  Every stored byte counts.
    weights : array [n_rows] (or one per table, like ``x``), optional
        Access counts or importance of each row (finite, >= 0); default 1.
    ladder : sequence of str or Rung, optional
        The choices (see :class:`Rung`); default :func:`default_ladder`.
    per : {"row", "table"}
        ``"row"``: a rung per row, stored as mixed-precision tables
        (:mod:`qe4.mixed`) whose row map is counted.  ``"table"``: one rung per table.
    row_map : {"tiers", "renumber"}
        How a mixed table finds a row (counted in the budget): ``"tiers"``, a few bits
        per row plus a rank directory (:func:`qe4.mixed.map_nbytes`); ``"renumber"``,
        no per-row map: the caller renumbers its rows by the returned permutation.
    errors : float64 array [n_rows, len(ladder)] (or one per table), optional
        Squared errors of each row under each rung, as :func:`rung_errors` returns;
        computed when not given.
    engine : {"fast", "reference"}
        Computes the errors and the hulls (same bytes either way).
    n_threads : int, optional
        Threads of the fast engine.

    Returns
    -------
    Allocation

    Raises
    ------
    TypeError, ValueError
        Malformed tables, weights, errors or budget; a budget below the cheapest
        choice for every row.
    """
    from . import mixed
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    if row_map not in mixed.ROW_MAPS:
        raise ValueError(f"row_map must be one of {mixed.ROW_MAPS}, got {row_map!r}")
    rungs = globals()["ladder"](ladder)
    names, xs = _tables(x, "x")
    xs = [V.as_table(t, "x" if names is None else f"x[{names[i]!r}]") for i, t in enumerate(xs)]
    shapes = [t.shape for t in xs]
    ws = _weights(weights, names, shapes)
    if errors is None:
        errs = [rung_errors(t, rungs, engine=engine, n_threads=n_threads) for t in xs]
    else:
        errs = _check_errors(errors, names, shapes, len(rungs))
    norms = [_row_norms(t, engine, n_threads) for t in xs]
    budget = parse_budget(budget, sum(n * d for n, d in shapes))
    return solve(errs, ws, norms, [d for _, d in shapes], budget, rungs, per=per,
                 row_map=row_map, names=names, engine=engine, n_threads=n_threads)


def _row_norms(x, engine, n_threads):
    zeros = np.zeros((1, x.shape[1]), F32)
    return _errors_kernel(engine, n_threads)(x, np.broadcast_to(zeros, x.shape))


def _check_errors(errors, names, shapes, k):
    if names is None:
        errors = [errors]
    elif isinstance(errors, dict):
        errors = [errors[n] for n in names]
    out = []
    for i, (e, (n, _)) in enumerate(zip(errors, shapes)):
        label = "errors" if names is None else f"errors[{names[i]!r}]"
        e = np.asarray(e)
        if e.dtype.kind != "f":
            raise TypeError(f"{label} must be a float array, got dtype {e.dtype}")
        if e.shape != (n, k):
            raise ValueError(f"{label} must have shape ({n}, {k}) (rows x rungs), got {e.shape}")
        e = np.ascontiguousarray(e, F64)
        if np.isnan(e).any() or (e < 0).any():
            raise ValueError(f"{label} must be >= 0 and not NaN")
        out.append(e)
    return out


def solve(errors: Sequence[Float64Array], weights: Sequence[Float64Array | None],
          norms: Sequence[Float64Array], dims: Sequence[int], budget: int,
          rungs: Sequence[Rung], *, per: str = "row", row_map: str = "tiers",
          names: list[str] | None = None, engine: str = "fast",
          n_threads: int | None = None, overwrite_errors: bool = False) -> Allocation:
    """:func:`allocate` on given squared errors [n_rows, K] per table (the solver step).

    ``norms`` are the rows' squared norms (for the normalized error), ``dims`` the
    tables' widths, ``budget`` in bytes.  ``overwrite_errors=True`` lets the solver
    weight the (float64, writable) error arrays in place, which saves their size
    (:func:`qe4.stream.quantize_file_budget` does).  Returns an :class:`Allocation`.
    """
    from . import mixed
    hull = _hull(engine, n_threads)
    k = len(rungs)
    n_tab = len(errors)
    cost = np.array([[r.row_bytes(d) for r in rungs] for d in dims], np.int64)   # [n_tab, K]
    dists = [_weighted(e, w, overwrite_errors) for e, w in zip(errors, weights)]
    n_rows = np.array([e.shape[0] for e in errors], np.int64)
    check_budget(budget, n_rows, dims, rungs)
    if per == "table":
        tcost = cost * n_rows[:, None]
        tdist = np.array([d.sum(axis=0) for d in dists]).reshape(n_tab, k)
        head = mixed.map_nbytes(1, 1)          # each table is one tier: its header only
        choice, _ = _lagrange.solve(tdist, tcost, np.arange(n_tab), budget - n_tab * head,
                                    hull=hull)
        choices = [np.full(n, c, np.int8) for n, c in zip(n_rows, choice)]
        table_nbytes = [int(tcost[t, choice[t]]) + head for t in range(n_tab)]
    else:
        choices, table_nbytes = _per_row(dists, cost, budget, row_map, hull)
    dist_t = [float(d[np.arange(c.size), c].sum()) for d, c in zip(dists, choices)]
    norm_t = [float(w @ n) for w, n in zip(weights, norms)]
    return Allocation(ladder=rungs, per=per, row_map=row_map, names=names, choices=choices,
                      dims=list(dims), budget=budget, nbytes=int(sum(table_nbytes)),
                      table_nbytes=table_nbytes, dist=dist_t, norm=norm_t)


def check_budget(budget: int, n_rows: Sequence[int], dims: Sequence[int],
                 rungs: Sequence[Rung]) -> None:
    """Raise ValueError unless ``budget`` (bytes) holds every row of every table in the
    cheapest rung of ``rungs`` plus each table's tier header (the least any allocation
    stores).  ``n_rows`` and ``dims`` list the tables' shapes."""
    from .mixed import map_nbytes
    cost = [min(r.row_bytes(d) for r in rungs) for d in dims]
    least = sum(int(n) * c + map_nbytes(1, 1) for n, c in zip(n_rows, cost))
    if budget < least:
        n_el = sum(int(n) * d for n, d in zip(n_rows, dims))
        cheapest = min(rungs, key=lambda r: sum(r.row_bytes(d) for d in dims)).name
        raise ValueError(f"budget of {budget:,} bytes is below the {least:,} bytes of the "
                         f"cheapest rung ({cheapest}) for every row, tier headers included "
                         f"({8 * budget / n_el:.3f} < {8 * least / n_el:.3f} bits/element)")


def _weighted(e, w, in_place=False):
    """``w * e`` per row (into ``e`` when ``in_place``); a rung a row cannot take (inf
    error) stays unavailable (inf) at weight 0, where the product would be NaN."""
    zero = np.flatnonzero(w == 0)
    unavailable = np.isinf(e[zero])
    with np.errstate(invalid="ignore"):             # inf * 0, set right below
        d = np.multiply(e, w[:, None], out=e if in_place else None)
    if zero.size:
        d[zero] = np.where(unavailable, np.inf, 0.0)
    return d


def _per_row(dists, cost, budget, row_map, hull):
    """A rung per row of every table: the solver with the row maps' bytes taken off.

    A table's map depends on how many rungs its rows use.  The first pass charges the
    map of every rung (of only the cheapest when that does not fit: tiny tables).  When
    the rungs a table's rows use need fewer tier bits than were charged, a second pass
    re-solves with the unused rungs removed and their smaller map, so the freed bytes
    (1/8 byte per row per bit) are spent; a smaller saving (the 4-byte rank entry per
    256 rows and 32-byte header of an unused rung) is left unspent.  Every byte
    stored is counted either way.  Returns (choices, table_nbytes).
    """
    from . import mixed
    k = cost.shape[1]
    sizes = [d.shape[0] for d in dists]
    group = np.repeat(np.arange(len(dists)), sizes)
    allowed = [np.ones(k, bool)] * len(dists)
    for attempt in range(2):
        over = sum(mixed.map_nbytes(n, int(a.sum()), row_map) for n, a in zip(sizes, allowed))
        least = over + int(sum(n * cost[t][a].min() for t, (n, a) in enumerate(zip(sizes, allowed))))
        if budget < least and attempt == 0:
            allowed = [c == c.min() for c in cost]
            continue
        if budget < least:
            raise ValueError(f"budget of {budget} bytes is below the {least} bytes of the "
                             f"cheapest rung for every row ({over} of them tier headers and "
                             "row maps)")
        parts = [d if a.all() else np.where(a[None, :], d, np.inf) for d, a in zip(dists, allowed)]
        dist = parts[0] if len(parts) == 1 else np.concatenate(parts)
        choice, _ = _lagrange.solve(dist, cost, group, budget - over, hull=hull)
        parts = np.split(choice, np.cumsum(sizes)[:-1])
        used = [np.bincount(p, minlength=k) > 0 for p in parts]
        if all(mixed.tier_bits(u.sum()) == mixed.tier_bits(a.sum()) or row_map == "renumber"
               for u, a in zip(used, allowed)):
            break
        allowed = used
    choices = [p.astype(np.int8) for p in parts]
    table_nbytes = [int(cost[t, p].sum()) + mixed.map_nbytes(p.size, int(u.sum()), row_map)
                    for t, (p, u) in enumerate(zip(parts, used))]
    return choices, table_nbytes


def _hull(engine, n_threads):
    return _kernel(engine, n_threads, _lagrange.hull, "hull")


# --------------------------------------------------------------------------- whole models

class TableChoices(dict):
    """``{table name: QuantizedTable or None}`` from :func:`choose_tables`, with the
    :class:`Allocation` behind it as ``.allocation``."""

    allocation = None


def choose_tables(tables: Mapping[str, ArrayLike], budget: int | str, *,
                  weights: Mapping[str, ArrayLike | None] | None = None,
                  ladder: Sequence[str] | None = None, engine: str = "fast",
                  n_threads: int | None = None) -> TableChoices:
    """One rung per table of a model under a byte budget (what TBE and TorchRec serve).

    :func:`allocate` with ``per="table"``: each table is stored whole in one rung of
    ``ladder``, chosen so that the weighted error over every row of every table is the
    least within ``budget``.  The result is what :func:`qe4.torch.quantize_model` takes
    as its ``tables`` (it calls this function when given ``budget=``).

    Parameters
    ----------
    tables : dict {name: 2-D float array}
        The model's embedding tables (e.g. module name -> weight).
    budget : int or str
        Bytes, a size (``"2.5G"``) or bits per element over all the tables' elements
        (``"3.0bpw"``); see :func:`parse_budget`.  Each table is charged its stored bytes
        plus the 16-byte tier header a one-tier mixed table has (a rowwise table stores
        16 bytes less: the total stays within the budget).
    weights : dict {name: array [n_rows]}, optional
        Access counts or importance of the rows, in the same units for every table (a
        table with larger counts weighs more); a table left out counts each row once.
    ladder : sequence of str or Rung, optional
        The choices (default ``default_ladder(torch_only=True)``: the widths TBE serves).
    engine, n_threads
        As for :func:`allocate`; they also store the chosen tables (same bytes).

    Returns
    -------
    TableChoices
        ``{name: choice}``: the table quantized in its rung (a rowwise
        :class:`qe4.QuantizedTable` for a ``method/bits`` rung, a one-tier mixed table
        for ``float16`` or ``pruned``, and for ``float32`` None when the table already is
        float32, meaning "keep it in float"), with ``.allocation`` the
        :class:`Allocation`.
    """
    if not isinstance(tables, dict) or not tables:
        raise TypeError(f"tables must be a non-empty dict of name -> 2-D float array, got "
                        f"{type(tables).__name__}" + (" (empty)" if tables == {} else ""))
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(tables), key=str)
    if unknown:
        raise ValueError(f"weights names tables that are not in tables: {unknown}; the tables "
                         f"are {sorted(tables, key=str)}")
    full = {n: weights[n] if n in weights else np.ones(np.shape(t)[0]) for n, t in tables.items()}
    if ladder is None:
        ladder = default_ladder(torch_only=True)
    alloc = allocate(tables, budget, weights=full, ladder=ladder, per="table", engine=engine,
                     n_threads=n_threads)
    out = TableChoices()
    out.allocation = alloc
    for name, x, choice in zip(alloc.names, tables.values(), alloc.choices):
        rung = alloc.ladder[int(choice[0])] if choice.size else alloc.ladder[0]
        if rung.kind == "quantized":
            out[name] = rung.quantize(V.as_table(x, f"tables[{name!r}]"), engine, n_threads)
        elif rung.name == "float32" and np.asarray(x).dtype == F32:
            out[name] = None
        else:
            from .mixed import quantize_mixed
            out[name] = quantize_mixed(x, np.zeros(np.shape(x)[0], np.int8), [rung],
                                       engine=engine, n_threads=n_threads)
    return out
