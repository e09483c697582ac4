"""The compiled ASN.1 schema: compiled once per process, from ``asn1/``."""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
    files = [str(asn1_dir() / name) for name in MODULE_FILES]
    return asn1tools.compile_files(files, "der")
