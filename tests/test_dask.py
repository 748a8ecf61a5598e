"""qe4.dask on a real dask.distributed cluster of worker processes on loopback.

Every test is bounded: the cluster calls take a ``timeout`` and pytest-timeout
stops anything that would still hang.
"""

import os
import signal
import sys

import numpy as np
import pytest

import qe4
from conftest import ROWWISE_BITS
from qe4 import _validate as V
from qe4 import shards as S

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
qd = pytest.importorskip("qe4.dask")

# The fault hooks below run on the workers: ship them by value, whatever name this
# test module was imported under.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 60   # seconds any one cluster call may take before the test fails
# The cluster fixture is per test, so no test waits for a killed worker's replacement once
# it is done (on a loaded 2-core machine a nanny's restart took over 4 minutes).


def _weights(n_rows, dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32) * rng.uniform(0.01, 5, (n_rows, 1))
    x[3] = 1.5                                    # a constant row
    x[7, : dim // 2] = 0.0                        # zeros (the +0.0 bias rule)
    return x


@pytest.fixture(scope="module")
def client():
    # two worker processes on loopback; ":0" lets the OS pick free ports (other jobs may
    # hold dask's default ones)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", scheduler_port=0, dashboard_address=":0",
                                  worker_dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout=TIMEOUT) as c:
        yield c


def _engines():
    try:
        from qe4_fast import quantize  # noqa: F401
    except ImportError:
        return ["reference"]
    return ["reference", "fast"]


# ---------------------------------------------------------------------- byte identity

CHUNKINGS = {"one": 121, "even": 40, "ragged": ((1, 50, 7, 63), 13)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("bits", ROWWISE_BITS)
def test_every_uniform_method_matches_one_machine(client, bits, engine, same_bytes):
    x = _weights(121, 13 if bits != 2 else 12)
    for method in V.UNIFORM_METHODS:
        want = qe4.quantize(x, bits, method)
        for name, chunks in CHUNKINGS.items():
            d = da.from_array(x, chunks=chunks)
            got = qd.to_table(d, bits, method, engine=engine, timeout=TIMEOUT)
            same_bytes(got.data, want.data)
            assert (got.method, got.params, got.scale_dtype, got.dim) == (
                want.method, want.params, want.scale_dtype, want.dim), (method, name)


@pytest.mark.timeout(120)
def test_options_and_float16_input(client, same_bytes):
    x = _weights(90, 10).astype(np.float16)
    d = da.from_array(x, chunks=(30, 4))
    for kw in [{"n_bins": 100, "ratio": 0.3}, {"scale_dtype": "float32"}]:
        got = qd.to_table(d, 4, "greedy", engine="reference", timeout=TIMEOUT, **kw)
        same_bytes(got.data, qe4.quantize(x, 4, "greedy", **kw).data)


@pytest.mark.timeout(120)
def test_sharded_output_matches_one_machine(client, tmp_path, same_bytes):
    x = _weights(121, 13)
    want = qe4.quantize(x, 4, "greedy")
    d = da.from_array(x, chunks=((1, 50, 7, 63), 13))
    st = qd.to_sharded(d, tmp_path / "t", 4, "greedy", engine="reference", timeout=TIMEOUT)
    assert [(s["start"], s["stop"]) for s in st.index["shards"]] == [(0, 1), (1, 51), (51, 58), (58, 121)]
    st = S.open_sharded(tmp_path / "t", verify=True)
    same_bytes(st.to_table().data, want.data)
    idx = np.array([120, 0, 57, 58, 3, 3, 100])
    same_bytes(st.embedding_bag(idx, [0, 2, 2, 5]), qe4.embedding_bag(want, idx, [0, 2, 2, 5]))
    # the lazy form: the chunks themselves carry the rows and the metadata
    lazy = qd.quantize(d, 4, "greedy", engine="reference")
    assert lazy.n_chunks == 4 and list(lazy.starts) == [0, 1, 51, 58, 121]
    parts = lazy.compute(timeout=TIMEOUT)
    assert [p.n_rows for p in parts] == [1, 50, 7, 63]
    assert all(p.params == {"n_bins": 200, "ratio": 0.16} and p.bits == 4 for p in parts)
    same_bytes(np.concatenate([p.data for p in parts]), want.data)
    packed = lazy.packed()
    assert packed.shape == (121, 7 + 4)            # ceil(13 / 2) code bytes, fp16 scale, bias
    assert packed.chunks[0] == (1, 50, 7, 63)
    same_bytes(packed.compute(), want.data)


@pytest.mark.timeout(120)
def test_codebook_methods_match_one_machine(client, same_bytes):
    codebook = pytest.importorskip("qe4.codebook")
    x = _weights(40, 16)
    d = da.from_array(x, chunks=(15, 16))
    for method in codebook.METHODS:
        if method in qd.CROSS_ROW_METHODS:
            with pytest.raises(ValueError, match="not row-wise and cannot be quantized in row chunks"):
                qd.quantize(d, 4, method, engine="reference")
            continue
        want = qe4.quantize(x, 4, method)
        got = qd.to_table(d, 4, method, engine="reference", timeout=TIMEOUT)
        same_bytes(got.data, want.data)


def test_default_scheduler_without_a_cluster(tmp_path, same_bytes):
    x = _weights(50, 9)
    d = da.from_array(x, chunks=(20, 9))
    with dask.config.set(scheduler="threads"):
        got = qd.quantize(d, 4, "minmax", engine="reference").to_table()
        st = qd.to_sharded(d, tmp_path / "s", 4, "minmax", engine="reference")
        same_bytes(st.to_table().data, got.data)
        first = sorted(os.listdir(st.path))
        again = qd.to_sharded(d, tmp_path / "s", 4, "minmax", engine="reference", overwrite=True)
    same_bytes(got.data, qe4.quantize(x, 4, "minmax").data)
    same_bytes(again.to_table().data, got.data)
    # each run names its shards with its own tag, so a straggling task of an abandoned
    # run can never replace a file the new index refers to
    second = sorted(os.listdir(st.path))
    assert len(first) == len(second) == 4 and set(first) & set(second) == {S.INDEX}


# ---------------------------------------------------------------------- errors

def test_bad_arguments_fail_on_the_client():
    x = da.zeros((10, 4), chunks=5, dtype=np.float32)
    with pytest.raises(TypeError, match="darr must be a dask.array.Array, got ndarray"):
        qd.quantize(np.zeros((10, 4), np.float32), engine="reference")
    with pytest.raises(TypeError, match="darr must have dtype float16, float32 or float64, got int64"):
        qd.quantize(da.zeros((10, 4), chunks=5, dtype=np.int64), engine="reference")
    with pytest.raises(ValueError, match=r"darr must be 2-D \[n_rows, n_cols\], got shape \(10,\)"):
        qd.quantize(da.zeros(10, chunks=5), engine="reference")
    with pytest.raises(ValueError, match="at least one row"):
        qd.quantize(da.zeros((0, 4), chunks=5), engine="reference")
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        qd.quantize(x[x[:, 0] > 0], engine="reference")
    with pytest.raises(ValueError, match=r"bits must be one of \(2, 3, 4, 5, 6, 8\), got 7"):
        qd.quantize(x, 7, engine="reference")
    with pytest.raises(ValueError, match="method must be one of"):
        qd.quantize(x, 4, "median", engine="reference")
    with pytest.raises(ValueError, match="engine must be 'fast' or 'reference', got 'gpu'"):
        qd.quantize(x, 4, engine="gpu")
    with pytest.raises(ValueError, match="n_threads=4 applies to engine='fast' only"):
        qd.quantize(x, 4, engine="reference", n_threads=4)
    with pytest.raises(ValueError, match="n_bins must be in"):
        qd.quantize(x, 4, engine="reference", n_bins=0)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments .*\['n_clusters'\]"):
        qd.quantize(x, 4, "minmax", engine="reference", n_clusters=3)
    with pytest.raises(ValueError, match="scale_dtype='float16' is not available at bits=8"):
        qd.quantize(x, 8, engine="reference", scale_dtype="float16")


def _slow_block(block):
    import time
    time.sleep(3)
    return block


@pytest.mark.timeout(60)
def test_timeout_bounds_the_wait(client):
    d = da.from_array(_weights(20, 4), chunks=(10, 4)).map_blocks(_slow_block, dtype=np.float32)
    with pytest.raises(TimeoutError):
        qd.to_table(d, 4, "minmax", engine="reference", timeout=0.5)


def test_fast_engine_never_falls_back():
    try:
        from qe4_fast import quantize  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="engine='fast' needs qe4_fast.quantize"):
            qd.quantize(da.zeros((4, 4), chunks=2), 4)
    else:
        assert qd.quantize(da.zeros((4, 4), chunks=2), 4).n_chunks == 2


@pytest.mark.timeout(120)
def test_bad_chunk_fails_clearly_and_publishes_nothing(client, tmp_path):
    x = _weights(60, 8)
    x[47, 2] = np.nan
    d = da.from_array(x, chunks=(20, 8))
    with pytest.raises(ValueError, match=r"darr rows \[40, 60\) .*: x must be finite: x\[7, 2\]"):
        qd.to_sharded(d, tmp_path / "n", 4, "greedy", engine="reference", timeout=TIMEOUT)
    assert not os.path.exists(tmp_path / "n" / S.INDEX)
    with pytest.raises(ValueError, match="index.json is missing"):
        S.open_sharded(tmp_path / "n")


@pytest.mark.timeout(120)
def test_failed_rerun_keeps_the_old_table(client, tmp_path, same_bytes):
    # the new run writes beside the old table and swaps the index only when complete
    x = _weights(60, 8)
    d = da.from_array(x, chunks=(20, 8))
    qd.to_sharded(d, tmp_path / "r", 4, "minmax", engine="reference", timeout=TIMEOUT)
    good = x.copy()
    x[5, 5] = np.inf
    with pytest.raises(ValueError, match="must be finite"):
        qd.to_sharded(da.from_array(x, chunks=(20, 8)), tmp_path / "r", 4, "minmax",
                      engine="reference", overwrite=True, timeout=TIMEOUT)
    same_bytes(S.open_sharded(tmp_path / "r", verify=True).to_table().data,
               qe4.quantize(good, 4, "minmax").data)


def test_unshared_directory_is_reported(tmp_path, monkeypatch):
    # a worker writing where the client cannot see: simulated by dropping the file after the write
    real = S.write_shard

    def lost(table, path, i, start, tag):
        entry = real(table, path, i, start, tag)
        if i == 1:
            os.remove(os.path.join(path, entry["file"]))
        return entry

    monkeypatch.setattr(S, "write_shard", lost)
    d = da.from_array(_weights(30, 4), chunks=(10, 4))
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match="shard-00001-[0-9a-f]+.qe4 is missing: to_sharded needs .* shared"):
            qd.to_sharded(d, tmp_path / "u", 4, "minmax", engine="reference")
    with pytest.raises(ValueError, match="index.json is missing"):
        S.open_sharded(tmp_path / "u")


# ---------------------------------------------------------------------- killed workers

def _die_on(block, marker_dir, kill_block, always, block_info=None):
    """Map-block hook: SIGKILL this worker process while it computes block ``kill_block``.

    Without ``always`` only the first attempt dies (a marker file remembers it),
    so the scheduler's retry on another (or the restarted) worker succeeds.
    """
    if block_info[None]["chunk-location"][0] == kill_block:
        marker = os.path.join(marker_dir, f"killed-{kill_block}")
        if always or not os.path.exists(marker):
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
    return block


def _dying_input(x, marker_dir, kill_block, always):
    d = da.from_array(x, chunks=(25, x.shape[1]))
    return d.map_blocks(_die_on, str(marker_dir), kill_block, always, dtype=d.dtype)


def _set_allowed_failures(n, dask_scheduler=None):
    old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
    return old


@pytest.fixture
def fault_client(client):
    # allowed-failures=1: a task may lose one worker and be retried; a second death is final
    old = client.run_on_scheduler(_set_allowed_failures, 1)
    yield client
    client.run_on_scheduler(_set_allowed_failures, old)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_killed_once_job_completes_with_the_right_bytes(fault_client, tmp_path, same_bytes):
    x = _weights(150, 16)
    d = _dying_input(x, tmp_path, kill_block=3, always=False)
    st = qd.to_sharded(d, tmp_path / "k", 4, "greedy", engine="reference", timeout=TIMEOUT)
    assert len((tmp_path / "killed-3").read_text().split()) == 1     # one worker really died
    st = S.open_sharded(tmp_path / "k", verify=True)
    assert st.n_shards == 6
    same_bytes(st.to_table().data, qe4.quantize(x, 4, "greedy").data)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_killed_every_time_job_fails_clearly(fault_client, tmp_path):
    x = _weights(150, 16)
    d = _dying_input(x, tmp_path, kill_block=2, always=True)
    with pytest.raises(distributed.KilledWorker):
        qd.to_sharded(d, tmp_path / "k", 4, "greedy", engine="reference", timeout=TIMEOUT)
    assert len((tmp_path / "killed-2").read_text().split()) == 2     # first try + one retry
    assert not os.path.exists(tmp_path / "k" / S.INDEX)
    with pytest.raises(ValueError, match="is not a complete sharded table: index.json is missing"):
        S.open_sharded(tmp_path / "k")
    # the cluster recovered: the same job without the fault succeeds in the same directory
    st = qd.to_sharded(da.from_array(x, chunks=(25, 16)), tmp_path / "k", 4, "greedy",
                       engine="reference", overwrite=True, timeout=TIMEOUT)
    assert st.to_table() == qe4.quantize(x, 4, "greedy")


def _kill_when_writing_rows(name, dask_worker=None):
    """Patch this worker's qe4.io writer to die once the header of file ``name`` is written.

    Only this process is patched: the worker the nanny restarts after the kill is not.
    """
    import qe4.io

    real = qe4.io.TableWriter._write

    def dying(self, buf):
        if name in os.path.basename(self.path) and self._file.tell() > 0:
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, buf)

    dying.real = real
    qe4.io.TableWriter._write = dying


def _unpatch_writer(dask_worker=None):
    import qe4.io
    qe4.io.TableWriter._write = getattr(qe4.io.TableWriter._write, "real", qe4.io.TableWriter._write)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_killed_while_writing_a_shard(client, tmp_path, same_bytes):
    # Every current worker dies half-way through writing shard 2; restarted workers do not.
    # At most both die (allowed-failures 5 tolerates that and a queued task's deaths too),
    # and the retry on a restarted worker succeeds.
    x = _weights(150, 16)
    client.wait_for_workers(2, timeout=TIMEOUT)
    old = client.run_on_scheduler(_set_allowed_failures, 5)
    client.run(_kill_when_writing_rows, "shard-00002-")
    try:
        st = qd.to_sharded(da.from_array(x, chunks=(25, 16)), tmp_path / "w", 4, "greedy",
                           engine="reference", timeout=TIMEOUT)
    finally:
        # a worker may still be restarting: the new one is not patched, so skip what fails
        client.run(_unpatch_writer, on_error="ignore")
        client.run_on_scheduler(_set_allowed_failures, old)
    # the retry removed the temporary files of the writers that died (their pids are gone)
    assert [f for f in os.listdir(st.path) if f.endswith(".qe4tmp")] == []
    st = S.open_sharded(st.path, verify=True)
    same_bytes(st.to_table().data, qe4.quantize(x, 4, "greedy").data)
    # an overwrite clears the leftovers
    qd.to_sharded(da.from_array(x, chunks=(75, 16)), tmp_path / "w", 4, "greedy",
                  engine="reference", overwrite=True, timeout=TIMEOUT)
    assert not [f for f in os.listdir(st.path) if f.endswith(".qe4tmp")]
