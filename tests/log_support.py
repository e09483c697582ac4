"""What the evidence log tests share: the keys they encrypt with."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mediation.log import LOG_KEY_PURPOSE, LogKey
from mediation.warrants.keys import RegistryKey, write_key_file

# Obviously fake keys. The log key is derived from a registry key, as the server does.
REGISTRY_KEY = RegistryKey(hashlib.sha256(b"mediation test registry key").digest())
KEY = LogKey(REGISTRY_KEY.derive(LOG_KEY_PURPOSE))
OTHER_REGISTRY_KEY = RegistryKey(hashlib.sha256(b"mediation another registry key").digest())
OTHER_KEY = LogKey(OTHER_REGISTRY_KEY.derive(LOG_KEY_PURPOSE))


def key_file(directory: Path, key: RegistryKey = REGISTRY_KEY) -> Path:
    """A registry key file (mode 0600) in ``directory``, for ``--key-file``."""
    path = directory / "registry.key"
    write_key_file(path, key)
    return path
