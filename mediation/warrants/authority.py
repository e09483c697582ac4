"""The server's two CAs, and the credentials they issue.

``mediate init`` creates two ECDSA P-256 CAs in ``DATA_DIR/ca/`` (P-256
rather than Ed25519: more router TLS stacks accept it, and TLS 1.3 in
Python's ``ssl`` handles both), one per role, so that no certificate of
one role can pass for another (see :mod:`mediation.pki`):

* the **tap CA** (``ca.pem``, ``ca.key``) signs only taps: ``mediate tap
  register NAME`` issues a client certificate (OU ``mediation-tap``, CN =
  the tap's name, never case data; clientAuth only) and a random 32-byte
  key for message authentication on the UDP tap link, and writes both, with
  the *server* CA certificate (what the tap verifies the server by), into
  one TOML bundle the operator copies to the router;
* the **server CA** (``server-ca.pem``, ``server-ca.key``) signs only the
  server's own identity (OU ``mediation-server``; serverAuth and
  clientAuth). Agencies trust this one, and only this one.

Each private key is stored encrypted under its own subkey of the registry
key, so a copy of the data directory cannot mint certificates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mediation.durable import write_new
from mediation.errors import UsageError
from mediation.pki import (
    ROLE_USAGES,
    Role,
    fingerprint_pem,
    private_key_pem,
    role_name,
    write_private_key,
)
from mediation.warrants.keys import RegistryKey

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CA_CERT = "server-ca.pem"
SERVER_CA_KEY = "server-ca.key"
CA_DAYS = 3650
TAP_DAYS = 1095
HMAC_KEY_BYTES = 32
SERVER_PLACEHOLDER = "SET-ME:37002"  # the default [taps] tls_listen port


@dataclasses.dataclass(frozen=True)
class TapCredentials:
    """Everything a tap needs to talk to this server; the bundle file's contents."""

    name: str
    certificate_pem: str
    private_key_pem: str
    server_ca_pem: str  # the tap verifies the server by this CA, never by the tap CA
    hmac_key: bytes
    server: str = SERVER_PLACEHOLDER

    @property
    def fingerprint(self) -> str:
        return fingerprint_pem(self.certificate_pem)

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.certificate_pem.encode("ascii")).serial_number


class Authority:
    """One of the server's CAs: its certificate and (decrypted) key, and what it signs.

    The subclasses fix the role, the files and the registry subkey.
    """

    role: ClassVar[Role]  # the CA's own marker
    leaf: ClassVar[Role]  # the only role it issues
    cert_file: ClassVar[str]
    key_file: ClassVar[str]
    subkey: ClassVar[str]  # RegistryKey.derive purpose of the key's password
    label: ClassVar[str]

    def __init__(
        self, certificate: x509.Certificate, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.certificate = certificate
        self._key = private_key

    @property
    def ca_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def exists(cls, ca_dir: Path) -> bool:
        return (ca_dir / cls.cert_file).is_file() and (ca_dir / cls.key_file).is_file()

    @classmethod
    def create(cls, ca_dir: Path, key: RegistryKey, now: dt.datetime) -> Self:
        """A new CA in ``ca_dir``: certificate 0644, private key 0600 and encrypted.

        Raises:
            FileExistsError: the CA exists already (nothing is overwritten).
        """
        private_key = ec.generate_private_key(ec.SECP256R1())
        name = role_name(cls.role, f"{cls.label} {os.urandom(4).hex()}")
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
        password = key.derive(cls.subkey).hex().encode("ascii")
        write_private_key(ca_dir / cls.key_file, private_key, password)
        write_new(ca_dir / cls.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert, private_key)

    @classmethod
    def load(cls, ca_dir: Path, key: RegistryKey) -> Self:
        """The CA in ``ca_dir``, its key opened with the registry key.

        Raises:
            UsageError: missing, unreadable, or its key does not open.
        """
        password = key.derive(cls.subkey).hex().encode("ascii")
        try:
            cert = x509.load_pem_x509_certificate((ca_dir / cls.cert_file).read_bytes())
            private_key = serialization.load_pem_private_key(
                (ca_dir / cls.key_file).read_bytes(), password
            )
        except (OSError, ValueError) as exc:
            raise UsageError(
                "--data-dir", f"the {cls.label} in {ca_dir} cannot be loaded: {exc}"
            ) from None
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise UsageError("--data-dir", f"the {cls.label} key in {ca_dir} is not an ECDSA key")
        return cls(cert, private_key)

    def _issue(
        self,
        label: str,
        now: dt.datetime,
        names: Sequence[str] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf of this CA's one role: subject OU, usages and nothing else."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(role_name(self.leaf, label))
            .issuer_name(self.certificate.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=TAP_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(sorted(ROLE_USAGES[self.leaf], key=str)), critical=False
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_subject_names(names)), critical=False
            )
        return builder.sign(self._key, hashes.SHA256()), leaf_key


class TapAuthority(Authority):
    """The tap CA: signs tap certificates and nothing else."""

    role, leaf = Role.TAP_CA, Role.TAP
    cert_file, key_file, subkey = CA_CERT, CA_KEY, "ca-key"
    label = "mediation tap CA"

    def issue_tap(
        self,
        name: str,
        now: dt.datetime,
        server: str = SERVER_PLACEHOLDER,
        *,
        server_ca_pem: str,
    ) -> TapCredentials:
        """A client certificate for tap ``name`` and a fresh UDP message key.

        Args:
            server_ca_pem: the server CA (PEM), put in the bundle for the tap
                to verify the server by: the tap CA would let any other tap
                pass for the server.
        """
        cert, tap_key = self._issue(name, now)
        return TapCredentials(
            name=name,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            private_key_pem=private_key_pem(tap_key).decode("ascii"),
            server_ca_pem=server_ca_pem,
            hmac_key=os.urandom(HMAC_KEY_BYTES),
            server=server,
        )


class ServerAuthority(Authority):
    """The server CA: signs the server's own identity and nothing else."""

    role, leaf = Role.SERVER_CA, Role.SERVER
    cert_file, key_file, subkey = SERVER_CA_CERT, SERVER_CA_KEY, "server-ca-key"
    label = "mediation server CA"

    @classmethod
    def ensure(cls, ca_dir: Path, key: RegistryKey, now: dt.datetime) -> tuple[Self, bool]:
        """The server CA, created first in a data directory from before it existed.

        Returns:
            The CA, and whether it was created now.

        Raises:
            UsageError: it exists and cannot be loaded with this key.
        """
        if cls.exists(ca_dir):
            return cls.load(ca_dir, key), False
        return cls.create(ca_dir, key, now), True

    def issue_server(self, names: Sequence[str], now: dt.datetime) -> ServerIdentity:
        """The server's TLS identity: one certificate for both of its TLS roles.

        It is a client when it connects out to an agency endpoint and a server
        when an agency connects to retrieval (or a tap to its tap listener),
        so it carries both extended key usages. ``names`` (host names, IP
        literals) go into subjectAltName for agencies that also check the
        host name; the CN is a random label, never case data.
        """
        cert, server_key = self._issue(f"mediation server {os.urandom(4).hex()}", now, names)
        return ServerIdentity(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), server_key
        )


@dataclasses.dataclass(frozen=True)
class ServerIdentity:
    """The mediation server's own TLS certificate (PEM) and key, issued by the server CA."""

    certificate_pem: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return fingerprint_pem(self.certificate_pem)


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
        "# The server CA: verify the mediation server's certificate by it (not by the tap CA).\n"
        f'server_ca_certificate = """\n{creds.server_ca_pem}"""\n'
    )


def write_bundle(path: Path, creds: TapCredentials) -> None:
    """Write the bundle to a new file, mode 0600. Refuses to overwrite."""
    write_new(path, bundle_text(creds).encode("ascii"), 0o600)


def read_bundle(path: Path) -> TapCredentials:
    """A tap bundle, as written by :func:`write_bundle`."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    return TapCredentials(
        name=data["name"],
        certificate_pem=data["certificate"],
        private_key_pem=data["private_key"],
        server_ca_pem=data["server_ca_certificate"],
        hmac_key=bytes.fromhex(data["hmac_key"]),
        server=data["server"],
    )
