"""The warrant registry: one SQLite file in the data directory.

Layout of the data directory this module owns::

    registry.db      SQLite: plaintext handles and times, sealed details
    registry.lock    flock()ed by every command that writes
    audit/audit.log  the hash-chained audit trail (see ``audit.py``)
    ca/              the tap CA (see ``authority.py``)
    run/             the running server's control socket

Every write is one SQLite transaction that also appends one audit entry
and moves the audit anchor; a refused command writes nothing at all.
Nothing plaintext that identifies a case is ever handed to SQLite, so its
journal, free pages and backups hold only ciphertext.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mediation.durable import write_new
from mediation.errors import UsageError
from mediation.warrants import rows
from mediation.warrants.audit import Anchor, AuditEvent, AuditTrail
from mediation.warrants.keys import KdfParams, RegistryKey, RegistryKeyError
from mediation.warrants.model import Agency, RegistrySnapshot, Tap, Warrant

REGISTRY_DB = "registry.db"
LOCK_FILE = "registry.lock"
AUDIT_LOG = Path("audit") / "audit.log"
SCHEMA_VERSION = "1"
LOCK_WAIT_SECONDS = 10.0

Writes = Callable[[sqlite3.Connection], None]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    # Overwrite freed pages with zeros: old ciphertexts do not linger either.
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class WarrantRegistry:
    """Warrants, agencies and taps, their sealed details, and the audit anchor."""

    def __init__(self, data_dir: Path, conn: sqlite3.Connection) -> None:
        self.data_dir = data_dir
        self.audit = AuditTrail(data_dir / AUDIT_LOG)
        self._conn = conn
        self.key: RegistryKey | None = None

    # Opening ----------------------------------------------------------------

    @classmethod
    def initialise(
        cls, data_dir: Path, key: RegistryKey, kdf: KdfParams | None, now: dt.datetime
    ) -> WarrantRegistry:
        """Create the registry in ``data_dir`` (made 0700); refuses an existing one."""
        db = data_dir / REGISTRY_DB
        if db.exists():
            raise UsageError("--data-dir", f"{data_dir} already holds a registry")
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("audit", "ca", "run"):
            (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
        # Created empty with mode 0600 first (SQLite would use the umask), and
        # durably: the directory entry survives a power cut like the rows.
        write_new(db, b"", 0o600)
        conn = _connect(db)
        conn.executescript(rows.SCHEMA)
        meta = {
            "schema": SCHEMA_VERSION,
            "key_mode": "passphrase" if kdf else "file",
            "kdf": kdf.to_json() if kdf else "",
            "key_check": base64.b64encode(key.check_value()).decode("ascii"),
            "generation": "0",
            "audit_count": "0",
            "audit_head": Anchor().head,
            "audit_mac": key.mac("audit-anchor", Anchor().message()),
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        registry = cls(data_dir, conn)
        registry.key = key
        return registry

    @classmethod
    def open(cls, data_dir: Path) -> WarrantRegistry:
        """The registry in ``data_dir``, without its key yet (see :meth:`unlock`)."""
        db = data_dir / REGISTRY_DB
        if not db.is_file():
            raise UsageError(
                "--data-dir",
                f"{data_dir} holds no registry; run `mediate init --data-dir {data_dir}`",
            )
        registry = cls(data_dir, _connect(db))
        try:
            schema = registry.meta("schema")
        except sqlite3.DatabaseError:
            schema = None
        if schema != SCHEMA_VERSION:
            registry.close()
            raise UsageError("--data-dir", f"{db} is not a version {SCHEMA_VERSION} registry")
        return registry

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> WarrantRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    @property
    def key_mode(self) -> str:
        return self.meta("key_mode") or "file"

    @property
    def kdf_params(self) -> KdfParams | None:
        text = self.meta("kdf")
        return KdfParams.from_json(text) if text else None

    @property
    def generation(self) -> int:
        """Bumped by every change; a server polls it to notice changes it was not told of."""
        return int(self.meta("generation") or 0)

    def unlock(self, key: RegistryKey, field: str = "--key-file") -> None:
        """Accept ``key`` if it is this registry's; a wrong one is a clear error."""
        check = base64.b64decode(self.meta("key_check") or "")
        if not key.matches(check):
            what = "passphrase" if self.key_mode == "passphrase" else "key file"
            raise UsageError(field, f"this {what} does not open the registry in {self.data_dir}")
        self.key = key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's write lock: one writer (and audit appender) at a time."""
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise UsageError(
                            "registry", "busy: another mediate command holds its lock"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    # Reading ----------------------------------------------------------------

    def warrants(self, include_removed: bool = True) -> list[Warrant]:
        sql = "SELECT * FROM warrants"
        if not include_removed:
            sql += " WHERE removed IS NULL"
        return [
            rows.warrant_from_row(r, self.key) for r in self._conn.execute(sql + " ORDER BY rowid")
        ]

    def warrant(self, handle: str) -> Warrant | None:
        row = self._conn.execute("SELECT * FROM warrants WHERE handle = ?", (handle,)).fetchone()
        return None if row is None else rows.warrant_from_row(row, self.key)

    def agencies(self, include_removed: bool = False) -> list[Agency]:
        sql = "SELECT * FROM agencies" + ("" if include_removed else " WHERE removed IS NULL")
        return [
            rows.agency_from_row(r, self.key) for r in self._conn.execute(sql + " ORDER BY rowid")
        ]

    def agency(self, handle: str) -> Agency | None:
        row = self._conn.execute("SELECT * FROM agencies WHERE handle = ?", (handle,)).fetchone()
        return None if row is None else rows.agency_from_row(row, self.key)

    def find_agency(self, name_or_handle: str) -> Agency | None:
        """A current agency by handle or by name (names are sealed: compared after opening)."""
        for agency in self.agencies():
            if agency.handle == name_or_handle:
                return agency
            if agency.details is not None and agency.details.name == name_or_handle:
                return agency
        return None

    def taps(self) -> list[Tap]:
        return [
            rows.tap_from_row(r, self.key)
            for r in self._conn.execute("SELECT * FROM taps ORDER BY name")
        ]

    def tap(self, name: str) -> Tap | None:
        row = self._conn.execute("SELECT * FROM taps WHERE name = ?", (name,)).fetchone()
        return None if row is None else rows.tap_from_row(row, self.key)

    def snapshot(self) -> RegistrySnapshot:
        """Everything current, decrypted, read in one transaction."""
        self._conn.execute("BEGIN")
        try:
            return RegistrySnapshot(
                generation=self.generation,
                warrants=tuple(self.warrants(include_removed=False)),
                agencies=tuple(self.agencies()),
                taps=tuple(self.taps()),
            )
        finally:
            self._conn.execute("COMMIT")

    def anchor(self) -> Anchor:
        return Anchor(int(self.meta("audit_count") or 0), self.meta("audit_head") or Anchor().head)

    def anchor_authentic(self) -> bool | None:
        """Whether the anchor's HMAC holds; None without the key (it cannot be checked)."""
        if self.key is None:
            return None
        return secrets.compare_digest(
            self.key.mac("audit-anchor", self.anchor().message()), self.meta("audit_mac") or ""
        )

    def new_handle(self, prefix: str) -> str:
        """A fresh ``w-``/``a-`` handle: 24 random bits, retried until unused."""
        table = {"w": "warrants", "a": "agencies"}[prefix]
        for _ in range(1000):
            handle = f"{prefix}-{secrets.token_hex(3)}"
            if not self._conn.execute(
                f"SELECT 1 FROM {table} WHERE handle = ?", (handle,)
            ).fetchone():
                return handle
        raise RuntimeError(f"no free {prefix}- handle after 1000 tries")

    # Writing ----------------------------------------------------------------

    def record(
        self, event: AuditEvent, writes: Writes | None = None, now: dt.datetime | None = None
    ) -> None:
        """Apply ``writes`` and append the audit entry for ``event``, all or nothing.

        The audit entry is made durable before the SQLite commit: if the two
        are torn apart by a crash, the trail has an entry the registry does
        not (``audit verify`` reports it), never a change without an entry.
        """
        key = self._require_key()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if writes is not None:
                writes(conn)
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'"
                )
            entry = self.audit.build(event, self.anchor(), now or dt.datetime.now(dt.UTC))
            anchor = Anchor(entry["seq"], entry["hash"])
            self._set_meta("audit_count", str(anchor.count))
            self._set_meta("audit_head", anchor.head)
            self._set_meta("audit_mac", key.mac("audit-anchor", anchor.message()))
            self.audit.append(entry)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _set_meta(self, name: str, value: str) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _require_key(self) -> RegistryKey:
        if self.key is None:
            raise UsageError("--key-file", "this command needs the registry key")
        return self.key

    def _upsert(self, table: str, row: tuple, event: AuditEvent) -> None:
        """Insert or update in place (keeping the rowid, hence the listing order), audited."""
        names = rows.COLUMNS[table]
        sql = (
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT({names[0]}) DO UPDATE SET "
            + ", ".join(f"{n} = excluded.{n}" for n in names[1:])
        )
        self.record(event, lambda c: c.execute(sql, row))

    def save_warrant(self, warrant: Warrant, event: AuditEvent) -> None:
        """Insert or update ``warrant`` (with its details) and audit it."""
        self._upsert("warrants", rows.warrant_row(warrant, self._require_key()), event)

    def save_agency(self, agency: Agency, event: AuditEvent) -> None:
        self._upsert("agencies", rows.agency_row(agency, self._require_key()), event)

    def save_tap(self, tap: Tap, event: AuditEvent) -> None:
        self._upsert("taps", rows.tap_row(tap, self._require_key()), event)


def load_snapshot(data_dir: Path, key: RegistryKey) -> RegistrySnapshot:
    """Open, unlock, read everything, close: what a server does on each reload."""
    with WarrantRegistry.open(data_dir) as registry:
        registry.unlock(key)
        try:
            return registry.snapshot()
        except RegistryKeyError as exc:
            raise UsageError("registry", f"a sealed value does not open: {exc}") from None


def read_generation(data_dir: Path) -> int:
    """The registry's change counter, without the key (cheap enough to poll each second)."""
    with WarrantRegistry.open(data_dir) as registry:
        return registry.generation
