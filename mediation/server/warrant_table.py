"""The running server's view of the warrants: which exist, which are active now.

A :class:`WarrantTable` is fed registry snapshots (:meth:`WarrantTable.apply`)
and the passing of time (:meth:`WarrantTable.tick`), and answers with what
changed, so that whoever drives it (ingest, delivery, the control socket)
can start or stop streams. It does no I/O and keeps no clock of its own:
tests drive it with any times they like.

Case details stay in memory here and never leave: everything it reports
(:class:`TableChange`, :meth:`WarrantTable.status`) names handles only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from mediation.warrants.model import (
    Agency,
    RegistrySnapshot,
    Stream,
    Tap,
    Warrant,
    WarrantState,
    format_time,
)


@dataclasses.dataclass(frozen=True)
class TableChange:
    """Handles whose warrant appeared, changed, disappeared, started or stopped."""

    added: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    activated: tuple[str, ...] = ()
    deactivated: tuple[str, ...] = ()  # expired, or removed while active
    taps_revoked: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def to_json(self) -> dict[str, list[str]]:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def log_lines(self, states: dict[str, WarrantState]) -> list[str]:
        """What the server logs: handles and states, never case details."""
        lines = [f"warrant {h} added ({states[h].value})" for h in self.added]
        lines += [f"warrant {h} modified" for h in self.modified]
        lines += [f"warrant {h} active" for h in self.activated]
        lines += [
            f"warrant {h} inactive ({states.get(h, WarrantState.REMOVED).value})"
            for h in self.deactivated
        ]
        lines += [f"warrant {h} removed" for h in self.removed]
        lines += [f"tap {name} revoked" for name in self.taps_revoked]
        return lines


@dataclasses.dataclass(frozen=True)
class WarrantStatus:
    """One warrant as the control socket reports it."""

    handle: str
    state: WarrantState
    start: dt.datetime
    end: dt.datetime
    taps_accepted: tuple[str, ...]
    counters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": format_time(self.start) if self.state is WarrantState.ACTIVE else None,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "taps_accepted": list(self.taps_accepted),
            "counters": dict(self.counters),
        }


class WarrantTable:
    """Current warrants, their states, and the hooks ingest and delivery will use."""

    def __init__(self) -> None:
        self.generation = -1
        # Bumped whenever the warrants or their states change (apply, or a tick
        # that moved a window): what callers caching a view of the table key on.
        self.version = 0
        self._warrants: dict[str, Warrant] = {}
        self._states: dict[str, WarrantState] = {}
        self._accepted: dict[str, set[str]] = {}
        self._counters: dict[str, dict[str, int]] = {}
        self.agencies: dict[str, Agency] = {}
        self.taps: dict[str, Tap] = {}

    def apply(self, snapshot: RegistrySnapshot, now: dt.datetime) -> TableChange:
        """Make the table match ``snapshot``; returns what changed."""
        new = {w.handle: w for w in snapshot.warrants if w.removed is None}
        added = tuple(h for h in new if h not in self._warrants)
        removed = tuple(h for h in self._warrants if h not in new)
        modified = tuple(h for h in new if h in self._warrants and new[h] != self._warrants[h])
        was_active = {h for h, s in self._states.items() if s is WarrantState.ACTIVE}
        revoked = tuple(
            t.name
            for t in snapshot.taps
            if t.revoked and (old := self.taps.get(t.name)) and not old.revoked
        )
        self._warrants = new
        self._states = {h: w.state(now) for h, w in new.items()}
        for handle in removed:
            self._accepted.pop(handle, None)
            self._counters.pop(handle, None)
        for handle in added:
            self._counters.setdefault(handle, {s.value: 0 for s in Stream})
        self.agencies = {a.handle: a for a in snapshot.agencies}
        self.taps = {t.name: t for t in snapshot.taps}
        self.generation = snapshot.generation
        self.version += 1
        return dataclasses.replace(
            self._transitions(was_active),
            added=added,
            modified=modified,
            removed=removed,
            taps_revoked=revoked,
        )

    def tick(self, now: dt.datetime) -> TableChange:
        """Re-evaluate every window at ``now``: start and end happen on time."""
        was_active = {h for h, s in self._states.items() if s is WarrantState.ACTIVE}
        states = {h: w.state(now) for h, w in self._warrants.items()}
        if states != self._states:
            self._states = states
            self.version += 1
        return self._transitions(was_active)

    def _transitions(self, was_active: set[str]) -> TableChange:
        active = {h for h, s in self._states.items() if s is WarrantState.ACTIVE}
        return TableChange(
            activated=tuple(sorted(active - was_active)),
            deactivated=tuple(sorted(was_active - active)),
        )

    # Queries ----------------------------------------------------------------

    def warrant(self, handle: str) -> Warrant | None:
        return self._warrants.get(handle)

    def state(self, handle: str) -> WarrantState:
        return self._states.get(handle, WarrantState.REMOVED)

    def states(self) -> dict[str, WarrantState]:
        return dict(self._states)

    def active(self) -> list[Warrant]:
        return [w for h, w in self._warrants.items() if self._states[h] is WarrantState.ACTIVE]

    def status(self, handle: str) -> WarrantStatus | None:
        warrant = self._warrants.get(handle)
        if warrant is None:
            return None
        return WarrantStatus(
            handle,
            self._states[handle],
            warrant.start,
            warrant.end,
            tuple(sorted(self._accepted.get(handle, ()))),
            dict(self._counters.get(handle, {})),
        )

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Every warrant's status as JSON, keyed by handle (the control socket's answer)."""
        out = {}
        for handle in self._warrants:
            status = self.status(handle)
            assert status is not None
            out[handle] = status.to_json()
        return out

    def tap_allowed(self, name: str) -> bool:
        """Whether a tap presenting this name may connect (registered, not revoked)."""
        tap = self.taps.get(name)
        return tap is not None and tap.revoked is None

    def warrants_for_tap(self, name: str) -> list[Warrant]:
        """Active warrants a tap should serve: those naming it, or naming no source at all."""
        out = []
        for warrant in self.active():
            sources = warrant.details.sources if warrant.details else ()
            if not sources or any(s.kind == "tap" and s.value == name for s in sources):
                out.append(warrant)
        return out

    # Hooks for ingest and delivery -----------------------------------------

    def tap_accepted(self, handle: str, tap: str) -> None:
        """Record that ``tap`` confirmed it is intercepting for ``handle``."""
        if handle in self._warrants:
            self._accepted.setdefault(handle, set()).add(tap)

    def tap_dropped(self, tap: str) -> None:
        """A tap disconnected: it no longer serves any warrant."""
        for taps in self._accepted.values():
            taps.discard(tap)

    def count(self, handle: str, stream: Stream, n: int = 1) -> None:
        """Count ``n`` PDUs stored for one warrant stream (reported by ``mediate list``)."""
        counters = self._counters.get(handle)
        if counters is not None:
            counters[stream.value] += n
