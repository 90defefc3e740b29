"""Runs one resident's message through the intake flow and carries out what the flow decides.

The flow (``flows.engine.advance``) is pure; this module is its edge. For each message:
take the resident's turn through the :class:`state.message_gate.MessageGate` (dedupe + ordering +
stored conversation), advance the flow, perform its effects — opening a case and listing cases
feed their result back into the flow; evidence downloads and call-back requests go to the job
queue so that the reply is not held up — then commit the new conversation and the reply.

The stored conversation is sealed (AES-GCM) because it holds personal data: names, phones, the
ID number. Its transcript masks ID numbers before they are stored at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from bot.inbound import InboundMessage
from bot.outbox import Outbox
from bot.reply_text import split_for_wechat
from flows import effects, events
from flows.conversation_state import ConversationState
from flows.engine import advance
from flows.intake import INTAKE_FLOW
from jiefen.errors import ConfigurationError
from state.job_queue import JobQueue
from state.message_gate import Duplicate, GateKeys, MessageGate, Turn
from state.personal_data import redact_id_numbers

log = logging.getLogger(__name__)

#: Associated data of the sealed conversation and transcript entries: a token sealed for one
#: purpose won't open as another.
CONVERSATION_PURPOSE = "conversation"
TRANSCRIPT_PURPOSE = "intake-transcript"

JOB_FETCH_MEDIA = "wechat.fetch_media"
JOB_CALLBACK_REQUEST = "intake.callback_request"


class CaseDesk(Protocol):
    """What the conversation needs from the case side (implemented by ``cases.service``)."""

    async def open_case(
        self,
        draft: Any,
        *,
        openid: str,
        intake: list[dict[str, str]],
        now: datetime,
        submission_key: str,
    ) -> events.CaseCreated | events.CaseCreationFailed: ...

    async def list_cases(self, openid: str) -> events.CasesListed: ...


class Sealer(Protocol):
    """Authenticated encryption of text (``state.personal_data.PersonalDataProtector``)."""

    def encrypt(self, plaintext: str, *, purpose: str) -> str: ...

    def decrypt(self, token: str, *, purpose: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Processed:
    """A message handled now: ``reply`` is the whole reply text ('' when none is owed)."""

    keys: GateKeys
    reply: str
    #: The reply was queued in the resident's outbox (the request had left by commit time).
    pushed: bool = False


@dataclass(frozen=True, slots=True)
class AlreadySeen:
    """A retry of a message handled (or being handled) elsewhere."""

    keys: GateKeys
    duplicate: Duplicate


@dataclass(slots=True)
class StoredConversation:
    """What the gate stores per resident: the flow state and when the intake began.

    The intake transcript is stored beside it, one sealed entry per message (``MessageGate``
    appends); here are only ``new_lines``, recorded while handling the current message.
    """

    flow_state: ConversationState
    #: When this intake began (ISO time of its first message): names it for the case store.
    began: str = ""
    new_lines: list[dict[str, str]] = field(default_factory=list)

    def dump(self) -> str:
        return orjson.dumps(
            {"v": 2, "flow": self.flow_state.to_dict(), "began": self.began}
        ).decode()

    @classmethod
    def load(cls, raw: str) -> StoredConversation:
        """Parse a stored conversation; anything unreadable starts afresh (and is logged)."""
        if not raw:
            return cls(ConversationState.initial())
        try:
            data = orjson.loads(raw)
            return cls(ConversationState.from_dict(data["flow"]), str(data.get("began") or ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable stored conversation; starting afresh")
            return cls(ConversationState.initial())

    def submission_key(self, account: str, openid: str) -> str:
        """Names this intake: the resident and the moment it began (kept apart from the
        transcript, whose oldest entries are dropped past its cap).

        Confirming the same intake twice gives the same key, so the case store files it once.
        """
        digest = hashlib.sha256(f"{account}\x00{openid}\x00{self.began}".encode()).hexdigest()
        return "intake:" + digest[:48]

    def record(self, direction: str, msg_type: str, content: str, at: datetime) -> None:
        """Add a transcript line (ID numbers masked before anything is stored)."""
        if not self.began:
            self.began = at.isoformat()
        self.new_lines.append(
            {"d": direction, "t": msg_type, "c": redact_id_numbers(content), "at": at.isoformat()}
        )


class ConversationService:
    """Handles inbound messages one at a time per resident (see module docstring)."""

    def __init__(
        self,
        *,
        gate: MessageGate,
        jobs: JobQueue,
        desk: CaseDesk,
        sealer: Sealer,
        outbox: Outbox,
        redis_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._gate = gate
        self._jobs = jobs
        self._desk = desk
        self._sealer = sealer
        self._outbox = outbox
        # A message may wait behind a few dead turns (each skipped after one lease); its HTTP
        # request has long been answered by then, so waiting costs the resident nothing.
        lease_s = gate.turn_lease_s
        self._turn_wait_s = 4 * lease_s
        # Handling must end well inside the lease, or the turn is presumed dead and skipped.
        self._handling_limit_s = max(lease_s - 5.0, lease_s / 2)
        self._redis_timeout_s = redis_timeout_s
        self._clock = clock

    async def process(
        self,
        inbound: InboundMessage,
        *,
        claim_passive: Callable[[], bool] = lambda: True,
        on_placed: Callable[[], None] | None = None,
    ) -> Processed | AlreadySeen:
        """Handle ``inbound`` exactly once across retries and processes.

        ``claim_passive()`` is called once, just before the commit: true binds the caller to
        give the reply passively (it waits for the commit to finish); false makes the reply join
        the resident's outbox within the commit, so pushed replies keep their messages' order,
        and the dedupe record says "pushed", so a retry never repeats it.
        ``on_placed()`` is called once the message holds its place in the resident's queue (or
        turned out to be a retry), so the caller can answer WeChat without letting a later
        message of the same resident overtake this one.
        On any failure the turn is released and the dedupe record dropped, so that WeChat's
        retry of the same message is handled afresh: nothing the resident sent is lost.
        """
        keys = self._gate.keys(inbound.account, inbound.openid, inbound.message_key)
        begun = await self._gate.begin(keys)  # bounded: the gate's script lane times each call
        if on_placed is not None:
            on_placed()
        if isinstance(begun, Duplicate):
            return AlreadySeen(keys, begun)
        turn = begun
        try:
            if not turn.ready:
                turn = await self._gate.wait_turn(keys, turn, timeout_s=self._turn_wait_s)
            conversation = self._open(turn)
            async with asyncio.timeout(self._handling_limit_s):
                reply = await self._run_flow(inbound, conversation, keys)
            blank = _is_blank(conversation)
            stored = (
                b""
                if blank
                else self._sealer.encrypt(
                    conversation.dump(), purpose=CONVERSATION_PURPOSE
                ).encode()
            )
            lines = [] if blank or not conversation.new_lines else [self._seal_lines(conversation)]
            parts = split_for_wechat(reply)
            pushed = bool(parts) and not claim_passive()
            await self._gate.commit(
                keys,
                turn,
                conversation=stored,
                reply=None if pushed else reply,
                transcript=lines,
                push=self._outbox.append(inbound.openid, parts) if pushed else None,
            )
        except BaseException:
            await asyncio.shield(self._release_quietly(keys, turn))
            raise
        if pushed:
            async with asyncio.timeout(self._redis_timeout_s):
                await self._outbox.schedule(inbound.openid)
        return Processed(keys, reply, pushed)

    async def mark_pushed(self, keys: GateKeys) -> None:
        await self._gate.mark_pushed(keys)

    async def read_duplicate(self, keys: GateKeys) -> Duplicate | None:
        return await self._gate.read_dedupe(keys)

    def _open(self, turn: Turn) -> StoredConversation:
        if not turn.conversation:
            return StoredConversation(ConversationState.initial())
        try:
            token = turn.conversation.decode()
            return StoredConversation.load(
                self._sealer.decrypt(token, purpose=CONVERSATION_PURPOSE)
            )
        except (ValueError, ConfigurationError):
            log.warning("stored conversation cannot be unsealed (key rotated?); starting afresh")
            return StoredConversation(ConversationState.initial())

    def _seal_lines(self, conversation: StoredConversation) -> bytes:
        """This message's transcript lines as one sealed entry (a JSON list of lines)."""
        text = orjson.dumps(conversation.new_lines).decode()
        return self._sealer.encrypt(text, purpose=TRANSCRIPT_PURPOSE).encode()

    async def _transcript(
        self, keys: GateKeys, conversation: StoredConversation
    ) -> list[dict[str, str]]:
        """The whole intake transcript: the stored lines, then this message's."""
        async with asyncio.timeout(self._redis_timeout_s):
            stored = await self._gate.read_transcript(keys)
        lines: list[dict[str, str]] = []
        for sealed in stored:
            try:
                text = self._sealer.decrypt(sealed.decode(), purpose=TRANSCRIPT_PURPOSE)
                entry = orjson.loads(text)
                # One entry per message (a list of lines); a single line in entries stored
                # before that (an intake begun before an upgrade may still be in Redis).
                for line in entry if isinstance(entry, list) else [entry]:
                    lines.append({str(k): str(v) for k, v in line.items()})
            except (ValueError, ConfigurationError, AttributeError):
                log.warning("unreadable transcript entry skipped")
        return lines + conversation.new_lines

    async def _run_flow(
        self, inbound: InboundMessage, conversation: StoredConversation, keys: GateKeys
    ) -> str:
        now = self._clock()
        said = INTAKE_FLOW.transcript_text(conversation.flow_state, inbound.transcript_text)
        conversation.record("in", inbound.msg_type, said, now)
        state, pending = advance(INTAKE_FLOW, conversation.flow_state, inbound.event, now)
        queue = list(pending)
        replies: list[str] = []
        while queue:
            effect = queue.pop(0)
            feedback: events.Event | None = None
            if isinstance(effect, effects.Reply):
                replies.append(effect.text)
                conversation.record("out", "text", effect.text, now)
            elif isinstance(effect, effects.CreateCase):
                feedback = await self._desk.open_case(
                    effect.draft,
                    openid=inbound.openid,
                    intake=await self._transcript(keys, conversation),
                    now=now,
                    submission_key=conversation.submission_key(inbound.account, inbound.openid),
                )
            elif isinstance(effect, effects.ListCases):
                feedback = await self._desk.list_cases(inbound.openid)
            elif isinstance(effect, effects.FetchMedia):
                await self._jobs.enqueue(
                    JOB_FETCH_MEDIA,
                    {
                        "media_id": effect.media_id,
                        "kind": effect.kind.value,
                        "openid": inbound.openid,
                    },
                    job_id=f"media:{effect.media_id}",
                )
            elif isinstance(effect, effects.RequestHuman):
                await self._jobs.enqueue(
                    JOB_CALLBACK_REQUEST,
                    {
                        "openid": inbound.openid,
                        "step": effect.step,
                        "note": effect.note,
                        "at": now.isoformat(),
                    },
                    # A message handled again (after a failure) records the request once.
                    job_id=f"callback:{inbound.account}:{inbound.message_key}",
                )
            if feedback is not None:
                state, more = advance(INTAKE_FLOW, state, feedback, now)
                queue[0:0] = more
        if state.phase is not conversation.flow_state.phase:
            log.info(
                "conversation %s: %s -> %s",
                inbound.message_key,
                conversation.flow_state.phase.value,
                state.phase.value,
            )
        conversation.flow_state = state
        return "\n\n".join(replies)

    async def _release_quietly(self, keys: GateKeys, turn: Turn) -> None:
        try:
            async with asyncio.timeout(self._redis_timeout_s):
                await self._gate.release(keys, turn)
        except Exception:  # Redis itself failing: the turn lease expires on its own
            log.exception("could not release turn %s", turn.ticket)


def _is_blank(conversation: StoredConversation) -> bool:
    """A conversation worth no storage: no intake in progress (its state is then initial).

    Its transcript is then either stored with the case already or must not be kept at all:
    committing a blank conversation deletes the stored lines and appends none.
    """
    return conversation.flow_state == ConversationState.initial()
