"""Every sentence the intake bot says to a resident (and the one line it writes for staff).

One place, so the wording can be reviewed by mediators and translated (e.g. into 彝文) without
reading code. Rules for what lives here:

* 简体中文, warm and plain, short enough for a phone screen and an elderly reader: one idea per
  line, commands in 「」, numbers as digits.
* Templates are small functions taking already-formatted values; no logic beyond layout.
* The *vocabulary we understand* (「不知道」, category keywords, command words) lives next to the
  parsers in ``validators.py`` and ``commands.py``; this module only holds what we *say*.
"""

from __future__ import annotations

import datetime
from decimal import Decimal

from cases.draft import CATEGORY_LABELS

# --- greeting, idle, global commands -------------------------------------------------------

COMMANDS = "填写时随时可以回复：「帮助」「返回」「取消」「重新开始」「人工」"

WELCOME = (
    "您好，欢迎使用「解纷」在线调解服务！\n"
    "邻里、婚姻家庭、物业、劳动、借贷合同、交通事故、消费旅游等纠纷，都可以在这里申请人民调解。"
    "调解免费，是否调解由您自愿决定。\n"
    "申请调解：请回复「1」或「我要调解」\n"
    "查看我的案件：回复「查询」\n"
    "需要人工帮助：回复「人工」\n" + COMMANDS
)

IDLE_HINT = (
    "您好！申请调解请回复「1」或「我要调解」。\n"
    "查看我的案件请回复「查询」，需要人工帮助请回复「人工」。"
)

NOTHING_TO_CANCEL = "您现在没有正在填写的申请。"
NOTHING_TO_GO_BACK = "您现在没有正在填写的申请，无法返回。"
NOTHING_TO_EDIT = "您现在没有正在填写的申请，无法修改。"
ALREADY_FILING = "您正在填写调解申请，我们接着来。"
WELCOME_BACK = "欢迎回来！您之前填写的内容都还在，我们接着来。"
FIRST_STEP = "这已经是第一步了。不想继续的话，可以回复「取消」。"
EDIT_ONLY_AT_SUMMARY = (
    "全部填完后，我会把内容汇总给您核对，那时可以修改任何一项。要改上一项，请回复「返回」。"
)
UNSUPPORTED = "抱歉，这类消息我暂时看不懂，请用文字回复。"
VOICE_NOT_RECOGNISED = "抱歉，这条语音没能转成文字，请用文字回复。"
LOCATION_NOT_HERE = "这一步不需要发送位置，请用文字回复。"
TEXT_EXPECTED = "这一步请用文字回复。"

HUMAN_REQUESTED = (
    "好的，已为您登记人工服务。工作人员会在工作时间内尽快联系您，请留意电话和本公众号消息。"
)
HUMAN_KEEP_GOING = "在等待期间，您也可以接着填写："
OFFER_HUMAN = "如果填写有困难，可以回复「人工」，工作人员会联系您。"


def example_line(example: str) -> str:
    return f"例如：{example}"


def progress(number: int, total: int) -> str:
    return f"（第{number}步，共{total}步）"


def current_value(shown: str) -> str:
    return f"（目前填的是：{shown}。直接回复新的内容即可）"


def human_note(where: str, phone: str | None, strikes: int) -> str:
    """The note for staff with a callback request (not shown to the resident)."""
    note = f"居民在「{where}」请求人工协助"
    if phone:
        note += f"，手机号 {phone}"
    if strikes:
        note += f"，这一步已答错{strikes}次"
    return note + "。"


NOTE_IDLE = "未在填写申请"
NOTE_CONSENT = "阅读须知"
NOTE_SUMMARY = "核对汇总"


# --- consent -------------------------------------------------------------------------------

CONSENT_PROMPT = (
    "开始前，请您先了解：\n"
    "1. 本服务由人民调解组织提供，免费；是否调解由双方自愿，您可以随时退出。\n"
    "2. 请如实填写。对方不同意调解的，无法调解，您仍可通过诉讼等途径解决。"
    "虚假调解要承担法律责任。\n"
    "3. 视频调解全程同步录音录像，调解记录和协议可能提供给法院用于司法确认或诉讼。\n"
    "4. 为核实身份和办理案件，我们会收集您的姓名、手机号、身份证号等个人信息，"
    "身份证号和录音录像属于敏感个人信息，我们加密保存，只用于本次调解。\n"
    "您同意以上内容吗？"
)
CONSENT_EXAMPLE = "同意（不同意请回复「不同意」）"
CONSENT_HELP = (
    "调解需要您自愿同意。回复「同意」开始填写；回复「不同意」就结束，不会保存您的任何信息。"
)
CONSENT_INVALID = "请回复「同意」或「不同意」。"
CONSENT_ACK = "感谢您的信任，我们开始吧。"
DECLINED = (
    "好的，尊重您的选择。我们没有保存您的任何信息。\n以后需要调解时，随时回复「1」或「我要调解」。"
)

# --- the questions -------------------------------------------------------------------------

CATEGORY_MENU = "\n".join(f"{i} {label}" for i, label in enumerate(CATEGORY_LABELS.values(), 1))
CATEGORY_PROMPT = "请问是哪一类纠纷？请回复序号：\n" + CATEGORY_MENU
CATEGORY_EXAMPLE = "1 或「邻里纠纷」"
CATEGORY_HELP = "选一个最接近的类型就行，拿不准就选「8 其他」，调解员会再了解。"
CATEGORY_INVALID = "没看懂是哪一类，请回复1到8之间的序号：\n" + CATEGORY_MENU
CATEGORY_AMBIGUOUS = "您说的可能属于好几类，请回复序号：\n" + CATEGORY_MENU

APPLICANT_NAME_PROMPT = "请问您的真实姓名？"
APPLICANT_NAME_EXAMPLE = "张三"
APPLICANT_NAME_HELP = (
    "请填写和身份证上一致的姓名，调解组织需要核实身份。少数民族姓名中间的点可以写「·」，"
    "如：阿依·木呷。"
)

APPLICANT_PHONE_PROMPT = "请留下您的手机号，调解员会打这个电话联系您。"
APPLICANT_PHONE_EXAMPLE = "13800138000"
APPLICANT_PHONE_HELP = "请填写11位手机号，1开头。中间有空格或横线也没关系。"

ID_PROMPT = "请输入您的身份证号（18位），用于核实身份，会加密保存。"
ID_EXAMPLE = "18位数字，最后一位可能是X"
ID_HELP = (
    "身份证号在身份证背面（有国徽的另一面），共18位，最后一位可能是字母X。"
    "我们只用它核实身份，加密保存，显示时会隐藏中间几位。"
)

RESPONDENT_NAME_PROMPT = "对方叫什么名字？可以是个人，也可以是单位。"
RESPONDENT_NAME_EXAMPLE = "李四，或「某某物业服务有限公司」"
RESPONDENT_NAME_HELP = (
    "对方是个人就写姓名，是公司、物业、商家就写单位名称。不知道全名，写您平时怎么称呼也行。"
)

RESPONDENT_PHONE_PROMPT = "对方的手机号是多少？不知道请回复「不知道」。"
RESPONDENT_PHONE_EXAMPLE = "13900139000，或「不知道」"
RESPONDENT_PHONE_HELP = (
    "有对方的手机号，调解员能更快联系到对方。不知道也没关系，回复「不知道」即可。"
)

PLACE_PROMPT = "纠纷发生在哪里（或双方住在哪里）？请写区县和街道或社区，也可以直接发送位置。"
PLACE_EXAMPLE = "五华区华山街道翠湖社区"
PLACE_HELP = "我们根据地点把案件交给就近的调解组织。写到区县和街道（社区）就可以。"

FACTS_PROMPT = "请说说发生了什么事：什么时间、和谁、因为什么。可以打字，也可以发语音。"
FACTS_EXAMPLE = "楼上邻居家卫生间漏水三个月，我家天花板发霉，找过对方几次都没解决。"
FACTS_HELP = "简单说清楚经过就行，不用写得很正式，至少10个字。详细情况调解员会再问您。"
FACTS_VOICE_KEPT = "收到您的语音，已保存为材料。这条语音没能转成文字，请再用文字简单写几句经过。"
FACTS_VOICE_TOO_SHORT = "收到您的语音，已保存为材料。转成的文字太短了，请再用文字简单写几句经过。"
FACTS_VOICE_ACK = "收到您的语音，已转成文字记下，语音也保存为材料。"

CLAIM_PROMPT = "您希望对方怎么做？请说说您的请求。"
CLAIM_EXAMPLE = "修好漏水，赔偿维修费"
CLAIM_HELP = "写您希望通过调解得到什么结果，比如赔偿、道歉、归还、修理等。"

AMOUNT_PROMPT = "涉及的金额大概是多少？不涉及钱的请回复「无」。"
AMOUNT_EXAMPLE = "3000、三千五百元、3.5万，或「无」"
AMOUNT_HELP = "写一个大概的数就行，可以用阿拉伯数字，也可以用汉字。不涉及金额请回复「无」。"

EVIDENCE_PROMPT = (
    "有证据材料吗？比如照片、聊天截图、借条、合同、语音、视频或文件。"
    "一次发一个，可以发多个。\n发完请回复「完成」，没有请回复「跳过」。"
)
EVIDENCE_EXAMPLE = "发送照片，再回复「完成」"
EVIDENCE_HELP = (
    "直接在对话框发送图片、语音、视频或文件即可，每收到一份我都会告诉您。"
    "材料会马上保存，发完回复「完成」。没有材料也可以调解，回复「跳过」。"
)
EVIDENCE_INVALID = "请直接发送图片、语音、视频或文件。发完请回复「完成」，没有请回复「跳过」。"


def evidence_full(limit: int) -> str:
    return f"材料已经很多了（最多{limit}份），这份没有保存。请回复「完成」继续。"


def evidence_received(count: int) -> str:
    return f"已收到第{count}份材料。还有请继续发送，发完请回复「完成」。"


def evidence_so_far(count: int) -> str:
    return f"目前已收到{count}份材料。" if count else "目前还没有收到材料。"


def media_kept_early(count: int) -> str:
    return f"收到您发的材料，已先作为证据保存（共{count}份）。"


MODE_PROMPT = (
    "您希望怎样调解？请回复序号：\n"
    "1 视频调解（在手机上视频，全程录音录像）\n"
    "2 到场调解（到调解室当面调解）"
)
MODE_EXAMPLE = "1"
MODE_HELP = "视频调解不用出门，用手机就行；到场调解需要到调解组织的调解室。"
MODE_INVALID = "请回复「1」视频调解，或「2」到场调解。"

LANGUAGE_PROMPT = "调解时您想用什么语言？普通话、方言、彝语或其他语言都可以。需要翻译请一起说明。"
LANGUAGE_EXAMPLE = "普通话，或「彝语，需要翻译」"
LANGUAGE_HELP = (
    "我们会尽量安排会说您语言的调解员，比如彝汉双语调解员。"
    "说普通话和方言以外的语言，默认为您安排翻译；不需要请写「不需要翻译」。"
)
LANGUAGE_OTHER = "请直接写出语言名称。"
LANGUAGE_INVALID = "没看懂是哪种语言，请写出语言名称。"

# --- validators' messages ------------------------------------------------------------------

EMPTY = "您好像还没有填写内容。"
NAME_HAS_DIGITS = "姓名里不能有数字。"
NAME_TOO_SHORT = "姓名至少要2个字。"
NAME_TOO_LONG = "姓名太长了，最多20个字。"
NAME_BAD_CHARS = "姓名只能包含汉字或字母，少数民族姓名中间的点请写「·」。"
PARTY_TOO_SHORT = "名称至少要2个字。"
PARTY_TOO_LONG = "名称太长了，最多60个字。"
PARTY_BAD_CHARS = "请写对方的姓名或单位名称。"
PHONE_NOT_DIGITS = "手机号只能是数字。"
PHONE_BAD_PREFIX = "这不像手机号，手机号是1开头的11位数字。"


def phone_wrong_length(n: int) -> str:
    return f"手机号应该是11位，您填的是{n}位，请核对。"


def id_wrong_length(n: int) -> str:
    return f"身份证号应该是18位，您填的是{n}位，请核对。"


ID_BAD_CHARS = "身份证号前17位是数字，最后一位是数字或X。"
ID_BAD_REGION = "身份证号开头的地区代码不对，请核对前两位。"
ID_BAD_BIRTH_DATE = "身份证号中的出生日期（第7到14位）不对，请核对。"
ID_FUTURE_BIRTH_DATE = "身份证号中的出生日期还没到，请核对第7到14位。"
ID_BAD_CHECKSUM = "身份证号校验没通过，可能有一位输错了，请逐位核对。"
AMOUNT_INVALID = "没看懂这个金额，请写数字或汉字金额，不涉及请回复「无」。"
AMOUNT_NEGATIVE = "金额不能是负数。"
AMOUNT_TOO_LARGE = "金额太大了，请核对。"
YES_NO_INVALID = "请回复「是」或「否」。"


def text_too_short(min_chars: int) -> str:
    return f"写得太少了，请至少写{min_chars}个字。"


def text_too_long(max_chars: int) -> str:
    return f"写得太长了（最多{max_chars}个字），请简短一些。"


TEXT_NO_WORDS = "请用文字说明，不能只有数字或符号。"

# --- acknowledgements ----------------------------------------------------------------------


def greet_applicant(name: str) -> str:
    return f"{name}，您好！"


def id_recorded(masked: str) -> str:
    return f"身份证号已记下：{masked}"


def phone_recorded(phone: str) -> str:
    return f"手机号已记下：{phone}"


def place_from_location(label: str) -> str:
    return f"收到位置：{label}"


def amount_recorded(shown: str) -> str:
    return f"涉及金额：{shown}"


def location_fallback(latitude: float, longitude: float) -> str:
    return f"位置（纬度{latitude:.5f}，经度{longitude:.5f}）"


# --- values as shown in the summary ----------------------------------------------------------

UNKNOWN = "不知道"
NONE = "无"
VOICE_FACTS = "（另有语音）"


def format_amount(amount: Decimal | None) -> str:
    if amount is None:
        return NONE
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}元"


def evidence_count(count: int) -> str:
    return f"{count}份" if count else NONE


def language_shown(language: str, needs_interpreter: bool) -> str:
    return f"{language}（需要翻译）" if needs_interpreter else language


def month_day(day: datetime.date) -> str:
    return f"{day.month}月{day.day}日"


# --- review, cancel, restart -----------------------------------------------------------------

SUMMARY_TITLE = "请核对您填写的内容："
NOT_FILLED = "未填写"


def summary_line(number: int, label: str, shown: str) -> str:
    return f"{number}. {label}：{shown}"


def editing_item(number: int, label: str) -> str:
    return f"修改第{number}项「{label}」："


# Item labels of the summary (also used by 修改 N).
LABEL_CATEGORY = "纠纷类型"
LABEL_APPLICANT_NAME = "您的姓名"
LABEL_APPLICANT_PHONE = "您的手机号"
LABEL_ID = "身份证号"
LABEL_RESPONDENT_NAME = "对方"
LABEL_RESPONDENT_PHONE = "对方电话"
LABEL_PLACE = "地点"
LABEL_FACTS = "事情经过"
LABEL_CLAIM = "您的请求"
LABEL_AMOUNT = "涉及金额"
LABEL_EVIDENCE = "证据材料"
LABEL_MODE = "调解方式"
LABEL_LANGUAGE = "语言"
REVIEW_INSTRUCTIONS = "没问题请回复「确认」提交；要修改请回复「修改」加序号，如「修改 2」。"
REVIEW_HELP = (
    "上面是您填写的全部内容。都对就回复「确认」，我们马上提交给调解组织；"
    "哪一项不对，就回复「修改」加这一项的序号，比如「修改 3」，改完会回到这里。"
)
REVIEW_INVALID = "没看懂您的意思。" + REVIEW_INSTRUCTIONS
ASK_WHICH_ITEM = "要修改第几项？请回复「修改」加序号，如「修改 3」。"
EDITED = "已修改。"
NOT_EDITED = "好的，没有修改。"
MISSING_ANSWER = "还有一项没有填写，我们补上它。"
DRAFT_BROKEN = "抱歉，您填写的内容出了问题，需要重新填写。给您添麻烦了。"


def no_such_item(number: int, total: int) -> str:
    return f"没有第{number}项，请回复1到{total}之间的序号，如「修改 3」。"


CONFIRM_CANCEL = (
    "确定要取消本次申请吗？您已填写的内容会被清除。\n回复「是」取消，回复「否」继续填写。"
)
CONFIRM_RESTART = (
    "确定要重新开始吗？您已填写的内容会被清除，从头填写。\n回复「是」重新开始，回复「否」继续填写。"
)
CANCELLED = "已取消本次申请，您填写的内容已清除。\n以后需要调解时，随时回复「1」或「我要调解」。"
RESTARTED = "好的，我们从头开始。"
CONTINUE = "好的，我们继续。"

# --- submission and results -------------------------------------------------------------------

SUBMITTING = "您的申请正在提交，请稍候。如果一直没有收到案件编号，请回复「确认」再提交一次。"
SUBMIT_FAILED = (
    "抱歉，系统暂时无法提交您的申请。您填写的内容都保存着，不会丢失。\n"
    "请过一会儿再回复「确认」提交。"
)


def case_created(
    case_no: str, org_name: str, org_phone: str | None, deadline: datetime.date
) -> str:
    org = f"{org_name}（电话 {org_phone}）" if org_phone else org_name
    return (
        "您的调解申请已提交成功！\n"
        f"案件编号：{case_no}\n"
        f"受理组织：{org}\n"
        f"接下来：调解组织会为您指派调解员，调解员会在{month_day(deadline)}前联系您，"
        "请保持电话畅通。\n"
        "随时回复「查询」可以查看办理进度。"
    )


NO_CASES = "您还没有提交过调解申请。\n需要调解时，请回复「1」或「我要调解」。"
CASES_TITLE = "您的案件："


def case_line(number: int, case_no: str, category: str, status: str, filed_on: str) -> str:
    return f"{number}. {case_no}（{category}，{filed_on}提交）：{status}"


def more_cases(count: int) -> str:
    return f"另有{count}件较早的案件没有列出，如需了解请回复「人工」。"


RESUME_FILING = "您正在填写的申请还没完成，接着回答就行："
RESUME_REVIEW = "您填写的申请还没提交。" + REVIEW_INSTRUCTIONS
