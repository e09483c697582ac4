"""Cutting a TLS/TCP byte stream into whole DeliveryMessages.

BER is self-delimiting, so the stream needs no extra framing: the tag and
length octets at the front of each message say where it ends. The buffer
learns a message's length as soon as its header (at most 10 octets) is in,
refuses an oversize or malformed one at once, before its body arrives,
and hands out only whole messages. The header is read by the project's one
DER header reader, :func:`mediation.pdu.tlv.read_header`, with this
buffer's limit.
"""

from __future__ import annotations

from mediation.pdu.errors import PDUError
from mediation.pdu.tlv import Truncated, read_header
from mediation.protocol.errors import ProtocolError

# Precedents for a per-message ceiling: NATS max_payload and Kafka's
# message.max.bytes default to 1 MB, gRPC's receive limit to 4 MiB. Our
# largest legitimate message is an envelope carrying a CC packet of at most
# 64 KiB plus a few hundred octets of headers; 1 MiB leaves ample room and
# caps what a hostile or broken peer can make us buffer per connection.
MAX_MESSAGE = 1024 * 1024
# From this size a message is copied out through a memoryview (one copy);
# below it a slice and bytes() (two copies) cost less than making the view.
_VIEW_FROM = 4096


class MessageBuffer:
    """A receive buffer that yields complete BER DeliveryMessages.

    Feed it chunks as they come off the socket (any split, even one octet
    at a time) and take whole messages out with :meth:`next_message`.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        """Args:
        max_message: the largest message accepted, header included.
        """
        self._buf = bytearray()
        self._start = 0  # where the next unread message begins in _buf
        self._max = max_message
        self._error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received octets.

        Raises:
            ProtocolError: the stream was already found broken.
        """
        if self._error is not None:
            raise self._error
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next complete message, or None until more octets arrive.

        Raises:
            ProtocolError: the next message does not start with a context
            tag (a DeliveryMessage alternative), has an
            indefinite, non-minimal or oversize length. The buffer stays
            broken: every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            end = self._message_end()
        except ProtocolError as exc:
            self._error = exc
            raise
        if end is None:
            return None
        buf, start = self._buf, self._start
        if end - start < _VIEW_FROM:
            message = bytes(buf[start:end])
        else:  # a large message (a tap batch): copied once, not sliced and then copied
            view = memoryview(buf)
            message = bytes(view[start:end])
            view.release()  # the buffer may be resized again
        self._start = end
        # Compact only when the consumed part dominates: amortised O(1) per octet.
        if self._start > len(self._buf) // 2:
            del self._buf[: self._start]
            self._start = 0
        return message

    def messages(self) -> list[bytes]:
        """Every complete message buffered now (see :meth:`next_message`)."""
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    @property
    def pending(self) -> int:
        """Octets held that do not yet make a whole message."""
        return len(self._buf) - self._start

    def check_closed_cleanly(self) -> None:
        """Call when the peer closes: a half message left over is an error.

        Raises:
            ProtocolError: the stream ended inside a message.
        """
        if self.pending:
            raise ProtocolError(f"connection closed inside a message ({self.pending} octets)")

    def _message_end(self) -> int | None:
        """Offset just past the next message, None if not all of it is here yet."""
        buf, pos = self._buf, self._start
        if pos >= len(buf):
            return None
        tag = buf[pos]
        # Every DeliveryMessage alternative has a context tag. Later versions
        # may add primitive ones too (an implicitly tagged INTEGER, say),
        # which must still frame so they can be skipped.
        if tag & 0xC0 != 0x80:
            raise ProtocolError(
                f"octet 0x{tag:02x} cannot start a delivery message (expected a context tag)"
            )
        try:
            _tag, content, length = read_header(buf, pos, len(buf), self._max)
        except Truncated:
            return None
        except PDUError as exc:
            raise ProtocolError(f"delivery stream: {exc.message}") from None
        return content + length


def leading_messages(data: bytes, max_message: int = MAX_MESSAGE) -> tuple[list[bytes], int, int]:
    """The whole messages at the front of one read, cut from it without a buffer.

    For a reader whose :class:`MessageBuffer` holds nothing from earlier
    reads: the messages whose headers take the usual forms (a context tag
    below 31, a short or a minimal one- or two-octet length) and whose
    octets the read holds completely are sliced out of it, not copied into
    the buffer and out again. It stops at the first message that is not so;
    the caller feeds the rest to the buffer, which frames it, or names its
    fault, as it always did. So the messages returned, then the buffer's,
    are exactly the buffer's messages of the whole read (proven for any
    reads by tests/test_protocol_framing_cut.py).

    Args:
        data: one read's octets, the first of them starting a message.
        max_message: the buffer's limit (a larger message is left to it).

    Returns:
        The whole messages; the offset where the rest begins; and, when the
        rest is one message of the usual form that the read cuts short, how
        many octets it still needs (else 0).
    """
    out: list[bytes] = []
    pos, size = 0, len(data)
    while pos + 2 <= size:
        tag = data[pos]
        if tag & 0xC0 != 0x80 or tag & 0x1F == 0x1F:
            break
        first = data[pos + 1]
        if first < 0x80:
            end = pos + 2 + first
        elif first == 0x81 and pos + 3 <= size and data[pos + 2] >= 0x80:
            end = pos + 3 + data[pos + 2]
        elif first == 0x82 and pos + 4 <= size and data[pos + 2]:
            end = pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
        else:
            break
        if end - pos > max_message:
            break
        if end > size:
            return out, pos, end - size
        out.append(data[pos:end])
        pos = end
    return out, pos, 0
