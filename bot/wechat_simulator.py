"""A simulator of WeChat's servers pushing to an Official Account's webhook.

Written from WeChat's published protocol, deliberately without wechatpy, so that it checks our
wechatpy-based webhook independently (tests prove it against wechatpy as a second
implementation). What it reproduces:

* **Signatures.** Every push carries ``signature = sha1(''.join(sorted([token, timestamp,
  nonce])))`` in its query string; in the AES modes also ``encrypt_type=aes`` and
  ``msg_signature = sha1(''.join(sorted([token, timestamp, nonce, Encrypt])))``. WeChat also sends
  ``openid`` (the sender). The GET URL check adds ``echostr``, which the account must echo.
* **Encryption.** key = ``b64decode(EncodingAESKey + "=")`` (32 bytes), AES-256-CBC with
  iv = ``key[:16]``; plaintext = 16 random bytes + 4-byte big-endian length of the XML + XML +
  appid, PKCS#7-padded to a multiple of **32** bytes (not AES's 16); the result is base64.
* **Modes.** ``plain``: the XML alone. ``compat`` (兼容模式): the plaintext fields *and* an
  ``Encrypt`` element; the account may answer in plaintext or ciphertext. ``safe`` (安全模式):
  only ``ToUserName`` and ``Encrypt``; the answer must be encrypted as
  ``<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>``.
* **Messages.** text, image, voice (``Recognition`` when speech recognition is on), video,
  shortvideo, location, link; events subscribe (plain or by QR scene), unsubscribe, CLICK, VIEW.
  An Official Account's user cannot send a *file* message (that type exists in WeCom only), so
  there is no builder for one; :meth:`WeChatSimulator.raw_message` builds any other type.
  Messages carry a 64-bit ``MsgId``; events carry none.
* **Retries.** WeChat waits 5 s for an answer, drops the connection and sends the *same* push
  again, three attempts in all; ``success`` or an empty body means "no reply".

Sources: the Official Account docs "接收普通消息", "接收事件推送", "消息加解密说明" (mirrored on
w3cschool and 51cto), and WeChat's reference ``WXBizMsgCrypt`` sample described there.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import itertools
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from bot.wechat_cipher import CryptoMode, MessageCipher, sign
from bot.wechat_reply import (
    Article,
    InvalidReply,
    NoReply,
    Reply,
    parse_reply_xml,
    reply_from_xml,
    required_text,
)

#: The simulator is the one module tests and tools import; it re-exports what they need.
__all__ = [
    "Article",
    "CryptoMode",
    "Delivery",
    "InvalidReply",
    "MessageCipher",
    "NoReply",
    "Push",
    "Reply",
    "VerificationRequest",
    "WeChatSimulator",
    "sign",
]


@dataclass(frozen=True)
class Push:
    """One HTTP POST as WeChat sends it: query ``params`` and ``body``, and what it carries."""

    params: dict[str, str]
    body: bytes
    msg_id: int | None
    #: The message XML before encryption (the body itself in plaintext mode).
    xml: bytes
    openid: str
    msg_type: str
    create_time: int
    event: str | None = None

    @property
    def timestamp(self) -> str:
        return self.params["timestamp"]

    @property
    def nonce(self) -> str:
        return self.params["nonce"]


@dataclass(frozen=True)
class VerificationRequest:
    """WeChat's GET URL check: the account must answer ``echostr`` verbatim."""

    params: dict[str, str]
    echostr: str


@dataclass(frozen=True)
class Delivery:
    """What :meth:`WeChatSimulator.deliver` saw: the reply (``None`` if none came), attempts."""

    reply: Reply | NoReply | None
    attempts: int
    #: HTTP status of the last answer; ``None`` when every attempt timed out or failed to connect.
    status: int | None
    elapsed: float = field(default=0.0, compare=False)


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside CDATA: close the section between "]]" and ">".
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _element(name: str, value: str | int | float) -> str:
    text = _cdata(value) if isinstance(value, str) else str(value)
    return f"<{name}>{text}</{name}>"


class WeChatSimulator:
    """Builds the pushes WeChat would send for one account, and judges the account's replies.

    ``token``, ``appid`` and ``aes_key`` (the 43-character EncodingAESKey; may be empty in
    ``plain`` mode) are the account's settings; ``account_id`` is its original id (``gh_...``),
    used as ``ToUserName``. ``clock`` gives ``CreateTime`` and the default ``timestamp``; every
    builder also takes an explicit ``timestamp`` (e.g. a stale one). ``MsgId`` values increase
    from a random 63-bit start, so two simulators sharing a Redis server do not collide.
    """

    def __init__(
        self,
        token: str,
        appid: str,
        aes_key: str,
        mode: CryptoMode | str = CryptoMode.SAFE,
        account_id: str = "gh_jiefen",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.appid = appid
        self.mode = CryptoMode(mode)
        self.account_id = account_id
        self.clock = clock
        if self.mode is not CryptoMode.PLAIN and not aes_key:
            raise ValueError(f"{self.mode} mode needs an EncodingAESKey")
        self._cipher = MessageCipher(aes_key) if aes_key else None
        self._msg_ids = itertools.count(2**62 + secrets.randbelow(2**61))

    @property
    def cipher(self) -> MessageCipher:
        if self._cipher is None:
            raise ValueError("this simulator has no EncodingAESKey")
        return self._cipher

    # -- pushes ------------------------------------------------------------------------------

    def _next_msg_id(self) -> int:
        return next(self._msg_ids)

    def _params(
        self, timestamp: str, nonce: str, openid: str, encrypt: str | None
    ) -> dict[str, str]:
        params = {
            "signature": sign(self.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": openid,
        }
        if self.mode is not CryptoMode.PLAIN:
            assert encrypt is not None
            params["encrypt_type"] = "aes"
            params["msg_signature"] = sign(self.token, timestamp, nonce, encrypt)
        return params

    def _wrap(
        self,
        xml: bytes,
        *,
        openid: str,
        timestamp: int | None,
        appid: str | None = None,
        encrypt: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Query parameters and body carrying the message ``xml`` in this simulator's mode.

        ``appid`` encrypts for another account; ``encrypt`` replaces the ciphertext outright.
        """
        stamp = str(int(self.clock()) if timestamp is None else timestamp)
        nonce = str(secrets.randbelow(9 * 10**9) + 10**9)
        if self.mode is CryptoMode.PLAIN:
            return self._params(stamp, nonce, openid, None), xml
        if encrypt is None:
            encrypt = self.cipher.encrypt(xml, appid or self.appid)
        encrypted = _element("Encrypt", encrypt).encode()
        if self.mode is CryptoMode.COMPAT:  # the plaintext fields, then the ciphertext
            cut = xml.rindex(b"</xml>")
            body = xml[:cut] + encrypted + xml[cut:]
        else:
            body = b"<xml>" + _element("ToUserName", self.account_id).encode() + encrypted
            body += b"</xml>"
        return self._params(stamp, nonce, openid, encrypt), body

    def _message(
        self,
        openid: str,
        msg_type: str,
        fields: list[tuple[str, str | int | float]],
        *,
        msg_id: int | None,
        timestamp: int | None,
        event: str | None = None,
        appid: str | None = None,
        encrypt: str | None = None,
    ) -> Push:
        create_time = int(self.clock())
        elements = [
            _element("ToUserName", self.account_id),
            _element("FromUserName", openid),
            _element("CreateTime", create_time),
            _element("MsgType", msg_type),
        ] + [_element(name, value) for name, value in fields]
        if event is None:
            msg_id = self._next_msg_id() if msg_id is None else msg_id
            elements.append(_element("MsgId", msg_id))
        xml = ("<xml>" + "".join(elements) + "</xml>").encode()
        params, body = self._wrap(
            xml, openid=openid, timestamp=timestamp, appid=appid, encrypt=encrypt
        )
        return Push(params, body, msg_id, xml, openid, msg_type, create_time, event)

    def text(
        self, openid: str, content: str, msg_id: int | None = None, *, timestamp: int | None = None
    ) -> Push:
        """A text message (``MsgType`` text, ``Content``)."""
        return self._message(
            openid, "text", [("Content", content)], msg_id=msg_id, timestamp=timestamp
        )

    def image(
        self,
        openid: str,
        media_id: str,
        pic_url: str = "http://mmbiz.qpic.cn/mmbiz_jpg/jiefen/0",
        msg_id: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """An image message (``PicUrl``, ``MediaId``)."""
        fields: list[tuple[str, str | int | float]] = [("PicUrl", pic_url), ("MediaId", media_id)]
        return self._message(openid, "image", fields, msg_id=msg_id, timestamp=timestamp)

    def voice(
        self,
        openid: str,
        media_id: str,
        recognition: str | None = None,
        msg_id: int | None = None,
        *,
        audio_format: str = "amr",
        timestamp: int | None = None,
    ) -> Push:
        """A voice message; ``Recognition`` is present only when speech recognition gave text."""
        fields: list[tuple[str, str | int | float]] = [
            ("MediaId", media_id),
            ("Format", audio_format),
        ]
        if recognition is not None:
            fields.append(("Recognition", recognition))
        return self._message(openid, "voice", fields, msg_id=msg_id, timestamp=timestamp)

    def video(
        self,
        openid: str,
        media_id: str,
        thumb_media_id: str = "thumb",
        msg_id: int | None = None,
        *,
        short: bool = False,
        timestamp: int | None = None,
    ) -> Push:
        """A video (or, with ``short``, a ``shortvideo``) message."""
        fields: list[tuple[str, str | int | float]] = [
            ("MediaId", media_id),
            ("ThumbMediaId", thumb_media_id),
        ]
        kind = "shortvideo" if short else "video"
        return self._message(openid, kind, fields, msg_id=msg_id, timestamp=timestamp)

    def shortvideo(
        self,
        openid: str,
        media_id: str,
        thumb_media_id: str = "thumb",
        msg_id: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """A short-video message."""
        return self.video(openid, media_id, thumb_media_id, msg_id, short=True, timestamp=timestamp)

    def location(
        self,
        openid: str,
        lat: float,
        lng: float,
        label: str,
        scale: int = 15,
        msg_id: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """A location message: ``Location_X`` is the latitude, ``Location_Y`` the longitude."""
        fields: list[tuple[str, str | int | float]] = [
            ("Location_X", lat),
            ("Location_Y", lng),
            ("Scale", scale),
            ("Label", label),
        ]
        return self._message(openid, "location", fields, msg_id=msg_id, timestamp=timestamp)

    def link(
        self,
        openid: str,
        title: str,
        description: str,
        url: str,
        msg_id: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """A link message (``Title``, ``Description``, ``Url``)."""
        fields: list[tuple[str, str | int | float]] = [
            ("Title", title),
            ("Description", description),
            ("Url", url),
        ]
        return self._message(openid, "link", fields, msg_id=msg_id, timestamp=timestamp)

    def raw_message(
        self,
        openid: str,
        msg_type: str,
        fields: Mapping[str, str | int | float],
        msg_id: int | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """Any other message type (e.g. one our webhook does not know), fields in order."""
        return self._message(
            openid, msg_type, list(fields.items()), msg_id=msg_id, timestamp=timestamp
        )

    def event(
        self,
        openid: str,
        event: str,
        fields: Mapping[str, str | int | float] | None = None,
        *,
        timestamp: int | None = None,
    ) -> Push:
        """An event push (``MsgType`` event, ``Event``, then ``fields``); events have no MsgId."""
        items: list[tuple[str, str | int | float]] = [("Event", event)]
        items += list((fields or {}).items())
        return self._message(openid, "event", items, msg_id=None, timestamp=timestamp, event=event)

    def subscribe(
        self, openid: str, scene: str | None = None, *, timestamp: int | None = None
    ) -> Push:
        """A follow; with ``scene``, a follow by scanning a parametric QR code."""
        if scene is None:
            return self.event(openid, "subscribe", timestamp=timestamp)
        fields = {"EventKey": f"qrscene_{scene}", "Ticket": secrets.token_urlsafe(24)}
        return self.event(openid, "subscribe", fields, timestamp=timestamp)

    def unsubscribe(self, openid: str, *, timestamp: int | None = None) -> Push:
        """An unfollow. The account's answer to it is never shown to anyone."""
        return self.event(openid, "unsubscribe", timestamp=timestamp)

    def click(self, openid: str, key: str, *, timestamp: int | None = None) -> Push:
        """A tap on a custom-menu ``click`` button (``Event`` CLICK, ``EventKey`` the key)."""
        return self.event(openid, "CLICK", {"EventKey": key}, timestamp=timestamp)

    def view(self, openid: str, url: str, *, timestamp: int | None = None) -> Push:
        """A tap on a custom-menu ``view`` button (``Event`` VIEW, ``EventKey`` the URL)."""
        return self.event(openid, "VIEW", {"EventKey": url}, timestamp=timestamp)

    def verification_request(self, echostr: str | None = None) -> VerificationRequest:
        """The GET WeChat sends when the URL is configured; ``echostr`` is plain in every mode."""
        echostr = echostr or str(secrets.randbelow(10**19))
        stamp = str(int(self.clock()))
        nonce = str(secrets.randbelow(9 * 10**9) + 10**9)
        params = {
            "signature": sign(self.token, stamp, nonce),
            "echostr": echostr,
            "timestamp": stamp,
            "nonce": nonce,
        }
        return VerificationRequest(params, echostr)

    # -- hostile pushes ----------------------------------------------------------------------

    def with_forged_signature(self, push: Push) -> Push:
        """``push`` with ``signature`` (and ``msg_signature``) replaced by wrong values."""
        params = dict(push.params)
        for name in ("signature", "msg_signature"):
            if name in params:
                params[name] = hashlib.sha1(secrets.token_bytes(16)).hexdigest()
        return dataclasses.replace(push, params=params)

    def wrong_appid(self, openid: str, content: str = "你好") -> Push:
        """A text push, correctly signed, whose ciphertext names another appid."""
        self._require_aes("wrong_appid")
        return self._message(
            openid,
            "text",
            [("Content", content)],
            msg_id=None,
            timestamp=None,
            appid="wx" + secrets.token_hex(8),
        )

    def garbage_ciphertext(self, openid: str, kind: str = "random") -> Push:
        """A correctly signed push whose ``Encrypt`` cannot be decrypted.

        ``kind``: ``random`` (random whole AES blocks), ``not_base64``, ``truncated`` (a real
        ciphertext cut mid-block), ``empty``.
        """
        self._require_aes("garbage_ciphertext")
        if kind == "random":
            encrypt = base64.b64encode(os.urandom(96)).decode()
        elif kind == "not_base64":
            encrypt = "%%% this is not base64 %%%"
        elif kind == "truncated":
            encrypt = self.cipher.encrypt(b"<xml></xml>", self.appid)[:-12]
        elif kind == "empty":
            encrypt = ""
        else:
            raise ValueError(f"unknown garbage kind {kind!r}")
        return self._message(
            openid, "text", [("Content", "?")], msg_id=None, timestamp=None, encrypt=encrypt
        )

    def xxe(self, openid: str, target: str = "file:///etc/passwd") -> Push:
        """A text push whose XML declares an external entity (XXE): the body in plain mode, inside
        the ciphertext in AES modes, and in compat mode in the plaintext part as well."""
        dtd = f'<!DOCTYPE xml [<!ENTITY xxe SYSTEM "{target}">]>'
        return self._hostile(openid, dtd, "&xxe;")

    def billion_laughs(self, openid: str, depth: int = 10) -> Push:
        """A text push whose XML expands to 10**``depth`` copies of "lol" if entities are
        expanded (placed as :meth:`xxe` places its payload)."""
        entities = ['<!ENTITY lol0 "lol">'] + [
            f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, depth)
        ]
        dtd = "<!DOCTYPE xml [" + "".join(entities) + "]>"
        return self._hostile(openid, dtd, f"&lol{depth - 1};")

    def _hostile(self, openid: str, dtd: str, content: str) -> Push:
        create_time = int(self.clock())
        msg_id = self._next_msg_id()
        inner = (
            "<xml>"
            + _element("ToUserName", self.account_id)
            + _element("FromUserName", openid)
            + _element("CreateTime", create_time)
            + _element("MsgType", "text")
            + f"<Content>{content}</Content>"
            + _element("MsgId", msg_id)
            + "</xml>"
        )
        xml = f'<?xml version="1.0"?>{dtd}{inner}'.encode()
        params, body = self._wrap(xml, openid=openid, timestamp=None)
        return Push(params, body, msg_id, xml, openid, "text", create_time)

    def _require_aes(self, what: str) -> None:
        if self.mode is CryptoMode.PLAIN:
            raise ValueError(f"{what} needs an AES mode (compat or safe), not plain")

    # -- replies -----------------------------------------------------------------------------

    def parse_reply(self, response_body: bytes, params: Mapping[str, str]) -> Reply | NoReply:
        """Judge the webhook's answer to the push sent with ``params`` as WeChat would.

        ``success`` or an empty body gives :class:`NoReply`. An encrypted reply must carry a
        valid ``MsgSignature``, decrypt, and name our appid; safe mode refuses plaintext replies,
        plain mode refuses encrypted ones, compat mode takes either. The reply must go to the
        sender (``openid``) from the account. Anything else raises :class:`InvalidReply`.
        """
        stripped = response_body.strip()
        if stripped in (b"", b"success"):
            return NoReply(stripped.decode())
        root = parse_reply_xml(response_body)
        encrypt = root.findtext("Encrypt")
        if encrypt is None:
            if self.mode is CryptoMode.SAFE:
                raise InvalidReply("safe mode needs an encrypted reply")
            reply = reply_from_xml(root, encrypted=False, xml=response_body)
        else:
            if self.mode is CryptoMode.PLAIN:
                raise InvalidReply("encrypted reply to a plaintext-mode push")
            expected = sign(
                self.token,
                required_text(root, "TimeStamp"),
                required_text(root, "Nonce"),
                encrypt,
            )
            if not secrets.compare_digest(expected, required_text(root, "MsgSignature")):
                raise InvalidReply("reply MsgSignature does not match")
            try:
                xml, appid = self.cipher.decrypt(encrypt)
            except ValueError as error:
                raise InvalidReply(f"reply does not decrypt: {error}") from error
            if appid != self.appid:
                raise InvalidReply(f"reply is encrypted for appid {appid!r}")
            reply = reply_from_xml(parse_reply_xml(xml), encrypted=True, xml=xml)
        openid = params.get("openid")
        if openid is not None and reply.to_user != openid:
            raise InvalidReply(f"reply goes to {reply.to_user!r}, not the sender {openid!r}")
        if reply.from_user != self.account_id:
            raise InvalidReply(f"reply comes from {reply.from_user!r}, not {self.account_id!r}")
        return reply

    async def deliver(
        self,
        session: aiohttp.ClientSession,
        url: str,
        push: Push,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - WeChat's wait per attempt, not an overall limit
        retries: int = 3,
    ) -> Delivery:
        """POST ``push`` to ``url`` as WeChat does and judge the answer.

        Each attempt waits ``timeout`` seconds; on a timeout or a connection error the very same
        push (same query, body and MsgId) is sent again, ``retries`` attempts in all (WeChat
        makes three). An answer with a status other than 200 ends the delivery without a reply
        (WeChat shows the user "该公众号暂时无法提供服务"). Raises :class:`InvalidReply` for a
        200 answer WeChat would refuse.
        """
        started = time.monotonic()
        for attempt in range(1, retries + 1):
            try:
                async with (
                    asyncio.timeout(timeout),
                    session.post(
                        url,
                        params=push.params,
                        data=push.body,
                        headers={"Content-Type": "text/xml"},
                    ) as response,
                ):
                    status = response.status
                    body = await response.read()
            except (TimeoutError, aiohttp.ClientConnectionError):
                continue
            elapsed = time.monotonic() - started
            if status != 200:
                return Delivery(None, attempt, status, elapsed)
            return Delivery(self.parse_reply(body, push.params), attempt, status, elapsed)
        return Delivery(None, retries, None, time.monotonic() - started)
