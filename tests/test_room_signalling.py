"""Rooms end to end: the rooms API, the signalling WebSocket and the media, on a real server.

Real aiohttp server on 127.0.0.1:0, real Redis and PostgreSQL, real aiortc peers (synthetic
media). Each test files a case first, then opens a room for it through ``POST /api/rooms``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import av
import pytest

from mediation_rooms.join_token import JoinClaims, issue_join_token
from mediation_rooms.manifest import verify_recording
from mediation_rooms.signalling import CLOSE_REFUSED, CLOSE_REMOVED, CLOSE_REPLACED
from mediation_rooms.synthetic_peer import SyntheticPeer, synthetic_clip
from state import room_store
from state.signing_key import load_or_create_signing_key
from tests.harness import ADMIN_TOKEN, RunningJiefen
from tests.test_state_case_store import ID_NUMBER, make_draft

RESPONDENT_PHONE = "13900139000"
pytestmark = pytest.mark.services


async def file_case(jiefen: RunningJiefen) -> str:
    created = await jiefen.services.cases.open_case(
        make_draft(respondent_phone=RESPONDENT_PHONE, evidence=(), facts_voice_media_id=None),
        openid="o_applicant_0001",
        intake=[],
        now=datetime.now(UTC),
        submission_key=f"test-{time.monotonic_ns()}",
    )
    case_no: str = created.case_no  # type: ignore[union-attr]
    return case_no


async def open_room(jiefen: RunningJiefen, case_no: str, **body: Any) -> dict[str, Any]:
    async with jiefen.session.post(
        f"{jiefen.url}/api/rooms",
        json={"case_no": case_no, **body},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        assert response.status == 201, await response.text()
        result: dict[str, Any] = await response.json()
        return result


def token_of(link: str) -> str:
    return link.split("#", 1)[1]


@dataclass
class Client:
    """One signalling connection; keeps every server message it received."""

    ws: aiohttp.ClientWebSocketResponse
    messages: list[dict[str, Any]] = field(default_factory=list)
    peer: SyntheticPeer | None = None
    #: The room's video codec, which the peer sends (``synthetic_clip``).
    video_codec: str = "VP8"

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"type": kind, **fields}))

    async def send_join(
        self, token: str, identity: str | None = None, consent: bool = True
    ) -> None:
        """The page's ``join``: the link's token, the identity answer, both consents."""
        await self.send(
            "join",
            token=token,
            identity=identity,
            consent_recording=consent,
            acknowledged_notices=consent,
        )

    async def next(self, kind: str, wait_s: float = 10.0) -> dict[str, Any]:
        """The next message of ``kind`` (earlier ones of other kinds are kept, not lost)."""
        deadline = time.monotonic() + wait_s
        for message in self.messages:
            if message["type"] == kind and not message.get("_seen"):
                message["_seen"] = True
                return message
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r}; got {[m['type'] for m in self.messages]}")
            raw = await self.ws.receive(timeout=remaining)
            if raw.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket closed ({self.ws.close_code}) waiting for {kind!r}")
            message = json.loads(raw.data)
            self.messages.append(message)
            if message["type"] == kind:
                message["_seen"] = True
                return message

    async def answer_offer(self) -> SyntheticPeer:
        """Answer the next offer: on a new peer, or on the current one when it renegotiates."""
        offer = await self.next("offer")
        if offer.get("renegotiation") and self.peer is not None:
            await self.send("answer", sdp=await self.peer.answer(offer["sdp"], offer["tracks"]))
            return self.peer
        peer = SyntheticPeer(synthetic_clip(codec=self.video_codec), video_codec=self.video_codec)
        sdp = await peer.answer(offer["sdp"], offer["tracks"])
        await self.send("answer", sdp=sdp)
        if self.peer is not None:
            await self.peer.close()
        self.peer = peer
        return peer

    async def close(self) -> None:
        await self.ws.close()
        if self.peer is not None:
            await self.peer.close()


@pytest.fixture
async def connect(jiefen: RunningJiefen) -> AsyncIterator[Any]:
    clients: list[Client] = []

    async def connect(token: str, identity: str | None = None, consent: bool = True) -> Client:
        ws = await jiefen.session.ws_connect(f"{jiefen.url}/rooms/ws")
        client = Client(ws)
        clients.append(client)
        await client.send_join(token, identity, consent)
        return client

    yield connect
    for client in clients:
        await client.close()


async def frames(client: Client, seat: str) -> int:
    assert client.peer is not None
    return client.peer.received_from(seat, "video").frames


async def wait_frames(client: Client, seat: str, at_least: int, wait_s: float = 10.0) -> None:
    deadline = time.monotonic() + wait_s
    while await frames(client, seat) < at_least:
        assert time.monotonic() < deadline, f"only {await frames(client, seat)} frames from {seat}"
        await asyncio.sleep(0.05)


async def admit_applicant(
    join: Callable[[str, str | None], Awaitable[Client]],
    links: dict[str, str],
    at_least: int = 20,
) -> tuple[Client, Client]:
    """The mediator in, the applicant admitted (the room goes live), ``at_least`` frames each
    way; ``join(token, identity)`` opens a connection and sends ``join``."""
    mediator = await join(token_of(links["mediator"]), None)
    await mediator.answer_offer()
    applicant = await join(token_of(links["applicant"]), ID_NUMBER[-6:])
    await applicant.next("waiting")
    await mediator.send("admit", seat="applicant")
    await applicant.answer_offer()
    await wait_frames(mediator, "applicant", at_least)
    await wait_frames(applicant, "mediator", at_least)
    return mediator, applicant


@pytest.mark.timeout(150)
async def test_a_whole_session_waiting_room_admit_caucus_end(
    jiefen: RunningJiefen, connect: Any
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(jiefen, case_no, mediator_name="王调解员")
    links = opened["links"]
    assert set(links) == {"mediator", "applicant", "respondent"}
    # The applicant was sent their link in WeChat, through the outbox.
    sent = await _wait_for(lambda: jiefen.fake.sent)
    assert sent[-1].touser == "o_applicant_0001"
    assert links["applicant"] in (sent[-1].content or "")

    mediator = await connect(token_of(links["mediator"]))
    welcome = await mediator.next("welcome")
    assert welcome["seat"] == "mediator" and welcome["room"]["case_no"] == case_no
    await mediator.answer_offer()

    applicant = await connect(token_of(links["applicant"]), identity="000000")
    assert (await applicant.next("error"))["code"] == "identity_mismatch"
    await applicant.send_join(token_of(links["applicant"]), ID_NUMBER[-6:].lower())
    await applicant.next("welcome")
    await applicant.next("waiting")
    presence = await mediator.next("presence")
    while not any(p["seat"] == "applicant" and p["waiting"] for p in presence["participants"]):
        presence = await mediator.next("presence")

    assert mediator.peer is not None
    sent_before_live = mediator.peer.video_track.sent  # the recording starts when it goes live
    await mediator.send("admit", seat="applicant")
    await applicant.next("admitted")
    await applicant.answer_offer()
    room = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert room is not None and room.state == "live" and room.live_at is not None

    respondent = await connect(token_of(links["respondent"]), identity=RESPONDENT_PHONE)
    await respondent.next("waiting")
    await mediator.send("admit", seat="respondent")
    await respondent.answer_offer()
    for client, others in [
        (mediator, ["applicant", "respondent"]),
        (applicant, ["mediator", "respondent"]),
        (respondent, ["mediator", "applicant"]),
    ]:
        for seat in others:
            await wait_frames(client, seat, 20)

    # A party cannot use the mediator's controls.
    await applicant.send("caucus", **{"with": "applicant"})
    assert (await applicant.next("error"))["code"] == "forbidden"

    await mediator.send("caucus", **{"with": "applicant"})
    notice = await respondent.next("notice")
    assert "背对背" in notice["message"]
    await asyncio.sleep(0.3)
    held = await frames(respondent, "mediator")
    talking = await frames(applicant, "mediator")
    await asyncio.sleep(1.0)
    assert await frames(respondent, "mediator") == held
    assert await frames(applicant, "mediator") > talking + 15
    await mediator.send("caucus", **{"with": None})
    await wait_frames(respondent, "mediator", held + 10)

    await mediator.send("chat", text="请双方确认调解协议。")
    assert (await respondent.next("chat"))["text"] == "请双方确认调解协议。"

    await mediator.send("end")
    for client in (mediator, applicant, respondent):
        await client.next("ended")
    sent = {
        seat: client.peer.video_track.sent
        for seat, client in (
            ("mediator", mediator),
            ("applicant", applicant),
            ("respondent", respondent),
        )
        if client.peer is not None
    }
    sent["mediator"] -= sent_before_live
    room = await room_store.get_room(jiefen.services.db, opened["room_id"])
    # Ended; the embedded worker may already be finalising it.
    assert room is not None and room.state in ("ended", "archived")
    directory = jiefen.settings.recordings_dir / opened["room_id"]
    names = sorted(path.name for path in directory.iterdir())
    for seat in ("mediator", "applicant", "respondent"):
        assert f"{seat}-video-01.webm" in names and f"{seat}-audio-01.webm" in names
    timeline = [
        json.loads(line) for line in (directory / "timeline.jsonl").read_text().splitlines()
    ]
    events = [entry["event"] for entry in timeline]
    for expected in ("admitted", "consented", "caucus_started", "caucus_ended", "ended"):
        assert expected in events
    # Everyone's consent is in the timeline, those given before the room went live too.
    consents = {e["seat"]: e for e in timeline if e["event"] == "consented"}
    assert set(consents) == {"mediator", "applicant", "respondent"}
    assert consents["applicant"]["recording"] is True
    assert consents["applicant"]["identity"] == "verified"

    # Nobody gets back into an ended room.
    late = await connect(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    assert (await late.next("error"))["code"] == "room_closed"

    # The worker finalises the recording: court copy, signed manifest, archived.
    shown = await _wait_for(lambda: _archived(jiefen, opened["room_id"]), wait_s=60)
    assert shown["recording"]["stage"] == "archived"
    public_key = load_or_create_signing_key(jiefen.settings).public_key
    verification = verify_recording(directory, public_key)
    assert verification.ok, verification.problems
    manifest = verification.manifest
    assert manifest is not None and manifest["case_no"] == case_no
    assert [p["seat"] for p in manifest["participants"]] == ["mediator", "applicant", "respondent"]
    assert manifest["participants"][0]["name"] == "王调解员"
    assert manifest["participants"][1]["consents"]["recording"] is True
    videos = {f["seat"]: f for f in manifest["files"] if f.get("kind") == "video"}
    assert set(videos) == {"mediator", "applicant", "respondent"}
    assert all(video["codec"] == "vp8" for video in videos.values())
    assert room.live_at is not None and room.ended_at is not None
    live_s = (room.ended_at - room.live_at).total_seconds()
    for seat, video in videos.items():
        # Every frame sent while live is in the recording, the caucus included, and nothing
        # sent once the session ended: "ended" is sent just before the recording stops (a few
        # frames may be on their way), the mediator's count may take in a few sent before the
        # room went live, and the last frame or two stay in the jitter buffer.
        slack = 12 if seat == "mediator" else 6
        assert sent[seat] - slack <= video["frames"] <= sent[seat] + 3, (seat, video, sent)
        with av.open(str(directory / video["name"])) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size]
            span_s = float((pts[-1] - pts[0]) * stream.time_base)
        # On the room's clock the file lasts as long as its frames took to send (30 fps), and
        # no longer than the room was live.
        assert abs(span_s - video["frames"] / 30) < 0.5, (seat, span_s, video["frames"])
        assert span_s <= live_s + 0.5, (seat, span_s, live_s)
    mediator_video = videos["mediator"]
    assert mediator_video["frames"] / 30 > live_s - 1.0, (mediator_video, live_s)
    # The evidence was sealed before the render; the court copy has its own signed record.
    assert not any(f["name"] == "court-copy.mp4" for f in manifest["files"])
    assert verification.court_copy is not None
    assert verification.court_copy["file"]["name"] == "court-copy.mp4"
    with av.open(str(directory / "court-copy.mp4")) as court_copy:
        assert court_copy.streams.video[0].codec_context.width == 3 * 640
        assert court_copy.streams.audio, "the court copy has the mixed audio"
    # Tampering with any file is detected.
    with (directory / "applicant-audio-01.webm").open("ab") as tampered:
        tampered.write(b"\0")
    assert verify_recording(directory, public_key).problems == [
        "applicant-audio-01.webm: changed since it was signed"
    ]


async def test_refusals_are_clear_and_malformed_messages_do_not_break_the_socket(
    jiefen: RunningJiefen, connect: Any
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(jiefen, case_no)
    links = opened["links"]
    applicant_token = token_of(links["applicant"])
    payload, signature = applicant_token.split(".")

    # Another signature, still canonically encoded (its last character's padding bits intact).
    forged = await connect(payload + "." + ("B" if signature[0] == "A" else "A") + signature[1:])
    assert (await forged.next("error"))["code"] == "forged"
    await forged.ws.receive()
    assert forged.ws.close_code == CLOSE_REFUSED

    key = jiefen.services.rooms.join_key
    room = await room_store.get_room(jiefen.services.db, opened["room_id"])
    assert room is not None
    nonce = room.seat("applicant").nonce  # type: ignore[union-attr]
    expired = issue_join_token(
        key, JoinClaims(opened["room_id"], "applicant", nonce, int(time.time()) - 1)
    )
    assert (await (await connect(expired)).next("error"))["code"] == "expired"
    # A fourth person: a correctly signed token for a seat this room does not have.
    fourth = issue_join_token(
        key, JoinClaims(opened["room_id"], "interpreter", nonce, int(time.time()) + 600)
    )
    assert (await (await connect(fourth)).next("error"))["code"] == "revoked"

    no_consent = await connect(applicant_token, identity=ID_NUMBER[-6:], consent=False)
    assert (await no_consent.next("error"))["code"] == "consent_required"

    # Wrong identity answers are counted per seat, not per connection: a new connection for
    # each guess does not get round the limit, and once locked the right answer is refused too.
    for _ in range(4):
        guess = await connect(applicant_token, identity="000000")
        assert (await guess.next("error"))["code"] == "identity_mismatch"
        await guess.close()
    assert (await (await connect(applicant_token, identity="111111")).next("error"))[
        "code"
    ] == "too_many_attempts"
    locked = await connect(applicant_token, identity=ID_NUMBER[-6:])
    assert (await locked.next("error"))["code"] == "too_many_attempts"

    mediator = await connect(token_of(links["mediator"]))
    await mediator.next("welcome")
    await mediator.ws.send_str("{not json")
    assert (await mediator.next("error"))["code"] == "malformed"
    await mediator.ws.send_str("[" * 30_000)  # nested past the JSON parser's recursion limit
    assert (await mediator.next("error"))["code"] == "malformed"
    # What aiortc's own parsers choke on (one of them with a bare assertion).
    await mediator.send("answer", sdp="v=0\r\nm=video x")
    assert (await mediator.next("error"))["code"] == "invalid_answer"
    await mediator.send("ice", candidate="candidate:garbage", sdpMid="0")
    assert (await mediator.next("error"))["code"] == "invalid_candidate"
    await mediator.send("dance")
    assert (await mediator.next("error"))["code"] == "unknown_type"
    await mediator.send("admit", seat="nobody")
    assert (await mediator.next("error"))["code"] == "invalid_field"
    await mediator.send("admit", seat="respondent")
    assert (await mediator.next("error"))["code"] == "not_in_room"
    await mediator.send("chat", text="仍然在线")
    assert (await mediator.next("chat"))["text"] == "仍然在线"


async def test_a_second_device_replaces_the_first(jiefen: RunningJiefen, connect: Any) -> None:
    case_no = await file_case(jiefen)
    links = (await open_room(jiefen, case_no))["links"]
    mediator = await connect(token_of(links["mediator"]))
    await mediator.answer_offer()
    first = await connect(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await first.next("waiting")
    await mediator.send("admit", seat="applicant")
    await first.answer_offer()
    await wait_frames(mediator, "applicant", 10)

    second = await connect(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    replaced = await first.next("replaced")
    assert "另一台设备" in replaced["message"]
    await first.ws.receive()
    assert first.ws.close_code == CLOSE_REPLACED
    # Already admitted: the new device goes straight in, no waiting room.
    await second.answer_offer()
    before = await frames(mediator, "applicant")
    await wait_frames(mediator, "applicant", before + 20)
    assert not any(m["type"] == "waiting" for m in second.messages)


@pytest.mark.timeout(120)
async def test_a_participant_who_vanishes_leaves_the_others_and_the_recording_going(
    jiefen: RunningJiefen, connect: Any
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(jiefen, case_no)
    links = opened["links"]
    mediator, applicant = await admit_applicant(connect, links)
    respondent = await connect(token_of(links["respondent"]), identity=RESPONDENT_PHONE)
    await respondent.next("waiting")
    await mediator.send("admit", seat="respondent")
    await respondent.answer_offer()
    await wait_frames(mediator, "respondent", 20)
    await wait_frames(respondent, "mediator", 20)
    directory = jiefen.settings.recordings_dir / opened["room_id"]

    # The applicant's phone drops off the network: no goodbye on the socket, and its media
    # stops. (The TCP connection is cut under the WebSocket, as when the phone's browser is
    # killed; the peer connection then goes quietly.)
    assert applicant.peer is not None
    applicant.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await applicant.peer.close()
    applicant.peer = None

    async def applicant_gone() -> bool:
        presence = await mediator.next("presence")
        return not next(p for p in presence["participants"] if p["seat"] == "applicant")["present"]

    while not await applicant_gone():
        pass
    # The other two carry on, and so does the recording.
    held = await frames(mediator, "applicant")
    mediator_file = directory / "mediator-video-01.webm"
    size = mediator_file.stat().st_size
    for client, seat in ((mediator, "respondent"), (respondent, "mediator")):
        await wait_frames(client, seat, await frames(client, seat) + 30)
    assert mediator_file.stat().st_size > size
    assert await frames(mediator, "applicant") == held

    # The same link brings the applicant back, straight in (still admitted), both ways.
    back = await connect(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await back.answer_offer()
    await wait_frames(mediator, "applicant", held + 20)
    await wait_frames(back, "respondent", 20)
    assert not any(m["type"] == "waiting" for m in back.messages)

    await mediator.send("end")
    await mediator.next("ended")
    timeline = [
        json.loads(line) for line in (directory / "timeline.jsonl").read_text().splitlines()
    ]
    applicant_events = [e["event"] for e in timeline if e.get("seat") == "applicant"]
    left = applicant_events.index("left")
    # Back in the same session: a reconnection, not a second arrival.
    assert applicant_events.count("joined") == 1, applicant_events
    assert "reconnected" in applicant_events[left:], applicant_events
    with av.open(str(directory / "applicant-video-01.webm")) as container:
        pts = [packet.pts for packet in container.demux(video=0) if packet.size]
    assert len(pts) > held and pts == sorted(pts)


@pytest.mark.timeout(120)
async def test_the_mediator_denies_mutes_and_removes_through_signalling(
    jiefen: RunningJiefen, connect: Any
) -> None:
    case_no = await file_case(jiefen)
    links = (await open_room(jiefen, case_no))["links"]
    mediator, applicant = await admit_applicant(connect, links)

    # Deny: the waiting respondent is told and let go.
    respondent = await connect(token_of(links["respondent"]), identity=RESPONDENT_PHONE)
    await respondent.next("waiting")
    await mediator.send("deny", seat="respondent")
    assert "调解员" in (await respondent.next("denied"))["message"]
    await respondent.ws.receive()
    assert respondent.ws.close_code == CLOSE_REMOVED

    # Mute: the server stops forwarding the applicant's audio, not their video.
    assert mediator.peer is not None
    heard = mediator.peer.received_from("applicant", "audio")
    await mediator.send("mute", seat="applicant", muted=True)
    await asyncio.sleep(0.3)  # what was in flight arrives
    silenced_at = heard.frames
    video = await frames(mediator, "applicant")
    await wait_frames(mediator, "applicant", video + 30)
    assert heard.frames == silenced_at
    await mediator.send("mute", seat="applicant", muted=False)
    deadline = time.monotonic() + 10
    while heard.frames < silenced_at + 25:
        assert time.monotonic() < deadline, "the applicant's audio did not come back"
        await asyncio.sleep(0.05)

    # Remove: the applicant is told and let go, and their link leads to the waiting room again.
    await mediator.send("remove", seat="applicant")
    assert (await applicant.next("removed"))["message"]
    await applicant.ws.receive()
    assert applicant.ws.close_code == CLOSE_REMOVED
    video = await frames(mediator, "applicant")
    await asyncio.sleep(0.5)
    assert await frames(mediator, "applicant") <= video + 3  # at most what was in flight
    again = await connect(token_of(links["applicant"]), identity=ID_NUMBER[-6:])
    await again.next("waiting")


async def test_the_rooms_api_needs_its_token(jiefen: RunningJiefen) -> None:
    async with jiefen.session.post(f"{jiefen.url}/api/rooms", json={"case_no": "x"}) as response:
        assert response.status == 403
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with jiefen.session.post(
        f"{jiefen.url}/api/rooms", json={"case_no": "JF20000101-0001"}, headers=headers
    ) as response:
        assert response.status == 404
    case_no = await file_case(jiefen)
    async with jiefen.session.post(
        f"{jiefen.url}/api/rooms",
        json={"case_no": case_no, "scheduled_at": "2026-11-23T09:30"},
        headers=headers,
    ) as response:
        assert response.status == 400  # no time zone
    first = await open_room(
        jiefen, case_no, extra_seats={"interpreter": "阿依"}, scheduled_at="2026-11-23T09:30+08:00"
    )
    second = await open_room(jiefen, case_no)
    assert (first["session_no"], second["session_no"]) == (1, 2)
    assert set(first["links"]) == {"mediator", "applicant", "respondent", "interpreter"}
    async with jiefen.session.get(
        f"{jiefen.url}/api/rooms/{first['room_id']}", headers=headers
    ) as response:
        shown = await response.json()
    assert shown["state"] == "scheduled" and shown["scheduled_at"].startswith("2026-11-23T01:30")


async def _archived(jiefen: RunningJiefen, room_id: str) -> dict[str, Any] | None:
    """The room as the API shows it, once it is archived (else ``None``)."""
    async with jiefen.session.get(
        f"{jiefen.url}/api/rooms/{room_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        shown: dict[str, Any] = await response.json()
    return shown if shown["state"] == "archived" else None


async def _wait_for(probe: Any, wait_s: float = 5.0) -> Any:
    """Poll ``probe`` (plain or async) until it gives something true, and return that."""
    deadline = time.monotonic() + wait_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "nothing arrived"
        await asyncio.sleep(0.05)
