"""Checks of the PEM files both commands hand to gRPC for TLS.

gRPC reports a certificate and key that do not belong together, or a key given where a
certificate was expected, only as lines of its own log and a generic failure to listen
or connect. These checks run first, on the files' contents, and name the file at fault
in one line. Pure functions over bytes: the callers read the files.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TLSFileError", "check_certificates", "check_key_pair"]


class TLSFileError(ValueError):
    """A TLS file that cannot serve its purpose; the message names it and says why."""


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _private_key(pem: bytes):
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):  # TypeError: the key is encrypted
        return None


def check_certificates(pem: bytes, name: str) -> None:
    """``pem`` holds at least one certificate (a CA file, or a certificate chain)."""
    if _certificates(pem):
        return
    if _private_key(pem) is not None:
        raise TLSFileError(f"{name} holds a private key, not a certificate")
    raise TLSFileError(f"{name} holds no PEM certificate")


def check_key_pair(cert_pem: bytes, key_pem: bytes, cert_name: str, key_name: str) -> None:
    """``cert_pem`` is a certificate chain and ``key_pem`` the unencrypted private key of
    its first certificate."""
    certificates, key = _certificates(cert_pem), _private_key(key_pem)
    if not certificates and key is None and _private_key(cert_pem) and _certificates(key_pem):
        raise TLSFileError(f"{cert_name} and {key_name} are swapped")
    check_certificates(cert_pem, cert_name)
    if key is None:
        if _certificates(key_pem):
            raise TLSFileError(f"{key_name} holds a certificate, not a private key")
        raise TLSFileError(f"{key_name} holds no unencrypted PEM private key")
    if key.public_key() != certificates[0].public_key():
        raise TLSFileError(f"{key_name} is not the private key of the certificate in {cert_name}")
