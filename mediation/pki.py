"""Certificates and keys: fingerprints, private-key files, and who may play which role.

The one home of three things every layer needs (warrants/, log/, server/,
lea/ and cli/ import it; it imports only ``cryptography`` and
:mod:`mediation.durable`):

* :func:`fingerprint`: SHA-256 over a certificate's DER, lower-case hex.
  What carriers pin for agencies (``--fingerprint``), agencies pin for the
  server (``--server-fingerprint``) and ``mediate tap list`` shows.
* :func:`write_private_key`: a private key as PKCS#8 PEM, optionally
  encrypted, created with :func:`mediation.durable.write_new` (mode 0600,
  never overwriting, nothing half-written).
* Roles. Three parties speak TLS: a **tap** (client of the server's tap
  listener), the mediation **server** (client when it delivers to an
  agency, server for retrieval and the tap listener) and an **agency**
  receiver (server when it receives, client when it retrieves). Taps and
  the server are certified by two different CAs in ``DATA_DIR/ca/``, and
  each certificate names its role in its subject's organizational unit
  (``mediation-tap``, ``mediation-server``; the CAs ``mediation-tap-ca``,
  ``mediation-server-ca``) and carries exactly the extended key usages the
  role needs (tap: clientAuth; server: serverAuth and clientAuth).
  :func:`check_role` checks all of it on a peer's DER after the handshake,
  so a tap's credentials can never pass for the server, nor the server's
  for an agency (:func:`check_agency`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation.durable import write_new

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
ANY_USAGE = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
PURPOSE_NAMES = {CLIENT_AUTH: "clientAuth", SERVER_AUTH: "serverAuth"}


# Fingerprints and key files --------------------------------------------------------


def fingerprint(cert: bytes | x509.Certificate) -> str:
    """SHA-256 of a certificate's DER, lower-case hex.

    Args:
        cert: the DER bytes (as ``getpeercert(binary_form=True)`` gives
            them) or a loaded certificate.
    """
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: str | bytes) -> str:
    """:func:`fingerprint` of the first certificate in PEM text.

    Raises:
        ValueError: no PEM certificate in ``pem``.
    """
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    return fingerprint(x509.load_pem_x509_certificate(data))


def private_key_pem(key: PrivateKeyTypes, password: bytes | None = None) -> bytes:
    """A private key as PKCS#8 PEM; encrypted with ``password`` when given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_key(path: Path, key: PrivateKeyTypes, password: bytes | None = None) -> None:
    """Create ``path`` holding ``key`` (PKCS#8 PEM, mode 0600), durably.

    Args:
        password: encrypt the PEM with it (unattended keys go without).

    Raises:
        FileExistsError: ``path`` exists; it is left as it was.
        OSError: the write failed; no partial file is left.
    """
    write_new(path, private_key_pem(key, password), 0o600)


# Roles --------------------------------------------------------------------------------


class Role(enum.Enum):
    """A party of the mediation PKI; the value is the subject OU that marks it."""

    TAP = "mediation-tap"
    SERVER = "mediation-server"
    TAP_CA = "mediation-tap-ca"
    SERVER_CA = "mediation-server-ca"


# What a leaf of each role must be able to do, and what it may do at most.
ROLE_USAGES: dict[Role, frozenset[x509.ObjectIdentifier]] = {
    Role.TAP: frozenset({CLIENT_AUTH}),
    Role.SERVER: frozenset({SERVER_AUTH, CLIENT_AUTH}),
}
# CAs made before roles were marked (tap CA only) are recognised by their CN.
LEGACY_TAP_CA_PREFIX = "mediation tap CA "


class RoleRefused(Exception):
    """A certificate may not play the role asked of it.

    ``str(exc)`` is a short reason from a small fixed set (it is counted
    per reason and logged), never anything the peer chose.
    """


def role_name(role: Role, label: str) -> x509.Name:
    """A subject naming ``role`` (OU) and ``label`` (CN; never case data)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, label),
        ]
    )


def role_of(cert: x509.Certificate) -> Role | None:
    """The role a certificate's subject claims, or None (an agency's, say).

    A CA made before roles were marked is recognised as the tap CA by its CN.
    """
    units = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    claimed = [role for role in Role if role.value in units]
    if claimed:
        return claimed[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if any(str(a.value).startswith(LEGACY_TAP_CA_PREFIX) for a in names):
        return Role.TAP_CA
    return None


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` directly (its name and signature match)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _usages(cert: x509.Certificate) -> frozenset[x509.ObjectIdentifier] | None:
    """The extended key usages, or None when the extension is absent."""
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _load(der: bytes | None) -> x509.Certificate:
    if not der:
        raise RoleRefused("no certificate presented")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise RoleRefused("unreadable certificate") from None


def check_role(
    der: bytes | None,
    role: Role,
    cas: Sequence[x509.Certificate] = (),
    purpose: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """Check that a peer's certificate may act as ``role`` (TAP or SERVER).

    Every connection calls this after the handshake, whatever OpenSSL
    checked already: the chain alone does not say *which* of our parties
    the peer is.

    Args:
        der: the peer's certificate, DER (None: it sent none).
        role: the role the peer claims by being where it is.
        cas: the role's CA certificates; the certificate must be issued
            directly by one. Empty only where a pinned fingerprint already
            identifies the certificate exactly.
        purpose: the extended key usage this connection needs (the peer is
            a TLS client: clientAuth; a TLS server: serverAuth). Default:
            clientAuth for a tap, serverAuth for the server.

    Returns:
        The loaded certificate.

    Raises:
        RoleRefused: naming the first thing that does not hold.
    """
    cert = _load(der)
    claimed = role_of(cert)
    if claimed is not role:
        what = f"a {claimed.value} certificate" if claimed else "no role marked"
        raise RoleRefused(f"{what}, not {role.value}")
    if _is_ca(cert):
        raise RoleRefused(f"a CA certificate, not {role.value}")
    if cas and not any(issued_by(cert, ca) for ca in cas):
        raise RoleRefused(f"not issued by the {role.value} CA")
    usages = _usages(cert)
    if usages != ROLE_USAGES[role]:
        raise RoleRefused(f"extended key usage is not that of {role.value}")
    wanted = purpose or (CLIENT_AUTH if role is Role.TAP else SERVER_AUTH)
    if wanted not in usages:
        raise RoleRefused(f"{role.value} certificate without {PURPOSE_NAMES[wanted]}")
    return cert


def check_agency(
    der: bytes | None, purpose: x509.ObjectIdentifier, own_cas: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Check that a peer's certificate may act as an agency receiver.

    Agencies bring their own PKI, so no role is marked; what is checked is
    that the certificate is none of ours (no mediation role, not issued by
    this server's tap or server CA) and, if it restricts its extended key
    usage, that ``purpose`` is among them. Which agency it belongs to is
    the caller's question (the registered CA or pin).

    Raises:
        RoleRefused: naming the first thing that does not hold.
    """
    cert = _load(der)
    claimed = role_of(cert)
    if claimed is not None:
        raise RoleRefused(f"a {claimed.value} certificate, not an agency's")
    if any(issued_by(cert, ca) for ca in own_cas):
        raise RoleRefused("issued by this server's own CA, not an agency's")
    usages = _usages(cert)
    if usages is not None and not usages & {purpose, ANY_USAGE}:
        raise RoleRefused(f"agency certificate without {PURPOSE_NAMES[purpose]}")
    return cert
