"""Case data kept off the command line: from a file, stdin or a prompt.

Anything on a command line is readable by every local user for as long as
the command runs (``ps -ef``, ``/proc/PID/cmdline``) and is kept by the
shell's history afterwards. So every command that takes case data (what
identifies a case, a target or an agency) also takes it from a small TOML
file (``--from FILE``, ``-`` for stdin) whose keys are the option names
without the dashes, or asks for it on a terminal; when some was given on
the command line anyway, the command does its job and then says, on one
line, how to keep it off next time.

Whatever the source, the same validation applies and a refusal names the
field as the user gave it: ``--case-id``, ``case.toml: case-id`` or
``prompt: case-id``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mediation.cli.common import Once
from mediation.errors import UsageError

# A case file is a dozen short lines; 64 KiB leaves room for long notes and
# many targets while a mistaken --from /dev/zero costs one bounded read.
FILE_LIMIT = 64 * 1024
HANDLE = r"[wa]-[0-9a-f]{6}"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,32}")
SAFER_WAYS = "give it in a file (--from FILE), on stdin (--from -) or at the prompt instead"


@dataclasses.dataclass(frozen=True)
class Field:
    """One option of a command that may also come from a case file or a prompt.

    Attributes:
        key: the argparse destination (``case_id``).
        option: the option as typed (``--case-id``), or the positional's name (``NAME``).
        many: repeatable: a list in the file, one a line at the prompt.
        sensitive: identifies a case, a target or an agency (warned about on argv).
        prompt: asked for on a terminal when missing; None: never asked.
        opaque: a regular expression for values that reveal nothing (a handle).
        number: a TOML number is taken too (as its text; the parser judges it).
    """

    key: str
    option: str
    many: bool = False
    sensitive: bool = True
    prompt: str | None = None
    opaque: str = HANDLE
    number: bool = False

    @property
    def file_key(self) -> str:
        """The key in a case file: the option without its dashes (``case-id``, ``name``)."""
        return self.option.lstrip("-").lower()


class CaseInput:
    """One command's fields: each value, and the name it was given by."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._renamed: dict[str, str] = {}  # option -> name, where they differ
        self.on_argv: list[str] = []  # sensitive options typed on the command line
        self.origin: Path | None = None  # the case file, if any (not stdin)
        self.in_file: set[str] = set()  # keys whose values came from the case file

    def set(self, field: Field, value: Any, name: str) -> None:
        """Record ``field``'s value and how it was given (``--case-id``, ``FILE: case-id``)."""
        self._values[field.key] = value
        self._names[field.key] = name
        if name != field.option:
            self._renamed[field.option] = name

    def get(self, key: str) -> Any:
        """The value given for ``key`` (a string, a list of strings for ``many``), or None."""
        return self._values.get(key)

    def name(self, key: str, default: str | None = None) -> str:
        """How the user gave ``key``: ``--case-id``, ``FILE: case-id`` or ``prompt: case-id``.

        Args:
            key: the field's argparse destination.
            default: the name when not given; else the option (``case_id``: ``--case-id``).
        """
        return self._names.get(key) or default or "--" + key.replace("_", "-")

    @contextlib.contextmanager
    def naming(self) -> Iterator[None]:
        """Refusals raised by option name (``--tap #2``) name the field as it was given."""
        try:
            yield
        except UsageError as exc:
            option, sep, rest = exc.field.partition(" #")
            if option not in self._renamed:
                raise
            raise UsageError(self._renamed[option] + sep + rest, exc.problem) from None

    def warn(self, instead: str = SAFER_WAYS) -> None:
        """One line on stderr if case data came on the command line; nothing otherwise.

        Args:
            instead: what to do next time, e.g. name the agency by its handle.
        """
        if not self.on_argv:
            return
        print(
            f"mediate: warning: case data on the command line ({', '.join(self.on_argv)}): "
            "every local user can read it while the command runs (ps) and the shell history "
            f"keeps it; {instead}",
            file=sys.stderr,
        )


def add_from_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--from FILE``: the command's fields from a TOML file, ``-`` for stdin."""
    parser.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        action=Once,
        help=f"{what} from a TOML file (keys: the option names without dashes), "
        "or - for stdin; keeps case data out of the process list and shell history",
    )


def read_case_file(path: str) -> tuple[dict[str, Any], str]:
    """The TOML table in ``path`` (``-``: stdin) and the label refusals name it by.

    Raises:
        UsageError: unreadable, over :data:`FILE_LIMIT`, not UTF-8, or not TOML.
    """
    label = "stdin" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(FILE_LIMIT + 1)
        else:
            with open(path, "rb") as stream:
                raw = stream.read(FILE_LIMIT + 1)
    except OSError as exc:
        raise UsageError("--from", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > FILE_LIMIT:
        raise UsageError(label, f"larger than {FILE_LIMIT // 1024} KiB; a case file is a few lines")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (some Windows editors) is fine
    except UnicodeDecodeError:
        raise UsageError(label, "not UTF-8 text; save the case file as UTF-8") from None
    try:
        # tomllib's messages give the line and column, never the text there.
        return tomllib.loads(text), label
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(label, f"not valid TOML: {exc}") from None


def _file_value(field: Field, value: Any, name: str) -> str | list[str]:
    if isinstance(value, str):
        return [value] if field.many else value
    if field.number and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if field.many and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    kind = 'a string or a list of strings ("…" or ["…", "…"])' if field.many else 'a string ("…")'
    kind = "a number (7)" if field.number else kind
    raise UsageError(name, f"must be {kind}")


def _from_file(args: argparse.Namespace, fields: Sequence[Field], given: CaseInput) -> None:
    table, label = read_case_file(args.from_file)
    by_key = {f.file_key: f for f in fields}
    for key in table:
        if key not in by_key:
            shown = key if _KEY.fullmatch(key) else "a key"
            allowed = ", ".join(by_key)
            raise UsageError(f"{label}: {shown}", f"not a field of this command; use {allowed}")
    for key, value in table.items():
        field = by_key[key]
        name = f"{label}: {key}"
        if getattr(args, field.key, None) is not None:
            raise UsageError(
                field.option, f"given both on the command line and in {label}; give it once"
            )
        given.set(field, _file_value(field, value, name), name)
        given.in_file.add(field.key)
    if args.from_file != "-":
        given.origin = Path(args.from_file)


def _ask(field: Field) -> str | list[str] | None:
    """Ask on the terminal (the question on stderr: stdout is for the command's result)."""
    assert field.prompt is not None
    if not field.many:
        print(f"{field.prompt}: ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        return line.strip() or None
    print(f"{field.prompt} (one a line, an empty line to end):", file=sys.stderr, flush=True)
    values = []
    while line := sys.stdin.readline().strip():  # EOF reads "" too
        values.append(line)
    return values or None


def gather(args: argparse.Namespace, fields: Sequence[Field]) -> CaseInput:
    """The command's fields from its options, its ``--from`` file, and the terminal.

    A field given both on the command line and in the file is refused; so is
    a key the command does not know. Missing fields that have a prompt are
    asked for when stdin is a terminal (never when it carried the file).

    Raises:
        UsageError: see :func:`read_case_file`, plus the conflicts above.
    """
    given = CaseInput()
    if getattr(args, "from_file", None) is not None:
        _from_file(args, fields, given)
    for field in fields:
        value = getattr(args, field.key, None)
        if value is None or given.get(field.key) is not None:
            continue
        given.set(field, value, field.option)
        if field.sensitive and not (isinstance(value, str) and re.fullmatch(field.opaque, value)):
            given.on_argv.append(field.option)
    if getattr(args, "from_file", None) == "-" or not sys.stdin.isatty():
        return given
    for field in fields:
        if field.prompt is not None and given.get(field.key) is None:
            value = _ask(field)
            if value is not None:
                given.set(field, value, f"prompt: {field.file_key}")
    return given


def relative_to_file(given: CaseInput, key: str) -> str | None:
    """``key``'s path; one from a case file is relative to the file's directory."""
    path = given.get(key)
    if path is None or given.origin is None or key not in given.in_file:
        return path
    return str(given.origin.parent / path)
