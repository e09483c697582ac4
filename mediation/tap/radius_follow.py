"""RADIUS following: the addresses a target user name holds, session by session.

The follower reads every Accounting-Request seen (:mod:`mediation.tap.radius`)
and keeps, per accounting session of a target user, the IPv4 address and
IPv6 prefix the NAS reported. The tap matches those for as long as the
session holds them, and reports the changes as CmII (the mapping is in
:mod:`mediation.tap.access_messages`, ``RADIUS_MESSAGES``; docs/tap.md explains it).

A session is keyed by its NAS and Acct-Session-Id. The state is bounded:
only target users' sessions are kept, at most :data:`MAX_SESSIONS` of them.
No I/O, no clock: time is the capture time passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress

from mediation.tap.radius import (
    TERMINATE_CAUSES,
    AccountingRequest,
    RadiusError,
    RadiusRefusal,
    StatusType,
    parse_accounting,
)

Held = ipaddress.IPv4Address | ipaddress.IPv6Network  # an address, or a delegated prefix
SessionKey = tuple[str | None, str]  # (NAS, Acct-Session-Id)

# More sessions than one subscriber's multilink or dual-stack ever holds,
# times a handful of target users; the oldest is ended past it.
MAX_SESSIONS = 256


class RadiusChange(enum.Enum):
    """What an accounting packet changed for a target user."""

    ACCESS_ACCEPTED = "access-accepted"  # Start: the NAS let the user in
    ADDRESS_GAINED = "address-gained"  # the session holds this address from now on
    ALREADY_HELD = "already-held"  # first seen in an Interim-Update: held before we watched
    ADDRESS_DROPPED = "address-dropped"  # the session no longer holds it
    ACCESS_ENDED = "access-ended"  # Stop (or the NAS restarted): the session is over


@dataclasses.dataclass(frozen=True)
class RadiusEvent:
    """One change to report as CmII and to apply to the matcher."""

    change: RadiusChange
    user: str  # the User-Name, as text
    session_id: str  # Acct-Session-Id
    when: dt.datetime
    address: Held | None = None  # for address events (and the first address on access)
    number: int | None = None  # packetDataSessionID: ties a gained address to its drop
    reason: str | None = None  # for drops and ends
    nas: str | None = None
    calling_station_id: str | None = None


@dataclasses.dataclass
class _Session:
    user: str
    session_id: str
    nas: str | None
    calling_station_id: str | None
    held: dict[Held, int]  # address -> its packetDataSessionID


class RadiusFollower:
    """Follows the accounting sessions of a warrant's target user names.

    Args:
        users: the target user names, as the NAS sends them (octets).
        secret: the RADIUS shared secret; when given, a packet whose Request
            Authenticator does not match is refused (counted, not believed).
    """

    def __init__(self, users: frozenset[bytes], secret: bytes | None = None) -> None:
        self.users = users
        self.secret = secret
        self.sessions: dict[SessionKey, _Session] = {}
        self.refused: dict[str, int] = {reason.value: 0 for reason in RadiusRefusal}
        self.messages = 0
        self.last_request: AccountingRequest | None = None  # the last one believed
        self._numbers = 0

    def observe_payload(self, payload: bytes, when: dt.datetime) -> list[RadiusEvent]:
        """Parse (and check) one UDP payload sent to an accounting port, then observe it.

        A refused packet is counted in :attr:`refused` and changes nothing.
        """
        try:
            request = parse_accounting(payload, self.secret)
        except RadiusError as exc:
            self.refused[exc.reason.value] += 1
            return []
        self.messages += 1
        self.last_request = request
        return self.observe(request, when)

    def observe(self, request: AccountingRequest, when: dt.datetime) -> list[RadiusEvent]:
        """Apply one Accounting-Request seen at ``when``; the changes it causes."""
        status = request.status
        if status in (StatusType.ACCOUNTING_ON, StatusType.ACCOUNTING_OFF):
            reason = (
                "nas-accounting-on" if status == StatusType.ACCOUNTING_ON else "nas-accounting-off"
            )
            return self._end_nas(request.nas, when, reason)
        if status not in (StatusType.START, StatusType.INTERIM_UPDATE, StatusType.STOP):
            return []
        key = (request.nas, request.session_id)
        offered = _addresses(request)
        if request.user_name not in self.users:
            if status == StatusType.STOP:
                return []
            # Someone else now holds an address: no target session does any more.
            return self._taken(offered, key, when)
        if status == StatusType.STOP:
            return self._stop(key, request, when)
        events = self._taken(offered, key, when)
        session = self.sessions.get(key)
        first = session is None
        if session is None:
            events += self._make_room(when)
            session = _Session(
                _user(request), request.session_id, request.nas, request.calling_station_id, {}
            )
            self.sessions[key] = session
            if status == StatusType.START:
                events.append(self._event(RadiusChange.ACCESS_ACCEPTED, session, when, offered))
        gained = RadiusChange.ALREADY_HELD if first and status != StatusType.START else None
        events += self._move(session, offered, when, gained or RadiusChange.ADDRESS_GAINED)
        return events

    def _move(
        self, session: _Session, offered: list[Held], when: dt.datetime, change: RadiusChange
    ) -> list[RadiusEvent]:
        """Drop held addresses of a family the request re-states; gain the new ones."""
        events = []
        families = {type(a) for a in offered}
        for held in list(session.held):
            if type(held) in families and held not in offered:
                events.append(self._drop(session, held, when, "address-changed"))
        for address in offered:
            if address not in session.held:
                self._numbers += 1
                session.held[address] = self._numbers
                events.append(self._event(change, session, when, [address], self._numbers))
        return events

    def _stop(
        self, key: SessionKey, request: AccountingRequest, when: dt.datetime
    ) -> list[RadiusEvent]:
        cause = request.terminate_cause
        reason = (
            "radius-stop" if cause is None else f"radius-stop {TERMINATE_CAUSES.get(cause, cause)}"
        )
        session = self.sessions.pop(key, None)
        if session is None:
            # The session began before we watched: its end is still news.
            session = _Session(_user(request), request.session_id, request.nas, None, {})
        return self._close(session, when, reason)

    def _close(self, session: _Session, when: dt.datetime, reason: str) -> list[RadiusEvent]:
        events = [self._drop(session, held, when, reason) for held in list(session.held)]
        events.append(self._event(RadiusChange.ACCESS_ENDED, session, when, [], reason=reason))
        return events

    def _end_nas(self, nas: str | None, when: dt.datetime, reason: str) -> list[RadiusEvent]:
        """The NAS restarted or stopped: every session it had is over."""
        events = []
        for key in [k for k in self.sessions if k[0] == nas]:
            events += self._close(self.sessions.pop(key), when, reason)
        return events

    def _taken(self, offered: list[Held], keep: SessionKey, when: dt.datetime) -> list[RadiusEvent]:
        """Drop ``offered`` from every target session but ``keep``: another holds it now."""
        events = []
        for key, session in self.sessions.items():
            if key != keep:
                for held in [a for a in offered if a in session.held]:
                    events.append(self._drop(session, held, when, "address-reassigned"))
        return events

    def _make_room(self, when: dt.datetime) -> list[RadiusEvent]:
        if len(self.sessions) < MAX_SESSIONS:
            return []
        oldest = next(iter(self.sessions))
        return self._close(self.sessions.pop(oldest), when, "session-limit")

    def _drop(self, session: _Session, held: Held, when: dt.datetime, reason: str) -> RadiusEvent:
        number = session.held.pop(held)
        return self._event(RadiusChange.ADDRESS_DROPPED, session, when, [held], number, reason)

    @staticmethod
    def _event(
        change: RadiusChange,
        session: _Session,
        when: dt.datetime,
        addresses: list[Held],
        number: int | None = None,
        reason: str | None = None,
    ) -> RadiusEvent:
        return RadiusEvent(
            change,
            session.user,
            session.session_id,
            when,
            addresses[0] if addresses else None,
            number,
            reason,
            session.nas,
            session.calling_station_id,
        )

    @property
    def refused_total(self) -> int:
        """Every accounting packet refused, whatever the reason."""
        return sum(self.refused.values())

    def held(self) -> set[Held]:
        """Every address and prefix target sessions hold now."""
        return {address for session in self.sessions.values() for address in session.held}


def _addresses(request: AccountingRequest) -> list[Held]:
    """The IPv4 address and IPv6 prefix a request reports, in that order."""
    found: list[Held] = []
    if request.framed_ip is not None:
        found.append(request.framed_ip)
    if request.framed_prefix is not None:
        found.append(request.framed_prefix)
    return found


def _user(request: AccountingRequest) -> str:
    return (request.user_name or b"").decode("utf-8", "replace")
