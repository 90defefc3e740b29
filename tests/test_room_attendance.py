"""The rules of ``attendance.py`` and ``timeline.py`` on their own, without a server: when an
arrival is ``joined`` or ``reconnected`` (and with what gap), and how events held before the
room went live are written, through a host change (the live state) too."""

from __future__ import annotations

import json
import time
from typing import Any

from mediation_rooms.attendance import Attendance
from mediation_rooms.recording import RoomClock
from mediation_rooms.timeline import MAX_HELD_EVENTS, RoomTimeline


def test_the_first_arrival_joins_and_every_later_one_reconnects_with_its_gap() -> None:
    attendance = Attendance()
    assert attendance.arrive("applicant", 100.0, still_present=False) == ("joined", {})
    attendance.leave("applicant", 130.0)
    assert attendance.arrive("applicant", 132.5, still_present=False) == (
        "reconnected",
        {"gap_ms": 2500},
    )
    # A second device while the first is connected: never away.
    assert attendance.arrive("applicant", 140.0, still_present=True) == (
        "reconnected",
        {"gap_ms": 0},
    )
    assert attendance.arrive("mediator", 141.0, still_present=False) == ("joined", {})
    # Leaving is only known of seats that arrived.
    attendance.leave("respondent", 150.0)
    assert attendance.arrive("respondent", 151.0, still_present=False) == ("joined", {})


def test_the_attendance_survives_the_live_state_and_a_host_that_stopped_without_a_word() -> None:
    attendance = Attendance()
    attendance.arrive("mediator", 10.0, still_present=False)
    attendance.arrive("applicant", 11.0, still_present=False)
    attendance.leave("applicant", 20.0)
    # The host saved the mediator as present, and then was killed.
    live = json.loads(json.dumps({**attendance.live(), "present": ["mediator"]}))
    again = Attendance.from_live(live)
    assert again.arrive("applicant", 25.0, still_present=False) == (
        "reconnected",
        {"gap_ms": 5000},
    )
    assert again.arrive("mediator", 25.0, still_present=False) == (
        "reconnected",
        {"gap_ms": None},
    )
    assert Attendance.from_live({}).arrive("mediator", 1.0, still_present=False)[0] == "joined"


class Sink:
    """Where a timeline writes, with the room clock a recording has."""

    def __init__(self, live_since: float) -> None:
        self.clock = RoomClock(live_since)
        self.lines: list[dict[str, Any]] = []

    def event(self, event: str, *, at: float | None = None, **details: Any) -> None:
        self.lines.append({"t_ms": self.clock.ms(at), "event": event, **details})


def test_events_before_the_room_went_live_are_written_at_their_time_in_their_order() -> None:
    now = time.time()
    timeline = RoomTimeline()
    assert timeline.holding
    timeline.event("joined", seat="mediator")
    timeline.event("consented", seat="mediator", recording=False)
    # The live state carries them to another host, which makes the room live 3 s later.
    live = json.loads(json.dumps(timeline.held()))
    live["before_live"][0]["at"] = now - 3.0
    live["before_live"][1]["at"] = now - 2.0
    moved = RoomTimeline.from_live(live)
    sink = Sink(live_since=now)
    sink.event("recording_started")
    moved.attach(sink)
    moved.event("admitted", seat="applicant")
    assert [(line["event"], line.get("before_live")) for line in sink.lines] == [
        ("recording_started", None),
        ("joined", True),
        ("consented", True),
        ("admitted", None),
    ]
    assert abs(sink.lines[1]["t_ms"] + 3000) < 50 and abs(sink.lines[2]["t_ms"] + 2000) < 50
    assert sink.lines[2]["seat"] == "mediator" and sink.lines[2]["recording"] is False
    assert not moved.holding and moved.held() == {"before_live": [], "before_live_dropped": 0}


def test_what_is_held_is_bounded_and_dropped_with_a_room_that_never_went_live() -> None:
    timeline = RoomTimeline()
    for _ in range(MAX_HELD_EVENTS + 7):
        timeline.event("reconnected", seat="applicant", gap_ms=1)
    held = timeline.held()
    assert len(held["before_live"]) == MAX_HELD_EVENTS and held["before_live_dropped"] == 7
    sink = Sink(live_since=time.time())
    RoomTimeline.from_live(json.loads(json.dumps(held))).attach(sink)
    assert sink.lines[-1]["event"] == "events_not_kept" and sink.lines[-1]["count"] == 7
    timeline.close()
    timeline.event("ended")
    assert timeline.held() == {"before_live": [], "before_live_dropped": 0}
