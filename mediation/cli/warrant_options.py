"""What ``mediate add`` and ``mediate modify`` share: their options and reading them.

The case-data fields (options, case file or prompts, see ``casedata.py``),
the argparse options that give them, and the parsers that turn what was
given into registry values. The commands themselves are ``warrants.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from mediation.cli.casedata import CaseInput, Field, add_from_option
from mediation.cli.common import Once

if TYPE_CHECKING:
    from mediation.warrants.model import Source

DEFAULT_DAYS = 30  # Title III orders run 30 days (18 U.S.C. 2518(5)); extensions are new ends

# What identifies a case, a target or an agency is `sensitive`: warned about
# on the command line. The content level and the window are stored in clear
# in the registry anyway.
_DETAIL_FIELDS = (
    Field("iap", "--iap"),
    Field("tap", "--tap", many=True),
    Field("source", "--source", many=True),
    Field("court_ref", "--court-ref"),
    Field("note", "--note"),
    Field("retention", "--retention", sensitive=False, number=True),
)
ADD_FIELDS = (
    Field("case_id", "--case-id", prompt="case id"),
    Field("agency", "--agency", prompt="agency (name or a- handle)"),
    Field("target", "--target", many=True, prompt="targets"),
    Field("content", "--content", sensitive=False, prompt="content (headers or full)"),
    Field("start", "--start", sensitive=False),
    Field("end", "--end", sensitive=False),
    *_DETAIL_FIELDS,
)
MODIFY_FIELDS = (
    Field("case_id", "--case-id"),
    Field("target", "--target", many=True),
    Field("add_target", "--add-target", many=True),
    Field("remove_target", "--remove-target", many=True),
    Field("content", "--content", sensitive=False),
    Field("start", "--start", sensitive=False),
    Field("end", "--end", sensitive=False),
    *_DETAIL_FIELDS,
)


def given_sources(given: CaseInput) -> tuple[Source, ...]:
    """The taps and TZSP senders given, parsed, duplicates dropped (order kept)."""
    from mediation.warrants.model import Source
    from mediation.warrants.validate import parse_source, parse_tap_name

    taps, sources = given.get("tap") or [], given.get("source") or []
    tap_field, source_field = given.name("tap"), given.name("source")
    out = [
        Source("tap", parse_tap_name(name, f"{tap_field} #{i + 1}")) for i, name in enumerate(taps)
    ]
    out += [parse_source(text, i, source_field) for i, text in enumerate(sources)]
    return tuple(dict.fromkeys(out))


def given_details(given: CaseInput) -> dict[str, Any]:
    """iap, court_ref, notes and retention, parsed; each None when not given."""
    from mediation.warrants import validate as v

    return {
        "iap": v.parse_iap(given.get("iap"), given.name("iap")),
        "court_ref": v.parse_free_text(given.get("court_ref"), given.name("court_ref")),
        "notes": v.parse_free_text(given.get("note"), given.name("note"), v.NOTE_MAX),
        "retention": v.parse_retention(given.get("retention"), given.name("retention")),
    }


def given_time(given: CaseInput, key: str, now: dt.datetime) -> dt.datetime | None:
    """The time given for ``key`` (start or end), parsed; None when not given."""
    from mediation.warrants.validate import parse_time

    text = given.get(key)
    return None if text is None else parse_time(text, given.name(key), now)



def add_warrant_options(p: argparse.ArgumentParser) -> None:
    """The options of ``mediate add``."""
    add_from_option(p, "the warrant")
    p.add_argument(
        "--case-id",
        metavar="ID",
        action=Once,
        help="case identity from the order: 1 to 25 visible characters",
    )
    p.add_argument(
        "--agency",
        metavar="NAME",
        action=Once,
        help="the agency (name or a- handle); see `mediate agency list`",
    )
    p.add_argument(
        "--target",
        metavar="ADDR|PREFIX|MAC",
        action="append",
        help="IPv4/IPv6 address or prefix, MAC address, iface:NAME or user:NAME (repeatable)",
    )
    p.add_argument(
        "--content",
        metavar="LEVEL",
        action=Once,
        help="headers (CmII only) or full (CmII and CmCC)",
    )
    p.add_argument(
        "--start",
        metavar="TIME",
        action=Once,
        help="ISO 8601 with Z or an offset, or a date (default: now)",
    )
    p.add_argument(
        "--end",
        metavar="TIME",
        action=Once,
        help=f"like --start (default: {DEFAULT_DAYS} days after the start)",
    )
    add_detail_options(p)


def add_modify_options(p: argparse.ArgumentParser) -> None:
    """The options of ``mediate modify`` (each a change)."""
    add_from_option(p, "the changes")
    p.add_argument("--case-id", metavar="ID", action=Once, help="a corrected case identity")
    p.add_argument(
        "--target", metavar="ADDR", action="append", help="replace all targets (repeatable)"
    )
    p.add_argument(
        "--add-target", metavar="ADDR", action="append", help="add a target (repeatable)"
    )
    p.add_argument(
        "--remove-target", metavar="ADDR", action="append", help="drop a target (repeatable)"
    )
    p.add_argument("--content", metavar="LEVEL", action=Once, help="headers or full")
    p.add_argument("--start", metavar="TIME", action=Once, help="a new start")
    p.add_argument(
        "--end", metavar="TIME", action=Once, help="a new end (an extension, or an earlier end)"
    )
    add_detail_options(p)


def add_detail_options(p: argparse.ArgumentParser) -> None:
    """Options ``add`` and ``modify`` share beyond identity, targets and window."""
    p.add_argument(
        "--iap",
        metavar="ID",
        action=Once,
        help="IAP system identity: 1 to 15 visible characters",
    )
    p.add_argument(
        "--tap", metavar="NAME", action="append", help="a registered tap serving it (repeatable)"
    )
    p.add_argument(
        "--source",
        metavar="tzsp:ADDR",
        action="append",
        help="a TZSP sender serving it (repeatable)",
    )
    p.add_argument("--court-ref", metavar="TEXT", action=Once, help="the court order's reference")
    p.add_argument(
        "--note", metavar="TEXT", action=Once, help="a note for the carrier's own records"
    )
    p.add_argument(
        "--retention",
        metavar="YEARS",
        action=Once,
        help="years its records are kept after it ends, 5 to 100 (default: the server's "
        "[retention] years); after the end it may only be lengthened",
    )
