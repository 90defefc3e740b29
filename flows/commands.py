"""The global commands a resident can type at any step, and how we recognise them.

Matching is on the whole message, tolerant of spaces, full-width forms and punctuation around
it («返回。», « 帮助 »), never on a word inside a longer answer. Which commands apply where is
the engine's business; this module only names them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from flows.validators import bare, parse_integer
from jiefen.errors import InvalidInput


class Command(enum.Enum):
    HELP = "help"  # 帮助
    BACK = "back"  # 返回
    CANCEL = "cancel"  # 取消
    RESTART = "restart"  # 重新开始
    HUMAN = "human"  # 人工
    QUERY = "query"  # 查询
    START = "start"  # 我要调解 (also «1», but only while idle: the engine decides)
    CONFIRM = "confirm"  # 确认 (only meaningful at the summary)
    EDIT = "edit"  # 修改 / 修改 N


_WORDS: dict[str, Command] = {
    **dict.fromkeys(("帮助", "求助", "说明", "help"), Command.HELP),
    **dict.fromkeys(("返回", "上一步", "后退", "回到上一步"), Command.BACK),
    **dict.fromkeys(("取消", "取消申请", "退出"), Command.CANCEL),
    **dict.fromkeys(("重新开始", "重来", "从头开始", "重新填写"), Command.RESTART),
    **dict.fromkeys(("人工", "人工服务", "转人工", "人工客服", "客服"), Command.HUMAN),
    **dict.fromkeys(("查询", "查询案件", "我的案件", "查看进度", "查进度"), Command.QUERY),
    **dict.fromkeys(("我要调解", "调解", "申请调解", "开始"), Command.START),
    **dict.fromkeys(("确认", "确认提交", "提交", "确认无误"), Command.CONFIRM),
    **dict.fromkeys(("修改", "更改"), Command.EDIT),
}
_EDIT_ITEM = re.compile(r"(?:修改|更改|改)第?([0-9]+|[一二三四五六七八九十]+)[项条个]?")


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A recognised command; ``item`` is the number in «修改 N» (``None`` for a bare «修改»)."""

    command: Command
    item: int | None = None


def parse_command(text: str) -> ParsedCommand | None:
    """The command this whole message is, or ``None`` when it is not one."""
    s = bare(text)
    if s in _WORDS:
        return ParsedCommand(_WORDS[s])
    match = _EDIT_ITEM.fullmatch(s)
    if match:
        try:
            return ParsedCommand(Command.EDIT, parse_integer(match.group(1)))
        except InvalidInput:
            return None
    return None
