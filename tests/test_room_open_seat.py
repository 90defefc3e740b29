"""The mediator opens an extra seat (interpreter, a party's agent) during the session.

A real server on 127.0.0.1:0 with real Redis and PostgreSQL, real aiortc peers (synthetic
media) driven over the signalling WebSocket, as in test_room_signalling.py: the new seat's link
comes back to the mediator, everyone connected renegotiates on their current connection, and the
fourth person joins, is admitted, and is seen, heard and recorded like the others. One test runs
the mediator's side in headless Chromium (the join page's invite control and its renegotiation),
with synthetic peers for the others to keep it light.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from playwright.async_api import Browser, expect

from mediation_rooms.room import SeatRefused, SeatRole
from state import room_store
from tests.harness import RunningJiefen
from tests.test_room_browser import (
    UI_WAIT_MS,
    count,
    join_url,
    new_page,
    pass_consent_and_devices,
    received,
    until,
)
from tests.test_room_signalling import (
    RESPONDENT_PHONE,
    Client,
    file_case,
    frames,
    open_room,
    token_of,
    wait_frames,
)
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

Join = Callable[..., Awaitable[Client]]


@pytest.fixture
async def join(jiefen: RunningJiefen) -> AsyncIterator[Join]:
    """Opens a signalling connection and sends ``join``; every one is closed afterwards."""
    clients: list[Client] = []

    async def join(token: str, identity: str | None = None) -> Client:
        client = Client(await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws"))
        clients.append(client)
        await client.send_join(token, identity)
        return client

    yield join
    for client in clients:
        await client.close()


async def presence_with(client: Client, seat: str, **wanted: object) -> dict[str, object]:
    """The first presence (from now on) in which ``seat`` has the ``wanted`` values."""
    while True:
        presence = await client.next("presence")
        for person in presence["participants"]:
            if person["seat"] == seat and all(person[k] == v for k, v in wanted.items()):
                return dict(person)


@pytest.mark.timeout(120)
async def test_an_interpreter_seat_opened_while_live_joins_everyone_without_a_break(
    jiefen: RunningJiefen, join: Join
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(jiefen, case_no)
    links = opened["links"]
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await applicant.next("waiting")
    await mediator.send("admit", seat="applicant")
    await applicant.answer_offer()
    respondent = await join(token_of(links["respondent"]), identity=RESPONDENT_PHONE)
    await respondent.next("waiting")
    await mediator.send("admit", seat="respondent")
    await respondent.answer_offer()
    three = {"mediator": mediator, "applicant": applicant, "respondent": respondent}
    for viewer, client in three.items():
        for seat in three:
            if seat != viewer:
                await wait_frames(client, seat, 20)
    peers = {seat: client.peer for seat, client in three.items()}
    for peer in peers.values():
        assert peer is not None
        for stream in peer.received.values():
            stream.longest_gap_s = 0.0

    await mediator.send("open_seat", seat="interpreter", name="阿依（彝汉双语）")
    seat_opened = await mediator.next("seat_opened")
    assert (seat_opened["seat"], seat_opened["name"]) == ("interpreter", "阿依（彝汉双语）")
    # Everyone connected is offered the new seat on the connection they have.
    for seat, client in three.items():
        assert await client.answer_offer() is peers[seat]
        offer = [message for message in client.messages if message["type"] == "offer"][-1]
        assert offer["renegotiation"] is True
        assert {("interpreter", "audio"), ("interpreter", "video")} <= {
            (t["seat"], t["kind"]) for t in offer["tracks"]
        }
    listed = await presence_with(mediator, "interpreter", present=False)
    assert listed["name"] == "阿依（彝汉双语）" and listed["role_name"] == "翻译"
    room = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert room is not None
    stored = room.seat("interpreter")
    mediator_seat = room.seat("mediator")
    assert stored is not None and mediator_seat is not None
    assert stored.identity_digest is None and stored.expires_at >= mediator_seat.expires_at

    # The fourth person joins with the link: no identity re-check, the waiting room, admitted.
    interpreter = await join(token_of(seat_opened["link"]))
    assert (await interpreter.next("welcome"))["name"] == "阿依（彝汉双语）"
    await interpreter.next("waiting")
    await presence_with(mediator, "interpreter", waiting=True)
    await mediator.send("admit", seat="interpreter")
    await interpreter.next("admitted")
    await interpreter.answer_offer()
    four = {**three, "interpreter": interpreter}
    for viewer, client in four.items():
        for seat in four:
            if seat != viewer:
                await wait_frames(client, seat, await frames(client, seat) + 20, wait_s=20)
    # The three never lost each other: same peer connections, no break in any stream.
    for seat, client in three.items():
        assert client.peer is peers[seat]
        for other in three:
            if other != seat:
                for kind in ("audio", "video"):
                    gap = client.peer.received_from(other, kind).longest_gap_s
                    assert gap < 1.0, f"{seat} lost {other}'s {kind} for {gap:.2f} s"

    directory = jiefen.settings.recordings_dir / opened["room_id"]
    names = {path.name for path in directory.iterdir()}
    assert {"interpreter-video-01.webm", "interpreter-audio-01.webm"} <= names
    assert (directory / "interpreter-video-01.webm").stat().st_size > 0
    timeline = [
        json.loads(line) for line in (directory / "timeline.jsonl").read_text().splitlines()
    ]
    assert {"event": "seat_opened", "seat": "interpreter", "by": "mediator"}.items() <= next(
        entry for entry in timeline if entry["event"] == "seat_opened"
    ).items()
    consent = next(e for e in timeline if e["event"] == "consented" and e["seat"] == "interpreter")
    assert consent["recording"] is True and consent["identity"] == "by_mediator"


@pytest.mark.timeout(60)
async def test_opening_a_seat_is_refused_clearly(jiefen: RunningJiefen, join: Join) -> None:
    case_no = await file_case(jiefen)
    # The interpreter was chosen when the room was opened: it counts as one of the two.
    opened = await open_room(jiefen, case_no, extra_seats={"interpreter": "阿依"})
    links = opened["links"]
    mediator = await join(token_of(links["mediator"]))
    await mediator.answer_offer()
    applicant = await join(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await applicant.next("waiting")

    async def refused(client: Client, **fields: object) -> str:
        await client.send("open_seat", **fields)
        code: str = (await client.next("error"))["code"]
        return code

    assert await refused(applicant, seat="applicant_agent", name="李律师") == "forbidden"
    assert await refused(mediator, seat="applicant", name="张三") == "not_extra_seat"
    assert await refused(mediator, seat="interpreter", name="阿依") == "seat_taken"
    assert await refused(mediator, seat="nobody", name="某人") == "invalid_field"
    assert await refused(mediator, seat="applicant_agent", name="  ") == "invalid_field"
    assert await refused(mediator, seat="applicant_agent") == "invalid_field"

    await mediator.send("open_seat", seat="applicant_agent", name="李律师")
    assert (await mediator.next("seat_opened"))["seat"] == "applicant_agent"
    assert await refused(mediator, seat="respondent_agent", name="王律师") == "too_many_seats"
    room = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert room is not None
    assert sorted(seat.seat for seat in room.seats) == sorted(
        ["mediator", "applicant", "respondent", "interpreter", "applicant_agent"]
    )

    # An ended room takes no new seat (the mediator's page is closed by then: the service says so).
    await mediator.send("end")
    await mediator.next("ended")
    with pytest.raises(SeatRefused) as ended:
        await jiefen.services.rooms.open_seat(
            opened["room_id"], SeatRole.RESPONDENT_AGENT, "王律师", now=datetime.now(UTC)
        )
    assert ended.value.reason == "room_closed"
    with pytest.raises(room_store.UnknownRoom):
        await jiefen.services.rooms.open_seat(
            "rm-none", SeatRole.INTERPRETER, "阿依", now=datetime.now(UTC)
        )


@pytest.mark.timeout(120)
async def test_the_join_page_invites_an_interpreter_and_renegotiates_in_place(
    jiefen: RunningJiefen, browser: Browser, join: Join
) -> None:
    case_no = await file_case(jiefen)
    links = (await open_room(jiefen, case_no))["links"]
    page = await new_page(browser)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=jiefen.url)
    await page.goto(join_url(jiefen, links["mediator"]))
    await pass_consent_and_devices(page, None)
    await expect(page.locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    applicant = await join(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await applicant.next("waiting")
    row = page.locator("#waiting-list .row").filter(has_text=re.compile("^申请人 "))
    await row.get_by_role("button", name="允许进入").click(timeout=UI_WAIT_MS)
    await applicant.answer_offer()

    async def decoded(seat: str, at_least: int) -> bool:
        return count(await received(page), seat) >= at_least

    await until(lambda: decoded("applicant", 15), "the page decodes the applicant")
    await page.evaluate("() => { window.firstPeerConnection = window.jiefenRoom.pc; }")

    # The mediator invites an interpreter: a name is needed, then the link is shown to copy.
    await page.locator("#invite-seat").select_option("interpreter")
    await page.locator("#invite-open").click()
    await expect(page.locator("#invite-message")).to_have_text("请先填写对方的姓名。")
    await page.locator("#invite-name").fill("阿依")
    await page.locator("#invite-open").click()
    await expect(page.locator("#invite-result")).to_be_visible(timeout=UI_WAIT_MS)
    link = await page.locator("#invite-link").input_value()
    assert "/join#" in link
    await page.locator("#invite-copy").click()
    await expect(page.locator("#invite-copy")).to_have_text("已复制", timeout=UI_WAIT_MS)
    assert await page.evaluate("() => navigator.clipboard.readText()") == link
    # The interpreter's option is taken now; the other two are still free.
    assert await page.locator("#invite-seat option[value=interpreter]").is_disabled()
    assert await page.locator("#invite-seat option[value=applicant_agent]").is_enabled()
    await expect(page.locator("#tile-interpreter")).to_be_visible(timeout=UI_WAIT_MS)

    # The page answered the renegotiation on the connection it had; the applicant never stopped.
    async def renegotiated() -> bool:
        result: bool = await page.evaluate(
            """() => window.jiefenRoom.pc === window.firstPeerConnection
                && window.jiefenRoom.pc.signalingState === "stable"
                && window.jiefenRoom.tracks.some((t) => t.seat === "interpreter")"""
        )
        return result

    await until(renegotiated, "the page renegotiates on its peer connection")
    await applicant.answer_offer()  # the applicant's own renegotiation
    before = count(await received(page), "applicant")
    await until(lambda: decoded("applicant", before + 15), "the applicant's frames keep coming")

    interpreter = await join(token_of(link))
    await interpreter.next("waiting")
    row = page.locator("#waiting-list .row").filter(has_text=re.compile("^翻译 阿依"))
    await row.get_by_role("button", name="允许进入").click(timeout=UI_WAIT_MS)
    await interpreter.answer_offer()
    await until(lambda: decoded("interpreter", 15), "the page decodes the interpreter")
    await wait_frames(interpreter, "mediator", 15, wait_s=20)
    await wait_frames(interpreter, "applicant", 15, wait_s=20)

    # 长者模式 keeps the invite control usable: large text, one control per line.
    await page.locator("#elder-toggle").click()
    assert await page.evaluate("() => document.body.classList.contains('elder')")
    await expect(page.locator("#invite-form")).to_be_visible()
