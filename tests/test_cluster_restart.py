"""A server on a Dask cluster whose scheduler is killed and restarted, on loopback.

The scheduler and the worker run as the commands of docs/cluster.md, with the
documentation's addresses replaced by 127.0.0.1, each in a process group of its own.
"""

import ipaddress
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from psi_server.service import SERVICE_NAME
from psi_server.synthetic import advertiser_list, generate

from .support import ServerProcess, free_port, make_registry, psi_match, rows_in

pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow, pytest.mark.dask]

DOC = Path(__file__).parents[1] / "docs" / "cluster.md"
SYN = generate(1200, seed=21)
LISTING = advertiser_list(SYN, 300, overlap=0.6, seed=2)
TRUTH = len(set(LISTING) & SYN.matchable)
# how long distributed's client tries to reconnect on its own before it closes: short, so
# that the server's own reconnection is what brings the cluster back
RECONNECT_WINDOW_S = 2


def doc_command(program: str) -> tuple[dict[str, str], list[str]]:
    """The first ``program`` command of the plain-TCP set-up in docs/cluster.md, for one
    machine: addresses on loopback, one worker process."""
    text = DOC.read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        command = block.replace("\\\n", " ")
        for line in command.splitlines():
            words = shlex.split(line)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words[:2] == program.split() and "tls" not in line:
                argv = " ".join(words[2:]).replace("10.0.0.5", "127.0.0.1").replace("10.0.0.7", "127.0.0.1")
                return env, shlex.split(argv)
    raise AssertionError(f"no {program} command in {DOC}")


def listening_addresses(pgid: int) -> set[str]:
    """``host:port`` of every listening TCP socket of a process group's processes."""
    inodes = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):  # hex digits of an address
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host, port = fields[1].split(":")
                raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
                address = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4)))
                found.add(f"{address}:{int(port, 16)}")
    return found


class Cluster:
    """``dask scheduler`` and one ``dask worker`` as in the documentation."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def _start(self, program: str, replace: dict[str, str]) -> subprocess.Popen:
        env, argv = doc_command(program)
        for old, new in replace.items():
            argv = [new if word == old else word for word in argv]
        log = (self.tmp / f"{program.replace(' ', '-')}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", *program.split(), *argv],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> subprocess.Popen:
        return self._start("dask scheduler", {"8786": str(self.port), "127.0.0.1:8787": "127.0.0.1:0"})

    def start_worker(self) -> subprocess.Popen:
        return self._start("dask worker", {"tcp://127.0.0.1:8786": f"tcp://127.0.0.1:{self.port}", "8": "1"})

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_documented_worker_binds_only_the_given_address(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_scheduler()
        worker = cluster.start_worker()
        # the nanny, the worker and the worker's HTTP server
        wait_for(lambda: len(listening_addresses(worker.pid)) >= 3, 60, "the worker did not start")
        addresses = listening_addresses(worker.pid)
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    finally:
        cluster.close()


def test_scheduler_restart(tmp_path, monkeypatch):
    db, token_file = make_registry(tmp_path, SYN.rows)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(LISTING) + "\n")
    cluster = Cluster(tmp_path)
    server = None
    try:
        scheduler = cluster.start_scheduler()
        worker = cluster.start_worker()
        monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", f"{RECONNECT_WINDOW_S}s")
        server = ServerProcess(
            db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10",
            "--executor", f"dask://127.0.0.1:{cluster.port}",
        )
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0 and out["noisy_count"] == TRUTH, err

        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait()
        wait_for(lambda: health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 10,
                 "health still SERVING without a scheduler")
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 7 and out["error"] == "server", err
        assert "cannot compute right now" in out["message"] and "nothing was charged" in out["message"]
        assert rows_in(db, "budget_ledger") == 1
        worker.wait(60)  # a worker stops with its scheduler; a supervisor would restart it
        # past distributed's own reconnection window: the server has to connect afresh
        wait_for(lambda: "closing client" in server.logs(), 30, "the server's Dask client never gave up")

        cluster.start_scheduler()
        wait_for(lambda: listening_addresses(cluster.procs[-1].pid), 30, "the scheduler did not restart")
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 7 and "cannot compute right now" in out["message"], err  # a scheduler without workers
        cluster.start_worker()
        wait_for(lambda: health(server.address) == health_pb2.HealthCheckResponse.SERVING, 60,
                 "the server did not serve again once the cluster was back")
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0 and out["noisy_count"] == TRUTH, err
        assert rows_in(db, "budget_ledger") == 2
    finally:
        if server is not None:
            server.stop()
        cluster.close()
    logs = server.logs()
    assert logs.count("compute cluster cannot run tasks") == 1, logs
    assert logs.count("compute cluster can run tasks again") == 1, logs
    assert "Traceback" not in logs and "internal error" not in logs, logs
