"""Helpers for tests that run real servers and clients."""

from __future__ import annotations

import datetime
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from psi.protocol import SessionError
from psi_server import advertisers, store
from psi_server.registry import imports
from psi_server.service import wait_serving
from psi_server.synthetic import write_csv

SERVER = [sys.executable, "-m", "psi_server.cli"]
CLIENT = [sys.executable, "-m", "psi_client.cli"]


class MemoryLedger:
    """A ``Ledger`` in memory, for state machines driven without a registry."""

    def __init__(self, budget_micro: int = 10**9) -> None:
        self.budget_micro = budget_micro
        self.opened = []
        self.released = []

    def open(self, record) -> float:
        spent = sum(r.epsilon_micro for r in self.opened)
        if spent + record.epsilon_micro > self.budget_micro:
            raise SessionError("RESOURCE_EXHAUSTED", "privacy budget exhausted", "budget")
        self.opened.append(record)
        return (self.budget_micro - spent - record.epsilon_micro) / 1e6

    def release(self, session_id, release) -> None:
        self.released.append((session_id, release))


def rows_in(db: str, table: str) -> int:
    """How many rows a registry table holds now (``budget_ledger``: sessions charged)."""
    conn = store.connect(db)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def integrity(db: str) -> bool:
    conn = store.connect(db)
    try:
        return store.integrity_ok(conn)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_registry(tmp: Path, rows, budget: float = 100.0, name="acme") -> tuple[str, Path]:
    """A registry with ``rows`` imported and one advertiser; returns (db, token file)."""
    db = tmp / "registry.db"
    store.init(db)
    conn = store.connect(db)
    csv_path = tmp / "users.csv"
    write_csv(rows, csv_path)
    with csv_path.open("rb") as f:
        imports.import_file(conn, f, "csv", "test", workers=1)
    token = advertisers.add(conn, name, budget, 30)
    conn.close()
    token_file = tmp / f"{name}.token"
    token_file.write_text(token + "\n")
    return str(db), token_file


class ServerProcess:
    """``psi-server serve`` as a real process on a loopback port."""

    def __init__(self, db: str, tmp: Path, *extra: str, tls: dict | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}.log"
        args = SERVER + ["serve", "--db", db, "--listen", self.address, "--workers", "1", *extra]
        creds = None
        if tls:
            args += ["--tls-cert", str(tls["server_cert"]), "--tls-key", str(tls["server_key"])]
            if tls.get("client_ca"):
                args += ["--client-ca", str(tls["client_ca"])]
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls["ca"]).read_bytes(),
                private_key=Path(tls["client_key"]).read_bytes() if tls.get("client_ca") else None,
                certificate_chain=Path(tls["client_cert"]).read_bytes() if tls.get("client_ca") else None,
            )
        else:
            args.append("--insecure")
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_serving(self.address, 60, creds, alive=lambda: self.proc.poll() is None)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError("server failed to start:\n" + self.log_path.read_text()) from None

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def psi_match(address: str, token_file: Path, listing: Path, *extra: str, insecure=True) -> tuple[int, dict | None, str]:
    args = CLIENT + ["--server", address, "--token-file", str(token_file), "--id-type", "email",
                     "--json", "--workers", "1", "--min-table-size", "10", *extra, str(listing)]
    if insecure:
        args.append("--insecure")
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, (json.loads(lines[-1]) if lines else None), out.stderr


def make_pki(tmp: Path) -> dict:
    """A test CA, a server certificate for 127.0.0.1, a client certificate, and a client
    certificate from a foreign CA."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject_key, subject, issuer_key, issuer, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out = {}

    def save(label, obj):
        path = tmp / f"{label}.pem"
        if isinstance(obj, x509.Certificate):
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        out[label] = path

    import ipaddress

    ca_key, foreign_key = key(), key()
    ca = cert(ca_key, name("test CA"), ca_key, name("test CA"), ca=True)
    save("foreign_ca", cert(foreign_key, name("foreign CA"), foreign_key, name("foreign CA"), ca=True))
    server_key, client_key, stranger_key = key(), key(), key()
    save("ca", ca)
    save("server_key", server_key)
    save("server_cert", cert(server_key, name("psi server"), ca_key, name("test CA"),
                             san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    save("client_key", client_key)
    save("client_cert", cert(client_key, name("advertiser"), ca_key, name("test CA")))
    save("stranger_key", stranger_key)
    save("stranger_cert", cert(stranger_key, name("stranger"), foreign_key, name("foreign CA")))
    out["client_ca"] = out["ca"]
    return out
