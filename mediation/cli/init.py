"""`mediate init`: create the registry, its key, the tap CA and the audit trail."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mediation.cli.common import data_dir
from mediation.cli.registry import subcommand

if TYPE_CHECKING:
    from mediation.warrants.keys import KdfParams, RegistryKey


def _init_key(args: argparse.Namespace) -> tuple[RegistryKey, KdfParams | None, Path | None, str]:
    """The new registry's key: (key, scrypt parameters, key file, a line for people)."""
    from mediation.errors import UsageError
    from mediation.warrants.access import KeyOptions, key_file_path
    from mediation.warrants.keys import KdfParams, RegistryKey, read_key_file, read_passphrase

    if args.key_file and args.passphrase_env:
        raise UsageError("--passphrase-env", "give --key-file or --passphrase-env, not both")
    if args.passphrase_env:
        var = args.passphrase_env
        passphrase = read_passphrase(var)
        if passphrase is None:
            raise UsageError("--passphrase-env", f"set {var} to the new registry passphrase")
        kdf = KdfParams.fresh()
        note = f"registry key: derived from the passphrase in ${var} (scrypt)"
        return RegistryKey.from_passphrase(passphrase, kdf), kdf, None, note
    path, _ = key_file_path(KeyOptions(args.key_file))
    if path.exists():  # one key may serve several data directories
        return read_key_file(path), None, path, f"registry key: {path} (existing; mode 0600)"
    return RegistryKey.generate(), None, path, f"registry key: {path} (new; mode 0600)"


def cmd_init(args: argparse.Namespace) -> int:
    from mediation.errors import UsageError
    from mediation.warrants.audit import AuditEvent
    from mediation.warrants.authority import ServerAuthority, TapAuthority
    from mediation.warrants.keys import write_key_file
    from mediation.warrants.model import utc_now
    from mediation.warrants.registry import REGISTRY_DB, WarrantRegistry

    data, now = data_dir(args), utc_now()
    if (data / REGISTRY_DB).exists():
        raise UsageError("--data-dir", f"{data} already holds a registry")
    key, kdf, key_path, key_note = _init_key(args)
    if key_path is not None and not key_path.exists():
        write_key_file(key_path, key)
    with WarrantRegistry.initialise(data, key, kdf, now) as registry:
        TapAuthority.create(data / "ca", key, now)
        ServerAuthority.create(data / "ca", key, now)
        registry.record(AuditEvent("init", None, detail={"key": registry.key_mode}))
    print(f"initialised {data}")
    print(key_note)
    if key_path is not None and data.resolve() in key_path.resolve().parents:
        print("warning: the key file is inside the data directory; copies of it carry the key")
    print("keep the key apart from the data directory and its backups: without it nothing opens")
    print(f"tap CA: {data / 'ca' / 'ca.pem'} (signs taps only)")
    print(f"server CA: {data / 'ca' / 'server-ca.pem'} (give it to agencies: mediate server-ca)")
    print(f"audit trail: {data / 'audit' / 'audit.log'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    subcommand(subparsers, "init", "create the registry, its key and the tap CA", cmd_init)
