"""qe4_fast's public surface: the same names and signatures as qe4 (plus n_threads),
thread-count resolution, and no silent fallback when the compiled modules are missing."""

import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qe4
import qe4_fast
from qe4_fast._threads import effective_n_threads

# The registry shared by both packages: every name here exists in qe4 and qe4_fast.
SHARED = ["quantize", "dequantize", "embedding_bag", "row_ranges", "range_loss", "to_tbe",
          "from_tbe"]


@pytest.mark.parametrize("name", SHARED)
def test_same_signature_plus_n_threads(name):
    ref = inspect.signature(getattr(qe4, name))
    fast = inspect.signature(getattr(qe4_fast, name))
    params = list(fast.parameters.values())
    nt = fast.parameters.get("n_threads")
    assert nt is not None, f"qe4_fast.{name} has no n_threads"
    assert nt.kind is inspect.Parameter.KEYWORD_ONLY and nt.default is None
    # n_threads is the last keyword-only parameter (only **kwargs may follow it)
    after = params[params.index(nt) + 1:]
    assert all(p.kind is inspect.Parameter.VAR_KEYWORD for p in after)
    assert [p for p in params if p.name != "n_threads"] == list(ref.parameters.values())


def test_shared_objects():
    assert qe4_fast.QuantizedTable is qe4.QuantizedTable
    assert qe4_fast.methods is qe4.methods
    assert isinstance(qe4_fast.openmp_enabled(), bool)
    assert set(SHARED) <= set(qe4_fast.__all__)


def test_return_type_is_qe4_table():
    t = qe4_fast.quantize(np.ones((3, 4), np.float32), 4, "minmax")
    assert type(t) is qe4.QuantizedTable


def test_effective_n_threads(monkeypatch):
    monkeypatch.setattr(qe4_fast._threads, "_others_busy", lambda: 0.0)   # an idle machine
    if not qe4_fast.openmp_enabled():
        assert effective_n_threads(None, 100) == effective_n_threads(7, 100) == 1
        return
    from qe4_fast._threads import cpu_count, omp_max_threads
    cores = cpu_count()                              # the affinity mask and the cgroup quota
    assert effective_n_threads(None, 10**6) == min(omp_max_threads(), cores)
    assert effective_n_threads(-1, 10**6) == cores
    assert effective_n_threads(-(cores + 5), 10**6) == 1
    assert effective_n_threads(7, 10**6) == min(7, 4 * len(os.sched_getaffinity(0)))
    assert effective_n_threads(7, 3) == 3            # capped by the work
    assert effective_n_threads(None, 1) == 1
    assert effective_n_threads(np.int64(2), 10) == 2


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (0.5, TypeError), (2.0, TypeError),
                                      ("1", TypeError), (False, TypeError), ([2], TypeError)])
def test_effective_n_threads_rejects(bad, exc):
    with pytest.raises(exc, match="n_threads"):
        effective_n_threads(bad, 10)


def test_omp_num_threads_is_honoured():
    """None means OpenMP's default team, which OMP_NUM_THREADS sets."""
    code = "from qe4_fast._threads import effective_n_threads as e; print(e(None, 100), e(-1, 100))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(qe4_fast.__file__)))
    none, all_cores = map(int, out.stdout.split())
    assert none == 1
    assert all_cores == (qe4_fast._threads.cpu_count() if qe4_fast.openmp_enabled() else 1)


@pytest.mark.parametrize("hidden", ["every compiled module", "qe4_fast._bag"])
def test_import_without_compiled_modules_says_how_to_build(hidden):
    """Simulate an unbuilt (or partly built) checkout: an import hook hides compiled modules."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        HIDDEN = %r
        class HideCompiled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == HIDDEN or (HIDDEN.startswith("every") and name.startswith("qe4_fast._")
                                      and name != "qe4_fast._threads"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, HideCompiled())
        try:
            import qe4_fast
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported")
        import qe4                                # the reference never needs them
        print("qe4 ok", qe4.quantize([[1.0, 2.0]]).data.shape)
    """ % hidden)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(qe4_fast.__file__)))
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("ImportError:")
    assert "pip install ." in first and "python setup.py build_ext --inplace" in first
    assert second == "qe4 ok (1, 5)"


def test_codebook_methods_dispatch():
    """quantize hands every qe4.codebook method to qe4_fast.codebook (same table as qe4)."""
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    for method in qe4.methods()[len(qe4.uniform.V.UNIFORM_METHODS):]:
        assert qe4_fast.quantize(x, 4, method, n_threads=2) == qe4.quantize(x, 4, method)



def test_concurrent_calls_share_the_cores_and_keep_bytes(monkeypatch):
    """n_threads=None divides the cores among calls running at once in several Python
    threads (no oversubscription); nested calls count once; explicit counts are kept;
    the bytes never change."""
    import threading
    from qe4_fast import _threads
    monkeypatch.setattr(_threads, "_others_busy", lambda: 0.0)   # an idle machine

    started, hold = threading.Barrier(3), threading.Event()

    def busy():
        _threads.shares_cores(lambda: (started.wait(), hold.wait()))()

    others = [threading.Thread(target=busy) for _ in range(2)]
    for t in others:
        t.start()
    started.wait()                     # two other calls are running now
    try:
        nested = _threads.shares_cores(
            lambda: _threads.shares_cores(lambda: effective_n_threads(None, 10 ** 6))())()
    finally:
        hold.set()
        for t in others:
            t.join()
    assert _threads._active_calls == 0
    if qe4_fast.openmp_enabled():
        alone = min(_threads.omp_max_threads(), _threads.cpu_count())
        assert nested == max(1, alone // 3)
        assert effective_n_threads(None, 10 ** 6) == alone
        assert effective_n_threads(3, 10 ** 6) == 3
    else:
        assert nested == 1

    x = np.random.default_rng(5).standard_normal((3000, 40), dtype=np.float32)
    ref = qe4_fast.quantize(x, 4, "greedy", n_threads=1).data.tobytes()
    out = [None] * 4

    def work(i):
        out[i] = qe4_fast.quantize(x, 4, "greedy").data.tobytes()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert out == [ref] * 4
