"""WeChat's push XML, read into fields: quickly, and with no document type declaration allowed.

WeChat pushes one small document per message: an ``<xml>`` root with one element per field,
text in CDATA sections; a few events nest a level (``ScanCodeInfo``, ``SendPicsInfo``).
:func:`read_push_xml` returns that root's children as a dict shaped as xmltodict (the reader
wechatpy uses) shapes it, so a field reads the same either way:

- a leaf element gives its text stripped of surrounding whitespace, or ``None`` when empty;
- an element with children gives a dict of them; a name repeated among siblings gives a list.

Attributes and text mixed with child elements are dropped: WeChat sends neither.

Why not xmltodict: it drives expat with Python callbacks for every element, ~3x the cost of
ElementTree's C tree builder, on every message of the webhook's hot path (issue 2's CPU budget).

Safety: entities are declared in a document type declaration, and a declaration can only stand
before the root element. The reader refuses any document in which anything but an XML
declaration and whitespace comes before ``<xml``, so none can be present; with no declaration,
expat refuses every entity reference but the five predefined ones ("undefined entity"). An
external entity (XXE) or an entity-expansion bomb is therefore refused before anything is
expanded or fetched. Bytes are decoded as UTF-8 (WeChat's only encoding) before parsing, so a
declared ``encoding`` is never acted on: no codec trick can reinterpret the prolog, and an
unknown or multi-byte codec name cannot raise out of the parser. Nesting is capped at
``MAX_DEPTH`` (WeChat nests four levels), so a deep document cannot exhaust the stack.
Everything refused raises :class:`~jiefen.errors.MalformedMessage`, nothing else.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from typing import Any

from jiefen.errors import MalformedMessage

#: What may precede the root: a byte-order mark, whitespace, one XML declaration. Nothing else.
_PROLOG = re.compile(r"\A\ufeff?[ \t\r\n]*(?:<\?xml[ \t\r\n][^<>]*\?>[ \t\r\n]*)?<xml[ \t\r\n/>]")
#: Levels of elements below the root (WeChat's deepest: SendPicsInfo/PicList/item/PicMd5Sum).
MAX_DEPTH = 8


def read_push_xml(document: str | bytes) -> dict[str, Any]:
    """The fields of one WeChat push (the children of its ``<xml>`` root), shaped as above.

    Raises :class:`~jiefen.errors.MalformedMessage` for anything else: not XML, another root,
    a document type declaration or anything else before the root, an undefined entity.
    """
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("push XML is not UTF-8") from None
    if _PROLOG.match(document) is None:
        raise MalformedMessage("push XML must open with its <xml> root (no DTD, nothing else)")
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as error:
        raise MalformedMessage(f"unparseable push XML: {error}") from None
    except ValueError:  # a lone surrogate in text cannot be handed to expat as UTF-8
        raise MalformedMessage("push XML holds characters that are not text") from None
    if root.tag != "xml":  # e.g. <xmlfoo>, which the prolog check lets through
        raise MalformedMessage(f"push XML has the root <{root.tag}>, not <xml>")
    return _children(root, MAX_DEPTH)


def _children(element: ElementTree.Element, depth_left: int) -> dict[str, Any]:
    if depth_left == 0:
        raise MalformedMessage(f"push XML nests deeper than {MAX_DEPTH} levels")
    fields: dict[str, Any] = {}
    for child in element:
        value: Any = _children(child, depth_left - 1) if len(child) else _text(child.text)
        if child.tag not in fields:
            fields[child.tag] = value
        elif isinstance(previous := fields[child.tag], list):
            previous.append(value)
        else:
            fields[child.tag] = [previous, value]
    return fields


def _text(text: str | None) -> str | None:
    return (text.strip() or None) if text else None
