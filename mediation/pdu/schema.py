"""The compiled ASN.1 schema: compiled once per process, from ``asn1/``."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import asn1tools

MODULE_FILES = ("IAS-CmII.asn", "IAS-CmCC.asn", "Mediation-Delivery.asn")

CMII_OID = "1.2.840.113737.2.1.1.0.0"
CMCC_OID = "1.2.840.113737.2.1.1.1.0"
# Versions of the CmII module after .0.0 stay under this arc.
CMII_ARC = "1.2.840.113737.2.1.1.0."


def asn1_dir() -> Path:
    """Where the ASN.1 modules are: ``MEDIATION_ASN1_DIR`` or the repo's ``asn1/``."""
    override = os.environ.get("MEDIATION_ASN1_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "asn1"


@functools.cache
def compiled() -> asn1tools.compiler.Specification:
    """The three modules compiled with asn1tools' ``der`` codec.

    ``der`` and not ``ber``: asn1tools' BER encoder drops the seconds of a
    GeneralizedTime whose seconds are zero, which some decoders read as a
    fraction of a minute. DER output is valid BER and always has seconds.
    """
    return compile_modules(MODULE_FILES)


# asn1tools' compile is mostly parsing the modules' text (pyparsing): about
# 0.15 of its 0.16 s for the three IAS modules, which every process paid at
# its start (a tap too, for its lease reports, and for the tap link's
# module). The parse of the repository's modules is kept in PARSED_FILE,
# each entry under the SHA-256 of the text it was parsed from; a module
# whose text differs (edited, or MEDIATION_ASN1_DIR elsewhere) is parsed
# afresh, so what is compiled is always what a fresh parse would give
# (tests/test_pdu_schema_cache.py checks the file against a fresh parse).
PARSED_FILE = "parsed.json"
TUPLE = "__tuple__"  # JSON has no tuples; the parse has (low, high) and (name, number) pairs


def compile_modules(names: tuple[str, ...]) -> asn1tools.compiler.Specification:
    """The modules in ``names`` (files in :func:`asn1_dir`) compiled for ``der``.

    The same specification as ``asn1tools.compile_files(files, "der")``,
    from the kept parse when it is of the same text.

    Raises:
        OSError: a module file cannot be read.
    """
    text = _module_text(names)
    parsed = _kept_parse(names, text)
    if parsed is None:
        parsed = asn1tools.parse_string(text)
    return asn1tools.compile_dict(parsed, "der")


def _module_text(names: tuple[str, ...]) -> str:
    """The files' text as ``asn1tools.parse_files`` joins it."""
    text = ""
    for name in names:
        with open(asn1_dir() / name, encoding="utf-8", errors="replace") as handle:
            text += handle.read() + "\n"
    return text


def _kept_parse(names: tuple[str, ...], text: str) -> dict[str, Any] | None:
    """The parse kept for exactly this text, or None."""
    try:
        with open(asn1_dir() / PARSED_FILE, encoding="utf-8") as handle:
            kept = json.load(handle, object_hook=_tuples)
    except (OSError, ValueError):
        return None
    entry = kept.get("|".join(names)) if isinstance(kept, dict) else None
    if not isinstance(entry, dict) or entry.get("sha256") != _digest(text):
        return None
    return entry.get("parsed")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tuples(value: dict[str, Any]) -> Any:
    return tuple(value[TUPLE]) if len(value) == 1 and TUPLE in value else value


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple):
        return {TUPLE: [_json_ready(v) for v in value]}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


KEPT_SETS = (MODULE_FILES, ("Mediation-TapLink.asn",))


def write_kept_parse() -> Path:
    """Parse the modules afresh and keep the parse (after editing a module).

    ``python -c "from mediation.pdu.schema import write_kept_parse; write_kept_parse()"``

    Returns:
        The file written.
    """
    kept = {}
    for names in KEPT_SETS:
        text = _module_text(names)
        kept["|".join(names)] = {
            "sha256": _digest(text),
            "parsed": _json_ready(asn1tools.parse_string(text)),
        }
    path = asn1_dir() / PARSED_FILE
    path.write_text(json.dumps(kept, indent=None, separators=(",", ":"), sort_keys=True) + "\n")
    return path
