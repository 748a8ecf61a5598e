"""qe4_fast: the compiled (Cython + OpenMP) twin of :mod:`qe4`.

Same public names and signatures as :mod:`qe4`, plus a keyword-only ``n_threads=None``
(None = all usable cores honouring ``OMP_NUM_THREADS``, negative counts back from the
number of cores, see :func:`qe4_fast._threads.effective_n_threads`).  Results are
byte-identical to the reference for every input and every thread count; arguments
are validated by the same helpers (``qe4._validate``), so errors match too.  The
numerics are documented once, in the reference docstrings.

There is no fallback: without its compiled modules ``import qe4_fast`` raises an
ImportError that says how to build them.

Threads: kernels release the GIL and parallelize only across independent rows or
bags, on qe4_fast's own thread pool (qe4_fast/_pool_impl.h: the calling thread works
too and never waits for a helper that has not started).  ``n_threads=None`` uses the
usable CPUs (the affinity mask lowered by a cgroup CPU quota, see
:func:`qe4_fast._threads.cpu_count`); calls made at the same time from several Python
threads share them (each takes its share), so they do not oversubscribe the machine.
A child forked after qe4_fast calls starts with a fresh pool.
"""

import numpy as np

from qe4 import _validate as V
from qe4 import rowwise as R
from qe4.table import QuantizedTable
from qe4.uniform import methods

from ._threads import (BUILD_HINT, GRAIN_SEARCH, GRAIN_STREAM,  # ImportError if not built
                       effective_n_threads, openmp_enabled, shares_cores)
from ._blocks import row_blocks      # noqa: E402 -- after _threads, whose ImportError says how to build

try:
    from . import _rowwise
    from .bag import dequantize, embedding, embedding_bag, embedding_bags, from_tbe, to_tbe
except ImportError as exc:   # one compiled module missing (a partial build): no fallback
    raise ImportError(f"{BUILD_HINT} ({exc})") from exc

__all__ = [
    "QuantizedTable", "quantize", "dequantize", "embedding", "embedding_bag", "embedding_bags",
    "row_ranges", "range_loss",
    "to_tbe", "from_tbe", "methods", "openmp_enabled",
]

F32 = np.float32


@shares_cores
def quantize(x, bits=4, method="greedy", *, n_bins=200, ratio=0.16, scale_dtype=None,
             n_threads=None, **kwargs):
    """Quantize each row of an embedding table; see :func:`qe4.quantize`.

    ``n_threads`` : int or None, the number of OpenMP threads (rows are split in
    independent blocks; the bytes do not depend on it).
    """
    bits = V.check_bits(bits)
    method = V.check_method(method, methods())
    if method not in V.UNIFORM_METHODS:
        from .codebook import quantize_codebook
        return quantize_codebook(x, bits, method, scale_dtype=scale_dtype, n_threads=n_threads,
                                 **kwargs)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments for method {method!r}: {sorted(kwargs)}")
    x, n_bins, ratio, scale_dtype = V.check_uniform_args(x, bits, n_bins, ratio, scale_dtype,
                                                          finite=False)   # finite: in _run
    V.check_search_cost(method, n_bins, ratio)
    data, _, _ = _run(x, bits, method, n_bins, ratio, scale_dtype, n_threads, encode=True)
    params = {"n_bins": n_bins, "ratio": ratio} if method in ("greedy", "exhaustive") else {}
    return QuantizedTable(data, bits=bits, dim=x.shape[1], method=method,
                          scale_dtype=scale_dtype, params=params)


@shares_cores
def row_ranges(x, bits=4, method="greedy", *, n_bins=200, ratio=0.16, scale_dtype=None,
               n_threads=None):
    """Each row's clipping range (lo, hi); see :func:`qe4.row_ranges`."""
    bits = V.check_bits(bits)
    method = V.check_method(method, V.UNIFORM_METHODS)
    x, n_bins, ratio, scale_dtype = V.check_uniform_args(x, bits, n_bins, ratio, scale_dtype,
                                                          finite=False)   # finite: in _run
    V.check_search_cost(method, n_bins, ratio)
    _, lo, hi = _run(x, bits, method, n_bins, ratio, scale_dtype, n_threads, encode=False)
    return lo, hi


@shares_cores
def range_loss(x, lo, hi, bits=4, scale_dtype="float16", *, n_threads=None):
    """L2 error of each row quantized with the range [lo, hi]; see :func:`qe4.range_loss`."""
    x, lo, hi, bits, scale_dtype = V.check_range_loss_args(x, lo, hi, bits, scale_dtype)
    out = np.empty(x.shape[0], F32)
    _rowwise.range_loss_rows(x, lo, hi, float(R.qmax_of(bits)), scale_dtype == "float16", out,
                             effective_n_threads(n_threads, x.shape[0], x.size))
    return out


def _run(x, bits, method, n_bins, ratio, scale_dtype, n_threads, encode):
    """Validate the ranges of finite ``x`` (float32, C order) and run the row kernel.

    Returns the packed rows (0 rows unless ``encode``) and the chosen (lo, hi) (0 rows
    for minmax with ``encode``: its fused pass keeps no ranges).  The
    kernels flag rows that are non-finite or fail ``V.check_fp16_ranges`` (same rule,
    see ``qe4_range_bad``); the helpers themselves then raise the reference's error.
    The minmax method checks after its single fused pass (its kernel has no undefined
    behaviour on any input: no float-to-int casts); the searches check first.
    """
    n_rows, n_cols = x.shape
    n_threads = effective_n_threads(n_threads, -(-n_rows // _rowwise.LANES), x.size,
                                    GRAIN_STREAM if method == "minmax" else GRAIN_SEARCH)
    fp16 = scale_dtype == "float16"
    if method != "minmax":
        lo = np.empty(n_rows, F32)
        hi = np.empty(n_rows, F32)
        if _rowwise.row_minmax(x, bits, fp16, lo, hi, n_threads):
            _raise_bad_rows(x, bits, scale_dtype)
    code = _rowwise.METHOD_CODES[method]
    aciq = {"aciq-laplace": R.ACIQ_LAPLACE, "aciq-gauss": R.ACIQ_GAUSS}.get(method)
    aciq_c = float(aciq[bits]) if aciq else 0.0
    max_levels = 4 * n_bins + 64   # exhaustive: a guard far beyond any level a search reaches
    work = np.empty((n_threads, _rowwise.work_floats(n_cols, code, max_levels)), F32)
    n_ranges = 0 if method == "minmax" and encode else n_rows   # fused minmax keeps no ranges
    lo = np.empty(n_ranges, F32)
    hi = np.empty(n_ranges, F32)
    row_bytes = -(-n_cols * bits // 8) + 2 * np.dtype(scale_dtype).itemsize
    out = np.empty((n_rows if encode else 0, row_bytes), np.uint8)
    n_bad = 0
    cost = n_cols * V.search_candidates(method, n_bins, ratio)
    lanes = 1 if method == "exhaustive" else _rowwise.LANES      # the kernel's task size
    for a, b in row_blocks(n_rows, cost, n_threads, lanes):          # Ctrl-C between blocks
        n_bad += _rowwise.quantize_rows(x[a:b], bits, code, fp16, float(n_bins),
                                        float(R._min_bins(n_bins, ratio)), aciq_c, max_levels,
                                        work, lo[a:b] if n_ranges else lo,
                                        hi[a:b] if n_ranges else hi,
                                        out[a:b] if encode else out, n_threads)
    if n_bad:
        _raise_bad_rows(x, bits, scale_dtype)
    return out, lo, hi


def _raise_bad_rows(x, bits, scale_dtype):
    """A kernel flagged a non-finite row or a range failing check_fp16_ranges: the
    reference's helpers, in the reference's order, raise the reference's error."""
    V.check_finite(x, "x")
    V.check_fp16_ranges(x, bits, scale_dtype)
    raise AssertionError("qe4_fast: a kernel flagged a row that qe4._validate accepts")
