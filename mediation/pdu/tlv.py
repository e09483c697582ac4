"""BER tag-length framing: enough to find where one PDU ends.

Used to split PDUs that arrive back to back, and by the hot path. Every
length is checked against the bytes actually present before anything is
allocated, so a length field claiming gigabytes costs nothing.
"""

from __future__ import annotations

from mediation.pdu.errors import PDUError

# A PDU larger than this is refused outright. The largest legitimate one is
# a CC packet of a 64 KiB jumbo frame plus headers; 16 MiB leaves room.
MAX_PDU_LENGTH = 16 * 1024 * 1024


def read_header(data: bytes | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """Read one TLV header at ``offset``.

    Returns:
        ``(tag_first_byte, content_offset, content_length)``.

    Raises:
        PDUError: truncated header, indefinite length (not DER), a length
        that is not minimal, larger than :data:`MAX_PDU_LENGTH`, or one
        running past the end of ``data``.
    """
    end = len(data)
    if offset >= end:
        raise PDUError("expected a tag, found the end of the data", offset)
    tag = data[offset]
    pos = offset + 1
    if tag & 0x1F == 0x1F:  # high tag number form: skip the continuation bytes
        while True:
            if pos >= end:
                raise PDUError("truncated tag", offset)
            more = data[pos] & 0x80
            pos += 1
            if not more:
                break
            if pos - offset > 5:
                raise PDUError("tag number too large", offset)
    if pos >= end:
        raise PDUError("truncated length", pos)
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise PDUError("indefinite length is not accepted", pos - 1)
    else:
        count = first & 0x7F
        if count > 4:
            raise PDUError(f"length of {count} octets is too large", pos - 1)
        if pos + count > end:
            raise PDUError("truncated length", pos - 1)
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if length > MAX_PDU_LENGTH:
        raise PDUError(f"length {length} exceeds the {MAX_PDU_LENGTH}-byte limit", offset)
    if pos + length > end:
        raise PDUError(
            f"length {length} runs past the end of the data ({end - pos} bytes left)", offset
        )
    return tag, pos, length


def tlv_end(data: bytes | memoryview, offset: int = 0) -> int:
    """The offset just after the TLV starting at ``offset``."""
    _tag, content, length = read_header(data, offset)
    return content + length
