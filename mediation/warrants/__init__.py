"""Warrants, agencies and taps: the model, validation, the encrypted registry, the audit trail.

Modules, each with one job::

    model.py       frozen records (Warrant, Agency, Tap, ...) and warrant states
    validate.py    what a person typed -> model values, or one UsageError
    keys.py        the registry key: key file, passphrase (scrypt), AES-GCM sealing
    rows.py        records <-> SQLite rows (the sealed ``details`` columns)
    registry.py    WarrantRegistry: the SQLite file, its lock, audited writes
    access.py      finding the key and opening the registry with it
    operations.py  add/modify/remove warrants, agencies and taps, checked first
    audit.py       the hash-chained audit trail and its verification
    authority.py   the tap CA and tap credential bundles

Import the submodules directly; this package imports nothing itself, so
``mediate --help`` does not pay for ``cryptography``.
"""
