"""`mediate decode`: print PDUs as JSON, one object a line, for the agency's analyst.

Input is raw BER (PDUs back to back, as stored or received on a stream),
hex text, or a classic pcap of UDP datagrams (told by its magic number).
Decoding goes through the reference codec (:func:`mediation.pdu.decode_all`)
so that what an analyst sees never depends on a fast path.

A file that is not PDUs stops at the first bad byte with one line naming
that byte; everything decoded before it has been printed already.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from mediation.cli.common import fail

DESCRIPTION = """\
Print each PDU as one line of JSON: its type, where it came from (file and
byte offset, or pcap packet number), and its fields by their ASN.1 names.
Input is PDUs back to back (raw BER), hex text with --hex, or a pcap file of
UDP datagrams (recognised by its magic number, or forced with --pcap).
"""

EPILOG = """\
Hex input: whitespace and newlines are ignored, '#' starts a comment; a
blank line ends a group, and each group holds whole PDUs back to back.
Errors are one line, 'FILE: byte N: what was wrong' (N counts bytes of the
file; for hex, decoded bytes), and the exit status is 2. Without --port,
every UDP datagram of a pcap must hold PDUs.
"""

Emit = Callable[[dict[str, Any], Any], None]


class InputError(Exception):
    """One input is not PDUs: ``byte`` is where, ``context`` (optional) narrows it down."""

    def __init__(self, byte: int, message: str, context: str = "") -> None:
        self.byte = byte
        self.message = message
        self.context = context
        super().__init__(message)

    def line(self, label: str) -> str:
        context = f"{self.context}: " if self.context else ""
        return f"{label}: byte {self.byte}: {context}{self.message}"


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mediate decode``."""
    parser = subparsers.add_parser(
        "decode",
        help="print PDUs (raw BER, hex, or a pcap of UDP datagrams) as JSON",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="files to read; '-' or none: standard input"
    )
    parser.add_argument(
        "--pretty", action="store_true", help="indented JSON, a blank line between PDUs"
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--hex", action="store_true", help="the input is hex text")
    kind.add_argument("--pcap", action="store_true", help="the input is a pcap file")
    parser.add_argument(
        "--port", type=_port, metavar="N", help="pcap: only UDP datagrams from or to port N"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decode every input in turn; 2 if any of them could not be read or decoded."""
    import json

    from mediation.errors import UsageError
    from mediation.pdu.jsonview import to_json

    if args.port is not None and args.hex:
        raise UsageError("--port", "applies to pcap input, not to --hex")
    printed = 0

    def emit(where: dict[str, Any], record: Any) -> None:
        nonlocal printed
        obj = {"from": where, **to_json(record)}
        if args.pretty:
            sys.stdout.write(("\n" if printed else "") + json.dumps(obj, indent=2) + "\n")
        else:
            sys.stdout.write(json.dumps(obj) + "\n")
        printed += 1

    status = 0
    for name in args.files or ["-"]:
        label = "<stdin>" if name == "-" else name
        try:
            _decode_input(name, label, args, emit)
        except InputError as exc:
            status = _report(exc.line(label))
        except BrokenPipeError:
            _silence_stdout()
            raise
        except OSError as exc:
            status = _report(f"{label}: cannot read: {exc.strerror or exc}")
    return status


def _silence_stdout() -> None:
    """The reader went away (``| head``): send what is still buffered nowhere.

    Otherwise the interpreter's last flush fails again and prints a traceback.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _report(line: str) -> int:
    sys.stdout.flush()  # what was decoded comes before the error, even on one terminal
    return fail(line)


def _decode_input(name: str, label: str, args: argparse.Namespace, emit: Emit) -> None:
    if name == "-":
        stdin = sys.stdin.buffer
        if args.hex:
            _decode_hex(stdin.read(), label, emit)
        elif args.pcap or _is_pcap(stdin.peek(4)):
            _decode_pcap(stdin, label, args.port, emit, live=True)
        else:
            _decode_pipe(stdin, label, emit)
        return
    with open(name, "rb") as stream:
        if args.hex:
            _decode_hex(stream.read(), label, emit)
        elif args.pcap or _is_pcap(stream.peek(4)):
            _decode_pcap(stream, label, args.port, emit)
        else:
            _decode_raw_file(stream, label, emit)


def _is_pcap(head: bytes) -> bool:
    from mediation.evidence.pcap import is_pcap

    return is_pcap(head)


def _decode_raw_file(stream: BinaryIO, label: str, emit: Emit) -> None:
    """A regular file is mapped, not read: evidence files can be larger than memory."""
    import contextlib
    import mmap
    import os
    import stat

    info = os.fstat(stream.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        _decode_raw(stream.read(), label, emit)
        return
    mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        _decode_raw(mapped, label, emit)
    finally:
        # An error's traceback may still hold a view of the map; it is then
        # unmapped when that goes, a moment later.
        with contextlib.suppress(BufferError):
            mapped.close()


def _decode_pipe(stream: BinaryIO, label: str, emit: Emit) -> None:
    """Raw BER from a pipe: each PDU is printed as soon as its last byte is in.

    So ``... | mediate decode`` follows a live stream instead of waiting for
    its end.
    """
    buffer = bytearray()
    base = 0
    while True:
        chunk = stream.read1(65536)  # type: ignore[attr-defined]
        buffer += chunk
        end = len(buffer) if not chunk else _whole_pdus(buffer)
        if end:
            # At the end of the input, or at a header that cannot be right,
            # decode_all reports what is wrong with the rest.
            for offset, record in _records(bytes(buffer[:end]), base):
                emit({"file": label, "offset": offset}, record)
            sys.stdout.flush()
            del buffer[:end]
            base += end
        if not chunk:
            return


def _whole_pdus(buffer: bytearray) -> int:
    """How many bytes at the front of ``buffer`` are whole PDUs (by their DER headers).

    A header that is already wrong counts as the whole buffer, so that
    decoding reaches it and says what is wrong at once.
    """
    from mediation.pdu import PDUError
    from mediation.pdu.tlv import Truncated, tlv_end

    at = 0
    while at < len(buffer):
        try:
            at = tlv_end(buffer, at)
        except Truncated:
            return at
        except PDUError:
            return len(buffer)
    return at


def _decode_raw(data: Any, label: str, emit: Emit) -> None:
    for offset, record in _records(data, 0):
        emit({"file": label, "offset": offset}, record)


def _records(data: Any, base: int, context: str = "") -> Iterator[tuple[int, Any]]:
    """``decode_all`` with offsets counted from ``base``; errors become :class:`InputError`."""
    from mediation.pdu import PDUError, decode_all

    pdus = decode_all(data)
    try:
        for offset, record in pdus:
            yield base + offset, record
    except PDUError as exc:
        raise InputError(base + (exc.offset or 0), exc.message, context) from None
    finally:
        pdus.close()


def _decode_hex(raw: bytes, label: str, emit: Emit) -> None:
    base = 0
    for data, lines in _hex_groups(raw):
        try:
            for offset, record in _records(data, base):
                where = {"file": label, "line": _line_of(lines, offset - base), "offset": offset}
                emit(where, record)
        except InputError as exc:
            exc.context = f"line {_line_of(lines, exc.byte - base)}"
            raise
        base += len(data)


def _hex_groups(raw: bytes) -> Iterator[tuple[bytes, list[tuple[int, int]]]]:
    """Groups of hex text between blank lines: ``(bytes, [(byte, line), ...])``.

    The list says at which byte of the group each line starts, so an error
    can name the line it is on. Offsets in errors count the bytes of all
    groups so far.
    """
    text = raw.decode("utf-8", errors="replace")  # comments may be in any language
    digits: list[str] = []
    lines: list[tuple[int, int]] = []
    done = 0  # bytes in the groups already yielded
    number = 0
    for number, line in enumerate(text.splitlines(), start=1):
        content = "".join(line.split("#", 1)[0].split())
        if not content:
            if digits and not line.strip():  # a blank line, not a comment line
                yield _hex_group(digits, lines, done, number - 1), lines
                done += len(digits) // 2
                digits, lines = [], []
            continue
        for index, char in enumerate(content):
            if char not in "0123456789abcdefABCDEF":
                at = done + (len(digits) + index) // 2
                raise InputError(at, f"{char!r} is not a hex digit", f"line {number}")
        lines.append((len(digits) // 2, number))
        digits.extend(content)
    if digits:
        yield _hex_group(digits, lines, done, number), lines


def _hex_group(digits: list[str], lines: list[tuple[int, int]], done: int, last: int) -> bytes:
    if len(digits) % 2:
        at = done + len(digits) // 2
        raise InputError(at, "odd number of hex digits in this group", f"line {last}")
    return bytes.fromhex("".join(digits))


def _line_of(lines: list[tuple[int, int]], byte: int) -> int:
    """The line on which decoded byte ``byte`` of a group stands."""
    found = lines[0][1]
    for start, number in lines:
        if start > byte:
            break
        found = number
    return found


def _decode_pcap(
    stream: BinaryIO, label: str, port: int | None, emit: Emit, live: bool = False
) -> None:
    """UDP datagrams of a pcap; ``live``: from a pipe, so each packet's PDUs go out at once."""
    from mediation.evidence import pcap, udp_frames
    from mediation.pdu.jsonview import iso_time

    try:
        reader = pcap.PcapReader(stream)
        if reader.linktype not in udp_frames.UDP_LINKTYPES:
            raise InputError(20, f"link type {reader.linktype} is not supported")
        fragments = 0
        for packet in reader:
            try:
                datagram = udp_frames.udp_datagram(packet.data, reader.linktype)
            except udp_frames.SkippedFrame as exc:
                fragments += exc.fragment
                continue  # ARP, TCP and the like: not a PDU stream
            if port is not None and port not in (datagram.sport, datagram.dport):
                continue
            where = {
                "file": label,
                "packet": packet.number,
                "time": iso_time(packet.time),
                "src": str(datagram.src),
                "sport": datagram.sport,
                "dst": str(datagram.dst),
                "dport": datagram.dport,
            }
            context = f"packet {packet.number}"
            if datagram.truncated:
                context += " (datagram cut short: a first IP fragment, or the snap length)"
            base = packet.offset + datagram.offset
            for offset, record in _records(datagram.payload, base, context):
                emit({**where, "offset": offset - base}, record)
            if live:
                sys.stdout.flush()
    except pcap.PcapError as exc:
        raise InputError(exc.offset or 0, exc.message) from None
    if fragments:
        sys.stdout.flush()
        print(
            f"mediate: note: {label}: skipped {fragments} IP fragment(s) after the first "
            "(fragments are not reassembled)",
            file=sys.stderr,
        )
