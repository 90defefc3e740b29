"""The WeChat webhook: ``GET /wechat`` (URL check) and ``POST /wechat`` (pushes).

A push is answered within WeChat's 5 s window: passively with the reply when it is ready within
``passive_reply_deadline_s`` (~4 s), else with ``success`` while the reply, when it is ready, goes
out through the customer-service API by the outbox. The hand-over between the two paths is a
future that exactly one side settles, so a reply is never given both ways nor lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from bot import texts
from bot.conversation import AlreadySeen, ConversationService, Processed
from bot.inbound import InboundMessage, WebhookCodec
from bot.outbox import Outbox
from bot.reply_text import split_for_wechat
from flows import events
from jiefen.errors import PayloadTooLarge, RequestRejected
from state.message_gate import Duplicate

log = logging.getLogger(__name__)

#: Bound on each Redis call made here (the gate's calls are bounded by its script lane).
_REDIS_TIMEOUT_S = 5.0
#: How long an answer may wait for its message to take its place in the resident's queue.
_PLACE_WAIT_S = 0.5
#: How long after a push arrives an answer may still come: WeChat gives up at 5 s.
_WECHAT_WAITS_S = 4.8


def _success() -> web.Response:
    """WeChat's "no reply" answer (a new one each time: aiohttp responses are single-use)."""
    return web.Response(text="success", content_type="text/plain")


class WebhookHandler:
    """aiohttp handlers for one Official Account's webhook."""

    def __init__(
        self,
        *,
        codec: WebhookCodec,
        service: ConversationService,
        outbox: Outbox,
        max_body_bytes: int,
        passive_deadline_s: float,
    ) -> None:
        self._codec = codec
        self._service = service
        self._outbox = outbox
        self._max_body_bytes = max_body_bytes
        self._passive_deadline_s = passive_deadline_s
        #: Background tasks still finishing after their request was answered.
        self._background: set[asyncio.Task[None]] = set()

    async def verify(self, request: web.Request) -> web.Response:
        try:
            echostr = self._codec.verify_url(request.query)
        except RequestRejected as error:
            log.warning("webhook URL check refused: %s", error)
            return web.Response(status=error.status, text="forbidden")
        return web.Response(text=echostr, content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            body = await self._read_body(request)
            inbound = self._codec.decode(request.query, body)
        except RequestRejected as error:
            log.warning("webhook push refused (%s): %s", type(error).__name__, error)
            return web.Response(status=error.status, text=type(error).__name__)
        return await self.receive_decoded(inbound, started)

    async def receive_decoded(self, inbound: InboundMessage, started: float) -> web.Response:
        """Handle a checked push; answer by ``started`` + the passive deadline, or for a reply
        already being committed then, by the end of WeChat's window."""
        if isinstance(inbound.event, events.Notice):
            # Not the resident speaking: nothing to store, dedupe or answer.
            log.debug("notice %s from %s ignored", inbound.event.kind, inbound.message_key)
            return _success()
        entered = time.monotonic()
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[Processed | AlreadySeen] = loop.create_future()
        placed: asyncio.Future[None] = loop.create_future()
        passive_until = started + self._passive_deadline_s
        claimed = False

        def on_placed() -> None:
            if not placed.done():
                placed.set_result(None)

        def claim_passive() -> bool:
            # Decided just before the commit. In time, the request promises to wait for the
            # commit; late, the request is let go and the reply is pushed within the commit.
            # Deciding any later (as the request leaves) would queue the push after the turn
            # passed on, where the reply to the resident's next message could overtake it.
            nonlocal claimed
            claimed = not settled.done() and time.monotonic() < passive_until
            if not claimed and not settled.done():
                settled.cancel()  # the reply is pushed: it must not be given passively too
            return claimed

        task = asyncio.create_task(self._process(inbound, settled, claim_passive, on_placed))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            remaining = passive_until - time.monotonic()
            if remaining > 0:
                await asyncio.wait((settled,), timeout=remaining)
            if not settled.done() and not placed.done():
                # Answer only once the message holds its place in the resident's queue (waiting
                # up to _PLACE_WAIT_S for that, even past a short passive deadline): WeChat
                # sends the resident's next message after our answer, and it must not overtake
                # this one.
                await asyncio.wait(
                    (settled, placed),
                    timeout=max(0.0, entered + _PLACE_WAIT_S - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            if not settled.done() and claimed:
                # Claimed passive and being committed (one Redis call, normally milliseconds):
                # the reply is owed here, as long as WeChat still waits for it.
                await asyncio.wait(
                    (settled,), timeout=max(0.0, started + _WECHAT_WAITS_S - time.monotonic())
                )
        finally:
            if not settled.done():
                settled.cancel()  # from now on the reply (if any) is pushed: see _process
        if settled.cancelled():
            return _success()
        if settled.exception() is not None:
            # WeChat shows "service unavailable" for a 500 and may not retry: tell the
            # resident plainly instead (everything they entered before is kept).
            return self._answer(inbound, texts.MESSAGE_NOT_HANDLED)
        outcome = settled.result()
        if isinstance(outcome, AlreadySeen):
            return await self._answer_retry(inbound, outcome, started)
        if outcome.pushed:
            return _success()
        return self._answer(inbound, outcome.reply)

    async def drain(self) -> None:
        """Wait for replies still being computed (at shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=10)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body_bytes:
            raise PayloadTooLarge(f"declared {request.content_length} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(16384):
            body += chunk
            if len(body) > self._max_body_bytes:
                raise PayloadTooLarge(f"over {self._max_body_bytes} bytes")
        return bytes(body)

    async def _process(
        self,
        inbound: InboundMessage,
        settled: asyncio.Future[Processed | AlreadySeen],
        claim_passive: Callable[[], bool],
        on_placed: Callable[[], None],
    ) -> None:
        """Handle ``inbound``; hand the outcome to the waiting request, or push it if it left."""
        try:
            outcome = await self._service.process(
                inbound, claim_passive=claim_passive, on_placed=on_placed
            )
        except Exception as error:
            log.exception("handling %s from a resident failed", inbound.message_key)
            if not settled.done():
                settled.set_exception(error)
                settled.exception()  # retrieved: the request tells the resident to send it again
            else:
                await self._push_quietly(inbound.openid, [texts.MESSAGE_NOT_HANDLED])
            return
        except BaseException:  # cancelled (shutdown): the request must not wait for nothing
            if not settled.done():
                settled.cancel()
            raise
        if not settled.done():
            settled.set_result(outcome)
            return
        if isinstance(outcome, Processed) and outcome.reply and not outcome.pushed:
            # The request left during the commit although it had claimed the reply (the commit
            # outlasted WeChat's window): the record may say "reply", so mark it
            # pushed before pushing (a retry then answers "success", never the reply again).
            # If that fails, push anyway: a reply twice is better than none.
            try:
                async with asyncio.timeout(_REDIS_TIMEOUT_S):
                    await self._service.mark_pushed(outcome.keys)
            except Exception:
                log.exception("could not mark %s pushed", inbound.message_key)
            await self._push_quietly(inbound.openid, split_for_wechat(outcome.reply))

    def _answer(self, inbound: InboundMessage, reply: str) -> web.Response:
        parts = split_for_wechat(reply)
        if not parts:
            return _success()
        if len(parts) > 1:
            # The rest follows by push; the first part is the passive reply.
            task = asyncio.create_task(self._push_quietly(inbound.openid, parts[1:]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return self._passive(inbound, parts[0])

    def _passive(self, inbound: InboundMessage, text: str) -> web.Response:
        """The passive reply XML for ``text`` (one part, within WeChat's limit)."""
        xml = self._codec.encode_reply(inbound, text, nonce=secrets.token_hex(8))
        return web.Response(text=xml, content_type="application/xml")

    async def _answer_retry(
        self, inbound: InboundMessage, seen: AlreadySeen, started: float
    ) -> web.Response:
        """A retry: give the first delivery's passive reply again, never handle it twice."""
        duplicate: Duplicate | None = seen.duplicate
        while duplicate is not None and duplicate.pending:
            if time.monotonic() - started >= self._passive_deadline_s:
                return _success()  # the first delivery pushes its reply when it is done
            await asyncio.sleep(0.05)
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                duplicate = await self._service.read_duplicate(seen.keys)
        if duplicate is None:
            # The first delivery failed and let go of the message: handle it afresh.
            return await self.receive_decoded(inbound, started)
        if duplicate.reply is None:
            return _success()
        parts = split_for_wechat(duplicate.reply)
        if not parts:
            return _success()
        return self._passive(inbound, parts[0])

    async def _push_quietly(self, openid: str, parts: list[str]) -> None:
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                await self._outbox.push(openid, parts)
        except Exception:
            log.exception("could not queue a pushed reply")
