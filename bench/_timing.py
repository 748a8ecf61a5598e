"""What the bench scripts share: this source tree's packages, timing, the machine line, results.

Importing this module puts the repository root first on ``sys.path``, so that a bench script
run from a source checkout (``python bench/bench_x.py``) measures the qe4 and qe4_fast of
that checkout, built in place (``python setup.py build_ext --inplace``), without installing
them; bench_contention's worker processes get the same root through ``PYTHONPATH``
(:func:`source_env`).

Timing on a shared machine: only ratios taken in one run mean anything.
:func:`best_interleaved` calls every contender once per round so that a burst of noise hits
them alike; :func:`interleaved_times` keeps every call's time (medians and tails,
:func:`stats`).
"""

import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

if ROOT not in sys.path[:1]:
    sys.path.insert(0, ROOT)


def source_env(env=None):
    """``env`` (default: this process's environment) with the source tree first on PYTHONPATH,
    for a subprocess that must import the same packages."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + rest)
    return env


def best_of(fn, repeat=1):
    """(best seconds of ``repeat`` calls of ``fn``, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_interleaved(fns, rounds):
    """(best seconds of each function, their last results) over ``rounds`` rounds that call
    the functions in turn, so that a burst of noise on a shared machine hits every contender
    alike (for sub-millisecond calls)."""
    best, outs = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, outs


def interleaved_times(fns, calls, seed=0):
    """Per-call seconds (an array of ``calls``) of each function, called in rounds in a new
    random order each round (seeded): no contender always runs first, nor always right after
    the same other one (a rotation of one order would keep every contender's predecessor,
    and a call right after another one inherits its caches and its threads' spinning)."""
    times = [np.empty(calls) for _ in fns]
    rng = np.random.default_rng(seed)
    for r in range(calls):
        for j in rng.permutation(len(fns)):
            t0 = time.perf_counter()
            fns[j]()
            times[j][r] = time.perf_counter() - t0
    return times


def stats(ts):
    """Median and 99th percentile of per-call times."""
    return {"median": float(np.median(ts)), "p99": float(np.percentile(ts, 99))}


def machine_line():
    """The machine and the compiled twin's build: CPUs, usable cores, SIMD level, OpenMP."""
    line = (f"{platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} "
            "usable)")
    try:
        import qe4_fast
    except ImportError as exc:
        return f"{line}, qe4_fast not built ({exc})"
    return f"{line}, qe4_fast SIMD level {qe4_fast.simd_level()}, OpenMP {qe4_fast.openmp_enabled()}"


def load_line(when):
    """``"load average <when>: 1m 5m 15m"`` (when: "before", "after", ...)."""
    return f"load average {when}: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"


def same_bytes(a, b, what, prog="bench"):
    """Exit (nothing timed) unless ``a`` and ``b`` have the same shape, dtype and bytes."""
    a = np.ascontiguousarray(np.asarray(a))
    b = np.ascontiguousarray(np.asarray(b))
    if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a.view(np.uint8),
                                                                      b.view(np.uint8)):
        sys.exit(f"{prog}: BYTES DIFFER for {what}: nothing timed")


def write_results(text, path):
    """Write ``text`` (one final newline) to ``path``, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    return path
