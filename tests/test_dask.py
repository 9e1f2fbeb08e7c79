"""The Dask executor on a two-worker LocalCluster on loopback."""

import os
import re
import secrets
import signal
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import dask
from dask.base import tokenize

from psi import InvalidPointError, Key, encode_identifier, hash_to_curve
from psi.cluster import DaskExecutor, executor_from_spec
from psi.keys import CHUNK, _apply_chunk
from psi.parallel import InlineExecutor, get_executor, task_bounds
from psi.protocol import ArrayTable, ClientSession, Policy, ServerSession, inprocess

from .support import MemoryLedger

pytestmark = pytest.mark.dask

N = 3_000  # with two workers: 3 hashing tasks, 4 Key.apply tasks


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as local:
        yield local


@pytest.fixture(scope="module")
def executor(cluster):
    with DaskExecutor(cluster.scheduler_address) as dask_executor:
        yield dask_executor


@pytest.fixture(scope="module")
def messages():
    return [encode_identifier("email", f"user{i}@example.com") for i in range(N)]


@pytest.fixture(scope="module")
def points(messages):
    return hash_to_curve(messages, workers=1)


def test_hash_to_curve_matches_local(executor, messages, points):
    assert np.array_equal(hash_to_curve(messages, executor=executor), points)


def test_key_apply_matches_local(executor, points):
    key = Key.generate()
    assert executor.workers == 2
    assert np.array_equal(key.apply(points, executor=executor), key.apply(points, workers=1))


def test_invalid_point_is_reported_through_the_cluster(executor, points):
    bad = points.copy()
    bad[N // 2] = 0xFF  # not canonical: above p
    with pytest.raises(InvalidPointError):
        Key.generate().apply(bad, executor=executor)


def _match(client_ids, server_ids, executor):
    """Both parties' sessions, every exponentiation and hash on ``executor``."""
    def encoded(ids):
        return [encode_identifier("email", f"u{i}@example.org") for i in ids]

    table = ArrayTable({"email": hash_to_curve(encoded(server_ids), executor=executor)})
    items = encoded(client_ids)
    client = ClientSession(items, np.arange(len(items)), len(items), ["email"], 0.1, executor, min_table_size=1)
    server = ServerSession(Policy(noise=False, max_points_per_message=1024), table, MemoryLedger(), executor)
    return inprocess.run(client, server).noisy_count


def test_full_match_matches_local(executor):
    universe = np.random.default_rng(11).permutation(10_000)
    client_ids, server_ids = universe[:1_500], universe[500:3_000]
    assert _match(client_ids, server_ids, executor) == _match(client_ids, server_ids, InlineExecutor()) == 1_000


def test_killed_worker_mid_apply_gives_identical_result(executor, points):
    dask_client = executor.client
    pids = dask_client.run(os.getpid)
    key = Key.generate()
    expected = np.tile(key.apply(points, workers=1), (10, 1))
    killed = []
    done = threading.Event()

    def kill_a_busy_worker():
        while not done.is_set():
            for address, keys in dask_client.processing().items():
                if any(k.startswith("_apply_chunk-") for k in keys):
                    os.kill(pids[address], signal.SIGKILL)
                    killed.append(address)
                    return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    try:
        # 30,000 points: 14 chunks of 7,500 down to 153, about 0.3 s of X25519 on two workers
        result = key.apply(np.tile(points, (10, 1)), executor=executor)
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was killed while the job ran"
    assert np.array_equal(result, expected)
    dask_client.wait_for_workers(2, timeout=30)


def test_task_keys_hold_no_trace_of_the_scalar(executor, points):
    scalar = secrets.token_bytes(32)
    key = Key.from_bytes(scalar)
    with distributed.get_task_stream(client=executor.client) as stream:
        key.apply(points, executor=executor)
        key.apply(points, executor=executor)
    names = [task["key"] for task in stream.data]
    bounds = task_bounds(len(points), executor.workers, CHUNK)
    # the same chunks twice, never the same key
    assert len(names) == len(set(names)) == 2 * len(bounds) > 2
    forbidden = {
        scalar.hex(),
        tokenize(scalar),
        tokenize(_apply_chunk, {}, scalar, points[: bounds[0][1]], True),
    }
    for name in names:
        assert re.fullmatch(r"_apply_chunk-[0-9a-f]{32}", name)
        assert not any(secret in name for secret in forbidden)


def test_failed_task_log_holds_no_argument(executor):
    scalar = secrets.token_bytes(32)
    with pytest.raises(AttributeError):
        executor.submit(_apply_chunk, scalar, None, False).result()
    logs = "\n".join(
        message for records in executor.client.get_worker_logs().values() for _, message in records
    )
    assert re.search(r"Task: +<Task '_apply_chunk-[0-9a-f]{32}' _open\(", logs)
    assert scalar.hex() not in logs and repr(scalar) not in logs


def test_key_objects_never_reach_the_cluster(executor):
    with pytest.raises(TypeError, match="serialize"):
        executor.submit(len, Key.generate())


def test_spec_local_forms():
    assert executor_from_spec(None) is get_executor()
    assert executor_from_spec("local") is get_executor()
    assert isinstance(executor_from_spec("local:1"), InlineExecutor)
    assert executor_from_spec("local:2") is get_executor(2)


def test_spec_dask_address(cluster):
    port = cluster.scheduler_address.rpartition(":")[2]
    with executor_from_spec(f"dask://127.0.0.1:{port}") as dask_executor:
        assert isinstance(dask_executor, DaskExecutor)
        assert dask_executor.address == f"tcp://127.0.0.1:{port}"
        assert dask_executor.workers == 2


def test_spec_dask_local(messages, points):
    with executor_from_spec("dask-local:1") as dask_executor:
        assert dask_executor.workers == 1
        assert np.array_equal(hash_to_curve(messages, executor=dask_executor), points)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "pool",
        "local:0",
        "local:two",
        "local:-1",
        "local:\u00b2",
        "dask-local:0",
        "dask-local:",
        "dask://",
        "dask://host",
        "dask://:8786",
        "dask://host:port",
        "dask://host:70000",
        "dask://user@host:8786",
        "tcp://127.0.0.1:8786",
    ],
)
def test_spec_invalid(spec):
    with pytest.raises(ValueError, match=r"accepted forms: 'local', 'local:N', 'dask://HOST:PORT'"):
        executor_from_spec(spec)


def test_tls_without_credentials_says_what_is_missing():
    unset = {"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}
    with dask.config.set(unset), pytest.raises(ValueError, match="distributed.comm.tls.ca-file"):
        executor_from_spec("dask+tls://127.0.0.1:8786")


def test_missing_dask_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'consent-psi[dask]'")):
        DaskExecutor()
