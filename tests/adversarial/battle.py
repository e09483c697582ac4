"""The battle the adversarial tests judge: fought once (conftest.py), then inspected.

Traffic flows from the server (``feed_server.py``) to the agency's
``mediate receive`` over UDP (CmII) and TLS (CmCC) while every attack of
:func:`attack_plan` runs at once, each in its own thread, each bounded in
count and by one deadline. The fixture records what each side looked like
before and after, stops both processes with SIGTERM, and runs the checks
(``mediate log verify``, ``mediate receive verify``) the tests look at.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attacks as A
import pytest
from scenario import MADE_UP_HANDLE, Stage, wait_for

from mediation import pdu
from mediation.protocol.sealed import Direction
from mediation.refusals import MAX_CONNECTIONS
from mediation.warrants.udpkey import read_key_file

RATE = 40.0  # sample frames a second: 22 of 32 are the target's, each two PDUs
WARM_UP = 3.0  # seconds of traffic before the baseline is taken
ATTACK_SECONDS = 10.0  # every attack stops by then, whatever its count
FLOOD = 3.0  # then idle connections past every listener's limit are held this long
TAIL = 3.0  # traffic after the attacks: a datagram lost to the flood is followed by later ones
# DER headers claiming 2 GiB, an 8-octet length, a huge tag number, an indefinite length.
HUGE_FRAMES = [
    b"\xa4\x84\x7f\xff\xff\xff",
    b"\xa4\x88" + b"\xff" * 8,
    b"\xbf\xff\xff\xff\xff\x7f\x84\x40\x00\x00\x00",
    b"\xa4\x80",
]
MAX_UDP = 65507  # the largest UDP payload over IPv4
HUGE_RANGES = [(0, 10**12), (2**63, 2**64 - 1), (0, 2**64 - 1)]


@dataclasses.dataclass
class Battle:
    """What the tests judge."""

    stage: Stage
    done: dict[str, Any]  # attack name -> its result
    memory_before: dict[str, dict[str, int]]  # "server"/"receiver" -> VmRSS, VmHWM (KiB)
    memory_after: dict[str, dict[str, int]]
    alive_after: dict[str, bool]
    status: dict[str, Any]  # `mediate status --json` after the attacks
    stopped: dict[str, tuple[int, str]]  # exit status and output of each process
    log_verify: Any
    receive_verify: Any
    sniffed: int

    def report(self) -> str:
        """What happened, for a person reading a failure."""
        lines = [f"sniffed {self.sniffed} genuine datagrams"]
        lines += [f"attack {name}: {_summary(result)}" for name, result in self.done.items()]
        lines += [
            f"memory {n}: {self.memory_before.get(n)} -> {self.memory_after.get(n)}"
            for n in ("server", "receiver")
        ]
        for key in ("retrieval", "udp_refused", "control", "delivery"):
            lines.append(f"status {key}: {self.status.get(key)}")
        if self.stopped:
            lines.append("receiver said:\n" + self.stopped["receiver"][1][-3000:])
        return "\n".join(lines)


def _summary(value: Any) -> Any:
    """An attack's result, short: lists of answers become counts of each kind."""
    if isinstance(value, list) and all(isinstance(a, bytes | None) for a in value):
        kinds = ["refused" if a is None else f"{len(a)} octets" for a in value]
        return {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    return value


def attack_plan(
    stage: Stage, genuine: list[tuple[int, int, bytes]], until: float
) -> dict[str, Callable[[], Any]]:
    """Every attack, by name, as a thunk bounded in count and by ``until``."""
    forged = [
        A.forged_envelope(h, k, seq)
        for h in (stage.handle, MADE_UP_HANDLE)
        for k in (pdu.StreamKind.CMII, pdu.StreamKind.CMCC)
        for seq in (1, 10**6)
    ]
    return {
        **udp_attacks(stage, genuine, forged, until),
        **tls_attacks(stage, forged, until),
        **retrieval_attacks(stage, until),
        "control: garbage, nesting, long lines": lambda: A.control_garbage(
            stage.data / "run" / "control.sock", A.control_payloads(random.Random(5)), until
        ),
    }


def udp_attacks(
    stage: Stage, genuine: list[tuple[int, int, bytes]], forged: list[bytes], until: float
) -> dict[str, Callable[[], Any]]:
    """At the receiver's UDP port, and at the server's delivery socket (spoofed source)."""
    port = stage.ports["udp"]
    udp = ("127.0.0.1", port)
    key_id, _key = read_key_file(stage.udp_key)
    to_agency = [d for _s, t, d in genuine if t == port]
    reports = [d for s, _t, d in genuine if s == port]
    server_port = next(s for s, t, _d in genuine if t == port)
    lie = A.report_message(stage.handle, pdu.StreamKind.CMII, 10**6)  # "nothing lost"
    return {
        "udp receiver: random bytes": lambda: A.spray_udp(
            udp, A.random_payloads(random.Random(0), 400), until
        ),
        "udp receiver: mutated genuine": lambda: A.spray_udp(
            udp, A.mutations(random.Random(1), to_agency, 400), until
        ),
        "udp receiver: replayed genuine": lambda: A.spray_udp(udp, to_agency * 2, until),
        "udp receiver: wrong key, right key id": lambda: A.spray_udp(
            udp, A.sealed_under(key_id, Direction.SERVER_TO_AGENCY, forged * 10), until
        ),
        "udp receiver: unknown key id": lambda: A.spray_udp(
            udp, A.sealed_under(key_id ^ 0xFFFFFFFF, Direction.SERVER_TO_AGENCY, forged), until
        ),
        "udp receiver: largest datagrams": lambda: A.spray_udp(
            udp, (random.Random(6).randbytes(MAX_UDP) for _ in range(20)), until
        ),
        "udp server: random bytes from the receiver's port": lambda: A.spoof_udp(
            port, server_port, A.random_payloads(random.Random(2), 200), until
        ),
        "udp server: replayed reports": lambda: A.spoof_udp(port, server_port, reports * 5, until),
        "udp server: forged reports": lambda: A.spoof_udp(
            port,
            server_port,
            A.sealed_under(key_id, Direction.AGENCY_TO_SERVER, [lie] * 100),
            until,
        ),
    }


def _tls_each(
    address: tuple[str, int],
    creds: tuple[Path, Path] | None,
    send: bytes,
    count: int,
    until: float,
) -> list[bytes | None]:
    """``count`` TLS attempts presenting ``creds`` (None: no certificate), each sending ``send``."""
    out = []
    for _ in range(count):
        if time.monotonic() > until:
            break
        out.append(A.tls_attempt(address, *(creds or (None, None)), send=send, wait=1.0))
    return out


def tls_attacks(stage: Stage, forged: list[bytes], until: float) -> dict[str, Callable[[], Any]]:
    """At the receiver's TLS port: junk, and every certificate but the server's."""
    tls = ("127.0.0.1", stage.ports["tls"])
    tap = (stage.root / "tap-cert.pem", stage.root / "tap-key.pem")
    agency = (stage.agency / "agency-cert.pem", stage.agency / "agency-key.pem")
    return {
        "tls receiver: random bytes": lambda: A.spray_tcp(
            tls, A.random_payloads(random.Random(3), 40), until
        ),
        "tls receiver: tap certificate": lambda: _tls_each(
            tls, tap, forged[0] + forged[4], 5, until
        ),
        "tls receiver: the agency's own certificate": lambda: _tls_each(
            tls, agency, forged[1], 5, until
        ),
        "tls receiver: no certificate": lambda: _tls_each(tls, None, forged[2], 5, until),
    }


def retrieval_attacks(stage: Stage, until: float) -> dict[str, Callable[[], Any]]:
    """At the server's retrieval port: junk, wrong roles, another agency, huge asks."""
    retrieval = ("127.0.0.1", stage.ports["retrieval"])
    agency = (stage.agency / "agency-cert.pem", stage.agency / "agency-key.pem")
    other = (stage.other / "agency-cert.pem", stage.other / "agency-key.pem")
    tap = (stage.root / "tap-cert.pem", stage.root / "tap-key.pem")
    server = (stage.data / "tls" / "server.pem", stage.data / "tls" / "server.key")
    cmcc = pdu.StreamId(stage.handle, pdu.StreamKind.CMCC)
    ask = A.replay_request(1, cmcc, [(0, 5)])
    too_many = A.replay_request(99, cmcc, [(2 * i, 2 * i) for i in range(65)])
    huge = [
        A.replay_request(i + 1, pdu.StreamId(stage.handle, k), [r])
        for i, (r, k) in enumerate((r, k) for r in HUGE_RANGES for k in pdu.StreamKind)
    ]
    return {
        "retrieval: random bytes": lambda: A.spray_tcp(
            retrieval, A.random_payloads(random.Random(4), 40), until
        ),
        "retrieval: tap certificate": lambda: _tls_each(retrieval, tap, ask, 5, until),
        "retrieval: server certificate": lambda: _tls_each(retrieval, server, ask, 5, until),
        "retrieval: no certificate": lambda: _tls_each(retrieval, None, ask, 5, until),
        "retrieval: another agency asks for this one's streams": lambda: _tls_each(
            retrieval, other, ask, 5, until
        ),
        "retrieval: huge DER lengths": lambda: [
            A.tls_attempt(retrieval, *other, send=frame, wait=1.0) for frame in HUGE_FRAMES
        ],
        "retrieval: huge ranges": lambda: A.replay_results(retrieval, *agency, huge, wait=8.0),
        "retrieval: over 64 ranges in one request": lambda: [
            A.tls_attempt(retrieval, *agency, send=too_many, wait=2.0)
        ],
    }


def flood_plan(stage: Stage) -> dict[str, Callable[[], Any]]:
    """Idle connections past each listener's limit, at once, after the other attacks.

    Apart, because while they hold every slot the other attacks would only
    be refused "busy" and test nothing else.
    """
    p = stage.ports
    control = stage.data / "run" / "control.sock"
    return {
        "control: idle connections": lambda: A.control_idle(control, 24, FLOOD),
        "retrieval: idle connections": lambda: A.tcp_idle(
            ("127.0.0.1", p["retrieval"]), MAX_CONNECTIONS + 36, FLOOD
        ),
        "tls receiver: idle connections": lambda: A.tcp_idle(
            ("127.0.0.1", p["tls"]), MAX_CONNECTIONS + 36, FLOOD
        ),
    }


def fight(stage: Stage) -> Battle:
    """Set up, warm up, attack everything at once, settle, measure, stop, verify."""
    try:
        sniffer = A.LoopbackSniffer(0)
    except PermissionError as exc:
        pytest.skip(f"sniffing loopback needs root (AF_PACKET): {exc}")
    with sniffer:
        stage.setup()
        sniffer.port = stage.ports["udp"]
        stage.start_receiver()
        stage.start_server(RATE, WARM_UP + ATTACK_SECONDS + FLOOD + TAIL)
        genuine = sniffer.take(400, WARM_UP)
        # Reports start a second after the first envelope: on a loaded machine, wait on.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            s == stage.ports["udp"] for s, _t, _d in genuine
        ):
            genuine += sniffer.take(50, 0.5)
    assert any(t == stage.ports["udp"] for _s, t, _d in genuine), "no delivery datagram sniffed"
    assert any(s == stage.ports["udp"] for s, _t, _d in genuine), "no receiver report sniffed"
    pids = {"server": stage.server.pid, "receiver": stage.receiver.pid}
    before = {name: A.memory_kib(pid) for name, pid in pids.items()}
    until = time.monotonic() + ATTACK_SECONDS
    plan = attack_plan(stage, genuine, until)
    done = run_at_once(plan, ATTACK_SECONDS + 30)
    done.update(run_at_once(flood_plan(stage), FLOOD + 30))
    alive = {
        name: process.poll() is None
        for name, process in (("server", stage.server), ("receiver", stage.receiver))
    }
    if not all(alive.values()):
        return Battle(stage, done, before, {}, alive, {}, {}, None, None, len(genuine))
    wait_for(stage.stored, "the end of the feed", WARM_UP + ATTACK_SECONDS + FLOOD + TAIL + 20)
    status = wait_for(lambda: delivered(stage), "every stored record delivered", 20)
    # The log signs once a second and sends each checkpoint after its records: wait
    # until what the agency holds is all proven (files are flushed twice a second).
    stage.log_key.write_text(stage.mediate("log", "key").stdout)  # the carrier hands it over
    wait_for(lambda: verify(stage).stdout.count("ok: all verified") == 2, "checkpoints", 15)
    after = {name: A.memory_kib(pid) for name, pid in pids.items()}
    stopped = {
        "receiver": stage.stop(stage.receiver, stage.receiver_out),
        "server": stage.stop(stage.server, stage.server_out),
    }
    log_verify = stage.mediate("log", "verify", check=False)
    receive_verify = verify(stage)
    battle = Battle(
        stage, done, before, after, alive, status, stopped, log_verify, receive_verify, len(genuine)
    )
    print(battle.report())  # shown by pytest when a test fails
    return battle


def verify(stage: Stage) -> Any:
    """``mediate receive verify OUT --log-key KEY``: the agency's check against the chain."""
    return stage.mediate(
        "receive", "verify", str(stage.out), "--log-key", str(stage.log_key), check=False
    )


def run_at_once(plan: dict[str, Callable[[], Any]], limit: float) -> dict[str, Any]:
    """Each thunk in its own thread, all at once; their results by name."""
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {name: pool.submit(thunk) for name, thunk in plan.items()}
        return {name: future.result(timeout=limit) for name, future in futures.items()}


def delivered(stage: Stage) -> dict[str, Any] | None:
    """The status once every row of the warrant has everything (TLS acked, UDP no loss)."""
    status = stage.status()
    rows = [r for r in status["delivery"] if r["handle"] == stage.handle]
    for row in rows:
        if row["acknowledged"] is not None and row["acknowledged"] < row["appended"]:
            return None
        if row["acknowledged"] is None and (row["delivered"] < row["appended"] or row["lost"]):
            return None
    return status if len(rows) == 2 else None


def held(stage: Stage) -> dict[str, dict[str, Any]]:
    """The receiver's final gap report per stream (``cmII``, ``cmCC``)."""
    return json.loads((stage.out / stage.handle / "gaps.json").read_text())["streams"]
