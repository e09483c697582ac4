"""Property tests: append, read, cursors, reopening and crashes against a plain list.

Hypothesis writes a program of operations; it runs against the real log (real
files, real writer thread, a mock trio clock so the group-commit timer fires
only when the program says) and against the model, a list of what was
appended. A crash copies the stream directory as it is at that instant
(newest segment first, as a kill leaves it), optionally tears its tail, and
reopens the copy: every record that was durable before the crash must be
there, nothing may be invented, and the chain must verify.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from log_support import KEY

from mediation import pdu as P
from mediation.log import ContentKind, EvidenceLog, LogConfig, load_public_key, verify_stream
from mediation.log import format as F
from mediation.log.keys import public_key_path
from mediation.log.segments import list_segments

HANDLE = "w-40de11"
CONFIG = LogConfig(
    commit_records=4,
    commit_interval=0.002,
    checkpoint_records=5,
    checkpoint_interval=1.0,
    segment_bytes=4096,
    ring_bytes=1500,
    index_interval=3,
    cursor_persist_interval=0.001,
)
KINDS = [ContentKind.CMII, ContentKind.NOTICE]

append = st.tuples(
    st.just("append"),
    st.binary(max_size=400),
    st.sampled_from(KINDS),
    st.sampled_from(list(P.ClockStatus)),
)
operation = st.one_of(
    append,
    append,
    append,
    append,
    st.tuples(st.just("sync")),
    st.tuples(st.just("tick")),
    st.tuples(st.just("read"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("ack"), st.integers(0, 10**6)),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("crash"), st.floats(0, 1), st.binary(max_size=30)),
)


def _snapshot(src: Path, dst: Path) -> None:
    """Copy a stream directory newest segment first, as a kill at this instant leaves it."""
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir(), reverse=True):
        if entry.is_file() and entry.name != ".lock":
            with contextlib.suppress(FileNotFoundError):  # a temp file renamed meanwhile
                shutil.copyfile(entry, dst / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, dst / entry.name)


def _durable_end(directory: Path, durable: int) -> tuple[Path, int] | None:
    """The last segment and the offset just past record ``durable - 1`` in it."""
    segments = list_segments(directory)
    if not segments:
        return None
    first, path = segments[-1]
    data = path.read_bytes()
    try:
        offset = end = F.decode_header(data).size
    except ValueError:
        return None
    while offset < len(data) and first < durable:
        try:
            body, stop = F.read_frame(data, offset)
        except F.FrameError:
            break
        if body[0] == F.TYPE_DATA and F.body_seq(body) == durable - 1:
            end = stop
            break
        offset = stop
    return path, end


class Harness:
    def __init__(self, base: Path, clock: trio.testing.MockClock) -> None:
        self.data = base / "data"
        self.clock = clock
        self.model: list[tuple[bytes, ContentKind, P.ClockStatus]] = []
        self.acks: set[int] = {0}
        self.last_ack = 0
        self.stack = AsyncExitStack()

    @property
    def directory(self) -> Path:
        return self.data / "log" / HANDLE / "cmii"

    async def open(self) -> None:
        self.stack = AsyncExitStack()
        log = await self.stack.enter_async_context(EvidenceLog.open(self.data, CONFIG, key=KEY))
        self.stream = await log.stream(HANDLE, P.StreamKind.CMII)
        self.cursor = self.stream.named_cursor("lea-1")

    async def sync(self) -> None:
        if self.model:
            self.clock.jump(CONFIG.commit_interval)
            await self.stream.wait_durable(len(self.model) - 1)

    async def step(self, op: tuple) -> None:
        name = op[0]
        if name == "append":
            appended = self.stream.append_nowait(op[1], op[2], op[3])
            assert appended.seq == len(self.model)
            self.model.append(op[1:])
        elif name == "sync":
            await self.sync()
            assert self.stream.durable_seq == len(self.model) - 1
        elif name == "tick":
            self.clock.jump(CONFIG.checkpoint_interval)
            await trio.testing.wait_all_tasks_blocked()
        elif name == "read":
            await self.read(op[1], op[2])
        elif name == "ack" and self.stream.durable_seq >= 0:
            self.last_ack = max(self.last_ack, op[1] % (self.stream.durable_seq + 2))
            self.acks.add(self.last_ack)
            self.cursor.ack(self.last_ack)
        elif name == "reopen":
            await self.stack.aclose()
            await self.open()
            assert self.stream.next_seq == len(self.model)
            assert self.cursor.position == self.last_ack
        elif name == "crash":
            await self.crash(op[1], op[2])

    async def read(self, start: int, count: int) -> None:
        durable = self.stream.durable_seq + 1
        if durable == 0:
            return
        start %= durable
        records = await self.stream.cursor(start).read(count)
        assert 1 <= len(records) <= count
        expected = self.model[start : start + len(records)]
        assert [(r.payload, r.kind, r.clock) for r in records] == expected
        assert [r.seq for r in records] == list(range(start, start + len(records)))

    async def crash(self, keep: float, garbage: bytes) -> None:
        durable = self.stream.durable_seq + 1
        snapshot = self.data.parent / "snapshot"
        _snapshot(self.directory, snapshot)
        await self.stack.aclose()  # the live copy is thrown away below
        shutil.rmtree(self.directory)
        snapshot.rename(self.directory)
        tail = _durable_end(self.directory, durable)
        if tail is not None:
            path, end = tail
            size = path.stat().st_size
            with open(path, "r+b") as f:  # tear what was not yet durable
                f.truncate(end + int(keep * (size - end)))
                f.seek(0, 2)
                f.write(garbage)
        await self.open()
        survived = self.stream.next_seq
        assert durable <= survived <= len(self.model)
        event(f"crash: {'lost unsynced records' if survived < len(self.model) else 'kept all'}")
        event(f"crash: {'a torn tail was cut' if self.stream.stats.torn else 'clean tail'}")
        del self.model[survived:]
        assert self.cursor.position in self.acks
        self.last_ack = self.cursor.position

    async def finish(self) -> None:
        await self.sync()
        records = []
        cursor = self.stream.cursor(0)
        while len(records) < len(self.model):
            records.extend(await cursor.read(100))
        assert [(r.payload, r.kind, r.clock) for r in records] == self.model
        await self.stack.aclose()
        report = verify_stream(self.directory, load_public_key(public_key_path(self.data)), key=KEY)
        assert report.complete, report.line()
        assert report.records == len(self.model) and report.unsigned == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40))
def test_the_log_behaves_like_a_list(program: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as base:
        clock = trio.testing.MockClock()

        async def main() -> None:
            harness = Harness(Path(base), clock)
            await harness.open()
            for op in program:
                await harness.step(op)
            await harness.finish()

        trio.run(main, clock=clock)
