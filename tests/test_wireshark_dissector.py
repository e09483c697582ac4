"""The Wireshark dissector (wireshark/mediation.lua) under tshark.

Every golden fixture goes in one UDP datagram of one pcap (written with the
project's own pcap writer), and one ``tshark -V`` run must show each
message's type and every field value the reference decoder gives
(``mediate decode``'s JSON). Also: the sealed datagram's clear header, a
TCP stream of back-to-back messages split across segments (reassembled),
and malformed input, which must give expert info and never a Lua error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import itertools
import random
import re
import shutil
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mediation.evidence.pcap import LINKTYPE_RAW, PcapWriter
from mediation.lea.tls import make_agency_certificate
from mediation.pdu.codec import decode
from mediation.pdu.jsonview import to_json
from mediation.protocol.sealed import DatagramSealer, Direction, SealKey

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "wireshark" / "mediation.lua"
GOLDEN = sorted((ROOT / "fixtures" / "golden").glob("*.hex"))
TSHARK = shutil.which("tshark")

pytestmark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not installed (./dev setup installs it with apt-get)"
)

SRC, DST = bytes([192, 0, 2, 1]), bytes([203, 0, 113, 5])  # documentation addresses
UDP_PORT, TCP_PORT = 5555, 6543
T0 = dt.datetime(2026, 11, 23, 0, 11, tzinfo=dt.UTC)


# --- a few frames, by hand: IPv4 with UDP or TCP, link type RAW ---------------------


def _load_raw2pcap():
    """Import wireshark/raw2pcap.py by path: wireshark/ is not a package."""
    spec = importlib.util.spec_from_file_location("raw2pcap", ROOT / "wireshark" / "raw2pcap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


raw2pcap = _load_raw2pcap()
udp = raw2pcap.udp_frame


def tcp(
    payload: bytes,
    seq: int,
    flags: int = 0x18,
    port: int = TCP_PORT,
    ack: int = 1,
    back: bool = False,
) -> bytes:
    """One raw-IP frame of a TCP segment (checksums zero: tshark does not check them).

    ``back``: from the stream's server (DST, ``port``) to its client.
    """
    ports = (TCP_PORT, 40001) if back else (40001, TCP_PORT)
    header = struct.pack("!HHIIBBHHH", *ports, seq, ack, 5 << 4, flags, 65535, 0, 0)
    hosts = (DST, SRC) if back else (SRC, DST)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0, 64, 6, 0, *hosts)
    return ip + header + payload


class Connection:
    """TCP segments of one connection, both ways, with sequence numbers kept."""

    def __init__(self) -> None:
        self.next = {False: 1, True: 1}  # after SYN and SYN-ACK, each side's first octet
        self.frames = [tcp(b"", 0, 0x02, ack=0), tcp(b"", 0, 0x12, back=True), tcp(b"", 1, 0x10)]

    def send(self, data: bytes, back: bool = False) -> None:
        if data:
            ack = self.next[not back]
            self.frames.append(tcp(data, self.next[back], ack=ack, back=back))
            self.next[back] += len(data)


def write_pcap(path: Path, frames: list[bytes]) -> Path:
    with PcapWriter.open(path, linktype=LINKTYPE_RAW) as writer:
        for i, frame in enumerate(frames):
            writer.write(frame, T0 + dt.timedelta(milliseconds=i))
    return path


def tshark(pcap: Path, *extra: str) -> str:
    """``tshark -V`` with the dissector; fails the test on a Lua error or exit status."""
    run = subprocess.run(
        [TSHARK, "-n", "-X", f"lua_script:{SCRIPT}", "-r", str(pcap), "-V", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Lua Error" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "dissector error" not in run.stdout
    return run.stdout


# The dissector's expert info (a DNS retransmission in the CC payload is not ours).
OUR_EXPERT = re.compile(r"Expert Info \((Error/Malformed|Note/Undecoded|Warning/Undecoded)")


def frames_of(text: str) -> list[str]:
    """tshark -V output split into one text per frame, in order."""
    return re.split(r"^Frame \d+: ", text, flags=re.M)[1:]


def read_hex(path: Path) -> bytes:
    lines = path.read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


# --- what the reference decoder says must be shown -----------------------------------


def expectations(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """(field name, value) for every leaf of ``mediate decode``'s JSON of one PDU."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if k in ("from", "payload", "packet"):  # ours, the raw packet, jsonview's summary
                continue
            out.extend(expectations(v, k))
        return out
    if isinstance(value, list):
        return [pair for element in value for pair in expectations(element, key)]
    return [(key, value)]


def shown(text: str, key: str, value: Any) -> bool:
    if value is None:  # a NULL alternative: its name is shown (e.g. "accessType: dsl")
        return re.search(rf"\b{re.escape(key)}\b", text) is not None
    if value is True:
        return re.search(rf"{re.escape(key)}: (true|present)", text) is not None
    if value is False:  # an absent OPTIONAL is false in JSON: nothing to show
        return True
    if key == "type":
        return re.search(rf"\b{re.escape(str(value))}\b", text) is not None
    return f"{key}: {value}" in text


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """All golden fixtures in one pcap, made as docs/wireshark.md says (raw2pcap --hex)."""
    pcap = tmp_path_factory.mktemp("ws") / "golden.pcap"
    assert raw2pcap.main(["--hex", str(pcap), *map(str, GOLDEN)]) == 0
    frames = frames_of(tshark(pcap))
    assert len(frames) == len(GOLDEN)
    return frames


@pytest.mark.parametrize("index", range(len(GOLDEN)), ids=[p.stem for p in GOLDEN])
def test_every_golden_fixture_shows_its_type_and_fields(golden_run: list[str], index: int) -> None:
    text = golden_run[index]
    record = to_json(decode(read_hex(GOLDEN[index])))
    assert "Mediation delivery (T1.IAS)" in text
    missing = [(k, v) for k, v in expectations(record) if not shown(text, k, v)]
    assert not missing, f"{GOLDEN[index].name}: not shown {missing}\n{text}"
    assert not OUR_EXPERT.search(text), text  # a well-formed PDU draws no complaint


def test_the_cc_payload_is_handed_to_the_ip_dissector(golden_run: list[str]) -> None:
    for index, path in enumerate(GOLDEN):
        if "cc-apdu" in path.name or "envelope-cmcc" in path.name:
            text = golden_run[index]
            assert "Src: 192.0.2.10, Dst: 198.51.100.53" in text
            assert "Domain Name System (query)" in text
            assert "www.example.com" in text


def test_envelope_summary_names_case_stream_and_sequence(tmp_path: Path) -> None:
    envelope = next(p for p in GOLDEN if "envelope-cmii" in p.name)
    pcap = write_pcap(tmp_path / "one.pcap", [udp(read_hex(envelope))])
    line = subprocess.run(
        [TSHARK, "-n", "-X", f"lua_script:{SCRIPT}", "-r", str(pcap)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "MEDIATION" in line
    assert "pduEnvelope data-Header-Report w-3f9a1c/cmII #40 case CASE-0001" in line
    fields = subprocess.run(
        [
            TSHARK,
            "-n",
            "-X",
            f"lua_script:{SCRIPT}",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "mediation.case_id",
            "-e",
            "mediation.sequence",
            "-e",
            "mediation.warrant_handle",
            "-Y",
            "mediation.sequence == 40",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert fields == ["CASE-0001", "40", "w-3f9a1c"]


def test_sealed_datagram_shows_its_clear_header(tmp_path: Path) -> None:
    key = SealKey(0x1234ABCD, bytes(range(32)))
    session = bytes.fromhex("0102030405060708")
    start_us = 1_795_392_660_000_000  # 2026-11-23 00:11:00 UTC
    sealer = DatagramSealer(key, Direction.SERVER_TO_AGENCY, start_us, random=lambda n: session[:n])
    datagrams = [sealer.seal(read_hex(GOLDEN[13])) for _ in range(2)]
    text = tshark(write_pcap(tmp_path / "sealed.pcap", [udp(d) for d in datagrams]))
    first, second = frames_of(text)
    assert "Mediation sealed datagram (AES-256-GCM)" in first
    assert "Version: 1" in first
    assert "Direction: server->agency (0)" in first
    assert "Key id: 0x1234abcd" in first
    assert "Session id: 0x0102030405060708" in first
    assert "Session start: Nov 23, 2026 00:11:00.000000000 UTC" in first
    assert "Counter: 1" in first and "Counter: 2" in second
    assert "payload encrypted (AES-256-GCM)" in first
    assert "CASE-0001" not in text  # sealed means sealed


def test_stream_messages_split_across_segments_are_reassembled(tmp_path: Path) -> None:
    messages = [read_hex(GOLDEN[i]) for i in (13, 14, 16, 18)]
    stream = b"".join(messages)
    # Cut everywhere awkward: inside a header, inside content, on a boundary.
    cuts = [0, 1, 3, len(messages[0]) + 2, len(messages[0]) + 60, len(stream) - 5, len(stream)]
    link = Connection()
    for a, b in itertools.pairwise(cuts):
        link.send(stream[a:b])
    text = tshark(write_pcap(tmp_path / "stream.pcap", link.frames), "-P")
    for name in ("pduEnvelope", "keepalive", "acknowledgement"):
        assert f"DeliveryMessage: {name}" in text
    assert text.count("Mediation delivery (T1.IAS)") == 4
    assert "sequenceNumber: 1\n" in text and "sequenceNumber: 40\n" in text
    assert "Reassembled TCP Segments" in text
    # Two messages end in one segment: both are in its summary line.
    assert "w-3f9a1c/cmII #40 case CASE-0001; keepalive" in text
    assert not OUR_EXPERT.search(text), text


MALFORMED = {
    "truncated": read_hex(GOLDEN[13])[:-7],
    "huge length": bytes.fromhex("a084ffffffff") + b"\x00" * 10,
    "long length form": bytes.fromhex("a089") + b"\x01" * 12,
    "indefinite": bytes.fromhex("a080a0020000"),
    "unknown top tag": bytes.fromhex("0403010203"),
    "bad inner length": bytes.fromhex("a0053003800109"),
    "primitive where constructed": bytes.fromhex("a0028000"),  # stream [0]
    "constructed where primitive": bytes.fromhex("a004a1028000"),  # sequenceNumber [1]
    "empty explicit choice": bytes.fromhex("a002a500"),  # content [5]
    "unknown alternative": bytes.fromhex("a004a502a900"),
    "garbage in a choice": bytes.fromhex("a004a5021fff"),
    "not a time": bytes.fromhex("a003820141"),
    "not an integer": bytes.fromhex("a0028100"),
    "bad boolean": bytes.fromhex("a00484020101"),
}


def _deep(levels: int) -> bytes:
    """signal [1] SET OF Value nested far deeper than any schema path."""
    inner = b"\x30\x00"
    for _ in range(levels):
        inner = (
            bytes([0x30, len(inner)]) + inner
            if len(inner) < 128
            else (b"\x30\x82" + struct.pack("!H", len(inner)) + inner)
        )
    return inner


def test_malformed_input_gives_expert_info_not_a_lua_error(tmp_path: Path) -> None:
    cases = dict(MALFORMED)
    cases["deep nesting"] = (
        b"\xa0\x82"
        + struct.pack("!H", len(_deep(200)) + 4)
        + b"\xa0\x82"
        + (struct.pack("!H", len(_deep(200))))
        + _deep(200)
    )
    flipped = bytearray(read_hex(GOLDEN[0]))
    flipped[40] ^= 0xFF
    cases["flipped octet"] = bytes(flipped)
    cases["empty"] = b""
    frames = [udp(data) for data in cases.values()]
    text = tshark(write_pcap(tmp_path / "bad.pcap", frames), "-o", "mediation.udp_ports:5555")
    per_frame = frames_of(text)
    assert len(per_frame) == len(cases)
    for name, frame in zip(cases, per_frame, strict=True):
        if name == "empty":
            continue
        assert "Expert Info" in frame, f"{name}: no expert info\n{frame}"


def test_garbage_on_the_stream_port_is_refused_without_a_loop(tmp_path: Path) -> None:
    huge = bytes.fromhex("a084 7fffffff".replace(" ", ""))  # 2 GiB claimed: over the limit
    link = Connection()
    link.send(huge + b"\x00" * 20)
    text = tshark(write_pcap(tmp_path / "huge.pcap", link.frames))
    assert "exceeds the limit of 1048576" in text


def test_raw2pcap_wraps_a_receivers_raw_file(tmp_path: Path) -> None:
    raw = tmp_path / "cmii.raw"
    raw.write_bytes(b"".join(read_hex(GOLDEN[i]) for i in (14, 15, 22)))
    out = tmp_path / "cmii.pcap"
    assert raw2pcap.main([str(out), str(raw)]) == 0
    lines = subprocess.run(
        [TSHARK, "-n", "-t", "ud", "-X", f"lua_script:{SCRIPT}", "-r", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(lines) == 3
    # Each envelope's frame time is its mediationTime; the checkpoint keeps the last one.
    assert "2026-11-23 00:11:08.500250" in lines[0] and "#40" in lines[0]
    assert "2026-11-23 00:11:13.000000" in lines[1] and "upstreamGap" in lines[1]
    assert "2026-11-23 00:11:13.000000" in lines[2] and "checkpoint" in lines[2]


def test_raw2pcap_refuses_a_cut_file_and_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut.raw"
    cut.write_bytes(read_hex(GOLDEN[14])[:-3])
    out = tmp_path / "out.pcap"
    assert raw2pcap.main([str(out), str(cut)]) == 2
    assert "not whole DER messages" in capsys.readouterr().err
    assert raw2pcap.main(["--hex", str(out), str(cut)]) == 2
    assert "not hex text (--hex)" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [cut]
    out.write_bytes(b"keep")
    whole = tmp_path / "whole.raw"
    whole.write_bytes(read_hex(GOLDEN[14]))
    assert raw2pcap.main([str(out), str(whole)]) == 2
    assert "exists: name a new file" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


def _pump(link: Connection, client: ssl.SSLObject, server: ssl.SSLObject, bios: list) -> None:
    """Move what each side wrote to the other, recording it as TCP segments."""
    c_in, c_out, s_in, s_out = bios
    for _ in range(10):
        to_server, to_client = c_out.read(), s_out.read()
        if not to_server and not to_client:
            return
        link.send(to_server)
        s_in.write(to_server)
        link.send(to_client, back=True)
        c_in.write(to_client)
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()


def test_a_decrypted_tls_stream_is_dissected(tmp_path: Path) -> None:
    """A real TLS 1.3 session (memory BIOs, no network) and its key log, as an analyst has."""
    cert = make_agency_certificate(tmp_path / "cert")
    keylog = tmp_path / "keys.log"
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert_path, cert.key_path)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # a test of the capture, not of trust
    client_ctx.keylog_filename = str(keylog)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_side=False)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    link = Connection()
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    _pump(link, client, server, bios)
    # The agency's receiver is the TLS server; the mediation server connects and sends.
    envelopes = b"".join(read_hex(GOLDEN[i]) for i in (13, 14))
    client.write(envelopes[:100])
    client.write(envelopes[100:])  # the first message spans two TLS records
    server.write(read_hex(GOLDEN[18]))  # the agency's acknowledgement
    _pump(link, client, server, bios)
    text = tshark(
        write_pcap(tmp_path / "tls.pcap", link.frames), "-P", "-o", f"tls.keylog_file:{keylog}"
    )
    assert "Transport Layer Security" in text
    assert "DeliveryMessage: pduEnvelope" in text
    assert "caseId: CASE-0001" in text
    assert "sequenceNumber: 40\n" in text
    assert "DeliveryMessage: acknowledgement" in text
    assert not OUR_EXPERT.search(text), text


def test_heuristic_finds_messages_and_sealed_datagrams_on_any_udp_port(tmp_path: Path) -> None:
    key = SealKey(7, bytes(32))
    sealer = DatagramSealer(key, Direction.AGENCY_TO_SERVER, 1_795_392_660_000_000)
    frames = [
        udp(read_hex(GOLDEN[21]), port=50000),  # an unsealed receiver report
        udp(sealer.seal(read_hex(GOLDEN[21])), port=50001),
        udp(b"\x30\x03\x02\x01\x05", port=50002),  # DER, but no PDU of ours
    ]
    text = tshark(write_pcap(tmp_path / "heur.pcap", frames))
    first, second, third = frames_of(text)
    assert "DeliveryMessage: receiverReport" in first and "missingOmitted: 1" in first
    assert "Direction: agency->server (1)" in second
    assert "Mediation" not in third


def test_the_documented_install_line_works(tmp_path: Path) -> None:
    """The one command in docs/wireshark.md, run as written with a fresh HOME."""
    doc = (ROOT / "docs" / "wireshark.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("mkdir -p ~/.local/lib/wireshark"))
    assert line in (ROOT / "docs" / "agency.md").read_text()
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    subprocess.run(["sh", "-c", line], cwd=ROOT, env=env, check=True, timeout=30)
    pcap = write_pcap(tmp_path / "one.pcap", [udp(read_hex(GOLDEN[16]))])
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "MEDIATION" in out and "keepalive" in out


def test_mutated_and_cut_fixtures_never_break_the_dissector(tmp_path: Path) -> None:
    """Every golden fixture cut short and with random octets changed: one tshark run."""
    rng = random.Random(20261123)
    frames = []
    for path in GOLDEN:
        data = read_hex(path)
        frames += [udp(data[:cut]) for cut in range(1, len(data), max(1, len(data) // 12))]
        for _ in range(12):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            frames.append(udp(bytes(mutated)))
    text = tshark(write_pcap(tmp_path / "fuzz.pcap", frames))  # exit 0, no Lua error
    assert len(frames_of(text)) == len(frames)


def test_missing_and_repeated_fields_are_flagged(tmp_path: Path) -> None:
    keepalive = read_hex(GOLDEN[16])  # a1 L, keepaliveId [0], sentTime [1]
    assert keepalive[2] == 0x80
    id_tlv = keepalive[2 : 4 + keepalive[3]]
    time_tlv = keepalive[4 + keepalive[3] :]
    frames = [
        udp(bytes([0xA1, len(id_tlv)]) + id_tlv),  # sentTime left out
        udp(bytes([0xA1, 2 * len(id_tlv) + len(time_tlv)]) + id_tlv + id_tlv + time_tlv),
    ]
    missing, repeated = frames_of(tshark(write_pcap(tmp_path / "fields.pcap", frames)))
    assert "sentTime: missing (not OPTIONAL in Keepalive)" in missing
    assert "keepaliveId: present 2 times" in repeated
