"""[tzsp] and [radius]: their refusals, the secret file, and the batch receiver's socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mediation.errors import UsageError
from mediation.server.config import RadiusConfig, ServerConfig
from mediation.server.config_file import parse_config
from mediation.server.radius import read_secret
from mediation.server.tzsp_socket import BatchReceiver, kernel_drops, normal_address


def test_defaults_listen_for_tzsp_on_loopback_and_radius_nowhere() -> None:
    config = ServerConfig()
    assert config.tzsp.listen == "127.0.0.1:37008"
    assert config.radius.listen == ""
    assert parse_config({"tzsp": {"listen": "0.0.0.0:37008"}}).tzsp.listen == "0.0.0.0:37008"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tzsp": {"listen": "37008"}}, 'config [tzsp] listen: must be "HOST:PORT"'),
        ({"tzsp": {"max_datagram": 32}}, "config [tzsp] max_datagram: must be a whole number "
         "from 64 to 65535, got 32"),
        ({"tzsp": {"batch": 4096}}, "config [tzsp] batch: must be a whole number from 1 to 1024"),
        ({"radius": {"listen": "127.0.0.1:1813"}}, "config [radius] nas: must list the NAS"),
        ({"radius": {"listen": "127.0.0.1:1813", "nas": ["nas-1"]}},
         'config [radius] nas: must be IP addresses, got "nas-1"'),
        ({"radius": {"listen": "127.0.0.1:1813", "nas": ["192.0.2.1"]}},
         "config [radius] secret_file: must name the file"),
    ],
)  # fmt: skip
def test_each_refusal_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_config(data)
    assert str(refused.value).startswith(message)


def _radius(path: Path) -> RadiusConfig:
    return RadiusConfig(listen="127.0.0.1:0", nas=("127.0.0.1",), secret_file=str(path))


def test_the_secret_is_read_without_its_newline_and_only_when_listening(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret\n")
    path.chmod(0o600)
    assert read_secret(_radius(path)) == b"s3cret"
    assert read_secret(RadiusConfig(secret_file=str(path))) is None


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"s3cret", 0o640, "is readable by others (mode 0640); run: chmod 600"),
        (b"\n", 0o600, "must hold the shared secret (1 to 128 octets)"),
        (b"x" * 129, 0o600, "must hold the shared secret (1 to 128 octets)"),
        (None, 0o600, "cannot read"),
    ],
)
def test_a_bad_secret_file_is_refused(
    tmp_path: Path, content: bytes | None, mode: int, message: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)
        path.chmod(mode)
    with pytest.raises(UsageError) as refused:
        read_secret(_radius(path))
    text = str(refused.value)
    assert text.startswith("config [radius] secret_file: ") and message in text
    assert "s3cret" not in text


@pytest.mark.parametrize("use_recvmmsg", [True, False])
def test_batches_come_whole_in_order_and_oversize_is_flagged(use_recvmmsg: bool) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        sizes = [1, 100, 256, 257, 64]
        for n, size in enumerate(sizes):
            client.sendto(bytes([n]) * size, server.getsockname())
        receiver = BatchReceiver(server, 3, 256, use_recvmmsg=use_recvmmsg)
        got: list = []
        for _ in range(100):  # loopback delivers at once; bounded all the same
            if len(got) == len(sizes):
                break
            server_ready = receiver.receive()
            if server_ready is not None:
                assert len(server_ready) <= 3
                got += server_ready
        assert [data for data, _ in got] == [
            b"\x00",
            b"\x01" * 100,
            b"\x02" * 256,
            None,
            b"\x04" * 64,
        ]
        assert {sender for _, sender in got} == {"127.0.0.1"}
        assert receiver.receive() is None
        assert kernel_drops(server) == 0


def test_mapped_addresses_are_the_ipv4_ones_sources_name() -> None:
    assert normal_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert normal_address("2001:DB8::1") == "2001:db8::1"


def test_socket_drops_become_an_upstream_gap_for_each_warrant_fed() -> None:
    import datetime as dt

    from mediation.server.config import TzspConfig
    from mediation.server.tap_ingest import TapGate
    from mediation.server.tzsp import TzspService
    from mediation.server.tzsp_sources import TzspSource
    from mediation.server.warrant_table import WarrantTable

    told: list[tuple[str, str, dict]] = []

    class Hooks:
        def notice(self, handle: str, event: str, **fields: object) -> None:
            told.append((handle, event, fields))

    service = TzspService(TzspConfig(), WarrantTable(), None, Hooks())  # type: ignore[arg-type]
    fed = TzspSource("192.0.2.1", [], TapGate("tzsp:192.0.2.1", []), feeding=True)
    fed.announced = {"w-000001"}
    service.sources["192.0.2.1"] = fed
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum
        server.bind(("127.0.0.1", 0))
        service._sock = server
        now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
        service.drops_check(now)
        assert told == []
        for _ in range(200):  # far more than the buffer holds: the kernel drops the rest
            client.sendto(bytes(1400), server.getsockname())
        drops = kernel_drops(server)
        assert drops
        later = now + dt.timedelta(seconds=1)
        service.drops_check(later)
        [(handle, event, fields)] = told
        assert (handle, event) == ("w-000001", "upstreamGap")
        assert fields["lost_count"] == drops and fields["source"] == "tzsp"
        assert (fields["period_start"], fields["period_end"]) == (now, later)
        service.drops_check(later)  # nothing new: nothing told
        assert len(told) == 1


def test_a_receive_step_gathers_calls_while_the_socket_stays_full() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        for n in range(5):
            client.sendto(bytes([n]), server.getsockname())
        receiver = BatchReceiver(server, 2, 256)
        steps = []
        for _ in range(100):  # loopback delivers at once; bounded all the same
            step, error = receiver.receive_step(2)
            assert error is None
            if step:
                steps.append([data for data, _ in step])
            if sum(map(len, steps)) == 5:
                break
        assert steps[0] == [b"\x00", b"\x01", b"\x02", b"\x03"]  # two calls' worth
        assert receiver.receive_step(2) == ([], None)
