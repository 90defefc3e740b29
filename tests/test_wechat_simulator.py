"""The WeChat simulator, proven against wechatpy as an independent implementation of the protocol.

Every push the simulator builds must pass wechatpy's signature check, decrypt with wechatpy's
``WeChatCrypto`` and parse with ``parse_message``; replies rendered and encrypted by wechatpy must
be understood by ``parse_reply``. ``deliver`` is run against real aiohttp servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import xmltodict
from aiohttp import web
from aiohttp.test_utils import TestServer
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.replies import ArticlesReply, ImageReply
from wechatpy.utils import check_signature

from bot.wechat_simulator import (
    CryptoMode,
    InvalidReply,
    MessageCipher,
    NoReply,
    Push,
    Reply,
    WeChatSimulator,
    sign,
)

TOKEN = "sim-token"
APPID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OPENID = "oUser_0123456789abcdefghijk"
ACCOUNT = "gh_jiefen"

ALL_MODES = [CryptoMode.PLAIN, CryptoMode.COMPAT, CryptoMode.SAFE]
AES_MODES = [CryptoMode.COMPAT, CryptoMode.SAFE]


def simulator(mode: CryptoMode, clock: Callable[[], float] | None = None) -> WeChatSimulator:
    if clock is None:
        return WeChatSimulator(TOKEN, APPID, AES_KEY, mode)
    return WeChatSimulator(TOKEN, APPID, AES_KEY, mode, clock=clock)


def crypto() -> WeChatCrypto:
    return WeChatCrypto(TOKEN, AES_KEY, APPID)


def open_with_wechatpy(sim: WeChatSimulator, push: Push) -> Any:
    """What our webhook does with wechatpy: check the signature(s), decrypt, parse."""
    params = push.params
    check_signature(TOKEN, params["signature"], params["timestamp"], params["nonce"])
    assert params["openid"] == push.openid
    if sim.mode is CryptoMode.PLAIN:
        assert "encrypt_type" not in params
        xml = push.body.decode()
    else:
        assert params["encrypt_type"] == "aes"
        xml = crypto().decrypt_message(
            push.body.decode(), params["msg_signature"], params["timestamp"], params["nonce"]
        )
        if sim.mode is CryptoMode.COMPAT:  # the plaintext fields travel alongside
            outer = parse_message(push.body.decode())
            assert outer.type == parse_message(xml).type and outer.source == push.openid
        else:  # safe mode: nothing but ToUserName and Encrypt outside the ciphertext
            assert [child.tag for child in ET.fromstring(push.body)] == ["ToUserName", "Encrypt"]
    assert xml.encode() == push.xml
    return parse_message(xml)


MESSAGES: dict[str, Callable[[WeChatSimulator], Push]] = {
    "text": lambda s: s.text(OPENID, "我要调解 ]]> <b>&amp;"),
    "image": lambda s: s.image(OPENID, "media-img-1", "http://mmbiz.qpic.cn/x/0"),
    "voice": lambda s: s.voice(OPENID, "media-voice-1", recognition="邻居噪音扰民"),
    "voice_unrecognised": lambda s: s.voice(OPENID, "media-voice-2"),
    "video": lambda s: s.video(OPENID, "media-video-1", "thumb-1"),
    "shortvideo": lambda s: s.shortvideo(OPENID, "media-sv-1", "thumb-2"),
    "location": lambda s: s.location(OPENID, 25.0389, 102.7183, "昆明市五华区华山街道", 16),
    "link": lambda s: s.link(OPENID, "合同", "借款合同照片", "https://example.org/a"),
    "subscribe": lambda s: s.subscribe(OPENID),
    "subscribe_scan": lambda s: s.subscribe(OPENID, scene="court7"),
    "unsubscribe": lambda s: s.unsubscribe(OPENID),
    "click": lambda s: s.click(OPENID, "START_INTAKE"),
    "view": lambda s: s.view(OPENID, "https://example.org/menu"),
}


def check_fields(kind: str, push: Push, message: Any) -> None:
    assert message.source == OPENID
    assert message.target == ACCOUNT
    assert message.time == push.create_time
    if push.msg_id is not None:
        assert message.id == push.msg_id
    table: dict[str, dict[str, object]] = {
        "text": {"type": "text", "content": "我要调解 ]]> <b>&amp;"},
        "image": {"type": "image", "media_id": "media-img-1", "image": "http://mmbiz.qpic.cn/x/0"},
        "voice": {"type": "voice", "media_id": "media-voice-1", "recognition": "邻居噪音扰民"},
        "voice_unrecognised": {"type": "voice", "media_id": "media-voice-2", "recognition": None},
        "video": {"type": "video", "media_id": "media-video-1", "thumb_media_id": "thumb-1"},
        "shortvideo": {"type": "shortvideo", "media_id": "media-sv-1"},
        "location": {"type": "location", "label": "昆明市五华区华山街道", "scale": "16"},
        "link": {"type": "link", "title": "合同", "url": "https://example.org/a"},
        "subscribe": {"type": "event", "event": "subscribe"},
        "subscribe_scan": {"type": "event", "event": "subscribe_scan", "scene_id": "court7"},
        "unsubscribe": {"type": "event", "event": "unsubscribe"},
        "click": {"type": "event", "event": "click", "key": "START_INTAKE"},
        "view": {"type": "event", "event": "view"},
    }
    expected = table[kind]
    for attribute, value in expected.items():
        assert getattr(message, attribute) == value, attribute
    if kind == "location":
        assert (float(message.location_x), float(message.location_y)) == (25.0389, 102.7183)


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_every_push_opens_with_wechatpy(mode: CryptoMode, kind: str) -> None:
    sim = simulator(mode)
    push = MESSAGES[kind](sim)
    check_fields(kind, push, open_with_wechatpy(sim, push))
    assert (push.msg_id is None) == (push.msg_type == "event")


def test_msg_ids_are_unique_and_64_bit() -> None:
    sim = simulator(CryptoMode.SAFE)
    ids = [sim.text(OPENID, str(n)).msg_id for n in range(50)]
    assert len(set(ids)) == 50
    assert all(i is not None and 0 < i < 2**63 for i in ids)
    assert sim.text(OPENID, "x", msg_id=42).msg_id == 42


def test_clock_and_timestamp_override() -> None:
    sim = simulator(CryptoMode.SAFE, clock=lambda: 1_700_000_000.7)
    push = sim.text(OPENID, "hi")
    assert push.create_time == 1_700_000_000
    assert push.timestamp == "1700000000"
    stale = sim.text(OPENID, "hi", timestamp=1_699_999_000)
    assert stale.timestamp == "1699999000"
    message = open_with_wechatpy(sim, stale)  # still correctly signed with the stale value
    assert message.time == 1_700_000_000


def test_verification_request_is_signed() -> None:
    request = simulator(CryptoMode.SAFE).verification_request("echo-123")
    check_signature(
        TOKEN, request.params["signature"], request.params["timestamp"], request.params["nonce"]
    )
    assert request.params["echostr"] == request.echostr == "echo-123"


def test_signature_matches_the_published_rule() -> None:
    # sha1 of the sorted, concatenated parts, as WeChat's access guide describes.
    parts = ["token", "1409304348", "xxxxxx"]
    assert sign(*parts) == hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def test_cipher_layout_is_wechats() -> None:
    cipher = MessageCipher(AES_KEY)
    ciphertext = cipher.encrypt(b"<xml>a</xml>", APPID, prefix=b"0123456789abcdef")
    assert cipher.decrypt(ciphertext) == (b"<xml>a</xml>", APPID)
    # wechatpy decrypts ours, and we decrypt wechatpy's.
    encrypted = crypto().encrypt_message("<xml>b</xml>", "nonce1", "1700000000")
    envelope = xmltodict.parse(encrypted)["xml"]
    assert cipher.decrypt(envelope["Encrypt"]) == (b"<xml>b</xml>", APPID)


# -- hostile pushes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_forged_signature_fails_wechatpy(mode: CryptoMode) -> None:
    sim = simulator(mode)
    forged = sim.with_forged_signature(sim.text(OPENID, "hi"))
    with pytest.raises(InvalidSignatureException):
        check_signature(
            TOKEN, forged.params["signature"], forged.params["timestamp"], forged.params["nonce"]
        )
    if mode is not CryptoMode.PLAIN:
        with pytest.raises(InvalidSignatureException):
            crypto().decrypt_message(
                forged.body.decode(),
                forged.params["msg_signature"],
                forged.params["timestamp"],
                forged.params["nonce"],
            )


@pytest.mark.parametrize("mode", AES_MODES)
def test_wrong_appid_fails_wechatpy(mode: CryptoMode) -> None:
    push = simulator(mode).wrong_appid(OPENID)
    with pytest.raises(InvalidAppIdException):
        crypto().decrypt_message(
            push.body.decode(),
            push.params["msg_signature"],
            push.params["timestamp"],
            push.params["nonce"],
        )


@pytest.mark.parametrize("kind", ["random", "not_base64", "truncated", "empty"])
def test_garbage_ciphertext_is_signed_but_undecryptable(kind: str) -> None:
    push = simulator(CryptoMode.SAFE).garbage_ciphertext(OPENID, kind)
    check_signature(TOKEN, push.params["signature"], push.params["timestamp"], push.params["nonce"])
    with pytest.raises(Exception) as caught:  # wechatpy raises many types: the webhook guards all
        xml = crypto().decrypt_message(
            push.body.decode(),
            push.params["msg_signature"],
            push.params["timestamp"],
            push.params["nonce"],
        )
        parse_message(xml)
    assert not isinstance(caught.value, InvalidSignatureException)


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("payload", ["xxe", "billion_laughs"])
def test_entity_payloads_are_refused_by_wechatpy(mode: CryptoMode, payload: str) -> None:
    sim = simulator(mode)
    push = sim.xxe(OPENID) if payload == "xxe" else sim.billion_laughs(OPENID)
    assert b"<!DOCTYPE" in push.xml
    if mode is CryptoMode.SAFE:
        assert b"<!DOCTYPE" not in push.body  # the payload hides inside the ciphertext
    if mode is CryptoMode.COMPAT:
        assert b"<!DOCTYPE" in push.body  # and in compat mode in the plaintext part too
    with pytest.raises(ValueError, match="entities are disabled"):
        if mode is CryptoMode.PLAIN:
            parse_message(push.body.decode())
        else:
            xml = crypto().decrypt_message(
                push.body.decode(),
                push.params["msg_signature"],
                push.params["timestamp"],
                push.params["nonce"],
            )
            assert xml.encode() == push.xml
            parse_message(xml)


# -- replies -----------------------------------------------------------------------------------


def reply_for(sim: WeChatSimulator, push: Push, reply: Any, *, encrypt: bool) -> bytes:
    rendered = reply.render()
    if not encrypt:
        return str(rendered).encode()
    return str(crypto().encrypt_message(rendered, "987654321", "1700000001")).encode()


@pytest.mark.parametrize(
    ("mode", "encrypt"),
    [
        (CryptoMode.PLAIN, False),
        (CryptoMode.COMPAT, False),
        (CryptoMode.COMPAT, True),
        (CryptoMode.SAFE, True),
    ],
)
def test_parse_reply_of_wechatpy_text_reply(mode: CryptoMode, encrypt: bool) -> None:
    sim = simulator(mode)
    push = sim.text(OPENID, "你好")
    message = open_with_wechatpy(sim, push)
    body = reply_for(sim, push, create_reply("请问您要调解什么纠纷？<&>", message), encrypt=encrypt)
    reply = sim.parse_reply(body, push.params)
    assert isinstance(reply, Reply)
    assert reply.msg_type == "text"
    assert reply.content == "请问您要调解什么纠纷？<&>"
    assert (reply.to_user, reply.from_user) == (OPENID, ACCOUNT)
    assert reply.encrypted is encrypt


@pytest.mark.parametrize("mode", AES_MODES)
def test_parse_reply_of_image_and_news(mode: CryptoMode) -> None:
    sim = simulator(mode)
    push = sim.text(OPENID, "图片")
    message = open_with_wechatpy(sim, push)
    image = sim.parse_reply(
        reply_for(sim, push, ImageReply(message=message, media_id="m1"), encrypt=True),
        push.params,
    )
    assert isinstance(image, Reply) and image.media_id == "m1"
    article = {"title": "调解须知", "description": "d", "image": "http://p/1", "url": "http://u"}
    news = sim.parse_reply(
        reply_for(sim, push, ArticlesReply(message=message, articles=[article]), encrypt=True),
        push.params,
    )
    assert isinstance(news, Reply) and news.articles[0].title == "调解须知"
    two = ArticlesReply(message=message, articles=[article, article])
    with pytest.raises(InvalidReply, match="one article"):
        sim.parse_reply(reply_for(sim, push, two, encrypt=True), push.params)


def test_unescaped_cdata_end_in_reply_text_is_refused() -> None:
    # wechatpy renders Content verbatim inside CDATA: "]]>" in the text breaks the XML, which is
    # why our webhook must escape it. The escaped form must come through intact.
    sim = simulator(CryptoMode.PLAIN)
    push = sim.text(OPENID, "x")
    message = open_with_wechatpy(sim, push)
    raw = create_reply("a ]]> b", message).render().encode()
    with pytest.raises(InvalidReply, match="not XML"):
        sim.parse_reply(raw, push.params)
    escaped = raw.replace(b"a ]]> b", b"a ]]]]><![CDATA[> b")
    reply = sim.parse_reply(escaped, push.params)
    assert isinstance(reply, Reply) and reply.content == "a ]]> b"


@pytest.mark.parametrize("body", [b"", b"success", b"success\n"])
def test_success_and_empty_mean_no_reply(body: bytes) -> None:
    sim = simulator(CryptoMode.SAFE)
    assert isinstance(sim.parse_reply(body, sim.text(OPENID, "x").params), NoReply)


def test_reply_checks() -> None:
    sim = simulator(CryptoMode.SAFE)
    push = sim.text(OPENID, "x")
    message = open_with_wechatpy(sim, push)
    good = reply_for(sim, push, create_reply("ok", message), encrypt=True)
    # tampered signature
    with pytest.raises(InvalidReply, match="MsgSignature"):
        sim.parse_reply(good.replace(b"<MsgSignature><![CDATA[", b"<MsgSignature><![CDATA[0"), {})
    # plaintext in safe mode
    with pytest.raises(InvalidReply, match="encrypted"):
        sim.parse_reply(create_reply("ok", message).render().encode(), push.params)
    # encrypted for another appid
    other = WeChatCrypto(TOKEN, AES_KEY, "wxother").encrypt_message(
        create_reply("ok", message).render(), "1", "2"
    )
    with pytest.raises(InvalidReply, match="appid"):
        sim.parse_reply(other.encode(), push.params)
    # to somebody else
    with pytest.raises(InvalidReply, match="sender"):
        sim.parse_reply(good, {"openid": "oSomebodyElse"})
    # a DTD in a reply
    with pytest.raises(InvalidReply, match="DTD"):
        plain = simulator(CryptoMode.PLAIN)
        plain.parse_reply(b'<!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>', push.params)
    # encrypted reply to a plaintext push
    with pytest.raises(InvalidReply, match="plaintext-mode"):
        simulator(CryptoMode.PLAIN).parse_reply(good, push.params)


# -- deliver -----------------------------------------------------------------------------------


class Webhook:
    """A tiny webhook that records every attempt and stalls the first ``stall`` of them."""

    def __init__(self, sim: WeChatSimulator, stall: int, status: int = 200) -> None:
        self.sim = sim
        self.stall = stall
        self.status = status
        self.seen: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((dict(request.query), body))
        if len(self.seen) <= self.stall:
            await asyncio.sleep(10)
        if self.status != 200:
            return web.Response(status=self.status)
        message = open_with_wechatpy(self.sim, _as_push(request.query, body))
        rendered = create_reply(f"收到 {message.content}", message).render()
        return web.Response(
            text=crypto().encrypt_message(rendered, "123", "1700000002"),
            content_type="text/xml",
        )


def _as_push(query: Any, body: bytes) -> Push:
    return Push(dict(query), body, None, _decrypt(query, body), query["openid"], "text", 0)


def _decrypt(query: Any, body: bytes) -> bytes:
    xml = crypto().decrypt_message(
        body.decode(), query["msg_signature"], query["timestamp"], query["nonce"]
    )
    return str(xml).encode()


async def serve(webhook: Webhook) -> TestServer:
    app = web.Application()
    app.router.add_post("/wechat", webhook.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


async def test_deliver_answers_first_time() -> None:
    sim = simulator(CryptoMode.SAFE)
    webhook = Webhook(sim, stall=0)
    server = await serve(webhook)
    try:
        async with aiohttp.ClientSession() as session:
            delivery = await sim.deliver(
                session, str(server.make_url("/wechat")), sim.text(OPENID, "在吗")
            )
    finally:
        await server.close()
    assert delivery.attempts == 1 and delivery.status == 200
    assert isinstance(delivery.reply, Reply) and delivery.reply.content == "收到 在吗"


async def test_deliver_resends_the_same_push_after_a_stall() -> None:
    sim = simulator(CryptoMode.SAFE)
    webhook = Webhook(sim, stall=1)
    server = await serve(webhook)
    push = sim.text(OPENID, "第一条")
    try:
        async with aiohttp.ClientSession() as session:
            delivery = await sim.deliver(
                session, str(server.make_url("/wechat")), push, timeout=0.3
            )
    finally:
        await server.close()
    assert delivery.attempts == 2
    assert isinstance(delivery.reply, Reply) and delivery.reply.content == "收到 第一条"
    (query1, body1), (query2, body2) = webhook.seen
    assert query1 == query2 == push.params and body1 == body2 == push.body
    assert f"<MsgId>{push.msg_id}</MsgId>".encode() in _decrypt(query2, body2)


async def test_deliver_gives_up_after_three_attempts() -> None:
    sim = simulator(CryptoMode.SAFE)
    webhook = Webhook(sim, stall=99)
    server = await serve(webhook)
    try:
        async with aiohttp.ClientSession() as session:
            delivery = await sim.deliver(
                session, str(server.make_url("/wechat")), sim.text(OPENID, "x"), timeout=0.2
            )
    finally:
        await server.close()
    assert (delivery.reply, delivery.attempts, delivery.status) == (None, 3, None)
    assert len(webhook.seen) == 3


async def test_deliver_retries_connection_errors_and_stops_on_http_errors() -> None:
    sim = simulator(CryptoMode.SAFE)
    webhook = Webhook(sim, stall=0, status=500)
    server = await serve(webhook)
    url = str(server.make_url("/wechat"))
    try:
        async with aiohttp.ClientSession() as session:
            failed = await sim.deliver(session, url, sim.text(OPENID, "x"))
            assert (failed.reply, failed.attempts, failed.status) == (None, 1, 500)
            await server.close()  # nothing listens any more: connection refused
            refused = await sim.deliver(session, url, sim.text(OPENID, "x"), timeout=0.5)
    finally:
        await server.close()
    assert (refused.reply, refused.attempts, refused.status) == (None, 3, None)
