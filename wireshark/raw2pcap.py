"""Wrap raw PDU files in a pcap of UDP datagrams, one PDU each, for Wireshark.

The receiver's ``cmii.raw``, ``cmcc.raw`` and ``checkpoints.raw`` (DER
messages back to back), a golden fixture's bytes, or anything
``mediate decode`` reads as raw BER: each message becomes one IPv4/UDP
datagram to port 5555 (the dissector's default UDP port) from 192.0.2.1
to 192.0.2.2 (documentation addresses: the link is not the real one).
An envelope's frame time is its ``mediationTime``; any other message takes
the time of the message before it.

Usage::

    .venv/bin/python wireshark/raw2pcap.py OUT.pcap FILE...
    .venv/bin/python wireshark/raw2pcap.py --hex golden.pcap fixtures/golden/*.hex
    tshark -X lua_script:wireshark/mediation.lua -r OUT.pcap -V

Exit status 2, with one line, if a file is not whole DER messages or OUT
exists already; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

from mediation import pdu as P
from mediation.durable import write_new
from mediation.evidence.pcap import LINKTYPE_RAW, PcapWriter
from mediation.pdu.codec import decode, iter_pdus
from mediation.pdu.errors import PDUError

UDP_PORT = 5555
SOURCE = bytes([192, 0, 2, 1])
DESTINATION = bytes([192, 0, 2, 2])
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def udp_frame(payload: bytes, port: int = UDP_PORT) -> bytes:
    """One raw-IP frame (link type 101): IPv4 and UDP headers around ``payload``.

    Checksums are left zero: Wireshark does not check them by default.

    Raises:
        ValueError: the payload does not fit one IPv4 datagram.
    """
    if len(payload) > 65507:
        raise ValueError(f"a message of {len(payload)} octets does not fit one UDP datagram")
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, SOURCE, DESTINATION)
    return ip + udp


def _time(message: bytes, previous: dt.datetime) -> dt.datetime:
    """An envelope's mediationTime, else ``previous``."""
    try:
        record = decode(message)
    except PDUError:
        return previous
    if isinstance(record, P.Envelope):
        return record.mediation_time
    return previous


def _hex(path: Path) -> bytes:
    """A hex file's bytes (the golden fixtures' format): ``#`` lines skipped, spaces ignored."""
    lines = path.read_text(errors="replace").splitlines()
    text = "".join(line.split("#", 1)[0] for line in lines)
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        raise ValueError(f"{path}: not hex text (--hex)") from None


def messages(paths: Iterable[Path], hex_text: bool = False) -> list[bytes]:
    """Every message of every file, in order.

    Args:
        paths: the files.
        hex_text: the files are hex text, as ``fixtures/golden/*.hex``.

    Raises:
        ValueError: a file is not whole BER messages (names the file and byte).
    """
    out = []
    for path in paths:
        data = _hex(path) if hex_text else path.read_bytes()
        try:
            out.extend(message for _offset, message in iter_pdus(data))
        except PDUError as exc:
            raise ValueError(f"{path}: not whole DER messages: {exc}") from None
    return out


def to_pcap(found: list[bytes]) -> bytes:
    """The pcap file's bytes: one UDP datagram per message."""
    buffer = io.BytesIO()
    when = EPOCH
    writer = PcapWriter(buffer, linktype=LINKTYPE_RAW)
    for message in found:
        when = _time(message, when)
        writer.write(udp_frame(message), when)
    writer.flush()
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``raw2pcap.py OUT FILE...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the pcap file to create (must not exist)")
    parser.add_argument("files", type=Path, nargs="+", help="raw DER files")
    parser.add_argument("--hex", action="store_true", help="the files are hex text (# comments)")
    args = parser.parse_args(argv)
    try:
        data = to_pcap(messages(args.files, args.hex))
        write_new(args.out, data)
    except FileExistsError:
        print(f"raw2pcap: {args.out} exists: name a new file", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"raw2pcap: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
