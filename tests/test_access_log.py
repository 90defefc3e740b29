"""The access log: one line per request with the path only, and no work when it is off."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from jiefen.access_log import PathOnlyAccessLogger


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
async def test_requests_are_logged_without_their_query_only_at_info(
    level: int, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(f"jiefen.test_access.{level}")
    logger.setLevel(level)
    app = web.Application()
    app.router.add_post("/wechat", _ok)
    runner = web.AppRunner(app, access_log=logger, access_log_class=PathOnlyAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with caplog.at_level(level, logger=logger.name):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/wechat?signature=s3cret&openid=o_who"
                async with session.post(url, data=b"x") as response:
                    assert response.status == 200
    finally:
        await runner.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    if level == logging.INFO:
        [line] = lines
        assert '"POST /wechat" 200' in line and line.endswith("ms")
        assert "s3cret" not in line and "o_who" not in line
    else:
        assert lines == []
