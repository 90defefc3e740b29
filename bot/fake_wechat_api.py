"""A local fake of WeChat's outbound API (api.weixin.qq.com), faithful to its protocol.

Tests and ``jiefen chat`` point ``JIEFEN_WECHAT_API_BASE`` at it. It implements what Jiefen
calls, with WeChat's status codes, error codes and messages:

* ``POST /cgi-bin/stable_token`` — JSON ``{grant_type, appid, secret, force_refresh}``. Normal
  mode returns the current token while more than 5 minutes of it remain (the old token is then
  still accepted until it expires); ``force_refresh`` issues a new one and invalidates the old at
  once. ``GET /cgi-bin/token`` — the older endpoint, a new token on every call, isolated from the
  stable ones. Wrong appid → 40013, wrong secret → 40125, wrong grant_type → 40002.
* ``POST /cgi-bin/message/custom/send?access_token=`` — a customer-service message. Token missing
  → 41001, unknown or invalidated → 40001, malformed → 40014, expired → 42001; body not JSON →
  47001; no ``touser`` → 40003; unknown ``msgtype`` → 40008; empty text → 44004; text over 2048
  bytes of UTF-8 → 45002; a user outside the 48 h window or not following → 45015.
* ``POST /cgi-bin/message/template/send`` — records the message, answers ``msgid``; a user who
  does not follow → 43004; no template_id → 40037.
* ``GET /cgi-bin/media/get?access_token=&media_id=`` — the file with its ``Content-Type`` and
  ``Content-disposition: attachment; filename="..."``; for a video, JSON ``{"video_url": ...}``
  (served here under ``/fake-video/``); unknown id → 40007 "invalid media_id".

The application may be mounted as a sub-app under a prefix; paths given to
:meth:`FakeWeChatAPI.fail_next` and :meth:`FakeWeChatAPI.requests_to` are always WeChat's own
(``/cgi-bin/...``). Every API answer is HTTP 200, with JSON ``{"errcode", "errmsg"}`` on error,
as WeChat's are.
Faults are injected per path with :meth:`FakeWeChatAPI.fail_next` (an HTTP status, an errcode, or
a delay before answering). Not modelled: rate limits and quotas (e.g. 20 forced refreshes a day),
the 5-minute grace of ``/cgi-bin/token``'s previous token.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from config.settings import DEV_WECHAT_APPID, DEV_WECHAT_SECRET

TOKEN_PATH = "/cgi-bin/token"
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
CUSTOM_SEND_PATH = "/cgi-bin/message/custom/send"
TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"
MEDIA_GET_PATH = "/cgi-bin/media/get"

#: WeChat's limit on a customer-service text message, in bytes of UTF-8.
TEXT_LIMIT_BYTES = 2048
_TOKEN_PREFIX = "FAKE_AT_"
_STABLE_RENEW_MARGIN_S = 300  # WeChat hands out a new stable token in the last 5 minutes

_ERRMSG = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40037: "invalid template_id",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    43004: "require subscribe",
    44004: "empty content",
    45002: "content size out of limit",
    45015: "response out of time limit or subscription is canceled",
    47001: "data format error",
}
_MESSAGE_TYPES = {"text", "image", "voice", "video", "music", "news", "mpnews", "msgmenu", "wxcard"}


@dataclass
class IssuedToken:
    value: str
    expires_at: float
    stable: bool
    revoked: bool = False


@dataclass(frozen=True)
class SentMessage:
    """A customer-service message the fake accepted, in arrival order."""

    touser: str
    msgtype: str
    content: str | None
    body: dict[str, Any]
    #: The request body as received (to check, e.g., that Chinese text is sent as UTF-8).
    raw: bytes


@dataclass(frozen=True)
class SentTemplate:
    """A template message the fake accepted."""

    touser: str
    template_id: str
    data: dict[str, Any]
    url: str | None
    msgid: int


@dataclass(frozen=True)
class Media:
    content: bytes
    content_type: str
    filename: str


@dataclass(frozen=True)
class Fault:
    """One injected failure: answer ``status`` (with a text body), or ``errcode``, after
    ``delay`` seconds; with neither, only the delay, then the normal answer."""

    status: int | None = None
    errcode: int | None = None
    errmsg: str | None = None
    delay: float = 0.0


@dataclass
class _Counters:
    token_requests: int = 0
    tokens_issued: int = 0
    requests: dict[str, int] = field(default_factory=dict)


class FakeWeChatAPI:
    """The state of the fake WeChat API for one account, and its aiohttp application.

    ``clock`` (seconds, like :func:`time.time`) decides token expiry; ``token_ttl`` is the
    ``expires_in`` handed out (WeChat: 7200).
    """

    def __init__(
        self,
        appid: str = DEV_WECHAT_APPID,
        secret: str = DEV_WECHAT_SECRET,
        *,
        token_ttl: int = 7200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.appid = appid
        self.secret = secret
        self.token_ttl = token_ttl
        self.clock = clock
        #: The URL the fake is served at, set by :func:`start_fake_wechat_api` (informative).
        self.base_url = ""
        self.sent: list[SentMessage] = []
        self.templates: list[SentTemplate] = []
        self._tokens: dict[str, IssuedToken] = {}
        self._stable: IssuedToken | None = None
        self._media: dict[str, Media] = {}
        self._videos: dict[str, Media] = {}
        self._out_of_window: set[str] = set()
        self._unfollowed: set[str] = set()
        self._faults: dict[str, deque[Fault]] = {}
        self._counters = _Counters()
        self._next_msgid = 1_000_000_000 + secrets.randbelow(10**9)

    # -- what tests look at ------------------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """Calls to either token endpoint that were answered with a token."""
        return self._counters.token_requests

    @property
    def tokens_issued(self) -> int:
        """Distinct tokens minted (a normal-mode stable_token call may return an existing one)."""
        return self._counters.tokens_issued

    def requests_to(self, path: str) -> int:
        """How many requests reached ``path`` (faulted ones included)."""
        return self._counters.requests.get(path, 0)

    @property
    def current_token(self) -> str | None:
        """The stable token now handed out, if any."""
        return self._stable.value if self._stable else None

    # -- how tests set the scene -------------------------------------------------------------

    def add_media(
        self,
        media_id: str,
        content: bytes,
        content_type: str = "image/jpeg",
        filename: str | None = None,
    ) -> None:
        """Register a temporary media file; ``video/*`` types are served through a video_url."""
        extension = content_type.split("/")[-1].split(";")[0]
        media = Media(content, content_type, filename or f"{media_id}.{extension}")
        if content_type.startswith("video/"):
            self._videos[media_id] = media
        else:
            self._media[media_id] = media

    def out_of_window(self, *openids: str) -> None:
        """Customer-service messages to these users get 45015 (48 h window closed)."""
        self._out_of_window.update(openids)

    def unfollow(self, *openids: str) -> None:
        """These users stopped following: 45015 for customer-service, 43004 for templates."""
        self._unfollowed.update(openids)

    def fail_next(
        self,
        path: str,
        *,
        status: int | None = None,
        errcode: int | None = None,
        errmsg: str | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` requests to ``path`` fail as described by :class:`Fault`."""
        if status is not None and errcode is not None:
            raise ValueError("a fault is an HTTP status or an errcode, not both")
        queue = self._faults.setdefault(path, deque())
        queue.extend([Fault(status, errcode, errmsg, delay)] * times)

    def expire_tokens(self) -> None:
        """Every token issued so far is now past its expiry (→ 42001)."""
        past = self.clock() - 1
        for token in self._tokens.values():
            token.expires_at = min(token.expires_at, past)

    def revoke_token(self, token: str | None = None) -> None:
        """Invalidate ``token`` (default: the current stable token) as if another party had
        force-refreshed (→ 40001)."""
        value = token or self.current_token
        if value is not None and value in self._tokens:
            self._tokens[value].revoked = True
            if self._stable is not None and self._stable.value == value:
                self._stable = None

    # -- the application ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application serving this fake."""
        app = web.Application(middlewares=[self._faults_middleware])
        app[FAKE_WECHAT_API] = self
        app.router.add_post(STABLE_TOKEN_PATH, self._stable_token)
        app.router.add_get(TOKEN_PATH, self._token)
        app.router.add_post(CUSTOM_SEND_PATH, self._custom_send)
        app.router.add_post(TEMPLATE_SEND_PATH, self._template_send)
        app.router.add_get(MEDIA_GET_PATH, self._media_get)
        app.router.add_get("/fake-video/{media_id}", self._video_download)
        return app

    @web.middleware
    async def _faults_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = _api_path(request.path)
        self._counters.requests[path] = self._counters.requests.get(path, 0) + 1
        queue = self._faults.get(path)
        fault = queue.popleft() if queue else None
        if fault is None:
            return await handler(request)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            return web.Response(status=fault.status, text=f"fault injected: {fault.status}")
        if fault.errcode is not None:
            return _error(fault.errcode, fault.errmsg)
        return await handler(request)

    def _mint(self, *, stable: bool) -> IssuedToken:
        token = IssuedToken(
            _TOKEN_PREFIX + secrets.token_urlsafe(48), self.clock() + self.token_ttl, stable
        )
        self._tokens[token.value] = token
        self._counters.tokens_issued += 1
        return token

    def _credentials_error(self, grant_type: object, appid: object, secret: object) -> int | None:
        if grant_type != "client_credential":
            return 40002
        if appid != self.appid:
            return 40013
        if not isinstance(secret, str) or not secrets.compare_digest(
            secret.encode(), self.secret.encode()
        ):
            return 40125
        return None

    def _token_answer(self, token: IssuedToken) -> web.Response:
        self._counters.token_requests += 1
        expires_in = max(int(token.expires_at - self.clock()), 0)
        return web.json_response({"access_token": token.value, "expires_in": expires_in})

    async def _stable_token(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None:
            return _error(47001)
        force = body.get("force_refresh", False)
        if not isinstance(force, bool):
            return _error(47001)
        failed = self._credentials_error(
            body.get("grant_type"), body.get("appid"), body.get("secret")
        )
        if failed is not None:
            return _error(failed)
        current = self._stable
        if force and current is not None:
            current.revoked = True
        fresh_enough = (
            current is not None
            and not current.revoked
            and current.expires_at - self.clock() > _STABLE_RENEW_MARGIN_S
        )
        if not fresh_enough:
            current = self._stable = self._mint(stable=True)
        assert current is not None
        return self._token_answer(current)

    async def _token(self, request: web.Request) -> web.Response:
        query = request.query
        failed = self._credentials_error(
            query.get("grant_type"), query.get("appid"), query.get("secret")
        )
        if failed is not None:
            return _error(failed)
        return self._token_answer(self._mint(stable=False))

    def _token_error(self, request: web.Request) -> int | None:
        value = request.query.get("access_token")
        if not value:
            return 41001
        token = self._tokens.get(value)
        if token is None:
            return 40001 if value.startswith(_TOKEN_PREFIX) else 40014
        if token.revoked:
            return 40001
        if token.expires_at <= self.clock():
            return 42001
        return None

    async def _custom_send(self, request: web.Request) -> web.Response:
        failed = self._token_error(request)
        if failed is not None:
            return _error(failed)
        raw = await request.read()
        body = _parse_json(raw)
        if body is None:
            return _error(47001)
        touser = body.get("touser")
        msgtype = body.get("msgtype")
        if not isinstance(touser, str) or not touser:
            return _error(40003)
        if msgtype not in _MESSAGE_TYPES or not isinstance(body.get(msgtype), dict):
            return _error(40008)
        content: str | None = None
        if msgtype == "text":
            content = body["text"].get("content")
            if not isinstance(content, str) or not content:
                return _error(44004)
            if len(content.encode()) > TEXT_LIMIT_BYTES:
                return _error(45002)
        if touser in self._out_of_window or touser in self._unfollowed:
            return _error(45015)
        self.sent.append(SentMessage(touser, msgtype, content, body, raw))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _template_send(self, request: web.Request) -> web.Response:
        failed = self._token_error(request)
        if failed is not None:
            return _error(failed)
        body = await _json_body(request)
        if body is None:
            return _error(47001)
        touser, template_id, data = body.get("touser"), body.get("template_id"), body.get("data")
        if not isinstance(touser, str) or not touser:
            return _error(40003)
        if not isinstance(template_id, str) or not template_id:
            return _error(40037)
        if not isinstance(data, dict):
            return _error(47001)
        if touser in self._unfollowed:
            return _error(43004)
        self._next_msgid += 1
        url = body.get("url")
        self.templates.append(
            SentTemplate(
                touser, template_id, data, url if isinstance(url, str) else None, self._next_msgid
            )
        )
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": self._next_msgid})

    async def _media_get(self, request: web.Request) -> web.StreamResponse:
        failed = self._token_error(request)
        if failed is not None:
            return _error(failed)
        media_id = request.query.get("media_id", "")
        if media_id in self._videos:
            # Built from the request, so that it also holds when the fake is mounted as a sub-app.
            video_path = request.path.replace(MEDIA_GET_PATH, f"/fake-video/{media_id}")
            video_url = request.url.with_path(video_path).with_query(None)
            return web.json_response({"video_url": str(video_url)})
        media = self._media.get(media_id)
        if media is None:
            return _error(40007)
        return _file_response(media)

    async def _video_download(self, request: web.Request) -> web.StreamResponse:
        media = self._videos.get(request.match_info["media_id"])
        if media is None:
            raise web.HTTPNotFound()
        return _file_response(media)


FAKE_WECHAT_API = web.AppKey("fake_wechat_api", FakeWeChatAPI)


def _api_path(path: str) -> str:
    """``path`` without the prefix the fake may be mounted under (e.g. ``/dev/wechat-api``)."""
    for root in ("/cgi-bin/", "/fake-video/"):
        found = path.rfind(root)
        if found > 0:
            return path[found:]
    return path


def _error(errcode: int, errmsg: str | None = None) -> web.Response:
    message = errmsg or _ERRMSG.get(errcode, "error")
    # WeChat appends a request id to every error message.
    rid = f"rid: {secrets.token_hex(4)}-{secrets.token_hex(4)}"
    return web.json_response({"errcode": errcode, "errmsg": f"{message} {rid}"})


def _parse_json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    return _parse_json(await request.read())


def _file_response(media: Media) -> web.Response:
    return web.Response(
        body=media.content,
        headers={
            "Content-Type": media.content_type,
            "Content-disposition": f'attachment; filename="{media.filename}"',
            "Cache-Control": "no-cache, must-revalidate",
        },
    )


async def start_fake_wechat_api(
    fake: FakeWeChatAPI | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[FakeWeChatAPI, str, web.AppRunner]:
    """Serve ``fake`` (a new one by default) on ``host``:``port`` (0: a free port).

    Returns the fake, its base URL (``http://host:port``, to use as the API base) and the runner;
    ``await runner.cleanup()`` stops it.
    """
    fake = fake or FakeWeChatAPI()
    runner = web.AppRunner(fake.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    fake.base_url = f"http://{bound_host}:{bound_port}"
    return fake, fake.base_url, runner


@asynccontextmanager
async def running_fake_wechat_api(
    fake: FakeWeChatAPI | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[FakeWeChatAPI, str]]:
    """``async with running_fake_wechat_api() as (fake, base_url):`` — served for the block."""
    fake, base_url, runner = await start_fake_wechat_api(fake, host=host, port=port)
    try:
        yield fake, base_url
    finally:
        await runner.cleanup()
