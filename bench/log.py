"""Evidence log throughput against a bare write + fdatasync loop, in the same run.

    python bench/log.py [--records N] [--size BYTES] [--dir DIR] [--rounds R] [--sweep]
    python bench/log.py --tap-batches N [--against CHECKOUT] [--rounds R] [--dir DIR]
                        [--fill-max BYTES] [--tap-scale K]

1. Appends ``--records`` records of ``--size`` bytes to a fresh log with
   the default group commit (``await stream.append`` flat out, then waits
   for the last to be durable), noting how many records each fdatasync
   covered; once unencrypted (format version 1) and once encrypted with a
   log key (version 2, what the server writes), alternating.
2. On the same filesystem, a bare loop of ``os.write`` + ``os.fdatasync``
   with exactly those batch sizes.
3. Prints records/s of each and the ratio (goal: log >= 60 % of bare), best
   of ``--rounds`` alternating rounds, since the machine is shared.
4. For scale, on the same batches, a loop doing only what the issue asks
   of each record (frame, checksum, copy, chain it with SHA-256), then
   writing and syncing: the best a log in Python can do one thread at a
   time; and the same loop without the I/O: the most a log in CPython can
   reach even if all writing overlapped on another core, since those steps
   hold the GIL (hashlib lets go of it only for 2 KiB or more).
5. Reads the records back through a cursor from memory (goal: >= 500,000
   records/s), in batches and one at a time; and from the segments (a
   replay of old records), unencrypted and encrypted.

``--sweep`` also tries other commit sizes and intervals, and measures the
append-to-durable latency of a paced stream (1000 records/s) for each
interval: the figures behind the defaults in ``mediation/log/config.py``.

``--tap-batches N`` measures only the light-load path instead: N tap
batches, one every 1/72 s (1,000 PDUs/s), each a ~1.1 KB CmII share and a
~11 KB CmCC share appended with ``append_many(commit=True)`` inside the
pool's ``held()`` behind a tap journal's barrier (an in-place overwrite),
as the server's ingest does; so three synced writes a batch, which the
loop makes itself at this load. Prints the CPU (all threads) and the wall
time from the first append to durable, per batch (means over batches, so
the rare writes that grow a file count; best of ``--rounds``), for this
checkout and ``--against`` (default ``/tmp/cmp/base``, the session's
pristine base) run alternately as subprocesses with this interpreter,
and their ratio. ``--tap-scale K`` makes each share K times as many
records (K=20: ~240 KB a batch, over ``INLINE_BYTES``: the writer
threads write it, as at saturation). ``--fill-max`` caps this checkout's zero fill
(``segments.FILL_MAX``) instead of 256 KiB: ``--against`` this same
checkout then compares two caps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
# --code DIR: import that checkout's mediation package (the --tap-batches workers).
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv[:-1] else str(HERE)
sys.path.insert(0, CODE)

import trio  # noqa: E402  (after the path is set)

from mediation.log import ContentKind, EvidenceLog, LogConfig, LogKey  # noqa: E402
from mediation.pdu import ClockStatus, StreamKind  # noqa: E402

HANDLE = "w-bench1"
KEY = LogKey(os.urandom(32))


async def log_run(
    base: Path, records: int, size: int, config: LogConfig, key: LogKey | None = None
) -> tuple[float, list[int], float]:
    """Records/s of appends until the last is durable, the batch sizes, and CPU µs a record.

    ``key``: encrypt the records (the server's format); None: unencrypted.
    The CPU time (all threads) says what a record costs even on a machine
    busy with other work, where records/s mostly say how busy it was.
    """
    directory = Path(tempfile.mkdtemp(dir=base))
    payload = os.urandom(size)
    try:
        async with EvidenceLog.open(directory, config, key=key) as log:
            stream = await log.stream(HANDLE, StreamKind.CMCC)
            append = stream.append
            kind, clock = ContentKind.CMCC, ClockStatus.SYNCHRONISED
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(records):
                appended = await append(payload, kind, clock)
            await appended.durable()
            elapsed = time.perf_counter() - start
            cpu_us = (time.process_time() - cpu) / records * 1e6
            return records / elapsed, list(stream.stats.batch_sizes), cpu_us
    finally:
        shutil.rmtree(directory)


def bare_run(base: Path, batches: list[int], size: int) -> float:
    """Records/s of os.write + os.fdatasync with the given batch sizes."""
    fd, name = tempfile.mkstemp(dir=base)
    buffer = os.urandom(size) * max(batches)
    try:
        start = time.perf_counter()
        for n in batches:
            os.write(fd, memoryview(buffer)[: n * size])
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(name)
    return sum(batches) / elapsed


def floor_run(base: Path, batches: list[int], size: int, write: bool = True) -> float:
    """Records/s of a loop doing only what the issue asks of each record, on the same batches.

    Each record is framed (length, checksum, sequence number, receive time),
    copied into the batch and chained (SHA-256 over the previous chain value
    and the record); each batch is then written and synced, or, with
    ``write=False``, dropped: the work that must hold CPython's GIL, whatever
    thread does the writing.
    """
    fd, name = tempfile.mkstemp(dir=base)
    payload, sha256, crc32 = os.urandom(size), hashlib.sha256, zlib.crc32
    pack_meta, pack_frame = struct.Struct(">BQqBB").pack, struct.Struct(">II").pack
    chain, seq = bytes(32), 0
    try:
        start = time.perf_counter()
        for n in batches:
            batch = bytearray()
            for _ in range(n):
                meta = pack_meta(1, seq, 1_700_000_000_000_000, 2, 0)
                batch += pack_frame(len(meta) + size, crc32(payload, crc32(meta)))
                batch += meta
                batch += payload
                h = sha256(chain)
                h.update(meta)
                h.update(payload)
                chain = h.digest()
                seq += 1
            if write:
                os.write(fd, batch)
                os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(name)
    return sum(batches) / elapsed


def chain_step_us(size: int, count: int = 50_000) -> float:
    """CPU microseconds of one chain step alone: SHA-256 over the previous value and a record."""
    payload, meta, sha256 = os.urandom(size), bytes(19), hashlib.sha256
    chain = bytes(32)
    start = time.process_time()
    for _ in range(count):
        h = sha256(chain)
        h.update(meta)
        h.update(payload)
        chain = h.digest()
    return (time.process_time() - start) / count * 1e6


def seal_step_us(size: int, count: int = 50_000) -> float:
    """CPU microseconds of one record's encryption alone, as the append path does it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    encrypt, payload, meta = AESGCM(os.urandom(32)).encrypt, os.urandom(size), bytes(19)
    start = time.process_time()
    for seq in range(count):
        nonce = bytes(4) + seq.to_bytes(8, "big")
        encrypt(nonce, meta[9:] + payload, meta[:9])
    return (time.process_time() - start) / count * 1e6


async def read_rates(base: Path, records: int, size: int) -> tuple[float, float]:
    """Cursor reads from memory: records/s in batches of 4096, and one by one."""
    directory = Path(tempfile.mkdtemp(dir=base))
    config = LogConfig(ring_bytes=records * (size + 200), max_pending_bytes=1 << 30)
    try:
        async with EvidenceLog.open(directory, config, key=KEY) as log:
            stream = await log.stream(HANDLE, StreamKind.CMCC)
            payload = os.urandom(size)
            for _ in range(records):
                appended = await stream.append(payload, ContentKind.CMCC)
            await appended.durable()
            cursor, got = stream.cursor(0), 0
            start = time.perf_counter()
            while got < records:
                got += len(await cursor.read(4096))
            batched = records / (time.perf_counter() - start)
            cursor, got = stream.cursor(0), 0
            start = time.perf_counter()
            async for _record in cursor:
                got += 1
                if got == records:
                    break
            single = records / (time.perf_counter() - start)
            return batched, single
    finally:
        shutil.rmtree(directory)


async def disk_read_rate(base: Path, records: int, size: int, key: LogKey | None) -> float:
    """Records/s read back from the segments (a replay), after reopening the log."""
    directory = Path(tempfile.mkdtemp(dir=base))
    try:
        await log_run_into(directory, records, size, key)
        async with EvidenceLog.open(directory, LogConfig(), key=key) as log:
            stream = await log.stream(HANDLE, StreamKind.CMCC)
            cursor, got = stream.cursor(0), 0
            start = time.perf_counter()
            while got < records:
                got += len(await cursor.read(4096))
            return records / (time.perf_counter() - start)
    finally:
        shutil.rmtree(directory)


async def log_run_into(directory: Path, records: int, size: int, key: LogKey | None) -> None:
    payload = os.urandom(size)
    async with EvidenceLog.open(directory, LogConfig(), key=key) as log:
        stream = await log.stream(HANDLE, StreamKind.CMCC)
        for _ in range(records):
            appended = await stream.append(payload, ContentKind.CMCC)
        await appended.durable()


async def latency(base: Path, config: LogConfig, rate: int, seconds: float) -> tuple[float, float]:
    """Append-to-durable latency (p50, p99, ms) of a stream paced at ``rate``/s."""
    directory = Path(tempfile.mkdtemp(dir=base))
    waits: list[float] = []
    try:
        async with (
            EvidenceLog.open(directory, config, key=None) as log,
            trio.open_nursery() as nursery,
        ):
            stream = await log.stream(HANDLE, StreamKind.CMII)

            async def measure(appended: object, t0: float) -> None:
                await appended.durable()  # type: ignore[attr-defined]
                waits.append(time.perf_counter() - t0)

            for i in range(int(rate * seconds)):
                await trio.sleep_until(trio.current_time() + 1 / rate) if i else None
                t0 = time.perf_counter()
                nursery.start_soon(measure, stream.append_nowait(b"x" * 200, ContentKind.CMII), t0)
    finally:
        shutil.rmtree(directory)
    waits.sort()
    return waits[len(waits) // 2] * 1000, waits[int(len(waits) * 0.99)] * 1000


async def sweep(base: Path, records: int, size: int) -> None:
    print("commit sweep (records/s of the log, bare loop on the same batches):")
    for n in (64, 128, 256, 512, 1024):
        rate, batches, _cpu = await log_run(base, records, size, LogConfig(commit_records=n))
        bare = bare_run(base, batches, size)
        print(
            f"  N={n:5d}: log {rate:9.0f}  bare {bare:9.0f}  ratio {rate / bare:5.2f}  "
            f"median batch {statistics.median(batches):6.0f}"
        )
    print("latency at 1000 records/s (append to durable, ms):")
    for t in (0.0005, 0.001, 0.002, 0.005, 0.010):
        p50, p99 = await latency(base, LogConfig(commit_interval=t), 1000, 2.0)
        print(f"  T={t * 1000:4.1f} ms: p50 {p50:6.2f}  p99 {p99:6.2f}")


TAP_SPACING = 1 / 72  # tap batches a second at 1,000 PDUs/s (docs/architecture.md)
TAP_WARMUP = 20  # batches not counted: the journal's first write replaces its file
CMII_SHARE = [bytes([0x30]) * 220] * 5  # ~1.1 KB of IRI
CMCC_SHARE = [bytes([0x31]) * 790] * 14  # ~11 KB of content


async def tap_batch_costs(
    base: Path, batches: int, scale: int = 1
) -> tuple[list[float], list[float]]:
    """CPU and wall µs of each tap batch, light load at ``scale`` 1 (the module docstring)."""
    from mediation.server.tap_journal import JournalFile

    directory = Path(tempfile.mkdtemp(dir=base))
    journal = JournalFile(directory / "bench.journal")
    cpu, wall = [], []
    clock = ClockStatus.SYNCHRONISED
    try:
        async with EvidenceLog.open(directory, LogConfig(), key=KEY) as log:
            cmii = await log.stream(HANDLE, StreamKind.CMII)
            cmcc = await log.stream(HANDLE, StreamKind.CMCC)
            for n in range(TAP_WARMUP + batches):
                await trio.sleep(TAP_SPACING)
                c0, w0 = time.process_time(), time.perf_counter()
                barrier = journal.set(b'{"last": %d, "entries": []}\n' % n)
                with log.pool.held():
                    cmii.append_many(
                        CMII_SHARE * scale, ContentKind.CMII, clock, None, True, barrier
                    )
                    cmcc.append_many(
                        CMCC_SHARE * scale, ContentKind.CMCC, clock, None, True, barrier
                    )
                await cmii.wait_durable(cmii.next_seq - 1)
                await cmcc.wait_durable(cmcc.next_seq - 1)
                if n >= TAP_WARMUP:
                    cpu.append((time.process_time() - c0) * 1e6)
                    wall.append((time.perf_counter() - w0) * 1e6)
    finally:
        shutil.rmtree(directory)
    return cpu, wall


def tap_compare(
    base: Path, batches: int, rounds: int, against: Path, fill_max: int | None, scale: int = 1
) -> None:
    """Run this checkout and ``against`` alternately as workers; print per batch and ratios."""
    this = [str(HERE)] + ([] if fill_max is None else ["--fill-max", str(fill_max)])
    workers = {f"this {' '.join(this)}": this, f"against {against}": [str(against)]}
    scaled = ["--tap-scale", str(scale)]
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in workers}
    for _ in range(rounds):
        for name, code in workers.items():
            out = subprocess.run(
                [sys.executable, __file__, "--tap-worker", str(batches), "--dir", str(base),
                 *scaled, "--code", *code],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            runs[name].append(tuple(json.loads(out.stdout.splitlines()[-1])))
    best = {name: (min(c for c, _, _ in r), min(w for _, w, _ in r)) for name, r in runs.items()}
    for name, (cpu, wall) in best.items():
        print(f"{name}: a tap batch {cpu:6.0f} us CPU, {wall:6.0f} us wall (best of {rounds})")
        print(
            "  rounds (mean CPU/wall, median wall us): "
            + ", ".join(f"{c:.0f}/{w:.0f}, {m:.0f}" for c, w, m in runs[name])
        )
    (new_cpu, new_wall), (old_cpu, old_wall) = best.values()
    print(f"ratio this/against: CPU {new_cpu / old_cpu:.2f}x, wall {new_wall / old_wall:.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="filesystem to test (default: cwd)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--tap-batches", type=int, help="only the light-load tap batch path")
    parser.add_argument("--against", type=Path, default=Path("/tmp/cmp/base"))
    parser.add_argument("--fill-max", type=int, help="this checkout's zero fill cap, bytes")
    parser.add_argument("--tap-scale", type=int, default=1, help="records a tap share, times")
    parser.add_argument("--tap-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)  # read before the imports
    args = parser.parse_args()
    if args.tap_worker:
        if args.fill_max:
            from mediation.log import segments

            segments.FILL_MAX = args.fill_max
        cpu, wall = await tap_batch_costs(args.dir, args.tap_worker, args.tap_scale)
        print(json.dumps([statistics.fmean(cpu), statistics.fmean(wall), statistics.median(wall)]))
        return
    base = Path(tempfile.mkdtemp(prefix="bench-log-", dir=args.dir or Path.cwd()))
    if args.tap_batches:
        try:
            tap_compare(
                base, args.tap_batches, args.rounds, args.against, args.fill_max, args.tap_scale
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    try:
        logs, sealed, bares, floors, ceilings, all_batches = [], [], [], [], [], []
        cpu_plain, cpu_sealed = [], []
        for _ in range(args.rounds):
            rate, batches, cpu = await log_run(base, args.records, args.size, LogConfig())
            logs.append(rate)
            cpu_plain.append(cpu)
            rate, _, cpu = await log_run(base, args.records, args.size, LogConfig(), KEY)
            sealed.append(rate)
            cpu_sealed.append(cpu)
            bares.append(bare_run(base, batches, args.size))
            floors.append(floor_run(base, batches, args.size))
            ceilings.append(floor_run(base, batches, args.size, write=False))
            all_batches.extend(batches)
        log_best, bare_best = max(logs), max(bares)
        floor_best, ceiling_best = max(floors), max(ceilings)
        chain_us = min(chain_step_us(args.size) for _ in range(args.rounds))
        seal_us = min(seal_step_us(args.size) for _ in range(args.rounds))
        print(f"records of {args.size} bytes, {args.records} per round, best of {args.rounds}")
        print(f"group commit: median {statistics.median(all_batches):.0f} records per fdatasync")
        sealed_best = max(sealed)
        print(f"log:  {log_best:10.0f} records/s (unencrypted, format version 1)")
        print(
            f"log, encrypted: {sealed_best:10.0f} records/s (AES-256-GCM, version 2), "
            f"ratio {sealed_best / log_best:.2f} to the unencrypted log, "
            f"{sealed_best / bare_best:.2f} to bare"
        )
        plain_us, sealed_us = min(cpu_plain), min(cpu_sealed)
        print(
            f"CPU a record: {plain_us:.2f} us unencrypted, {sealed_us:.2f} us encrypted "
            f"(+{sealed_us - plain_us:.2f} us, ratio {plain_us / sealed_us:.2f})"
        )
        print(f"bare: {bare_best:10.0f} records/s (os.write + fdatasync, same batch sizes)")
        print(f"ratio: {log_best / bare_best:.2f} (goal >= 0.60)")
        print(
            f"floor:   {floor_best:10.0f} records/s, ratio {floor_best / bare_best:.2f} "
            "(only frame, checksum, copy and chain each record; write and sync each batch)"
        )
        print(
            f"ceiling: {ceiling_best:10.0f} records/s, ratio {ceiling_best / bare_best:.2f} "
            "(the same without the I/O: the GIL-held part of any CPython log)"
        )
        print(
            f"chain step alone: {chain_us:.2f} us a record; the bare loop: "
            f"{1e6 / bare_best:.2f} us a record"
        )
        print(f"encryption step alone: {seal_us:.2f} us a record (AES-256-GCM)")
        batched, single = await read_rates(base, min(args.records, 100_000), args.size)
        print(
            f"cursor from memory: {batched:10.0f} records/s in batches, "
            f"{single:10.0f} records/s one by one (goal >= 500000)"
        )
        replay = min(args.records, 100_000)
        plain_disk = await disk_read_rate(base, replay, args.size, None)
        sealed_disk = await disk_read_rate(base, replay, args.size, KEY)
        print(
            f"cursor from the segments: {plain_disk:10.0f} records/s unencrypted, "
            f"{sealed_disk:10.0f} records/s encrypted (ratio {sealed_disk / plain_disk:.2f})"
        )
        if args.sweep:
            await sweep(base, args.records, args.size)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
