"""Compiled row-wise quantization: the twin of :mod:`qe4.rowwise`'s encoder.

:func:`encode` is the row-wise family's compiled encoder in the method registry
(:mod:`qe4.method_registry`): the kernel is chosen by the method's registry
``code``.  Validation is the front end's (:mod:`qe4.frontend`); the value checks
(finite, float16 ranges) are flagged by the kernels and raised by the reference's
own helpers, so the errors are the reference's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from qe4.frontend import Request
    from qe4._typing import Encoded, Float32Array, Ranges

from qe4 import _validate as V
from qe4 import rowwise as R

from . import _rowwise, _simd
from ._blocks import row_blocks
from ._threads import GRAIN_SEARCH, GRAIN_STREAM, effective_n_threads, shares_cores

F32 = np.float32
#: Bit widths the compiled row kernels implement (a width the layout registry gains must
#: get its kernel here before qe4_fast accepts it).
KERNEL_BITS = (2, 3, 4, 5, 6, 8)


def check_kernel(request: Request) -> None:
    """ValueError unless the compiled row kernels implement the request's method and bits
    (never another method or width in their place)."""
    if request.method.code not in _rowwise.METHOD_CODES.values():
        raise ValueError(f"qe4_fast has no compiled row kernel for method {request.method.name!r} "
                         f"(code {request.method.code}); use engine='reference'")
    if request.bits not in KERNEL_BITS:
        raise ValueError(f"qe4_fast's row kernels do not implement bits={request.bits} "
                         f"(they do {KERNEL_BITS}); use engine='reference'")


def encode(request: Request, x: Float32Array, n_threads: int | None = None) -> Encoded:
    """``(data, extras)``: the packed rows of float32 ``x`` (shape/dtype already checked)."""
    data, _, _ = _run(request, x, n_threads, encode=True)
    return data, {}


@shares_cores
def row_ranges(x: ArrayLike, bits: int = 4, method: str = "greedy", *, n_bins: int = 200,
               ratio: float = 0.16, scale_dtype: str | None = None,
               n_threads: int | None = None) -> Ranges:
    """Each row's clipping range (lo, hi); see :func:`qe4.row_ranges`."""
    from qe4.frontend import check_request
    request = check_request(bits, method, n_bins, ratio, scale_dtype, family="rowwise")
    _, lo, hi = _run(request, V.as_float_rows(x, finite=False), n_threads, encode=False)
    return lo, hi


@shares_cores
def range_loss(x: ArrayLike, lo: ArrayLike, hi: ArrayLike, bits: int = 4,
               scale_dtype: str = "float16", *, n_threads: int | None = None) -> Float32Array:
    """L2 error of each row quantized with the range [lo, hi]; see :func:`qe4.range_loss`."""
    x, lo, hi, bits, scale_dtype = V.check_range_loss_args(x, lo, hi, bits, scale_dtype)
    n_rows = x.shape[0]
    out = np.empty(n_rows, F32)
    n_threads = effective_n_threads(n_threads, n_rows, x.size)
    if x.shape[1] == 0:
        out[:] = 0.0
        return out
    _rowwise.range_loss_rows(x, lo, hi, float(R.qmax_of(bits)), scale_dtype == "float16", out,
                             n_threads)
    return out


def _run(request, x, n_threads, encode):
    """Validate the ranges of ``x`` (float32, C order) and run the row kernel.

    Returns the packed rows (0 rows unless ``encode``) and the chosen (lo, hi) (0 rows
    for minmax with ``encode``: its fused pass keeps no ranges).  The
    kernels flag rows that are non-finite or fail ``V.check_fp16_ranges`` (same rule,
    see ``qe4_range_bad``); the helpers themselves then raise the reference's error.
    The minmax method checks after its single fused pass (its kernel has no undefined
    behaviour on any input: no float-to-int casts); the searches check first.
    """
    check_kernel(request)
    method, bits, scale_dtype = request.method, request.bits, request.scale_dtype
    code = method.code
    n_rows, n_cols = x.shape
    fused_minmax = method.name == "minmax"      # the kernel's one-pass path (code 0)
    n_threads = effective_n_threads(n_threads, -(-n_rows // _rowwise.LANES), x.size,
                                    GRAIN_STREAM if fused_minmax else GRAIN_SEARCH)
    fp16 = scale_dtype == "float16"
    if not fused_minmax:
        lo = np.empty(n_rows, F32)
        hi = np.empty(n_rows, F32)
        if _rowwise.row_minmax(x, bits, fp16, lo, hi, n_threads, _simd.LEVEL):
            _raise_bad_rows(x, bits, scale_dtype)
    dist = dict(method.fixed).get("dist")
    aciq_c = float(R.aciq_constant(bits, dist)) if dist else 0.0
    max_levels = 4 * request.n_bins + 64   # exhaustive: a guard far beyond any level a search reaches
    work = np.empty((n_threads, _rowwise.work_floats(n_cols, code, max_levels)), F32)
    n_ranges = 0 if fused_minmax and encode else n_rows   # fused minmax keeps no ranges
    lo = np.empty(n_ranges, F32)
    hi = np.empty(n_ranges, F32)
    row_bytes = request.row_bytes(n_cols)
    out = np.empty((n_rows if encode else 0, row_bytes), np.uint8)
    n_bad = 0
    cost = n_cols * V.search_candidates(method.name, request.n_bins, request.ratio)
    lanes = 1 if method.name == "exhaustive" else _rowwise.LANES     # the kernel's task size
    min_bins = float(R._min_bins(request.n_bins, request.ratio))
    for a, b in row_blocks(n_rows, cost, n_threads, lanes):          # Ctrl-C between blocks
        n_bad += _rowwise.quantize_rows(x[a:b], bits, code, fp16, float(request.n_bins),
                                        min_bins, aciq_c, max_levels, work,
                                        lo[a:b] if n_ranges else lo, hi[a:b] if n_ranges else hi,
                                        out[a:b] if encode else out, n_threads, _simd.LEVEL)
    if n_bad:
        _raise_bad_rows(x, bits, scale_dtype)
    return out, lo, hi


def _raise_bad_rows(x, bits, scale_dtype):
    """A kernel flagged a non-finite row or a range failing check_fp16_ranges: the
    reference's helpers, in the reference's order, raise the reference's error."""
    V.check_finite(x, "x")
    V.check_fp16_ranges(x, bits, scale_dtype)
    raise AssertionError("qe4_fast: a kernel flagged a row that qe4._validate accepts")
