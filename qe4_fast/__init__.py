"""qe4_fast: the compiled (Cython + OpenMP) twin of :mod:`qe4`.

Same public names and signatures as :mod:`qe4`, plus a keyword-only ``n_threads=None``
(None = all usable cores honouring ``OMP_NUM_THREADS``, negative counts back from the
number of cores, see :func:`qe4_fast._threads.effective_n_threads`).  Results are
byte-identical to the reference for every input and every thread count; arguments
are validated by the same helpers (``qe4._validate``), so errors match too.  The
numerics are documented once, in the reference docstrings.

There is no fallback: without its compiled modules ``import qe4_fast`` raises an
ImportError that says how to build them.

SIMD: every kernel runs at one level, :func:`simd_level` (``"portable"``, ``"avx2"`` or
``"avx512"``): the widest this CPU runs, or the one the environment variable ``QE4_SIMD``
names when qe4_fast is imported (a bad value or a level the CPU lacks is a ValueError at
import).  The bytes are the same at every level.

Threads: kernels release the GIL and parallelize only across independent rows or
bags, on qe4_fast's own thread pool (qe4_fast/_pool_impl.h: the calling thread works
too and never waits for a helper that has not started).  ``n_threads=None`` uses the
usable CPUs (the affinity mask lowered by a cgroup CPU quota, see
:func:`qe4_fast._threads.cpu_count`); calls made at the same time from several Python
threads share them (each takes its share), so they do not oversubscribe the machine.
A child forked after qe4_fast calls starts with a fresh pool.
"""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from qe4 import frontend
from qe4.table import QuantizedTable
from qe4.api import methods

from ._threads import (BUILD_HINT, GRAIN_SEARCH, GRAIN_STREAM,  # ImportError if not built
                       effective_n_threads, openmp_enabled, shares_cores)
from ._blocks import row_blocks      # noqa: E402 -- after _threads, whose ImportError says how to build

from . import _simd   # the SIMD level (QE4_SIMD); a bad value is a ValueError here
from ._simd import simd_level

try:
    from . import _rowwise  # noqa: F401
    from .bag import dequantize, embedding, embedding_bag, embedding_bags, from_tbe, to_tbe
    from .rowwise import range_loss, row_ranges
    from .update import update_file, update_rows
except ImportError as exc:   # one compiled module missing (a partial build): no fallback
    raise ImportError(f"{BUILD_HINT} ({exc})") from exc

__all__ = [
    "QuantizedTable", "quantize", "dequantize", "embedding", "embedding_bag", "embedding_bags",
    "row_ranges", "range_loss",
    "to_tbe", "from_tbe", "methods", "openmp_enabled", "simd_level",
    "update_rows", "update_file",
]


@shares_cores
def quantize(x: ArrayLike, bits: int | None = None, method: str | None = None, *,
             preset: str | None = None, n_bins: int = 200, ratio: float = 0.16,
             scale_dtype: str | None = None, n_threads: int | None = None,
             **kwargs: Any) -> QuantizedTable:
    """Quantize each row of an embedding table; see :func:`qe4.quantize`.

    ``n_threads`` : int or None, the number of OpenMP threads (rows are split in
    independent blocks; the bytes do not depend on it).  The checks and the table
    are the front end's (:mod:`qe4.frontend`), so the errors are the reference's.
    """
    return frontend.quantize(x, bits, method, n_bins, ratio, scale_dtype, kwargs, engine="fast",
                             n_threads=n_threads, preset=preset)
