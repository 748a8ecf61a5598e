"""Thread counts of qe4_fast, resolved in one place.

Every public function of qe4_fast takes ``n_threads=None`` and passes it through
:func:`effective_n_threads` together with its number of independent work items
(row blocks or bags).  Kernels parallelize only across such items, each computed
in a fixed sequential order, so results do not depend on the thread count.
"""

import functools
import numbers
import os
import threading

BUILD_HINT = (
    "qe4_fast's compiled extension modules are not built. Build them from the qe4 source tree "
    "with `pip install .` (or `pip install -e .`), or in place with "
    "`python setup.py build_ext --inplace`; the NumPy reference `qe4` works without them")

try:
    from ._rowwise import omp_max_threads, openmp_compiled
except ImportError as exc:  # pragma: no cover - exercised by tests/test_fast_api.py
    raise ImportError(f"{BUILD_HINT} ({exc})") from exc


def openmp_enabled():
    """True when qe4_fast was compiled with OpenMP (else every kernel runs serially)."""
    return openmp_compiled()


def _n_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def effective_n_threads(n_threads, n_work):
    """The number of threads a kernel uses.

    Parameters
    ----------
    n_threads : int or None
        None: OpenMP's default team size (all usable cores, honouring
        ``OMP_NUM_THREADS``), divided among the qe4_fast calls running at the
        same time in other Python threads (so several threads calling qe4_fast
        together do not oversubscribe the cores; see :func:`shares_cores`).
        A positive count is used as given; a negative
        count counts back from the number of usable cores (-1 = all, -2 = all
        but one, never fewer than 1).  0, booleans and non-integers are errors.
    n_work : int
        Number of independent work items; no more threads than items are used.

    Returns
    -------
    int >= 1 (always 1 when qe4_fast was built without OpenMP)

    Raises
    ------
    TypeError
        ``n_threads`` is not None or an integer.
    ValueError
        ``n_threads`` is 0.
    """
    if n_threads is not None and (isinstance(n_threads, bool)
                                  or not isinstance(n_threads, numbers.Integral)):
        raise TypeError(f"n_threads must be None or an integer, got {n_threads!r}")
    if n_threads is not None and int(n_threads) == 0:
        raise ValueError(f"n_threads must be a nonzero integer (None or -1 = all cores), got {n_threads!r}")
    if not openmp_compiled():
        return 1
    if n_threads is None:
        n = max(1, omp_max_threads() // max(1, _active_calls))
    elif n_threads < 0:
        n = max(1, _n_cores() + 1 + int(n_threads))
    else:
        n = int(n_threads)
    return max(1, min(n, int(n_work)))


_lock = threading.Lock()
_local = threading.local()
_active_calls = 0   # outermost qe4_fast calls running now, over all Python threads


def shares_cores(fn):
    """Count ``fn``'s calls as running, so that ``n_threads=None`` shares the cores.

    Each public qe4_fast function is wrapped: while k of them run at once in
    different Python threads (the kernels release the GIL), a call with
    ``n_threads=None`` takes ``omp_max_threads() // k`` threads (at least 1).
    Nested calls count once.  Results never depend on the thread count.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _active_calls
        depth = getattr(_local, "depth", 0)
        if depth == 0:
            with _lock:
                _active_calls += 1
        _local.depth = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _local.depth = depth
            if depth == 0:
                with _lock:
                    _active_calls -= 1
    return wrapper
