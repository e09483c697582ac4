"""TLS for the agency: its certificate, and the contexts of both connection roles.

Two connections, one agency certificate:

- **live delivery**: the mediation server connects out to the agency, so
  the receiver is the TLS *server*. It requires a client certificate and
  verifies it against the mediation server's CA (``DATA_DIR/ca/ca.pem``,
  given by the carrier), optionally also pinning its SHA-256.
- **retrieval**: the receiver connects to the server's retrieval address
  as TLS *client*, presenting the same agency certificate, and checks the
  server against the CA or a pinned SHA-256.

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
import hashlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation.errors import UsageError

AGENCY_DAYS = 1095  # as the carrier's tap certificates: three years
CERT_FILE = "agency-cert.pem"
KEY_FILE = "agency-key.pem"
DEFAULT_NAME = "mediation agency receiver"


class PeerRefused(Exception):
    """The peer's certificate is not the one we accept (the message says why)."""


@dataclasses.dataclass(frozen=True)
class AgencyCertificate:
    """Files written by :func:`make_agency_certificate`, and the certificate's fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str


def fingerprint_der(der: bytes) -> str:
    """SHA-256 over a certificate's DER, lower-case hex: what ``--fingerprint`` takes."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem_file(path: Path, field: str) -> str:
    """The fingerprint of the first certificate in a PEM file.

    Raises:
        UsageError: unreadable, or not a PEM certificate (``field`` names the option).
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise UsageError(field, f"{path} holds no PEM certificate") from None
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(key_path, key_pem, 0o600)
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise UsageError("--out", f"cannot write in {out_dir}: {exc.strerror or exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return AgencyCertificate(cert_path, key_path, fingerprint_der(der))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


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

    Without a CA the chain is not verified by OpenSSL; :func:`check_pin`
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


def check_pin(peer_der: bytes | None, pin: str | None) -> None:
    """Enforce the pinned fingerprint, if any, on the peer's certificate.

    Raises:
        PeerRefused: a pin is set and the peer sent no certificate or another one.
    """
    if pin is None:
        return
    if peer_der is None:
        raise PeerRefused("no certificate presented")
    seen = fingerprint_der(peer_der)
    if seen != pin:
        raise PeerRefused(f"certificate sha256 {seen[:16]}... is not the pinned one")


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a failed TLS handshake, from trio's wrapped error."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__
