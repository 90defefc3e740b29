"""Background jobs of the WeChat edge, and the loop that runs them (other packages add their
own kinds with ``BackgroundJobs.register``, e.g. the recording finalisation of the rooms).

The edge's three kinds, each idempotent (the queue is at-least-once):

- ``wechat.send_text`` — drain one resident's outbox (``bot.outbox``) through the
  customer-service API, in order. A part that fails for a passing reason is retried with
  exponential backoff (parts already sent are not sent again, later replies wait behind it);
  outside the 48-hour window (errcode 45015) the resident is notified by template message when a
  template is configured, else the undelivered replies are buried with the reason for staff to
  follow up by phone.
- ``wechat.fetch_media`` — download a resident's evidence from WeChat's media API into the blob
  store and record it (WeChat keeps temporary media for 3 days only).
- ``intake.callback_request`` — record a resident's 「人工」 request in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.conversation import JOB_CALLBACK_REQUEST, JOB_FETCH_MEDIA
from bot.outbox import JOB_DRAIN_OUTBOX, Outbox, OutboxEntry
from bot.wechat_api import WeChatAPIClient
from jiefen.errors import PermanentJobError, UpstreamError, WeChatAPIError
from state import callback_store, media_store
from state.blob_store import LocalBlobStore
from state.job_queue import Completion, Job, JobQueue

log = logging.getLogger(__name__)

#: Bound on each bookkeeping call to Redis (claim, settle).
_REDIS_TIMEOUT_S = 5.0
#: errcodes that mean "this will never work": do not retry.
_PERMANENT_ERRCODES = {40003, 40007, 43004, 45015, 45047, 48001}
_OUT_OF_WINDOW = 45015
_MEDIA_SUFFIXES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "audio/amr": ".amr",
    "audio/speex": ".speex",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 2.0
    max_delay_s: float = 600.0

    def delay(self, attempts: int) -> float:
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempts - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class BackgroundJobs:
    """Runs the edge's jobs from the shared queue (see module docstring)."""

    def __init__(
        self,
        *,
        jobs: JobQueue,
        outbox: Outbox,
        wechat: WeChatAPIClient,
        db: AsyncEngine,
        evidence: LocalBlobStore,
        max_media_bytes: int,
        notice_template_id: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        idle_poll_s: float = 0.1,
    ) -> None:
        self._jobs = jobs
        self._outbox = outbox
        self._wechat = wechat
        self._db = db
        self._evidence = evidence
        self._max_media_bytes = max_media_bytes
        self._notice_template_id = notice_template_id
        self._retry = retry
        self._idle_poll_s = idle_poll_s
        #: Each handler returns True when it settled the job itself.
        self._handlers: dict[str, Callable[[Job], Awaitable[bool]]] = {
            JOB_DRAIN_OUTBOX: self._drain_outbox,
            JOB_FETCH_MEDIA: self._fetch_media,
            JOB_CALLBACK_REQUEST: self._record_callback,
        }
        #: How long a job of each kind may run; default the queue's lease.
        self._max_runtime_s: dict[str, float] = {}

    def register(
        self,
        kind: str,
        handler: Callable[[Job], Awaitable[bool]],
        *,
        max_runtime_s: float | None = None,
    ) -> None:
        """Run jobs of ``kind`` with ``handler`` (True: it settled the job itself). A handler
        that may run longer than the lease passes ``max_runtime_s`` and renews the lease
        (``JobQueue.extend``) as it goes: past the lease, another worker would take it over."""
        self._handlers[kind] = handler
        if max_runtime_s is not None:
            self._max_runtime_s[kind] = max_runtime_s

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set. A failing job never stops the loop.

        Jobs of a kind registered with ``max_runtime_s`` (long ones, such as rendering a
        recording) run as tasks beside the loop, so they do not hold up the short ones (a
        resident's reply waiting in the outbox). At ``stop`` they are cancelled; their lease
        runs out and another worker takes them over.
        """
        long_running: set[asyncio.Task[None]] = set()

        def spawn(work: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(work)
            long_running.add(task)
            task.add_done_callback(long_running.discard)

        try:
            while not stop.is_set():
                try:
                    worked = await self.run_once(spawn=spawn)
                except Exception:
                    log.exception("job queue unavailable; retrying shortly")
                    worked = False
                if not worked:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self._idle_poll_s)
        finally:
            for task in long_running:
                task.cancel()
            await asyncio.gather(*long_running, return_exceptions=True)

    async def run_once(
        self, *, spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None
    ) -> bool:
        """Claim and run one due job; ``False`` when none was due. With ``spawn``, a long job
        is handed to it to run in the background instead of being awaited here."""
        async with asyncio.timeout(_REDIS_TIMEOUT_S):
            job = await self._jobs.claim()
        if job is None:
            return False
        handler = self._handlers.get(job.kind)
        if handler is None:
            await self._jobs.bury(job, error=f"no handler for kind {job.kind!r}")
            return True
        if spawn is not None and job.kind in self._max_runtime_s:
            spawn(self._run(job, handler))
        else:
            await self._run(job, handler)
        return True

    async def _run(self, job: Job, handler: Callable[[Job], Awaitable[bool]]) -> None:
        try:
            # Past its lease the job is another worker's anyway; this also ends a handler stuck
            # on a half-open connection. Long jobs renew the lease and have their own limit.
            async with asyncio.timeout(self._max_runtime_s.get(job.kind, self._jobs.lease_s)):
                settled = await handler(job)
        except Exception as error:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                await self._fail(job, error)
        else:
            if not settled:
                async with asyncio.timeout(_REDIS_TIMEOUT_S):
                    await self._jobs.complete(job)

    async def _fail(self, job: Job, error: Exception) -> None:
        permanent = isinstance(error, PermanentJobError) or (
            isinstance(error, WeChatAPIError) and error.errcode in _PERMANENT_ERRCODES
        )
        description = f"{type(error).__name__}: {error}"
        if permanent or job.attempts >= self._retry.max_attempts:
            log.error("job %s (%s) failed for good: %s", job.job_id, job.kind, description)
            if job.kind == JOB_DRAIN_OUTBOX:
                await self._bury_with_outbox(job, description)
            else:
                await self._jobs.bury(job, error=description)
            return
        if not isinstance(error, UpstreamError):
            log.exception("job %s (%s) failed", job.job_id, job.kind, exc_info=error)
        delay = self._retry.delay(job.attempts)
        if isinstance(error, UpstreamError) and error.retry_after:
            delay = max(delay, error.retry_after)
        await self._jobs.retry(job, delay_s=delay, error=description)

    async def _drain_outbox(self, job: Job) -> bool:
        openid = str(job.payload["openid"])
        key = self._outbox.key(openid)
        while True:
            entry = await self._outbox.head(openid)
            if entry is None:
                completion = await self._jobs.complete(job, unless_nonempty=key)
                if completion is Completion.MORE_WORK:
                    continue  # a reply was queued meanwhile: keep draining
                return True
            for index, part in enumerate(entry.parts):
                # Renew the lease before every send, and stop the moment another worker has
                # taken the drain over: two drainers would send the same entry twice.
                if not await self._jobs.extend(job):
                    return True
                try:
                    await self._wechat.send_text(openid, part)
                except WeChatAPIError as error:
                    if error.errcode == _OUT_OF_WINDOW:
                        return await self._out_of_window(job, openid, error)
                    await self._keep_unsent(openid, entry, index)
                    raise
                except Exception:
                    await self._keep_unsent(openid, entry, index)
                    raise
            if not await self._outbox.pop_head(openid, entry):
                return True  # another drainer moved the outbox on

    async def _keep_unsent(self, openid: str, entry: OutboxEntry, index: int) -> None:
        if index:
            await self._outbox.replace_head(openid, entry, entry.parts[index:])

    async def _out_of_window(self, job: Job, openid: str, error: WeChatAPIError) -> bool:
        """The 48-hour window is closed: every queued reply would fail the same way."""
        if self._notice_template_id:
            # One notice that messages are waiting (opening the account reopens the window).
            # Sent before the replies are taken, so a failure here leaves them queued.
            head = await self._outbox.head(openid)
            first_line = head.parts[0][:100] if head and head.parts else ""
            await self._wechat.send_template(
                openid, self._notice_template_id, {"first": {"value": first_line}}, None
            )
            await self._outbox.take_all(openid)
            await self._jobs.complete(job, unless_nonempty=self._outbox.key(openid))
            return True
        await self._bury_with_outbox(job, f"{type(error).__name__}: {error}")
        return True

    async def _bury_with_outbox(self, job: Job, error: str) -> None:
        """Bury a drain job together with the replies it could not deliver (for staff)."""
        job.payload["undelivered"] = await self._outbox.take_all(str(job.payload["openid"]))
        await self._jobs.bury(job, error=error)

    async def _fetch_media(self, job: Job) -> bool:
        media_id = str(job.payload["media_id"])
        now = datetime.now(UTC)
        await media_store.media_blob_pending(
            self._db, media_id, str(job.payload["openid"]), str(job.payload["kind"]), now
        )
        try:
            media = await self._wechat.download_media(media_id, max_bytes=self._max_media_bytes)
        except WeChatAPIError as error:
            if error.errcode in _PERMANENT_ERRCODES:
                await media_store.media_blob_failed(self._db, media_id, str(error), now)
            raise
        blob = await self._evidence.put(
            media.content, suffix=_MEDIA_SUFFIXES.get(media.content_type, "")
        )
        await media_store.media_blob_stored(
            self._db,
            media_id,
            blob.key,
            blob.sha256,
            blob.size,
            media.content_type,
            datetime.now(UTC),
        )
        return False

    async def _record_callback(self, job: Job) -> bool:
        payload: dict[str, Any] = job.payload
        await callback_store.record_callback_request(
            self._db,
            str(payload["openid"]),
            payload.get("step"),
            str(payload.get("note") or ""),
            datetime.fromisoformat(str(payload["at"])),
        )
        return False
