"""Reading back the ``<stream>.raw`` files: envelopes exactly as received, back to back.

A restarted receiver scans them to learn what it already holds (so nothing
is stored twice and retrieval does not fetch it again), and ``--sort``
rebuilds the pcap from them in sequence order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from mediation.pdu import PDUError, fast
from mediation.protocol import MessageBuffer, ProtocolError

_CHUNK = 1 << 20


class RawFileError(Exception):
    """A raw file holds something other than whole delivery messages."""


@dataclasses.dataclass(frozen=True)
class RawMessage:
    """Where one message of a raw file is and, for an envelope, its sequence number.

    Only the position is kept (files may be gigabytes): :func:`read` fetches it.
    """

    offset: int
    length: int
    sequence: int | None  # None: not an envelope (a checkpoint, say)


def scan(path: Path) -> tuple[list[RawMessage], int]:
    """Every whole message of a raw file, and how many octets of a torn tail follow them.

    Raises:
        RawFileError: a message that cannot be framed or an envelope that
        does not decode (with the byte offset).
    """
    buffer = MessageBuffer()
    out: list[RawMessage] = []
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            try:
                buffer.feed(chunk)
                messages = buffer.messages()
            except ProtocolError as exc:
                raise RawFileError(f"{path}: byte {offset}: {exc}") from None
            for data in messages:
                out.append(RawMessage(offset, len(data), _sequence(path, offset, data)))
                offset += len(data)
    return out, buffer.pending


def _sequence(path: Path, offset: int, data: bytes) -> int | None:
    if data[:1] != b"\xa0":  # [0] constructed: pduEnvelope
        return None
    try:
        return fast.split_envelope(data).sequence_number
    except PDUError as exc:
        raise RawFileError(f"{path}: byte {offset}: {exc}") from None


def read_in_order(path: Path, messages: list[RawMessage]) -> Iterator[bytes]:
    """The octets of ``messages`` (from :func:`scan` of ``path``), in the order given."""
    with path.open("rb") as handle:
        for message in messages:
            handle.seek(message.offset)
            yield handle.read(message.length)
