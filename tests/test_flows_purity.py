"""flows/ is the pure core: no I/O package (STYLE.md rule 2), nothing beyond the stdlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

FLOWS = Path(__file__).resolve().parent.parent / "flows"
FORBIDDEN = {"asyncio", "aiohttp", "redis", "sqlalchemy", "sqlmodel", "wechatpy"}
#: Besides the standard library, flows/ may only import these.
ALLOWED_PROJECT_IMPORTS = {"flows", "cases.draft", "cases.id_number", "jiefen.errors"}
MODULES = sorted(FLOWS.glob("*.py"))


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_there_are_modules_to_check() -> None:
    assert len(MODULES) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    for name in _imports(path):
        assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_only_stdlib_and_allowed_project_imports(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        assert any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_PROJECT_IMPORTS), (
            f"{path.name} imports {name}"
        )
