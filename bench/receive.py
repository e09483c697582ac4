"""The agency's receiver alone: CPU per PDU of its UDP and TLS paths, in process.

    python bench/receive.py [--pdus N] [--checkout DIR] [--batch N] [--tls-socket] [--run N]

Builds ``--pdus`` PDUs as a full-content tap does (1500-octet frames to
and from a documentation-address target: a header report and a CC APDU
each), numbers them as the server does, and feeds them to the receiver's
own code without sockets, so the figure is the receiver's CPU alone. The
two streams alternate envelope by envelope, or with ``--run N`` come in
runs of N envelopes of one stream, as the server sends a stream's batch:

- UDP: each envelope sealed, then ``UdpDelivery.receive_all`` of
  ``--batch`` datagrams at a time, as the reader takes a wake-up's (open,
  decode, track, store: raw file, pcap, JSON line); ``--batch 1``, or a
  checkout without ``receive_all``: ``UdpDelivery.receive`` of each;
- TLS: the envelopes back to back in 256 KiB chunks through a
  ``StreamReceiver`` and the receiver's state, as its connection driver
  does (TLS decryption and the fsync before each ack are
  not included: the end-to-end bench, bench/e2e.py, has the process's CPU);
- TLS socket (``--tls-socket``): the same envelopes sent at once over a
  loopback TLS connection by a child process and taken by the receiver's
  connection driver (``lea/driver.StreamDriver``, as ``mediate receive``
  runs it): the TLS decryption, the driver's reads, its acks and the
  fsync before each are included (the child's CPU is not).

CPU time (``process_time``), best of ``--rounds``. ``--checkout DIR``
imports the receiver from another checkout: run this file with that
checkout's Python to compare (``DIR/.venv/bin/python bench/receive.py
--checkout DIR``). Goal: well under 33 us per PDU (30,000 PDUs/s on a core).
"""

from __future__ import annotations

import argparse
import datetime as dt
import operator
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def build(count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` envelopes per stream kind (CmII header reports, CmCC packets)."""
    from mediation import pdu as P
    from mediation.protocol import DatagramSender
    from mediation.protocol.envelope import StoredRecord
    from mediation.tap.builder import PDUBuilder
    from mediation.tap.packet import parse_frame
    from mediation.tap.replay import Tap
    from mediation.tap.targets import TargetMatcher
    from mediation.warrants.model import ContentLevel, Target, TargetKind

    sys.path.insert(0, str(HERE / "bench"))
    from rig.capture import frame  # the end-to-end bench's frames

    builder = PDUBuilder("CASE-TEST-0001", "IAP-TEST", ContentLevel.FULL)
    tap = Tap("w-bench1", TargetMatcher([Target(TargetKind.MAC, "02:00:5e:00:53:01")]), builder)
    senders = {kind: DatagramSender(P.StreamId("w-bench1", kind)) for kind in P.StreamKind}
    kinds = {"cmII": P.StreamKind.CMII, "cmCC": P.StreamKind.CMCC}
    out: dict[P.StreamKind, list[bytes]] = {kind: [] for kind in P.StreamKind}
    now = dt.datetime.now(dt.UTC)
    index = 0
    while len(out[P.StreamKind.CMCC]) < count:
        data = frame(index)
        when = now + dt.timedelta(microseconds=37 * index)
        for pdu in tap.process(data, when, parse_frame(data, 1)):
            kind = kinds[pdu.kind]
            seq = len(out[kind])
            record = StoredRecord(seq, int(when.timestamp() * 1e6), pdu.kind, None, pdu.der)
            out[kind].append(senders[kind].envelope(record, 0.0))
        index += 1
    return out[P.StreamKind.CMII][:count], out[P.StreamKind.CMCC][:count]


def udp_path(envelopes: list[bytes], base: Path, batch: int = 1) -> float:
    """CPU microseconds per envelope through ``UdpDelivery``, ``batch`` datagrams a wake-up."""
    import socket

    from mediation.lea.state import ReceiverState
    from mediation.lea.udp import UdpDelivery
    from mediation.protocol.sealed import DatagramSealer, Direction, SealKey

    key = SealKey(1, os.urandom(32))
    sealer = DatagramSealer(key, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
    datagrams = [sealer.seal(e) for e in envelopes]
    state = ReceiverState(Path(tempfile.mkdtemp(dir=base)))
    source = ("127.0.0.1", 9)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        delivery = UdpDelivery(sock, state, 1.0, [key])
        receive_all = getattr(delivery, "receive_all", None)  # (not in older checkouts)
        started = time.process_time()
        for at in range(0, len(datagrams), batch):
            if receive_all is None or batch == 1:  # a datagram a call, as older readers did
                for datagram in datagrams[at : at + batch]:
                    delivery.receive(datagram, source, 0.0)
            else:  # a wake-up's datagrams in one call, as the reader does
                receive_all([(d, source) for d in datagrams[at : at + batch]], 0.0)
            if at % 4096 < batch:
                state.flush()
        state.flush()
        took = time.process_time() - started
    state.close()
    return took / len(datagrams) * 1e6


def tls_path(envelopes: list[bytes], base: Path) -> float:
    """CPU microseconds per envelope through a StreamReceiver, as the connection driver runs it."""
    from mediation.lea.state import ReceiverState
    from mediation.protocol import StreamReceiver

    state = ReceiverState(Path(tempfile.mkdtemp(dir=base)))
    machine = StreamReceiver(trackers=state.trackers, streams=state.accepted)
    machine.connection_made(0.0)
    raw_of = operator.attrgetter("raw")  # as the connection driver takes the octets
    data = b"".join(envelopes)
    chunk = 256 * 1024
    started = time.process_time()
    for at in range(0, len(data), chunk):
        part = data[at : at + chunk]
        events = machine.receive_data(part, 0.0)
        state.on_events(events, raw_of, "tls", 0.0)
        machine.data_to_send()
    state.flush()
    took = time.process_time() - started
    state.close()
    return took / len(envelopes) * 1e6


def _tls_sender(port: int, data_file: str, count: int, checkout: str) -> None:
    """The server's end (a child process): send the envelopes at once, wait for the
    acks of all ``count``, then close TLS (closing before would reset the connection)."""
    import contextlib
    import socket
    import ssl

    sys.path.insert(0, checkout)
    from mediation import pdu as P
    from mediation.protocol import MessageBuffer
    from mediation.protocol.envelope import decode_message

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # a bench on loopback
    with socket.create_connection(("127.0.0.1", port)) as raw:
        tls = context.wrap_socket(raw)
        tls.sendall(Path(data_file).read_bytes())
        acked: dict[object, int] = {}
        buffer = MessageBuffer()
        while sum(acked.values()) < count:
            data = tls.recv(65536)
            assert data, "the agency closed first"
            buffer.feed(data)
            for message in map(decode_message, buffer.messages()):
                if isinstance(message, P.Acknowledgement):
                    acked[message.stream] = message.next_expected
        tls.settimeout(30)
        with contextlib.suppress(OSError, ssl.SSLError):  # the agency closed first
            tls.unwrap()  # close_notify; the agency then closes the connection


def tls_socket_path(envelopes: list[bytes], base: Path, checkout: Path) -> float:
    """CPU microseconds per envelope through TLS on loopback and the connection driver."""
    import multiprocessing
    import ssl

    import trio

    from mediation.lea.driver import StreamDriver
    from mediation.lea.state import ReceiverState
    from mediation.lea.tls import make_agency_certificate
    from mediation.protocol import StreamReceiver

    work = Path(tempfile.mkdtemp(dir=base))
    agency = make_agency_certificate(work / "agency", "bench agency")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(agency.cert_path, agency.key_path)
    data_file = work / "envelopes"
    data_file.write_bytes(b"".join(envelopes))
    state = ReceiverState(work / "out")

    async def receive() -> float:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        child = multiprocessing.get_context("spawn").Process(
            target=_tls_sender,
            args=(port, str(data_file), len(envelopes), str(checkout)),
            daemon=True,
        )
        child.start()
        stream = trio.SSLStream(await listeners[0].accept(), context, server_side=True)
        await stream.do_handshake()
        machine = StreamReceiver(trackers=state.trackers, streams=state.accepted)
        machine.connection_made(trio.current_time())
        started = time.process_time()
        driver = StreamDriver(machine, stream, state, "tls")
        await driver.run()
        state.flush()
        took = time.process_time() - started
        await listeners[0].aclose()
        child.join(30)
        assert driver.ended_by == "closed by peer", driver.ended_by
        return took

    took = trio.run(receive)
    got = sum(stats.received for stats in state.stats.values())
    state.close()
    assert got == len(envelopes), f"{got} of {len(envelopes)} envelopes"
    return took / len(envelopes) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pdus", type=int, default=20_000, help="per stream kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkout", type=Path, default=HERE)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--batch", type=int, default=64, help="UDP datagrams a wake-up (1: one a call)"
    )
    parser.add_argument(
        "--tls-socket", action="store_true", help="also TLS on loopback through the driver"
    )
    parser.add_argument(
        "--run",
        type=int,
        default=1,
        help="a stream's envelopes in runs of N, as the server sends a batch (1: alternating)",
    )
    args = parser.parse_args()
    if not 100 <= args.pdus <= 1_000_000 or not 1 <= args.rounds <= 10:
        parser.error("--pdus: 100 to 1,000,000; --rounds: 1 to 10")
    if not 1 <= args.run <= args.pdus:
        parser.error("--run: 1 to --pdus")
    if not 1 <= args.batch <= 256:
        parser.error("--batch: 1 to 256 (the reader takes at most 256 a wake-up)")
    sys.path.insert(0, str(args.checkout.resolve()))
    cmii, cmcc = build(args.pdus)
    n = args.run
    mixed = [e for at in range(0, args.pdus, n) for e in cmii[at : at + n] + cmcc[at : at + n]]
    base = Path(tempfile.mkdtemp(prefix="receive-", dir=args.dir))
    try:
        tls_path(mixed[:200], base)  # warm-up: the reference codec compiles its schema once
        udp = min(udp_path(mixed, base, args.batch) for _ in range(args.rounds))
        tls = min(tls_path(mixed, base) for _ in range(args.rounds))
        sock = 0.0
        if args.tls_socket:
            sock = min(
                tls_socket_path(mixed, base, args.checkout.resolve()) for _ in range(args.rounds)
            )
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    print(f"receive: {len(mixed):,} PDUs (header report + CC per 1500-octet frame), "
          f"receiver from {args.checkout.resolve()}")  # fmt: skip
    print(f"UDP path {udp:6.1f} us CPU per PDU ({1e6 / udp:,.0f} PDUs/s on one core), "
          f"{args.batch} a wake-up")  # fmt: skip
    print(f"TLS path {tls:6.1f} us CPU per PDU ({1e6 / tls:,.0f} PDUs/s on one core)")
    if args.tls_socket:
        print(f"TLS socket {sock:4.1f} us CPU per PDU ({1e6 / sock:,.0f} PDUs/s on one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
