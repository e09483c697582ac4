"""What the receiver tests share: records, certificates, and the server's side played by machines.

No tests of its own. The "server" here is the protocol machines
(DatagramSender, StreamSender, RetrievalServer) over real loopback sockets,
with a test CA issuing the server's identity certificate, exactly as the
mediation server will drive them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mediation import pdu as P
from mediation.lea.receiver import Bound, Receiver, ReceiverConfig, RunResult
from mediation.lea.tls import (
    TrustSettings,
    live_server_context,
    make_agency_certificate,
    retrieval_client_context,
)
from mediation.pdu.fast import encode_content
from mediation.pki import write_private_key
from mediation.protocol import (
    ContentKind,
    StoredRecord,
)
from mediation.warrants.authority import ServerAuthority, TapAuthority
from mediation.warrants.keys import RegistryKey

HANDLE = "w-3f9a1c"
CMCC = P.StreamId(HANDLE, P.StreamKind.CMCC)
CMII = P.StreamId(HANDLE, P.StreamKind.CMII)
T0 = dt.datetime(2026, 11, 23, 0, 11, 0, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
SUBJECT, PEER = "192.0.2.10", "198.51.100.7"  # documentation addresses
CASE_ID = "CASE-0001"  # fake


# Records ------------------------------------------------------------------------


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ipv4_udp(n: int) -> bytes:
    """A small real IPv4/UDP packet from the subject to a peer, carrying ``n``."""
    body = f"packet {n}".encode()
    udp = struct.pack("!HHHH", 40000 + n % 1000, 9000, 8 + len(body), 0) + body
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        n & 0xFFFF,
        0,
        64,
        17,
        0,
        bytes(map(int, SUBJECT.split("."))),
        bytes(map(int, PEER.split("."))),
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def capture_time(seq: int) -> dt.datetime:
    """The capture time stamped on CC packet ``seq``: 10 ms apart."""
    return T0 + dt.timedelta(milliseconds=10 * seq)


def cc_record(seq: int, payload: bytes | None = None) -> StoredRecord:
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), CASE_ID, "IAP-1")
    header = P.CCDeliveryHeader(info, capture_time(seq), P.PacketDirection.FROM_SUBJECT, seq)
    apdu = P.CCApdu(payload=ipv4_udp(seq) if payload is None else payload, header=header)
    return _stored(seq, ContentKind.CMCC, encode_content(apdu)[1])


def cmii_record(seq: int) -> StoredRecord:
    """A header report (CmII) for even ``seq``, a completeness notice for odd."""
    if seq % 2:
        notice = P.CompletenessNotice(P.CompletenessEvent.TAP_LOST, capture_time(seq), source="t")
        return _stored(seq, ContentKind.NOTICE, encode_content(notice)[1])
    report = P.HeaderReport(
        case_id=CASE_ID,
        iap_system_id="IAP-1",
        timestamp=capture_time(seq),
        content_identifier=P.ContentIdentifier.correlation(b"\x01"),
        header_set=P.HeaderSet(
            stream_id=P.Value.integer(seq),
            source_ip=P.IPAddress(SUBJECT),
            destination_ip=P.IPAddress(PEER),
            source_port="40000",
            destination_port="9000",
        ),
    )
    return _stored(seq, ContentKind.CMII, encode_content(report)[1])


def _stored(seq: int, kind: ContentKind, der: bytes) -> StoredRecord:
    received_us = (capture_time(seq) - EPOCH) // dt.timedelta(microseconds=1) + 500
    return StoredRecord(seq, received_us, kind, P.ClockStatus.SYNCHRONISED, der)


def record_for(stream: P.StreamId, seq: int) -> StoredRecord:
    return cc_record(seq) if stream.kind is P.StreamKind.CMCC else cmii_record(seq)


# Certificates -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """The carrier's two CAs (real ones, as ``mediate init`` makes them), the
    server identity the server CA issued, a tap's credentials from the tap
    CA, and the agency's self-signed certificate."""

    dir: Path
    ca: Path  # the server CA: what the agency gives as --server-ca
    server_cert: Path
    server_key: Path
    agency_cert: Path
    agency_key: Path
    agency_fingerprint: str
    tap_ca: Path  # the tap CA (ca.pem)
    tap_cert: Path  # a tap's certificate and key, from TapAuthority.issue_tap
    tap_key: Path

    def trust(self, **changes: object) -> TrustSettings:
        base = TrustSettings(self.agency_cert, self.agency_key, self.ca, None)
        return dataclasses.replace(base, **changes)

    def server_client_context(self, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """What the mediation server uses to connect out to the agency (TLS client).

        ``identity``: the certificate and key it presents (default: its own).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(self.agency_cert)  # the carrier's --ca or pin
        context.load_cert_chain(*(identity or (self.server_cert, self.server_key)))
        return context

    def anonymous_client_context(self) -> ssl.SSLContext:
        """A client that presents no certificate at all."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(self.agency_cert)
        return context

    def server_listen_context(self, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """The server's retrieval listener: requires the agency's certificate.

        ``identity``: the certificate and key it presents (default: its own).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*(identity or (self.server_cert, self.server_key)))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.agency_cert)
        return context


def _write_key_and_cert(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / f"{stem}.key").write_bytes(key_pem)
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(directory: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {stem}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key_and_cert(directory, stem, key, cert)
    return cert, key


def issue(directory: Path, stem: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey):
    """A certificate like the server's (client and server use), from another CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mediation server")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key_and_cert(directory, stem, key, cert)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    key, now = RegistryKey.generate(), dt.datetime.now(dt.UTC)
    ca_dir = directory / "ca"
    server_ca = ServerAuthority.create(ca_dir, key, now)
    server = server_ca.issue_server((), now)
    (directory / "server.pem").write_text(server.certificate_pem)
    write_private_key(directory / "server.key", server.private_key)
    tap_ca = TapAuthority.create(ca_dir, key, now)
    tap = tap_ca.issue_tap("TAP-TEST-1", now, server_ca_pem=server_ca.ca_pem)
    (directory / "tap.pem").write_text(tap.certificate_pem)
    (directory / "tap.key").write_text(tap.private_key_pem)
    agency = make_agency_certificate(directory / "agency")
    return Pki(
        directory,
        ca_dir / "server-ca.pem",
        directory / "server.pem",
        directory / "server.key",
        agency.cert_path,
        agency.key_path,
        agency.fingerprint,
        ca_dir / "ca.pem",
        directory / "tap.pem",
        directory / "tap.key",
    )


# Running the receiver -------------------------------------------------------------


def config(out: Path, **options: object) -> ReceiverConfig:
    """Fast timers for tests; everything else as given."""
    fast = {
        "report_interval": 0.2,
        "retrieval_interval": 0.1,
        "settle": 0.3,
        "flush_interval": 0.05,
        "sync_interval": 0.2,
        "gaps_interval": 0.5,
        "handshake_timeout": 5.0,
    }
    return ReceiverConfig(out_dir=out, **{**fast, **options})  # type: ignore[arg-type]


def tls_config(out: Path, pki: Pki, **options: object) -> ReceiverConfig:
    trust = options.pop("trust", None) or pki.trust()
    return config(
        out,
        tls=("127.0.0.1", 0),
        tls_context=live_server_context(trust),  # type: ignore[arg-type]
        server_check=trust.server_check(),  # type: ignore[union-attr]
        **options,
    )


def retrieval_options(pki: Pki, port: int, **trust: object) -> dict[str, object]:
    settings = pki.trust(**trust)
    return {
        "retrieve_from": ("127.0.0.1", port),
        "retrieval_context": retrieval_client_context(settings),
        "server_check": settings.server_check(),
    }


@dataclasses.dataclass
class Running:
    """A receiver started in a nursery: where it listens, and its result once done."""

    receiver: Receiver
    bound: Bound
    done: trio.Event
    result: RunResult | None = None

    async def stop(self) -> RunResult:
        self.receiver.stop("test done")
        await self.done.wait()
        assert self.result is not None
        return self.result


async def start(nursery: trio.Nursery, receiver: Receiver) -> Running:
    """Run the receiver in ``nursery`` until :meth:`Running.stop`."""
    holder: list[Running] = []

    async def run(task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
        result = await receiver.run(task_status=task_status)
        holder[0].result = result
        holder[0].done.set()

    bound = await nursery.start(run)
    holder.append(Running(receiver, bound, trio.Event()))
    return holder[0]


async def wait_until(condition: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    """Poll a condition the receiver's state will meet (bounded; 10 ms steps)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await trio.sleep(0.01)


def held(receiver: Receiver, stream: P.StreamId) -> list[tuple[int, int]]:
    tracker = receiver.state.trackers.get(stream)
    return [] if tracker is None else tracker.held


def raw_sequences(path: Path) -> list[int]:
    """Sequence numbers of the envelopes of a raw file, in file order."""
    return [m.sequence_number for _offset, m in P.decode_all(path.read_bytes())]


def raw_envelopes(path: Path) -> list[P.Envelope]:
    return [m for _offset, m in P.decode_all(path.read_bytes())]


def ranges(items: Iterable[tuple[int, int]]) -> list[list[int]]:
    return [[a, b] for a, b in items]
