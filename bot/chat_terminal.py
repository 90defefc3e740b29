"""``jiefen chat``: talk to the bot from a terminal as a WeChat user would.

Every line typed is sent to the webhook exactly as WeChat sends it (signed, and encrypted in
safe mode, by :class:`bot.wechat_simulator.WeChatSimulator`), and the bot's passive reply is
printed. Replies the bot pushes later (through the customer-service API) are fetched from the
development WeChat API stand-in and printed too: after each message, and as they arrive while
the terminal waits for the next line (a request that the stand-in answers when there is one),
so a message nobody's line caused (the invitation to a video session, sent when a mediator
opens one) shows up on its own, as in the WeChat app. Lines starting with ``/`` send other
kinds of message (see ``HELP``). Reads standard input, so a script can drive it as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Callable
from typing import TextIO

import aiohttp

from bot.wechat_simulator import CryptoMode, NoReply, Push, Reply, WeChatSimulator
from config.settings import Settings

HELP = """输入文字直接发送给公众号。其他操作：
  /图片          发送一张图片（证据）
  /语音 文字     发送一条语音（带语音识别文字）；只写 /语音 则不带识别文字
  /位置 地名     发送一个位置
  /关注          关注公众号     /取关   取消关注
  /帮助          显示本说明     /退出   结束"""

# The smallest valid PNG (1×1, transparent): enough to stand for a photo of evidence.
_TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

#: How long one request for new pushes waits for one (the stand-in's ``wait``, seconds).
PUSH_WAIT_S = 20.0
#: The least time between two such requests, whatever the server answers (seconds).
PUSH_MIN_INTERVAL_S = 1.0

# An AMR-NB file: the magic header, then one frame of silence (mode 7, 31 bytes of payload).
_SILENT_AMR = b"#!AMR\n" + bytes([0x3C]) + bytes(31)


class ChatTerminal:
    """One simulated WeChat user talking to the webhook at ``webhook_url``."""

    def __init__(
        self,
        settings: Settings,
        *,
        webhook_url: str,
        dev_api_url: str | None,
        openid: str,
        mode: CryptoMode,
        write: Callable[[str], None],
    ) -> None:
        self._simulator = WeChatSimulator(
            settings.wechat_token, settings.wechat_appid, settings.wechat_aes_key, mode
        )
        self._webhook_url = webhook_url
        self._dev_api_url = dev_api_url
        self._openid = openid
        self._write = write
        self._pushes_seen = 0
        #: One look at the pushes at a time: the watcher's and a message's own must not both
        #: print the same push.
        self._pushes_lock = asyncio.Lock()

    async def run(self, lines: TextIO) -> int:
        """Chat until end of input or ``/退出``; returns a process exit status."""
        async with aiohttp.ClientSession() as session:
            self._pushes_seen = await self._count_pushes(session)
            self._write(HELP)
            await self._send(session, self._simulator.subscribe(self._openid))
            watcher = asyncio.create_task(self._watch_pushes(session), name="chat-pushes")
            try:
                await self._converse(session, lines)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await self._show_pushes(session, wait_s=1.0)
        return 0

    async def _converse(self, session: aiohttp.ClientSession, lines: TextIO) -> None:
        while True:
            self._write("")
            line = await asyncio.to_thread(lines.readline)
            if not line:
                return
            text = line.strip()
            if text in ("/退出", "/quit"):
                return
            if not text:
                continue
            if text in ("/帮助", "/help"):
                self._write(HELP)
                continue
            push = await self._build(session, text)
            self._write(f"我：{text}")
            await self._send(session, push)

    async def _watch_pushes(self, session: aiohttp.ClientSession) -> None:
        """Print pushes as they arrive, whether or not anything is typed: wait for one without
        the lock (a message's own look must not queue behind the wait), then show it."""
        loop = asyncio.get_running_loop()
        while self._dev_api_url is not None:
            started = loop.time()
            try:
                async with session.get(
                    f"{self._dev_api_url}/_sent",
                    params={
                        "touser": self._openid,
                        "after": str(self._pushes_seen),
                        "wait": str(PUSH_WAIT_S),
                    },
                    timeout=aiohttp.ClientTimeout(total=PUSH_WAIT_S + 10),
                ) as response:
                    data = await response.json()
                if int(data["total"]) > self._pushes_seen:
                    await self._show_pushes(session, wait_s=0.0)
                    continue
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                pass  # the server restarting: look again in a moment
            await asyncio.sleep(max(0.0, PUSH_MIN_INTERVAL_S - (loop.time() - started)))

    async def _build(self, session: aiohttp.ClientSession, text: str) -> Push:
        command, _, argument = text.partition(" ")
        openid = self._openid
        if command == "/图片":
            media_id = "dev-media-" + secrets.token_hex(8)
            await self._upload_media(session, media_id, _TINY_PNG, "image/png")
            return self._simulator.image(openid, media_id)
        if command == "/语音":
            media_id = "dev-voice-" + secrets.token_hex(8)
            await self._upload_media(session, media_id, _SILENT_AMR, "audio/amr")
            return self._simulator.voice(openid, media_id, argument.strip() or None)
        if command == "/位置":
            return self._simulator.location(openid, 25.0389, 102.7183, argument.strip() or "昆明市")
        if command == "/关注":
            return self._simulator.subscribe(openid)
        if command == "/取关":
            return self._simulator.unsubscribe(openid)
        return self._simulator.text(openid, text)

    async def _send(self, session: aiohttp.ClientSession, push: Push) -> None:
        delivery = await self._simulator.deliver(session, self._webhook_url, push)
        if isinstance(delivery.reply, Reply) and delivery.reply.content:
            self._write(f"公众号：{delivery.reply.content}")
        elif delivery.status is None:
            self._write("（公众号没有回应：服务器没有在 5 秒内答复，微信已重试 3 次）")
        elif delivery.status != 200:
            self._write(f"（公众号暂时无法提供服务：HTTP {delivery.status}）")
        elif isinstance(delivery.reply, NoReply):
            await self._show_pushes(session, wait_s=8.0)
            return
        await self._show_pushes(session, wait_s=0.0)

    async def _show_pushes(self, session: aiohttp.ClientSession, *, wait_s: float) -> None:
        """Print pushed messages; wait up to ``wait_s`` for the first one to arrive."""
        if self._dev_api_url is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            async with self._pushes_lock:
                async with session.get(
                    f"{self._dev_api_url}/_sent",
                    params={"touser": self._openid, "after": str(self._pushes_seen)},
                ) as response:
                    data = await response.json()
                for text in data["messages"]:
                    self._write(f"公众号（推送）：{text}")
                self._pushes_seen = int(data["total"])
            if data["messages"] or loop.time() >= deadline:
                return
            await asyncio.sleep(0.3)

    async def _count_pushes(self, session: aiohttp.ClientSession) -> int:
        if self._dev_api_url is None:
            return 0
        try:
            async with session.get(
                f"{self._dev_api_url}/_sent", params={"touser": self._openid, "after": "0"}
            ) as response:
                return int((await response.json())["total"])
        except (aiohttp.ClientError, ValueError, KeyError):
            self._dev_api_url = None  # not the development account: pushes cannot be shown
            return 0

    async def _upload_media(
        self, session: aiohttp.ClientSession, media_id: str, content: bytes, content_type: str
    ) -> None:
        """Give the development WeChat API the file behind ``media_id``, as WeChat would hold it."""
        if self._dev_api_url is None:
            return
        async with session.post(
            f"{self._dev_api_url}/_media",
            params={"media_id": media_id, "type": content_type},
            data=content,
        ) as response:
            response.raise_for_status()


def write_line(text: str) -> None:
    print(text, flush=True)


def default_input() -> TextIO:
    return sys.stdin
