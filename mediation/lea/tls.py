"""TLS for the agency: its certificate, and the contexts of both connection roles.

Two connections, one agency certificate:

- **live delivery**: the mediation server connects out to the agency, so
  the receiver is the TLS *server*. It requires a client certificate and
  verifies it against the mediation server's CA (``DATA_DIR/ca/server-ca.pem``,
  given by the carrier: ``mediate server-ca``), optionally also pinning
  its SHA-256.
- **retrieval**: the receiver connects to the server's retrieval address
  as TLS *client*, presenting the same agency certificate, and checks the
  server against the CA or a pinned SHA-256.

Either way, after the handshake the peer must be *the server*, not merely
someone the CA or pin lets through: :class:`ServerCheck` checks the role
marked in its certificate, its extended key usage for the TLS role it
plays here, and that the server CA issued it (:func:`mediation.pki.check_role`).
So a tap's credentials, issued by the carrier's other CA, never pass for
the server, even if the agency was given the wrong CA file; and the tap CA
itself is refused as ``--server-ca``.

Host names are not checked in either role: endpoints are usually bare IP
addresses and the certificates name a role, not a host; the CA or the pin
is what authenticates the peer.

Why a live listener cannot go by a pin alone: Python's ``ssl`` gives a TLS
server no hook to accept a client certificate it cannot verify against a
CA (no verify callback), and asking for one with ``CERT_NONE`` means the
client never sends it. So ``--tls`` needs ``--server-ca``; a pin is an
extra check on top. A client sees the server's certificate either way, so
retrieval may use a pin alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation.durable import write_new
from mediation.errors import UsageError
from mediation.pki import (
    Role,
    RoleRefused,
    check_role,
    fingerprint,
    role_of,
    write_private_key,
)

AGENCY_DAYS = 1095  # as the carrier's tap certificates: three years
CERT_FILE = "agency-cert.pem"
KEY_FILE = "agency-key.pem"
DEFAULT_NAME = "mediation agency receiver"


# The peer's certificate is not the one we accept (the message says why).
PeerRefused = RoleRefused


@dataclasses.dataclass(frozen=True)
class AgencyCertificate:
    """Files written by :func:`make_agency_certificate`, and the certificate's fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str


def fingerprint_pem_file(path: Path, field: str) -> str:
    """The fingerprint of the first certificate in a PEM file.

    Raises:
        UsageError: unreadable, or not a PEM certificate (``field`` names the option).
    """
    return fingerprint(_read_certificates(path, field)[0])


def _read_certificates(path: Path, field: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (at least one).

    Raises:
        UsageError: unreadable, or no PEM certificate (``field`` names the option).
    """
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        certs = []
    if not certs:
        raise UsageError(field, f"{path} holds no PEM certificate")
    return certs


def make_agency_certificate(
    out_dir: Path, name: str = DEFAULT_NAME, now: dt.datetime | None = None
) -> AgencyCertificate:
    """A self-signed ECDSA P-256 certificate and key for the agency's receiver.

    Usable in both roles (server for live delivery, client for retrieval),
    so its extended key usage names both. The key is written mode 0600;
    neither file is ever overwritten.

    Raises:
        UsageError: a file exists already, or the directory cannot be written.
    """
    now = now or dt.datetime.now(dt.UTC)
    cert_path, key_path = out_dir / CERT_FILE, out_dir / KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise UsageError("--out", f"{path} exists; move it away or choose another directory")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=AGENCY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_key(key_path, key)
        write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise UsageError("--out", f"cannot write in {out_dir}: {exc.strerror or exc}") from None
    return AgencyCertificate(cert_path, key_path, fingerprint(cert))


@dataclasses.dataclass(frozen=True)
class ServerCheck:
    """How the agency recognises the mediation server after the handshake.

    Attributes:
        cas: the server CA certificate(s) from ``--server-ca``; the server's
            certificate must be issued by one (empty: pin only).
        pin: the server certificate's SHA-256 (lower-case hex), or None.
            With both, both must hold.
    """

    cas: tuple[x509.Certificate, ...] = ()
    pin: str | None = None

    def check(self, peer_der: bytes | None, purpose: x509.ObjectIdentifier) -> None:
        """Refuse a peer that is not the mediation server acting as ``purpose``.

        Args:
            purpose: ``mediation.pki.CLIENT_AUTH`` on the live listener (the
                server connects to us), ``SERVER_AUTH`` for retrieval.

        Raises:
            PeerRefused: no certificate, another one than the pin, or not
            the server's role (see :func:`mediation.pki.check_role`).
        """
        if not self.cas and self.pin is None:
            raise PeerRefused("neither the server CA nor a pin to check the server by")
        if self.pin is not None and (peer_der is None or fingerprint(peer_der) != self.pin):
            raise PeerRefused("not the pinned server certificate")
        check_role(peer_der, Role.SERVER, self.cas, purpose)


@dataclasses.dataclass(frozen=True)
class TrustSettings:
    """How the agency recognises the mediation server.

    Attributes:
        cert: the agency's certificate (PEM), presented in both roles.
        key: its private key (PEM).
        server_ca: the mediation server's CA certificate (PEM), or None.
        server_fingerprint: the server certificate's SHA-256 (lower-case
            hex), or None. With both, both must hold.
    """

    cert: Path
    key: Path
    server_ca: Path | None = None
    server_fingerprint: str | None = None

    def server_check(self) -> ServerCheck:
        """The post-handshake check of the server, with the CA file loaded.

        Raises:
            UsageError: the CA file is unreadable, or is not the carrier's
            server CA (the tap CA, or a server certificate instead of its CA).
        """
        cas: tuple[x509.Certificate, ...] = ()
        if self.server_ca is not None:
            cas = tuple(_read_certificates(self.server_ca, "--server-ca"))
            for ca in cas:
                role = role_of(ca)
                if role is not None and role is not Role.SERVER_CA:
                    raise UsageError(
                        "--server-ca",
                        f"{self.server_ca} is a {role.value} certificate, not the server CA: "
                        "ask the carrier for `mediate server-ca` (DATA_DIR/ca/server-ca.pem)",
                    )
        return ServerCheck(cas, self.server_fingerprint)


def _base(context: ssl.SSLContext, trust: TrustSettings) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(trust.cert, trust.key)
    except FileNotFoundError as exc:
        raise UsageError("--cert/--key", f"cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError("--cert/--key", f"not a matching PEM certificate and key: {exc}") from None
    if trust.server_ca is not None:
        try:
            context.load_verify_locations(cafile=trust.server_ca)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError("--server-ca", f"cannot load {trust.server_ca}: {exc}") from None
    return context


def live_server_context(trust: TrustSettings) -> ssl.SSLContext:
    """The context of the live listener: TLS server that requires a client certificate.

    Raises:
        UsageError: no ``server_ca`` (see the module docstring), or a file
        that does not load.
    """
    if trust.server_ca is None:
        raise UsageError(
            "--server-ca",
            "--tls needs the mediation server's CA (a pin alone cannot check a client)",
        )
    context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), trust)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def retrieval_client_context(trust: TrustSettings) -> ssl.SSLContext:
    """The context of a retrieval connection: TLS client, host name not checked.

    Without a CA the chain is not verified by OpenSSL; :meth:`ServerCheck.check`
    after the handshake is then what authenticates the server.

    Raises:
        UsageError: neither a CA nor a pin, or a file that does not load.
    """
    if trust.server_ca is None and trust.server_fingerprint is None:
        raise UsageError("--server-ca", "give the server's CA or --server-fingerprint SHA256")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # endpoints are IPs; the CA or the pin decides
    if trust.server_ca is None:
        context.verify_mode = ssl.CERT_NONE
    return _base(context, trust)


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a failed TLS handshake, from trio's wrapped error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__
