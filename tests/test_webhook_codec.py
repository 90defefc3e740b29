"""The webhook codec against wechatpy as the reference: what it encrypts wechatpy opens, what it
refuses it refuses with the right error."""

from __future__ import annotations

import dataclasses
import re

import pytest
from wechatpy.crypto import WeChatCrypto

from bot.inbound import WebhookCodec
from bot.wechat_simulator import WeChatSimulator
from config.settings import DEV_WECHAT_AES_KEY, DEV_WECHAT_APPID, DEV_WECHAT_TOKEN
from flows import events
from jiefen.errors import BadSignature, MalformedMessage

CODEC = WebhookCodec(
    token=DEV_WECHAT_TOKEN,
    appid=DEV_WECHAT_APPID,
    aes_key=DEV_WECHAT_AES_KEY,
    timestamp_tolerance_s=300,
    crypto_mode="safe",
)
SIMULATOR = WeChatSimulator(DEV_WECHAT_TOKEN, DEV_WECHAT_APPID, DEV_WECHAT_AES_KEY)


def _field(xml: str, name: str) -> str:
    match = re.search(rf"<{name}>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</{name}>", xml)
    assert match, (name, xml)
    return match.group(1)


def test_a_push_decodes_and_its_encrypted_reply_opens_with_wechatpy() -> None:
    push = SIMULATOR.text("o_codec", "楼上装修太吵")
    inbound = CODEC.decode(push.params, push.body)
    assert inbound.encrypted and inbound.openid == "o_codec"
    assert inbound.event == events.Text("楼上装修太吵")
    first = CODEC.encode_reply(inbound, "好的]]>收到", nonce="12345")
    second = CODEC.encode_reply(inbound, "好的]]>收到", nonce="12345")
    # The 16 random bytes at the head of the plaintext make two encryptions differ.
    assert _field(first, "Encrypt") != _field(second, "Encrypt")
    reference = WeChatCrypto(DEV_WECHAT_TOKEN, DEV_WECHAT_AES_KEY, DEV_WECHAT_APPID)
    opened = reference.decrypt_message(
        first, _field(first, "MsgSignature"), _field(first, "TimeStamp"), "12345"
    )
    assert "<![CDATA[好的]]]]><![CDATA[>收到]]>" in opened and "o_codec" in opened


def test_a_wrong_msg_signature_or_a_missing_envelope_is_refused() -> None:
    push = SIMULATOR.text("o_codec", "你好")
    for forged in (
        dict(push.params, msg_signature="0" * 40),
        dict(push.params, msg_signature="签名"),  # non-ASCII: refused, not a crash
        dict(push.params, signature="签名"),
    ):
        with pytest.raises(BadSignature):
            CODEC.decode(forged, push.body)
    for body in (b"<xml><ToUserName>gh</ToUserName></xml>", b"<xml><Encrypt/></xml>", b"<x"):
        with pytest.raises(MalformedMessage):
            CODEC.decode(push.params, body)
    wrong_account = SIMULATOR.wrong_appid("o_codec")
    with pytest.raises(MalformedMessage):
        CODEC.decode(wrong_account.params, wrong_account.body)
    assert dataclasses.replace(CODEC).decode(push.params, push.body).openid == "o_codec"
