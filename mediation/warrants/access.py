"""Finding the registry key and opening the registry with it.

A registry made with a key file looks for it in ``--key-file``, then
``MEDIATION_KEY_FILE``, then the default path (see
:func:`~mediation.warrants.keys.default_key_file`). A passphrase registry
reads the passphrase from the environment variable named by
``--passphrase-env``, else ``MEDIATION_PASSPHRASE``; it is never a
command-line argument, where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
from collections.abc import Iterator
from pathlib import Path

from mediation.errors import UsageError
from mediation.warrants.keys import (
    ENV_KEY_FILE,
    ENV_PASSPHRASE,
    RegistryKey,
    default_key_file,
    read_key_file,
    read_passphrase,
)
from mediation.warrants.registry import WarrantRegistry


class KeyNeed(enum.Enum):
    REQUIRED = "required"  # the command reads or writes case data
    OPTIONAL = "optional"  # more detail with the key, handles only without
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class KeyOptions:
    """Where the person said the key is; both None means "the usual places"."""

    key_file: str | None = None
    passphrase_env: str | None = None


def key_file_path(options: KeyOptions) -> tuple[Path, bool]:
    """The key file to use, and whether the person named it (flag or environment)."""
    if options.key_file:
        return Path(options.key_file), True
    env = os.environ.get(ENV_KEY_FILE)
    if env:
        return Path(env), True
    return default_key_file(), False


def resolve_key(
    registry: WarrantRegistry, options: KeyOptions, need: KeyNeed
) -> RegistryKey | None:
    """The registry's key, checked against it; None if optional and nowhere to be found."""
    if need is KeyNeed.NONE:
        return None
    required = need is KeyNeed.REQUIRED
    if registry.key_mode == "passphrase":
        return _passphrase_key(registry, options, required)
    if options.passphrase_env:
        raise UsageError("--passphrase-env", "this registry uses a key file, not a passphrase")
    path, named = key_file_path(options)
    if not named and not path.exists():
        if required:
            raise UsageError(
                "--key-file",
                f"no key file at {path}; give --key-file FILE or set {ENV_KEY_FILE}",
            )
        return None
    if not named and not required and not os.access(path, os.R_OK):
        return None  # someone without access to the key: handles only, as intended
    key = read_key_file(path)
    registry.unlock(key, "--key-file")
    return key


def _passphrase_key(
    registry: WarrantRegistry, options: KeyOptions, required: bool
) -> RegistryKey | None:
    if options.key_file:
        raise UsageError("--key-file", f"this registry uses a passphrase (set {ENV_PASSPHRASE})")
    var = options.passphrase_env or ENV_PASSPHRASE
    passphrase = read_passphrase(var)
    if passphrase is None:
        if required:
            raise UsageError("--passphrase-env", f"set {var} to the registry passphrase")
        return None
    params = registry.kdf_params
    assert params is not None, "a passphrase registry stores its scrypt parameters"
    key = RegistryKey.from_passphrase(passphrase, params)
    registry.unlock(key, "--passphrase-env")
    return key


@contextlib.contextmanager
def open_registry(
    data_dir: Path, options: KeyOptions, need: KeyNeed, *, lock: bool = False
) -> Iterator[WarrantRegistry]:
    """The registry in ``data_dir``, unlocked as ``need`` says, and write-locked if asked.

    The lock is taken before anything is read, so what a command checks
    (an agency exists, a case identity is unused) still holds when it writes.
    """
    with (
        WarrantRegistry.open(data_dir) as registry,
        registry.locked() if lock else contextlib.nullcontext(),
    ):
        resolve_key(registry, options, need)
        yield registry
