"""Loading the routing table (organisations, rules, default) from a TOML file.

The format is documented at the top of the bundled example, ``config/routing.toml`` (Kunming,
官渡区), which is used when no file is configured (``Settings.routing_file`` unset). Every
mistake in the file is a ConfigurationError naming the file and the entry, raised at start-up.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from cases.draft import CATEGORY_LABELS, Category
from cases.routing import Organisation, OrganisationKind, RoutingRule, RoutingTable
from jiefen.errors import ConfigurationError

BUNDLED_ROUTING_FILE = Path(__file__).with_name("routing.toml")

_ANY = "*"
_CATEGORY_BY_NAME: dict[str, Category] = {
    **{category.value: category for category in Category},
    **{label: category for category, label in CATEGORY_LABELS.items()},
}


def load_routing_table(path: Path | None = None) -> RoutingTable:
    """Read and validate the routing table at ``path`` (None: the bundled example)."""
    source = path or BUNDLED_ROUTING_FILE
    try:
        with source.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigurationError(f"cannot read routing file {source}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"routing file {source} is not valid TOML: {error}") from error
    try:
        return parse_routing_table(document)
    except ConfigurationError as error:
        raise ConfigurationError(f"routing file {source}: {error}") from error


def parse_routing_table(document: dict[str, Any]) -> RoutingTable:
    """Build a RoutingTable from an already-parsed TOML document."""
    organisations = [
        _organisation(index, entry)
        for index, entry in enumerate(_tables(document, "organisations"), start=1)
    ]
    rules = [_rule(index, entry) for index, entry in enumerate(_tables(document, "rules"), start=1)]
    default = document.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigurationError("'default' must be an organisation code")
    return RoutingTable(organisations, rules, default)


def _tables(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = document.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigurationError(f"'{key}' must be an array of tables ([[{key}]])")
    return entries


def _string(where: str, entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where}: '{key}' must be a non-empty string")
    return value.strip()


def _string_list(where: str, entry: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """A list of strings, or None for "*" or a missing key (meaning: any)."""
    value = entry.get(key, _ANY)
    if value == _ANY:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{where}: '{key}' must be \"*\" or a list of strings")
    return tuple(item.strip() for item in value)


def _organisation(index: int, entry: dict[str, Any]) -> Organisation:
    where = f"organisation {index}"
    kind_text = _string(where, entry, "kind")
    try:
        kind = OrganisationKind(kind_text)
    except ValueError as error:
        allowed = ", ".join(kind.value for kind in OrganisationKind)
        raise ConfigurationError(f"{where}: kind {kind_text!r} is not one of {allowed}") from error
    return Organisation(
        code=_string(where, entry, "code"),
        name=_string(where, entry, "name"),
        kind=kind,
        phone=_string(where, entry, "phone"),
        districts=_string_list(where, entry, "districts") or (),
    )


def _rule(index: int, entry: dict[str, Any]) -> RoutingRule:
    where = f"rule {index}"
    names = _string_list(where, entry, "categories")
    categories: frozenset[Category] | None = None
    if names is not None:
        unknown = [name for name in names if name not in _CATEGORY_BY_NAME]
        if unknown:
            raise ConfigurationError(f"{where}: unknown categories {unknown}")
        categories = frozenset(_CATEGORY_BY_NAME[name] for name in names)
    return RoutingRule(
        org_code=_string(where, entry, "org"),
        categories=categories,
        places=_string_list(where, entry, "places"),
    )
