from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cases.draft import Category
from cases.routing import Organisation, OrganisationKind, RoutingRule, RoutingTable
from config.routing import BUNDLED_ROUTING_FILE, load_routing_table
from jiefen.errors import ConfigurationError

COURT = Organisation("court", "某区法院诉前调解中心", OrganisationKind.COURT_ANNEXED, "0871-1")
LABOUR = Organisation("labour", "劳动争议调委会", OrganisationKind.INDUSTRY, "0871-2")
STREET = Organisation("street", "关上街道调委会", OrganisationKind.COMMUNITY, "0871-3", ("关上",))


def table(*rules: RoutingRule, default: str | None = "court") -> RoutingTable:
    return RoutingTable([COURT, LABOUR, STREET], rules, default)


def test_first_matching_rule_wins_and_default_catches_the_rest() -> None:
    routing = table(
        RoutingRule("labour", categories=frozenset({Category.LABOUR})),
        RoutingRule("street", places=("关上",)),
    )
    assert routing.route(Category.LABOUR, "关上街道") is LABOUR
    assert routing.route(Category.NEIGHBOUR, "官渡区 关上 街道 某小区") is STREET
    assert routing.route(Category.NEIGHBOUR, "太和街道") is COURT
    assert routing.default is COURT


def test_a_rule_needs_both_category_and_place() -> None:
    rule = RoutingRule("street", categories=frozenset({Category.FAMILY}), places=("关上", "世纪城"))
    assert rule.matches(Category.FAMILY, "世纪城春城苑")
    assert not rule.matches(Category.TRAFFIC, "世纪城春城苑")
    assert not rule.matches(Category.FAMILY, "太和街道")


@pytest.mark.parametrize(
    ("organisations", "rules", "default", "message"),
    [
        ([COURT], [RoutingRule("nowhere")], "court", "unknown organisation 'nowhere'"),
        ([COURT], [], None, "needs a default"),
        ([COURT], [], "nowhere", "default organisation 'nowhere'"),
        ([COURT, COURT], [], "court", "appears twice"),
    ],
)
def test_tables_that_could_route_nowhere_are_refused(
    organisations: list[Organisation], rules: list[RoutingRule], default: str | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RoutingTable(organisations, rules, default)


def test_rules_and_organisations_validate_themselves() -> None:
    with pytest.raises(ConfigurationError):
        RoutingRule("x", categories=frozenset())
    with pytest.raises(ConfigurationError):
        RoutingRule("x", places=(" ",))
    with pytest.raises(ConfigurationError, match="phone"):
        Organisation("x", "名称", OrganisationKind.COMMUNITY, "")


def test_the_bundled_kunming_table_loads_and_routes() -> None:
    routing = load_routing_table(None)
    assert load_routing_table(BUNDLED_ROUTING_FILE).organisations == routing.organisations
    kinds = {organisation.kind for organisation in routing.organisations}
    assert kinds == set(OrganisationKind)
    assert routing.default.kind is OrganisationKind.COURT_ANNEXED
    assert all(organisation.phone for organisation in routing.organisations)
    assert routing.route(Category.LABOUR, "关上街道").code == "gd-labour"
    assert routing.route(Category.PROPERTY_MANAGEMENT, "吴井街道").code == "gd-property"
    assert routing.route(Category.TRAFFIC, "金马").code == "gd-traffic"
    assert routing.route(Category.OTHER, "官渡区人民医院").code == "km-medical"
    assert routing.route(Category.NEIGHBOUR, "官渡区关上街道 机场路社区").code == "gd-guanshang"
    assert routing.route(Category.FAMILY, "太和街道").code == "gd-taihe"
    assert routing.route(Category.NEIGHBOUR, "五华区").code == "gd-court-mediation"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.toml"
    path.write_text(text, encoding="utf-8")
    return path


ORG = '[[organisations]]\ncode = "a"\nname = "甲调委会"\nkind = "community"\nphone = "1"\n'


def test_categories_by_code_or_label_and_star(tmp_path: Path) -> None:
    rule = '[[rules]]\ncategories = ["labour", "交通事故"]\norg = "b"\n'
    path = write(tmp_path, 'default = "a"\n' + ORG + ORG.replace('"a"', '"b"') + rule)
    routing = load_routing_table(path)
    assert routing.route(Category.TRAFFIC, "任何地方").code == "b"
    assert routing.route(Category.LABOUR, "任何地方").code == "b"
    assert routing.route(Category.FAMILY, "任何地方").code == "a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default = 'a'\n" + ORG.replace("community", "village"), "kind 'village'"),
        ("default = 'a'\n" + ORG + "[[rules]]\ncategories = ['赌债']\norg = 'a'\n", "赌债"),
        ("default = 'a'\n" + ORG + "[[rules]]\norg = 'b'\n", "unknown organisation 'b'"),
        (ORG, "needs a default"),
        ("default = 'a'\n" + ORG.replace('phone = "1"\n', ""), "'phone'"),
        ("default = 'a'\n" + ORG + "[[rules]]\nplaces = 3\norg = 'a'\n", "'places'"),
        ("default = [\n", "not valid TOML"),
    ],
)
def test_config_mistakes_name_the_file_and_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_routing_table(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_routing_table(tmp_path / "absent.toml")


def test_the_rules_of_cases_import_no_io() -> None:
    modules = ["cases.status", "cases.routing", "cases.working_days", "cases.case_number"]
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + "bad = [m for m in ('asyncio', 'sqlalchemy', 'redis', 'aiohttp', 'sqlmodel') "
        "if m in sys.modules]\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
