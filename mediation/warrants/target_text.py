"""Targets as a person types them: addresses, prefixes, MACs, interfaces, user names, scopes.

Refusals follow :mod:`mediation.warrants.validate`: a
:class:`~mediation.errors.UsageError` naming the field and the target's
position, never the refused text itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

from mediation.errors import UsageError
from mediation.warrants.model import Target, TargetKind
from mediation.warrants.validate import INTERFACE_NAME, is_printable, ordinal

USER_NAME_MAX = 253  # the longest RADIUS attribute value (RFC 2865 section 5)
_MAC_FORMS = (
    re.compile(
        r"([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})"
    ),
    re.compile(
        r"([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})\.([0-9a-f]{2})([0-9a-f]{2})"
    ),
)


def parse_target(text: str, index: int = 0, field: str = "--target") -> Target:
    """An address or prefix, a MAC address or ``iface:NAME``, maybe scoped; or ``user:NAME``.

    Addresses and prefixes are normalised by :mod:`ipaddress` (a ``/32`` or
    ``/128`` prefix is an address); MACs become lower-case colon form. A
    scope may follow, narrowing the target (AND): ``@vlan:N`` (the frame's
    outermost VLAN id, 0 to 4095) and/or ``@iface:NAME`` (the capture
    interface), e.g. ``192.0.2.10@vlan:100`` or ``192.0.2.10@vlan:100@iface:eth1``.
    A user name is kept exactly as given, never scoped (RADIUS compares it
    octet for octet, and its ``@`` may be a realm's).
    """
    name = f"{field} {ordinal(index)}"
    if text.strip().startswith("user:"):
        return _parse_user(text.strip()[len("user:") :], name)
    text, vlan, interface = _split_scope(text.strip(), name)
    target = _parse_unscoped(text, name)
    if interface is not None and target.kind is TargetKind.INTERFACE:
        raise UsageError(name, "iface:NAME cannot also be scoped @iface:; give one interface")
    return dataclasses.replace(target, vlan=vlan, interface=interface)


# A scope is the last one or two @key:value suffixes; an interface name may
# itself hold '@', but never "@vlan:" or "@iface:".
_SCOPE = re.compile(r"(.*?)@(vlan|iface):([^@]*)")


def _split_scope(text: str, name: str) -> tuple[str, int | None, str | None]:
    """``(target text, vlan, interface)`` with any ``@vlan:N`` / ``@iface:NAME`` removed."""
    vlan: int | None = None
    interface: str | None = None
    seen: set[str] = set()
    while match := _SCOPE.fullmatch(text):
        text, key, value = match.groups()
        if key in seen:
            raise UsageError(name, f"gives @{key}: twice; a target has one of each at most")
        seen.add(key)
        if key == "vlan":
            if not re.fullmatch(r"\d{1,4}", value) or int(value) > 4095:
                raise UsageError(name, "@vlan: must be a VLAN id from 0 to 4095 (@vlan:100)")
            vlan = int(value)
        else:
            if not INTERFACE_NAME.fullmatch(value):
                raise UsageError(
                    name, "@iface: needs 1 to 15 letters, digits or ._@:- (@iface:eth1)"
                )
            interface = value
    return text, vlan, interface


def _parse_unscoped(text: str, name: str) -> Target:
    if text.startswith("iface:"):
        iface = text[len("iface:") :]
        if not INTERFACE_NAME.fullmatch(iface):
            raise UsageError(
                name, "interface name must be 1 to 15 letters, digits or ._@:- (iface:eth0)"
            )
        return Target(TargetKind.INTERFACE, iface)
    mac = _parse_mac(text)
    if mac is not None:
        return Target(TargetKind.MAC, mac)
    if "%" in text:
        raise UsageError(
            name, "IPv6 zone identifiers (%eth0) are not allowed; use iface:NAME for an interface"
        )
    if "/" in text:
        return _parse_prefix(text, name)
    try:
        return Target(TargetKind.ADDRESS, str(ipaddress.ip_address(text)))
    except ValueError:
        raise UsageError(
            name,
            "is not an IPv4/IPv6 address, a prefix (198.51.100.0/24, 2001:db8::/48), "
            "a MAC address (02:00:5e:00:53:01), iface:NAME or user:NAME",
        ) from None


def _parse_user(user: str, name: str) -> Target:
    """``user:NAME``: a RADIUS User-Name, 1 to 253 octets of printable text, unpadded."""
    if (
        not user
        or len(user.encode("utf-8")) > USER_NAME_MAX
        or not is_printable(user)
        or user != user.strip()
    ):
        raise UsageError(
            name,
            f"user name must be 1 to {USER_NAME_MAX} octets of printable text, "
            "as the NAS sends it in RADIUS User-Name (user:alice@example.net)",
        )
    return Target(TargetKind.USER, user)


def _parse_prefix(text: str, name: str) -> Target:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(
            name, "is not a prefix: give ADDRESS/LENGTH, e.g. 198.51.100.0/24 or 2001:db8::/48"
        ) from None
    # strict=False above so that host bits get their own, clearer message.
    if network.network_address != ipaddress.ip_address(text.split("/", 1)[0]):
        raise UsageError(
            name,
            "prefix has host bits set; give the network address "
            "(198.51.100.0/24, not 198.51.100.7/24)",
        )
    if network.num_addresses == 1:
        return Target(TargetKind.ADDRESS, str(network.network_address))
    return Target(TargetKind.PREFIX, str(network))


def _parse_mac(text: str) -> str | None:
    lowered = text.lower()
    for form in _MAC_FORMS:
        match = form.fullmatch(lowered)
        if match:
            return ":".join(match.groups())
    return None


def parse_targets(texts: Iterable[str] | None, field: str = "--target") -> tuple[Target, ...]:
    """At least one target; duplicates (after normalising) are dropped, order is kept."""
    targets: list[Target] = []
    for index, text in enumerate(texts or ()):
        target = parse_target(text, index, field)
        if target not in targets:
            targets.append(target)
    if not targets:
        raise UsageError(
            field, "required: at least one address, prefix, MAC address, iface:NAME or user:NAME"
        )
    return tuple(targets)
