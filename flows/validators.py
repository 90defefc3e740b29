"""Turn what a resident typed into a normalised value, or say exactly what is wrong.

Contract of every ``parse_*`` here: it takes the raw text of one message, returns the
normalised value, or raises :class:`jiefen.errors.InvalidInput` whose ``message`` is one Chinese
sentence from :mod:`flows.texts` saying what is wrong (the engine adds the step's example).
All are pure; the only input beyond the text is ``today`` where a date matters.

Residents type on phones with Chinese input methods, so every parser accepts full-width
characters (NFKC-normalised), stray spaces and surrounding punctuation.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from decimal import Decimal, InvalidOperation

from cases.draft import Category, LanguageNeed, MediationMode, Place
from cases.id_number import id_check_code
from flows import texts
from flows.numerals import chinese_number
from jiefen.errors import InvalidInput

# Punctuation a resident may put around an answer (after NFKC, full-width forms are ASCII).
_EDGE_PUNCT = " \t\r\n,.!?;:'\"`~·、。，！？；：…—-_()[]{}<>「」『』【】“”‘’《》〈〉"


def normalise(text: str) -> str:
    """NFKC (full-width digits/letters/space → ASCII) and strip whitespace."""
    return unicodedata.normalize("NFKC", text).strip()


def bare(text: str) -> str:
    """The text as a keyword: normalised, lower case, no whitespace, no edge punctuation."""
    return re.sub(r"\s+", "", normalise(text)).strip(_EDGE_PUNCT).lower()


# --- numbers ----------------------------------------------------------------------------------


def parse_integer(text: str) -> int:
    """A small whole number in Arabic or Chinese numerals («3», «三», «十二»)."""
    try:
        value = chinese_number(bare(text))
    except (ValueError, InvalidOperation):
        raise InvalidInput(texts.AMOUNT_INVALID) from None
    if value % 1:
        raise InvalidInput(texts.AMOUNT_INVALID)
    return int(value)


# --- amounts ----------------------------------------------------------------------------------

_NO_AMOUNT = {"无", "没有", "没", "不涉及", "不涉及金额", "无金额", "没有金额", "不知道", "不清楚"}
_AMOUNT_PREFIXES = (
    "人民币",
    "rmb",
    "¥",
    "大约",
    "大概",
    "差不多",
    "一共",
    "总共",
    "合计",
    "约",
    "共",
)
_AMOUNT_SUFFIXES = (
    "人民币",
    "rmb",
    "块钱",
    "多元",
    "左右",
    "元",
    "块",
    "圆",
    "钱",
    "多",
    "余",
    "整",
)
AMOUNT_LIMIT = Decimal(10) ** 10


def parse_amount(text: str) -> Decimal | None:
    """An amount in yuan, or ``None`` when the resident says there is none («无», «0»).

    Accepts «3000», «3,000», «3000元», «三千五百元», «3.5万», «一万二», «两万», «壹仟»; rounds to
    fen; rejects negatives, garbage and anything from 100亿 up.
    """
    spaced = re.sub(r"(?<=\d)[\s,](?=\d{3}(?!\d))", "", normalise(text))  # 3 000 / 3,000
    if re.search(r"\d\s+\d", spaced):  # «3000 4000»: two numbers, not one
        raise InvalidInput(texts.AMOUNT_INVALID)
    if spaced.lstrip("约大概").startswith(("-", "负", "−")):
        raise InvalidInput(texts.AMOUNT_NEGATIVE)
    s = bare(spaced).replace(",", "")
    if s in _NO_AMOUNT:
        return None
    changed = True
    while changed and s:
        changed = False
        for prefix in _AMOUNT_PREFIXES:
            if s.startswith(prefix) and len(s) > len(prefix):
                s, changed = s[len(prefix) :], True
        for suffix in _AMOUNT_SUFFIXES:
            if s.endswith(suffix) and len(s) > len(suffix):
                s, changed = s[: -len(suffix)], True
    try:
        value = chinese_number(s)
    except (ValueError, InvalidOperation):
        raise InvalidInput(texts.AMOUNT_INVALID) from None
    if value >= AMOUNT_LIMIT:
        raise InvalidInput(texts.AMOUNT_TOO_LARGE)
    if value == 0:
        return None
    if value % 1 == 0:
        return value.quantize(Decimal(1))
    return value.quantize(Decimal("0.01"))


# --- phones -----------------------------------------------------------------------------------

_UNKNOWN = {"不知道", "不清楚", "无", "没有", "不晓得", "不详", "未知", "没"}


def parse_phone(text: str) -> str:
    """A mainland mobile number as 11 ASCII digits (1[3-9]…).

    Accepts spaces, dashes, brackets, full-width digits and a +86 / 0086 / 86 prefix.
    """
    s = re.sub(r"[\s\-‐‑‒–—―()]", "", normalise(text))
    if not s:
        raise InvalidInput(texts.EMPTY)
    if s.startswith("+86"):
        s = s[3:]
    elif s.startswith("0086"):
        s = s[4:]
    elif s.startswith("86") and len(s) == 13:
        s = s[2:]
    if not re.fullmatch(r"[0-9]+", s):
        raise InvalidInput(texts.PHONE_NOT_DIGITS)
    if len(s) != 11:
        raise InvalidInput(texts.phone_wrong_length(len(s)))
    if not re.fullmatch(r"1[3-9][0-9]{9}", s):
        raise InvalidInput(texts.PHONE_BAD_PREFIX)
    return s


def parse_optional_phone(text: str) -> str | None:
    """Like :func:`parse_phone`, but «不知道», «不清楚», «无», «没有» give ``None``."""
    if bare(text) in _UNKNOWN:
        return None
    return parse_phone(text)


# --- resident ID ------------------------------------------------------------------------------

# GB/T 2260 province-level codes (first two digits of a resident ID).
_PROVINCES = frozenset(
    ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
     "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
     "65", "71", "81", "82", "83")
)  # fmt: skip


def parse_id_number(text: str, *, today: datetime.date | None = None) -> str:
    """An 18-character resident ID, upper case, checksum (GB 11643) verified.

    Also checks the province code and that the birth date exists, is not before 1900 and not
    after ``today`` (the engine passes the conversation's date; ``None`` means the system date,
    for callers outside the pure core).
    """
    s = re.sub(r"[\s\-]", "", normalise(text)).upper()
    if not s:
        raise InvalidInput(texts.EMPTY)
    if len(s) != 18:
        raise InvalidInput(texts.id_wrong_length(len(s)))
    if not re.fullmatch(r"[0-9]{17}[0-9X]", s):
        raise InvalidInput(texts.ID_BAD_CHARS)
    if s[:2] not in _PROVINCES:
        raise InvalidInput(texts.ID_BAD_REGION)
    try:
        birth = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        raise InvalidInput(texts.ID_BAD_BIRTH_DATE) from None
    if birth.year < 1900:
        raise InvalidInput(texts.ID_BAD_BIRTH_DATE)
    if birth > (today or datetime.date.today()):
        raise InvalidInput(texts.ID_FUTURE_BIRTH_DATE)
    if id_check_code(s[:17]) != s[17]:
        raise InvalidInput(texts.ID_BAD_CHECKSUM)
    return s


# --- names ------------------------------------------------------------------------------------

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_LETTER = f"A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f{_HAN}"
_NAME = re.compile(f"[{_LETTER}]+(?:[· ][{_LETTER}]+)*")
_NAME_PREFIXES = ("我的名字是", "我的名字叫", "名字是", "名字叫", "姓名是", "姓名:", "我叫", "我是")


def parse_name(text: str) -> str:
    """A person's name: 2–20 characters, Han or Latin, «·» between parts (阿依·木呷).

    Spaces between Han characters are dropped; dot look-alikes (・•‧.) become «·»; a leading
    «我叫»/«我是» is taken off.
    """
    s = normalise(text).strip(_EDGE_PUNCT.replace("·", ""))
    for prefix in _NAME_PREFIXES:
        if s.startswith(prefix) and len(s) > len(prefix):
            s = s[len(prefix) :].strip()
            break
    s = re.sub(r"[・•‧.･]", "·", s)
    s = re.sub(r"\s+", " ", s)
    if not re.search("[A-Za-z]", s):
        s = s.replace(" ", "")
    s = re.sub(r" ?· ?", "·", s)
    if not s:
        raise InvalidInput(texts.EMPTY)
    if re.search(r"[0-9]", s):
        raise InvalidInput(texts.NAME_HAS_DIGITS)
    if not re.search(f"[{_LETTER}]", s):
        raise InvalidInput(texts.NAME_BAD_CHARS)
    if len(s) < 2:
        raise InvalidInput(texts.NAME_TOO_SHORT)
    if len(s) > 20:
        raise InvalidInput(texts.NAME_TOO_LONG)
    if not _NAME.fullmatch(s):
        raise InvalidInput(texts.NAME_BAD_CHARS)
    return s


def parse_party_name(text: str) -> str:
    """The other party: a person or an organisation, 2–60 characters, with at least one letter.

    Organisation names may hold digits and brackets («昆明第1物业（五华分公司）»).
    """
    s = re.sub(r"\s+", " ", text.strip()).strip(_EDGE_PUNCT)
    if not s:
        raise InvalidInput(texts.EMPTY)
    if not re.search(f"[{_LETTER}]", s):
        raise InvalidInput(texts.PARTY_BAD_CHARS)
    if len(s) < 2:
        raise InvalidInput(texts.PARTY_TOO_SHORT)
    if len(s) > 60:
        raise InvalidInput(texts.PARTY_TOO_LONG)
    return s


# --- free text --------------------------------------------------------------------------------


def parse_free_text(text: str, *, min_chars: int, max_chars: int) -> str:
    """Free text of ``min_chars``–``max_chars`` characters (not counting spaces), with words."""
    s = text.strip()
    if not s:
        raise InvalidInput(texts.EMPTY)
    if not re.search(f"[{_LETTER}]", s):
        raise InvalidInput(texts.TEXT_NO_WORDS)
    length = len(re.sub(r"\s", "", s))
    if length < min_chars:
        raise InvalidInput(texts.text_too_short(min_chars))
    if length > max_chars:
        raise InvalidInput(texts.text_too_long(max_chars))
    return s


FACTS_MIN, FACTS_MAX = 10, 2000
CLAIM_MIN, CLAIM_MAX = 2, 500
PLACE_MIN, PLACE_MAX = 2, 100


def parse_facts(text: str) -> str:
    """What happened: 10–2000 characters."""
    return parse_free_text(text, min_chars=FACTS_MIN, max_chars=FACTS_MAX)


def parse_claim(text: str) -> str:
    """What the resident asks for: 2–500 characters."""
    return parse_free_text(text, min_chars=CLAIM_MIN, max_chars=CLAIM_MAX)


def parse_place(text: str) -> Place:
    """Where it happened, as free text (district and street or community): 2–100 characters."""
    return Place(parse_free_text(text, min_chars=PLACE_MIN, max_chars=PLACE_MAX))


# --- choices ----------------------------------------------------------------------------------

_CATEGORY_WORDS: dict[Category, tuple[str, ...]] = {
    Category.NEIGHBOUR: ("邻里", "邻居", "相邻", "噪音", "漏水"),
    Category.FAMILY: ("婚姻", "家庭", "离婚", "夫妻", "赡养", "抚养", "继承", "分家"),
    Category.PROPERTY_MANAGEMENT: ("物业",),
    Category.LABOUR: ("劳动", "工资", "欠薪", "工伤", "劳务"),
    Category.LOAN_CONTRACT: ("借贷", "借款", "借钱", "欠款", "合同", "借条"),
    Category.TRAFFIC: ("交通", "车祸", "撞车", "交通事故"),
    Category.CONSUMER_TRAVEL: ("消费", "旅游", "购物", "退货", "退款"),
    Category.OTHER: ("其他", "其它", "别的"),
}


def parse_category(text: str) -> Category:
    """A menu number 1–8 (Arabic or Chinese) or words («邻里», «借贷», «消费/旅游» …)."""
    s = bare(text)
    s = re.sub(r"^第|[项号个]$", "", s) or s
    members = list(Category)
    if re.fullmatch(r"[0-9一二三四五六七八]", s):
        number = parse_integer(s)
        if 1 <= number <= len(members):
            return members[number - 1]
        raise InvalidInput(texts.CATEGORY_INVALID)
    for category in members:
        if s == bare(category.label):
            return category
    found = {c for c, words in _CATEGORY_WORDS.items() if any(w in s for w in words)}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise InvalidInput(texts.CATEGORY_AMBIGUOUS)
    raise InvalidInput(texts.CATEGORY_INVALID)


_VIDEO_WORDS = ("视频", "线上", "网上", "手机")
_IN_PERSON_WORDS = ("到场", "现场", "线下", "当面", "面对面", "调解室")


def parse_mode(text: str) -> MediationMode:
    """1 / 视频调解 → VIDEO; 2 / 到场调解 → IN_PERSON."""
    s = bare(text)
    if s in ("1", "一"):
        return MediationMode.VIDEO
    if s in ("2", "二"):
        return MediationMode.IN_PERSON
    video = any(w in s for w in _VIDEO_WORDS)
    in_person = any(w in s for w in _IN_PERSON_WORDS)
    if video != in_person:
        return MediationMode.VIDEO if video else MediationMode.IN_PERSON
    raise InvalidInput(texts.MODE_INVALID)


_NO_INTERPRETER = re.compile(r"(不需要|不用|无需|不要)(翻译|译员|翻)")
_INTERPRETER = re.compile(r"(需要|要|请|找)?(翻译|译员)")
_MANDARIN = ("普通话", "汉语", "国语", "中文", "汉话")
_DIALECT = ("方言", "本地话", "当地话", "家乡话", "土话")
_MINORITY_ALIASES = {
    "彝话": "彝语",
    "彝族话": "彝语",
    "彝文": "彝语",
    "彝族语": "彝语",
    "彝族": "彝语",
}


def parse_language(text: str) -> LanguageNeed:
    """The mediation language and whether an interpreter is needed.

    «普通话» and dialects («方言», «昆明话») need no interpreter unless the resident asks; any
    other language («彝语», «傣语», «英语») implies one unless they say «不需要翻译».
    Menu numbers 1 普通话, 2 方言, 3 彝语 are understood too.
    """
    s = bare(text)
    declined = bool(_NO_INTERPRETER.search(s))
    asked = not declined and bool(_INTERPRETER.search(s))
    name = _INTERPRETER.sub("", _NO_INTERPRETER.sub("", s))
    name = re.sub(r"^(我说|我讲|我用|说|讲|用|会说)", "", name)
    name = name.strip(_EDGE_PUNCT).removesuffix("的").strip(_EDGE_PUNCT)
    name = {"1": "普通话", "2": "方言", "3": "彝语"}.get(name, name)
    if name == "4":
        raise InvalidInput(texts.LANGUAGE_OTHER)
    if not name:
        if asked or declined:  # «需要翻译» alone: they want one, language to be asked by staff
            return LanguageNeed("普通话", needs_interpreter=asked)
        raise InvalidInput(texts.EMPTY)
    if len(name) > 20 or not re.search(f"[{_LETTER}]", name):
        raise InvalidInput(texts.LANGUAGE_INVALID)
    if any(w in name for w in _MANDARIN):
        return LanguageNeed("普通话", needs_interpreter=asked)
    if any(w in name for w in _DIALECT):
        return LanguageNeed("方言", needs_interpreter=asked)
    name = _MINORITY_ALIASES.get(name, name)
    if name.endswith("话") and not name.endswith("族话"):  # 昆明话, 四川话: a Chinese dialect
        return LanguageNeed(name, needs_interpreter=asked)
    if name.endswith("族话"):
        name = name.removesuffix("族话") + "语"
    return LanguageNeed(name, needs_interpreter=not declined)


_YES = {"是", "是的", "对", "对的", "确定", "确认", "好", "好的", "要", "嗯", "y", "yes", "ok"}
_NO = {"否", "不", "不是", "不要", "不用", "算了", "继续", "继续填写", "n", "no"}


def parse_yes_no(text: str) -> bool:
    """«是»/«确定» → True; «否»/«不»/«继续» → False."""
    s = bare(text)
    if s in _YES:
        return True
    if s in _NO:
        return False
    raise InvalidInput(texts.YES_NO_INVALID)


def parse_consent(text: str) -> bool:
    """Explicit consent: «同意» → True, «不同意» → False; anything else is not consent."""
    s = bare(text)
    if s in ("同意", "我同意", "同意了", "好的同意", "同意的"):
        return True
    if s in ("不同意", "我不同意", "不", "否", "不要", "拒绝"):
        return False
    raise InvalidInput(texts.CONSENT_INVALID)


_EVIDENCE_DONE = {
    "完成",
    "完了",
    "好了",
    "发完了",
    "发完",
    "没了",
    "没有了",
    "就这些",
    "结束",
    "ok",
}
_EVIDENCE_SKIP = {"跳过", "没有", "无", "不用", "不需要", "没", "暂无", "没有证据"}


def parse_evidence_done(text: str) -> bool:
    """The resident is done sending evidence («完成») or has none («跳过», «没有»)."""
    s = bare(text)
    if s in _EVIDENCE_DONE or s in _EVIDENCE_SKIP:
        return True
    raise InvalidInput(texts.EVIDENCE_INVALID)
