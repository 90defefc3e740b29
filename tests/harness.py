"""A running Jiefen for functional tests: real server on 127.0.0.1 port 0, real Redis and
PostgreSQL, the fake WeChat API on its own port, and a simulator to talk to it as WeChat does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bot.fake_wechat_api import FakeWeChatAPI, start_fake_wechat_api
from bot.wechat_simulator import CryptoMode, Delivery, Push, Reply, WeChatSimulator
from config.settings import DEV_WECHAT_AES_KEY, DEV_WECHAT_APPID, DEV_WECHAT_TOKEN, Settings
from jiefen.app import SERVICES, Services, create_app
from state.key_files import create_key_file_once
from state.message_gate import MessageGate

T = TypeVar("T")
#: The rooms API token of the servers the tests start (``Settings.admin_api_token``).
ADMIN_TOKEN = "test-admin-token"

# A valid resident ID (GB 11643 checksum) used by the tests; 530102 = 昆明市五华区.
TEST_ID_NUMBER = "53010219900307608X"


@dataclass
class RunningJiefen:
    settings: Settings
    services: Services
    url: str
    fake: FakeWeChatAPI
    session: aiohttp.ClientSession
    simulator: WeChatSimulator

    async def send(self, push: Push, *, wait_s: float = 5.0, retries: int = 1) -> Delivery:
        return await self.simulator.deliver(
            self.session, f"{self.url}/wechat", push, timeout=wait_s, retries=retries
        )

    async def say(self, openid: str, text: str) -> str:
        """Send ``text`` as ``openid`` and return the passive reply text (must be one)."""
        delivery = await self.send(self.simulator.text(openid, text))
        assert delivery.status == 200, delivery
        assert isinstance(delivery.reply, Reply), delivery
        return delivery.reply.content or ""

    def conversation_gate(self) -> MessageGate:
        """A gate on the same Redis keys as the server's (to hold a resident's turn)."""
        return MessageGate(self.services.redis, prefix=self.settings.redis_prefix)

    async def post_raw(self, push: Push) -> tuple[int, bytes]:
        async with self.session.post(
            f"{self.url}/wechat", params=push.params, data=push.body
        ) as response:
            return response.status, await response.read()

    async def wait_for_pushes(self, openid: str, count: int, wait_s: float = 10.0) -> list[str]:
        """The texts pushed to ``openid`` once there are ``count`` (or after ``wait_s``)."""

        async def pushed() -> list[str]:
            return [m.content or "" for m in self.fake.sent if m.touser == openid]

        await eventually(lambda: _at_least(pushed, count), wait_s=wait_s)
        return await pushed()


def platform_signing_key_file(directory: Path) -> Path:
    """The deployment's signing key as production configures it (``JIEFEN_SIGNING_KEY_FILE``,
    mode 0600), made once in ``directory``: processes that are not embedded make none."""
    path = directory / "platform-signing-ed25519.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    create_key_file_once(path, pem)
    return path


def clean_environment() -> dict[str, str]:
    """This process's environment without any JIEFEN_* setting: for a subprocess given exactly
    the settings its test names, whatever the shell running the tests has set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JIEFEN_")}


async def eventually(probe: Callable[[], Awaitable[T]], *, wait_s: float = 10.0) -> T:
    """Poll ``probe`` until it returns something truthy, or ``wait_s`` passes; its last value."""
    deadline = time.monotonic() + wait_s
    value = await probe()
    while not value and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await probe()
    return value


@asynccontextmanager
async def running_jiefen(
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    data_dir: Path,
    mode: CryptoMode = CryptoMode.SAFE,
    **overrides: Any,
) -> AsyncIterator[RunningJiefen]:
    fake, fake_url, fake_runner = await start_fake_wechat_api(FakeWeChatAPI(appid=DEV_WECHAT_APPID))
    # Each app is its own process as far as placement knows: the default id (hostname:port,
    # and the settings' port is not the one bound here) would make two of them one node, which
    # a second start under a live node's id refuses.
    overrides.setdefault("media_node_id", f"test-{uuid.uuid4().hex[:8]}")
    if overrides.get("role", "all") != "all":  # not embedded: the keys are configured
        overrides.setdefault("signing_key_file", platform_signing_key_file(data_dir))
        # One key per data directory, as a deployment has one: two apps of one test share it.
        digest = hashlib.sha256(f"jiefen-test-data-key:{data_dir}".encode()).digest()
        overrides.setdefault("data_key", base64.b64encode(digest).decode())
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        data_dir=data_dir,
        wechat_api_base=fake_url,
        wechat_token=DEV_WECHAT_TOKEN,
        wechat_appid=DEV_WECHAT_APPID,
        wechat_aes_key=DEV_WECHAT_AES_KEY,
        wechat_crypto_mode=mode.value,
        **overrides,
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    simulator = WeChatSimulator(
        settings.wechat_token, settings.wechat_appid, settings.wechat_aes_key, mode
    )
    try:
        async with aiohttp.ClientSession() as session:
            yield RunningJiefen(
                settings=settings,
                services=app[SERVICES],
                url=f"http://{host}:{port}",
                fake=fake,
                session=session,
                simulator=simulator,
            )
    finally:
        await runner.cleanup()
        await fake_runner.cleanup()


async def _at_least(probe: Callable[[], Awaitable[list[str]]], count: int) -> bool:
    return len(await probe()) >= count
