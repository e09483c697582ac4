"""Conversion between frozen record dataclasses and asn1tools values.

Records name their ASN.1 components with ``asn1("name")`` field metadata;
conversion is driven by the fields' type hints, so adding a field is one
line. CHOICE types subclass :class:`Choice` and list their alternatives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import types
import typing
from typing import Any, ClassVar

from mediation.pdu.errors import PDUError

UTC = dt.UTC


def asn1(name: str, default: Any = dataclasses.MISSING) -> Any:
    """Declare a record field and the ASN.1 component it maps to."""
    return dataclasses.field(default=default, metadata={"asn1": name})


@dataclasses.dataclass(frozen=True)
class Choice:
    """A CHOICE value: the alternative's ASN.1 name and its value.

    Subclasses set ``ALTERNATIVES``: alternative name -> Python type of the
    value (``type(None)`` for NULL alternatives).
    """

    alternative: str
    value: Any = None

    ALTERNATIVES: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        if self.alternative not in self.ALTERNATIVES:
            allowed = ", ".join(self.ALTERNATIVES)
            raise PDUError(
                f"{type(self).__name__}: unknown alternative {self.alternative!r} "
                f"(allowed: {allowed})"
            )


def check_visible(field: str, text: str, low: int, high: int | None) -> None:
    """VisibleString of ``low``..``high`` characters (printable ASCII and space)."""
    if not isinstance(text, str):
        raise PDUError(f"{field}: must be text, got {type(text).__name__}")
    if len(text) < low or (high is not None and len(text) > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise PDUError(f"{field}: must be {bound} characters, got {len(text)}")
    # The same test in two C calls: among ASCII characters exactly 0x20..0x7E are printable.
    if not (text.isascii() and text.isprintable()):
        raise PDUError(f"{field}: only visible ASCII characters are allowed")


def utc(value: dt.datetime, field: str = "time") -> dt.datetime:
    """An aware datetime in UTC; naive datetimes are refused (ambiguous)."""
    if not isinstance(value, dt.datetime):
        raise PDUError(f"{field}: must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise PDUError(f"{field}: must be timezone-aware (UTC)")
    value = value.astimezone(UTC)
    if value.year < 1000:
        # GeneralizedTime has four-digit years; asn1tools writes earlier
        # years unpadded and neither decoder reads them back.
        raise PDUError(f"{field}: year {value.year} cannot be encoded (1000 to 9999)")
    return value


def _asn1_name(field: dataclasses.Field) -> str:
    return field.metadata.get("asn1", field.name)


def to_asn1(obj: Any) -> Any:
    """A record (or part of one) as the value asn1tools encodes."""
    custom = getattr(obj, "to_asn1", None)
    if custom is not None:
        return custom()
    if isinstance(obj, Choice):
        return (obj.alternative, to_asn1(obj.value))
    if dataclasses.is_dataclass(obj):
        out = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if value is None:
                continue
            out[_asn1_name(field)] = to_asn1(value)
        return out
    if isinstance(obj, dt.datetime):
        return utc(obj).replace(tzinfo=None)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_asn1(item) for item in obj]
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_asn1(tp: Any, value: Any) -> Any:
    """The record of type ``tp`` for an asn1tools value."""
    tp = _strip_optional(tp)
    custom = getattr(tp, "from_asn1", None)
    if custom is not None:
        return custom(value)
    if isinstance(tp, type) and issubclass(tp, Choice):
        alternative, inner = value
        if alternative not in tp.ALTERNATIVES:
            raise PDUError(f"{tp.__name__}: unknown alternative")
        return tp(alternative, from_asn1(tp.ALTERNATIVES[alternative], inner))
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {}
        for field in dataclasses.fields(tp):
            name = _asn1_name(field)
            if name in value:
                kwargs[field.name] = from_asn1(hints[field.name], value[name])
        return tp(**kwargs)
    if typing.get_origin(tp) is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(from_asn1(item_type, item) for item in value)
    if tp is dt.datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if value is None:
            raise PDUError(f"{tp.__name__}: value unknown to this version")
        return tp(value)
    return value
