"""The ``cmii.jsonl`` line of an envelope, its unchanging JSON text made once per flow.

A line is the envelope's JSON view (``pdu/jsonview.py``) plus where and
when it arrived, serialised compactly::

    {"type":"pduEnvelope","stream":{..},"sequenceNumber":N,"mediationTime":"..",
     "content":{..,"timestamp":"..",..},"redelivered":false,"retrieved":false,
     "receivedTime":".."}

Within a flow the header reports differ only in their time stamps, and the
hot-path decoder hands out messages that share every other part
(:mod:`mediation.pdu.fast_cmii`), so the content's JSON text is made once
per message shape, split around its time stamp, and later lines are that
text with the times put in: ``json.dumps`` of a whole line cost about as
much as the rest of storing the envelope. Anything else (a completeness
notice, a message without a time stamp, a text that cannot be split
unambiguously) is serialised as before. The lines are byte-identical to
``json.dumps(view, separators=(",", ":"))`` of the view (proven by a
property test, tests/test_lea_jsonline.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
from collections.abc import Callable
from typing import Any

from mediation import pdu
from mediation.pdu.jsonview import SharedPartsView, iso_time

_SEPARATORS = (",", ":")
# Stands for the time stamp while a content's text is made; a peer's string
# equal to it makes the text ambiguous (found twice): that shape is not split.
_MARK = "\x00timestamp\x00"
_MARK_JSON = json.dumps(_MARK)
_CLOCK = {status: ',"clockStatus":' + json.dumps(status.value) for status in pdu.ClockStatus}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=_SEPARATORS)


class JsonLines:
    """Makes ``cmii.jsonl`` lines; remembers at most ``limit`` shapes (then starts afresh).

    Args:
        limit: message shapes and streams remembered at most.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.view = SharedPartsView(limit)
        # key of a message's shared parts -> (the message, text before and after its time)
        self._contents: dict[tuple[Any, ...], tuple[Any, str, str] | None] = {}
        self._streams: dict[int, tuple[pdu.StreamId, str]] = {}  # id -> (stream, _head text)
        # Per message class: what reads its fields but the time stamp (the key's parts).
        self._shared: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
        self._end_text: tuple[dt.datetime | None, bool | None, str] = (None, None, "")
        # The last mediationTime, its text, and the line's text from it to the content.
        self._mediated: tuple[dt.datetime | None, str, str] = (None, "", "")

    def line(self, envelope: pdu.Envelope, *, retrieved: bool, at: dt.datetime) -> bytes:
        """The line of one envelope, newline included.

        Args:
            envelope: the decoded envelope.
            retrieved: it came by retrieval.
            at: when it arrived (aware, UTC).

        Raises:
            TypeError, ValueError: no JSON view can be made of it (as the view raises).
        """
        content = envelope.content
        split = None
        if isinstance(content, pdu.CmIIMessage) and isinstance(content.timestamp, dt.datetime):
            split = self._content(content)
        if split is None:
            out = self.view.to_json(envelope)
            out["retrieved"] = retrieved
            out["receivedTime"] = iso_time(at)
            return _dumps(out).encode() + b"\n"
        _message, before, after = split
        clock = envelope.clock_status
        tail = "" if clock is None else _CLOCK[clock]
        if envelope.redelivered is not None:
            tail += ',"redelivered":true' if envelope.redelivered else ',"redelivered":false'
        mediated = envelope.mediation_time
        last, mediated_text, mediated_part = self._mediated
        if mediated is not last:  # a batch's envelopes share one (the reader's cache): by identity
            mediated_text = iso_time(mediated)
            mediated_part = f',"mediationTime":"{mediated_text}","content":'
            self._mediated = (mediated, mediated_text, mediated_part)
        stamp = content.timestamp
        stamp_text = mediated_text if stamp == mediated else iso_time(stamp)
        return (
            f"{self._head(envelope.stream)}{envelope.sequence_number}{mediated_part}"
            f'{before}"{stamp_text}"{after}{tail}{self._end(retrieved, at)}'
        ).encode()

    def _content(self, message: pdu.CmIIMessage) -> tuple[Any, str, str] | None:
        """The message's text before and after its time stamp; None: serialise it whole.

        Returns:
            ``(a message of that shape, text before, text after)``, or None.
        """
        cls = message.__class__
        shared = self._shared.get(cls)
        if shared is None:
            shared = self._shared_parts(cls)
        key = (cls, *map(id, shared(message)))
        seen = self._contents.get(key, False)
        if seen is False:
            seen = self._make(message)
            if len(self._contents) >= self.limit:
                self._contents.clear()
            self._contents[key] = seen  # the message keeps every id in the key alive
        return seen

    def _shared_parts(self, cls: type) -> Callable[[Any], tuple[Any, ...]]:
        """Reads every field but the time stamp of a message of class ``cls``, in one call."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "timestamp"]
        getter = (
            operator.attrgetter(*names) if len(names) > 1 else lambda m: (getattr(m, names[0]),)
        )
        if len(self._shared) >= self.limit:
            self._shared.clear()
        self._shared[cls] = getter
        return getter

    def _make(self, message: pdu.CmIIMessage) -> tuple[Any, str, str] | None:
        made = dict(self.view.to_json(message))
        if "timestamp" not in made:
            return None
        made["timestamp"] = _MARK
        text = _dumps(made)
        if text.count(_MARK_JSON) != 1:
            return None
        before, after = text.split(_MARK_JSON)
        return message, before, after

    def _head(self, stream: pdu.StreamId) -> str:
        """A line's text up to its sequence number's digits (one per stream)."""
        seen = self._streams.get(id(stream))
        if seen is not None and seen[0] is stream:
            return seen[1]
        text = _dumps({"warrantHandle": stream.warrant_handle, "kind": stream.kind.value})
        text = f'{{"type":"pduEnvelope","stream":{text},"sequenceNumber":'
        if len(self._streams) >= self.limit:
            self._streams.clear()
        self._streams[id(stream)] = (stream, text)
        return text

    def _end(self, retrieved: bool, at: dt.datetime) -> str:
        """A line's text after its content, newline included (one per wake-up: ``at``)."""
        last, was, text = self._end_text
        if retrieved is was and (at is last or (last is not None and at == last)):
            return text  # equal instants, equal text
        text = (
            f',"retrieved":{"true" if retrieved else "false"},"receivedTime":"{iso_time(at)}"}}\n'
        )
        self._end_text = (at, retrieved, text)
        return text
