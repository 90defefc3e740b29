"""The validators, table by table: what residents type, what we keep, what we say is wrong."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from cases.draft import Category, LanguageNeed, MediationMode, Place
from cases.id_number import id_check_code, mask_id_number
from flows import texts
from flows.validators import (
    parse_amount,
    parse_category,
    parse_claim,
    parse_consent,
    parse_evidence_done,
    parse_facts,
    parse_id_number,
    parse_integer,
    parse_language,
    parse_mode,
    parse_name,
    parse_optional_phone,
    parse_party_name,
    parse_phone,
    parse_place,
    parse_yes_no,
)
from jiefen.errors import InvalidInput

TODAY = datetime.date(2026, 11, 21)


def with_check(first17: str) -> str:
    return first17 + id_check_code(first17)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("13800138000", "13800138000"),
        ("138 0013 8000", "13800138000"),
        ("138-0013-8000", "13800138000"),
        ("+86 138-0013-8000", "13800138000"),
        ("86 13800138000", "13800138000"),
        ("0086 13800138000", "13800138000"),
        ("１３８００１３８０００", "13800138000"),  # full-width digits
        ("＋８６　１３９－００１３－９０００", "13900139000"),
        ("(138)00138000", "13800138000"),
        (" 19912345678。", None),  # trailing full stop is not a digit: rejected
    ],
)
def test_parse_phone(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidInput):
            parse_phone(text)
    else:
        assert parse_phone(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", texts.EMPTY),
        ("1380013800", texts.phone_wrong_length(10)),
        ("138001380001", texts.phone_wrong_length(12)),
        ("12800138000", texts.PHONE_BAD_PREFIX),
        ("0871-6512345", texts.PHONE_BAD_PREFIX),
        ("电话13800138000", texts.PHONE_NOT_DIGITS),
        ("abc", texts.PHONE_NOT_DIGITS),
    ],
)
def test_parse_phone_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_phone(text)
    assert caught.value.message == message


@pytest.mark.parametrize("text", ["不知道", "不清楚", "无", "没有", " 不知道。", "不晓得"])
def test_parse_optional_phone_unknown(text: str) -> None:
    assert parse_optional_phone(text) is None


def test_parse_optional_phone_still_validates() -> None:
    assert parse_optional_phone("+8613900139000") == "13900139000"
    with pytest.raises(InvalidInput):
        parse_optional_phone("139")


# --- ID numbers -----------------------------------------------------------------------------


def test_known_sample_id_checksum() -> None:
    assert id_check_code("11010519491231002") == "X"
    assert parse_id_number("11010519491231002x", today=TODAY) == "11010519491231002X"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (with_check("53010219900307123"), with_check("53010219900307123")),
        ("  110105 19491231 002X ", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２ｘ", "11010519491231002X"),  # full-width, lower x
        (with_check("53272519880229001"), with_check("53272519880229001")),  # leap day
        (with_check("53010220261121001"), with_check("53010220261121001")),  # born today
    ],
)
def test_parse_id_number_accepts(text: str, expected: str) -> None:
    assert parse_id_number(text, today=TODAY) == expected


def _wrong_check(first17: str) -> str:
    right = id_check_code(first17)
    return first17 + ("1" if right != "1" else "2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", texts.EMPTY),
        ("53010219900307123", texts.id_wrong_length(17)),
        ("5301021990030712345", texts.id_wrong_length(19)),
        ("53010219900307123Y", texts.ID_BAD_CHARS),
        ("5301021990030712X3", texts.ID_BAD_CHARS),
        (with_check("00010219900307123"), texts.ID_BAD_REGION),
        (with_check("99010219900307123"), texts.ID_BAD_REGION),
        (with_check("53010219900230123"), texts.ID_BAD_BIRTH_DATE),  # 2月30日
        (with_check("53010219890229123"), texts.ID_BAD_BIRTH_DATE),  # not a leap year
        (with_check("53010219901301123"), texts.ID_BAD_BIRTH_DATE),  # month 13
        (with_check("53010218891231123"), texts.ID_BAD_BIRTH_DATE),  # before 1900
        (with_check("53010220261122123"), texts.ID_FUTURE_BIRTH_DATE),  # tomorrow
        (with_check("53010230000101123"), texts.ID_FUTURE_BIRTH_DATE),
        (_wrong_check("53010219900307123"), texts.ID_BAD_CHECKSUM),
        ("110105194912310021", texts.ID_BAD_CHECKSUM),  # X expected
    ],
)
def test_parse_id_number_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_id_number(text, today=TODAY)
    assert caught.value.message == message


def test_every_single_digit_typo_fails_the_checksum() -> None:
    good = with_check("53010219900307123")
    for position in range(18):
        for char in "0123456789X":
            typo = good[:position] + char + good[position + 1 :]
            if typo == good:
                continue
            with pytest.raises(InvalidInput):
                parse_id_number(typo, today=TODAY)


def test_mask_id_number() -> None:
    assert mask_id_number("53010219900101123X") == "5301**********123X"
    assert mask_id_number("1234") == "****"


# --- amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3000", Decimal(3000)),
        ("3,000", Decimal(3000)),
        ("3，000", Decimal(3000)),
        ("3 000", Decimal(3000)),
        ("1 280 000元", Decimal(1280000)),
        ("3000元", Decimal(3000)),
        ("３０００元", Decimal(3000)),
        ("三千五百元", Decimal(3500)),
        ("三千五", Decimal(3500)),
        ("3.5万", Decimal(35000)),
        ("1.2万元", Decimal(12000)),
        ("一万二", Decimal(12000)),
        ("两万", Decimal(20000)),
        ("两万五千", Decimal(25000)),
        ("壹仟", Decimal(1000)),
        ("壹万贰仟叁佰元整", Decimal(12300)),
        ("十五", Decimal(15)),
        ("一百二", Decimal(120)),
        ("一千零五", Decimal(1005)),
        ("十万", Decimal(100000)),
        ("五十万", Decimal(500000)),
        ("3千", Decimal(3000)),
        ("1万5千", Decimal(15000)),
        ("一亿二千万", Decimal(120000000)),
        ("大约3000块钱", Decimal(3000)),
        ("¥1,280.50", Decimal("1280.50")),
        ("99.999", Decimal("100.00")),
        ("三千多元", Decimal(3000)),
        ("无", None),
        ("没有", None),
        ("0", None),
        ("零", None),
        ("不涉及", None),
    ],
)
def test_parse_amount(text: str, expected: Decimal | None) -> None:
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-3000", texts.AMOUNT_NEGATIVE),
        ("负三千", texts.AMOUNT_NEGATIVE),
        ("很多钱", texts.AMOUNT_INVALID),
        ("abc", texts.AMOUNT_INVALID),
        ("一二三", texts.AMOUNT_INVALID),
        ("万", texts.AMOUNT_INVALID),
        ("3000 4000", texts.AMOUNT_INVALID),
        ("1.2.3", texts.AMOUNT_INVALID),
        ("100亿", texts.AMOUNT_TOO_LARGE),
        ("99999999999", texts.AMOUNT_TOO_LARGE),
    ],
)
def test_parse_amount_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_amount(text)
    assert caught.value.message == message


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("三", 3), ("十二", 12), ("１３", 13)])
def test_parse_integer(text: str, expected: int) -> None:
    assert parse_integer(text) == expected


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("张三", "张三"),
        (" 张 三 ", "张三"),
        ("阿依·木呷", "阿依·木呷"),
        ("阿依・木呷", "阿依·木呷"),  # katakana middle dot from some keyboards
        ("阿依•木呷", "阿依·木呷"),
        ("我叫王小明", "王小明"),
        ("John Smith", "John Smith"),
        ("欧阳娜娜。", "欧阳娜娜"),
        ("买买提·艾力", "买买提·艾力"),
    ],
)
def test_parse_name(text: str, expected: str) -> None:
    assert parse_name(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", texts.EMPTY),
        ("。。。", texts.EMPTY),
        ("张", texts.NAME_TOO_SHORT),
        ("张三3", texts.NAME_HAS_DIGITS),
        ("13800138000", texts.NAME_HAS_DIGITS),
        ("???", texts.EMPTY),
        ("@#￥%", texts.NAME_BAD_CHARS),
        ("张三@", texts.NAME_BAD_CHARS),
        ("阿依··木呷", texts.NAME_BAD_CHARS),
        ("名" * 21, texts.NAME_TOO_LONG),
    ],
)
def test_parse_name_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_name(text)
    assert caught.value.message == message


def test_parse_party_name() -> None:
    assert parse_party_name(" 昆明第1物业（五华分公司） ") == "昆明第1物业（五华分公司）"
    assert parse_party_name("楼上邻居") == "楼上邻居"
    assert parse_party_name("李四") == "李四"
    for text, message in [
        ("12345", texts.PARTY_BAD_CHARS),
        ("李", texts.PARTY_TOO_SHORT),
        ("公" * 61, texts.PARTY_TOO_LONG),
        ("   ", texts.EMPTY),
    ]:
        with pytest.raises(InvalidInput) as caught:
            parse_party_name(text)
        assert caught.value.message == message


# --- free text ------------------------------------------------------------------------------


def test_free_text_lengths() -> None:
    assert parse_facts("楼上漏水三个月了一直没修") == "楼上漏水三个月了一直没修"
    assert parse_claim("道歉") == "道歉"
    assert parse_place("五华区华山街道") == Place("五华区华山街道")
    for parse, text, message in [
        (parse_facts, "漏水了", texts.text_too_short(10)),
        (parse_facts, "字" * 2001, texts.text_too_long(2000)),
        (parse_facts, "1234567890123", texts.TEXT_NO_WORDS),
        (parse_facts, "  ", texts.EMPTY),
        (parse_claim, "赔", texts.text_too_short(2)),
        (parse_claim, "要" * 501, texts.text_too_long(500)),
        (parse_place, "区", texts.text_too_short(2)),
    ]:
        with pytest.raises(InvalidInput) as caught:
            parse(text)
        assert caught.value.message == message


# --- choices --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", Category.NEIGHBOUR),
        ("１", Category.NEIGHBOUR),
        ("一", Category.NEIGHBOUR),
        ("第3项", Category.PROPERTY_MANAGEMENT),
        ("8", Category.OTHER),
        ("邻里纠纷", Category.NEIGHBOUR),
        ("邻里", Category.NEIGHBOUR),
        ("婚姻", Category.FAMILY),
        ("家庭", Category.FAMILY),
        ("物业", Category.PROPERTY_MANAGEMENT),
        ("劳动", Category.LABOUR),
        ("借贷", Category.LOAN_CONTRACT),
        ("合同", Category.LOAN_CONTRACT),
        ("借贷/合同", Category.LOAN_CONTRACT),
        ("交通", Category.TRAFFIC),
        ("交通事故", Category.TRAFFIC),
        ("消费", Category.CONSUMER_TRAVEL),
        ("旅游", Category.CONSUMER_TRAVEL),
        ("消费/旅游", Category.CONSUMER_TRAVEL),
        ("其他", Category.OTHER),
    ],
)
def test_parse_category(text: str, expected: Category) -> None:
    assert parse_category(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9", texts.CATEGORY_INVALID),
        ("0", texts.CATEGORY_INVALID),
        ("吵架", texts.CATEGORY_INVALID),
        ("邻居借钱不还", texts.CATEGORY_AMBIGUOUS),
    ],
)
def test_parse_category_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_category(text)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", MediationMode.VIDEO),
        ("视频调解", MediationMode.VIDEO),
        ("视频", MediationMode.VIDEO),
        ("2", MediationMode.IN_PERSON),
        ("到场调解", MediationMode.IN_PERSON),
        ("现场", MediationMode.IN_PERSON),
    ],
)
def test_parse_mode(text: str, expected: MediationMode) -> None:
    assert parse_mode(text) == expected


@pytest.mark.parametrize("text", ["3", "都行", "视频或者到场"])
def test_parse_mode_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_mode(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("普通话", LanguageNeed("普通话", False)),
        ("1", LanguageNeed("普通话", False)),
        ("方言", LanguageNeed("方言", False)),
        ("昆明话", LanguageNeed("昆明话", False)),
        ("方言，需要翻译", LanguageNeed("方言", True)),
        ("彝语", LanguageNeed("彝语", True)),
        ("3", LanguageNeed("彝语", True)),
        ("彝语，需要翻译", LanguageNeed("彝语", True)),
        ("彝语 不需要翻译", LanguageNeed("彝语", False)),
        ("彝族话", LanguageNeed("彝语", True)),
        ("我说傣语", LanguageNeed("傣语", True)),
        ("苗族话", LanguageNeed("苗语", True)),
        ("英语，不用翻译", LanguageNeed("英语", False)),
        ("需要翻译", LanguageNeed("普通话", True)),
    ],
)
def test_parse_language(text: str, expected: LanguageNeed) -> None:
    assert parse_language(text) == expected


@pytest.mark.parametrize("text", ["", "4", "123", "语" * 21])
def test_parse_language_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_language(text)


def test_yes_no_consent_and_done() -> None:
    assert parse_yes_no("是") is True
    assert parse_yes_no("确定！") is True
    assert parse_yes_no("否") is False
    assert parse_yes_no("继续") is False
    assert parse_consent("同意") is True
    assert parse_consent("我同意。") is True
    assert parse_consent("不同意") is False
    assert parse_evidence_done("完成") is True
    assert parse_evidence_done("跳过") is True
    assert parse_evidence_done("没有") is True
    for parse, text in [
        (parse_yes_no, "也许"),
        (parse_consent, "好"),
        (parse_consent, "确认"),
        (parse_evidence_done, "照片在手机里"),
    ]:
        with pytest.raises(InvalidInput):
            parse(text)
