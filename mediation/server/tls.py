"""The server's TLS identity and the TLS contexts of delivery and retrieval.

Identity: a certificate issued by the server CA (``DATA_DIR/ca/server-ca.pem``,
which signs nothing else; taps have their own CA, ``ca.pem``), made on the
first ``mediate serve``::

    DATA_DIR/tls/server.pem   the certificate (0644): the server presents it
    DATA_DIR/tls/server.key   its private key (0600, not encrypted: the
                              server must use it unattended)

An agency verifies the server against ``server-ca.pem`` (``mediate
server-ca`` prints it). A data directory from before the two CAs (the
identity issued by the tap CA) gets the server CA and a new identity on
the next ``mediate serve``, which says so once in the log.

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

Both ways, after the handshake, the agency's certificate must be an
agency's (:func:`mediation.pki.check_agency`): never one of ours (a tap's,
the server's own, anything our CAs issued), and allowed the TLS role it
plays by its extended key usage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mediation.durable import write_new
from mediation.pki import (
    CLIENT_AUTH,
    SERVER_AUTH,
    Role,
    RoleRefused,
    check_agency,
    check_role,
    fingerprint,
    fingerprint_pem,
    issued_by,
    write_private_key,
)
from mediation.warrants.authority import ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import Agency, Endpoint

TLS_DIR = "tls"
CA_DIR = "ca"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
log = logging.getLogger("mediation.server.tls")


@dataclasses.dataclass(frozen=True)
class IdentityFiles:
    """Where the server's certificate and key are, and the server's own two CAs."""

    certificate: Path
    private_key: Path
    tap_ca: x509.Certificate | None = None
    server_ca: x509.Certificate | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint_pem(self.certificate.read_text("ascii"))

    @property
    def own_cas(self) -> tuple[x509.Certificate, ...]:
        """The tap CA and the server CA: no agency certificate may be issued by either."""
        return tuple(ca for ca in (self.tap_ca, self.server_ca) if ca is not None)


def ensure_identity(
    data_dir: Path, key: RegistryKey, names: Iterable[str], now: dt.datetime
) -> IdentityFiles:
    """The server's identity, issued by the server CA on first use (blocking).

    Creates the server CA if the data directory has none, and issues the
    identity again if it is missing, half-written, or not a server
    certificate of that CA (one issued by the tap CA before the two CAs).

    Raises:
        UsageError: a CA cannot be loaded with this registry key.
    """
    ca_dir = data_dir / CA_DIR
    authority, created = ServerAuthority.ensure(ca_dir, key, now)
    if created:
        log.warning(
            "created the server CA %s (sha256:%s): agencies must trust it, not ca.pem "
            "(give them `mediate server-ca`)",
            ca_dir / authority.cert_file,
            fingerprint(authority.certificate),
        )
    tap_ca = TapAuthority.load(ca_dir, key).certificate
    directory = data_dir / TLS_DIR
    files = IdentityFiles(
        directory / CERT_FILE, directory / KEY_FILE, tap_ca, authority.certificate
    )
    problem = _identity_problem(files, authority.certificate)
    if problem is None:
        return files
    if files.certificate.exists():
        log.warning("re-issuing the server's TLS identity: %s", problem)
    # Certificate first, then the key: a crash between leaves no certificate
    # without its key, and the next start issues both again.
    files.certificate.unlink(missing_ok=True)
    files.private_key.unlink(missing_ok=True)
    identity = authority.issue_server(tuple(names), now)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_key(files.private_key, identity.private_key)
    write_new(files.certificate, identity.certificate_pem.encode("ascii"), 0o644)
    log.info("issued the server's TLS identity (sha256:%s)", identity.fingerprint)
    return files


def _identity_problem(files: IdentityFiles, ca: x509.Certificate) -> str | None:
    """Why the identity on disk cannot be used (None: it can)."""
    if not (files.certificate.is_file() and files.private_key.is_file()):
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    except ValueError:
        return "unreadable certificate"
    if not issued_by(cert, ca):
        return "not issued by the server CA (issued before the tap and server CAs were split)"
    try:
        check_role(cert.public_bytes(serialization.Encoding.DER), Role.SERVER, [ca])
    except RoleRefused as exc:
        return str(exc)
    return None


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


def check_delivery_peer(
    endpoint: Endpoint, peer_der: bytes | None, identity: IdentityFiles
) -> None:
    """Check the agency's certificate on a delivery connection, before anything is sent.

    The pinned fingerprint, if the endpoint has one (with a CA the chain was
    checked in the handshake), then that it is an agency's certificate
    allowed to act as TLS server.

    Raises:
        RoleRefused: naming why.
    """
    if endpoint.fingerprint and (peer_der is None or fingerprint(peer_der) != endpoint.fingerprint):
        raise RoleRefused("not the pinned certificate")
    check_agency(peer_der, SERVER_AUTH, identity.own_cas)


def check_tap_peer(peer_der: bytes | None, identity: IdentityFiles) -> x509.Certificate:
    """Check a tap's certificate on the tap listener, after the handshake.

    The one check the tap listener calls on every connection: issued by the
    tap CA, marked ``mediation-tap``, clientAuth only; so neither the
    server's identity nor an agency's certificate can feed the server.
    Whether the tap is registered and not revoked is the registry's
    question, asked next by its fingerprint.

    Raises:
        RoleRefused: naming why.
    """
    if identity.tap_ca is None:
        raise RoleRefused("no tap CA to check taps by")
    return check_role(peer_der, Role.TAP, [identity.tap_ca], CLIENT_AUTH)


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
        seen = fingerprint(der)
        if seen not in self._learned:
            self._learned[seen] = der
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

    def identify(self, der: bytes | None) -> str:
        """The handle of the one agency this client certificate belongs to.

        It must be an agency's certificate allowed to act as TLS client
        (:func:`mediation.pki.check_agency`), and belong to exactly one
        agency: its fingerprint is pinned for one of the agency's
        endpoints, or one of the agency's registered CAs issued it directly
        (or it is that CA certificate).

        Raises:
            RoleRefused: naming why.
        """
        cert = check_agency(der, CLIENT_AUTH, self._identity.own_cas)
        seen = fingerprint(cert)
        owners = {handle for handle, pins in self._pins.items() if seen in pins}
        for handle, cas in self._cas.items():
            if any(cert == ca or issued_by(cert, ca) for ca in cas):
                owners.add(handle)
        if len(owners) != 1:
            raise RoleRefused(
                "certificate of several agencies" if owners else "certificate of no agency"
            )
        return owners.pop()
