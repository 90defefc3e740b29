"""Inbound WeChat pushes: verify, decrypt and parse them into typed messages; render replies.

This is the only place that touches WeChat's wire format on the way in. Every check that can
refuse a push lives here, in order: size (done by the caller while reading), timestamp, signature,
decryption (safe and compatible modes), XML parsing. Each failure raises a
:class:`jiefen.errors.RequestRejected` subclass; nothing here writes state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wechatpy.crypto import PrpCrypto

from bot.wechat_xml import read_push_xml
from cases.draft import EvidenceKind
from config.settings import Settings
from flows import events
from jiefen.errors import BadSignature, MalformedMessage, StaleRequest


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One push from WeChat, parsed.

    ``message_key`` identifies the push across WeChat's retries: the ``MsgId`` of a message, or
    sender + ``CreateTime`` + event name of an event (events have no ``MsgId``).
    ``transcript_text`` is what the intake transcript records for it.
    """

    account: str
    openid: str
    created_at: int
    message_key: str
    msg_type: str
    event: events.Event
    transcript_text: str
    encrypted: bool


@dataclass(frozen=True, slots=True)
class WebhookCodec:
    """Verifies and decodes pushes for one Official Account, and encodes replies to them."""

    token: str
    appid: str
    aes_key: str
    timestamp_tolerance_s: int
    #: "plain", "compat" or "safe", as chosen in WeChat's admin page.
    crypto_mode: str = "safe"
    #: wechatpy's cipher for the EncodingAESKey, built once (None without a key).
    _cipher: PrpCrypto | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cipher = _Cipher(base64.b64decode(self.aes_key + "=")) if self.aes_key else None
        object.__setattr__(self, "_cipher", cipher)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookCodec:
        return cls(
            token=settings.wechat_token,
            appid=settings.wechat_appid,
            aes_key=settings.wechat_aes_key,
            timestamp_tolerance_s=settings.wechat_timestamp_tolerance_s,
            crypto_mode=settings.wechat_crypto_mode,
        )

    def verify_url(self, params: Mapping[str, str]) -> str:
        """Answer WeChat's URL check: return ``echostr`` if the signature is right."""
        self._check_signature(params)
        return params.get("echostr", "")

    def decode(
        self, params: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> InboundMessage:
        """Check and parse one push. Raises ``StaleRequest``, ``BadSignature`` or
        ``MalformedMessage``; never anything else."""
        self._check_timestamp(params, time.time() if now is None else now)
        self._check_signature(params)
        encrypted = params.get("encrypt_type", "raw").lower() == "aes"
        if self.crypto_mode == "safe" and not encrypted:
            # The plain signature does not cover the body: in safe mode only the
            # msg_signature over the ciphertext authenticates what a push says.
            raise BadSignature("plaintext push refused in safe mode")
        if self.crypto_mode == "plain" and encrypted:
            raise MalformedMessage("encrypted push but the account is in plaintext mode")
        xml = self._decrypt(params, body) if encrypted else body
        return _to_inbound(read_push_xml(xml), encrypted=encrypted)

    def encode_reply(
        self, inbound: InboundMessage, text: str, *, nonce: str, timestamp: int | None = None
    ) -> str:
        """Render a passive text reply to ``inbound`` (encrypted if the push was)."""
        stamp = str(timestamp or int(time.time()))
        xml = _TEXT_REPLY.format(
            to=escape_cdata(inbound.openid),
            account=escape_cdata(inbound.account),
            stamp=stamp,
            content=escape_cdata(text),
        )
        if not inbound.encrypted:
            return xml
        if self._cipher is None:
            raise MalformedMessage("an encrypted reply needs an EncodingAESKey")
        encrypt = self._cipher.encrypt(xml, self.appid).decode()
        return _ENCRYPTED_REPLY.format(
            encrypt=encrypt,
            signature=_sign(self.token, stamp, nonce, encrypt),
            stamp=stamp,
            nonce=nonce,
        )

    def _check_timestamp(self, params: Mapping[str, str], now: float) -> None:
        try:
            sent = int(params.get("timestamp", ""))
        except ValueError:
            raise BadSignature("missing or non-numeric timestamp") from None
        if abs(now - sent) > self.timestamp_tolerance_s:
            raise StaleRequest(f"timestamp {sent} is {int(now - sent)} s from now")

    def _check_signature(self, params: Mapping[str, str]) -> None:
        expected = _sign(self.token, params.get("timestamp", ""), params.get("nonce", ""))
        if not _same(expected, params.get("signature", "")):
            raise BadSignature("signature does not match")

    def _decrypt(self, params: Mapping[str, str], body: bytes) -> str:
        if self._cipher is None:
            raise MalformedMessage("encrypted push but no EncodingAESKey is configured")
        encrypt = read_push_xml(body).get("Encrypt")
        if not isinstance(encrypt, str):
            raise MalformedMessage("push without a usable Encrypt element")
        signature = _sign(self.token, params["timestamp"], params.get("nonce", ""), encrypt)
        if not _same(signature, params.get("msg_signature", "")):
            raise BadSignature("msg_signature does not match")
        try:
            plaintext: str = self._cipher.decrypt(encrypt, self.appid)
        except Exception as error:  # bad base64, bad padding, wrong appid...
            raise MalformedMessage(f"cannot decrypt push: {type(error).__name__}") from error
        return plaintext


class _Cipher(PrpCrypto):  # type: ignore[misc]  # wechatpy is untyped
    """wechatpy's cipher, with the 16 random bytes that open each reply drawn from ``secrets``.

    wechatpy draws them with ``random.sample`` (predictable, and slower); with the fixed IV of
    WeChat's scheme, they are what makes two encryptions of one text differ.
    """

    def get_random_string(self) -> str:
        return secrets.token_urlsafe(12)  # 16 characters


def _same(expected: str, given: str) -> bool:
    """Constant-time comparison that takes any text (``compare_digest`` refuses non-ASCII
    strings with a TypeError: a crafted query string must get 403, not 500)."""
    return hmac.compare_digest(expected.encode(), given.encode())


def _sign(token: str, timestamp: str, nonce: str, *more: str) -> str:
    """WeChat's signature: SHA-1 of the sorted strings, concatenated."""
    return hashlib.sha1("".join(sorted((token, timestamp, nonce, *more))).encode()).hexdigest()


# The passive text reply, as wechatpy's TextReply renders it (fields in its order).
_TEXT_REPLY = (
    "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[{content}]]></Content>\n"
    "<FromUserName><![CDATA[{account}]]></FromUserName>\n"
    "<ToUserName><![CDATA[{to}]]></ToUserName>\n<CreateTime>{stamp}</CreateTime>\n</xml>"
)
_ENCRYPTED_REPLY = (
    "<xml>\n<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n"
    "<MsgSignature><![CDATA[{signature}]]></MsgSignature>\n"
    "<TimeStamp>{stamp}</TimeStamp>\n<Nonce><![CDATA[{nonce}]]></Nonce>\n</xml>"
)


def escape_cdata(text: str) -> str:
    """Make ``text`` safe inside one CDATA section: split any ``]]>`` across two sections."""
    return text.replace("]]>", "]]]]><![CDATA[>")


#: The longest ``MediaId`` taken (the column that files it holds 128; WeChat's are 64).
MAX_MEDIA_ID_CHARS = 128

_MEDIA_KINDS = {
    "image": EvidenceKind.IMAGE,
    "video": EvidenceKind.VIDEO,
    "shortvideo": EvidenceKind.VIDEO,
}
_TRANSCRIPT_LABELS = {
    "image": "[图片]",
    "video": "[视频]",
    "shortvideo": "[小视频]",
    "link": "[链接]",
}


#: Events that are the resident asking for something, and so are answered: a menu button
#: (``click``), a QR code scanned while following (``scan``), a scan that waits for an answer.
#: Every other event is a :class:`~flows.events.Notice`: WeChat reporting (a template message
#: delivered, the phone's automatic location report, a menu link opened) or announcing a message
#: that follows (``pic_*``, ``location_select``: the picture or place arrives as a message).
_RESIDENT_EVENTS = frozenset({"click", "scan", "scancode_waitmsg"})


def _to_inbound(fields: Mapping[str, Any], *, encrypted: bool) -> InboundMessage:
    msg_type = _field(fields, "MsgType").lower()
    account = _field(fields, "ToUserName")
    openid = _field(fields, "FromUserName")
    if not openid or not account or not msg_type:
        raise MalformedMessage("push without FromUserName/ToUserName/MsgType")
    try:
        created_at = int(_field(fields, "CreateTime"))
    except ValueError:
        raise MalformedMessage("push without a valid CreateTime") from None
    if not 0 <= created_at < 2**32:
        raise MalformedMessage(f"push with an impossible CreateTime {created_at}")
    event_name = _field(fields, "Event").lower() if msg_type == "event" else ""
    event, transcript_text = _to_event(fields, msg_type, event_name)
    if msg_type == "event":
        message_key = f"event:{openid}:{created_at}:{event_name}"
    else:
        msg_id = _msg_id(_field(fields, "MsgId"))
        message_key = f"msg:{msg_id}" if msg_id else f"msg:{openid}:{created_at}:{msg_type}"
    return InboundMessage(
        account=account,
        openid=openid,
        created_at=created_at,
        message_key=message_key,
        msg_type=msg_type,
        event=event,
        transcript_text=transcript_text,
        encrypted=encrypted,
    )


def _msg_id(text: str) -> int:
    """WeChat's 64-bit message id, canonical (0 when absent: such a push is keyed otherwise)."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise MalformedMessage("push with a MsgId that is not a number")
    return int(text)


def _media_id(fields: Mapping[str, Any]) -> str:
    """The ``MediaId`` of a voice, image or video: what the evidence is fetched and filed by."""
    media_id = _field(fields, "MediaId")
    if not media_id or len(media_id) > MAX_MEDIA_ID_CHARS:
        raise MalformedMessage(f"push with a MediaId of {len(media_id)} characters")
    return media_id


def _field(fields: Mapping[str, Any], name: str) -> str:
    """A text field of the push ('' when absent or empty); a nested one is malformed here."""
    value = fields.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedMessage(f"push field {name} is not text")
    return value


def _to_event(
    fields: Mapping[str, Any], msg_type: str, event_name: str
) -> tuple[events.Event, str]:
    if msg_type == "text":
        content = _field(fields, "Content")
        return events.Text(content), content
    if msg_type == "voice":
        recognition = _field(fields, "Recognition") or None
        label = f"[语音] {recognition}" if recognition else "[语音]"
        return events.Voice(_media_id(fields), recognition), label
    if msg_type in _MEDIA_KINDS:
        media = events.Media(_media_id(fields), _MEDIA_KINDS[msg_type])
        return media, _TRANSCRIPT_LABELS[msg_type]
    if msg_type == "location":
        try:
            latitude = float(_field(fields, "Location_X"))
            longitude = float(_field(fields, "Location_Y"))
        except ValueError:
            raise MalformedMessage("location without coordinates") from None
        if not (math.isfinite(latitude) and math.isfinite(longitude)):
            raise MalformedMessage("location with coordinates that are not numbers")
        label = _field(fields, "Label") or f"{latitude:.5f},{longitude:.5f}"
        return events.Location(label, latitude, longitude), f"[位置] {label}"
    if msg_type == "event":
        # Following by scanning a QR code (EventKey "qrscene_…") is still a follow.
        if event_name == "subscribe":
            return events.Subscribe(), "[关注]"
        if event_name == "unsubscribe":
            return events.Unsubscribe(), "[取消关注]"
        if event_name in _RESIDENT_EVENTS:
            return events.Unsupported(f"event:{event_name}"), f"[事件 {event_name}]"
        return events.Notice(f"event:{event_name}"), f"[通知 {event_name}]"
    return events.Unsupported(msg_type), _TRANSCRIPT_LABELS.get(msg_type, f"[{msg_type}]")
