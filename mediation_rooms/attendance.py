"""Who has been in a room this session and when each seat last left: whether an arrival is a
first ``joined`` or a ``reconnected``, and after how long a gap. No I/O.

Rules (the timeline is evidence: it must say what happened, and no more than is known):

- A seat's first arrival in the room session is ``joined``. Every later arrival of that seat
  is ``reconnected``, with ``gap_ms``: how long it was away, from its last departure (its
  socket closed, it was denied or removed, or its host stopped hosting the room) to now.
- A seat whose device is still connected when another device of it joins (the new one replaces
  the old) was never away: ``reconnected`` with ``gap_ms`` 0, after the ``replaced``.
- A seat that was present when its last host stopped without a goodbye (killed, or taken for
  dead by the others) left at a moment nobody recorded: its next arrival is ``reconnected``
  with ``gap_ms`` null (unknown).

:class:`Attendance` is kept in the room's live state in Redis (:meth:`Attendance.live`), so
the rules hold when hosting moves to another process. Times are wall-clock seconds, which every
process shares. Should the live state be lost (Redis lost its data), the next arrivals are
``joined`` again: the timeline then still shows the earlier ones, and the hosting that resumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Attendance:
    """Arrivals and departures of a room session's seats (seat names as stored)."""

    #: seat -> when it first arrived this session.
    arrived: dict[str, float] = field(default_factory=dict)
    #: seat -> when it last left; ``None``: it left at a moment nobody recorded.
    departed: dict[str, float | None] = field(default_factory=dict)

    def arrive(self, seat: str, now: float, *, still_present: bool) -> tuple[str, dict[str, Any]]:
        """The timeline event for ``seat`` arriving at ``now`` and its details;
        ``still_present``: another device of the seat is connected (and is being replaced)."""
        if seat not in self.arrived:
            self.arrived[seat] = now
            self.departed.pop(seat, None)
            return "joined", {}
        gap_ms: int | None
        if still_present:
            gap_ms = 0
        else:
            left = self.departed.get(seat)
            gap_ms = None if left is None else max(0, round((now - left) * 1000))
        self.departed.pop(seat, None)
        return "reconnected", {"gap_ms": gap_ms}

    def leave(self, seat: str, now: float) -> None:
        """``seat`` is no longer in the room, as of ``now``."""
        if seat in self.arrived:
            self.departed[seat] = now

    def live(self) -> dict[str, Any]:
        """The fields of the room's live state this is kept in (read back by :meth:`from_live`)."""
        return {"arrived": dict(self.arrived), "departed": dict(self.departed)}

    @classmethod
    def from_live(cls, live: dict[str, Any]) -> Attendance:
        """The attendance a live state holds. Seats it lists as ``present`` had a host that
        stopped without recording their departure (nothing is present here yet): when they
        left is unknown."""
        arrived = {str(seat): float(at) for seat, at in (live.get("arrived") or {}).items()}
        departed: dict[str, float | None] = {
            str(seat): None if at is None else float(at)
            for seat, at in (live.get("departed") or {}).items()
        }
        attendance = cls(arrived, departed)
        attendance._lost_with_host(live.get("present") or ())
        return attendance

    def _lost_with_host(self, seats: Iterable[str]) -> None:
        for seat in seats:
            if seat in self.arrived:
                self.departed[seat] = None
