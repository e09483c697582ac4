"""The server's TLS identity and the TLS contexts of delivery and retrieval.

Identity: a certificate issued by the server's own CA (``DATA_DIR/ca``, the
one that signs tap certificates), made on the first ``mediate serve``::

    DATA_DIR/tls/server.pem   the certificate (0644): the server presents it
    DATA_DIR/tls/server.key   its private key (0600, not encrypted: the
                              server must use it unattended)

An agency verifies the server against ``DATA_DIR/ca/ca.pem``.

Delivery (the server is the TLS client, connecting out): the agency's
certificate is verified against the CA registered for the endpoint
(chain only: endpoints are usually IP addresses, and an agency's CA vouches
for its receivers, not for the addresses the carrier typed in), or, with a
pinned fingerprint, by comparing the SHA-256 of the certificate's DER after
the handshake (no chain: a self-signed receiver is fine).

Retrieval (the server is the TLS server): a client certificate is
required; it must chain to a registered agency CA or be a certificate the
server has already seen and pinned on a live delivery connection (Python's
``ssl`` has no verify callback, so a pinned certificate must be a trust
anchor before the handshake). :class:`AgencyTrust` then maps it to exactly
one agency.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mediation.warrants.authority import TapAuthority
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import Agency, Endpoint

TLS_DIR = "tls"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
log = logging.getLogger("mediation.server.tls")


@dataclasses.dataclass(frozen=True)
class IdentityFiles:
    """Where the server's certificate and key are."""

    certificate: Path
    private_key: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_pem(self.certificate.read_text("ascii"))


def fingerprint_of_der(der: bytes) -> str:
    """SHA-256 of a certificate's DER, lower-case hex (what agencies pin)."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_of_pem(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def ensure_identity(
    data_dir: Path, key: RegistryKey, names: Iterable[str], now: dt.datetime
) -> IdentityFiles:
    """The server's identity, issued from the CA on first use (blocking).

    Raises:
        UsageError: the CA cannot be loaded with this registry key.
    """
    directory = data_dir / TLS_DIR
    files = IdentityFiles(directory / CERT_FILE, directory / KEY_FILE)
    if files.certificate.is_file() and files.private_key.is_file():
        return files
    authority = TapAuthority.load(data_dir / "ca", key)
    identity = authority.issue_server(tuple(names), now)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Key first, then the certificate: a crash between leaves no certificate
    # without its key, and the next start issues both again.
    _write(files.private_key, identity.private_key_pem, 0o600)
    _write(files.certificate, identity.certificate_pem, 0o644)
    log.info("issued the server's TLS identity (sha256:%s)", identity.fingerprint)
    return files


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
    os.replace(tmp, path)


def delivery_context(identity: IdentityFiles, endpoint: Endpoint) -> ssl.SSLContext:
    """The client context for one agency endpoint (TLS 1.2 or later).

    With a registered CA the chain is verified in the handshake; with a
    pinned fingerprint nothing is verified there and the caller must check
    :func:`peer_fingerprint` before sending anything.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.certificate, identity.private_key)
    context.check_hostname = False
    if endpoint.fingerprint:
        context.verify_mode = ssl.CERT_NONE
    elif endpoint.ca_pem:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=endpoint.ca_pem)
    else:  # cannot be registered so; trust nothing rather than anything
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def pin_matches(endpoint: Endpoint, peer_der: bytes | None) -> bool:
    """Whether the agency's certificate is the one pinned (True for CA endpoints)."""
    if not endpoint.fingerprint:
        return True
    return peer_der is not None and fingerprint_of_der(peer_der) == endpoint.fingerprint


class AgencyTrust:
    """Which client certificates retrieval accepts, and whose they are."""

    def __init__(self, identity: IdentityFiles) -> None:
        self._identity = identity
        self._cas: dict[str, list[x509.Certificate]] = {}
        self._pins: dict[str, set[str]] = {}
        self._learned: dict[str, bytes] = {}  # fingerprint -> DER, seen on delivery
        self._context: ssl.SSLContext | None = None

    def update(self, agencies: Iterable[Agency]) -> None:
        """Take the registered agencies' CAs and fingerprints (after each reload)."""
        cas: dict[str, list[x509.Certificate]] = {}
        pins: dict[str, set[str]] = {}
        for agency in agencies:
            if agency.removed is not None or agency.details is None:
                continue
            for endpoint in agency.details.endpoints:
                if endpoint.ca_pem:
                    certs = x509.load_pem_x509_certificates(endpoint.ca_pem.encode("ascii"))
                    cas.setdefault(agency.handle, []).extend(certs)
                if endpoint.fingerprint:
                    pins.setdefault(agency.handle, set()).add(endpoint.fingerprint)
        if (cas, pins) != (self._cas, self._pins):
            self._cas, self._pins, self._context = cas, pins, None

    def learn(self, der: bytes) -> None:
        """A pinned agency certificate seen on a delivery connection: trust it here too."""
        fingerprint = fingerprint_of_der(der)
        if fingerprint not in self._learned:
            self._learned[fingerprint] = der
            self._context = None

    def context(self) -> ssl.SSLContext:
        """The server context for the next retrieval connection (rebuilt on change)."""
        if self._context is None:
            self._context = self._build()
        return self._context

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._identity.certificate, self._identity.private_key)
        context.verify_mode = ssl.CERT_REQUIRED
        anchors = [
            c.public_bytes(serialization.Encoding.PEM) for cs in self._cas.values() for c in cs
        ]
        pinned = set().union(*self._pins.values()) if self._pins else set()
        anchors += [
            x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
            for fp, der in self._learned.items()
            if fp in pinned
        ]
        if anchors:
            context.load_verify_locations(cadata=b"".join(anchors).decode("ascii"))
        return context

    def agencies_for(self, der: bytes) -> list[str]:
        """Handles of the agencies this client certificate belongs to (one, normally).

        A certificate belongs to an agency when its fingerprint is pinned
        for one of the agency's endpoints, or when one of the agency's
        registered CAs issued it directly (or it is that CA certificate).
        """
        fingerprint = fingerprint_of_der(der)
        owners = {handle for handle, pins in self._pins.items() if fingerprint in pins}
        cert = x509.load_der_x509_certificate(der)
        for handle, cas in self._cas.items():
            if any(_issued_by(cert, ca) for ca in cas):
                owners.add(handle)
        return sorted(owners)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert == ca:
        return True
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
