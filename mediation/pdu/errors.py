"""The one error type of the PDU layer."""

from __future__ import annotations


class PDUError(ValueError):
    """A PDU could not be encoded or decoded.

    The message names what was wrong; ``offset`` is the byte offset into the
    input where decoding failed (``None`` for encoding errors or when the
    position is not known).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
