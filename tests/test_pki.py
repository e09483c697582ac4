"""The one fingerprint, the one key writer, role checks and rate-limited refusal logs.

Certificates come from the real authorities (``TapAuthority``,
``ServerAuthority``) as ``mediate init`` makes them; impostors are built
by hand to look as close to the real thing as possible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation.lea.tls import make_agency_certificate
from mediation.log.keys import key_path, load_or_create_signer
from mediation.pki import (
    CLIENT_AUTH,
    SERVER_AUTH,
    Role,
    RoleRefused,
    check_agency,
    check_role,
    fingerprint,
    fingerprint_pem,
    write_private_key,
)
from mediation.refusals import MAX_REASONS, OTHER, Refusals
from mediation.warrants.authority import Authority, ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey, read_key_file, write_key_file

NOW = dt.datetime.now(dt.UTC)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[TapAuthority, ServerAuthority]:
    ca_dir, key = tmp_path_factory.mktemp("ca"), RegistryKey.generate()
    return TapAuthority.create(ca_dir, key, NOW), ServerAuthority.create(ca_dir, key, NOW)


@pytest.fixture(scope="module")
def tap(cas: tuple[TapAuthority, ServerAuthority]) -> x509.Certificate:
    creds = cas[0].issue_tap("TAP-TEST-1", NOW, server_ca_pem=cas[1].ca_pem)
    return x509.load_pem_x509_certificate(creds.certificate_pem.encode())


@pytest.fixture(scope="module")
def server(cas: tuple[TapAuthority, ServerAuthority]) -> x509.Certificate:
    identity = cas[1].issue_server(("192.0.2.1",), NOW)
    return x509.load_pem_x509_certificate(identity.certificate_pem.encode())


def old_style_server(authority: Authority) -> x509.Certificate:
    """The server identity as issued before the CAs were split: no role, by the tap CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mediation server 0a0b0c0d")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(authority._key, hashes.SHA256())
    )


# Fingerprints and key files ------------------------------------------------------------


def test_one_fingerprint_for_der_certificate_and_pem(server: x509.Certificate) -> None:
    expected = hashlib.sha256(der(server)).hexdigest()
    pem = server.public_bytes(serialization.Encoding.PEM)
    assert fingerprint(der(server)) == fingerprint(server) == expected
    assert fingerprint_pem(pem) == fingerprint_pem(pem.decode()) == expected
    assert len(expected) == 64 and expected == expected.lower()
    with pytest.raises(ValueError):
        fingerprint_pem("not a certificate")


def test_private_key_file_is_pkcs8_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "plain.key", key)
        write_private_key(tmp_path / "sealed.key", key, b"correct horse battery")
    finally:
        os.umask(old)
    for name in ("plain.key", "sealed.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    plain = (tmp_path / "plain.key").read_bytes()
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not SEC1
    assert serialization.load_pem_private_key(plain, None).public_key() == key.public_key()
    sealed = (tmp_path / "sealed.key").read_bytes()
    assert sealed.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # needs its password
        serialization.load_pem_private_key(sealed, None)
    loaded = serialization.load_pem_private_key(sealed, b"correct horse battery")
    assert loaded.public_key() == key.public_key()


def test_private_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    assert path.read_bytes() == before


def test_every_key_writer_goes_through_the_one_writer(tmp_path: Path) -> None:
    """CA key (encrypted), agency key, log-signing key, registry key file: 0600, no overwrite."""
    key = RegistryKey.generate()
    old = os.umask(0)
    try:
        TapAuthority.create(tmp_path / "ca", key, NOW)
        made = make_agency_certificate(tmp_path / "agency")
        load_or_create_signer(tmp_path / "data")
        write_key_file(tmp_path / "keys" / "registry.key", key)
    finally:
        os.umask(old)
    files = [tmp_path / "ca" / "ca.key", made.key_path, key_path(tmp_path / "data")]
    for path in [*files, tmp_path / "keys" / "registry.key"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert b"ENCRYPTED PRIVATE KEY" in files[0].read_bytes()
    signing = serialization.load_pem_private_key(files[2].read_bytes(), None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert read_key_file(tmp_path / "keys" / "registry.key").derive("x") == key.derive("x")
    with pytest.raises(FileExistsError):
        write_key_file(tmp_path / "keys" / "registry.key", RegistryKey.generate())
    with pytest.raises(FileExistsError):
        TapAuthority.create(tmp_path / "ca", key, NOW)


# Roles ---------------------------------------------------------------------------------


def test_each_role_passes_as_itself(cas, tap, server) -> None:
    tap_ca, server_ca = cas
    check_role(der(tap), Role.TAP, [tap_ca.certificate])
    check_role(der(server), Role.SERVER, [server_ca.certificate], SERVER_AUTH)
    check_role(der(server), Role.SERVER, [server_ca.certificate], CLIENT_AUTH)
    assert tap.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([CLIENT_AUTH])
    )


@pytest.mark.parametrize(
    ("who", "role", "ca", "purpose", "reason"),
    [
        (
            "tap",
            Role.SERVER,
            "tap",
            SERVER_AUTH,
            "a mediation-tap certificate, not mediation-server",
        ),
        ("tap", Role.SERVER, "server", CLIENT_AUTH, "a mediation-tap certificate"),
        ("server", Role.TAP, "server", CLIENT_AUTH, "a mediation-server certificate, not"),
        ("tap", Role.TAP, "server", CLIENT_AUTH, "not issued by the mediation-tap CA"),
        ("tap", Role.TAP, "tap", SERVER_AUTH, "mediation-tap certificate without serverAuth"),
        ("tap-ca", Role.TAP, "tap", CLIENT_AUTH, "a mediation-tap-ca certificate"),
        ("agency", Role.SERVER, "server", SERVER_AUTH, "no role marked, not mediation-server"),
        ("old", Role.SERVER, "tap", SERVER_AUTH, "no role marked"),
    ],
)
def test_no_role_passes_for_another(
    cas, tap, server, tmp_path: Path, who, role, ca, purpose, reason
) -> None:
    tap_ca, server_ca = cas
    agency = x509.load_pem_x509_certificate(
        make_agency_certificate(tmp_path).cert_path.read_bytes()
    )
    certs = {
        "tap": tap,
        "server": server,
        "tap-ca": tap_ca.certificate,
        "agency": agency,
        "old": old_style_server(tap_ca),
    }
    anchors = {"tap": tap_ca.certificate, "server": server_ca.certificate}
    with pytest.raises(RoleRefused, match=reason):
        check_role(der(certs[who]), role, [anchors[ca]], purpose)


def test_no_certificate_or_garbage_is_refused() -> None:
    with pytest.raises(RoleRefused, match="no certificate presented"):
        check_role(None, Role.SERVER)
    with pytest.raises(RoleRefused, match="unreadable certificate"):
        check_role(b"\x30\x03\x02\x01\x00", Role.SERVER)


def test_an_agency_is_none_of_ours(cas, tap, server, tmp_path: Path) -> None:
    tap_ca, server_ca = cas
    own = [tap_ca.certificate, server_ca.certificate]
    agency = x509.load_pem_x509_certificate(
        make_agency_certificate(tmp_path).cert_path.read_bytes()
    )
    assert check_agency(der(agency), CLIENT_AUTH, own) == agency
    assert check_agency(der(agency), SERVER_AUTH, own) == agency
    with pytest.raises(RoleRefused, match="a mediation-tap certificate, not an agency's"):
        check_agency(der(tap), CLIENT_AUTH, own)
    with pytest.raises(RoleRefused, match="a mediation-server certificate, not an agency's"):
        check_agency(der(server), CLIENT_AUTH, own)
    with pytest.raises(RoleRefused, match="issued by this server's own CA"):
        check_agency(der(old_style_server(tap_ca)), CLIENT_AUTH, own)


# Refusal logging -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_refusals_is_counted_but_logged_once_per_reason_per_interval(caplog) -> None:
    clock, logger = FakeClock(), logging.getLogger("test.refusals")
    refusals = Refusals(logger, "tls: refused", interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for n in range(200):
            refusals.refuse("no acceptable certificate", f"198.51.100.{n % 250}:4000")
            clock.now += 0.01
        refusals.refuse("a mediation-tap certificate, not mediation-server", "198.51.100.9:1")
        assert refusals.counts == {
            "no acceptable certificate": 200,
            "a mediation-tap certificate, not mediation-server": 1,
        }
        assert refusals.total == 201
        assert len(caplog.records) == 2  # the first of each reason
        refusals.tick()
        assert len(caplog.records) == 2  # the minute is not over yet
        clock.now += 60
        refusals.tick()
        assert len(caplog.records) == 3
        assert "199 more (no acceptable certificate)" in caplog.records[-1].getMessage()
        assert "200 in all" in caplog.records[-1].getMessage()
        refusals.refuse("no acceptable certificate")  # a new minute: logged again
        assert len(caplog.records) == 4
        refusals.refuse("no acceptable certificate")
        refusals.flush()
        assert "1 more" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 5


def test_the_reasons_a_peer_can_cause_are_bounded() -> None:
    refusals = Refusals(logging.getLogger("test.refusals"), "x", clock=FakeClock())
    for n in range(MAX_REASONS + 50):
        refusals.refuse(f"reason {n}")
    assert len(refusals.counts) == MAX_REASONS + 1 and refusals.counts[OTHER] == 50
