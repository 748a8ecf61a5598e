"""Thread counts of qe4_fast, resolved in one place.

Every public function of qe4_fast takes ``n_threads=None`` and passes it through
:func:`effective_n_threads` together with its number of independent work items
(row blocks or bags).  Kernels parallelize only across such items, each computed
in a fixed sequential order, so results do not depend on the thread count.

The machine's usable CPUs (:func:`cpu_count`) are the fewest of the CPUs in the
process's affinity mask (``taskset``, ``docker --cpuset-cpus``) and the CPUs its
cgroup's CPU-bandwidth quota allows (``docker --cpus``, a Kubernetes CPU limit),
read as loky's ``cpu_count`` reads them: cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``ceil(quota / period)``.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import threading
import time

BUILD_HINT = (
    "qe4_fast's compiled extension modules are not built. Build them from the qe4 source tree "
    "with `pip install .` (or `pip install -e .`), or in place with "
    "`python setup.py build_ext --inplace`; the NumPy reference `qe4` works without them")

try:
    from ._pool import watching as _pool_watching
    from ._rowwise import omp_max_threads, openmp_compiled
except ImportError as exc:  # pragma: no cover - exercised by tests/test_fast_api.py
    raise ImportError(f"{BUILD_HINT} ({exc})") from exc

# An explicit thread count is capped at this many threads per CPU of the affinity mask:
# more only adds switching, and a mistyped count (2000) would otherwise ask the system for
# thousands of threads (under an address-space limit, ``ulimit -v``, that ends the process).
THREADS_PER_CPU_CAP = 4


def openmp_enabled() -> bool:
    """True when qe4_fast was compiled with OpenMP (else every kernel runs serially)."""
    return openmp_compiled()


def _mask():
    """The CPUs of the affinity mask (all CPUs where the system cannot tell)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _affinity_cpus():
    return len(_mask())


def _read_words(path):
    try:
        with open(path) as f:
            return f.read().split()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota, period):
    """ceil(quota / period) for a positive quota, None for no limit ("max", -1, garbage)."""
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _v2_limit(directory):
    words = _read_words(os.path.join(directory, "cpu.max"))
    return _quota_cpus(*words) if words and len(words) == 2 else None


def _v1_limit(directory):
    quota = _read_words(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read_words(os.path.join(directory, "cpu.cfs_period_us"))
    return _quota_cpus(quota[0], period[0]) if quota and period else None


def _walk_up(mount, path):
    """``mount`` joined with the process's cgroup ``path``, then each parent up to ``mount``.

    A quota set on an ancestor limits every cgroup below it, so all levels count.  When
    the joined directory does not exist (a container whose cgroup namespace hides its
    path), only ``mount`` itself is read, as loky does."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    leaf = os.path.join(mount, *parts)
    if not os.path.isdir(leaf):
        parts = []
    while True:
        yield os.path.join(mount, *parts)
        if not parts:
            return
        parts.pop()


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPUs the process's cgroup CPU-bandwidth quota allows, or None without a quota.

    Parameters
    ----------
    root : str
        Where the cgroup file systems are mounted: cgroup v2 at ``root`` (or at
        ``root/unified`` in the hybrid layout), v1's ``cpu`` controller at ``root/cpu``
        (or ``root/cpu,cpuacct``).
    proc_cgroup : str
        The process's cgroup membership file (lines ``id:controllers:path``).

    Returns
    -------
    int >= 1 or None
        The smallest ``ceil(quota / period)`` over the process's cgroup and its
        ancestors, for cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``,
        ``cpu.cfs_period_us``) alike; None when no level sets a quota ("max" or -1).
    """
    lines = []
    try:
        with open(proc_cgroup) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except (OSError, UnicodeDecodeError):
        pass
    v2_path, v1_path = "/", "/"
    for fields in lines:
        if len(fields) != 3:
            continue
        if fields[0] == "0" and fields[1] == "":
            v2_path = fields[2]
        elif "cpu" in fields[1].split(","):
            v1_path = fields[2]
    limits = []
    for mount in (root, os.path.join(root, "unified")):
        limits += [_v2_limit(d) for d in _walk_up(mount, v2_path)]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        limits += [_v1_limit(d) for d in _walk_up(os.path.join(root, name), v1_path)]
    limits = [n for n in limits if n is not None]
    return min(limits) if limits else None


@functools.lru_cache(maxsize=None)
def _machine_cgroup_limit():
    return cgroup_cpu_limit()


def cpu_count():
    """The CPUs this process can use: the affinity mask, lowered by a cgroup CPU quota.

    The quota is read once per process (:func:`cgroup_cpu_limit`); the affinity mask at
    every call.  Always >= 1.
    """
    limit = _machine_cgroup_limit()
    n = _affinity_cpus()
    return max(1, min(n, limit) if limit is not None else n)


# Other threads' load.  With another process busy on one of 2 cores, a second thread
# of ours shares that core and the call waits for whichever of its threads the neighbour
# delays: n_threads=None leaves such CPUs out, as OpenMP's OMP_DYNAMIC does from the load
# average, but measured over the last LOAD_WINDOW seconds from /proc/stat (the CPUs of the
# affinity mask, minus this process's own CPU time), and from the threads running at the
# call (/proc/loadavg's count of running threads: also this process's other threads, such
# as torch's OpenMP threads spinning after a parallel region).
LOAD_WINDOW = 0.1


def _busy_ticks(text, cpus):
    """Clock ticks the CPUs in ``cpus`` spent busy, summed from /proc/stat's ``cpuN`` lines."""
    total = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu"):
            break                                    # the cpu lines come first
        if not (name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        f = [int(v) for v in rest.split()]
        # user nice system idle iowait irq softirq steal [guest guest_nice: in user]
        total += sum(f[:3]) + sum(f[5:8])
    return total


def busy_cpus(before, after, cpus, own_seconds, wall_seconds, hz=100):
    """CPUs' worth of time that other processes kept busy between two /proc/stat samples.

    Parameters
    ----------
    before, after : str
        The text of /proc/stat at the start and the end of the interval.
    cpus : set of int
        The CPUs that count (the affinity mask).
    own_seconds : float
        This process's CPU time (user + system, all its threads) in the interval.
    wall_seconds : float
        The interval's length.
    hz : int
        /proc/stat's clock ticks per second (``os.sysconf("SC_CLK_TCK")``).

    Returns
    -------
    float >= 0 (0.0 when the samples cannot be read)
    """
    try:
        return _busy_share(_busy_ticks(after, cpus) - _busy_ticks(before, cpus),
                           own_seconds, wall_seconds, hz)
    except (ValueError, IndexError):
        return 0.0


def _busy_share(ticks, own_seconds, wall_seconds, hz):
    if wall_seconds <= 0:
        return 0.0
    return max(0.0, (ticks / hz - own_seconds) / wall_seconds)


class _StatReader:
    """A /proc file read with one pread on a descriptor kept open (/proc/stat in ~10 us,
    against ~40 us for open + read + close; /proc/loadavg in ~4 us): the reads happen on
    the calling thread of a qe4_fast call, so their cost lands in that call's latency.  A
    forked child inherits the descriptor; these files are the same for every process.  The
    descriptor is checked to still be that file before each read (a daemon that closed every
    descriptor may have reused its number for a file of its own), else it is opened again."""

    def __init__(self, path):
        self.path, self.fd, self.ident = path, None, None

    def _open(self):
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        self.fd, self.ident = fd, (st.st_dev, st.st_ino)

    def __call__(self):
        try:
            if self.fd is None:
                self._open()
            else:
                try:
                    st = os.fstat(self.fd)
                    ok = (st.st_dev, st.st_ino) == self.ident
                except OSError:
                    ok = False
                if not ok:              # not ours any more: leave it, open the file again
                    self._open()
            return os.pread(self.fd, 1 << 16, 0).decode("ascii", "replace")
        except (OSError, AttributeError):
            self.fd = None
            return ""


_read_stat = _StatReader("/proc/stat")
_ONLINE = os.cpu_count() or 1      # read once: os.cpu_count() reads a /sys file (~20 us)
_read_loadavg = _StatReader("/proc/loadavg")
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _sample():
    """(time, busy ticks of the affinity mask's CPUs, this process's CPU seconds)."""
    try:
        ticks = _busy_ticks(_read_stat(), _mask())
    except (ValueError, IndexError):
        ticks = None
    return time.monotonic(), ticks, sum(os.times()[:2])


_load = dict(zip(("t", "ticks", "own"), _sample()), busy=0.0)


def running_others(text, own_running, online, mask):
    """Threads other than the caller's running now on the CPUs of the affinity mask.

    Parameters
    ----------
    text : str
        /proc/loadavg (``"0.50 0.40 0.30 3/456 789"``); its fourth field's ``3`` counts
        the threads running or waiting for a CPU on the whole machine at the moment it
        was read, the reading thread included.
    own_running : int
        Other running threads of this process that are not a neighbour's (qe4_fast's
        calls in other Python threads and helpers watching for a job).
    online, mask : int
        The machine's CPUs, and those of the affinity mask: other threads are assumed to
        fill the CPUs outside the mask first.

    Returns
    -------
    int >= 0 (0 when the count cannot be read)
    """
    fields = text.split()
    try:
        running = int(fields[3].partition("/")[0])
    except (IndexError, ValueError):
        return 0
    return max(0, running - 1 - own_running - max(0, online - mask))


def _others_busy():
    """Other threads' busy CPUs: the most of the share they kept busy over the last
    LOAD_WINDOW seconds (sampled at most every LOAD_WINDOW seconds; between samples the
    last value) and how many run now (read at every call).

    The window sees a neighbour process; the count at the call also sees a burst that
    began since the last sample, such as the OpenMP threads of torch (or of any library
    in the process) spinning for milliseconds after a parallel region: a helper of ours
    woken then would share a CPU with them, and the call would wait for its chunk."""
    if time.monotonic() - _load["t"] >= LOAD_WINDOW:
        t, ticks, own = _sample()
        busy = 0.0
        if ticks is not None and _load["ticks"] is not None:
            busy = _busy_share(ticks - _load["ticks"], own - _load["own"], t - _load["t"], _HZ)
        _load.update(t=t, ticks=ticks, own=own, busy=busy)
    now = running_others(_read_loadavg(), _pool_watching() + max(0, _active_calls - 1),
                         _ONLINE, _affinity_cpus())
    return max(_load["busy"], float(now))


def free_cpus():
    """:func:`cpu_count` less the CPUs other threads keep busy (:func:`_others_busy`,
    rounded), at least 1."""
    n = cpu_count()
    return max(1, min(n, int(n - _others_busy() + 0.5)))


# Grains: the least work, in elements (values read or written), that each thread of a
# call with n_threads None or negative must get, else the call uses fewer threads (down
# to the calling thread alone).
# Waking a helper costs tens of microseconds, so each thread needs ~100 us of work:
# about 2**18 elements for streaming kernels (bags, dequantize, min/max quantize,
# TBE conversion; ~0.4 ns each on one core) and 2**13 for the range searches and
# codebook fits (~10-100 ns each).  bench/bench_contention.py --grain measures the
# crossover of 1 and 2 threads for bags.
GRAIN_STREAM = 1 << 18
GRAIN_SEARCH = 1 << 13


def effective_n_threads(n_threads, n_work, elements=None, grain=GRAIN_STREAM):
    """The number of threads a kernel uses.

    Parameters
    ----------
    n_threads : int or None
        None: all usable CPUs (:func:`cpu_count`: the affinity mask and the cgroup CPU
        quota) that other threads have not kept busy over the last 0.1 s and that none
        is running on at the call (:func:`free_cpus`; read only when the call is large
        enough for more than one thread), or fewer when OpenMP's default team is smaller (``OMP_NUM_THREADS``,
        ``threadpoolctl.threadpool_limits(..., user_api="openmp")``), divided among the
        qe4_fast calls running at the same time in other Python threads (so several
        threads calling qe4_fast together do not oversubscribe the cores; see
        :func:`shares_cores`).  A negative count counts back from the usable CPUs
        (-1 = all, -2 = all but one, never fewer than 1).  A positive count is used as
        given, up to ``THREADS_PER_CPU_CAP`` (4) threads per CPU of the affinity mask.
        0, booleans and non-integers are errors.
    n_work : int
        Number of independent work items; no more threads than items are used.
    elements : int, optional
        The call's work in elements (values read or written).  When qe4_fast chooses
        the count (None or negative), each thread gets at least ``grain`` of them, so
        small calls run on the calling thread; an explicit count is used as given.
    grain : int
        ``GRAIN_STREAM`` (the default) or ``GRAIN_SEARCH``.

    Returns
    -------
    int >= 1 (always 1 when qe4_fast was built without OpenMP).  The pool treats it as
    the most threads the call may use: helpers that do not get a CPU in time leave
    their share to the calling thread (see qe4_fast/_pool_impl.h).

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
    if n_threads is None or n_threads < 0:
        n = cpu_count() if n_threads is None else cpu_count() + 1 + int(n_threads)
    else:
        n = min(int(n_threads), THREADS_PER_CPU_CAP * _affinity_cpus())
    n = min(n, int(n_work))
    if elements is not None and (n_threads is None or n_threads < 0):
        n = min(n, int(elements) // grain)
    if n_threads is None and n > 1:     # the neighbours are read only for a parallel call
        n = min(n, min(omp_max_threads(), free_cpus()) // max(1, _active_calls))
    return max(1, n)


_lock = threading.Lock()
_local = threading.local()
_active_calls = 0   # outermost qe4_fast calls running now, over all Python threads


def shares_cores(fn):
    """Count ``fn``'s calls as running, so that ``n_threads=None`` shares the cores.

    Each public qe4_fast function is wrapped: while k of them run at once in
    different Python threads (the kernels release the GIL), a call with
    ``n_threads=None`` takes ``1 / k`` of the threads it would take alone (at least 1).
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


def _after_fork_in_child():
    """A forked child has none of the parent's other threads: no call is running there.
    (The compiled pool resets itself in the child too, see _pool_impl.h.)"""
    global _active_calls, _lock
    _lock = threading.Lock()
    _active_calls = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
