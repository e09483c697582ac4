"""The key of an agency's UDP endpoint, and the file the agency is given.

Every UDP delivery datagram is sealed (AES-256-GCM, see
``mediation/protocol/sealed.py``) under a 32-octet key that only the
server and that endpoint's receiver hold. It is created when the endpoint
is registered, kept in the agency's sealed details in the registry, and
handed to the agency as a small TOML file, mode 0600::

    # mediation UDP delivery key ...
    agency = "a-1b2c3d"
    key_id = "5e1f00a7"
    key = "<64 hex digits>"

``mediate receive --udp-key FILE`` reads it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from mediation.durable import write_new
from mediation.errors import UsageError

KEY_BYTES = 32
MAX_KEY_FILE = 4096  # octets; a key file is about 300
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def new_udp_key(used_ids: Iterable[int]) -> tuple[int, bytes]:
    """A fresh random key and a 4-octet key id not among ``used_ids``."""
    used = set(used_ids)
    while True:
        key_id = int.from_bytes(os.urandom(4), "big")
        if key_id not in used:
            return key_id, os.urandom(KEY_BYTES)


def key_file_text(agency: str, key_id: int, key: bytes) -> str:
    """The key file's TOML (see the module docstring)."""
    return (
        "# mediation UDP delivery key: seals (encrypts and authenticates) every UDP\n"
        "# datagram between the mediation server and this agency endpoint.\n"
        "# For `mediate receive --udp HOST:PORT --udp-key FILE`. Keep it secret\n"
        "# (mode 0600): whoever holds it can read and forge this delivery.\n"
        f'agency = "{agency}"\n'
        f'key_id = "{key_id:08x}"\n'
        f'key = "{key.hex()}"\n'
    )


def check_new_file(path: Path, field: str) -> None:
    """Refuse, before anything is written, a key file that could not be created.

    Raises:
        UsageError: ``path`` exists, or its directory does not.
    """
    if path.exists():
        raise UsageError(field, f"{path} exists; choose another file or move it away")
    if not path.parent.is_dir():
        raise UsageError(field, f"{path.parent} is not a directory")


def write_key_file(path: Path, agency: str, key_id: int, key: bytes, field: str) -> None:
    """Create the key file, mode 0600, durably; never overwrites.

    Raises:
        UsageError: the file exists or cannot be written (names ``field``).
    """
    check_new_file(path, field)
    try:
        write_new(path, key_file_text(agency, key_id, key).encode("ascii"), 0o600)
    except FileExistsError:
        raise UsageError(field, f"{path} exists; choose another file or move it away") from None
    except OSError as exc:
        raise UsageError(field, f"cannot write {path}: {exc.strerror or exc}") from None


def read_key_file(path: Path, field: str = "--udp-key") -> tuple[int, bytes]:
    """The key id and key in a key file written by :func:`write_key_file`.

    Raises:
        UsageError: unreadable, not TOML, or without a valid ``key_id`` and
        ``key``; names ``field`` and says where the file comes from.
    """
    fix = "ask the carrier for `mediate agency udp-key NAME --out FILE`"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise UsageError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_KEY_FILE:
        raise UsageError(field, f"{path} is too large for a UDP key file; {fix}")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise UsageError(field, f"{path} is not a UDP key file (TOML); {fix}") from None
    key_id, key = data.get("key_id"), data.get("key")
    if not isinstance(key_id, str) or not _HEX_ID.fullmatch(key_id):
        raise UsageError(field, f"{path}: key_id must be 8 hex digits; {fix}")
    if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
        raise UsageError(field, f"{path}: key must be 64 hex digits; {fix}")
    return int(key_id, 16), bytes.fromhex(key)
