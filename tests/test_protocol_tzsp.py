"""TZSP v1: the decoder byte by byte, the receiver's counters, and tshark's reading."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.evidence.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapReader, PcapWriter
from mediation.protocol.errors import ProtocolError
from mediation.protocol.tzsp import (
    MAX_TAGS,
    Refusal,
    TzspError,
    TzspReceiver,
    decode_tzsp,
    encode_tzsp,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fixtures" / "sample" / "sample.pcap"
SENDER = ROOT / "fixtures" / "tzsp_send.py"
TSHARK = shutil.which("tshark")
FRAME = bytes.fromhex("020000005302" + "02005e005301" + "0800") + b"\x45" + bytes(19)


def _refused(datagram: bytes) -> Refusal:
    with pytest.raises(TzspError) as info:
        decode_tzsp(datagram)
    return info.value.reason


# The decoder, byte by byte --------------------------------------------------------


def test_mikrotik_datagram_decodes_to_the_ethernet_frame():
    datagram = bytes((1, 0, 0, 1, 1)) + FRAME
    decoded = decode_tzsp(datagram)
    assert decoded.frame == FRAME
    assert decoded.encapsulation == 1 and decoded.linktype == LINKTYPE_ETHERNET
    assert decoded.tags == ()
    assert encode_tzsp(FRAME) == datagram


def test_tags_padding_and_lengths_are_skipped():
    # padding, tag 10 (RSSI) of 1 octet, padding, tag 13 (timestamp) of 4, END
    tags = bytes((0, 10, 1, 0xC8, 0, 13, 4)) + b"\x00\x00\x01\x00" + b"\x01"
    decoded = decode_tzsp(bytes((1, 0, 0, 1)) + tags + FRAME)
    assert decoded.frame == FRAME
    assert decoded.tags == ((10, b"\xc8"), (13, b"\x00\x00\x01\x00"))


def test_encoder_writes_tags_the_decoder_reads_back():
    datagram = encode_tzsp(FRAME, tags=[(41, b"\x00\x40")], encapsulation=7)
    decoded = decode_tzsp(datagram)
    assert decoded.tags == ((41, b"\x00\x40"),)
    assert decoded.linktype == LINKTYPE_RAW and decoded.frame == FRAME


@pytest.mark.parametrize("tag", [0, 1, 256])
def test_encoder_refuses_tags_it_cannot_write(tag):
    with pytest.raises(ValueError):
        encode_tzsp(FRAME, tags=[(tag, b"")])


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", Refusal.TRUNCATED),
        (b"\x01\x00\x00", Refusal.TRUNCATED),
        (b"\x01\x00\x00\x01\x01", Refusal.TRUNCATED),  # END, then no frame
        (b"\x02\x00\x00\x01\x01" + FRAME, Refusal.BAD_VERSION),
        (b"\x01\x09\x00\x01\x01" + FRAME, Refusal.UNKNOWN_TYPE),
        (b"\x01\x04\x00\x01\x01", Refusal.NOT_A_FRAME),  # keepalive
        (b"\x01\x01\x00\x01\x01" + FRAME, Refusal.NOT_A_FRAME),  # packet for transmit
        (b"\x01\x00\x00\x12\x01" + FRAME, Refusal.UNKNOWN_ENCAPSULATION),  # 802.11
        (b"\x01\x00\x00\x01", Refusal.TAG_OVERRUN),  # no tag list at all
        (b"\x01\x00\x00\x01\x00\x00\x00", Refusal.TAG_OVERRUN),  # padding, never END
        (b"\x01\x00\x00\x01\x0a", Refusal.TAG_OVERRUN),  # a tag without its length
        (b"\x01\x00\x00\x01\x0a\xff\x00\x01", Refusal.TAG_OVERRUN),  # length past the end
    ],
)
def test_each_refusal_names_its_reason(datagram, reason):
    assert _refused(datagram) is reason


def test_a_sender_cannot_make_us_keep_unbounded_tags():
    tags = bytes((10, 0)) * (MAX_TAGS + 1) + b"\x01"
    assert _refused(bytes((1, 0, 0, 1)) + tags + FRAME) is Refusal.TOO_MANY_TAGS
    tags = bytes((10, 0)) * MAX_TAGS + b"\x01"
    assert len(decode_tzsp(bytes((1, 0, 0, 1)) + tags + FRAME).tags) == MAX_TAGS


def test_refusal_is_a_protocol_error_with_a_clear_line():
    with pytest.raises(ProtocolError, match="TZSP unknown-encapsulation: encapsulation 18"):
        decode_tzsp(b"\x01\x00\x00\x12\x01" + FRAME)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_octets_only_ever_raise_tzsp_error(data):
    try:
        decoded = decode_tzsp(data)
    except TzspError as exc:
        assert isinstance(exc.reason, Refusal)
    else:
        assert decoded.frame and len(decoded.frame) < len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=64),
    st.lists(st.tuples(st.integers(2, 255), st.binary(max_size=8)), max_size=6),
    st.sampled_from([1, 7]),
)
def test_encode_then_decode_gives_the_frame_back(frame, tags, encapsulation):
    decoded = decode_tzsp(encode_tzsp(frame, tags=tags, encapsulation=encapsulation))
    assert (decoded.frame, decoded.tags, decoded.encapsulation) == (
        frame,
        tuple(tags),
        encapsulation,
    )


# The receiver ---------------------------------------------------------------------


def test_receiver_counts_unregistered_senders_and_each_refusal():
    receiver = TzspReceiver({"192.0.2.1"})
    assert receiver.receive(encode_tzsp(FRAME), "192.0.2.1").frame == FRAME
    assert receiver.receive(encode_tzsp(FRAME), "198.51.100.7") is None
    assert receiver.receive(b"\x02\x00\x00\x01\x01" + FRAME, "192.0.2.1") is None
    assert receiver.receive(b"\x01\x00", "192.0.2.1") is None
    assert receiver.accepted == 1 and receiver.octets == len(FRAME)
    assert receiver.refused["unregistered-sender"] == 1
    assert receiver.refused["bad-version"] == 1
    assert receiver.refused["truncated"] == 1
    assert receiver.refused_total == 3


# The sender script, over loopback, and tshark --------------------------------------


def _send_sample_over_loopback() -> list[bytes]:
    """Run fixtures/tzsp_send.py at a socket of ours; the datagrams it sent."""
    frames = [p.data for p in PcapReader.open(SAMPLE)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(SENDER), str(SAMPLE), "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=ROOT,
        )
        assert done.stdout.strip() == str(len(frames))
        return [sock.recv(65535) for _ in frames]


def test_sender_script_sends_every_frame_as_tzsp():
    frames = [p.data for p in PcapReader.open(SAMPLE)]
    datagrams = _send_sample_over_loopback()
    receiver = TzspReceiver({"127.0.0.1"})
    decoded = [receiver.receive(d, "127.0.0.1") for d in datagrams]
    assert [d.frame for d in decoded] == frames
    assert receiver.refused_total == 0


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
def test_tshark_decodes_the_sent_datagrams_as_tzsp(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    frames = [p.data for p in PcapReader.open(SAMPLE)]
    datagrams = _send_sample_over_loopback()
    path = tmp_path / "tzsp.pcap"
    start = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    with PcapWriter.open(path) as writer:
        for i, datagram in enumerate(datagrams):
            outer = (
                Ether(src="02:00:5e:00:53:fe", dst="02:00:5e:00:53:ff")
                / IP(src="192.0.2.1", dst="192.0.2.254")
                / UDP(sport=37008, dport=37008)
                / datagram
            )
            writer.write(bytes(outer), start + dt.timedelta(milliseconds=i))
    fields = ["tzsp.version", "tzsp.type", "tzsp.encap", "eth.src"]
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
        + [x for f in fields for x in ("-e", f)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert len(out) == len(frames)
    for line, frame in zip(out, frames, strict=True):
        version, kind, encap, macs = line.split("|")
        assert (version, kind, encap) == ("1", "0", "1")
        # tshark reads the encapsulated Ethernet header: its source MAC follows ours.
        inner_src = ":".join(f"{b:02x}" for b in frame[6:12])
        assert macs.split(",") == ["02:00:5e:00:53:fe", inner_src]


@given(
    st.sampled_from([b"\x01\x00\x00\x01\x01", b"\x01\x00\x00\x07\x01", b"\x01\x00\x00\x02\x01"]),
    st.binary(max_size=40),
)
def test_the_fast_path_reads_as_the_general_walk(head: bytes, rest: bytes) -> None:
    """A datagram with no tag but END (a MikroTik's) decodes as the tag walk decodes it."""
    from mediation.protocol.tzsp import _decode

    datagram = head + rest
    try:
        want: object = _decode(datagram)
    except TzspError as exc:
        want = exc.reason
    try:
        got: object = decode_tzsp(datagram)
    except TzspError as exc:
        got = exc.reason
    assert got == want
