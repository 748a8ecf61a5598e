"""Argument checking shared by the reference (``qe4``) and the fast twin (``qe4_fast``).

Every public function validates through these helpers, so both packages raise the
same exception with the same message for the same bad input.  Kernels behind
them receive only validated, contiguous, native-endian buffers and never raise.

Exception kinds: ``TypeError`` for a wrong kind of object or dtype,
``ValueError`` for a bad shape, value or parameter, ``IndexError`` for an
index outside the table.  Messages name the argument and the offending value.

Layer: above :mod:`qe4.layouts` and :mod:`qe4.method_registry` (the lists of bit
widths, float dtypes and methods come from them), below everything else.
"""

import numbers

import numpy as np

from . import layouts as L
from . import method_registry as M

BITS = L.BITS
#: The row-wise (uniform grid) methods, from the method registry.
UNIFORM_METHODS = M.names(family="rowwise")
SCALE_DTYPES = L.FLOAT_DTYPES
FP16_MAX = 65504.0


def check_bits(bits, allowed=None):
    """``bits`` as an int in ``allowed`` (default: every width a layout stores, :data:`qe4.layouts.BITS`)."""
    allowed = L.BITS if allowed is None else allowed
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    if int(bits) not in allowed:
        raise ValueError(f"bits must be one of {allowed}, got {bits!r}")
    return int(bits)


def check_rowwise_bits(bits):
    """``bits`` as an int the rowwise layout stores (the entry points that make or read
    only rowwise rows: ``range_loss``, TBE rows, ``from_fused``, ``"mse"``, the exports)."""
    return check_bits(bits, L.LAYOUTS["rowwise"].bits)


def check_scale_dtype(scale_dtype, bits, layout="rowwise"):
    """Resolve ``scale_dtype`` for a ``layout`` table: None means the layout's default.

    Rowwise: 2 to 6 bits default to float16 (torch's fused N-bit layout); 8 bits is
    torch's byte layout, whose scale and bias are always float32.  Codebook layouts:
    float16 centroids.  See :meth:`qe4.layouts.Layout.resolve_float_dtype`.
    """
    return L.get(layout).resolve_float_dtype(scale_dtype, bits)


def check_method(method, allowed):
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {method!r}")
    if method not in allowed:
        raise ValueError(f"method must be one of {tuple(allowed)}, got {method!r}")
    return method


def check_n_bins(n_bins):
    """``n_bins`` checked by its registry option (:data:`qe4.method_registry.N_BINS`)."""
    return M.N_BINS(n_bins)


def check_ratio(ratio):
    """``ratio`` checked by its registry option (:data:`qe4.method_registry.RATIO`)."""
    return M.RATIO(ratio)


# the most candidate ranges per row the exhaustive search may evaluate (at dim 64, about
# 0.25 s of one core per row compiled; the cost grows as (n_bins * ratio)**2 / 2, and n_bins
# goes up to 1,000,000, where one row would take hours)
MAX_SEARCH_CANDIDATES = 1_000_000


def search_candidates(method, n_bins, ratio):
    """About how many candidate ranges per row ``method`` evaluates (each one a pass over
    the row): greedy moves one bound per step for at most ``ratio * n_bins`` steps,
    evaluating both moves; exhaustive visits every state (i, j) with i + j <= that."""
    steps = int(n_bins * ratio) + 2
    if method == "exhaustive":
        return (steps + 1) * (steps + 2) // 2
    if method == "greedy":
        return 2 * steps + 1
    return 2


def check_search_cost(method, n_bins, ratio):
    """Refuse an exhaustive search whose cost per row is out of proportion (ValueError
    stating the cost); the other methods are linear in n_bins."""
    n = search_candidates(method, n_bins, ratio)
    if method == "exhaustive" and n > MAX_SEARCH_CANDIDATES:
        raise ValueError(
            f"method 'exhaustive' with n_bins={n_bins} and ratio={ratio} would evaluate about "
            f"{n:,} candidate ranges per row (a pass over the row each; the cost grows as "
            f"(n_bins * ratio)**2 / 2), more than the {MAX_SEARCH_CANDIDATES:,} allowed: lower "
            "n_bins or ratio, or use method 'greedy'")


def as_float_rows(x, name="x", *, finite=True):
    """Return ``x`` as a finite, C-contiguous, native float32 array [n_rows, n_cols].

    float16 widens exactly; float64 is rounded to float32 (nearest-even), and a
    value that overflows float32 is reported as non-finite.  Integer, bool and
    complex inputs are rejected: a table of codes passed by mistake must not be
    silently treated as weights.  ``finite=False`` leaves the finiteness check to
    the caller (qe4_fast's kernels flag non-finite rows in their own pass over the
    table and then call :func:`check_finite`, which raises this same error).
    """
    refuse_masked(x, name)
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists, objects numpy cannot take
            raise TypeError(f"{name} must be a 2-D float array, got {type(x).__name__}: {exc}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_rows, n_cols], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if finite:       # (a read-only input is fine: nothing writes to it)
        check_finite(out, name)
    return out


as_table = as_float_rows     # the old name
def refuse_masked(a, name):
    """A masked array's mask would be ignored (numpy computes on the data under it): refuse."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array, whose mask qe4 would ignore; pass "
                        f"{name}.compressed() or {name}.filled(value) instead")


def check_finite(a, name):
    finite = np.isfinite(a)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ValueError(f"{name} must be finite: {name}[{r}, {c}] = {a[r, c]!r}")


def check_fp16_ranges(x, bits, scale_dtype, name="x"):
    """Reject rows whose float16 scale or bias would overflow (float16 tables only).

    torch stores inf and later dequantizes NaN for such rows; qe4 refuses them.
    The rule: every value satisfies |v| <= 65504 rounded to float16 (so any
    clipping bound inside the row is a finite float16), and
    fp16((max - min) / (2**bits - 1)) is finite.

    float32 tables: ``max - min`` and ``max(|min|, |max|) * (2 * n_cols)`` must be
    finite in float32, so that no row statistic (ACIQ's row sum included) overflows.
    """
    if scale_dtype != "float16":
        lo = x.min(axis=1)
        hi = x.max(axis=1)
        with np.errstate(over="ignore"):
            big = np.maximum(np.abs(lo), np.abs(hi)) * np.float32(2 * x.shape[1])
            bad = ~np.isfinite(hi - lo) | ~np.isfinite(big)
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"{name}: row {r} has range [{lo[r]!r}, {hi[r]!r}], too close to the "
                             f"float32 limit (max - min and max|value| * 2 * n_cols must be finite)")
        return
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    qmax = np.float32(2 ** bits - 1)
    bad = fp16_overflow(lo, hi, bits)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(
            f"{name}: row {r} has range [{lo[r]!r}, {hi[r]!r}], which overflows the float16 "
            f"scale/bias (|value| <= {FP16_MAX} and range <= {FP16_MAX} * {int(qmax)} required); "
            "use scale_dtype='float32'")


def fp16_overflow(lo, hi, bits):
    """Rows whose float16 scale or bias would overflow for the range [lo, hi] (float32
    arrays): max(|lo|, |hi|) or (hi - lo) / (2**bits - 1) is not finite in float16."""
    qmax = np.float32(2 ** bits - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float16)
        scale = ((hi - lo) / qmax).astype(np.float16)
    return ~np.isfinite(big) | ~np.isfinite(scale)


def _row_bounds(v, name, n_rows):
    """``v`` (a real scalar or [n_rows]) as a finite float32 array [n_rows]."""
    refuse_masked(v, name)
    try:
        arr = np.asarray(v)
    except Exception as exc:
        raise TypeError(f"{name} must be a real number or array, got {type(v).__name__}: {exc}")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real number or array, got dtype {arr.dtype}")
    if arr.shape not in ((), (n_rows,)):
        raise ValueError(f"{name} must be a scalar or have shape ({n_rows},), got shape {arr.shape}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(np.broadcast_to(arr.astype(np.float32), (n_rows,)))
    bad = ~np.isfinite(out)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite in float32: {name}[{r}] = {arr.reshape(-1)[min(r, arr.size - 1)]!r}")
    return out


def check_range_loss_args(x, lo, hi, bits, scale_dtype):
    """The checks of ``range_loss`` in both packages, in one order: bits, scale_dtype,
    ``x`` (:func:`as_table`), ``lo`` and ``hi`` (real, finite, scalars or one per row),
    ``lo <= hi``, and (float16) a scale and bias that do not overflow.

    Returns ``(x, lo, hi, bits, scale_dtype)``, ``lo``/``hi`` float32 [n_rows].
    """
    bits = check_rowwise_bits(bits)
    if not isinstance(scale_dtype, str) or scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    x = as_table(x)
    lo = _row_bounds(lo, "lo", x.shape[0])
    hi = _row_bounds(hi, "hi", x.shape[0])
    bad = lo > hi
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(f"lo must be <= hi: lo[{r}] = {lo[r]!r} > hi[{r}] = {hi[r]!r}")
    with np.errstate(over="ignore"):
        bad = fp16_overflow(lo, hi, bits) if scale_dtype == "float16" else ~np.isfinite(hi - lo)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError(f"the range [lo[{r}], hi[{r}]] = [{lo[r]!r}, {hi[r]!r}] overflows the "
                         f"{scale_dtype} scale/bias")
    return x, lo, hi, bits, scale_dtype


def check_table(table):
    """``table`` must be a :class:`qe4.QuantizedTable`; see :func:`qe4.table.check_table`."""
    from .table import check_table      # the table type is a layer above: delegate
    return check_table(table)


def check_positive_int(value, name):
    """``value`` as an int >= 1 (TypeError / ValueError naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_tbe_table(table):
    """ValueError unless ``table`` (a checked QuantizedTable) can move to TBE rows: rowwise,
    at a width TBE has (2, 4 or 8 bits; :attr:`qe4.layouts.RowwiseLayout.torch_bits`)."""
    table._require_rowwise("the TBE layout")
    if table.bits not in L.LAYOUTS["rowwise"].torch_bits:
        raise ValueError(f"table has bits={table.bits}; fbgemm_gpu's TBE rows are "
                         f"{'/'.join(map(str, L.LAYOUTS['rowwise'].torch_bits))}-bit")


def check_tbe_rows(data, bits, dim, scale_dtype, row_alignment):
    """Validate TBE rows ``[scale][bias][codes][zero padding]`` (see :func:`qe4.from_tbe`).

    Returns ``(data, bits, dim, scale_dtype, qp, row_bytes)``: the uint8 rows, the
    resolved arguments, the scale/bias block size and the unpadded row size.  TBE rows
    are 2, 4 or 8 bits (:attr:`qe4.layouts.RowwiseLayout.torch_bits`).
    """
    bits = check_bits(bits, L.LAYOUTS["rowwise"].torch_bits)
    scale_dtype = check_scale_dtype(scale_dtype, bits)
    row_alignment = check_positive_int(row_alignment, "row_alignment")
    data = check_uint8_table(np.asarray(data), "data")
    rowwise = L.LAYOUTS["rowwise"]
    qp = rowwise.qparam_bytes(scale_dtype)
    if dim is None:
        dim = (data.shape[1] - qp) * 8 // bits
        if dim < 1:
            raise ValueError(f"data rows of {data.shape[1]} bytes are too short for {bits}-bit rows")
    dim = L.check_dim(dim)
    row_bytes = rowwise.row_bytes(dim, bits, scale_dtype)
    width = -(-row_bytes // row_alignment) * row_alignment
    if data.shape[1] != width:
        raise ValueError(f"data has {data.shape[1]} bytes per row; TBE rows of dim {dim} at {bits} bits "
                         f"aligned to {row_alignment} need {width}")
    if width > row_bytes and data[:, row_bytes:].any():
        r = int(np.argmax(data[:, row_bytes:].any(axis=1)))
        raise ValueError(f"data: padding bytes of row {r} are not zero")
    return data, bits, dim, scale_dtype, qp, row_bytes


def check_uint8_table(data, name="data"):
    if not isinstance(data, np.ndarray):
        data = np.asarray(data)
    if data.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {data.dtype}")
    if data.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_rows, row_bytes], got shape {data.shape}")
    return data


def _as_int_array(a, name):
    refuse_masked(a, name)
    if isinstance(a, np.ndarray):
        arr = a
    else:
        arr = np.asarray(a)
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        raise TypeError(f"{name} must be an int32 or int64 array, got dtype {arr.dtype}")
    return arr


def check_bag_args(indices, offsets, n_rows, per_sample_weights, include_last_offset, mode,
                   modes=("sum", "mean")):
    """Validate embedding-bag arguments.

    Returns ``(indices, starts, weights)`` where ``indices`` is int64 [n_indices],
    ``starts`` is int64 [n_bags + 1] (bag m covers positions starts[m]:starts[m+1]),
    and ``weights`` is float32 [n_indices] or None.  2-D ``indices`` [B, L] means B
    bags of L positions (``offsets`` must then be None).  ``n_rows=None`` skips the
    index range check (:func:`check_table_bags` checks each table's own range).
    """
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {mode!r}")
    if not isinstance(include_last_offset, (bool, np.bool_)):
        raise TypeError(f"include_last_offset must be a bool, got {include_last_offset!r}")
    idx = _as_int_array(indices, "indices")
    idx_shape = idx.shape
    if idx.ndim == 2:
        if offsets is not None:
            raise ValueError("offsets must be None when indices is 2-D [n_bags, bag_size]")
        n_bags, length = idx.shape
        starts = np.arange(n_bags + 1, dtype=np.int64) * length
        idx = idx.reshape(-1)
    elif idx.ndim == 1:
        if offsets is None:
            raise ValueError("offsets is required when indices is 1-D")
        off = _as_int_array(offsets, "offsets")
        if off.ndim != 1:
            raise ValueError(f"offsets must be 1-D, got shape {off.shape}")
        off = off.astype(np.int64)
        if include_last_offset:
            if off.size == 0:
                raise ValueError("offsets must have at least one entry with include_last_offset=True")
            if off[-1] != idx.size:
                raise ValueError(
                    f"offsets[-1] must equal len(indices) = {idx.size} with include_last_offset=True, "
                    f"got {int(off[-1])}")
            starts = off
        else:
            if off.size == 0 and idx.size:
                raise ValueError(f"offsets is empty but indices has {idx.size} entries")
            starts = np.concatenate([off, np.array([idx.size], dtype=np.int64)])
        if starts[0] != 0 and (off.size or include_last_offset):
            raise ValueError(f"offsets[0] must be 0, got {int(starts[0])}")
        steps = np.diff(starts)
        if (steps < 0).any():
            m = int(np.argmax(steps < 0))
            if m == starts.size - 2 and not include_last_offset:
                raise ValueError(
                    f"offsets[{m}] = {int(starts[m])} is past the end of indices (len {idx.size})")
            raise ValueError(
                f"offsets must be non-decreasing: offsets[{m}] = {int(starts[m])} > "
                f"offsets[{m + 1}] = {int(starts[m + 1])}")
    else:
        raise ValueError(f"indices must be 1-D or 2-D, got shape {idx.shape}")
    # callers only read idx: a writable int64 array is not copied (a read-only one is, as
    # torch.from_numpy warns about those)
    idx = idx.astype(np.int64, copy=not idx.flags.writeable)
    if n_rows is not None:          # None: the caller checks ranges (several tables)
        check_index_range(idx, n_rows)
    weights = None
    if per_sample_weights is not None:
        refuse_masked(per_sample_weights, "per_sample_weights")
        w = np.asarray(per_sample_weights)
        if w.dtype.kind != "f":
            raise TypeError(f"per_sample_weights must be a float array, got dtype {w.dtype}")
        if w.shape != idx_shape:
            raise ValueError(
                f"per_sample_weights must have the shape of indices {idx_shape}, got {w.shape}")
        w = w.reshape(-1)
        with np.errstate(over="ignore"):       # float64 beyond float32 becomes inf: reported
            weights = np.ascontiguousarray(w, dtype=np.float32)
        bad = ~np.isfinite(weights)
        if bad.any():
            p = int(np.argmax(bad))
            raise ValueError("per_sample_weights must be finite: "
                             f"per_sample_weights[{p}] = {weights[p]!r}")
    if mode != "sum" and weights is not None:
        raise ValueError("per_sample_weights is only supported with mode='sum'")
    return np.ascontiguousarray(idx), np.ascontiguousarray(starts), weights


# --------------------------------------------------------------------------- lookups

OUT_DTYPES = ("float32", "float16", "bfloat16")
LOOKUP_MODES = ("sum", "mean", "max")


def check_index_range(idx, n_rows, table_name="a table", shape=None, first=0):
    """IndexError unless every entry of int64 ``idx`` is in ``[0, n_rows)``.

    The message names the first bad position (``first + p``, or its multi-index in
    ``shape`` when given), its value, ``table_name`` and ``n_rows``.
    """
    # one pass: a negative index seen as uint64 is >= 2**63 > n_rows
    if idx.size and int(idx.view(np.uint64).max()) >= n_rows:
        bad = (idx < 0) | (idx >= n_rows)
        p = int(np.argmax(bad))
        where = first + p if shape is None or len(shape) == 1 else \
            ", ".join(map(str, np.unravel_index(p, shape)))
        raise IndexError(
            f"indices[{where}] = {int(idx[p])} is out of range for {table_name} of {n_rows} rows")


def check_out_dtype(out_dtype):
    """The name of ``out_dtype`` ("float32", "float16" or "bfloat16"; a string or a dtype).

    bfloat16 results are ``ml_dtypes.bfloat16`` arrays; ImportError if ml_dtypes is absent.
    """
    try:
        name = out_dtype if isinstance(out_dtype, str) else np.dtype(out_dtype).name
    except TypeError:
        name = None
    if name not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    if name == "bfloat16":
        bfloat16_dtype()
    return name


def bfloat16_dtype():
    """numpy's bfloat16 dtype, from ml_dtypes (ImportError with the install hint if absent)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("out_dtype='bfloat16' needs the ml_dtypes package (numpy's bfloat16 "
                          'dtype): pip install ml_dtypes, or "qe4[bfloat16]"') from None
    return np.dtype(ml_dtypes.bfloat16)


def check_gather_indices(indices, n_rows):
    """int32/int64 ``indices`` of any shape -> (int64 [n] C-contiguous, shape)."""
    idx = _as_int_array(indices, "indices")
    shape = idx.shape
    # the kernels read an index changed after this check (by another thread) as row 0
    flat = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
    check_index_range(flat, n_rows, shape=shape)
    return flat, shape


def check_tables(tables):
    """A non-empty list of :class:`qe4.QuantizedTable` (TypeError / ValueError otherwise)."""
    from .table import QuantizedTable
    if isinstance(tables, QuantizedTable) or not isinstance(tables, (list, tuple)):
        raise TypeError(f"tables must be a list or tuple of QuantizedTable, got {type(tables).__name__}")
    if not tables:
        raise ValueError("tables must hold at least one table, got an empty sequence")
    for t, table in enumerate(tables):
        if not isinstance(table, QuantizedTable):
            raise TypeError(f"tables[{t}] must be a QuantizedTable, got {type(table).__name__}")
    return list(tables)


def check_table_bags(tables, indices, offsets, per_sample_weights, include_last_offset, mode):
    """Validate a batched lookup over several tables (TBE's convention).

    ``offsets`` holds ``n_tables * n_bags`` bag starts (+1 with ``include_last_offset``),
    table-major: bag b of table t is bag ``t * n_bags + b``; its indices refer to
    ``tables[t]``.  Returns ``(tables, indices, starts, weights, n_bags)`` as
    :func:`check_bag_args` does.
    """
    tables = check_tables(tables)
    idx = _as_int_array(indices, "indices")
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D (every table's indices, concatenated), "
                         f"got shape {idx.shape}")
    if offsets is None:
        raise ValueError("offsets is required: n_tables * n_bags bag starts, table-major")
    idx, starts, w = check_bag_args(idx, offsets, None, per_sample_weights, include_last_offset,
                                    mode, LOOKUP_MODES)
    n_t = len(tables)
    total = starts.size - 1
    if total % n_t:
        raise ValueError(f"offsets describe {total} bags, not a multiple of the {n_t} tables "
                         "(table-major: n_tables * n_bags bags)")
    n_bags = total // n_t
    for t, table in enumerate(tables):
        p0, p1 = int(starts[t * n_bags]), int(starts[(t + 1) * n_bags])
        check_index_range(idx[p0:p1], table.n_rows, f"tables[{t}]", first=p0)
    return tables, idx, starts, w, n_bags
