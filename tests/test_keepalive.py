"""Dead connections: a TCP proxy on loopback that stops forwarding mid-session, without
closing anything, as a NAT or a host that vanished would. ``psi-match`` must fail with a
one-line error and the server must free the session slot, both within a minute, not
after their hour-long timeouts.

Keepalive notices within about 20 s (a ping after 10 s of quiet, 10 s for its answer).
The bound checked is tighter than the minute promised, so that it tells keepalive apart
from gRPC's own last resort: a flow-control ping in flight gives up after 60 s.
"""

import socket
import subprocess
import threading
import time

import pytest

from psi_server.synthetic import advertiser_list, generate

from .support import CLIENT, ServerProcess, make_registry, psi_match

pytestmark = pytest.mark.slow

SYN = generate(3000, seed=17)
LISTING = advertiser_list(SYN, 500, overlap=0.6, seed=3)
TRUTH = len(set(LISTING) & SYN.matchable)
NOTICED_WITHIN_S = 40


class SilentProxy:
    """Forwards TCP between a loopback port and ``upstream`` until ``after`` bytes have
    come back from upstream; from then on it forwards nothing in either direction and
    keeps every socket open."""

    def __init__(self, upstream: tuple[str, int], after: int) -> None:
        self.upstream, self.after = upstream, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.silent = threading.Event()
        self.silent_at: float | None = None
        self._returned = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self._sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, returning: bool) -> None:
        while not self.silent.is_set():
            try:
                data = src.recv(4096)
                if not data or self.silent.is_set():
                    return
                dst.sendall(data)
            except OSError:
                return
            if returning:
                with self._lock:
                    self._returned += len(data)
                    if self._returned >= self.after and not self.silent.is_set():
                        self.silent_at = time.monotonic()
                        self.silent.set()

    def close(self) -> None:
        self.silent.set()
        for sock in self._sockets:
            sock.close()


def test_connection_that_stops_forwarding(tmp_path):
    db, token_file = make_registry(tmp_path, SYN.rows)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(LISTING) + "\n")
    server = ServerProcess(db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10",
                           "--max-sessions-per-advertiser", "1")
    # the table is about 70 KB: go silent halfway through it, the session open
    proxy = SilentProxy(("127.0.0.1", server.port), after=40_000)
    try:
        client = subprocess.run(
            CLIENT + ["--server", proxy.address, "--token-file", str(token_file), "--id-type", "email",
                      "--insecure", "--workers", "1", "--min-table-size", "10", str(listing)],
            capture_output=True, text=True, timeout=120,
        )
        failed_after = time.monotonic() - proxy.silent_at
        assert client.returncode == 7, client.stderr
        assert failed_after < NOTICED_WITHIN_S, failed_after
        lines = client.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  hint: "), lines
        assert "UNAVAILABLE" in lines[0]

        # The slot of the dead session is this advertiser's only one: a direct session
        # succeeds once the server has noticed.
        while True:
            code, out, err = psi_match(server.address, token_file, listing)
            if code != 6:  # busy
                break
            waited = time.monotonic() - proxy.silent_at
            assert waited < NOTICED_WITHIN_S, f"the server kept the dead session's slot for {waited:.0f} s"
            time.sleep(1)
        assert code == 0 and out["noisy_count"] == TRUTH, err
    finally:
        proxy.close()
        server.stop()
