"""What the engine says: the current question, the summary, the list of cases.

Pure renderers of a flow and a state into reply text; the words come from :mod:`flows.texts`.
"""

from __future__ import annotations

from flows import texts
from flows.conversation_state import Confirmation, ConversationState, Phase
from flows.events import CasesListed, Event, Location, Media, Voice
from flows.flow import Flow, StepKind

#: At most this many cases are listed in one reply (WeChat's text limit).
MAX_CASES_LISTED = 10


def case_list(event: CasesListed) -> list[str]:
    if not event.cases:
        return [texts.NO_CASES]
    lines = [texts.CASES_TITLE]
    for number, case in enumerate(event.cases[:MAX_CASES_LISTED], 1):
        filed = texts.month_day(case.filed_on)
        lines.append(
            texts.case_line(number, case.case_no, case.category_label, case.status_text, filed)
        )
    if len(event.cases) > MAX_CASES_LISTED:
        lines.append(texts.more_cases(len(event.cases) - MAX_CASES_LISTED))
    return lines


def not_text(event: Event) -> str:
    if isinstance(event, Voice):
        return texts.VOICE_NOT_RECOGNISED
    if isinstance(event, Location):
        return texts.LOCATION_NOT_HERE
    if isinstance(event, Media):
        return texts.TEXT_EXPECTED
    return texts.UNSUPPORTED


def ask(flow: Flow, state: ConversationState) -> str:
    """The question the resident is expected to answer now, in full."""
    if state.confirming is Confirmation.CANCEL:
        return texts.CONFIRM_CANCEL
    if state.confirming is Confirmation.RESTART:
        return texts.CONFIRM_RESTART
    if state.phase is Phase.IDLE:
        return texts.IDLE_HINT
    if state.phase is Phase.SUBMITTING:
        return texts.SUBMITTING
    if state.phase is Phase.REVIEWING:
        return summary(flow, state)
    return question(flow, state)


def question(flow: Flow, state: ConversationState) -> str:
    assert state.step is not None
    step = flow.step(state.step)
    number = flow.item_number(step.key)
    lines = [step.prompt]
    if number is not None and state.editing:
        lines.insert(0, texts.editing_item(number, step.label or ""))
    elif number is not None:
        lines[0] = texts.progress(number, len(flow.items)) + step.prompt
    if step.kind is StepKind.MEDIA:
        lines.append(texts.evidence_so_far(len(state.evidence)))
    elif state.has_answer(step.key) and step.label is not None:
        lines.append(texts.current_value(step.show(state.answer(step.key))))
    lines.append(texts.example_line(step.example))
    return "\n".join(lines)


def summary(flow: Flow, state: ConversationState) -> str:
    lines = [texts.SUMMARY_TITLE]
    for number, step in enumerate(flow.items, 1):
        if step.kind is StepKind.MEDIA:
            shown = step.show(state.evidence)
        elif state.has_answer(step.key):
            shown = step.show(state.answer(step.key))
        else:
            shown = texts.NOT_FILLED
        lines.append(texts.summary_line(number, step.label or "", shown))
    lines.append(texts.REVIEW_INSTRUCTIONS)
    return "\n".join(lines)
