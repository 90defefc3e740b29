"""The join page end to end in headless Chromium: a whole mediation through the real page UI.

A real server on 127.0.0.1:0 with real Redis and PostgreSQL; Debian's Chromium with a fake camera
and microphone, one browser context (one person) per seat. Media is checked where a person would
notice it: in each page's own ``RTCPeerConnection.getStats()``, reached through the page's
``window.jiefenRoom`` debug handle. Every wait polls with a deadline: the machines are small and
shared, so the deadlines are generous and a failure says what was awaited.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from mediation_rooms import texts
from tests.harness import RunningJiefen
from tests.test_room_signalling import (
    RESPONDENT_PHONE,
    file_case,
    open_room,
    token_of,
)
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

T = TypeVar("T")
SEATS = ("mediator", "applicant", "respondent")
#: How long a page may take to show a step; media over three pages on two cores can be slow.
UI_WAIT_MS = 20_000

#: Per remote seat and kind, what this page's peer connection has received from it:
#: {"applicant/video": {"frames": framesDecoded, "bytes": bytesReceived}, ...}. A seat that has
#: sent nothing yet is absent (Chrome reports an inbound-rtp entry from the first packet on).
RECEIVED_JS = """
async () => {
  const room = window.jiefenRoom;
  if (!room || !room.pc) return {};
  const slotOfMid = {};
  for (const t of room.tracks) {
    if (t.direction === "receive") slotOfMid[t.mid] = t.seat + "/" + t.kind;
  }
  const midOfTrack = {};  // older Chromes name no mid in inbound-rtp, only the track
  for (const tr of room.pc.getTransceivers()) midOfTrack[tr.receiver.track.id] = tr.mid;
  const out = {};
  (await room.pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    const slot = slotOfMid[s.mid !== undefined ? s.mid : midOfTrack[s.trackIdentifier]];
    if (slot) out[slot] = { frames: s.framesDecoded || 0, bytes: s.bytesReceived || 0 };
  });
  return out;
}
"""

#: What a failure message needs to know about a page: its step, notice and connection state.
PAGE_STATE_JS = """
() => ({
  steps: [...document.querySelectorAll(".step")].filter((e) => !e.hidden).map((e) => e.id),
  notice: document.getElementById("room-notice").textContent,
  connection: window.jiefenRoom.pc ? window.jiefenRoom.pc.connectionState : null,
})
"""

Received = dict[str, dict[str, int]]


async def new_page(browser: Browser) -> Page:
    """A page in a context of its own: its own storage, its own camera, as another person's."""
    context = await browser.new_context(locale="zh-CN")
    return await context.new_page()


def join_url(jiefen: RunningJiefen, link: str) -> str:
    """The link's join page on the test server (the link itself names the configured host)."""
    return f"{jiefen.url}/join#{token_of(link)}"


async def pass_consent_and_devices(page: Page, identity: str | None) -> None:
    """Tick both consents, type the identity re-check (a seat without one has no box), pass
    the device check, press 进入."""
    await expect(page.locator("#step-consent")).to_be_visible(timeout=UI_WAIT_MS)
    await page.locator("#ack-notices").check()
    await page.locator("#consent-recording").check()
    if identity is None:
        await expect(page.locator("#identity-box")).to_be_hidden()
    else:
        await page.locator("#identity").fill(identity)
    await page.locator("#to-devices").click()
    await expect(page.locator("#device-status")).to_have_text(
        re.compile("^摄像头和麦克风正常"), timeout=UI_WAIT_MS
    )
    await page.locator("#enter").click()


async def received(page: Page) -> Received:
    result: Received = await page.evaluate(RECEIVED_JS)
    return result


def count(stats: Received, seat: str, kind: str = "video", what: str = "frames") -> int:
    return stats.get(f"{seat}/{kind}", {}).get(what, 0)


async def describe(pages: dict[str, Page]) -> str:
    """Each page's state and what it has received, for a failure message."""
    lines = []
    for seat, page in pages.items():
        lines.append(f"{seat}: {await page.evaluate(PAGE_STATE_JS)} {await received(page)}")
    return "\n".join(lines)


async def until(probe: Callable[[], Awaitable[T]], what: str, wait_s: float = 20.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"after {wait_s} s, still not: {what}"
        await asyncio.sleep(0.2)


async def frames_flow(pages: dict[str, Page], pairs: list[tuple[str, str]], more: int) -> None:
    """Wait until each (viewer, sender) pair decodes ``more`` new video frames."""
    start = {viewer: await received(pages[viewer]) for viewer, _ in pairs}
    for viewer, sender in pairs:
        base = count(start[viewer], sender)

        async def grew(viewer: str = viewer, sender: str = sender, base: int = base) -> bool:
            return count(await received(pages[viewer]), sender) >= base + more

        try:
            await until(grew, f"{viewer}'s page decodes {more} new frames from {sender}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{await describe(pages)}") from None


async def settled(pages: dict[str, Page], pairs: list[tuple[str, str]]) -> dict[str, Received]:
    """What every page has received, once the ``pairs`` (viewer, sender) stopped changing.

    Media already on the wire or in a jitter buffer when forwarding stops still arrives and is
    decoded; this waits it out (0.5 s without change) so that what follows measures the stop.
    """
    last = {seat: await received(page) for seat, page in pages.items()}

    async def still() -> dict[str, Received] | None:
        nonlocal last
        await asyncio.sleep(0.5)
        now = {seat: await received(page) for seat, page in pages.items()}
        same = all(
            now[viewer].get(f"{sender}/{kind}") == last[viewer].get(f"{sender}/{kind}")
            for viewer, sender in pairs
            for kind in ("audio", "video")
        )
        last = now
        return now if same else None

    return await until(still, f"no more media for {pairs}", wait_s=10)


@pytest.mark.timeout(150)
async def test_a_whole_session_through_the_join_page(
    jiefen: RunningJiefen, browser: Browser
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(jiefen, case_no, mediator_name="王调解员")
    links = opened["links"]
    pages = {seat: await new_page(browser) for seat in SEATS}
    mediator, applicant, respondent = (pages[seat] for seat in SEATS)
    dialogs: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    mediator.on("dialog", confirm)

    # The mediator goes straight into the room and sees their controls.
    await mediator.goto(join_url(jiefen, links["mediator"]))
    await pass_consent_and_devices(mediator, None)
    await expect(mediator.locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    await expect(mediator.locator("#mediator-panel")).to_be_visible()

    # The consents are required by the page itself.
    await applicant.goto(join_url(jiefen, links["applicant"]))
    await applicant.locator("#to-devices").click()
    await expect(applicant.locator("#consent-message")).to_have_text(re.compile("勾选同意录音录像"))
    # A wrong identity answer brings the person back to the form with the server's reason;
    # the right one then gets them into the waiting room.
    await pass_consent_and_devices(applicant, "000000")
    await expect(applicant.locator("#consent-message")).to_have_text(
        texts.REFUSALS["identity_mismatch"], timeout=UI_WAIT_MS
    )
    await expect(applicant.locator("#step-consent")).to_be_visible()
    await pass_consent_and_devices(applicant, ID_NUMBER[-6:])
    await expect(applicant.locator("#waiting-message")).to_have_text(
        texts.WAITING, timeout=UI_WAIT_MS
    )

    await respondent.goto(join_url(jiefen, links["respondent"]))
    await pass_consent_and_devices(respondent, RESPONDENT_PHONE)
    await expect(respondent.locator("#waiting-message")).to_have_text(
        texts.WAITING, timeout=UI_WAIT_MS
    )

    # The mediator admits both from the waiting list.
    for role_name in ("申请人", "被申请人"):
        row = mediator.locator("#waiting-list .row").filter(has_text=re.compile(f"^{role_name} "))
        await row.get_by_role("button", name="允许进入").click(timeout=UI_WAIT_MS)
    for page in (applicant, respondent):
        await expect(page.locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    # The socket given up on after the wrong answer stayed closed (no "reconnecting" notice).
    await expect(applicant.locator("#room-notice")).to_be_hidden(timeout=UI_WAIT_MS)
    await expect(mediator.locator("#waiting-list")).to_be_empty(timeout=UI_WAIT_MS)

    # Three-way media: every page decodes frames from each of the other two.
    everyone = [(viewer, sender) for viewer in SEATS for sender in SEATS if viewer != sender]
    await frames_flow(pages, everyone, more=15)

    # 背对背 with the applicant: the respondent is on hold and gets nothing from anyone, nor does
    # anyone get anything from them; the mediator and the applicant go on seeing each other.
    await mediator.get_by_role("button", name="与申请人背对背").click()
    await expect(respondent.locator("#room-notice")).to_have_text(
        texts.CAUCUS_ON_HOLD, timeout=UI_WAIT_MS
    )
    await expect(applicant.locator("#room-notice")).to_have_text(
        texts.CAUCUS_STARTED, timeout=UI_WAIT_MS
    )
    held = [("respondent", "mediator"), ("respondent", "applicant")]
    held += [("mediator", "respondent"), ("applicant", "respondent")]
    before = await settled(pages, held)
    await asyncio.sleep(2.0)
    after = {seat: await received(pages[seat]) for seat in SEATS}
    for viewer, sender in (("mediator", "applicant"), ("applicant", "mediator")):
        was, now = count(before[viewer], sender), count(after[viewer], sender)
        assert now >= was + 10, f"in caucus, {viewer} decoded {was} -> {now} frames of {sender}"
    for viewer, sender in held:
        for kind, what in (("video", "frames"), ("video", "bytes"), ("audio", "bytes")):
            was = count(before[viewer], sender, kind, what)
            now = count(after[viewer], sender, kind, what)
            assert now == was, f"in caucus, {viewer} got {sender}'s {kind} ({what} {was} -> {now})"

    # Back to the joint session: frames flow to and from the respondent again.
    await mediator.get_by_role("button", name="回到三方调解").click()
    await expect(respondent.locator("#room-notice")).to_have_text(
        texts.JOINT_SESSION, timeout=UI_WAIT_MS
    )
    await frames_flow(pages, held, more=10)

    # The mediator ends the session (after confirming); every page shows the ended state.
    await mediator.locator("#end").click()
    for page in pages.values():
        await expect(page.locator("#step-closed")).to_be_visible(timeout=UI_WAIT_MS)
        await expect(page.locator("#closed-title")).to_have_text("调解已结束")
        await expect(page.locator("#closed-message")).to_have_text(texts.ENDED)
    assert len(dialogs) == 1 and "结束" in dialogs[0]

    # Each seat's camera and microphone were recorded.
    directory = jiefen.settings.recordings_dir / opened["room_id"]
    wanted = [f"{seat}-{kind}-01.webm" for seat in SEATS for kind in ("video", "audio")]

    async def recorded() -> bool:
        return all(
            (directory / name).is_file() and (directory / name).stat().st_size > 0
            for name in wanted
        )

    await until(recorded, f"non-empty {wanted} in {directory}", wait_s=10)


@pytest.mark.timeout(90)
async def test_a_forged_or_mangled_link_shows_a_refusal_in_chinese(
    jiefen: RunningJiefen, browser: Browser
) -> None:
    case_no = await file_case(jiefen)
    links = (await open_room(jiefen, case_no))["links"]
    payload, signature = token_of(links["applicant"]).split(".")
    # The first character, not the last: the last one's low bits are padding and may not count.
    forged = payload + "." + ("B" if signature[0] == "A" else "A") + signature[1:]
    page = await new_page(browser)
    await page.goto(f"{jiefen.url}/join#{forged}")
    # Refused on arrival (the link is checked first), before any notice, consent or camera.
    await expect(page.locator("#step-closed")).to_be_visible(timeout=UI_WAIT_MS)
    await expect(page.locator("#closed-title")).to_have_text("无法进入")
    await expect(page.locator("#closed-message")).to_have_text(texts.REFUSALS["forged"])
    for step in ("#step-consent", "#step-devices", "#step-waiting", "#step-room"):
        await expect(page.locator(step)).to_be_hidden()

    # A link cut in the middle of a %-escape, and one with no token at all, are refused at once.
    for broken in ("#%E5%AE", ""):
        page = await new_page(browser)
        await page.goto(f"{jiefen.url}/join{broken}")
        await expect(page.locator("#closed-title")).to_have_text("链接不完整", timeout=UI_WAIT_MS)
        await expect(page.locator("#step-closed")).to_be_visible()
