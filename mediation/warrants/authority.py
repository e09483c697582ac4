"""The server's own CA, and the credentials it issues to taps.

``mediate init`` creates an ECDSA P-256 CA in ``DATA_DIR/ca/`` (P-256
rather than Ed25519: more router TLS stacks accept it, and TLS 1.3 in
Python's ``ssl`` handles both). Its private key is stored encrypted under
a subkey of the registry key, so a copy of the data directory cannot mint
tap certificates. ``mediate tap register NAME`` issues a client
certificate (CN = the tap's name; never case data) and a random 32-byte
key for message authentication on the UDP tap link, and writes both, with
the CA certificate, into one TOML bundle the operator copies to the router.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation.errors import UsageError
from mediation.warrants.keys import RegistryKey

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
TAP_DAYS = 1095
HMAC_KEY_BYTES = 32
SERVER_PLACEHOLDER = "SET-ME:5556"


@dataclasses.dataclass(frozen=True)
class TapCredentials:
    """Everything a tap needs to talk to this server; the bundle file's contents."""

    name: str
    certificate_pem: str
    private_key_pem: str
    ca_pem: str
    hmac_key: bytes
    server: str = SERVER_PLACEHOLDER

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate_pem)

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode("ascii")).serial_number


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 over the certificate's DER, lower-case hex (what agencies pin, too)."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TapAuthority:
    """The CA that signs tap certificates and the server's own (:meth:`issue_server`)."""

    def __init__(
        self, certificate: x509.Certificate, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.certificate = certificate
        self._key = private_key

    @property
    def ca_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def create(cls, ca_dir: Path, key: RegistryKey, now: dt.datetime) -> TapAuthority:
        """A new CA in ``ca_dir``: certificate 0644, private key 0600 and encrypted."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"mediation tap CA {os.urandom(4).hex()}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(private_key, hashes.SHA256())
        )
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = key.derive("ca-key").hex().encode("ascii")
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        _write_new(ca_dir / CA_KEY, key_pem, 0o600)
        _write_new(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert, private_key)

    @classmethod
    def load(cls, ca_dir: Path, key: RegistryKey) -> TapAuthority:
        password = key.derive("ca-key").hex().encode("ascii")
        try:
            cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
            private_key = serialization.load_pem_private_key(
                (ca_dir / CA_KEY).read_bytes(), password
            )
        except (OSError, ValueError) as exc:
            raise UsageError(
                "--data-dir", f"the tap CA in {ca_dir} cannot be loaded: {exc}"
            ) from None
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise UsageError("--data-dir", f"the tap CA key in {ca_dir} is not an ECDSA key")
        return cls(cert, private_key)

    def issue_tap(
        self, name: str, now: dt.datetime, server: str = SERVER_PLACEHOLDER
    ) -> TapCredentials:
        """A client certificate for tap ``name`` and a fresh UDP message key."""
        tap_key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.certificate.subject)
            .public_key(tap_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=TAP_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = tap_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return TapCredentials(
            name=name,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            private_key_pem=key_pem,
            ca_pem=self.ca_pem,
            hmac_key=os.urandom(HMAC_KEY_BYTES),
            server=server,
        )

    def issue_server(self, names: Sequence[str], now: dt.datetime) -> ServerIdentity:
        """The server's TLS identity: one certificate for both of its TLS roles.

        It is a client when it connects out to an agency endpoint and a server
        when an agency connects to retrieval, so it carries both extended key
        usages. ``names`` (host names, IP literals) go into subjectAltName for
        agencies that also check the host name; the CN is a random label,
        never case data.
        """
        server_key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"mediation server {os.urandom(4).hex()}"))
            .issuer_name(self.certificate.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=TAP_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_subject_names(names)), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        key_pem = server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return ServerIdentity(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem
        )


@dataclasses.dataclass(frozen=True)
class ServerIdentity:
    """The mediation server's own TLS certificate and key (PEM), issued by this CA."""

    certificate_pem: str
    private_key_pem: str

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate_pem)


def _subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries: IP literals as iPAddress, everything else as dNSName."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def bundle_text(creds: TapCredentials) -> str:
    """The tap bundle as TOML: what the router's tap reads (see :func:`read_bundle`)."""
    return (
        "# mediation tap credentials. Copy to the router; keep mode 0600: it holds private keys.\n"
        f'name = "{creds.name}"\n'
        "# The mediation server's tap listener; replace the placeholder if it says SET-ME.\n"
        f'server = "{creds.server}"\n'
        "# Key for HMAC-SHA256 on the UDP tap link (hex).\n"
        f'hmac_key = "{creds.hmac_key.hex()}"\n'
        f'certificate = """\n{creds.certificate_pem}"""\n'
        f'private_key = """\n{creds.private_key_pem}"""\n'
        f'ca_certificate = """\n{creds.ca_pem}"""\n'
    )


def write_bundle(path: Path, creds: TapCredentials) -> None:
    """Write the bundle to a new file, mode 0600. Refuses to overwrite."""
    _write_new(path, bundle_text(creds).encode("ascii"), 0o600)


def read_bundle(path: Path) -> TapCredentials:
    """A tap bundle, as written by :func:`write_bundle`."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    return TapCredentials(
        name=data["name"],
        certificate_pem=data["certificate"],
        private_key_pem=data["private_key"],
        ca_pem=data["ca_certificate"],
        hmac_key=bytes.fromhex(data["hmac_key"]),
        server=data["server"],
    )
