"""A passive reply as WeChat would understand it, and the checks WeChat applies to one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from jiefen.errors import JiefenError


class InvalidReply(JiefenError):
    """The webhook answered something WeChat would refuse (bad signature, appid, XML, ...)."""


@dataclass(frozen=True)
class Article:
    title: str
    description: str
    pic_url: str
    url: str


@dataclass(frozen=True)
class Reply:
    """A passive reply as WeChat understood it (decrypted and verified)."""

    msg_type: str
    to_user: str
    from_user: str
    create_time: int
    #: Text replies.
    content: str | None = None
    #: Image, voice and video replies.
    media_id: str | None = None
    articles: tuple[Article, ...] = ()
    encrypted: bool = False
    #: The reply XML (decrypted when it came encrypted).
    xml: bytes = b""


@dataclass(frozen=True)
class NoReply:
    """The account answered ``success`` or an empty body: WeChat shows nothing, retries nothing."""

    body: str


def parse_reply_xml(data: bytes) -> ET.Element:
    # Replies come from the code under test: refuse DTDs outright rather than trust the parser.
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise InvalidReply("reply XML declares a DTD")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise InvalidReply(f"reply is not XML: {error}") from error
    if root.tag != "xml":
        raise InvalidReply(f"reply root is <{root.tag}>, not <xml>")
    return root


def required_text(root: ET.Element, name: str) -> str:
    value = root.findtext(name)
    if value is None:
        raise InvalidReply(f"reply lacks <{name}>")
    return value


def reply_from_xml(root: ET.Element, *, encrypted: bool, xml: bytes) -> Reply:
    msg_type = required_text(root, "MsgType")
    try:
        create_time = int(required_text(root, "CreateTime"))
    except ValueError as error:
        raise InvalidReply("reply CreateTime is not an integer") from error
    articles: tuple[Article, ...] = ()
    if msg_type == "news":
        items = root.findall("Articles/item")
        articles = tuple(
            Article(
                title=item.findtext("Title") or "",
                description=item.findtext("Description") or "",
                pic_url=item.findtext("PicUrl") or "",
                url=item.findtext("Url") or "",
            )
            for item in items
        )
        # Since 2018 WeChat shows one article per passive news reply.
        if root.findtext("ArticleCount") != str(len(items)) or len(items) != 1:
            raise InvalidReply("a news reply carries exactly one article, counted in ArticleCount")
    if msg_type == "text" and root.find("Content") is None:
        raise InvalidReply("text reply lacks <Content>")
    media_id = None
    for holder in ("Image", "Voice", "Video"):
        found = root.findtext(f"{holder}/MediaId")
        if found is not None:
            media_id = found
    return Reply(
        msg_type=msg_type,
        to_user=required_text(root, "ToUserName"),
        from_user=required_text(root, "FromUserName"),
        create_time=create_time,
        content=root.findtext("Content"),
        media_id=media_id,
        articles=articles,
        encrypted=encrypted,
        xml=xml,
    )
