"""A hosted room's timeline as the room writes it: into the recording once the room is live,
held until then. No I/O of its own.

The recording, and its ``timeline.jsonl``, starts when the room goes live, on the room clock
(``t_ms``: milliseconds since that moment). What happens before it is evidence too: people
arriving in the waiting room and what they consented to, a drop and a return, a microphone
switched off, someone denied. :class:`RoomTimeline` holds those events with the wall-clock
time they happened and, when the room goes live (:meth:`RoomTimeline.attach`), writes each with
its true ``t_ms`` (negative: before the clock's origin) and ``"before_live": true``, in the
order they happened, right after ``recording_started`` and before the ``admitted`` that made
the room live. So every line's ``t_ms`` is when it happened, and the file stays append-only, in
the order written: sorting it by ``t_ms`` (stably) gives the order of events.

The held events are part of the room's live state in Redis (:meth:`RoomTimeline.held`), so a
room whose hosting moves to another process before it goes live loses none of them. That is
why they keep wall-clock time, which every process shares (the room clock's own origin,
``live_since``, is a wall-clock time too); they are turned into the monotonic time that the
recording's clock reads (``RoomRecording.event(at=…)``) when they are written. A room that
ends without going live has no recording: what it held is dropped with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Events held before the room goes live at most (a waiting room where someone reconnects
#: in a loop must not grow the live state without bound); later ones are counted, not kept.
MAX_HELD_EVENTS = 200


class TimelineSink(Protocol):
    """Where a live room's events go: ``recording.RoomRecording``."""

    def event(self, event: str, *, at: float | None = None, **details: Any) -> None: ...


class RoomTimeline:
    """The events of one room session, written to its recording or held until there is one."""

    def __init__(self, held: Iterable[dict[str, Any]] = (), *, dropped: int = 0) -> None:
        self._held = [dict(entry) for entry in held][:MAX_HELD_EVENTS]
        self._dropped = dropped
        self._sink: TimelineSink | None = None
        self._closed = False

    @property
    def holding(self) -> bool:
        """Whether events are held (the room has not gone live here yet)."""
        return self._sink is None and not self._closed

    def event(self, event: str, **details: Any) -> None:
        """Record ``event`` now: in the recording, or held with the current wall-clock time."""
        if self._sink is not None:
            self._sink.event(event, **details)
        elif self._closed:
            return
        elif len(self._held) >= MAX_HELD_EVENTS:
            self._dropped += 1
        else:
            self._held.append({"at": time.time(), "event": event, **details})

    def attach(self, sink: TimelineSink) -> None:
        """The room's recording runs from now on: write what was held (``before_live``), and
        every later event straight into it."""
        self._sink = sink
        held, self._held = self._held, []
        wall_now, monotonic_now = time.time(), time.monotonic()
        for entry in held:
            details = dict(entry)
            at = monotonic_now - (wall_now - float(details.pop("at")))
            sink.event(str(details.pop("event")), at=at, before_live=True, **details)
        if self._dropped:
            log.warning("%d timeline events before the room went live were not kept", self._dropped)
            sink.event("events_not_kept", before_live=True, count=self._dropped)
            self._dropped = 0

    def close(self) -> None:
        """The room ended: nothing more is held (a room that never went live drops it all)."""
        self._closed = True
        self._held.clear()
        self._dropped = 0

    def held(self) -> dict[str, Any]:
        """What is held, for the live state (read back with :meth:`from_live`)."""
        return {"before_live": list(self._held), "before_live_dropped": self._dropped}

    @classmethod
    def from_live(cls, live: dict[str, Any]) -> RoomTimeline:
        return cls(live.get("before_live") or (), dropped=int(live.get("before_live_dropped") or 0))
