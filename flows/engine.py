"""The pure engine: ``advance(flow, state, event, now) -> (state, effects)``.

It decides; the edge acts. No I/O, no clock (``now`` comes in), no randomness: the same
arguments always give the same result.

How a resident's message is decided, in order:

1. A pending 取消/重新开始 question takes the answer (是/否; repeating the command means 是).
2. A global command (:mod:`flows.commands`) applies where it makes sense; one that does not
   (「确认」 while collecting) falls through as an ordinary answer.
3. Otherwise the phase decides: idle → start or hint; collecting → the current step's answer;
   reviewing → 确认 / an item number; submitting → please wait.

Contract of the output: every message from the resident gets exactly one :class:`Reply`, except
:class:`Unsubscribe`, a :class:`Notice` (not the resident speaking: nothing changes) and the two
that wait for the edge's feedback («确认» → :class:`CreateCase`, «查询» → :class:`ListCases`),
whose feedback event then gets the reply. Evidence effects
(:class:`FetchMedia`) come before the reply. A voice message with WeChat's recognition text is
read as if typed, anywhere, except at the facts step (its media is kept too) and the evidence
step (it is evidence unless it says «完成»). Images, videos and files sent at a step that wants
text are kept as evidence (after consent) while the question is asked again.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field

from cases.draft import EvidenceItem, EvidenceKind
from flows import prompts, texts
from flows.commands import Command, ParsedCommand, parse_command
from flows.conversation_state import AnswerValue, Confirmation, ConversationState, Phase
from flows.effects import CreateCase, Effect, FetchMedia, ListCases, Reply, RequestHuman
from flows.events import (
    CaseCreated,
    CaseCreationFailed,
    CasesListed,
    Event,
    Location,
    Media,
    Notice,
    Subscribe,
    Text,
    Unsubscribe,
    Voice,
)
from flows.flow import Flow, Step, StepKind
from flows.validators import bare, parse_yes_no
from jiefen.errors import InvalidInput

#: A resident silent for longer than this is greeted back before the conversation goes on.
RETURNING_AFTER = datetime.timedelta(hours=1)
#: From this many invalid answers to one question on, the re-prompt offers 「人工」.
STRIKES_BEFORE_HUMAN = 3
#: The ``RequestHuman.step`` while the resident is at the summary.
SUMMARY_STEP = "summary"


@dataclass(frozen=True, slots=True)
class _Turn:
    flow: Flow
    today: datetime.date
    returning: bool


@dataclass(slots=True)
class _Out:
    state: ConversationState
    lines: list[str] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)


def advance(
    flow: Flow, state: ConversationState, event: Event, now: datetime.datetime
) -> tuple[ConversationState, tuple[Effect, ...]]:
    """The next state of the conversation and what the edge should do, for one event.

    ``now`` should be timezone-aware and of the same kind on every call (it is stored as
    ``last_active``). A state the flow does not know (a step renamed since it was stored) is
    treated as the initial state.
    """
    state = _sane(flow, state)
    if isinstance(event, CaseCreated | CaseCreationFailed | CasesListed):
        out = _on_feedback(flow, state, event)
    elif isinstance(event, Unsubscribe):
        # They can no longer be messaged; a half-filed intake is personal data we no longer need.
        return ConversationState.initial(), ()
    elif isinstance(event, Notice):
        return state, ()
    else:
        turn = _Turn(flow, now.date(), _is_returning(state, now))
        out = _on_message(turn, dataclasses.replace(state, last_active=now), event)
        if out.lines and turn.returning and out.state.phase is not Phase.IDLE:
            out.lines.insert(0, texts.WELCOME_BACK)
    new_state = ConversationState.initial() if out.state.phase is Phase.IDLE else out.state
    effects = list(out.effects)
    if out.lines:
        effects.append(Reply("\n".join(line for line in out.lines if line)))
    return new_state, tuple(effects)


def _sane(flow: Flow, state: ConversationState) -> ConversationState:
    keys = [*state.history, *([state.step] if state.step is not None else [])]
    known = all(flow.has_step(key) for key in keys)
    return state if known else ConversationState.initial()


def _is_returning(state: ConversationState, now: datetime.datetime) -> bool:
    if state.phase is Phase.IDLE or state.last_active is None:
        return False
    try:
        return now - state.last_active > RETURNING_AFTER
    except TypeError:  # naive vs aware datetimes: cannot tell, so do not greet
        return False


# --- feedback from the edge ------------------------------------------------------------------


def _on_feedback(
    flow: Flow, state: ConversationState, event: CaseCreated | CaseCreationFailed | CasesListed
) -> _Out:
    if isinstance(event, CaseCreated):
        text = texts.case_created(
            event.case_no, event.org_name, event.org_phone, event.accept_deadline
        )
        # Only the submission in flight is done; a stray report must not wipe a new intake.
        done = state.phase is Phase.SUBMITTING
        return _Out(ConversationState.initial() if done else state, [text])
    if isinstance(event, CaseCreationFailed):
        if state.phase is not Phase.SUBMITTING:
            return _Out(state)
        return _Out(state.transition(Phase.REVIEWING), [texts.SUBMIT_FAILED])
    lines = prompts.case_list(event)
    if state.phase is Phase.COLLECTING:
        lines += [texts.RESUME_FILING, prompts.question(flow, state)]
    elif state.phase is Phase.REVIEWING:
        lines.append(texts.RESUME_REVIEW)
    return _Out(state, lines)


# --- messages from the resident ---------------------------------------------------------------


def _on_message(turn: _Turn, state: ConversationState, event: Event) -> _Out:
    text = _text_of(event)
    if isinstance(event, Subscribe):
        if state.phase is Phase.IDLE:
            return _Out(state, [texts.WELCOME])
        return _Out(state, [texts.ALREADY_FILING, _ask(turn, state)])
    if state.confirming is not None:
        return _on_confirmation(turn, state, text)
    if text is not None:
        command = parse_command(text)
        if command is not None:
            out = _on_command(turn, state, command)
            if out is not None:
                return out
    if state.phase is Phase.IDLE:
        if text is not None and bare(text) in ("1", "一"):
            return _begin(turn, state)
        return _Out(state, [texts.IDLE_HINT])
    if state.phase is Phase.SUBMITTING:
        return _Out(state, [texts.SUBMITTING])
    if state.phase is Phase.REVIEWING:
        return _on_review(turn, state, event, text)
    return _on_step(turn, state, event, text)


def _text_of(event: Event) -> str | None:
    """What the resident said, as text: typed, or WeChat's recognition of a voice message."""
    if isinstance(event, Voice):
        return event.recognition if event.recognition and event.recognition.strip() else None
    return event.content if isinstance(event, Text) else None


#: Commands that ask 是/否 first, and the question they leave pending.
_CONFIRMATION_OF = {Command.CANCEL: Confirmation.CANCEL, Command.RESTART: Confirmation.RESTART}


def _on_confirmation(turn: _Turn, state: ConversationState, text: str | None) -> _Out:
    assert state.confirming is not None
    pending = state.confirming
    if text is None:
        return _Out(state, [texts.YES_NO_INVALID, _ask(turn, state)])
    command = parse_command(text)
    if command is not None and _CONFIRMATION_OF.get(command.command) is pending:
        yes = True
    else:
        try:
            yes = parse_yes_no(text)
        except InvalidInput as error:
            return _Out(state, [error.message, _ask(turn, state)])
    if not yes:
        state = dataclasses.replace(state, confirming=None)
        return _Out(state, [texts.CONTINUE, _ask(turn, state)])
    if pending is Confirmation.CANCEL:
        return _Out(ConversationState.initial(), [texts.CANCELLED])
    return _begin(turn, ConversationState(last_active=state.last_active), texts.RESTARTED)


_NOTHING_TO_DO_WHEN_IDLE = {
    Command.CANCEL: texts.NOTHING_TO_CANCEL,
    Command.BACK: texts.NOTHING_TO_GO_BACK,
    Command.EDIT: texts.NOTHING_TO_EDIT,
}


def _on_command(turn: _Turn, state: ConversationState, parsed: ParsedCommand) -> _Out | None:
    """The command's outcome, or ``None`` when it does not apply here (read it as an answer)."""
    command, phase = parsed.command, state.phase
    if command is Command.QUERY:
        return _Out(state, effects=[ListCases()])
    if command is Command.HUMAN:
        return _request_human(turn, state)
    if command is Command.HELP:
        return _Out(state, _help(turn, state))
    if command is Command.CONFIRM:
        return _submit(turn, state) if phase in (Phase.REVIEWING, Phase.SUBMITTING) else None
    if phase is Phase.IDLE:
        if command in (Command.START, Command.RESTART):  # nothing to lose: no question asked
            return _begin(turn, state)
        return _Out(state, [_NOTHING_TO_DO_WHEN_IDLE[command], texts.IDLE_HINT])
    if command is Command.START:
        return _Out(state, [texts.ALREADY_FILING, _ask(turn, state)])
    if command in _CONFIRMATION_OF:
        state = dataclasses.replace(state, confirming=_CONFIRMATION_OF[command])
        return _Out(state, [_ask(turn, state)])
    if phase is Phase.SUBMITTING:
        return _Out(state, [texts.SUBMITTING])
    if command is Command.BACK:
        return _back(turn, state)
    if phase is Phase.COLLECTING and not state.editing:  # 修改 mid-way: only 返回 goes back
        return _Out(state, [texts.EDIT_ONLY_AT_SUMMARY, _ask(turn, state)])
    if parsed.item is None:
        return _Out(state, [texts.ASK_WHICH_ITEM])
    return _edit(turn, state, parsed.item)


def _begin(turn: _Turn, state: ConversationState, *before: str) -> _Out:
    state = state.transition(Phase.COLLECTING, step=turn.flow.first.key)
    return _Out(state, [*before, _ask(turn, state)])


def _help(turn: _Turn, state: ConversationState) -> list[str]:
    if state.phase is Phase.IDLE:
        return [texts.WELCOME]
    if state.phase is Phase.REVIEWING:
        return [texts.REVIEW_HELP]
    if state.phase is Phase.SUBMITTING:
        return [texts.SUBMITTING]
    step = _current(turn, state)
    return [step.help, texts.example_line(step.example), texts.COMMANDS]


def _request_human(turn: _Turn, state: ConversationState) -> _Out:
    flow = turn.flow
    if state.phase is Phase.IDLE:
        where, step_key = texts.NOTE_IDLE, None
    elif state.phase is Phase.COLLECTING:
        step = _current(turn, state)
        where, step_key = step.label or texts.NOTE_CONSENT, step.key
    else:
        where, step_key = texts.NOTE_SUMMARY, SUMMARY_STEP
    contact = state.answer(flow.contact_key) if flow.contact_key else None
    note = texts.human_note(
        where, contact if isinstance(contact, str) else None, state.invalid_count
    )
    lines = [texts.HUMAN_REQUESTED]
    if state.phase in (Phase.COLLECTING, Phase.REVIEWING):
        lines += [texts.HUMAN_KEEP_GOING, _ask(turn, state)]
    return _Out(state, lines, [RequestHuman(step_key, note)])


def _back(turn: _Turn, state: ConversationState) -> _Out:
    if state.editing:
        state = state.transition(Phase.REVIEWING)
        return _Out(state, [texts.NOT_EDITED, _ask(turn, state)])
    if not state.history:
        if state.phase is Phase.REVIEWING:  # only a damaged store gets here: re-ask the last step
            state = state.transition(Phase.COLLECTING, step=turn.flow.steps[-1].key)
            return _Out(state, [_ask(turn, state)])
        return _Out(state, [texts.FIRST_STEP, _ask(turn, state)])
    *history, previous = state.history
    state = state.transition(Phase.COLLECTING, step=previous, history=tuple(history))
    return _Out(state, [_ask(turn, state)])


def _edit(turn: _Turn, state: ConversationState, number: int) -> _Out:
    items = turn.flow.items
    if not 1 <= number <= len(items):
        return _Out(state, [texts.no_such_item(number, len(items))])
    state = state.transition(Phase.COLLECTING, step=items[number - 1].key, editing=True)
    return _Out(state, [_ask(turn, state)])


def _submit(turn: _Turn, state: ConversationState) -> _Out:
    flow = turn.flow
    missing = [
        s for s in flow.steps if s.kind is not StepKind.MEDIA and not state.has_answer(s.key)
    ]
    if missing:
        state = state.transition(Phase.COLLECTING, step=missing[0].key, editing=True)
        return _Out(state, [texts.MISSING_ANSWER, _ask(turn, state)])
    try:
        draft = flow.build_draft(state)
    except (TypeError, ValueError):  # answers that cannot make a draft: only a damaged store
        return _Out(ConversationState.initial(), [texts.DRAFT_BROKEN, texts.IDLE_HINT])
    # No reply now: the edge feeds back CaseCreated/CaseCreationFailed, whose advance replies.
    return _Out(state.transition(Phase.SUBMITTING), effects=[CreateCase(draft)])


def _on_review(turn: _Turn, state: ConversationState, event: Event, text: str | None) -> _Out:
    if isinstance(event, Media):
        out = _keep_evidence(turn, state, event.media_id, event.kind, event.title, early=True)
        out.lines.append(texts.REVIEW_INSTRUCTIONS)
        return out
    if text is None:
        return _Out(state, [prompts.not_text(event), texts.REVIEW_INSTRUCTIONS])
    number = bare(text).removeprefix("第").removesuffix("项")
    if number.isascii() and number.isdigit():  # after 「修改」 alone, or instead of 「修改 N」
        return _edit(turn, state, int(number))
    return _invalid(turn, state, texts.REVIEW_INVALID)


# --- answering the current step -------------------------------------------------------------


def _on_step(turn: _Turn, state: ConversationState, event: Event, text: str | None) -> _Out:
    step = _current(turn, state)
    if isinstance(event, Media):
        if step.kind is StepKind.MEDIA:
            return _keep_evidence(turn, state, event.media_id, event.kind, event.title)
        if not _consented(turn.flow, state):  # nothing is kept before consent
            return _Out(state, [texts.TEXT_EXPECTED, _ask(turn, state)])
        out = _keep_evidence(turn, state, event.media_id, event.kind, event.title, early=True)
        out.lines.append(_ask(turn, out.state))
        return out
    if isinstance(event, Voice):
        if step.kind is StepKind.MEDIA and not _says_done(turn, step, text):
            return _keep_evidence(turn, state, event.media_id, EvidenceKind.VOICE, None)
        if step.voice_key is not None:
            return _voice_answer(turn, state, step, event, text)
    if isinstance(event, Location) and step.from_location is not None:
        return _accept(turn, state, step, step.from_location(event))
    if text is None:
        return _Out(state, [prompts.not_text(event), _ask(turn, state)])
    try:
        value = step.parse(text, turn.today)
    except InvalidInput as error:
        return _invalid(turn, state, error.message, step.example)
    if step.kind is StepKind.CONSENT and value is False:
        return _Out(ConversationState.initial(), [texts.DECLINED])
    if step.kind is StepKind.MEDIA:
        return _forward(turn, state, step, [])
    return _accept(turn, state, step, value)


def _accept(turn: _Turn, state: ConversationState, step: Step, value: AnswerValue) -> _Out:
    state = state.with_answer(step.key, value)
    ack = step.acknowledge(value) if step.acknowledge is not None else ""
    return _forward(turn, state, step, [ack])


def _forward(turn: _Turn, state: ConversationState, step: Step, lines: list[str]) -> _Out:
    if state.editing:
        state = state.transition(Phase.REVIEWING)
        return _Out(state, [*lines, texts.EDITED, _ask(turn, state)])
    following = turn.flow.after(step.key)
    history = (*state.history, step.key)
    if following is None:
        state = state.transition(Phase.REVIEWING, history=history)
    else:
        state = state.transition(Phase.COLLECTING, step=following.key, history=history)
    return _Out(state, [*lines, _ask(turn, state)])


def _voice_answer(
    turn: _Turn, state: ConversationState, step: Step, event: Voice, text: str | None
) -> _Out:
    """A voice message at a step that keeps voice (the facts): keep its media, use its text."""
    assert step.voice_key is not None
    effects: list[Effect] = [FetchMedia(event.media_id, EvidenceKind.VOICE)]
    earlier = state.answer(step.voice_key)
    if isinstance(earlier, str) and earlier != event.media_id:  # an earlier voice stays evidence
        state = dataclasses.replace(
            state, evidence=(*state.evidence, EvidenceItem(earlier, EvidenceKind.VOICE))
        )
    state = state.with_answer(step.voice_key, event.media_id)
    if text is None:
        return _Out(state, [texts.FACTS_VOICE_KEPT, texts.example_line(step.example)], effects)
    try:
        value = step.parse(text, turn.today)
    except InvalidInput:
        return _Out(state, [texts.FACTS_VOICE_TOO_SHORT, texts.example_line(step.example)], effects)
    out = _accept(turn, state, step, value)
    out.lines.insert(0, texts.FACTS_VOICE_ACK)
    out.effects[:0] = effects
    return out


def _keep_evidence(
    turn: _Turn,
    state: ConversationState,
    media_id: str,
    kind: EvidenceKind,
    title: str | None,
    *,
    early: bool = False,
) -> _Out:
    count = len(state.evidence)
    said = texts.media_kept_early if early else texts.evidence_received
    if any(item.media_id == media_id for item in state.evidence):  # a repeat: already kept
        return _Out(state, [said(count)])
    if count >= turn.flow.evidence_limit:
        return _Out(state, [texts.evidence_full(turn.flow.evidence_limit)])
    state = dataclasses.replace(
        state, evidence=(*state.evidence, EvidenceItem(media_id, kind, title))
    )
    return _Out(state, [said(count + 1)], [FetchMedia(media_id, kind)])


def _invalid(turn: _Turn, state: ConversationState, message: str, example: str = "") -> _Out:
    if turn.returning:  # back after a while: ask again rather than scold
        return _Out(state, [_ask(turn, state)])
    state = dataclasses.replace(state, invalid_count=state.invalid_count + 1)
    lines = [message, texts.example_line(example) if example else ""]
    if state.invalid_count >= STRIKES_BEFORE_HUMAN:
        lines.append(texts.OFFER_HUMAN)
    return _Out(state, lines)


# --- what to say --------------------------------------------------------------------------------


def _current(turn: _Turn, state: ConversationState) -> Step:
    assert state.step is not None
    return turn.flow.step(state.step)


def _consented(flow: Flow, state: ConversationState) -> bool:
    return all(state.answer(s.key) is True for s in flow.steps if s.kind is StepKind.CONSENT)


def _says_done(turn: _Turn, step: Step, text: str | None) -> bool:
    """Whether a voice message at the evidence step says «完成» rather than being evidence."""
    if text is None:
        return False
    try:
        step.parse(text, turn.today)
    except InvalidInput:
        return False
    return True


def _ask(turn: _Turn, state: ConversationState) -> str:
    return prompts.ask(turn.flow, state)
