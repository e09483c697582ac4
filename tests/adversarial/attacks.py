"""What an attacker on the same network sends, bounded in count and time.

Every function here sends only to loopback, stops by itself after a fixed
number of messages or at its deadline (``time.monotonic()``), whichever
comes first, and never raises for what the peer does: a refused, reset or
closed connection is the expected answer. Each returns what it did, so
the test can say the attack ran.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mediation import pdu
from mediation.pdu.codec import iter_pdus
from mediation.protocol.envelope import envelope_bytes
from mediation.protocol.sealed import DatagramSealer, Direction, SealKey

ETH_P_ALL = 0x0003
LOOPBACK = "127.0.0.1"


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident set (``VmRSS``) and its peak (``VmHWM``), in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


# Payloads --------------------------------------------------------------------------


def random_payloads(rng: random.Random, count: int, largest: int = 1500) -> Iterator[bytes]:
    """Random byte strings, some empty, some large; every fourth shaped like huge DER."""
    for i in range(count):
        size = rng.choice((0, 1, 2, 8, 40, 200, largest, rng.randrange(largest)))
        body = rng.randbytes(size)
        if i % 4 == 0 and size > 6:  # a SEQUENCE claiming a 2 GiB length
            body = b"\x30\x84\x7f\xff\xff\xff" + body[6:]
        yield body


def mutations(rng: random.Random, genuine: list[bytes], count: int) -> Iterator[bytes]:
    """Genuine messages with one change each: a bit flipped, cut, grown, or spliced."""
    if not genuine:
        return
    for _ in range(count):
        data = bytearray(rng.choice(genuine))
        how = rng.randrange(4)
        if how == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif how == 2:
            data += rng.randbytes(rng.randrange(1, 64))
        else:
            other = rng.choice(genuine)
            cut = rng.randrange(min(len(data), len(other)) or 1)
            data = data[:cut] + other[cut:]
        yield bytes(data)


def forged_envelope(handle: str, kind: pdu.StreamKind, seq: int) -> bytes:
    """A well-formed ``pduEnvelope`` for ``handle`` holding a made-up CC packet."""
    content = _made_up_content(kind)
    now_us = time.time_ns() // 1000
    return envelope_bytes(pdu.StreamId(handle, kind), seq, now_us, kind.value, None, content, False)


GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"


def _made_up_content(kind: pdu.StreamKind) -> bytes:
    """A valid content PDU of the stream's kind (fixtures/golden), not the server's."""
    name = "12-cc-apdu" if kind is pdu.StreamKind.CMCC else "10-cmii-data-header-report"
    lines = (GOLDEN / f"{name}.hex").read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def sealed_under(
    key_id: int, direction: Direction, messages: Iterable[bytes], key: bytes | None = None
) -> list[bytes]:
    """Each message sealed under ``key`` (default: a random wrong one) with ``key_id``."""
    sealer = DatagramSealer(
        SealKey(key_id, key or os.urandom(32)), direction, time.time_ns() // 1000
    )
    return [sealer.seal(message) for message in messages]


def report_message(handle: str, kind: pdu.StreamKind, highest: int) -> bytes:
    """A receiver report claiming everything up to ``highest`` arrived (hiding loss)."""
    return pdu.encode(
        pdu.ReceiverReport(
            stream=pdu.StreamId(handle, kind),
            report_time=dt.datetime.now(dt.UTC),
            received_count=highest + 1,
            highest_sequence=highest,
        )
    )


def replay_request(request_id: int, stream: pdu.StreamId, ranges: list[tuple[int, int]]) -> bytes:
    """A ``replayRequest`` asking for ``ranges`` (first, last) of ``stream``."""
    return pdu.encode(
        pdu.ReplayRequest(request_id, stream, tuple(pdu.SequenceRange(a, b) for a, b in ranges))
    )


# Senders ---------------------------------------------------------------------------


def spray_udp(address: tuple[str, int], payloads: Iterable[bytes], until: float) -> int:
    """Each payload as one datagram from one ephemeral socket; returns how many were sent."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            if time.monotonic() > until:
                break
            with contextlib.suppress(OSError):
                sock.sendto(payload, address)
                sent += 1
            if sent % 50 == 0:
                time.sleep(0.01)  # a flood, but one the loopback buffers survive
    return sent


def spoof_udp(source_port: int, port: int, payloads: Iterable[bytes], until: float) -> int:
    """Datagrams to ``LOOPBACK:port`` that claim to come from ``LOOPBACK:source_port``.

    A raw socket (root) writes the UDP header itself, so the datagrams
    pass a socket connected to the claimed source: what an attacker who
    can forge source addresses sends. Checksum 0: none, valid for IPv4.
    """
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as sock:
        for payload in payloads:
            if time.monotonic() > until:
                break
            header = struct.pack("!HHHH", source_port, port, 8 + len(payload), 0)
            with contextlib.suppress(OSError):
                sock.sendto(header + payload, (LOOPBACK, 0))
                sent += 1
            if sent % 50 == 0:
                time.sleep(0.01)
    return sent


def spray_tcp(address: tuple[str, int], payloads: Iterable[bytes], until: float) -> int:
    """One connection per payload: connect, write it, read a little, close."""
    made = 0
    for payload in payloads:
        if time.monotonic() > until:
            break
        with contextlib.suppress(OSError), socket.create_connection(address, 2.0) as sock:
            made += 1
            sock.settimeout(2.0)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(4096)
    return made


def tls_attempt(
    address: tuple[str, int],
    cert: Path | None,
    key: Path | None,
    send: bytes = b"",
    wait: float = 2.0,
    enough: Callable[[bytes], bool] | None = None,
) -> bytes | None:
    """A TLS connection presenting ``cert`` (the peer is not checked), then ``send``.

    Returns:
        What the peer sent within ``wait`` seconds (at most 8 MiB), or
        None when the handshake failed or the peer refused us at once.
        Reading stops early once ``enough(what arrived)`` is true.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    try:
        raw = socket.create_connection(address, wait)
    except OSError:
        return None
    with raw:
        try:
            tls = context.wrap_socket(raw)
        except (ssl.SSLError, OSError):
            return None
        with tls:
            return _exchange(tls, send, wait, enough)


def _exchange(
    tls: ssl.SSLSocket, send: bytes, wait: float, enough: Callable[[bytes], bool] | None
) -> bytes | None:
    received = bytearray()
    deadline = time.monotonic() + wait
    try:
        if send:
            tls.sendall(send)
        while len(received) < 8 << 20 and time.monotonic() < deadline:
            tls.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = tls.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
            if enough is not None and enough(bytes(received)):
                break
    except (ssl.SSLError, OSError):
        # TLS 1.3: a refused client certificate shows on the first read.
        return bytes(received) if received else None
    return bytes(received)


def replay_results(
    address: tuple[str, int], cert: Path, key: Path, requests: list[bytes], wait: float
) -> list[pdu.ReplayResult]:
    """Send ``requests`` on one retrieval connection; the results answered within ``wait``.

    Envelopes are read and dropped; reading stops once every request has
    its result, at ``wait``, or after 8 MiB, whichever comes first.
    """
    answer = tls_attempt(
        address, cert, key, send=b"".join(requests), wait=wait,
        enough=lambda data: _results_in(data) >= len(requests),
    )  # fmt: skip
    results = []
    with contextlib.suppress(pdu.PDUError, ValueError):
        for _offset, message in pdu.decode_all(answer or b""):
            if isinstance(message, pdu.ReplayResult):
                results.append(message)
    return results


def _results_in(data: bytes) -> int:
    """How many whole messages in ``data`` are replay results (tag [5], constructed)."""
    count = 0
    with contextlib.suppress(pdu.PDUError, ValueError, IndexError):
        for _offset, message in iter_pdus(data):
            count += message[0] == 0xA5
    return count


# The control socket ----------------------------------------------------------------


def control_garbage(path: Path, payloads: Iterable[bytes], until: float) -> int:
    """One connection per payload to the control socket; returns connections made."""
    made = 0
    for payload in payloads:
        if time.monotonic() > until:
            break
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        ):
            sock.settimeout(3.0)
            sock.connect(str(path))
            made += 1
            sock.sendall(payload)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)
    return made


def tcp_idle(address: tuple[str, int], count: int, hold: float) -> int:
    """``count`` TCP connections at once that say nothing for ``hold`` seconds; returns opened."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(address, 2.0))
        time.sleep(hold)
    finally:
        for sock in held:
            sock.close()
    return len(held)


def control_idle(path: Path, count: int, hold: float) -> int:
    """``count`` connections at once that say nothing for ``hold`` seconds; returns opened."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        time.sleep(hold)
    finally:
        for sock in held:
            sock.close()
    return len(held)


def control_payloads(rng: random.Random) -> list[bytes]:
    """Random bytes, deeply nested JSON, an over-long line, broken requests."""
    payloads = list(random_payloads(rng, 12, largest=4096))
    payloads += [b"[" * 100_000 + b"\n", b'{"op": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"]
    payloads += [b'{"op": "status", "x": "' + b"A" * 200_000 + b'"}\n']
    payloads += [b"\xff\xfe\n", b'{"no": "op"}\n', b'{"op": "frobnicate"}\n', b"null\n"]
    return payloads


# Sniffing --------------------------------------------------------------------------


class LoopbackSniffer:
    """Copies of the UDP datagrams on loopback from or to one port (root: AF_PACKET).

    The suite replays and mutates genuine sealed datagrams, and learns the
    server's source port (for forged receiver reports) from them.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)

    def take(self, count: int, seconds: float) -> list[tuple[int, int, bytes]]:
        """Up to ``count`` (source port, destination port, payload) seen within ``seconds``."""
        found: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + seconds
        while len(found) < count and time.monotonic() < deadline:
            try:
                frame, meta = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each frame twice
            parsed = _udp(frame)
            if parsed is not None and self.port in parsed[:2]:
                found.append(parsed)
        return found

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LoopbackSniffer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _udp(frame: bytes) -> tuple[int, int, bytes] | None:
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    udp = 14 + (frame[14] & 0x0F) * 4
    sport, dport, length = struct.unpack_from(">HHH", frame, udp)
    return sport, dport, frame[udp + 8 : udp + length]
