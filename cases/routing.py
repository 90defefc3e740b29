"""Routing a new case to a mediation organisation: rules from config, first match wins.

A ``RoutingRule`` matches a case when its category is among the rule's categories (or the rule
takes any category) and one of its place keywords occurs in the resident's place text (or the
rule takes any place). Rules are tried in order; when none matches, the table's default
organisation (typically the court-annexed mediation centre) takes the case. A table that
could send a case nowhere — a rule or default naming an unknown organisation — is refused when
it is built, so ``route`` always returns an organisation.

Pure: loading the table from TOML lives in ``config.routing``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cases.draft import Category
from jiefen.errors import ConfigurationError


class OrganisationKind(enum.Enum):
    """人民调解委员会 (community), 行业性专业性调委会 (industry), 特邀调解组织 (court-annexed)."""

    COMMUNITY = "community"
    INDUSTRY = "industry"
    COURT_ANNEXED = "court_annexed"


@dataclass(frozen=True, slots=True)
class Organisation:
    """A mediation organisation as configured. ``districts`` are the areas it serves (shown)."""

    code: str
    name: str
    kind: OrganisationKind
    phone: str
    districts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.code.strip():
            raise ConfigurationError("an organisation needs a code")
        if not self.name.strip():
            raise ConfigurationError(f"organisation {self.code!r} needs a name")
        if not self.phone.strip():
            raise ConfigurationError(f"organisation {self.code!r} needs a phone number")


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Send cases of ``categories`` (None: any) at ``places`` (None: any) to ``org_code``.

    ``places`` are keywords looked for in the place text, e.g. ``("关上", "世纪城")``.
    """

    org_code: str
    categories: frozenset[Category] | None = None
    places: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.categories is not None and not self.categories:
            raise ConfigurationError(f"rule for {self.org_code!r} has an empty category list")
        if self.places is not None and (not self.places or not all(p.strip() for p in self.places)):
            raise ConfigurationError(f"rule for {self.org_code!r} has an empty place keyword")

    def matches(self, category: Category, place_text: str) -> bool:
        if self.categories is not None and category not in self.categories:
            return False
        if self.places is None:
            return True
        text = _normalise(place_text)
        return any(_normalise(keyword) in text for keyword in self.places)


def _normalise(text: str) -> str:
    # Residents type places with stray spaces ("官渡区 关上街道"); keywords never need them.
    return "".join(text.split())


class RoutingTable:
    """Organisations, ordered rules and a default; validated on construction.

    Raises ConfigurationError for duplicate organisation codes, a rule naming an unknown
    organisation, or a missing or unknown default.
    """

    def __init__(
        self,
        organisations: Iterable[Organisation],
        rules: Sequence[RoutingRule],
        default_org_code: str | None,
    ) -> None:
        by_code: dict[str, Organisation] = {}
        for organisation in organisations:
            if organisation.code in by_code:
                raise ConfigurationError(f"organisation code {organisation.code!r} appears twice")
            by_code[organisation.code] = organisation
        for index, rule in enumerate(rules, start=1):
            if rule.org_code not in by_code:
                raise ConfigurationError(
                    f"routing rule {index} names unknown organisation {rule.org_code!r}"
                )
        if not default_org_code:
            raise ConfigurationError("the routing table needs a default organisation")
        if default_org_code not in by_code:
            raise ConfigurationError(f"default organisation {default_org_code!r} is unknown")
        self._by_code = by_code
        self._rules = tuple(rules)
        self._default = by_code[default_org_code]

    @property
    def organisations(self) -> tuple[Organisation, ...]:
        return tuple(self._by_code.values())

    @property
    def rules(self) -> tuple[RoutingRule, ...]:
        return self._rules

    @property
    def default(self) -> Organisation:
        return self._default

    def organisation(self, code: str) -> Organisation:
        """The organisation with ``code``; KeyError if there is none."""
        return self._by_code[code]

    def route(self, category: Category, place_text: str) -> Organisation:
        """The organisation of the first rule matching the case, else the default."""
        for rule in self._rules:
            if rule.matches(category, place_text):
                return self._by_code[rule.org_code]
        return self._default
