"""The webhook refuses what WeChat would never send, with a clear status, and stays up."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.wechat_simulator import CryptoMode, Reply, WeChatSimulator
from config.settings import Settings
from tests.conftest import REDIS_URL
from tests.harness import RunningJiefen, running_jiefen

OPENID = "o_security_test_user"


@pytest.fixture(params=[CryptoMode.SAFE, CryptoMode.COMPAT, CryptoMode.PLAIN])
async def jiefen(
    request: pytest.FixtureRequest,
    pg_database_url: str,
    redis_client: object,
    redis_prefix: str,
    tmp_path: Path,
) -> AsyncIterator[RunningJiefen]:
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        mode=request.param,
    ) as running:
        yield running


async def _still_serving(jiefen: RunningJiefen) -> None:
    delivery = await jiefen.send(jiefen.simulator.subscribe(OPENID + "_probe"))
    assert delivery.status == 200
    assert isinstance(delivery.reply, Reply) and delivery.reply.content


async def test_url_verification_echoes_only_when_signed(jiefen: RunningJiefen) -> None:
    check = jiefen.simulator.verification_request("echo-12345")
    async with jiefen.session.get(f"{jiefen.url}/wechat", params=check.params) as response:
        assert response.status == 200
        assert await response.text() == "echo-12345"
    forged = dict(check.params, signature="0" * 40)
    async with jiefen.session.get(f"{jiefen.url}/wechat", params=forged) as response:
        assert response.status == 403
        assert "echo-12345" not in await response.text()


async def test_forged_signature_is_refused(jiefen: RunningJiefen) -> None:
    push = jiefen.simulator.with_forged_signature(jiefen.simulator.text(OPENID, "我要调解"))
    status, _ = await jiefen.post_raw(push)
    assert status == 403
    assert await jiefen.services.redis.keys(f"{jiefen.settings.redis_prefix}user:*") == []
    await _still_serving(jiefen)


async def test_stale_timestamp_is_refused(jiefen: RunningJiefen) -> None:
    push = jiefen.simulator.text(OPENID, "我要调解", timestamp=int(time.time()) - 3600)
    status, _ = await jiefen.post_raw(push)
    assert status == 403
    await _still_serving(jiefen)


async def test_a_timestamp_just_past_five_minutes_is_refused_and_just_within_accepted(
    jiefen: RunningJiefen,
) -> None:
    tolerance = jiefen.settings.wechat_timestamp_tolerance_s
    assert tolerance == 300
    now = int(time.time())
    for skew in (-(tolerance + 5), tolerance + 5):  # late, and from a clock running ahead
        late = jiefen.simulator.text(OPENID, "我要调解", timestamp=now + skew)
        assert (await jiefen.post_raw(late))[0] == 403, skew
    just_within = jiefen.simulator.text(OPENID, "我要调解", timestamp=now - (tolerance - 10))
    assert (await jiefen.post_raw(just_within))[0] == 200


async def test_oversized_body_gets_413(jiefen: RunningJiefen) -> None:
    push = jiefen.simulator.text(OPENID, "长" * 40_000)  # ~120 KB of UTF-8
    status, _ = await jiefen.post_raw(push)
    assert status == 413
    await _still_serving(jiefen)


async def test_a_body_one_byte_over_64_kib_gets_413_and_64_kib_is_read(
    jiefen: RunningJiefen,
) -> None:
    limit = jiefen.settings.wechat_max_body_bytes
    assert limit == 64 * 1024
    push = jiefen.simulator.text(OPENID, "我要调解")
    padding = b" " * (limit + 1 - len(push.body))  # whitespace after the root: still a push
    status, _ = await jiefen.post_raw(dataclasses.replace(push, body=push.body + padding))
    assert status == 413
    fits = dataclasses.replace(push, body=push.body + padding[:-1])
    assert (await jiefen.post_raw(fits))[0] == 200


async def test_xxe_and_entity_expansion_are_refused(jiefen: RunningJiefen) -> None:
    for push in (jiefen.simulator.xxe(OPENID), jiefen.simulator.billion_laughs(OPENID)):
        status, body = await jiefen.post_raw(push)
        assert status == 400
        assert b"root:" not in body  # nothing of /etc/passwd comes back
    await _still_serving(jiefen)


async def test_garbage_is_refused_and_nothing_crashes(jiefen: RunningJiefen) -> None:
    simulator = jiefen.simulator
    hostile = [dataclasses.replace(simulator.text(OPENID, "x"), body=b"<xml><not-closed>")]
    if simulator.mode is not CryptoMode.PLAIN:
        hostile += [
            simulator.garbage_ciphertext(OPENID, kind)
            for kind in ("random", "not_base64", "truncated", "empty")
        ]
        hostile.append(simulator.wrong_appid(OPENID))
    for push in hostile:
        status, _ = await jiefen.post_raw(push)
        assert status in (400, 403), push
    await _still_serving(jiefen)


async def test_safe_mode_refuses_plaintext_pushes(
    pg_database_url: str, redis_client: object, redis_prefix: str, tmp_path: Path
) -> None:
    async with running_jiefen(
        database_url=pg_database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        data_dir=tmp_path,
        mode=CryptoMode.SAFE,
    ) as jiefen:
        plain = WeChatSimulator(
            jiefen.settings.wechat_token, jiefen.settings.wechat_appid, "", CryptoMode.PLAIN
        )
        status, _ = await jiefen.post_raw(plain.text(OPENID, "查询"))
        assert status == 403


def test_a_real_account_cannot_run_on_the_public_development_secrets() -> None:
    with pytest.raises(ValueError, match="JIEFEN_WECHAT_TOKEN"):
        Settings(wechat_appid="wx_real_account_01", wechat_secret="s")
