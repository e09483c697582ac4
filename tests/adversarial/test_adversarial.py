"""Every listening port of the server and the receiver attacked at once, traffic flowing.

The battle (conftest.py) runs once: a server process delivering a live
intercept to a ``mediate receive`` process over UDP and TLS, while random
bytes, mutated, replayed and forged datagrams, wrong-role certificates,
huge lengths and ranges, and hostile control-socket clients hit the
receiver's UDP and TLS ports, the server's UDP delivery socket, its
retrieval port and its control socket. Each test judges one promise.
"""

from __future__ import annotations

import re

from conftest import Battle, held
from scenario import MADE_UP_HANDLE

# Growth allowed from the baseline (after warm-up) to the *peak* (VmHWM) at the end.
# The feed itself adds well under 1 MiB of records (the log's in-memory ring is
# 16 MiB per stream but is filled by record bytes, here ~500 KiB at most), and
# every attack is bounded: what remains is allocator noise, the TLS contexts and
# the per-connection buffers of at most 16 control and a few TLS connections at
# once. A request that allocated in proportion to a number the attacker chose
# (a 2 GiB DER length, a 10^12-record range) would pass this by far.
MEMORY_GROWTH_KIB = 30 * 1024


def test_every_attack_ran(battle: Battle) -> None:
    assert battle.sniffed > 0
    for name, result in battle.done.items():
        assert result and all(result) if isinstance(result, tuple) else result, (name, result)


def test_both_processes_survive_and_stop_cleanly_with_sigterm(battle: Battle) -> None:
    stage = battle.stage
    for name, out in (("server", stage.server_out), ("receiver", stage.receiver_out)):
        assert battle.alive_after[name], f"{name} died:\n{out.text()[-6000:] if out else ''}"
    for name, (code, output) in battle.stopped.items():
        assert code == 0, f"{name} exited {code}:\n{output[-4000:]}"
    assert battle.stopped["server"][1].rstrip().endswith("stopped"), battle.stopped["server"][1][
        -2000:
    ]
    assert "stopped: SIGTERM received" in battle.stopped["receiver"][1]


def test_memory_stays_flat(battle: Battle) -> None:
    for name in ("server", "receiver"):
        before, after = battle.memory_before[name], battle.memory_after[name]
        growth = after["VmHWM"] - before["VmRSS"]
        assert growth < MEMORY_GROWTH_KIB, f"{name}: {before} -> {after}"


def test_nothing_forged_is_stored(battle: Battle) -> None:
    stage = battle.stage
    # Every record the agency holds is one the server's signed chain proves.
    verified = battle.receive_verify
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "FAULT" not in verified.stdout
    assert verified.stdout.count("ok: all verified") == 2, verified.stdout
    # Nothing for the made-up handle, nothing beside the one warrant.
    names = sorted(p.name for p in stage.out.iterdir())
    assert names == sorted([stage.handle, "udp-sessions.json"]), names
    assert not (stage.out / MADE_UP_HANDLE).exists()
    # Wrong-role certificates got not a byte of any stream, from either side.
    for name in (
        "tap certificate",
        "server certificate",
        "no certificate",
        "another agency asks for this one's streams",
    ):
        answers = battle.done[f"retrieval: {name}"]
        assert all(stage.handle.encode() not in (a or b"") for a in answers), name
    for name in ("tap certificate", "the agency's own certificate", "no certificate"):
        assert not any(battle.done[f"tls receiver: {name}"]), name


def test_nothing_real_is_lost(battle: Battle) -> None:
    verified = battle.log_verify
    assert verified.returncode == 0, verified.stdout + verified.stderr
    appended = {
        row["stream"]: row["appended"]
        for row in battle.status["delivery"]
        if row["handle"] == battle.stage.handle
    }
    streams = held(battle.stage)
    assert set(appended) == {"cmII", "cmCC"} == set(streams)
    stored = battle.stage.stored()
    assert stored is not None and sum(appended.values()) > stored > 0  # + notices
    for stream, count in appended.items():
        entry = streams[stream]
        assert entry["held"] == count, (stream, entry)
        assert entry["missing"] == [] and entry["highestSequence"] == count - 1, (stream, entry)


def test_every_refusal_is_counted(battle: Battle) -> None:
    status = battle.status
    retrieval = status["retrieval"]
    assert retrieval["refused"] > 0 and retrieval["refused_by_reason"], retrieval
    [udp] = status["udp_refused"].values()
    assert sum(udp.values()) > 0, udp
    refused = status["control"]["refused"]
    for reason in ("too_long", "too_deep", "busy", "not_json", "bad_request"):
        assert refused[reason] > 0, (reason, refused)
    summary = battle.stopped["receiver"][1]
    dropped = re.search(r"unauthenticated datagrams dropped: (.*)", summary)
    assert dropped is not None, summary[-3000:]
    counts = dict(re.findall(r"([a-z ]+?) (\d+)(?:, |$)", dropped.group(1)))
    assert sum(int(n) for n in counts.values()) > 0, dropped.group(1)
    connections = re.search(r"refused connections (\d+)", summary)
    assert connections is not None and int(connections.group(1)) >= 15, summary[-3000:]


def test_huge_replay_ranges_are_answered_within_bounds(battle: Battle) -> None:
    import pytest

    pytest.skip("pending the merge of wip/retrieval (retrieval bounds) into main")
