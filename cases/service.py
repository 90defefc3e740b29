"""The case desk: opens a case from a finished intake and lists a resident's cases.

The edge between the conversation (``bot.conversation``) and storage (``state.case_store``):
applies the pure rules of this package — routing to an organisation, the deadline in working
days — and turns storage failures into the flow's ``CaseCreationFailed`` so that the resident is
asked to try again with nothing lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from cases.draft import CaseDraft
from cases.routing import RoutingTable
from cases.status import plain_words
from cases.working_days import add_working_days
from flows import events
from jiefen.errors import StorageUnavailable
from state import case_store
from state.personal_data import PersonalDataProtector

log = logging.getLogger(__name__)

CHINA = ZoneInfo("Asia/Shanghai")
#: Working days the organisation has to assign a mediator (人民法院在线调解规则 Art.10).
ASSIGN_WITHIN_WORKING_DAYS = 3


class CaseService:
    """Opens and lists cases for the intake conversation."""

    def __init__(
        self,
        *,
        db: AsyncEngine,
        routing: RoutingTable,
        holidays: frozenset[date],
        protector: PersonalDataProtector,
    ) -> None:
        self._db = db
        self._routing = routing
        self._holidays = holidays
        self._protector = protector

    async def open_case(
        self,
        draft: CaseDraft,
        *,
        openid: str,
        intake: Sequence[dict[str, str]],
        now: datetime,
        submission_key: str,
    ) -> events.CaseCreated | events.CaseCreationFailed:
        """Route and store ``draft``; ``CaseCreationFailed`` when storage is unavailable.

        ``submission_key`` names the intake: filing the same one again returns its case.
        """
        organisation = self._routing.route(draft.category, draft.place.text)
        deadline = add_working_days(
            now.astimezone(CHINA).date(), ASSIGN_WITHIN_WORKING_DAYS, self._holidays
        )
        lines = [
            case_store.IntakeLine(
                direction=line["d"],
                msg_type=line["t"],
                content=line["c"],
                at=datetime.fromisoformat(line["at"]),
            )
            for line in intake
        ]
        try:
            created = await case_store.create_case(
                self._db,
                draft,
                applicant_openid=openid,
                organisation=organisation,
                accept_deadline=deadline,
                intake=lines,
                protector=self._protector,
                now=now,
                submission_key=submission_key,
            )
        except StorageUnavailable as error:
            log.warning("case not created, storage unavailable: %s", error)
            return events.CaseCreationFailed()
        log.info("case %s opened, routed to %s", created.case_no, organisation.code)
        return events.CaseCreated(
            case_no=created.case_no,
            org_name=organisation.name,
            org_phone=organisation.phone,
            accept_deadline=deadline,
        )

    async def list_cases(self, openid: str) -> events.CasesListed:
        """The resident's latest cases, in plain words. Raises ``StorageUnavailable``."""
        listings = await case_store.list_cases_for_openid(self._db, openid)
        return events.CasesListed(
            tuple(
                events.CaseSummary(
                    case_no=listing.case_no,
                    category_label=listing.category.label,
                    status_text=plain_words(listing.status),
                    filed_on=listing.created_at.astimezone(CHINA).date(),
                )
                for listing in listings
            )
        )
