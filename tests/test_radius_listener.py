"""The [radius] accounting listener in a real `mediate serve`, steering the TZSP tap core."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from taplink_support import stored
from test_control_live import wait_for
from test_serve_process import Serve
from test_tzsp_serve import add_tzsp_warrant, stop
from test_warrants_support import Carrier

from mediation.pdu import StreamKind
from mediation.protocol.tzsp import encode_tzsp
from mediation.server.tap_gate import cc_payload
from mediation.tap.radius import StatusType, accounting_response, encode_accounting
from mediation.warrants.model import ContentLevel, Target, TargetKind

SECRET = b"test-secret-not-real"
USER = "alice@example.test"
BYSTANDER = "192.0.2.30"


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def config(carrier: Carrier, secret_mode: int = 0o600) -> Path:
    secret = carrier.tmp / "radius.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(secret_mode)
    path = carrier.tmp / "mediation.toml"
    path.write_text(
        '[retrieval]\nlisten = ""\n[taps]\ntls_listen = ""\n'
        '[tzsp]\nlisten = "127.0.0.1:0"\n'
        f'[radius]\nlisten = "127.0.0.1:0"\nnas = ["127.0.0.1"]\nsecret_file = "{secret}"\n'
    )
    return path


def frame(src: str, dst: str, marker: int) -> bytes:
    """An Ethernet frame of one small UDP packet; ``marker`` is its IP identification."""
    udp = struct.pack("!HHHH", 40000, 443, 12, 0) + b"ping"
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), marker, 0, 64, 17, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return bytes.fromhex("02005e00530202005e0053010800") + ip + udp


def listening(server: Serve, section: str) -> tuple[str, int]:
    def up() -> str | None:
        return ((server.status() or {}).get(section) or {}).get("listening")

    host, port = wait_for(up, f"the {section} listener").rsplit(":", 1)  # type: ignore[union-attr]
    return host, int(port)


class Nas:
    """The NAS: accounting over UDP, waiting for each answer."""

    def __init__(self, address: tuple[str, int], bind: str = "127.0.0.1") -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.sock.settimeout(10)
        self.identifier = 0

    def send(self, status: StatusType, ip: str | None = None, secret: bytes = SECRET) -> bytes:
        self.identifier += 1
        request = encode_accounting(
            status, "SESSION-1", user_name=USER, framed_ip=ip, nas_identifier="nas-test",
            identifier=self.identifier, secret=secret,
        )  # fmt: skip
        self.sock.sendto(request, self.address)
        return request

    def answered(self, request: bytes) -> bool:
        answer = self.sock.recv(4096)
        return answer == accounting_response(request, SECRET)


def test_accounting_moves_the_capture_with_the_user(carrier: Carrier) -> None:
    handle = add_tzsp_warrant(
        carrier, "CASE-TEST-0001", Target(TargetKind.USER, USER), ContentLevel.FULL
    )
    server = Serve(carrier, config(carrier))
    try:
        tzsp_address = listening(server, "tzsp")
        nas = Nas(listening(server, "radius"))
        router = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer, marker = "198.51.100.1", 0

        def traffic(*sources: str) -> None:
            nonlocal marker
            for src in sources:
                marker += 1
                router.sendto(encode_tzsp(frame(src, peer, marker)), tzsp_address)
            wait_for(lambda: (server.status() or {})["tzsp"]["frames"] == marker or None, "taken")

        traffic("192.0.2.10")  # before any accounting: nobody's yet
        assert nas.answered(nas.send(StatusType.START, "192.0.2.10"))
        traffic("192.0.2.10", BYSTANDER)  # 2: the user's
        assert nas.answered(nas.send(StatusType.INTERIM_UPDATE, "192.0.2.11"))
        traffic("192.0.2.11", "192.0.2.10")  # 4: the user's new address; .10 is no longer
        # A forged Interim (wrong secret) and one from a stranger: refused, unanswered.
        nas.send(StatusType.INTERIM_UPDATE, "192.0.2.10", secret=b"wrong-secret")
        stranger = Nas(nas.address, bind="127.0.0.2")
        stranger.send(StatusType.INTERIM_UPDATE, "192.0.2.10")
        wait_for(
            lambda: sum((server.status() or {})["radius"]["refused"].values()) == 2 or None,
            "both refused",
        )
        traffic("192.0.2.10", "192.0.2.11")  # 6: still .11
        assert nas.answered(nas.send(StatusType.STOP, "192.0.2.11"))
        traffic("192.0.2.11", "192.0.2.10")  # after Stop: none
        status = (server.status() or {})["radius"]
        assert status["refused"] == {"bad-authenticator": 1, "unregistered-nas": 1}
        assert status["answered"] == 3 and status["requests"] == 5
        stop(server)
    finally:
        server.stop()
    captured = [cc_payload(der) for der in stored(carrier, handle)[StreamKind.CMCC]]
    markers = [struct.unpack("!H", p[4:6])[0] for p in captured if p is not None]
    assert markers == [2, 4, 7]


def test_a_secret_file_others_can_read_is_refused(carrier: Carrier) -> None:
    path = config(carrier, secret_mode=0o644)
    done = subprocess.run(
        [sys.executable, "-m", "mediation", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "config [radius] secret_file" in done.stderr and "chmod 600" in done.stderr
    assert SECRET.decode() not in done.stderr + done.stdout
