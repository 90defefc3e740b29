"""``POST /rooms/check``: the join page's first look at its link, against the real server.

It must refuse exactly what placement and ``join`` refuse, tell the page which identity re-check
the seat is asked for, reserve no media process, and tell the link's holder nothing beyond their
own seat.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from mediation_rooms import texts
from mediation_rooms.join_token import JoinClaims, issue_join_token
from state import room_store
from tests.harness import RunningJiefen
from tests.test_room_signalling import RESPONDENT_PHONE, file_case, open_room, token_of
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

FIELDS = {"seat", "role_name", "name", "case_no", "identity", "state"}


async def check(jiefen: RunningJiefen, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with jiefen.session.post(f"{jiefen.url}/rooms/check", data=data) as response:
        assert response.headers["Cache-Control"] == "no-store"
        answer: dict[str, Any] = await response.json()
        return response.status, answer


async def test_a_good_link_names_its_own_seat_and_the_identity_it_is_asked_for(
    jiefen: RunningJiefen,
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(
        jiefen, case_no, mediator_name="王调解员", extra_seats={"interpreter": "阿依"}
    )
    links = opened["links"]
    # A seat with an identity re-check: only the first character of its name until answered
    # (whoever holds the link may not be its person); the others' names have no check to pass.
    expected = {
        "mediator": ("调解员", "王调解员", None),
        "applicant": ("申请人", "张*", "id_last6"),
        "respondent": ("被申请人", "李*", "phone"),
        "interpreter": ("翻译", "阿依", None),
    }
    names = {"王调解员", "张三", "李四", "阿依"}
    for seat, (role_name, name, identity) in expected.items():
        status, answer = await check(jiefen, {"token": token_of(links[seat])})
        assert status == 200, answer
        assert set(answer) == FIELDS
        assert answer == {
            "seat": seat,
            "role_name": role_name,
            "name": name,
            "case_no": case_no,
            "identity": identity,
            "state": "scheduled",
        }
        # Nothing of the answers on file, nor of anybody else.
        raw = json.dumps(answer, ensure_ascii=False)
        for secret in (ID_NUMBER, ID_NUMBER[-6:], RESPONDENT_PHONE, "13800138000"):
            assert secret not in raw
        assert not any(other in raw for other in names - {name}), raw

    # Checking reserves no media process; placement (the next step) does.
    hub = jiefen.services.hub
    assert hub.placement is not None
    room_key = hub.placement.room_key(opened["room_id"])
    assert await hub.redis.get(room_key) is None
    async with jiefen.session.post(
        f"{jiefen.url}/rooms/placement", json={"token": token_of(links["applicant"])}
    ) as response:
        assert response.status == 200
    assert await hub.redis.get(room_key) is not None


async def test_bad_links_are_refused_as_placement_refuses_them(jiefen: RunningJiefen) -> None:
    opened = await open_room(jiefen, await file_case(jiefen))
    links, room_id = opened["links"], opened["room_id"]
    token = token_of(links["applicant"])
    payload, signature = token.split(".")
    key = jiefen.services.rooms.join_key
    room = await room_store.get_room(jiefen.services.db, room_id)
    assert room is not None
    nonce = room.seat("applicant").nonce  # type: ignore[union-attr]
    refused = {
        "forged": payload + "." + ("B" if signature[0] == "A" else "A") + signature[1:],
        "expired": issue_join_token(
            key, JoinClaims(room_id, "applicant", nonce, int(time.time()) - 1)
        ),
        # Correctly signed, for a seat the room does not have.
        "revoked": issue_join_token(
            key, JoinClaims(room_id, "interpreter", nonce, int(time.time()) + 600)
        ),
        "malformed": "not-a-token",
    }
    for code, bad in refused.items():
        status, answer = await check(jiefen, {"token": bad})
        assert (status, answer) == (403, {"error": code, "message": texts.REFUSALS[code]})
        async with jiefen.session.post(
            f"{jiefen.url}/rooms/placement", json={"token": bad}
        ) as response:
            assert (response.status, await response.json()) == (status, answer)

    for body in (b"not json", b'{"token": 5}', b"[]", b"{}"):
        status, answer = await check(jiefen, body)
        assert (status, answer) == (
            400,
            {"error": "malformed", "message": texts.REFUSALS["malformed"]},
        )

    # An ended room: 410, for every seat.
    assert await room_store.set_room_state(
        jiefen.services.db, room_id, expected="scheduled", new="ended", now=datetime.now(UTC)
    )
    for seat in ("mediator", "applicant", "respondent"):
        status, answer = await check(jiefen, {"token": token_of(links[seat])})
        assert status == 410
        assert answer == {"error": "room_closed", "message": texts.REFUSALS["room_closed"]}


async def test_the_ping_answers_nothing_and_is_not_cached(jiefen: RunningJiefen) -> None:
    async with jiefen.session.get(f"{jiefen.url}/rooms/ping") as response:
        assert response.status == 204
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.read() == b""


async def test_a_seat_locked_by_wrong_answers_is_refused_at_once(jiefen: RunningJiefen) -> None:
    links = (await open_room(jiefen, await file_case(jiefen)))["links"]
    applicant, respondent = token_of(links["applicant"]), token_of(links["respondent"])
    assert (await check(jiefen, {"token": applicant}))[0] == 200
    # Five wrong answers through the real signalling, as a guessing link holder would give.
    codes = []
    for _ in range(5):
        async with jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws") as ws:
            await ws.send_json(
                {
                    "type": "join",
                    "token": applicant,
                    "identity": "000000",
                    "consent_recording": True,
                    "acknowledged_notices": True,
                }
            )
            codes.append((await ws.receive_json(timeout=10))["code"])
    assert codes == ["identity_mismatch"] * 4 + ["too_many_attempts"]
    status, answer = await check(jiefen, {"token": applicant})
    assert (status, answer) == (
        403,
        {"error": "too_many_attempts", "message": texts.REFUSALS["too_many_attempts"]},
    )
    # The lock is the seat's: the other party's link is still good.
    assert (await check(jiefen, {"token": respondent}))[0] == 200
