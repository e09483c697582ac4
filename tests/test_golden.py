"""The golden PDUs in fixtures/golden/: decoded, re-encoded, up to date, and
checked byte by byte against the spec with a TLV parser that does not trust
asn1tools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import ipaddress
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mediation import pdu as P

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fixtures" / "make_golden.py"
GOLDEN = ROOT / "fixtures" / "golden"
DOC = ROOT / "docs" / "pdu.md"


def _load_builder():
    """Import fixtures/make_golden.py by path: fixtures/ is not a package."""
    spec = importlib.util.spec_from_file_location("make_golden", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mg = _load_builder()
GOLDENS = mg.golden_records()
BY_INDEX = {int(stem[:2]): (stem, desc, rec) for stem, desc, rec in GOLDENS}
CMII_OID_TLV = bytes.fromhex("060b2a864886f8490201010000")  # 1.2.840.113737.2.1.1.0.0


def golden_bytes(index: int) -> bytes:
    stem = BY_INDEX[index][0]
    return mg.read_hex(GOLDEN / f"{stem}.hex")


# --- a tiny independent DER TLV parser ------------------------------------------


@dataclasses.dataclass
class Tlv:
    """One TLV: its identifier octet, raw bytes, content, and children if constructed."""

    tag: int
    raw: bytes
    content: bytes
    children: list[Tlv]

    def only(self) -> Tlv:
        """The single child (an explicit tag wraps exactly one TLV)."""
        assert len(self.children) == 1, [hex(c.tag) for c in self.children]
        return self.children[0]

    def get(self, tag: int) -> Tlv:
        """The one child with identifier octet ``tag``."""
        found = [c for c in self.children if c.tag == tag]
        assert len(found) == 1, f"{tag:#x} among {[hex(c.tag) for c in self.children]}"
        return found[0]

    @property
    def tags(self) -> list[int]:
        return [c.tag for c in self.children]


def parse(data: bytes) -> list[Tlv]:
    """Split ``data`` into TLVs, recursing into constructed ones.

    Asserts the DER rules a strict decoder would: low tag numbers only (the
    modules use tags below 31), definite lengths, minimal length octets,
    and no bytes left over.
    """
    out, pos = [], 0
    while pos < len(data):
        tag = data[pos]
        assert tag & 0x1F != 0x1F, "high tag number form is not used by these modules"
        first = data[pos + 1]
        assert first != 0x80, "indefinite length is not DER"
        if first < 0x80:
            length, header = first, 2
        else:
            count = first & 0x7F
            length_octets = data[pos + 2 : pos + 2 + count]
            assert length_octets[0] != 0, "length has a leading zero octet"
            length, header = int.from_bytes(length_octets, "big"), 2 + count
            assert length >= 0x80, "long form used for a length below 128"
        end = pos + header + length
        assert end <= len(data), "length runs past the data"
        content = data[pos + header : end]
        children = parse(content) if tag & 0x20 else []
        out.append(Tlv(tag, data[pos:end], content, children))
        pos = end
    return out


def top(index: int) -> Tlv:
    (only,) = parse(golden_bytes(index))
    return only


# DER GeneralizedTime: UTC (Z), seconds always present, fraction without
# trailing zeros (and no bare dot).
DER_TIME = re.compile(
    rb"^\d{4}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])([01]\d|2[0-3])[0-5]\d[0-5]\d(\.\d*[1-9])?Z$"
)


def assert_time(tlv: Tlv, tag: int) -> None:
    assert tlv.tag == tag
    assert DER_TIME.match(tlv.content), tlv.content


# --- the builders, the files and the codec agree -----------------------------------


@pytest.mark.parametrize(("stem", "desc", "record"), GOLDENS, ids=[g[0] for g in GOLDENS])
def test_file_decodes_to_the_builder_record_and_reencodes(stem, desc, record) -> None:
    data = mg.read_hex(GOLDEN / f"{stem}.hex")
    back = P.decode(data)
    assert back == record
    assert type(back) is type(record)
    assert P.encode(back) == data
    assert P.encode(record) == data


@pytest.mark.parametrize(("stem", "desc", "record"), GOLDENS, ids=[g[0] for g in GOLDENS])
def test_file_layout(stem, desc, record) -> None:
    lines = (GOLDEN / f"{stem}.hex").read_text().splitlines()
    assert lines[0] == f"# {desc}"
    kind = P.kind_of(mg.read_hex(GOLDEN / f"{stem}.hex"))
    assert desc.startswith(kind + (": " if kind == "IAS-CC-APDU" else " / "))
    body = lines[1:]
    assert all(re.fullmatch("[0-9a-f]+", line) for line in body)
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64


def test_files_are_up_to_date() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in GOLDEN.glob("*.hex")) == sorted(f"{g[0]}.hex" for g in GOLDENS)


def test_check_reports_changed_missing_and_stale_files(tmp_path: Path, capsys) -> None:
    assert mg.main(["--out", str(tmp_path)]) == 0
    assert mg.main(["--out", str(tmp_path), "--check"]) == 0
    changed = tmp_path / f"{BY_INDEX[10][0]}.hex"
    text = changed.read_text()
    changed.write_text(text[:-2] + ("0" if text[-2] != "0" else "1") + "\n")
    (tmp_path / f"{BY_INDEX[16][0]}.hex").unlink()
    (tmp_path / "99-old.hex").write_text("# stale\n00\n")
    capsys.readouterr()
    assert mg.main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{BY_INDEX[10][0]}.hex: differs" in err
    assert f"{BY_INDEX[16][0]}.hex: missing" in err
    assert "99-old.hex: stale" in err
    assert mg.main(["--out", str(tmp_path)]) == 0  # regenerating repairs all three
    assert mg.main(["--out", str(tmp_path), "--check"]) == 0
    assert not (tmp_path / "99-old.hex").exists()


def test_set_covers_every_message_and_the_optional_fields() -> None:
    records = [rec for _s, _d, rec in GOLDENS]
    # Files 00..11 are the twelve CmII messages in tag order.
    assert [type(records[n]) for n in range(12)] == list(P.CMII_MESSAGES)
    assert isinstance(records[12], P.CCApdu)
    delivery = [type(r) for r in records[13:]]
    for cls in (P.Keepalive, P.KeepaliveAnswer, P.Acknowledgement, P.ReplayRequest):
        assert cls in delivery
    for cls in (P.ReplayResult, P.ReceiverReport, P.ChainCheckpoint):
        assert cls in delivery
    contents = {type(r.content) for r in records if isinstance(r, P.Envelope)}
    assert contents == {P.CCApdu, P.HeaderReport, P.CompletenessNotice}

    cmii = records[:12]
    assert any(getattr(r, "access_method", None) for r in cmii)
    assert any(getattr(r, "protocol_signal", None) for r in cmii)
    assert any(getattr(r, "location", None) for r in cmii)
    deliveries = [r.delivery_information for r in cmii if getattr(r, "delivery_information", None)]
    assert {d.delivery_identifier.alternative for d in deliveries} == {"ccAddress", "cccId"}
    assert {d.content_identifier.alternative for d in deliveries} == {"callID", "correlationID"}
    addresses = [getattr(r, "ip_address", None) for r in cmii]
    assert {a.address.version for a in addresses if a} == {4, 6}
    times = [r.timestamp for r in cmii] + [r.sent_time for r in records if hasattr(r, "sent_time")]
    assert any(t.second == 0 and t.microsecond == 0 for t in times)
    assert any(t.microsecond not in (0, 500000) for t in times)


# --- independent structural checks: bytes against the spec --------------------------


@pytest.mark.parametrize("n", range(12))
def test_cmii_pdu_starts_with_oid_then_message_tag(n: int) -> None:
    pdu = top(n)
    assert pdu.tag == 0x30  # IasProtocol: universal SEQUENCE
    oid, message = pdu.children
    assert oid.raw == CMII_OID_TLV
    # [n] on a SEQUENCE under IMPLICIT TAGS: context, constructed, number n.
    assert message.tag == 0xA0 + n
    assert message.tags[:3] == [0x80, 0x81, 0x82]  # caseId, iAPSystemId, timestamp
    assert message.children[0].content == b"CASE-0001"
    assert_time(message.children[2], 0x82)
    # Components of a SEQUENCE come in tag order, each at most once.
    numbers = [t & 0x1F for t in message.tags]
    assert numbers == sorted(set(numbers))


def test_whole_minute_time_keeps_its_seconds() -> None:
    message = top(9).children[1]
    assert message.get(0x82).content == b"20261123001200Z"
    assert top(16).get(0x81).content == b"20261123001200Z"


def test_value_is_an_explicit_tag_around_its_alternative() -> None:
    message = top(0).children[1]
    subscriber = message.get(0xA3)  # subscriberIdentity [3] Value: a CHOICE, so explicit
    assert subscriber.only().tag == 0x80  # stringVS [0], primitive
    assert subscriber.only().content == b"02:00:5e:00:53:01"
    packet_session = top(6).children[1].get(0xA5)
    assert packet_session.only().raw == bytes.fromhex("82021b59")  # integer [2] 7001


def test_ip_addresses_are_binary_of_the_right_size() -> None:
    header_set = top(10).children[1].get(0xA4)
    source, destination = header_set.get(0xA1), header_set.get(0xA2)
    # IPAddress.address [0] is an explicit tag around ipV4 [1]: 4 octets.
    assert source.get(0xA0).only().raw == bytes.fromhex("8104c000020a")  # 192.0.2.10
    assert destination.get(0xA0).only().raw == bytes.fromhex("8104c6336435")  # 198.51.100.53
    assert source.get(0xA1).only().raw == bytes.fromhex("8100")  # allocation dynamic [1] NULL
    # ipV6 [2]: 16 octets.
    v6 = top(11).children[1].get(0xA4).get(0xA1).get(0xA0).only()
    assert v6.tag == 0x82
    assert v6.content == ipaddress.IPv6Address("2001:db8:0:1::10").packed
    # LEA-CmC-Delivery ccAddress [1] SEQUENCE: leaIPAddress [0] explicit around ipV4.
    delivery = top(6).children[1].get(0xA9)
    cc_address = delivery.get(0xA1).only()
    assert cc_address.tag == 0xA1
    assert cc_address.get(0xA0).only().raw == bytes.fromhex("8104cb007132")  # 203.0.113.50
    assert cc_address.get(0x81).content == b"50000"
    assert delivery.get(0xA0).only().tag == 0xA1  # contentIdentifier: callID [1] SEQUENCE
    assert delivery.get(0xA2).only().raw == bytes.fromhex("8200")  # iasDatagram [2] NULL


def test_set_of_elements_are_in_der_order() -> None:
    signal = top(0).children[1].get(0xA6).get(0xA1)
    reports = top(5).children[1].get(0xA4)
    for set_of in (signal, reports):
        assert len(set_of.children) == 2
        assert [c.raw for c in set_of.children] == sorted(c.raw for c in set_of.children)


def _sums_to_ones(data: bytes) -> bool:
    """RFC 1071: data that includes its own checksum sums to 0xffff."""
    data += b"\x00" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_cc_apdu_structure_and_payload() -> None:
    apdu = top(12)
    assert apdu.tag == 0x30 and apdu.tags == [0xA0, 0x81]
    header, payload = apdu.children
    assert header.tags == [0xA0, 0x81, 0x82, 0x83]
    info = header.get(0xA0)
    assert info.tags == [0x80, 0x81, 0xA2]
    # contentIdentifier [2] ContentIdentifier: explicit, wrapping correlationID [0].
    content_id = info.get(0xA2).only()
    assert content_id.tag == 0x80
    assert content_id.content == bytes.fromhex("c0ffee0001")
    assert_time(header.get(0x81), 0x81)
    assert header.get(0x82).content == b"\x00"  # fromSubject
    # The payload is a real IPv4/UDP DNS query with a valid header checksum.
    packet = payload.content
    assert packet[0] == 0x45 and packet[9] == 17
    assert _sums_to_ones(packet[:20])  # IPv4 header checksum
    udp = packet[20:]
    assert struct.unpack("!H", udp[4:6])[0] == len(udp)
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert _sums_to_ones(pseudo + udp)  # UDP checksum over the pseudo-header
    assert ipaddress.IPv4Address(packet[12:16]) == ipaddress.IPv4Address("192.0.2.10")
    assert ipaddress.IPv4Address(packet[16:20]) == ipaddress.IPv4Address("198.51.100.53")
    assert struct.unpack("!H", packet[22:24])[0] == 53
    assert b"\x03www\x07example\x03com\x00" in packet


def test_delivery_messages_carry_their_choice_tag() -> None:
    expected = {
        P.Envelope: 0xA0,
        P.Keepalive: 0xA1,
        P.KeepaliveAnswer: 0xA2,
        P.Acknowledgement: 0xA3,
        P.ReplayRequest: 0xA4,
        P.ReplayResult: 0xA5,
        P.ReceiverReport: 0xA6,
        P.ChainCheckpoint: 0xA7,
    }
    for index in range(13, len(GOLDENS)):
        assert top(index).tag == expected[type(BY_INDEX[index][2])], BY_INDEX[index][0]


def _envelope(index: int) -> Tlv:
    envelope = top(index)
    assert envelope.tag == 0xA0
    stream = envelope.get(0xA0)
    assert stream.get(0x80).content == b"w-3f9a1c"  # the opaque handle, not the case id
    assert len(stream.get(0x81).content) == 1
    assert_time(envelope.get(0x82), 0x82)
    return envelope


def test_envelopes_wrap_the_same_pdu_bytes_under_an_explicit_content_tag() -> None:
    cmcc = _envelope(13)
    assert cmcc.get(0xA0).get(0x81).content == b"\x01"  # kind cmCC
    assert cmcc.get(0x81).content == b"\x01"  # sequence number 1
    inner = cmcc.get(0xA5).only()
    # cmCC [1] IAS-CC-APDU: implicit, so the APDU's SEQUENCE tag 0x30 becomes 0xa1
    # and everything after the tag is the CC golden's bytes.
    assert inner.tag == 0xA1
    assert inner.raw[1:] == golden_bytes(12)[1:]

    cmii = _envelope(14)
    assert cmii.get(0x84).content == b"\xff"  # redelivered TRUE, DER's only TRUE
    inner = cmii.get(0xA5).only()
    assert inner.tag == 0xA0 and inner.children[0].raw == CMII_OID_TLV
    assert inner.raw[1:] == golden_bytes(10)[1:]

    notice = _envelope(15).get(0xA5).only()
    assert notice.tag == 0xA2
    assert notice.get(0x80).content == b"\x02"  # upstreamGap
    for tag in (0x81, 0x82, 0x83):
        assert_time(notice.get(tag), tag)


def test_control_messages() -> None:
    keepalive = top(16)
    assert keepalive.tags == [0x80, 0x81]
    assert top(17).raw[1:] == keepalive.raw[1:]  # the answer echoes id and time
    ack = top(18)
    assert ack.tags == [0xA0, 0x81] and ack.get(0x81).content == b"\x2a"  # nextExpected 42
    request = top(19)
    ranges = request.get(0xA2)
    assert [r.raw for r in ranges.children] == [
        bytes.fromhex("3006800103810105"),  # SequenceRange 3..5
        bytes.fromhex("3006800109810109"),  # 9..9
    ]
    result = top(20)
    assert result.get(0x82).content == b"\x03" and result.get(0x84).content == b"past retention"
    report = top(21)
    assert report.tags == [0xA0, 0x81, 0x82, 0x83, 0xA4, 0x85]
    checkpoint = top(22)
    assert len(checkpoint.get(0x82).content) == 32  # chainHash: SHA-256
    assert len(checkpoint.get(0x84).content) == 64  # an Ed25519 signature
    assert_time(checkpoint.get(0x83), 0x83)


def test_checkpoint_signature_verifies() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    record = BY_INDEX[22][2]
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"golden fixture key").digest())
    key.public_key().verify(record.signature, record.chain_hash)  # raises if wrong


# --- annotated dumps ----------------------------------------------------------------


def _dump_bytes(lines: list[str]) -> bytes:
    """The bytes an annotated dump shows, read back from its code column."""
    return bytes.fromhex("".join(line.split("  #")[0].replace(" ", "") for line in lines))


@pytest.mark.parametrize("index", sorted(BY_INDEX))
def test_annotated_dump_shows_every_byte_once_in_order(index: int) -> None:
    data = golden_bytes(index)
    lines = mg.annotate(data)
    assert _dump_bytes(lines) == data
    assert not any("skipped by length" in line for line in lines)


def test_annotated_dump_names_fields() -> None:
    text = "\n".join(mg.annotate(golden_bytes(10)))
    assert "protocolIdentifier OBJECT IDENTIFIER 1.2.840.113737.2.1.1.0.0" in text
    assert "iasMessage / data-Header-Report [10]" in text
    assert "ipV4 [1] OCTET STRING 192.0.2.10" in text
    assert "contentIdentifier [3] ContentIdentifier (explicit tag)" in text


def test_annotated_dump_marks_an_unknown_later_message() -> None:
    lines = mg.annotate(bytes.fromhex("af03800101"))
    assert "alternative unknown to this version: skipped by length" in lines[0]


def test_doc_dumps_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``<!-- annotate FILE -->`` block in docs/pdu.md is what --annotate prints."""
    doc = DOC.read_text()
    blocks = re.findall(r"<!-- annotate (\S+) -->\n```text\n(.*?)```", doc, re.S)
    shown = []
    for name, block in blocks:
        capsys.readouterr()
        assert mg.main(["--annotate", str(ROOT / name)]) == 0
        assert block == capsys.readouterr().out, f"{name}: regenerate the dump in docs/pdu.md"
        shown.append(P.decode(mg.read_hex(ROOT / name)))
    # One of each kind: a CmII message, a CC APDU, an envelope and a control message.
    assert len(shown) == 4
    assert isinstance(shown[0], P.CmIIMessage)
    assert isinstance(shown[1], P.CCApdu)
    assert isinstance(shown[2], P.Envelope)
    assert isinstance(shown[3], P.ReceiverReport | P.Keepalive | P.Acknowledgement)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("index", sorted(BY_INDEX))
def test_openssl_parses_every_golden(index: int, tmp_path: Path) -> None:
    """A third, unrelated BER parser walks each file to its end without error."""
    path = tmp_path / "pdu.der"
    data = golden_bytes(index)
    path.write_bytes(data)
    run = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path), "-i"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]  # "    0:d=0  hl=2 l= 122 cons: ..."
    header, length = re.search(r"hl=\s*(\d+)\s+l=\s*(\d+)", first).groups()
    assert int(header) + int(length) == len(data)


def test_replay_result_extension_fields_are_skipped_by_a_receiver_of_the_old_module(
    tmp_path: Path,
) -> None:
    """notYet [5] and limited [6] sit after the marker: the module before them still decodes 23."""
    old_dir = tmp_path / "asn1"
    shutil.copytree(ROOT / "asn1", old_dir)
    module = old_dir / "Mediation-Delivery.asn"
    text = module.read_text()
    start = text.index("    ...,\n    notYet")
    end = text.index("}", start)
    module.write_text(text[:start] + "    ...\n" + text[end:])
    assert "notYet" not in module.read_text().split("ReplayLimit ::=")[0]
    import asn1tools

    old = asn1tools.compile_files(
        [str(old_dir / n) for n in ("IAS-CmII.asn", "IAS-CmCC.asn", "Mediation-Delivery.asn")],
        "der",
    )
    index = 23
    alternative, value = old.decode("DeliveryMessage", golden_bytes(index))
    record = BY_INDEX[index][2]
    assert alternative == "replayResult"
    assert value["delivered"] == record.delivered
    assert "notYet" not in value and "limited" not in value
    assert record.not_yet == (P.SequenceRange(6, 9),)  # the new module reads them
