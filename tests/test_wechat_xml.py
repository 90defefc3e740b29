"""The push XML reader against xmltodict and wechatpy as references: the same fields from every
push the simulator builds, in every crypto mode; and every document a DTD could hide in refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import xmltodict
from wechatpy import parse_message

from bot.inbound import WebhookCodec
from bot.wechat_simulator import CryptoMode, Push, WeChatSimulator
from bot.wechat_xml import read_push_xml
from flows import events
from jiefen.errors import MalformedMessage
from tests.test_wechat_simulator import AES_KEY, APPID, MESSAGES, OPENID, TOKEN


def _codec(mode: CryptoMode) -> WebhookCodec:
    return WebhookCodec(
        token=TOKEN, appid=APPID, aes_key=AES_KEY, timestamp_tolerance_s=300, crypto_mode=mode
    )


def _plain(value: Any) -> Any:
    """xmltodict's OrderedDicts as plain dicts, for comparison."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_every_push_reads_as_xmltodict_reads_it(kind: str) -> None:
    for mode in CryptoMode:
        push = MESSAGES[kind](WeChatSimulator(TOKEN, APPID, AES_KEY, mode))
        for document in (push.xml, push.body):
            assert read_push_xml(document) == _plain(xmltodict.parse(document)["xml"])
            assert read_push_xml(document.decode()) == read_push_xml(document)


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_every_push_decodes_to_what_wechatpy_parses(kind: str) -> None:
    for mode in CryptoMode:
        push: Push = MESSAGES[kind](WeChatSimulator(TOKEN, APPID, AES_KEY, mode))
        inbound = _codec(mode).decode(push.params, push.body, now=push.create_time)
        reference = parse_message(push.xml)
        assert inbound.encrypted is (mode is not CryptoMode.PLAIN)
        assert (inbound.openid, inbound.account) == (reference.source, reference.target)
        assert inbound.created_at == int(reference.create_time.timestamp())
        if push.msg_id is not None:
            assert inbound.message_key == f"msg:{reference.id}"
        else:
            assert inbound.message_key.startswith(f"event:{OPENID}:{push.create_time}:")
        event = inbound.event
        if isinstance(event, events.Text):
            assert event.content == reference.content
        elif isinstance(event, events.Voice):
            assert (event.media_id, event.recognition) == (
                reference.media_id,
                reference.recognition,
            )
        elif isinstance(event, events.Media):
            assert event.media_id == reference.media_id
        elif isinstance(event, events.Location):
            assert (event.latitude, event.longitude) == tuple(map(float, reference.location))
            assert event.label == reference.label
        elif isinstance(event, events.Subscribe):
            assert reference.event in ("subscribe", "subscribe_scan")
        elif isinstance(event, events.Unsubscribe):
            assert reference.event == "unsubscribe"
        elif isinstance(event, events.Notice):  # not the resident speaking: never answered
            assert reference.type == "event" and event.kind == f"event:{reference.event}"
            assert reference.event not in ("click", "scan", "scancode_waitmsg")
        else:
            assert isinstance(event, events.Unsupported)
            expected = f"event:{reference.event}" if reference.type == "event" else reference.type
            assert event.kind == expected


def test_text_keeps_markup_and_predefined_entities_and_is_stripped_as_wechatpy_strips_it() -> None:
    document = (
        "<xml><ToUserName><![CDATA[gh]]></ToUserName><Content><![CDATA[  a ]]]]><![CDATA[> <b> ]]>"
        "&amp;&lt;&#20013;  </Content><Empty></Empty><Blank>  </Blank></xml>"
    )
    fields = read_push_xml(document)
    assert fields == {"ToUserName": "gh", "Content": "a ]]> <b> &<中", "Empty": None, "Blank": None}
    assert fields == _plain(xmltodict.parse(document)["xml"])


def test_nested_and_repeated_elements_read_as_xmltodict_reads_them() -> None:
    document = (
        "<xml><Event>pic_weixin</Event><SendPicsInfo><Count>2</Count><PicList>"
        "<item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item>"
        "</PicList></SendPicsInfo></xml>"
    )
    assert read_push_xml(document) == _plain(xmltodict.parse(document)["xml"])
    assert read_push_xml(document)["SendPicsInfo"]["PicList"]["item"][1] == {"PicMd5Sum": "b"}


@pytest.mark.parametrize(
    "document",
    [
        '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><C>&x;</C></xml>',
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aa">]><xml><C>&a;</C></xml>',
        '<?xml version="1.0"?>\n<!-- hello --><xml><C>1</C></xml>',
        "<?xml-stylesheet href='x'?><xml/>",
        "<xml><C>&undefined;</C></xml>",
        "<xmlfoo><C>1</C></xmlfoo>",
        "<other><C>1</C></other>",
        "<xml><C>1</C>",
        "not xml at all",
        "",
        b"\xff\xfe<\x00x\x00m\x00l\x00>\x00",
        # The same hostile prologs as bytes (the envelope is bytes, read before its signature
        # is checked), and declared encodings that must never reach a codec.
        b'<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><C>&x;</C></xml>',
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aa">]><xml><C>&a;</C></xml>',
        '<?xml version="1.0" encoding="utf-16"?><xml/>'.encode("utf-16"),
        b"<xml><C>\xd6\xd0</C></xml>",  # GBK bytes
        b"<xml><C>1</C></xml>\x00",
        "<xml><C>\ud800</C></xml>",
        # Nested past MAX_DEPTH: refused, not a RecursionError.
        b"<xml><Encrypt>x</Encrypt><Z>" + b"<a>" * 1000 + b"</a>" * 1000 + b"</Z></xml>",
    ],
)
def test_documents_that_could_carry_a_dtd_or_are_not_a_push_are_refused(
    document: str | bytes,
) -> None:
    with pytest.raises(MalformedMessage):
        read_push_xml(document)


@pytest.mark.parametrize("encoding", ["gbk", "no-such-codec", "base64", "idna", "utf-32", "utf-16"])
def test_a_declared_encoding_is_never_acted_on(encoding: str) -> None:
    document = f'<?xml version="1.0" encoding="{encoding}"?><xml><C>中</C></xml>'
    assert read_push_xml(document.encode()) == {"C": "中"}
    assert read_push_xml(document) == {"C": "中"}


def test_nesting_as_deep_as_wechats_deepest_and_a_little_more_is_read() -> None:
    depth = 8
    document = "<xml>" + "<a>" * depth + "x" + "</a>" * depth + "</xml>"
    value: object = read_push_xml(document)
    for _ in range(depth):
        assert isinstance(value, dict)
        value = value["a"]
    assert value == "x"
    with pytest.raises(MalformedMessage):
        read_push_xml("<xml>" + "<a>" * (depth + 1) + "x" + "</a>" * (depth + 1) + "</xml>")


def test_an_xml_declaration_and_a_byte_order_mark_are_allowed() -> None:
    for document in (
        b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<xml><C>\xe4\xb8\xad</C></xml>',
        '\ufeff<?xml version="1.0" encoding="utf-8"?> <xml><C>中</C></xml>',
        "  <xml><C>中</C></xml>",
    ):
        assert read_push_xml(document) == {"C": "中"}


_HEAD = "<FromUserName>o</FromUserName><CreateTime>1</CreateTime>"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param("<MsgType>text</MsgType><CreateTime>1</CreateTime>", id="no sender"),
        pytest.param(
            "<FromUserName>o</FromUserName><MsgType>text</MsgType><CreateTime>x</CreateTime>",
            id="time not a number",
        ),
        pytest.param(
            "<FromUserName>o</FromUserName><MsgType>text</MsgType>"
            "<CreateTime>99999999999</CreateTime>",
            id="impossible time",
        ),
        pytest.param(_HEAD + "<MsgType><a>b</a></MsgType>", id="nested type"),
        pytest.param(_HEAD + "<Content>x</Content>", id="no type"),
        pytest.param(
            _HEAD + "<MsgType>location</MsgType><Location_X>nan</Location_X><Location_Y>1"
            "</Location_Y>",
            id="coordinates not numbers",
        ),
        pytest.param(_HEAD + "<MsgType>location</MsgType>", id="no coordinates"),
        pytest.param(_HEAD + "<MsgType>text</MsgType><MsgId>abc</MsgId>", id="MsgId not a number"),
        pytest.param(_HEAD + "<MsgType>text</MsgType><MsgId>-1</MsgId>", id="negative MsgId"),
        pytest.param(_HEAD + "<MsgType>image</MsgType><MsgId>1</MsgId>", id="image, no MediaId"),
        pytest.param(
            _HEAD + f"<MsgType>voice</MsgType><MediaId>{'m' * 129}</MediaId><MsgId>1</MsgId>",
            id="MediaId too long",
        ),
    ],
)
def test_a_push_missing_what_every_push_has_is_malformed(fields: str) -> None:
    codec = _codec(CryptoMode.PLAIN)
    simulator = WeChatSimulator(TOKEN, APPID, "", CryptoMode.PLAIN)
    push = simulator.text(OPENID, "x")
    body = f"<xml><ToUserName>gh</ToUserName>{fields}</xml>".encode()
    with pytest.raises(MalformedMessage):
        codec.decode(push.params, body, now=datetime.now().timestamp())


@pytest.mark.parametrize(
    ("msg_id", "key"),
    [("007", "msg:7"), ("5014433938176069824", "msg:5014433938176069824"), ("0", None), ("", None)],
)
def test_the_dedupe_key_of_a_message_is_its_canonical_msgid(msg_id: str, key: str | None) -> None:
    codec = _codec(CryptoMode.PLAIN)
    push = WeChatSimulator(TOKEN, APPID, "", CryptoMode.PLAIN).text(OPENID, "x")
    body = (
        f"<xml><ToUserName>gh</ToUserName><FromUserName>{OPENID}</FromUserName>"
        f"<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>x</Content>"
        f"<MsgId>{msg_id}</MsgId></xml>"
    ).encode()
    inbound = codec.decode(push.params, body, now=datetime.now().timestamp())
    # Without a MsgId (or with 0, which is none) a push is keyed by its sender and time, so
    # that pushes of different residents never share a key.
    assert inbound.message_key == (key or f"msg:{OPENID}:1700000000:text")


def test_the_event_key_names_the_event_as_wechat_sent_it() -> None:
    simulator = WeChatSimulator(TOKEN, APPID, AES_KEY, CryptoMode.SAFE)
    for push, name in [
        (simulator.subscribe(OPENID), "subscribe"),
        (simulator.subscribe(OPENID, scene="court7"), "subscribe"),
        (simulator.click(OPENID, "START"), "click"),
    ]:
        inbound = _codec(CryptoMode.SAFE).decode(push.params, push.body, now=push.create_time)
        assert inbound.message_key == f"event:{OPENID}:{push.create_time}:{name}"
