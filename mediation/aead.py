"""The at-rest primitives the evidence log and the tap's spool share: one KDF, one nonce.

Both encrypt records with AES-256-GCM under per-segment keys
(mediation/log/crypto.py, mediation/tap/spool_format.py). They live here,
outside both packages, so a tap reaches them without importing the
evidence log (its package brings the writer, cursors and verifier: ~0.05 s
of a tap's start).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_PAD = bytes(4)


def hkdf_sha256(key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 of ``key``: the one key derivation of the at-rest encryptions.

    The evidence log and the tap's spool (mediation/tap/spool.py) both derive
    per-segment keys with it, each under its own ``info`` label.

    Args:
        key: the input key.
        salt: the segment's random salt.
        info: the label (what the key is for).
        length: octets wanted.

    Returns:
        The derived key.
    """
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def nonce(seq: int) -> bytes:
    """The AES-GCM nonce of record ``seq``: 4 zero octets, then ``seq`` in 8 (big-endian).

    Unique per segment key as long as a segment's sequence numbers never
    repeat (mediation/log/crypto.py's docstring says why they do not).
    """
    return _NONCE_PAD + seq.to_bytes(8, "big")
