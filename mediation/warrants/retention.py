"""A warrant's retention: how long its records are kept after it ends.

Each warrant may carry its own period (``mediate add/modify --retention
YEARS``, stored sealed with its case details); one without follows the
server's ``[retention] years`` (default five). The period runs from the
warrant's end, or its removal if that came first; a pending or active
warrant has no retention date: everything is kept.

Once a warrant has ended its date is a promise (``mediate records`` shows
it, an agency or a court may rely on it): :func:`check_not_earlier`
refuses any modification that would bring it forward.
"""

from __future__ import annotations

import datetime as dt

from mediation.errors import UsageError
from mediation.warrants.model import Warrant, WarrantState, format_time

# The floor the project enforces (the white paper: records kept at least five years).
LEGAL_FLOOR_YEARS = 5
MAX_YEARS = 100
DEFAULT_YEARS = LEGAL_FLOOR_YEARS


def years_after(when: dt.datetime, years: int) -> dt.datetime:
    """``when`` plus ``years`` calendar years; 29 February becomes 28 February."""
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February into a common year
        return when.replace(year=when.year + years, day=28)


def ended_at(warrant: Warrant, now: dt.datetime) -> dt.datetime | None:
    """When the warrant stopped: its end, or its removal if earlier; None while it runs.

    A warrant removed before it started ended at its removal.
    """
    state = warrant.state(now)
    if state is WarrantState.EXPIRED:
        return warrant.end
    if state is WarrantState.REMOVED and warrant.removed is not None:
        return min(warrant.end, warrant.removed)
    return None


def period(warrant: Warrant, default: int) -> int | None:
    """The warrant's retention in years: its own, else ``default``; None without its details.

    Args:
        default: the server's ``[retention] years``.
    """
    if warrant.details is None:
        return None  # sealed: only the registry key tells
    own = warrant.details.retention
    return default if own is None else own


def kept_until(warrant: Warrant, now: dt.datetime, default: int) -> dt.datetime | None:
    """The date its records may be removed; None while it runs or without its details."""
    ended, years = ended_at(warrant, now), period(warrant, default)
    return None if ended is None or years is None else years_after(ended, years)


def check_not_earlier(old: Warrant, new: Warrant, now: dt.datetime, default: int) -> None:
    """Refuse a change that brings an ended warrant's retention date forward.

    Args:
        old: the warrant as stored; new: as the modification would leave it.
        default: the server's ``[retention] years``, for warrants without their own.

    Raises:
        UsageError: ``old`` has ended and ``new`` would be kept for less time
            (named ``--retention`` or ``--end``, whichever was changed).
    """
    promised = kept_until(old, now, default)
    after = kept_until(new, now, default)
    if promised is None or after is None or after >= promised:
        return
    years = period(old, default)
    field = "--end" if new.end != old.end else "--retention"
    raise UsageError(
        field,
        f"{old.handle} has ended and its records are promised until {format_time(promised)} "
        f"({years} years); retention may be lengthened after the end, never shortened",
    )
