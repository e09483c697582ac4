"""The agency side and a server site for the delivery tests (no tests here).

- :class:`Site`: a data directory with a registry (key file mode), the
  server's CA, agencies and warrants, made through the same operations the
  CLI uses; :meth:`Site.server` runs a :class:`MediationServer` in-process.
- Certificates for agencies: a test CA, certificates it issues, self-signed ones.

The agencies themselves are in ``delivery_agency``.

Addresses are loopback; case identities are obviously fake.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mediation import pdu as P
from mediation.clock import ClockReading
from mediation.pki import fingerprint
from mediation.protocol.sealed import SealKey
from mediation.server.app import MediationServer
from mediation.server.config import DeliveryConfig, RetrievalConfig, ServerConfig, TapsConfig
from mediation.warrants.authority import ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import (
    CaseDetails,
    ContentLevel,
    Endpoint,
    Stream,
    Target,
    TargetKind,
    Warrant,
)
from mediation.warrants.operations import add_agency_endpoint, add_warrant, remove_warrant
from mediation.warrants.registry import WarrantRegistry

HOST = "127.0.0.1"
TEST_UDP_KEY = SealKey(0x7E57_0001, bytes(range(32)))  # the test agencies' UDP sealing key
TARGET = "192.0.2.10"
T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def synchronised() -> ClockReading:
    return ClockReading(P.ClockStatus.SYNCHRONISED, 1000, 1000)


def fast_config(**delivery: object) -> ServerConfig:
    """Test timings: quick reconnects and reports; retrieval and the tap link on free ports."""
    values: dict[str, object] = {"reconnect_min": 0.02, "reconnect_max": 0.2}
    values.update(delivery)
    return ServerConfig(
        delivery=DeliveryConfig(**values),  # type: ignore[arg-type]
        retrieval=RetrievalConfig(listen=f"{HOST}:0"),
        taps=TapsConfig(tls_listen=f"{HOST}:0"),
    )


def cc_pdu(case_id: str = "CASE-0001", payload: int = 20, n: int = 0) -> bytes:
    """DER of a small IAS-CC-APDU carrying ``case_id`` (and ``n`` in its payload)."""
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), case_id, "IAP-1")
    header = P.CCDeliveryHeader(info, T0, P.PacketDirection.TO_SUBJECT, 9)
    body = b"\x45" + n.to_bytes(8, "big") + bytes(max(0, payload - 9))
    return P.encode(P.CCApdu(payload=body, header=header))


# Certificates -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cert:
    """A certificate and its key, as PEM, with files for ssl contexts."""

    cert_pem: str
    key_pem: str
    cert_file: Path
    key_file: Path

    @property
    def der(self) -> bytes:
        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        return cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.der)


def _write_cert(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Cert:
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (directory / f"{name}.pem").write_text(cert_pem)
    (directory / f"{name}.key").write_text(key_pem)
    return Cert(cert_pem, key_pem, directory / f"{name}.pem", directory / f"{name}.key")


def make_cert(directory: Path, name: str, issuer: Cert | None = None, ca: bool = False) -> Cert:
    """A certificate for ``name``: self-signed, or issued by ``issuer`` (a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert_pem.encode())
        issuer_name = issuer_cert.subject
        signing_key = serialization.load_pem_private_key(issuer.key_pem.encode(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return _write_cert(directory, name, cert, key)


# The carrier's side: registry, agencies, warrants, the server ---------------------


class Site:
    """A data directory with a registry and the server's CA."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.key = RegistryKey.generate()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        with WarrantRegistry.initialise(self.data, self.key, None, now):
            self.tap_authority = TapAuthority.create(self.data / "ca", self.key, now)
            ServerAuthority.create(self.data / "ca", self.key, now)
        self.server_ca = self.data / "ca" / "server-ca.pem"  # what agencies trust
        self.tap_ca = self.data / "ca" / "ca.pem"

    def agency(self, name: str, *endpoints: Endpoint) -> str:
        """Register agency ``name`` with ``endpoints``; its handle."""
        handle = ""
        with self._registry() as registry:
            for endpoint in endpoints:
                agency, _ = add_agency_endpoint(registry, name, endpoint, "--udp", _now())
                handle = agency.handle
        return handle

    def warrant(
        self,
        agency: str,
        case_id: str = "CASE-0001",
        content: ContentLevel = ContentLevel.FULL,
        starts_in: dt.timedelta = dt.timedelta(minutes=-1),
    ) -> Warrant:
        """A warrant on the test target, active from ``starts_in`` (default: a minute ago)."""
        now = _now()
        details = CaseDetails(case_id, (Target(TargetKind.ADDRESS, TARGET),))
        with self._registry() as registry:
            return add_warrant(
                registry, agency, details, content, now + starts_in, now + dt.timedelta(days=1), now
            )

    def remove(self, handle: str) -> None:
        with self._registry() as registry:
            remove_warrant(registry, handle, _now())

    @contextlib.contextmanager
    def _registry(self) -> Iterator[WarrantRegistry]:
        registry = WarrantRegistry.open(self.data)
        try:
            registry.unlock(self.key)
            with registry.locked():
                yield registry
        finally:
            registry.close()

    @contextlib.asynccontextmanager
    async def server(
        self, config: ServerConfig | None = None, **kwargs: object
    ) -> AsyncIterator[MediationServer]:
        """A running server (in this trio run); stopped, log flushed, on the way out."""
        options: dict[str, object] = {"clock_reader": synchronised, **kwargs}
        server = MediationServer(
            self.data,
            self.key,
            config=config or fast_config(),
            **options,  # type: ignore[arg-type]
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()

    def retrieval_address(self, server: MediationServer) -> tuple[str, int]:
        assert server.retrieval is not None and server.retrieval.listening is not None
        return server.retrieval.listening


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def udp_endpoint(
    port: int,
    streams: tuple[Stream, ...] = (Stream.CMII, Stream.CMCC),
    key: SealKey = TEST_UDP_KEY,
) -> Endpoint:
    """A UDP endpoint registered with ``key`` (the one :class:`UdpAgency` opens with)."""
    return Endpoint("udp", HOST, port, streams, udp_key_id=key.key_id, udp_key=key.key)


def tls_endpoint(
    port: int,
    *,
    ca: Cert | None = None,
    fingerprint: str | None = None,
    streams: tuple[Stream, ...] = (Stream.CMII, Stream.CMCC),
) -> Endpoint:
    return Endpoint("tls", HOST, port, streams, ca.cert_pem if ca else None, fingerprint)


async def wait_until(
    condition: Callable[[], object], seconds: float = 20.0, what: str = ""
) -> None:
    """Poll ``condition`` every 10 ms (of trio's clock) for at most ``seconds``."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)
