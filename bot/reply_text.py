"""Fitting reply text into WeChat's limits."""

from __future__ import annotations

#: WeChat refuses text messages over 2048 bytes (passive replies and customer-service alike).
WECHAT_TEXT_LIMIT_BYTES = 2048


def split_for_wechat(text: str, limit_bytes: int = WECHAT_TEXT_LIMIT_BYTES) -> list[str]:
    """Split ``text`` into parts of at most ``limit_bytes`` UTF-8 bytes each.

    Cuts at the last paragraph break, else line break, else character that fits, so that no
    character is cut in half and paragraphs stay whole where they can. Empty text gives [].
    """
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest.encode()) <= limit_bytes:
            parts.append(rest)
            break
        cut = _fitting_prefix_length(rest, limit_bytes)
        window = rest[:cut]
        for separator in ("\n\n", "\n"):
            at = window.rfind(separator)
            if at > cut // 3:
                cut = at
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return parts


def _fitting_prefix_length(text: str, limit_bytes: int) -> int:
    size = 0
    for index, char in enumerate(text):
        size += len(char.encode())
        if size > limit_bytes:
            return index
    return len(text)
