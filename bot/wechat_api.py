"""Our asyncio client for WeChat's outbound API: access token, customer-service and template
messages, media download.

wechatpy's client is synchronous, has no timeout on token fetches, retries 40001 without bound
and hard-codes the token URL (DESIGN.md), hence this one. Its rules:

* **One token for every process.** The access token lives in Redis under
  ``{key_prefix}wechat:token:{appid}`` for ``expires_in`` − 300 s. On a miss one process refreshes
  it through ``/cgi-bin/stable_token`` while holding a Redis lock (``SET NX PX`` with a random
  value, released by a compare-and-delete script); the others poll the cache instead of all asking
  WeChat. A holder that dies loses the lock when its ``PX`` runs out.
* **A rejected token is replaced once.** errcode 40001, 40014 or 42001: the cached token is
  dropped (only if it is still the rejected one, so a token another process already renewed
  survives), a new one is fetched — in normal mode first, and with ``force_refresh`` only when
  WeChat hands back the very token it rejected, since forced refreshes are limited to 20 a day
  and invalidate the token for every other holder — and the call is retried once.
* **Bounded retries for transient failures.** Connection errors, timeouts, HTTP 5xx/429, an
  unreadable answer and errcode -1 (system busy) are retried with exponential backoff and jitter,
  ``max_attempts`` attempts in all, then :class:`~jiefen.errors.UpstreamError` (errcode -1:
  :class:`~jiefen.errors.WeChatAPIError`). Every other errcode (45015 included) raises
  :class:`~jiefen.errors.WeChatAPIError` at once. A customer-service send that timed out after
  WeChat received it may therefore be delivered twice: WeChat offers no idempotency key.
* **Secrets stay secret.** The AppSecret and the access token are never logged, and never put in
  an exception message (aiohttp's errors may carry the URL, whose query holds the token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis

from jiefen.errors import LockTimeout, UpstreamError, WeChatAPIError

logger = logging.getLogger(__name__)

T = TypeVar("T")

STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
CUSTOM_SEND_PATH = "/cgi-bin/message/custom/send"
TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"
MEDIA_GET_PATH = "/cgi-bin/media/get"

#: errcodes that mean "this access token is no good": invalid credential, invalid token, expired.
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
#: errcode -1: "system error, try again later".
SYSTEM_BUSY = -1
#: WeChat's limit on one customer-service text message, in bytes of UTF-8 (errcode 45002).
TEXT_LIMIT_BYTES = 2048
#: Seconds cut from ``expires_in`` before the cached token is dropped: WeChat renews a stable
#: token in its last 5 minutes, and a token must not expire between the cache and the call.
TOKEN_MARGIN_S = 300
_JSON_LIMIT_BYTES = 1024 * 1024
_LOCK_POLL_S = 0.05
_JSON_TYPES = frozenset({"application/json", "text/json", "text/plain"})

# Delete KEYS[1] only if it still holds ARGV[1]: the lock's owner, or the token we saw rejected.
_COMPARE_AND_DELETE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""
_SECRET_IN_QUERY = re.compile(r"(access_token|secret)=[^&\s'\"]*")


@dataclass(frozen=True)
class DownloadedMedia:
    """A temporary media file fetched from WeChat. ``filename`` is WeChat's, reduced to a base
    name (no directories, no control characters); ``None`` when WeChat gave none."""

    content: bytes
    content_type: str
    filename: str | None


class MediaTooLarge(UpstreamError):
    """The media is larger than the caller's ``max_bytes``. Permanent: do not retry."""

    def __init__(self, media_id: str, limit: int) -> None:
        super().__init__(f"media {media_id!r} is larger than {limit} bytes")
        self.media_id = media_id
        self.limit = limit


class _Transient(Exception):
    """A failure worth another attempt (never leaves this module)."""


def split_text(text: str, limit_bytes: int = TEXT_LIMIT_BYTES) -> list[str]:
    """Split ``text`` into messages of at most ``limit_bytes`` bytes of UTF-8.

    Cuts fall on a character (code point) boundary, never inside a UTF-8 sequence; a line break in
    the second half of a chunk is preferred, and is dropped at the cut. Nothing is truncated: the
    parts joined with the dropped line breaks give ``text`` back. ``ValueError`` for empty text.
    """
    if not text:
        raise ValueError("cannot send an empty text message")
    parts: list[str] = []
    rest = text
    while len(rest.encode()) > limit_bytes:
        # Decoding a byte-cut prefix with errors="ignore" drops only the split last character.
        chunk = rest.encode()[:limit_bytes].decode("utf-8", errors="ignore")
        newline = chunk.rfind("\n")
        if newline >= len(chunk) // 2:
            parts.append(chunk[:newline])
            rest = rest[newline + 1 :]
        else:
            parts.append(chunk)
            rest = rest[len(chunk) :]
    if rest:
        parts.append(rest)
    return parts


def _redact(text: str) -> str:
    return _SECRET_IN_QUERY.sub(r"\1=***", text)


def _describe(error: BaseException) -> str:
    detail = _redact(str(error))
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _as_text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _safe_filename(name: str | None) -> str | None:
    if not name:
        return None
    base = posixpath.basename(name.replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable())
    return base if base not in ("", ".", "..") else None


def _errcode_of(payload: dict[str, Any]) -> None:
    errcode = payload.get("errcode", 0)
    if isinstance(errcode, int) and errcode != 0:
        raise WeChatAPIError(errcode, str(payload.get("errmsg", "")))


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class WeChatAPIClient:
    """WeChat's outbound API for one account, shared safely by many tasks and processes.

    ``session`` and ``redis`` belong to the caller (not closed here). ``api_base`` is e.g.
    ``https://api.weixin.qq.com`` or the fake's URL. ``request_timeout`` bounds every request
    (for a media download, the connect and each read; ``download_timeout`` the whole);
    ``max_attempts`` bounds the attempts at one call; ``backoff_base``/``backoff_cap`` (seconds)
    shape the wait between them.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        *,
        api_base: str,
        appid: str,
        secret: str,
        key_prefix: str,
        request_timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 2.0,
        download_timeout: float = 60.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._redis = redis
        self._api_base = api_base.rstrip("/")
        self.appid = appid
        self._secret = secret
        self._token_key = f"{key_prefix}wechat:token:{appid}"
        self._lock_key = f"{key_prefix}wechat:token-lock:{appid}"
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.download_timeout = download_timeout
        self._compare_and_delete = redis.register_script(_COMPARE_AND_DELETE)
        # A holder makes at most two token fetches of max_attempts attempts each.
        per_fetch = max_attempts * (request_timeout + backoff_cap)
        self._lock_ttl_ms = int((2 * per_fetch + 1.0) * 1000)

    def __repr__(self) -> str:  # never show the secret
        return f"WeChatAPIClient(api_base={self._api_base!r}, appid={self.appid!r})"

    # -- the access token ---------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token: the cached one, or one fetched once for all processes.

        Raises :class:`~jiefen.errors.WeChatAPIError` (e.g. 40125 wrong secret),
        :class:`~jiefen.errors.UpstreamError`, or :class:`~jiefen.errors.LockTimeout` when
        another process holds the refresh lock and no token appears in time.
        """
        return await self._obtain_token(rejected=None)

    async def invalidate_token(self, token: str) -> None:
        """Drop ``token`` from the cache, unless another process has already replaced it."""
        await self._compare_and_delete(keys=[self._token_key], args=[token])

    async def _cached_token(self) -> str | None:
        return _as_text(await self._redis.get(self._token_key))

    async def _obtain_token(self, *, rejected: str | None) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_ttl_ms / 1000 + self.request_timeout
        while True:
            cached = await self._cached_token()
            if cached is not None and cached != rejected:
                return cached
            owner = secrets.token_hex(16)
            if await self._redis.set(self._lock_key, owner, nx=True, px=self._lock_ttl_ms):
                try:
                    return await self._refresh_token(rejected)
                finally:
                    await self._compare_and_delete(keys=[self._lock_key], args=[owner])
            if loop.time() > deadline:
                raise LockTimeout("timed out waiting for another process to refresh the token")
            await asyncio.sleep(_LOCK_POLL_S)

    async def _refresh_token(self, rejected: str | None) -> str:
        # Under the lock: another holder may have refreshed between our look and our lock.
        cached = await self._cached_token()
        if cached is not None and cached != rejected:
            return cached
        token, expires_in = await self._fetch_token(force_refresh=False)
        if rejected is not None and token == rejected:
            token, expires_in = await self._fetch_token(force_refresh=True)
        if expires_in > TOKEN_MARGIN_S:
            ttl = expires_in - TOKEN_MARGIN_S
        else:  # WeChat promises at least 300 s; keep a short-lived token for half its life
            ttl = max(expires_in // 2, 1)
        await self._redis.set(self._token_key, token, ex=ttl)
        logger.info(
            "wechat access token refreshed for %s (expires_in=%ss, cached %ss)",
            self.appid,
            expires_in,
            ttl,
        )
        return token

    async def _fetch_token(self, *, force_refresh: bool) -> tuple[str, int]:
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self._secret,
            "force_refresh": force_refresh,
        }
        payload = await self._retrying(
            STABLE_TOKEN_PATH, partial(self._request_json, STABLE_TOKEN_PATH, None, body)
        )
        token, expires_in = payload.get("access_token"), payload.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise UpstreamError("WeChat stable_token answered without a usable access_token")
        return token, expires_in

    # -- messages ----------------------------------------------------------------------------

    async def send_text(self, openid: str, text: str) -> int:
        """Send ``text`` to ``openid`` as customer-service message(s); returns how many.

        Text over WeChat's 2048-byte limit is *split* (see :func:`split_text`), not truncated:
        the parts go out in order, each awaited before the next; if one fails the rest are not
        sent and the error is raised. 45015 (the 48 h window is closed or the user unfollowed)
        raises :class:`~jiefen.errors.WeChatAPIError` without retry.
        """
        parts = split_text(text)
        for part in parts:
            body = {"touser": openid, "msgtype": "text", "text": {"content": part}}
            await self._authorized(CUSTOM_SEND_PATH, partial(self._post_with_token, body))
        return len(parts)

    async def send_template(
        self,
        openid: str,
        template_id: str,
        data: Mapping[str, str | Mapping[str, str]],
        url: str | None = None,
    ) -> int:
        """Send a template message; returns WeChat's ``msgid``.

        ``data`` maps each template keyword to its value, either a string or WeChat's own
        ``{"value": ..., "color": ...}`` form.
        """
        body: dict[str, Any] = {
            "touser": openid,
            "template_id": template_id,
            "data": {
                key: {"value": value} if isinstance(value, str) else dict(value)
                for key, value in data.items()
            },
        }
        if url:
            body["url"] = url
        payload = await self._authorized(
            TEMPLATE_SEND_PATH, partial(self._post_with_token, body, path=TEMPLATE_SEND_PATH)
        )
        msgid = payload.get("msgid")
        return msgid if isinstance(msgid, int) else 0

    async def download_media(self, media_id: str, *, max_bytes: int) -> DownloadedMedia:
        """Fetch temporary media ``media_id`` (kept by WeChat for 3 days), streamed under a cap.

        A JSON answer is an error (:class:`~jiefen.errors.WeChatAPIError`, e.g. 40007 invalid
        media_id) or, for a video, a ``video_url`` which is then fetched under the same cap.
        More than ``max_bytes`` raises :class:`MediaTooLarge`.
        """
        return await self._authorized(
            MEDIA_GET_PATH, partial(self._download_once, media_id, max_bytes)
        )

    # -- the request machinery ---------------------------------------------------------------

    async def _authorized(self, path: str, operation: Callable[[str], Awaitable[T]]) -> T:
        """Run ``operation(access_token)`` with retries; replace a rejected token once."""
        token = await self.access_token()
        try:
            return await self._retrying(path, partial(operation, token))
        except WeChatAPIError as error:
            if error.errcode not in TOKEN_ERRCODES:
                raise
            logger.warning(
                "wechat %s rejected the access token (%s); renewing", path, error.errcode
            )
        await self.invalidate_token(token)
        token = await self._obtain_token(rejected=token)
        return await self._retrying(path, partial(operation, token))

    async def _retrying(self, path: str, attempt: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await attempt()
            except _Transient as error:
                failures += 1
                if failures >= self.max_attempts:
                    raise UpstreamError(
                        f"WeChat {path} failed {failures} times, last: {error}"
                    ) from None
                reason = str(error)
            except WeChatAPIError as error:
                if error.errcode != SYSTEM_BUSY:
                    raise
                failures += 1
                if failures >= self.max_attempts:
                    raise
                reason = "system busy (-1)"
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
            delay = random.uniform(delay / 2, delay)  # jitter spreads processes apart
            logger.warning(
                "wechat %s attempt %d failed (%s); retrying in %.2fs", path, failures, reason, delay
            )
            await asyncio.sleep(delay)

    async def _post_with_token(
        self, body: dict[str, Any], token: str, *, path: str = CUSTOM_SEND_PATH
    ) -> dict[str, Any]:
        return await self._request_json(path, token, body)

    async def _request_json(
        self, path: str, token: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        """One POST of JSON ``body``; the answer's JSON, or an error for its errcode."""
        params = {"access_token": token} if token is not None else {}
        # ensure_ascii=False: WeChat wants UTF-8 text, as wechatpy's client sends it.
        data = json.dumps(body, ensure_ascii=False).encode()
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with self._session.post(
                self._api_base + path,
                params=params,
                data=data,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=timeout,
            ) as response:
                self._check_status(path, response.status)
                raw = await _read_capped(response, _JSON_LIMIT_BYTES)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _Transient(_describe(error)) from None
        return self._json_payload(raw)

    @staticmethod
    def _check_status(path: str, status: int) -> None:
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        if status != 200:
            raise UpstreamError(f"WeChat {path} answered HTTP {status}")

    @staticmethod
    def _json_payload(raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise UpstreamError("WeChat's JSON answer is implausibly large")
        try:
            payload = json.loads(raw)
        except ValueError:
            raise _Transient("answer is not JSON") from None
        if not isinstance(payload, dict):
            raise _Transient("answer is not a JSON object")
        _errcode_of(payload)
        return payload

    async def _download_once(self, media_id: str, max_bytes: int, token: str) -> DownloadedMedia:
        params = {"access_token": token, "media_id": media_id}
        video_url = await self._download(
            self._api_base + MEDIA_GET_PATH, params, media_id, max_bytes
        )
        if isinstance(video_url, DownloadedMedia):
            return video_url
        result = await self._download(video_url, {}, media_id, max_bytes)
        if not isinstance(result, DownloadedMedia):
            raise UpstreamError("WeChat's video_url led to another video_url")
        return result

    async def _download(
        self, url: str, params: dict[str, str], media_id: str, max_bytes: int
    ) -> DownloadedMedia | str:
        """The file at ``url``, or the ``video_url`` WeChat answered with instead."""
        timeout = aiohttp.ClientTimeout(
            total=self.download_timeout,
            sock_connect=self.request_timeout,
            sock_read=self.request_timeout,
        )
        try:
            async with self._session.get(url, params=params, timeout=timeout) as response:
                self._check_status(MEDIA_GET_PATH, response.status)
                content_type = response.content_type
                disposition = response.content_disposition
                if content_type in _JSON_TYPES and disposition is None:
                    payload = self._json_payload(await _read_capped(response, _JSON_LIMIT_BYTES))
                    video_url = payload.get("video_url")
                    if not isinstance(video_url, str) or not video_url.startswith(
                        ("http://", "https://")
                    ):
                        raise UpstreamError("WeChat's media answer is JSON without a video_url")
                    return video_url
                content = await _read_capped(response, max_bytes)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _Transient(_describe(error)) from None
        if content is None:
            raise MediaTooLarge(media_id, max_bytes)
        filename = _safe_filename(disposition.filename if disposition is not None else None)
        return DownloadedMedia(content, content_type, filename)
