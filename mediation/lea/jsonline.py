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
        self._streams: dict[int, tuple[pdu.StreamId, str]] = {}
        # Per message class: what reads its fields but the time stamp (the key's parts).
        self._shared: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
        self._time: tuple[dt.datetime | None, str] = (None, "")
        self._mediated: tuple[dt.datetime | None, str] = (None, "")

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
        before, after = split
        clock = envelope.clock_status
        tail = "" if clock is None else _CLOCK[clock]
        if envelope.redelivered is not None:
            tail += ',"redelivered":true' if envelope.redelivered else ',"redelivered":false'
        mediated = envelope.mediation_time
        last, mediated_text = self._mediated
        if mediated is not last:  # a batch's envelopes share one (the reader's cache): by identity
            mediated_text = iso_time(mediated)
            self._mediated = (mediated, mediated_text)
        stamp = content.timestamp
        stamp_text = mediated_text if stamp == mediated else iso_time(stamp)
        return (
            f'{{"type":"pduEnvelope","stream":{self._stream(envelope.stream)},'
            f'"sequenceNumber":{envelope.sequence_number},'
            f'"mediationTime":"{mediated_text}",'
            f'"content":{before}"{stamp_text}"{after}{tail},'
            f'"retrieved":{"true" if retrieved else "false"},'
            f'"receivedTime":"{self._iso(at)}"}}\n'
        ).encode()

    def _content(self, message: pdu.CmIIMessage) -> tuple[str, str] | None:
        """The message's text before and after its time stamp; None: serialise it whole."""
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
        if seen is None:
            return None
        return seen[1], seen[2]

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

    def _stream(self, stream: pdu.StreamId) -> str:
        seen = self._streams.get(id(stream))
        if seen is not None and seen[0] is stream:
            return seen[1]
        text = _dumps({"warrantHandle": stream.warrant_handle, "kind": stream.kind.value})
        if len(self._streams) >= self.limit:
            self._streams.clear()
        self._streams[id(stream)] = (stream, text)
        return text

    def _iso(self, when: dt.datetime) -> str:
        """iso_time, remembering the last one (the arrival time is one per wake-up)."""
        last, text = self._time
        if when is last or (last is not None and when == last):  # equal instants, equal text
            return text
        text = iso_time(when)
        self._time = (when, text)
        return text
