"""Development mode: the fake WeChat API served inside ``jiefen serve``, for ``jiefen chat``.

With the built-in development account, ``jiefen serve`` has no real WeChat to talk to, so it
mounts :class:`bot.fake_wechat_api.FakeWeChatAPI` under ``/dev/wechat-api`` and points its own
WeChat client there. Two extra endpoints let the terminal user see what the bot pushed and give
it media to fetch, the way the WeChat app would:

- ``GET  /dev/wechat-api/_sent?touser=OPENID&after=N[&wait=S]`` — customer-service messages
  sent to the user after the first ``N``, as JSON ``{"total": T, "messages": [text, ...]}``;
  with ``wait``, the answer waits up to ``S`` seconds (at most 30) for one to arrive, so that
  ``jiefen chat`` can show pushes as they come without asking (and logging) every second;
- ``POST /dev/wechat-api/_media?media_id=ID&type=image/jpeg`` — register media content.

Both answer requests from this machine only (they show any user's messages).
Never mounted for a real account (any other ``JIEFEN_WECHAT_APPID`` or API base).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from bot.fake_wechat_api import FakeWeChatAPI

#: Uploads through the dev endpoint are capped like a real WeChat image.
_MAX_DEV_MEDIA_BYTES = 10 * 1024 * 1024
#: The longest a ``_sent`` request may wait for a message, and how often it looks meanwhile.
MAX_SENT_WAIT_S = 30.0
_SENT_LOOK_S = 0.2


def make_dev_wechat_app(fake: FakeWeChatAPI) -> web.Application:
    """The fake WeChat API plus the inspection endpoints described in the module docstring."""
    app = fake.make_app()
    #: Set at shutdown: a waiting ``_sent`` answers at once rather than hold the exit up.
    closing = asyncio.Event()

    async def close(app: web.Application) -> None:
        closing.set()

    app.on_shutdown.append(close)

    async def sent(request: web.Request) -> web.Response:
        if not _from_loopback(request):
            return web.json_response({"error": "loopback only"}, status=403)
        touser = request.query.get("touser", "")
        try:
            after = max(0, int(request.query.get("after", "0")))
            wait_s = min(MAX_SENT_WAIT_S, max(0.0, float(request.query.get("wait", "0"))))
        except ValueError:
            return web.json_response({"error": "after and wait must be numbers"}, status=400)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s

        def texts() -> list[str]:
            return [message.content or "" for message in fake.sent if message.touser == touser]

        sent_now = texts()
        while len(sent_now) <= after and loop.time() < deadline and not closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), _SENT_LOOK_S)
            sent_now = texts()
        return web.json_response({"total": len(sent_now), "messages": sent_now[after:]})

    async def media(request: web.Request) -> web.Response:
        if not _from_loopback(request):
            return web.json_response({"error": "loopback only"}, status=403)
        media_id = request.query.get("media_id", "")
        if not media_id:
            return web.json_response({"error": "media_id is required"}, status=400)
        content = await request.content.read(_MAX_DEV_MEDIA_BYTES + 1)
        if len(content) > _MAX_DEV_MEDIA_BYTES:
            return web.json_response({"error": "too large"}, status=413)
        fake.add_media(media_id, content, request.query.get("type", "image/jpeg"))
        return web.json_response({"media_id": media_id, "size": len(content)})

    app.router.add_get("/_sent", sent)
    app.router.add_post("/_media", media)
    return app


def _from_loopback(request: web.Request) -> bool:
    return request.remote in ("127.0.0.1", "::1")
