"""A room's lifecycle: every move the rules forbid is refused, naming both states, and changes
nothing: in memory (``RoomLifecycle``), in a hosted room (``LiveRoom.set_state``) and in storage
(``room_store.set_room_state``, the one write path, tested in test_state_room_store.py too)."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from jiefen.errors import InvalidTransition, JiefenError
from mediation_rooms import room as room_rules
from mediation_rooms.room import (
    ALLOWED_TRANSITIONS,
    RoomLifecycle,
    RoomState,
    RoomStateError,
    check_transition,
)
from state import room_store
from tests.harness import RunningJiefen
from tests.test_room_signalling import file_case, open_room

ALL_PAIRS = list(itertools.product(RoomState, RoomState))
ALLOWED = [(old, new) for old, new in ALL_PAIRS if new in ALLOWED_TRANSITIONS[old]]
FORBIDDEN = [(old, new) for old, new in ALL_PAIRS if new not in ALLOWED_TRANSITIONS[old]]


def _ids(pair: tuple[RoomState, RoomState]) -> str:
    return f"{pair[0]}->{pair[1]}"


def test_the_rules_are_the_documented_ones() -> None:
    assert {(old.value, new.value) for old, new in ALLOWED} == {
        ("scheduled", "open"),
        ("scheduled", "ended"),
        ("open", "live"),
        ("open", "ended"),
        ("live", "ended"),
        ("ended", "archived"),
    }
    assert len(FORBIDDEN) == 25 - 6  # nothing moves to itself, nothing goes back


@pytest.mark.parametrize("pair", FORBIDDEN, ids=_ids)
def test_a_forbidden_move_is_refused_naming_both_states_and_changes_nothing(
    pair: tuple[RoomState, RoomState],
) -> None:
    old, new = pair
    lifecycle = RoomLifecycle("rm-test", old)
    with pytest.raises(RoomStateError) as refused:
        lifecycle.set_state(new)
    assert lifecycle.state is old
    error = refused.value
    assert (error.current, error.wanted) == (old, new)
    assert isinstance(error, InvalidTransition) and isinstance(error, JiefenError)
    assert (error.kind, error.old, error.new) == ("room", old.value, new.value)
    assert f"{old.value} -> {new.value}" in str(error)
    with pytest.raises(RoomStateError):
        check_transition(old, new)


@pytest.mark.parametrize("pair", ALLOWED, ids=_ids)
def test_an_allowed_move_is_made(pair: tuple[RoomState, RoomState]) -> None:
    old, new = pair
    lifecycle = RoomLifecycle("rm-test", old)
    lifecycle.set_state(new)
    assert lifecycle.state is new
    check_transition(old, new)


def test_the_rules_module_stays_pure_since_state_imports_it() -> None:
    """``state.room_store`` checks moves with ``mediation_rooms.room``, as ``state.case_store``
    uses ``cases.status``: that module must stay free of I/O (and of the rest of the package)."""
    source = Path(room_rules.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    outside = {
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names and name != "__future__"
    }
    assert outside == {"jiefen.errors"}
    # Importing the store pulls in no media, web or signalling code.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, state.room_store; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiohttp', 'aiortc', 'av') or m.startswith('mediation_rooms.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "['mediation_rooms.room']"


@pytest.mark.services
async def test_a_hosted_room_refuses_a_forbidden_move_and_changes_nothing(
    jiefen: RunningJiefen,
) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    hub = jiefen.services.hub
    record = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert record is not None
    room = await hub._live_room(record)
    try:
        for wanted in (RoomState.LIVE, RoomState.ARCHIVED, RoomState.SCHEDULED):
            with pytest.raises(RoomStateError) as refused:
                await room.set_state(wanted)
            assert (refused.value.current, refused.value.wanted) == (RoomState.SCHEDULED, wanted)
            assert room.lifecycle.state is RoomState.SCHEDULED
        await room.set_state(RoomState.OPEN)
        with pytest.raises(RoomStateError):
            await room.set_state(RoomState.ARCHIVED)  # not before it has ended
        assert room.lifecycle.state is RoomState.OPEN
        stored = await room_store.get_room(jiefen.services.db, opened["room_id"])
        assert stored is not None and stored.state == "open"
        assert stored.live_at is None and stored.ended_at is None
    finally:
        assert await hub.release_if_empty(room)
