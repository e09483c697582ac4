"""DER tag-and-length headers: the one reader of the project.

Every place that finds where a TLV ends calls :func:`read_header`: splitting
PDUs that stand back to back (:mod:`mediation.pdu.codec`), the hot path's
refusals (:mod:`mediation.pdu.fast_der`), the TLS stream's framing
(:mod:`mediation.protocol.framing`) and ingest (:mod:`mediation.server.ingest`),
each with its own size limit. The hot path reads the common short forms
inline for speed and hands everything else here; tests/test_pdu_tlv.py proves
it agrees with this reader on every input.

What is accepted (X.690 DER, sections 8.1.2, 8.1.3 and 10.1):

* tags: one identifier octet for tag numbers 0 to 30; the high tag number
  form only for numbers 31 and up, in its shortest form (no leading
  ``0x80`` octet), with at most :data:`MAX_TAG_OCTETS` octets after the
  first. No module here uses a tag number above 30; later versions of the
  delivery module may, and their messages must still frame and be skipped.
* lengths: definite only (``0x80``, indefinite, is refused), in the fewest
  octets (the long form only from 128 on, no leading zero octet), and with
  at most :data:`MAX_LENGTH_OCTETS` length octets, so a length field can
  never name more than 4 GiB and is refused without being believed.

Every length is checked against the caller's limit and then against the
bytes actually present before anyone allocates, so a length claiming
gigabytes costs nothing.
"""

from __future__ import annotations

from mediation.pdu.errors import PDUError

# A PDU larger than this is refused outright. The largest legitimate one is
# a CC packet of a 64 KiB jumbo frame plus headers; 16 MiB leaves room.
MAX_PDU_LENGTH = 16 * 1024 * 1024

# Four length octets name up to 4 GiB - 1, far past every limit here (and
# since the form must be minimal, four octets already mean 16 MiB or more).
MAX_LENGTH_OCTETS = 4

# Four octets after the first carry 28 bits of tag number: far beyond any
# alternative a later version will add (they count up from 0).
MAX_TAG_OCTETS = 4

NOT_MINIMAL = "length is not in its shortest form (not DER)"


class Truncated(PDUError):
    """The data ends before the TLV does; more octets may complete it.

    A stream reader waits for more on this; everyone else treats it as the
    :class:`PDUError` it is.
    """


def _tag_end(data: bytes | bytearray | memoryview, offset: int, end: int) -> int:
    """Offset of the length octets after a high-tag-number identifier at ``offset``."""
    pos = offset + 1
    if pos < end and data[pos] == 0x80:
        raise PDUError("tag number is not in its shortest form (not DER)", pos)
    number = 0
    while True:
        if pos >= end:
            raise Truncated("truncated tag", offset)
        octet = data[pos]
        pos += 1
        number = number << 7 | (octet & 0x7F)
        if not octet & 0x80:
            break
        if pos - offset > MAX_TAG_OCTETS:
            raise PDUError(f"tag number too large (more than {MAX_TAG_OCTETS} octets)", offset)
    if number < 31:
        raise PDUError(f"tag number {number} must be written in one octet (not DER)", offset)
    return pos


def read_header(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    end: int | None = None,
    limit: int = MAX_PDU_LENGTH,
) -> tuple[int, int, int]:
    """Read the DER tag-and-length header of the TLV at ``offset``.

    Args:
        data: the octets.
        offset: where the TLV starts.
        end: where the data (or the enclosing value) ends; ``len(data)``
            when not given. Nothing at or past ``end`` is read.
        limit: the largest TLV accepted, header included, in octets.

    Returns:
        ``(tag, content_offset, content_length)``: ``tag`` is the first
        identifier octet (class, constructed bit and a number below 31, or
        ``0x1F`` in its low bits for a high tag number, whose further
        octets have been checked and skipped).

    Raises:
        Truncated: the header, or the content it announces, runs past
            ``end`` (a :class:`PDUError` with the offset).
        PDUError: an indefinite length, a tag or length not in its shortest
            form, too many tag or length octets, or a TLV larger than
            ``limit``; always with the byte offset.
    """
    if end is None:
        end = len(data)
    if offset >= end:
        raise Truncated("expected a tag, found the end of the data", offset)
    tag = data[offset]
    pos = offset + 1 if tag & 0x1F != 0x1F else _tag_end(data, offset, end)
    if pos >= end:
        raise Truncated("truncated length", pos)
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise PDUError("indefinite length is not accepted", pos - 1)
    else:
        count = first & 0x7F
        if count > MAX_LENGTH_OCTETS:
            raise PDUError(f"length of {count} octets is too large", pos - 1)
        # A leading zero octet is refused as soon as it is in (no completion
        # can make it minimal), the rest once all the length octets are.
        if pos < end and data[pos] == 0:
            raise PDUError(NOT_MINIMAL, pos - 1)
        if pos + count > end:
            raise Truncated("truncated length", pos - 1)
        if count == 1:  # the common long forms without slicing (framing is per message)
            length = data[pos]
        elif count == 2:
            length = data[pos] << 8 | data[pos + 1]
        else:
            length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80:
            raise PDUError(NOT_MINIMAL, pos - 1)
        pos += count
    size = pos - offset + length
    if size > limit:
        raise PDUError(f"a TLV of {size} octets exceeds the {limit}-octet limit", offset)
    if pos + length > end:
        raise Truncated(
            f"length {length} runs past the end of the data ({end - pos} bytes left)", offset
        )
    return tag, pos, length


def tlv_end(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    end: int | None = None,
    limit: int = MAX_PDU_LENGTH,
) -> int:
    """The offset just after the TLV starting at ``offset`` (see :func:`read_header`).

    Raises:
        PDUError: as :func:`read_header` (:class:`Truncated` included).
    """
    _tag, content, length = read_header(data, offset, end, limit)
    return content + length


def check_framing(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    end: int | None = None,
    limit: int = MAX_PDU_LENGTH,
) -> int:
    """Read every header in the TLV at ``offset``, inside constructed values too.

    The reference codec (asn1tools) is lenient about length octets; calling
    this first makes every decoder of the project refuse what
    :func:`read_header` refuses, at any depth. Iterative, so deep nesting
    costs a list entry per level, not a Python stack frame.

    Args:
        data: the octets.
        offset: where the TLV starts.
        end: where the data ends; ``len(data)`` when not given.
        limit: the largest TLV accepted, header included.

    Returns:
        The offset just after the TLV.

    Raises:
        PDUError: the first header :func:`read_header` refuses, with its offset.
    """
    tag, content, length = read_header(data, offset, end, limit)
    stop = content + length
    ends = [stop]
    pos = content if tag & 0x20 else stop
    while ends:
        inner_end = ends[-1]
        if pos == inner_end:
            ends.pop()
            continue
        tag, content, length = read_header(data, pos, inner_end, limit)
        if tag & 0x20:
            ends.append(content + length)
            pos = content
        else:
            pos = content + length
    return stop
