"""The join page's own parts in headless Chromium: the link checked on arrival, the device and
network check and its messages, 长者模式's one-action screens, and in the room the mic and
camera toggles, the connection-quality indicator, the active speaker and the reconnect after a
network drop.

The set-up and helpers are those of ``tests/test_room_browser.py``. With
``JIEFEN_TEST_SCREENSHOTS=<folder>`` the 长者模式 test also saves phone-sized (390×844)
screenshots of every screen there, in both modes, for a person to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, Route, expect

from mediation_rooms import texts
from mediation_rooms.join_token import JoinClaims, issue_join_token
from state import room_store
from tests.harness import RunningJiefen
from tests.test_room_browser import (
    SEATS,
    UI_WAIT_MS,
    frames_flow,
    join_url,
    new_page,
    pass_consent_and_devices,
    received,
    until,
)
from tests.test_room_signalling import RESPONDENT_PHONE, file_case, open_room, token_of
from tests.test_state_case_store import ID_NUMBER

pytestmark = pytest.mark.services

SCREENSHOTS = os.environ.get("JIEFEN_TEST_SCREENSHOTS")
PHONE = {"width": 390, "height": 844}

#: Which sections were ever shown, and how often getUserMedia was called: installed before the
#: page's own script, so that nothing it does goes unseen.
WATCH_JS = """
window.__shown = [];
window.__cameraOpened = 0;
new MutationObserver((changes) => {
  for (const change of changes) {
    const el = change.target;
    const step = el.classList && el.classList.contains("step");
    if (step && !el.hidden && !window.__shown.includes(el.id)) window.__shown.push(el.id);
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["hidden"] });
if (navigator.mediaDevices) {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => { window.__cameraOpened += 1; return open(c); };
}
"""

#: Every signalling message the page sends, as parsed JSON, in ``window.__sent``.
SPY_JS = """
window.__sent = [];
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  try { window.__sent.push(JSON.parse(data)); } catch (e) { /* not ours */ }
  return realSend.call(this, data);
};
"""

#: The visible primary buttons' texts: 长者模式 shows exactly one per screen.
PRIMARY_JS = """
() => [...document.querySelectorAll("button.primary")]
  .filter((b) => b.getClientRects().length > 0)
  .map((b) => b.innerText.trim())
"""

#: This page's own microphone and camera as the peer connection sends them.
LOCAL_TRACKS_JS = """
() => {
  const out = {};
  for (const sender of window.jiefenRoom.pc.getSenders())
    if (sender.track) out[sender.track.kind] = sender.track.enabled;
  return out;
}
"""


def reject_camera(name: str, devices: str | None = None) -> str:
    """An init script under which getUserMedia fails as a browser does (``name``), and
    enumerateDevices lists ``devices`` (comma-separated kinds) when given."""
    listed = ""
    if devices is not None:
        kinds = [kind for kind in devices.split(",") if kind]
        listed = (
            "navigator.mediaDevices.enumerateDevices = () => Promise.resolve("
            + json.dumps([{"kind": k, "deviceId": "", "label": "", "groupId": ""} for k in kinds])
            + ");"
        )
    return (
        "navigator.mediaDevices.getUserMedia = () =>"
        f" Promise.reject(new DOMException('refused in the test', '{name}'));" + listed
    )


async def phone_page(browser: Browser, *, init: str | None = None) -> Page:
    """A page on a phone-sized screen, in a context of its own (another person)."""
    context = await browser.new_context(
        locale="zh-CN", viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    if init:
        await context.add_init_script(init)
    return await context.new_page()


async def page_with(browser: Browser, init: str) -> Page:
    context = await browser.new_context(locale="zh-CN")
    await context.add_init_script(init)
    return await context.new_page()


#: The three notices, by the words each begins with.
NOTICES = ("全程录音录像", "您的权利和义务", "虚假调解的后果")


def notice(page: Page, text: str) -> Locator:
    return page.locator(".notices li").filter(has_text=text)


async def primary_actions(page: Page) -> list[str]:
    result: list[str] = await page.evaluate(PRIMARY_JS)
    return result


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:  # Playwright makes the folder
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


async def sent(page: Page, kind: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = await page.evaluate("() => window.__sent")
    return [message for message in messages if message.get("type") == kind]


async def admit(mediator: Page, role_name: str) -> None:
    row = mediator.locator("#waiting-list .row").filter(has_text=re.compile(f"^{role_name} "))
    await row.get_by_role("button", name="允许进入").click(timeout=UI_WAIT_MS)


async def everyone_in(jiefen: RunningJiefen, pages: dict[str, Page], links: dict[str, str]) -> None:
    """The mediator in, the two parties through the page and admitted; media flowing."""
    identities = {"mediator": None, "applicant": ID_NUMBER[-6:], "respondent": RESPONDENT_PHONE}
    for seat in SEATS:
        await pages[seat].goto(join_url(jiefen, links[seat]))
        await pass_consent_and_devices(pages[seat], identities[seat])
    await expect(pages["mediator"].locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    for role_name in ("申请人", "被申请人"):
        await admit(pages["mediator"], role_name)
    for page in pages.values():
        await expect(page.locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    everyone = [(viewer, sender) for viewer in SEATS for sender in SEATS if viewer != sender]
    await frames_flow(pages, everyone, more=10)


@pytest.mark.timeout(120)
async def test_the_link_is_checked_before_anything_is_asked(
    jiefen: RunningJiefen, browser: Browser
) -> None:
    case_no = await file_case(jiefen)
    opened = await open_room(
        jiefen, case_no, mediator_name="王调解员", extra_seats={"interpreter": "阿依"}
    )
    links, room_id = opened["links"], opened["room_id"]

    # A good link: greeted by name and seat, asked for the re-check that seat has (or none).
    prompts = {
        "applicant": ("张*（申请人）", "请输入您身份证号码的后 6 位", "text"),
        "respondent": ("李*（被申请人）", "请输入案件登记的手机号", "tel"),
        "mediator": ("王调解员（调解员）", None, None),
        "interpreter": ("阿依（翻译）", None, None),
    }
    for seat, (who, label, inputmode) in prompts.items():
        page = await page_with(browser, WATCH_JS)
        await page.goto(join_url(jiefen, links[seat]))
        await expect(page.locator("#step-consent")).to_be_visible(timeout=UI_WAIT_MS)
        await expect(page.locator("#greeting")).to_have_text(f"您好，{who}，案件 {case_no}")
        if label is None:
            await expect(page.locator("#identity-box")).to_be_hidden()
        else:
            await expect(page.locator("#identity-label")).to_have_text(label)
            await expect(page.locator("#identity")).to_have_attribute("inputmode", inputmode or "")
        # Nobody else's name on the page.
        others = {"张三", "李四", "王调解员", "阿依"} - {who.split("（")[0]}
        body = await page.locator("body").inner_text()
        assert not any(name in body for name in others), body
        if label is None:
            # 长者模式 has no identity screen for it: from the recording consent to the devices.
            await page.locator("#elder-toggle").click()
            for _ in NOTICES:
                await page.get_by_role("button", name="我知道了").click()
            await page.get_by_role("button", name="同意录音录像").click()
            await expect(page.locator("#step-devices")).to_be_visible()
        await page.context.close()

    # Forged and expired links, and an ended room's, are refused on arrival: no notice,
    # no consent, no camera.
    token = token_of(links["applicant"])
    payload, signature = token.split(".")
    room = await room_store.get_room(jiefen.services.db, room_id)
    assert room is not None
    nonce = room.seat("applicant").nonce  # type: ignore[union-attr]
    expired = issue_join_token(
        jiefen.services.rooms.join_key,
        JoinClaims(room_id, "applicant", nonce, int(time.time()) - 1),
    )
    bad = {
        "forged": payload + "." + ("B" if signature[0] == "A" else "A") + signature[1:],
        "expired": expired,
    }

    async def refused_on_arrival(link_token: str, message: str) -> None:
        page = await page_with(browser, WATCH_JS)
        await page.goto(f"{jiefen.url}/join#{link_token}")
        await expect(page.locator("#step-closed")).to_be_visible(timeout=UI_WAIT_MS)
        await expect(page.locator("#closed-title")).to_have_text("无法进入")
        await expect(page.locator("#closed-message")).to_have_text(message)
        assert await page.evaluate("() => window.__shown") == ["step-closed"]
        assert await page.evaluate("() => window.__cameraOpened") == 0
        await page.context.close()

    for code, link_token in bad.items():
        await refused_on_arrival(link_token, texts.REFUSALS[code])
    assert await room_store.set_room_state(
        jiefen.services.db, room_id, expected="scheduled", new="ended", now=datetime.now(UTC)
    )
    await refused_on_arrival(token, texts.REFUSALS["room_closed"])


@pytest.mark.timeout(120)
async def test_device_and_network_problems_are_told_in_chinese(
    jiefen: RunningJiefen, browser: Browser
) -> None:
    links = (await open_room(jiefen, await file_case(jiefen)))["links"]
    url = join_url(jiefen, links["applicant"])

    async def device_check(page: Page) -> None:
        await page.goto(url)
        await pass_consent_and_devices_until_check(page)

    cases = {
        "NotAllowedError": (None, "没有得到使用摄像头和麦克风的允许"),
        "NotFoundError": ("audioinput", "没有找到摄像头。"),
        "NotReadableError": (None, "摄像头或麦克风正被其他应用使用"),
    }
    for name, (devices, message) in cases.items():
        page = await phone_page(browser, init=reject_camera(name, devices))
        await device_check(page)
        await expect(page.locator("#device-status")).to_contain_text(message, timeout=UI_WAIT_MS)
        await expect(page.locator("#device-status")).to_have_class(re.compile("error"))
        await expect(page.locator("#enter")).to_be_disabled()
        await expect(page.locator("#device-retry")).to_be_visible()
        await screenshot(page, f"normal-devices-{name}")
        await page.context.close()
    # No device at all: the browser cannot tell which is missing, nor can the page.
    page = await page_with(browser, reject_camera("NotFoundError", ""))
    await device_check(page)
    await expect(page.locator("#device-status")).to_contain_text(
        "没有找到摄像头或麦克风", timeout=UI_WAIT_MS
    )
    await page.context.close()

    # The network, measured against this server: on loopback, good, with its round trip.
    page = await new_page(browser)
    await device_check(page)
    await expect(page.locator("#network-status")).to_have_text(
        re.compile(r"^网络良好（往返 \d+ 毫秒）"), timeout=UI_WAIT_MS
    )
    await expect(page.locator("#enter")).to_be_enabled()
    await page.context.close()

    # The server out of reach (every ping fails), and a slow one (every ping half a second).
    page = await new_page(browser)
    await page.route("**/rooms/ping*", lambda route: route.abort("connectionrefused"))
    await device_check(page)
    await expect(page.locator("#network-status")).to_contain_text(
        "连不上调解服务器", timeout=UI_WAIT_MS
    )
    await expect(page.locator("#device-retry")).to_be_visible()
    await screenshot(page, "normal-devices-unreachable")
    await page.unroute("**/rooms/ping*")
    await page.locator("#device-retry").click()  # the server is back: so is the network
    await expect(page.locator("#network-status")).to_have_text(
        re.compile("^网络(良好|一般)"), timeout=UI_WAIT_MS
    )
    await page.context.close()

    async def slowly(route: Route) -> None:
        await asyncio.sleep(0.5)
        await route.continue_()

    page = await new_page(browser)
    await page.route("**/rooms/ping*", slowly)
    await device_check(page)
    await expect(page.locator("#network-status")).to_contain_text("网络较差", timeout=UI_WAIT_MS)
    await page.context.close()


async def pass_consent_and_devices_until_check(page: Page) -> None:
    """The applicant's consents and identity, then the device check (without entering)."""
    await expect(page.locator("#step-consent")).to_be_visible(timeout=UI_WAIT_MS)
    await page.locator("#ack-notices").check()
    await page.locator("#consent-recording").check()
    await page.locator("#identity").fill(ID_NUMBER[-6:])
    await page.locator("#to-devices").click()
    await expect(page.locator("#step-devices")).to_be_visible()


@pytest.mark.timeout(180)
async def test_elder_mode_is_one_action_per_screen(jiefen: RunningJiefen, browser: Browser) -> None:
    links = (await open_room(jiefen, await file_case(jiefen)))["links"]
    applicant = await phone_page(browser)
    await applicant.goto(join_url(jiefen, links["applicant"]))
    await expect(applicant.locator("#step-consent")).to_be_visible(timeout=UI_WAIT_MS)

    # The standard page: every notice and both ticks at once, one button to go on.
    await screenshot(applicant, "normal-1-consent")
    for text in NOTICES:
        await expect(notice(applicant, text)).to_be_visible()
    await expect(applicant.locator("#ack-notices")).to_be_visible()
    await expect(applicant.locator("#consent-recording")).to_be_visible()
    assert await primary_actions(applicant) == ["下一步：检查摄像头和麦克风"]

    # 长者模式 is chosen once and kept.
    await applicant.locator("#elder-toggle").click()
    await applicant.reload()
    await expect(applicant.locator("body")).to_have_class(re.compile("elder"), timeout=UI_WAIT_MS)
    await expect(applicant.locator("#elder-toggle")).to_have_text("标准模式")
    await expect(applicant.locator("#step-consent")).to_be_visible(timeout=UI_WAIT_MS)

    # One notice a screen, each with one big 「我知道了」.
    for number, text in enumerate(NOTICES, start=1):
        await expect(notice(applicant, text)).to_be_visible()
        for other in NOTICES:
            if other != text:
                await expect(notice(applicant, other)).to_be_hidden()
        await expect(applicant.get_by_text(f"须知 {number} / 3")).to_be_visible()
        await expect(applicant.locator("#ack-notices")).to_be_hidden()
        assert await primary_actions(applicant) == ["我知道了"]
        await screenshot(applicant, f"elder-{number}-notice")
        await applicant.get_by_role("button", name="我知道了").click()

    # The recording consent: a screen of its own, an explicit 「同意录音录像」; reading the
    # notices did not give it.
    assert await primary_actions(applicant) == ["同意录音录像"]
    assert (
        await applicant.evaluate("() => document.getElementById('consent-recording').checked")
        is False
    )
    await screenshot(applicant, "elder-4-recording")
    await applicant.get_by_role("button", name="不同意").click()
    await expect(applicant.locator("#consent-message")).to_contain_text("不能在线视频调解")
    assert await primary_actions(applicant) == ["同意录音录像"]
    await applicant.get_by_role("button", name="同意录音录像").click()

    # The identity: a big box and 「下一步」; a mistyped answer is caught before it costs a try;
    # the whole ID number typed is taken for its last 6 characters.
    await expect(applicant.locator("#identity-label")).to_have_text("请输入您身份证号码的后 6 位")
    assert await primary_actions(applicant) == ["下一步"]
    await applicant.locator("#identity").fill("1234")
    await applicant.get_by_role("button", name="下一步").click()
    await expect(applicant.locator("#consent-message")).to_contain_text("最后 6 位")
    await screenshot(applicant, "elder-5-identity")
    await applicant.locator("#identity").fill(ID_NUMBER)
    await applicant.get_by_role("button", name="下一步").click()

    # The device check: one big 「进入调解室」.
    await expect(applicant.locator("#device-status")).to_have_text(
        re.compile("^摄像头和麦克风正常"), timeout=UI_WAIT_MS
    )
    await expect(applicant.locator("#network-status")).to_have_text(
        re.compile("^网络"), timeout=UI_WAIT_MS
    )
    assert await primary_actions(applicant) == ["进入调解室"]
    await screenshot(applicant, "elder-6-devices")
    await applicant.get_by_role("button", name="进入调解室").click()
    await expect(applicant.locator("#waiting-message")).to_have_text(
        texts.WAITING, timeout=UI_WAIT_MS
    )
    await screenshot(applicant, "elder-7-waiting")

    # The mediator (standard mode) lets the applicant in, then the respondent (standard, phone).
    mediator = await new_page(browser)
    await mediator.goto(join_url(jiefen, links["mediator"]))
    await pass_consent_and_devices(mediator, None)
    await admit(mediator, "申请人")
    respondent = await phone_page(browser)
    await respondent.goto(join_url(jiefen, links["respondent"]))
    await pass_consent_and_devices(respondent, RESPONDENT_PHONE)
    await admit(mediator, "被申请人")
    pages = {"mediator": mediator, "applicant": applicant, "respondent": respondent}
    for page in pages.values():
        await expect(page.locator("#step-room")).to_be_visible(timeout=UI_WAIT_MS)
    await frames_flow(pages, [("applicant", "mediator"), ("applicant", "respondent")], more=10)
    await frames_flow(pages, [("respondent", "mediator"), ("respondent", "applicant")], more=10)

    # In the room: no chat, the two toggles as large buttons; the standard page keeps its chat.
    await expect(applicant.locator("#chat")).to_be_hidden()
    for toggle in ("#toggle-mic", "#toggle-camera"):
        box = await applicant.locator(toggle).bounding_box()
        assert box is not None and box["height"] >= 64 and box["width"] >= 150, (toggle, box)
    await expect(respondent.locator("#chat")).to_be_visible()
    await screenshot(applicant, "elder-8-room")
    await screenshot(respondent, "normal-2-room")

    # The large toggles work as the small ones do, and the others see it on the tile.
    await applicant.locator("#toggle-mic").click()
    await expect(applicant.locator("#toggle-mic")).to_have_text("打开麦克风")
    await expect(respondent.locator("#tile-applicant .flags")).to_have_text(
        "已关闭麦克风", timeout=UI_WAIT_MS
    )
    await screenshot(applicant, "elder-9-mic-off")
    # Muted by the mediator, a notice on top, in either mode.
    row = mediator.locator("#participant-list .row").filter(has_text=re.compile("^被申请人 "))
    await row.get_by_role("button", name="静音").click()
    await expect(respondent.locator("#room-notice")).to_have_text(
        texts.MUTED_BY_MEDIATOR, timeout=UI_WAIT_MS
    )
    await expect(respondent.locator("#toggle-mic")).to_have_text("调解员已将您静音")
    await expect(applicant.locator("#tile-respondent .flags")).to_have_text(
        "被调解员静音", timeout=UI_WAIT_MS
    )
    await screenshot(respondent, "normal-3-muted")
    await screenshot(applicant, "elder-10-other-muted")


@pytest.mark.timeout(240)
async def test_room_controls_quality_speaker_and_reconnect(
    jiefen: RunningJiefen, browser: Browser
) -> None:
    links = (await open_room(jiefen, await file_case(jiefen)))["links"]
    pages = {seat: await page_with(browser, SPY_JS) for seat in SEATS}
    mediator, applicant, respondent = (pages[seat] for seat in SEATS)
    await everyone_in(jiefen, pages, links)

    # Loopback: the indicator says 好 once media flows; the fake microphones beep, and some tile
    # lights up as the one speaking.
    for page in pages.values():
        await expect(page.locator("#quality")).to_have_text("网络：好", timeout=UI_WAIT_MS)
        await expect(page.locator(".tile.speaking").first).to_be_attached(timeout=UI_WAIT_MS)
    # Every page told the server its microphone and camera are on; a party already from the
    # waiting room, before any media (PROTOCOL.md: after each connection, once joined).
    for page in pages.values():
        assert (await sent(page, "media_state"))[-1] == {
            "type": "media_state",
            "audio": True,
            "video": True,
        }
    for party in (applicant, respondent):
        kinds = [message["type"] for message in await party.evaluate("() => window.__sent")]
        assert kinds.index("media_state") < kinds.index("answer"), kinds

    # The applicant switches the microphone off: the button, the track, the server and the
    # others' tiles say so; then the camera; then both back on.
    steps: list[tuple[str, str, str, str]] = [
        ("#toggle-mic", "打开麦克风", "audio", "已关闭麦克风"),
        ("#toggle-camera", "打开摄像头", "video", "已关闭摄像头"),
    ]
    for button, text, kind, label in steps:
        await applicant.locator(button).click()
        await expect(applicant.locator(button)).to_have_text(text)
        assert (await applicant.evaluate(LOCAL_TRACKS_JS))[kind] is False
        for viewer in (mediator, respondent):
            await expect(viewer.locator("#tile-applicant .flags")).to_contain_text(
                label, timeout=UI_WAIT_MS
            )
        await expect(applicant.locator("#tile-applicant .flags")).to_contain_text(label)
    assert (await sent(applicant, "media_state"))[-1] == {
        "type": "media_state",
        "audio": False,
        "video": False,
    }
    await applicant.locator("#toggle-mic").click()
    await applicant.locator("#toggle-camera").click()
    await expect(applicant.locator("#toggle-mic")).to_have_text("关闭麦克风")
    await expect(applicant.locator("#toggle-camera")).to_have_text("关闭摄像头")
    assert await applicant.evaluate(LOCAL_TRACKS_JS) == {"audio": True, "video": True}
    for viewer in (mediator, respondent):
        await expect(viewer.locator("#tile-applicant .flags")).to_be_empty(timeout=UI_WAIT_MS)

    # Muted by the mediator: told in a notice, and the page's own button shows it (pressing it
    # would change nothing); unmuted, the button is the person's again.
    row = mediator.locator("#participant-list .row").filter(has_text=re.compile("^申请人 "))
    await row.get_by_role("button", name="静音").click()
    await expect(applicant.locator("#toggle-mic")).to_have_text(
        "调解员已将您静音", timeout=UI_WAIT_MS
    )
    await expect(applicant.locator("#toggle-mic")).to_be_disabled()
    await expect(applicant.locator("#room-notice")).to_have_text(texts.MUTED_BY_MEDIATOR)
    await expect(applicant.locator("#room-notice")).to_be_visible()
    for viewer in (mediator, respondent):
        await expect(viewer.locator("#tile-applicant .flags")).to_contain_text("被调解员静音")
    await row.get_by_role("button", name="取消静音").click()
    await expect(applicant.locator("#toggle-mic")).to_have_text("关闭麦克风", timeout=UI_WAIT_MS)
    await expect(applicant.locator("#toggle-mic")).to_be_enabled()
    await expect(applicant.locator("#room-notice")).to_have_text(texts.UNMUTED_BY_MEDIATOR)

    # The respondent's network drops: the socket and the peer connection die, and for a while
    # nothing gets through. The page says so, and comes back by itself when the network does.
    await respondent.context.set_offline(True)
    await respondent.evaluate(
        """() => {
          window.__droppedPc = window.jiefenRoom.pc;
          window.jiefenRoom.pc.close();
          window.jiefenRoom.ws.close();
        }"""
    )
    await expect(respondent.locator("#room-notice")).to_contain_text("重新连接", timeout=UI_WAIT_MS)
    await respondent.wait_for_timeout(1500)  # a reconnect attempt fails meanwhile
    await respondent.context.set_offline(False)

    async def reconnected() -> bool:
        ok: bool = await respondent.evaluate(
            """() => window.jiefenRoom.pc !== window.__droppedPc &&
                     window.jiefenRoom.pc.connectionState === "connected" """
        )
        return ok

    await until(reconnected, "the respondent's page is connected again on a new peer connection")
    await expect(respondent.locator("#step-room")).to_be_visible()
    await expect(respondent.locator("#room-notice")).to_be_hidden(timeout=UI_WAIT_MS)
    back = [("respondent", "mediator"), ("respondent", "applicant")]
    back += [("mediator", "respondent"), ("applicant", "respondent")]
    await frames_flow(pages, back, more=15)
    assert (await sent(respondent, "media_state"))[-1]["audio"] is True
    stats = await received(respondent)
    assert all(stats.get(f"{seat}/video", {}).get("frames", 0) > 0 for seat in SEATS[:2]), stats
