"""A media node's heartbeat: it keeps the node registered in Redis while the process runs.

:class:`NodeHeartbeat` registers the node at start-up (refusing, with :class:`NodeIdInUse`,
when another running process holds the node id), renews its registration and its rooms' claims
every :data:`~mediation_rooms.placement.HEARTBEAT_S` in one script, and hands over the rooms a
node lost: taken by another node, or all of them when it could not renew for
:data:`~mediation_rooms.placement.FENCE_AFTER_S` (fencing) or lost its node id. The agreement it
keeps up is described in :mod:`mediation_rooms.placement`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from mediation_rooms.placement import (
    FENCE_AFTER_S,
    HEARTBEAT_S,
    MediaNode,
    MediaPlacement,
    NodeIdInUse,
)

log = logging.getLogger(__name__)

#: A registration under this node id by another instance is watched this often at start-up.
REGISTER_POLL_S = 0.25
#: A key whose expiry moved later by more than this was renewed (a renewal moves it by about
#: HEARTBEAT_S; the round trips alone move it by milliseconds).
RENEWAL_SLACK_S = 1.0


class NodeHeartbeat:
    """Keeps one media node registered while it runs, and reports rooms it lost."""

    def __init__(
        self,
        placement: MediaPlacement,
        node: MediaNode,
        *,
        hosted: Callable[[], Iterable[str]],
        on_lost: Callable[[str], Awaitable[None]],
        interval_s: float = HEARTBEAT_S,
        fence_after_s: float = FENCE_AFTER_S,
    ) -> None:
        self.placement = placement
        self.node = node
        self._hosted = hosted
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._fence_after_s = fence_after_s
        self._task: asyncio.Task[None] | None = None
        self._handing_over: set[asyncio.Future[None]] = set()
        #: When the node's registration was last renewed (monotonic clock).
        self.renewed_at = time.monotonic()
        #: Whether the last beat found another process registered under this node's id.
        self.identity_lost = False

    async def start(self) -> None:
        """Register now (a node is placeable as soon as it serves) and renew in the background.

        Another instance's registration under the node's id is waited for while it may be a
        stopped process's (it runs out within ``NODE_TTL_S``: a restart after a kill);
        as soon as it is seen renewed, a live process uses the id: raises
        :class:`NodeIdInUse`, having written nothing.
        """
        await self._register()
        self.renewed_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"media-node-{self.node.node_id}")

    async def _register(self) -> None:
        first: tuple[str, float] | None = None  # the other instance, and when its key runs out
        while True:
            try:
                await self.placement.register(self.node)
                return
            except NodeIdInUse as taken:
                if taken.remaining_s < 0:
                    raise  # a key that never expires is no stopped process's leftover
                expires = time.monotonic() + taken.remaining_s
                if first is None:
                    first = (taken.holder, expires)
                    log.warning(
                        "media node %s: instance %s is still registered under this id for "
                        "%.1f s; waiting for it to run out (a process that stopped) or be "
                        "renewed (a running process: then this one refuses to start)",
                        self.node.node_id,
                        taken.holder,
                        taken.remaining_s,
                    )
                elif taken.holder != first[0] or expires > first[1] + RENEWAL_SLACK_S:
                    raise  # renewed, or registered anew: a running process uses the id
                pause = min(REGISTER_POLL_S, max(0.01, taken.remaining_s))
            await asyncio.sleep(pause)

    async def stop(self) -> None:
        """Stop renewing and deregister: this node's rooms are vacant at once. (A heartbeat
        that never started registered nothing, and deregisters nothing.)"""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self.placement.deregister(self.node.node_id, list(self._hosted()))

    async def beat(self, timeout_s: float | None = None) -> None:
        """One renewal, within ``timeout_s`` (default: one interval); rooms another node has
        taken over are handed to ``on_lost`` (each in its own task: the next beat must not
        wait for them). Raises :class:`NodeIdInUse` when another process is registered under
        the node's id: every room hosted here has been handed to ``on_lost``."""
        hosted = list(self._hosted())
        started = time.monotonic()  # the TTL runs from no earlier than this
        # Within the fence its key must still be there: if it is gone, Redis lost its data.
        expected = started - self.renewed_at < self._fence_after_s
        try:
            async with asyncio.timeout(timeout_s if timeout_s is not None else self._interval_s):
                lost = await self.placement.heartbeat(self.node, hosted, expected=expected)
                # A room let go while this beat was under way had its claim renewed: drop it
                # again.
                now_hosted = set(self._hosted())
                for room_id in hosted:
                    if room_id not in now_hosted and room_id not in lost:
                        await self.placement.release(room_id, self.node.node_id)
        except NodeIdInUse as taken:
            if not self.identity_lost:
                log.error(
                    "media node %s: %s; this process stops hosting rooms (each media process "
                    "needs its own JIEFEN_MEDIA_NODE_ID)",
                    self.node.node_id,
                    taken,
                )
            self.identity_lost = True
            self._hand_over(self._hosted())
            raise
        self.identity_lost = False
        self.renewed_at = started
        for room_id in lost:
            log.error(
                "room %s: another media node took it over; this node stops hosting it", room_id
            )
            self._spawn(self._on_lost(room_id))

    def _until_fence(self) -> float:
        return self.renewed_at + self._fence_after_s - time.monotonic()

    def _bounded_by_fence(self, seconds: float) -> float:
        remaining = self._until_fence()
        return seconds if remaining <= 0 else min(seconds, remaining)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    def _hand_over(self, rooms: Iterable[str]) -> None:
        for room_id in rooms:
            self._spawn(self._on_lost(room_id))

    async def _run(self) -> None:
        while True:
            # Never sleep or wait past the fencing deadline (it must be checked in time), but
            # once past it (fenced: Redis away), go at the normal pace.
            await asyncio.sleep(self._bounded_by_fence(self._interval_s))
            try:
                await self.beat(timeout_s=max(0.1, self._bounded_by_fence(self._interval_s)))
            except NodeIdInUse:
                pass  # logged, and its rooms handed over, by the beat
            except Exception:
                # Redis unreachable or slow: try again; the TTLs give a few beats' slack.
                log.exception("media node %s: heartbeat failed", self.node.node_id)
            if self._until_fence() <= 0:
                # By now the other processes may take this one for dead and place its rooms
                # elsewhere: stop hosting them here rather than record any room twice.
                hosted = list(self._hosted())
                if hosted:
                    log.error(
                        "media node %s: not renewed for %.0f s; handing over %d room(s)",
                        self.node.node_id,
                        time.monotonic() - self.renewed_at,
                        len(hosted),
                    )
                self._hand_over(hosted)
