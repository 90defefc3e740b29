"""`jiefen bench rooms` end to end: one room for a few seconds, against a real `jiefen serve`.

Runs the command as a user would (a subprocess, embedded defaults, ``--json``) and checks that
every figure is there and sane. The issue's targets (30 fps, 1 s to first frame, CPU per room)
depend on the machine and its load, so they are reported by the command, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import clean_environment

SEATS = {"mediator", "applicant", "respondent"}
COMMAND = ["-m", "jiefen.cli", "bench", "rooms", "--rooms", "1", "--seconds", "3", "--json"]


@pytest.mark.timeout(120)
def test_one_room_reports_every_figure() -> None:
    env = clean_environment()
    run = subprocess.run(
        [sys.executable, *COMMAND],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout)

    assert figures["rooms"] == 1
    assert 2.5 < figures["window_s"] < 10
    assert figures["server_cpu_s"] > 0 and figures["server_cores"] > 0
    assert figures["server_cores_per_room"] == pytest.approx(figures["server_cores"], abs=1e-3)
    assert figures["host_calibration_ms"] > 0
    assert figures["client_cores"] > 0
    assert len(figures["loadavg_before"]) == 3
    assert {t["name"] for t in figures["targets"]} == {
        "fps delivered (min)",
        "recording complete (min)",
        "join→first frame (max)",
        "server CPU per room",
    }
    assert all(isinstance(t["met"], bool) for t in figures["targets"])
    assert set(figures["definitions"]) >= {"fps", "loss", "join_to_first_frame", "completeness"}
    assert figures["data_dir"] is None  # removed without --keep

    (room,) = figures["per_room"]
    assert room["room_id"] and room["case_no"].startswith("JF")
    assert room["server_cores"] > 0
    assert {seat["seat"] for seat in room["seats"]} == SEATS
    for seat in room["seats"]:
        others = SEATS - {seat["seat"]}
        assert {stream["publisher"] for stream in seat["received"]} == others
        for stream in seat["received"]:
            assert stream["video_frames"] > 0 and stream["fps"] > 0, (seat["seat"], stream)
            assert stream["first_frame_s"] is not None and stream["first_frame_s"] > 0
            for loss in (stream["video_loss"], stream["audio_loss"]):
                assert loss is None or 0 <= loss <= 1
        assert seat["join_to_first_frame_s"] is not None and seat["join_to_first_frame_s"] > 0
        assert seat["frames_sent"] > 0
        assert seat["recorded_parts"] == 1
        assert 0.9 <= seat["completeness"] <= 1.0, seat
        assert seat["completeness"] == pytest.approx(
            seat["frames_recorded"] / seat["frames_sent"], abs=1e-4
        )
    assert room["min_completeness"] == min(seat["completeness"] for seat in room["seats"])
