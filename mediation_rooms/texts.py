"""Every resident-facing sentence of the mediation rooms (简体中文), in one place for review."""

from __future__ import annotations

#: Why a join was refused, by ``JoinTokenError.reason`` or ``ProtocolError.code``.
REFUSALS: dict[str, str] = {
    "malformed": "这个链接不完整，请点开调解员发给您的完整链接。",
    "forged": "这个链接无效，请使用调解员发给您的链接。",
    "wrong_purpose": "这个链接不能用来进入调解室。",
    "revoked": "这个链接已经失效，请使用最新收到的链接。",
    "expired": "这个链接已过期，请联系调解员重新发送。",
    "unknown_room": "找不到这间调解室，请联系调解员。",
    "room_closed": "本次调解已经结束，链接不能再使用。",
    "identity_required": "请输入身份核验信息后再进入。",
    "identity_mismatch": "身份核验没有通过，请检查后重新输入。",
    "too_many_attempts": "身份核验错误次数太多，请半小时后再试，或联系调解员。",
    "consent_required": "请先阅读须知，并勾选同意录音录像，才能进入调解室。",
    "join_first": "请先进入调解室。",
    "forbidden": "只有调解员可以进行这个操作。",
    "not_in_room": "这个席位的当事人现在不在调解室。",
    # Refusals of the mediator's 邀请翻译/代理人 (open_seat):
    "seat_taken": "这个席位已经邀请过了。",
    "not_extra_seat": "只能邀请翻译或代理人。",
    "too_many_seats": "每场调解最多邀请两位翻译或代理人。",
    # A chat line over the connection's budget (message_budget.py):
    "rate_limited": "发送太频繁了，请稍等一下再发。",
}

REPLACED = "您已在另一台设备上进入调解室，这台设备已退出。"
REMOVED = "调解员已请您离开调解室。如有疑问，请联系调解员。"
DENIED = "调解员暂时没有让您进入，请稍后再试或联系调解员。"
ENDED = "本次调解已经结束，感谢您的参与。"
WAITING = "您已进入等候室，请稍候，调解员会请您进入。"
CAUCUS_ON_HOLD = "调解员正在与另一方单独沟通（背对背调解），请稍候。"
CAUCUS_STARTED = "调解员已开始与您单独沟通，另一方听不到也看不到。"
JOINT_SESSION = "已回到三方共同调解。"

SEAT_NAMES: dict[str, str] = {
    "mediator": "调解员",
    "applicant": "申请人",
    "respondent": "被申请人",
    "interpreter": "翻译",
    "applicant_agent": "申请人代理人",
    "respondent_agent": "被申请人代理人",
}

#: The message sent to the applicant in WeChat when a session is scheduled.
INVITATION = (
    "您的案件 {case_no} 已安排视频调解：{when}。\n"
    "到时请点开下面的链接进入调解室（用手机微信打开即可）：\n{link}\n"
    "进入前需要核对身份证号码的后 6 位。调解全程录音录像。"
)
MOVED = "正在为您切换视频线路，请稍候……"
NO_MEDIA_NODE = "视频服务暂时忙，请稍后再试。"
TRY_AGAIN = "刚才没有成功，请稍后再试一次。"
#: To the person the mediator muted (and unmuted): the server stops forwarding their audio.
MUTED_BY_MEDIATOR = "调解员已将您静音，其他人暂时听不到您的声音。需要发言时，请向调解员示意。"
UNMUTED_BY_MEDIATOR = "调解员已取消您的静音，大家现在可以听到您的声音了。"
