"""The fake WeChat API answers as WeChat's documentation says, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.dev_wechat import make_dev_wechat_app
from bot.fake_wechat_api import (
    CUSTOM_SEND_PATH,
    MEDIA_GET_PATH,
    STABLE_TOKEN_PATH,
    TEMPLATE_SEND_PATH,
    TOKEN_PATH,
    FakeWeChatAPI,
    running_fake_wechat_api,
)

APPID = "wxfaketest00000001"
SECRET = "fake-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """A thin HTTP client for the fake, so each test reads as the protocol does."""

    def __init__(self, session: aiohttp.ClientSession, base: str, fake: FakeWeChatAPI) -> None:
        self.session, self.base, self.fake = session, base, fake

    async def post(self, path: str, body: Any, **query: str) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        async with self.session.post(self.base + path, params=query, data=data) as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json(content_type=None)
            return result

    async def get(self, path: str, **query: str) -> dict[str, Any]:
        async with self.session.get(self.base + path, params=query) as response:
            result: dict[str, Any] = await response.json(content_type=None)
            return result

    async def token(self, *, force: bool = False, **override: str) -> dict[str, Any]:
        body: dict[str, Any] = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        body.update(override)
        if force:
            body["force_refresh"] = True
        return await self.post(STABLE_TOKEN_PATH, body)

    async def send(self, token: str, touser: str = "oA", content: str = "你好") -> dict[str, Any]:
        body = {"touser": touser, "msgtype": "text", "text": {"content": content}}
        return await self.post(CUSTOM_SEND_PATH, body, access_token=token)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def api(clock: Clock) -> AsyncIterator[Api]:
    fake = FakeWeChatAPI(APPID, SECRET, clock=clock)
    async with running_fake_wechat_api(fake) as (fake, base), aiohttp.ClientSession() as session:
        assert base.startswith("http://127.0.0.1:")
        yield Api(session, base, fake)


async def test_stable_token_credentials(api: Api) -> None:
    assert (await api.token(appid="wxwrong"))["errcode"] == 40013
    assert (await api.token(secret="wrong"))["errcode"] == 40125
    assert (await api.token(grant_type="password"))["errcode"] == 40002
    assert (await api.post(STABLE_TOKEN_PATH, b"not json"))["errcode"] == 47001
    assert api.fake.token_requests == 0
    answer = await api.token()
    assert answer["expires_in"] == 7200 and answer["access_token"].startswith("FAKE_AT_")


async def test_stable_token_normal_and_forced(api: Api, clock: Clock) -> None:
    first = (await api.token())["access_token"]
    clock.now += 1000
    again = await api.token()
    assert again["access_token"] == first and again["expires_in"] == 6200
    assert (api.fake.token_requests, api.fake.tokens_issued) == (2, 1)
    forced = (await api.token(force=True))["access_token"]
    assert forced != first
    assert (await api.send(first))["errcode"] == 40001  # the forced refresh killed the old one
    assert (await api.send(forced))["errcode"] == 0


async def test_stable_token_renews_in_its_last_five_minutes(api: Api, clock: Clock) -> None:
    first = (await api.token())["access_token"]
    clock.now += 7200 - 299
    second = (await api.token())["access_token"]
    assert second != first
    assert (await api.send(first))["errcode"] == 0  # both valid during the hand-over
    clock.now += 300
    assert (await api.send(first))["errcode"] == 42001
    assert (await api.send(second))["errcode"] == 0


async def test_basic_token_endpoint(api: Api) -> None:
    query = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    one = await api.get(TOKEN_PATH, **query)
    two = await api.get(TOKEN_PATH, **query)
    assert one["access_token"] != two["access_token"]
    assert (await api.get(TOKEN_PATH, **{**query, "secret": "x"}))["errcode"] == 40125
    assert (await api.get(TOKEN_PATH, **{**query, "appid": "x"}))["errcode"] == 40013


async def test_custom_send_token_checks(api: Api) -> None:
    body = {"touser": "oA", "msgtype": "text", "text": {"content": "hi"}}
    assert (await api.post(CUSTOM_SEND_PATH, body))["errcode"] == 41001
    assert (await api.send("garbage"))["errcode"] == 40014
    assert (await api.send("FAKE_AT_unknown"))["errcode"] == 40001
    token = (await api.token())["access_token"]
    api.fake.expire_tokens()
    answer = await api.send(token)
    assert answer["errcode"] == 42001 and answer["errmsg"].startswith("access_token expired")
    fresh = (await api.token())["access_token"]
    api.fake.revoke_token()
    assert (await api.send(fresh))["errcode"] == 40001


async def test_custom_send_validation_and_record(api: Api) -> None:
    token = (await api.token())["access_token"]
    post = api.post
    assert (await post(CUSTOM_SEND_PATH, b"{", access_token=token))["errcode"] == 47001
    no_user = {"msgtype": "text", "text": {"content": "x"}}
    assert (await post(CUSTOM_SEND_PATH, no_user, access_token=token))["errcode"] == 40003
    bad_type = {"touser": "oA", "msgtype": "sticker", "sticker": {}}
    assert (await post(CUSTOM_SEND_PATH, bad_type, access_token=token))["errcode"] == 40008
    assert (await api.send(token, content=""))["errcode"] == 44004
    exactly = "调" * 682 + "ab"  # 2048 bytes of UTF-8
    assert (await api.send(token, content=exactly))["errcode"] == 0
    assert (await api.send(token, content=exactly + "c"))["errcode"] == 45002
    api.fake.out_of_window("oLate")
    answer = await api.send(token, touser="oLate")
    assert answer["errcode"] == 45015
    assert answer["errmsg"].startswith("response out of time limit or subscription is canceled")
    assert (await api.send(token, content="第二条"))["errcode"] == 0
    assert [(m.touser, m.content) for m in api.fake.sent] == [("oA", exactly), ("oA", "第二条")]
    assert "第二条".encode() in api.fake.sent[1].raw


async def test_template_send(api: Api) -> None:
    token = (await api.token())["access_token"]
    body = {"touser": "oA", "template_id": "T1", "url": "http://x", "data": {"k": {"value": "v"}}}
    answer = await api.post(TEMPLATE_SEND_PATH, body, access_token=token)
    assert answer["errcode"] == 0 and isinstance(answer["msgid"], int)
    assert api.fake.templates[0].msgid == answer["msgid"]
    assert api.fake.templates[0].data == {"k": {"value": "v"}}
    api.fake.unfollow("oA")
    assert (await api.post(TEMPLATE_SEND_PATH, body, access_token=token))["errcode"] == 43004
    assert (await api.send(token))["errcode"] == 45015


async def test_media_get(api: Api) -> None:
    token = (await api.token())["access_token"]
    api.fake.add_media("m1", b"\xff\xd8jpeg", "image/jpeg")
    params = {"access_token": token, "media_id": "m1"}
    async with api.session.get(api.base + MEDIA_GET_PATH, params=params) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Content-disposition"] == 'attachment; filename="m1.jpeg"'
        assert await response.read() == b"\xff\xd8jpeg"
    missing = await api.get(MEDIA_GET_PATH, access_token=token, media_id="nope")
    assert missing["errcode"] == 40007 and missing["errmsg"].startswith("invalid media_id")
    api.fake.add_media("v1", b"mp4data", "video/mp4")
    video = await api.get(MEDIA_GET_PATH, access_token=token, media_id="v1")
    async with api.session.get(video["video_url"]) as response:
        assert await response.read() == b"mp4data"


async def test_fault_injection(api: Api) -> None:
    token = (await api.token())["access_token"]
    api.fake.fail_next(CUSTOM_SEND_PATH, status=502)
    api.fake.fail_next(CUSTOM_SEND_PATH, errcode=-1)
    api.fake.fail_next(CUSTOM_SEND_PATH, delay=0.2)
    body = {"touser": "oA", "msgtype": "text", "text": {"content": "x"}}
    async with api.session.post(
        api.base + CUSTOM_SEND_PATH, params={"access_token": token}, json=body
    ) as response:
        assert response.status == 502
    assert (await api.send(token))["errcode"] == -1
    started = time.monotonic()
    assert (await api.send(token))["errcode"] == 0
    assert time.monotonic() - started >= 0.2
    assert (await api.send(token))["errcode"] == 0
    assert api.fake.requests_to(CUSTOM_SEND_PATH) == 4
    with pytest.raises(ValueError):
        api.fake.fail_next(CUSTOM_SEND_PATH, status=500, errcode=1)


async def test_mounted_under_a_prefix() -> None:
    fake = FakeWeChatAPI(APPID, SECRET)
    root = web.Application()
    root.add_subapp("/dev/wechat-api", fake.make_app())
    server = TestServer(root, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, str(server.make_url("/dev/wechat-api")), fake)
            token = (await api.token())["access_token"]
            fake.fail_next(CUSTOM_SEND_PATH, errcode=-1)
            assert (await api.send(token))["errcode"] == -1
            assert fake.requests_to(CUSTOM_SEND_PATH) == 1
            fake.add_media("v1", b"mp4", "video/mp4")
            video = await api.get(MEDIA_GET_PATH, access_token=token, media_id="v1")
            assert "/dev/wechat-api/fake-video/v1" in video["video_url"]
            async with session.get(video["video_url"]) as response:
                assert await response.read() == b"mp4"
    finally:
        await server.close()


async def test_the_dev_sent_endpoint_waits_for_a_push_and_lets_go_at_shutdown() -> None:
    """`jiefen chat` waits on `_sent?wait=S` for pushes nobody's message caused (an invitation):
    the answer comes when one is sent, and a server shutting down does not wait it out."""
    fake = FakeWeChatAPI(APPID, SECRET)
    root = web.Application()
    root.add_subapp("/dev/wechat-api", make_dev_wechat_app(fake))
    server = TestServer(root, host="127.0.0.1", port=0)
    await server.start_server()
    sent_url = str(server.make_url("/dev/wechat-api/_sent"))
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, str(server.make_url("/dev/wechat-api")), fake)
            token = (await api.token())["access_token"]

            async def wait_for_push(wait: str) -> tuple[dict[str, Any], float]:
                started = time.monotonic()
                query = {"touser": "oA", "after": "0", "wait": wait}
                async with session.get(sent_url, params=query) as response:
                    assert response.status == 200
                    return await response.json(), time.monotonic() - started

            waiting = asyncio.create_task(wait_for_push("10"))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # nothing sent yet: it waits
            await api.send(token, "oA", "邀请")
            answer, took = await asyncio.wait_for(waiting, 5)
            assert answer == {"total": 1, "messages": ["邀请"]} and took < 5
            # Without `wait`, the answer is at once, as before.
            quick, took = await wait_for_push("0")
            assert quick["total"] == 1 and took < 1
            async with session.get(sent_url, params={"touser": "oA", "wait": "x"}) as response:
                assert response.status == 400
            # Shutting down: a waiting request is answered at once.
            idle = asyncio.create_task(
                session.get(sent_url, params={"touser": "oA", "after": "1", "wait": "30"})
            )
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await root.shutdown()
            response = await asyncio.wait_for(idle, 5)
            assert (await response.json())["messages"] == [] and time.monotonic() - started < 2
            response.release()
    finally:
        await server.close()
