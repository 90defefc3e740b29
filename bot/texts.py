"""User-facing text of the WeChat edge (the flow's own text lives in ``flows/texts.py``)."""

#: Sent by push when a message could not be handled at all (storage down for long).
MESSAGE_NOT_HANDLED = (
    "抱歉，系统刚才有点忙，您的上一条消息没有处理成功。请稍等一会儿再发一次，之前填写的内容都还在。"
)
