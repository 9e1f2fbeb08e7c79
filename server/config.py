"""What ``psi-server serve`` runs with. Plain values, read by the command line for its
defaults without loading the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psi.protocol import Policy

if TYPE_CHECKING:
    from psi.parallel import Executor

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig:
    db: str
    listen: str = "127.0.0.1:50051"
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    insecure: bool = False
    policy: Policy = field(default_factory=Policy)
    workers: int | None = None
    executor: Executor | None = None
    identifiers_per_user: int = 1
    max_sessions: int = 16
    max_sessions_per_advertiser: int = 2
    session_timeout: float = 3600.0
    grace: float = 30.0
