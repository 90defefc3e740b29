"""The synthetic participants of ``jiefen bench rooms``: the seats of a room and who sits in them.

A :class:`Participant` is one seat: a signalling connection driven as the join page would (ask
placement, join with the seat's identity answer and consents; the mediator admits whoever
waits) and an aiortc peer (:class:`~mediation_rooms.synthetic_peer.SyntheticPeer`) that sends
a :class:`CountedTrack` of the clip and counts what it receives from the other seats. A
:class:`BenchRoom` is one room's three of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from mediation_rooms.bench_rooms_server import APPLICANT_ID_NUMBER, RESPONDENT_PHONE, BenchError
from mediation_rooms.synthetic_peer import Clip, ReplayTrack, SyntheticPeer

SEATS = ("mediator", "applicant", "respondent")
PARTIES = ("applicant", "respondent")
IDENTITY = {"mediator": None, "applicant": APPLICANT_ID_NUMBER[-6:], "respondent": RESPONDENT_PHONE}


class CountedTrack(ReplayTrack):
    """A :class:`ReplayTrack` that starts when ``gate`` opens and stops at a mark.

    ``frames_sent`` is the number of frames handed to the RTP sender up to :meth:`halt`. One
    more frame follows the mark, uncounted, so that a receiver's jitter buffer (which releases
    a frame only when the next one's first packet arrives) releases the last counted one; after
    that the track sends nothing.
    """

    def __init__(self, kind: str, clip: Clip, gate: asyncio.Event) -> None:
        super().__init__(kind, clip)
        self._gate = gate
        self._mark: int | None = None
        self._stopped = asyncio.Event()

    @property
    def frames_sent(self) -> int:
        return self.sent if self._mark is None else self._mark

    def halt(self) -> None:
        if self._mark is None:
            self._mark = self.sent

    async def recv(self) -> Any:
        await self._gate.wait()
        if self._mark is not None and self.sent > self._mark:
            await self._stopped.wait()
            raise MediaStreamError
        return await super().recv()

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class Participant:
    """One seat: a signalling connection driven as the join page would, and its peer."""

    def __init__(self, seat: str, token: str, clip: Clip) -> None:
        self.seat = seat
        self.token = token
        # The mediator's media waits for the room to go live, so that all it sends is recorded.
        self.gate = asyncio.Event()
        if seat != "mediator":
            self.gate.set()
        self.peer = SyntheticPeer(clip)
        self.video = CountedTrack("video", clip, self.gate)
        self.audio = CountedTrack("audio", clip, self.gate)
        self.peer.video_track, self.peer.audio_track = self.video, self.audio
        self.join_sent_at = 0.0
        self.waiting_at: float | None = None
        self.admitted_at: float | None = None
        self.waiting = asyncio.Event()
        self.ended = asyncio.Event()
        self.failure: str | None = None
        self._admit_sent: set[str] = set()
        self._rtx_ssrcs: set[int] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def join(self, session: aiohttp.ClientSession, url: str) -> None:
        """Join as the page does: ask where the room is hosted, then open that socket (the
        time to first frame counts from the placement request)."""
        self.join_sent_at = time.monotonic()
        async with session.post(f"{url}/rooms/placement", json={"token": self.token}) as response:
            placed = await response.json()
            if response.status != 200:
                raise RuntimeError(f"placement refused for {self.seat}: {placed}")
        self._ws = await session.ws_connect(urljoin(url, placed["signalling_url"]))
        self._reader = asyncio.create_task(self._read(), name=f"bench-{self.seat}")
        await self.send(
            "join",
            token=self.token,
            identity=IDENTITY[self.seat],
            consent_recording=True,
            acknowledged_notices=True,
        )

    async def send(self, kind: str, **fields: Any) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": kind, **fields}))

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                await self._on_message(json.loads(raw.data))
            except Exception as error:  # a participant that fails ends the run, with the reason
                self.failure = f"{self.seat}: {error!r}"
                break
        if not self.ended.is_set() and self.failure is None:
            self.failure = f"{self.seat}: socket closed ({self._ws.close_code})"

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        now = time.monotonic()
        if kind == "waiting":
            self.waiting_at = now
            self.waiting.set()
        elif kind == "admitted":
            self.admitted_at = now
        elif kind == "offer":
            if self.peer.tracks:
                raise BenchError("a second offer (the connection was replaced?)")
            await self.send("answer", sdp=await self.peer.answer(message["sdp"], message["tracks"]))
        elif kind == "presence" and self.seat == "mediator":
            for person in message["participants"]:
                if person["waiting"] and person["seat"] not in self._admit_sent:
                    self._admit_sent.add(person["seat"])
                    await self.send("admit", seat=person["seat"])
            if message["state"] == "live":
                self.gate.set()
        elif kind == "ended":
            self.ended.set()
        elif kind == "error":
            raise BenchError(f"server error {message.get('code')}: {message.get('message')}")

    def check(self) -> None:
        if self.failure is not None:
            raise BenchError(self.failure)

    @property
    def waiting_room_s(self) -> float:
        if self.waiting_at is None or self.admitted_at is None:
            return 0.0
        return self.admitted_at - self.waiting_at

    def first_frame_s(self, publisher: str) -> float | None:
        at = self.peer.received_from(publisher, "video").first_frame_at
        return None if at is None else at - self.join_sent_at - self.waiting_room_s

    def others(self) -> list[str]:
        return [seat for seat in SEATS if seat != self.seat]

    def video_frames(self) -> dict[str, int]:
        return {seat: self.peer.received_from(seat, "video").frames for seat in self.others()}

    async def packet_counts(self) -> dict[tuple[str, str], tuple[int, int] | None]:
        """(publisher, kind) -> (packets received, packets lost), from the receivers' stats.

        ``None`` where the stats do not show the media stream: aiortc 1.16 files every SSRC of
        a receiver under one stats id, so once a retransmission (RTX) arrived, the RTX stream's
        entry hides the media stream's.
        """
        if self._rtx_ssrcs is None:
            self._rtx_ssrcs = _rtx_ssrcs(self.peer.pc.remoteDescription.sdp)
        counts: dict[tuple[str, str], tuple[int, int] | None] = {}
        for transceiver in self.peer.pc.getTransceivers():
            slot = self.peer.tracks.get(transceiver.mid or "")
            if slot is None or slot[0] == self.seat:
                continue
            counts[slot] = (0, 0)
            for stats in (await transceiver.receiver.getStats()).values():
                if getattr(stats, "type", None) != "inbound-rtp":
                    continue
                if stats.ssrc in self._rtx_ssrcs:
                    counts[slot] = None
                else:
                    counts[slot] = (stats.packetsReceived, max(0, stats.packetsLost))
        return counts

    def halt(self) -> None:
        self.video.halt()
        self.audio.halt()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.peer.close()


@dataclass
class BenchRoom:
    room_id: str
    case_no: str
    participants: dict[str, Participant] = field(default_factory=dict)


def _rtx_ssrcs(sdp: str) -> set[int]:
    """The retransmission SSRCs an offer announces (second SSRC of each ``FID`` group)."""
    return {
        int(group.items[1])
        for media in SessionDescription.parse(sdp).media
        for group in media.ssrc_group
        if group.semantic == "FID" and len(group.items) > 1
    }
