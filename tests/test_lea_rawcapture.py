"""The TLS receiver's RawCapture frames exactly as the machine's MessageBuffer does.

RawCapture reads the common headers inline (it is fed only octets the
machine accepted); whatever the messages and however the reads split them,
it must keep the same envelope and checkpoint octets, in the same order,
as :class:`MessageBuffer` frames them.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from mediation.lea.driver import RawCapture
from mediation.protocol import MessageBuffer

# Identifier octets: the envelope [0] and checkpoint [7] (kept), other
# alternatives, primitive and constructed, and a later version's high tag
# numbers (31 and 200, constructed and primitive), which must frame and be skipped.
_TAGS = [b"\xa0", b"\xa7", b"\xa1", b"\x83", b"\xbf\x1f", b"\x9f\x81\x48"]


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


_MESSAGE = st.builds(
    lambda tag, body: tag + _length(len(body)) + body,
    st.sampled_from(_TAGS),
    st.one_of(st.binary(max_size=40), st.integers(100, 70_000).map(lambda n: b"\x5a" * n)),
)


@given(messages=st.lists(_MESSAGE, max_size=12), cuts=st.lists(st.integers(0, 1 << 20)))
def test_raw_capture_keeps_what_the_machines_framing_frames(
    messages: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(messages)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reference, capture = MessageBuffer(), RawCapture()
    expected: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        part = stream[start:stop]
        reference.feed(part)
        expected += reference.messages()  # the machine accepts exactly these octets
        capture.feed(bytearray(part) if start % 2 else part)  # any bytes-like read
    for tag in (0xA0, 0xA7):
        kept = list(capture._queues[tag])
        assert kept == [m for m in expected if m[0] == tag]
        assert all(type(m) is bytes for m in kept)  # written to the raw files as is
    assert reference.pending == len(capture._rest)  # the same half message waits


def test_a_message_fed_one_octet_at_a_time_is_kept_whole() -> None:
    """A large message split as finely as a peer can: kept once whole, each read only appended."""
    message = b"\xa0" + _length(70_000) + bytes(range(256)) * 273 + b"\x00" * 112
    after = b"\xbf\x1f\x01\x00" + b"\xa7\x01\x07"  # a later version's message, then a checkpoint
    capture = RawCapture()
    for octet in message + after:
        capture.feed(bytes([octet]))
    assert list(capture._queues[0xA0]) == [message]
    assert list(capture._queues[0xA7]) == [b"\xa7\x01\x07"]
    assert not capture._rest
