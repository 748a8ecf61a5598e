"""qe4_fast's thread counts respect the machine: the cgroup CPU quota (v1 and v2, read
from a fake cgroup tree here), the affinity mask, threadpoolctl's OpenMP limit, a capped
explicit count (F4), and a child forked after a parallel call still works (F5b)."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import qe4_fast
from qe4_fast import _threads
from qe4_fast._threads import cgroup_cpu_limit, cpu_count, effective_n_threads

ROOT = os.path.dirname(os.path.dirname(qe4_fast.__file__))
V1_SELF = "4:memory:/x\n1:cpu:{path}\n0::/\n"
V2_SELF = "0::{path}\n"

# (layout, /proc/self/cgroup text, {file under the cgroup root: text}, expected CPUs)
CASES = {
    "v2 root quota": (V2_SELF.format(path="/"), {"cpu.max": "200000 100000\n"}, 2),
    "v2 fraction rounds up": (V2_SELF.format(path="/"), {"cpu.max": "150000 100000"}, 2),
    "v2 below one CPU": (V2_SELF.format(path="/"), {"cpu.max": "50000 100000"}, 1),
    "v2 max": (V2_SELF.format(path="/"), {"cpu.max": "max 100000"}, None),
    "v2 ancestor limits the leaf": (V2_SELF.format(path="/a/b"),
                                    {"cpu.max": "max 100000", "a/cpu.max": "100000 100000",
                                     "a/b/cpu.max": "300000 100000"}, 1),
    "v2 leaf limits": (V2_SELF.format(path="/a/b"),
                       {"a/cpu.max": "max 100000", "a/b/cpu.max": "100000 50000"}, 2),
    "v2 path hidden by a namespace": (V2_SELF.format(path="/elsewhere/c"),
                                      {"cpu.max": "100000 100000"}, 1),
    "v2 hybrid (unified)": (V2_SELF.format(path="/s"), {"unified/s/cpu.max": "100000 100000"}, 1),
    "v2 garbage": (V2_SELF.format(path="/"), {"cpu.max": "lots\n"}, None),
    "v1 quota": (V1_SELF.format(path="/job"),
                 {"cpu/job/cpu.cfs_quota_us": "100000\n", "cpu/job/cpu.cfs_period_us": "100000\n",
                  "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    "v1 no quota": (V1_SELF.format(path="/"),
                    {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    "v1 cpu,cpuacct": (V1_SELF.format(path="/"),
                       {"cpu,cpuacct/cpu.cfs_quota_us": "250000",
                        "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 3),
    "v1 zero period": (V1_SELF.format(path="/"),
                       {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "0"}, None),
    "no cgroup files": (V1_SELF.format(path="/"), {}, None),
}


@pytest.mark.parametrize("case", CASES)
def test_cgroup_quota_from_a_fake_tree(tmp_path, case):
    self_cgroup, files, expected = CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    assert cgroup_cpu_limit(str(tmp_path), str(tmp_path / "self_cgroup")) == expected


def test_missing_proc_file_reads_the_mount_root(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000")
    assert cgroup_cpu_limit(str(tmp_path), str(tmp_path / "absent")) == 1


def test_thread_counts_follow_the_usable_cpus(monkeypatch):
    """None and negative counts use cpu_count() (affinity lowered by the quota); explicit
    counts are capped at THREADS_PER_CPU_CAP per CPU of the affinity mask (F4)."""
    monkeypatch.setattr(_threads, "_others_busy", lambda: 0.0)   # an idle machine
    affinity = len(os.sched_getaffinity(0))
    assert 1 <= cpu_count() <= affinity
    if not qe4_fast.openmp_enabled():
        assert effective_n_threads(None, 10 ** 6) == effective_n_threads(2000, 10 ** 6) == 1
        return
    monkeypatch.setattr(_threads, "_machine_cgroup_limit", lambda: 1)   # a 1-CPU quota
    assert cpu_count() == 1
    assert effective_n_threads(None, 10 ** 6) == 1
    assert effective_n_threads(-1, 10 ** 6) == 1
    assert effective_n_threads(2, 10 ** 6) == 2              # explicit: as given
    monkeypatch.setattr(_threads, "_machine_cgroup_limit", lambda: None)
    assert effective_n_threads(None, 10 ** 6) == min(_threads.omp_max_threads(), affinity)
    assert effective_n_threads(-1, 10 ** 6) == affinity
    assert effective_n_threads(2000, 10 ** 6) == _threads.THREADS_PER_CPU_CAP * affinity


STAT = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 {0} 0 {1} 50 0 0 0 0 0 0\ncpu1 {2} 0 0 50 0 0 0 {3} 0 0\nintr 1 2\n"


@pytest.mark.parametrize("after, cpus, own, expected", [
    ((10, 0, 0, 0), {0, 1}, 0.0, 0.5),       # 10 ticks busy in 0.2 s: 0.5 CPU
    ((10, 10, 20, 0), {0, 1}, 0.0, 2.0),     # both CPUs busy the whole time
    ((10, 10, 20, 0), {0, 1}, 0.4, 0.0),     # ... all of it this process's own threads
    ((10, 10, 0, 20), {0, 1}, 0.2, 1.0),     # steal counts as busy; own time subtracted
    ((0, 0, 20, 0), {0}, 0.0, 0.0),          # a CPU outside the affinity mask does not count
])
def test_busy_cpus_from_proc_stat(after, cpus, own, expected):
    before = STAT.format(0, 0, 0, 0)
    got = _threads.busy_cpus(before, STAT.format(*after), cpus, own, 0.2, hz=100)
    assert abs(got - expected) < 1e-9


@pytest.mark.parametrize("running, own, online, mask, expected", [
    (1, 0, 2, 2, 0),        # only the reading thread runs
    (2, 0, 2, 2, 1),        # a neighbour (or torch's spinning OpenMP thread) runs
    (2, 1, 2, 2, 0),        # ... no: one of qe4_fast's own helpers, watching for a job
    (5, 0, 8, 2, 0),        # four others, assumed on the six CPUs outside the mask
    (9, 0, 8, 2, 2),        # eight others: two of them inside the mask
    (1, 3, 2, 2, 0),        # never negative
])
def test_running_others_from_loadavg(running, own, online, mask, expected):
    text = f"0.52 0.61 0.70 {running}/345 6789\n"
    assert _threads.running_others(text, own, online, mask) == expected


@pytest.mark.parametrize("text", ["", "0.1 0.2 0.3", "0.1 0.2 0.3 x/5 7\n"])
def test_running_others_without_a_count_is_zero(text):
    assert _threads.running_others(text, 0, 2, 2) == 0


def test_proc_reader_reopens_a_descriptor_that_is_not_its_file(tmp_path):
    """The kept /proc descriptor is checked before each read: closed and its number reused
    for another file (a daemon closing every descriptor), it is opened again and the other
    file is neither read nor closed."""
    reader = _threads._StatReader("/proc/loadavg")
    first = reader()
    assert len(first.split()) == 5
    os.close(reader.fd)
    with open(tmp_path / "decoy", "w+") as decoy:
        decoy.write("9.9 9.9 9.9 99/99 9\n")
        decoy.flush()
        text = reader()
        assert len(text.split()) == 5 and "99/99" not in text
        assert reader.fd != decoy.fileno()
        os.fstat(decoy.fileno())                  # still open
    assert _threads._StatReader("/nonexistent/file")() == ""


def test_a_spinning_neighbour_counts_at_the_call():
    """The count read at the call sees a process that started spinning since the last
    load sample (as torch's OpenMP threads do after a parallel region)."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        counts = [_threads.running_others(_threads._read_loadavg(), 0, os.cpu_count() or 1,
                                          os.cpu_count() or 1) for _ in range(20)]
    finally:
        spin.kill()
        spin.wait()
    assert max(counts) >= 1, counts


def test_default_leaves_out_cpus_others_keep_busy(monkeypatch):
    """A neighbour spinning on one of the usable CPUs: n_threads=None uses one fewer; an
    explicit or negative count does not change."""
    if not qe4_fast.openmp_enabled():
        pytest.skip("serial build")
    monkeypatch.setattr(_threads, "_machine_cgroup_limit", lambda: None)
    affinity = len(os.sched_getaffinity(0))
    for busy, free in [(0.0, affinity), (0.4, affinity), (1.0, max(1, affinity - 1)),
                       (float(affinity + 3), 1)]:
        monkeypatch.setattr(_threads, "_others_busy", lambda b=busy: b)
        assert _threads.free_cpus() == free
        assert effective_n_threads(None, 10 ** 6) == min(free, _threads.omp_max_threads())
        assert effective_n_threads(-1, 10 ** 6) == affinity
        assert effective_n_threads(2, 10 ** 6) == 2


def _run(code, timeout=120, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ, **env))


def test_huge_thread_count_under_an_address_space_limit():
    """F4: n_threads=2000 under ``ulimit -v`` used to end the process ("libgomp: Thread
    creation failed"); it is capped and gives the 1-thread bytes."""
    out = _run("""
        import resource, numpy as np, qe4_fast
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1])
        resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (512 << 20), resource.RLIM_INFINITY))
        x = np.random.default_rng(0).standard_normal((4000, 16)).astype(np.float32)
        t = qe4_fast.quantize(x, 4, "minmax", n_threads=2000)
        bags = qe4_fast.embedding_bag(t, np.arange(4000), np.arange(0, 4000, 8), n_threads=2000)
        assert t == qe4_fast.quantize(x, 4, "minmax", n_threads=1)
        ref = qe4_fast.embedding_bag(t, np.arange(4000), np.arange(0, 4000, 8), n_threads=1)
        assert bags.tobytes() == ref.tobytes()
        print("same bytes")
    """)
    assert (out.returncode, out.stdout.strip()) == (0, "same bytes"), out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_after_a_parallel_call_works():
    """F5b: a multiprocessing child forked after a parallel qe4_fast call used to hang in
    its first qe4_fast call (libgomp is not fork-safe); it now computes the same bytes."""
    out = _run("""
        import multiprocessing as mp, numpy as np, qe4_fast
        x = np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32)
        t = qe4_fast.quantize(x, 4, "greedy", n_threads=2)
        idx, offs = np.arange(4000)[::-1].copy(), np.arange(0, 4000, 40)
        ref = qe4_fast.embedding_bag(t, idx, offs, n_threads=2).tobytes()

        def child(q):
            same = qe4_fast.embedding_bag(t, idx, offs, n_threads=2).tobytes() == ref
            q.put(same and qe4_fast.quantize(x, 4, "greedy", n_threads=2) == t)

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        p.join(60)
        if p.is_alive():
            p.kill()
            print("child hung")
        else:
            print("child", q.get(timeout=5), p.exitcode)
    """, timeout=120)
    assert out.stdout.strip() == "child True 0", out.stderr


def test_threadpoolctl_sees_and_limits_the_openmp_runtime(monkeypatch):
    """threadpoolctl lists the OpenMP runtime qe4_fast links, and its limit lowers
    n_threads=None (qe4_fast reads OpenMP's default team size at every call)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not qe4_fast.openmp_enabled():
        pytest.skip("serial build: no OpenMP runtime")
    monkeypatch.setattr(_threads, "_others_busy", lambda: 0.0)   # as on an idle machine
    libs = [d for d in threadpoolctl.threadpool_info() if d["user_api"] == "openmp"]
    assert libs, "threadpoolctl finds no OpenMP runtime"
    before = effective_n_threads(None, 10 ** 6)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert effective_n_threads(None, 10 ** 6) == 1
        x = np.random.default_rng(1).standard_normal((999, 24)).astype(np.float32)
        assert qe4_fast.quantize(x) == qe4_fast.quantize(x, n_threads=2)
    assert effective_n_threads(None, 10 ** 6) == before


def test_no_kernel_runs_an_openmp_parallel_region():
    """Every parallel loop goes through qe4_fast's pool (_pool.h, CONTRIBUTING.rst "Parallel
    loops"): an OpenMP region would wait at its barrier for threads that have no CPU (a
    quota, a busy core) and would hang forked children again."""
    src = os.path.join(ROOT, "qe4_fast")
    for name in sorted(os.listdir(src)):
        if name.endswith((".pyx", ".pxd", ".h")):
            with open(os.path.join(src, name)) as f:
                text = f.read()
            for word in ("prange", "cython.parallel", "#pragma omp", "omp_get_thread_num"):
                assert word not in text, f"qe4_fast/{name} uses {word}: use par_run (_pool.pxd)"


def test_small_calls_run_on_the_calling_thread(monkeypatch):
    """When qe4_fast chooses (None, negative), each thread gets a grain of work; an
    explicit count is used as given."""
    monkeypatch.setattr(_threads, "_others_busy", lambda: 0.0)
    g = _threads.GRAIN_STREAM
    assert effective_n_threads(None, 10 ** 6, g - 1) == 1
    assert effective_n_threads(-1, 10 ** 6, 2 * g - 1) == 1
    assert effective_n_threads(None, 10 ** 6, 10 ** 9) == effective_n_threads(None, 10 ** 6)
    assert effective_n_threads(2, 10 ** 6, 1) == (2 if qe4_fast.openmp_enabled() else 1)
    assert effective_n_threads(None, 10 ** 6, 10 ** 5, _threads.GRAIN_SEARCH) \
        == min(effective_n_threads(None, 10 ** 6), 10 ** 5 // _threads.GRAIN_SEARCH)


def test_helpers_take_chunks_and_the_bytes_stay():
    """With the back-off after stalls switched off, helpers run some chunks of 2-thread
    calls; every call gives the 1-thread bytes; the pool exists only in the parallel build."""
    from qe4_fast import _pool
    assert _pool.threaded() == qe4_fast.openmp_enabled()
    rng = np.random.default_rng(3)
    t = qe4_fast.quantize(rng.standard_normal((20000, 64), dtype=np.float32), 4, "minmax")
    idx = rng.integers(0, 20000, 40000)
    offsets = np.arange(0, 40000, 40)
    ref = qe4_fast.embedding_bag(t, idx, offsets, n_threads=1).tobytes()
    before = _pool.stats()
    _pool.set_backoff(False)
    try:
        outs = {qe4_fast.embedding_bag(t, idx, offsets, n_threads=2).tobytes() for _ in range(40)}
    finally:
        _pool.set_backoff(True)
    after = _pool.stats()
    assert outs == {ref}
    if qe4_fast.openmp_enabled():
        assert after["jobs"] - before["jobs"] == 40 and _pool.n_helpers() >= 1
        assert after["helper_chunks"] > before["helper_chunks"]
    else:
        assert after == before


def test_concurrent_python_threads_with_explicit_counts():
    """Calls from several Python threads at once, each asking for 2 threads: one runs on
    the pool, the others on their own threads; every result has the 1-thread bytes."""
    import threading
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 33), dtype=np.float32)
    t = qe4_fast.quantize(x, 4, "minmax")
    idx = rng.integers(0, 3000, 6000)
    ref_bag = qe4_fast.embedding_bag(t, idx, np.arange(0, 6000, 7), n_threads=1).tobytes()
    ref_q = qe4_fast.quantize(x, 4, "greedy", n_threads=1)
    bad = []

    def work():
        for _ in range(5):
            if qe4_fast.embedding_bag(t, idx, np.arange(0, 6000, 7), n_threads=2).tobytes() != ref_bag:
                bad.append("bag")
            if qe4_fast.quantize(x, 4, "greedy", n_threads=7) != ref_q:
                bad.append("quantize")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert bad == []


@pytest.mark.parametrize("first", ["torch", "qe4_fast"])
def test_one_libgomp_with_torch(first):
    """torch's wheel ships libgomp.so.1 under the system soname, so one OpenMP runtime serves
    both, whichever loads first: threadpoolctl sees one, and torch.set_num_threads(1) (which
    sets OpenMP's default) lowers qe4_fast's default for the calling thread too."""
    pytest.importorskip("torch")
    pytest.importorskip("threadpoolctl")
    if not qe4_fast.openmp_enabled():
        pytest.skip("serial build: no OpenMP runtime")
    second = "qe4_fast" if first == "torch" else "torch"
    out = _run(f"""
        import {first}, {second}
        import threadpoolctl, torch
        from qe4_fast._threads import effective_n_threads
        libs = [d for d in threadpoolctl.threadpool_info() if d["user_api"] == "openmp"]
        torch.set_num_threads(1)
        print(len(libs), effective_n_threads(None, 10 ** 6), effective_n_threads(-1, 10 ** 6))
    """)
    n_libs, default, minus_one = map(int, out.stdout.split())
    assert (n_libs, default, minus_one) == (1, 1, _threads.cpu_count()), out.stderr
