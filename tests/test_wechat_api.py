"""Our WeChat API client against the fake WeChat API (real HTTP on 127.0.0.1) and real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.fake_wechat_api import (
    CUSTOM_SEND_PATH,
    MEDIA_GET_PATH,
    STABLE_TOKEN_PATH,
    TEMPLATE_SEND_PATH,
    FakeWeChatAPI,
    running_fake_wechat_api,
)
from bot.wechat_api import TEXT_LIMIT_BYTES, MediaTooLarge, WeChatAPIClient, split_text
from jiefen.errors import UpstreamError, WeChatAPIError

APPID = "wxclienttest000001"
SECRET = "client-test-secret-Zq9"

MakeClient = Callable[..., WeChatAPIClient]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeWeChatAPI, str]]:
    async with running_fake_wechat_api(FakeWeChatAPI(APPID, SECRET)) as served:
        yield served


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_client(
    fake: tuple[FakeWeChatAPI, str],
    session: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> MakeClient:
    def make(**options: object) -> WeChatAPIClient:
        settings: dict[str, object] = {
            "api_base": fake[1],
            "appid": APPID,
            "secret": SECRET,
            "key_prefix": redis_prefix,
            "request_timeout": 1.0,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
        }
        settings.update(options)
        return WeChatAPIClient(session, redis_client, **settings)  # type: ignore[arg-type]

    return make


@pytest.fixture
def api(fake: tuple[FakeWeChatAPI, str]) -> FakeWeChatAPI:
    return fake[0]


# -- the access token --------------------------------------------------------------------------


async def test_token_is_cached_in_redis_with_margin(
    make_client: MakeClient, api: FakeWeChatAPI, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    client = make_client()
    token = await client.access_token()
    assert token == api.current_token
    key = f"{redis_prefix}wechat:token:{APPID}"
    assert (await redis_client.get(key)) == token.encode()
    assert 6890 <= await redis_client.ttl(key) <= 6900  # expires_in 7200 - 300
    assert await client.access_token() == token
    assert api.token_requests == 1


async def test_one_refresh_for_many_concurrent_callers(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    api.fail_next(STABLE_TOKEN_PATH, delay=0.2)  # keep the refresh in flight while others wait
    clients = [make_client(), make_client()]  # two processes sharing Redis
    tokens = await asyncio.gather(*(clients[n % 2].access_token() for n in range(20)))
    assert len(set(tokens)) == 1
    assert api.token_requests == 1


async def test_wrong_secret_raises_without_retry(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    with pytest.raises(WeChatAPIError) as caught:
        await make_client(secret="wrong").access_token()
    assert caught.value.errcode == 40125
    assert api.requests_to(STABLE_TOKEN_PATH) == 1


@pytest.mark.parametrize("spoil", ["expire", "revoke"])
async def test_rejected_token_is_refreshed_once(
    make_client: MakeClient, api: FakeWeChatAPI, spoil: str
) -> None:
    client = make_client()
    old = await client.access_token()
    api.expire_tokens() if spoil == "expire" else api.revoke_token()
    assert await client.send_text("oA", "你好") == 1
    new = await client.access_token()
    assert new != old and new == api.current_token
    assert api.token_requests == 2 and api.requests_to(CUSTOM_SEND_PATH) == 2
    assert [m.content for m in api.sent] == ["你好"]


async def test_token_wechat_still_hands_out_is_force_refreshed(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    client = make_client()
    old = await client.access_token()
    api.fail_next(CUSTOM_SEND_PATH, errcode=40001)
    await client.send_text("oA", "hi")
    # Normal mode handed back the rejected token, so the client forced a new one.
    assert api.token_requests == 3 and api.tokens_issued == 2
    assert await client.access_token() != old


async def test_persistently_rejected_token_gives_up(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    client = make_client()
    api.fail_next(CUSTOM_SEND_PATH, errcode=42001, times=5)
    with pytest.raises(WeChatAPIError) as caught:
        await client.send_text("oA", "hi")
    assert caught.value.errcode == 42001
    assert api.requests_to(CUSTOM_SEND_PATH) == 2  # the first try and one after a new token


async def test_another_process_refresh_is_not_undone(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    first, second = make_client(), make_client()
    old = await first.access_token()
    api.revoke_token()
    await first.send_text("oA", "one")  # first renews the token
    renewed = await first.access_token()
    await second.invalidate_token(old)  # second saw the old one rejected, later
    assert await second.access_token() == renewed
    assert api.token_requests == 2


# -- errors and retries ------------------------------------------------------------------------


async def test_45015_raises_without_retry(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.out_of_window("oGone")
    with pytest.raises(WeChatAPIError) as caught:
        await make_client().send_text("oGone", "您的案件已受理")
    assert caught.value.errcode == 45015
    assert isinstance(caught.value, UpstreamError)
    assert api.requests_to(CUSTOM_SEND_PATH) == 1


async def test_5xx_twice_then_success(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.fail_next(CUSTOM_SEND_PATH, status=500, times=2)
    assert await make_client().send_text("oA", "hi") == 1
    assert api.requests_to(CUSTOM_SEND_PATH) == 3 and len(api.sent) == 1


async def test_persistent_5xx_gives_up(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.fail_next(CUSTOM_SEND_PATH, status=503, times=10)
    with pytest.raises(UpstreamError) as caught:
        await make_client(max_attempts=4).send_text("oA", "hi")
    assert not isinstance(caught.value, WeChatAPIError)
    assert api.requests_to(CUSTOM_SEND_PATH) == 4 and api.sent == []


async def test_system_busy_is_retried(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.fail_next(TEMPLATE_SEND_PATH, errcode=-1)
    msgid = await make_client().send_template("oA", "T1", {"case_no": "JF20261121-0001"})
    assert msgid == api.templates[0].msgid
    api.fail_next(TEMPLATE_SEND_PATH, errcode=-1, times=3)
    with pytest.raises(WeChatAPIError) as caught:
        await make_client().send_template("oA", "T1", {"k": "v"})
    assert caught.value.errcode == -1


async def test_timeouts_are_retried_then_raise(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    client = make_client(request_timeout=0.2)
    await client.access_token()
    api.fail_next(CUSTOM_SEND_PATH, delay=0.5)
    assert await client.send_text("oA", "slow") == 1
    api.fail_next(CUSTOM_SEND_PATH, delay=0.5, times=3)
    with pytest.raises(UpstreamError, match="3 times"):
        await client.send_text("oA", "slower")


async def test_token_fetch_timeout(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.fail_next(STABLE_TOKEN_PATH, delay=0.5, times=3)
    with pytest.raises(UpstreamError):
        await make_client(request_timeout=0.1).access_token()


async def test_unreachable_api(make_client: MakeClient) -> None:
    async with running_fake_wechat_api() as (_, base):
        pass  # served, then stopped: nothing listens at base any more
    with pytest.raises(UpstreamError, match="ClientConnectorError"):
        await make_client(api_base=base).access_token()


async def test_secrets_never_logged(
    make_client: MakeClient, api: FakeWeChatAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(request_timeout=0.2)
    token = await client.access_token()
    api.fail_next(CUSTOM_SEND_PATH, delay=0.5, times=3)
    with pytest.raises(UpstreamError) as caught:
        await client.send_text("oA", "x")
    for text in (caplog.text, str(caught.value), repr(client)):
        assert SECRET not in text and token not in text


# -- messages ----------------------------------------------------------------------------------


async def test_template_body(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    data: dict[str, str | dict[str, str]] = {
        "first": "案件已受理",
        "remark": {"value": "请留意", "color": "#173177"},
    }
    await make_client().send_template("oA", "T1", data, url="https://jiefen.example/c/1")
    sent = api.templates[0]
    assert sent.data == {
        "first": {"value": "案件已受理"},
        "remark": {"value": "请留意", "color": "#173177"},
    }
    assert sent.url == "https://jiefen.example/c/1"


async def test_chinese_text_goes_as_utf8(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    await make_client().send_text("oA", "调解")
    assert "调解".encode() in api.sent[0].raw


async def test_long_text_is_split_in_order(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    text = "\n".join(f"第{n}项：" + "纠纷" * 60 for n in range(1, 30))
    count = await make_client().send_text("oA", text)
    assert count == len(api.sent) > 1
    assert all(len(m.content.encode()) <= TEXT_LIMIT_BYTES for m in api.sent if m.content)
    assert "\n".join(m.content or "" for m in api.sent) == text


def test_split_text_boundaries() -> None:
    assert split_text("短") == ["短"]
    exact = "调" * 682 + "ab"
    assert split_text(exact) == [exact]
    no_breaks = "调" * 1000  # 3000 bytes: cut between characters, never inside one
    parts = split_text(no_breaks)
    assert parts == ["调" * 682, "调" * 318]
    emoji = "a" + "😀" * 600  # 4-byte characters
    assert "".join(split_text(emoji)) == emoji
    assert all(len(p.encode()) <= TEXT_LIMIT_BYTES for p in split_text(emoji))
    lines = "x" * 1500 + "\n" + "y" * 1500
    assert split_text(lines) == ["x" * 1500, "y" * 1500]
    early_break = "x\n" + "y" * 3000  # a break too early is not used
    assert "".join(split_text(early_break)) == early_break
    with pytest.raises(ValueError):
        split_text("")


# -- media -------------------------------------------------------------------------------------


async def test_download_media(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    content = bytes(range(256)) * 400
    api.add_media("img-1", content, "image/jpeg")
    media = await make_client().download_media("img-1", max_bytes=200_000)
    assert (media.content, media.content_type, media.filename) == (
        content,
        "image/jpeg",
        "img-1.jpeg",
    )


async def test_download_video_follows_video_url(
    make_client: MakeClient, api: FakeWeChatAPI
) -> None:
    api.add_media("vid-1", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    media = await make_client().download_media("vid-1", max_bytes=1000)
    assert media.content == b"\x00\x00\x00\x18ftypmp42" and media.content_type == "video/mp4"


async def test_download_too_large(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    api.add_media("big", b"x" * 5000, "image/png")
    with pytest.raises(MediaTooLarge):
        await make_client().download_media("big", max_bytes=4999)
    assert api.requests_to(MEDIA_GET_PATH) == 1  # not retried


async def test_download_unknown_media(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    with pytest.raises(WeChatAPIError) as caught:
        await make_client().download_media("missing", max_bytes=1000)
    assert caught.value.errcode == 40007


async def test_download_with_expired_token(make_client: MakeClient, api: FakeWeChatAPI) -> None:
    client = make_client()
    await client.access_token()
    api.expire_tokens()
    api.add_media("a", b"amr-bytes", "audio/amr", filename="../../etc/a.amr")
    media = await client.download_media("a", max_bytes=100)
    assert media.content == b"amr-bytes" and media.filename == "a.amr"
