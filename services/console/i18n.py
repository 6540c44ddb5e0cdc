# ruff: noqa: E501  (a message catalog: one text per line, however long)
"""The console's two languages: English (the text in the templates) and Simplified Chinese.

The language comes from the `fp_lang` cookie the switch sets, else from `Accept-Language`.
Controls keep their English accessible names (`aria-label`) in Chinese, as SPEC §5 allows, so
that scripts and tests find them the same way; the visible text changes. Pure: no I/O.
"""

from collections.abc import Callable

LANGUAGES = ("en", "zh")
ZH: dict[str, str] = {
    "Sign in": "登录",
    "Sign out": "退出登录",
    "Email": "邮箱",
    "Password": "密码",
    "New password": "新密码",
    "Save": "保存",
    "Set your password": "设置密码",
    "This one-time link signs you in. Choose the password you will sign in with from now on.": "此一次性链接会让您登录。请设置以后登录使用的密码。",
    "Wrong email or password.": "邮箱或密码错误。",
    "Too many wrong passwords. Sign-in is locked for a while; try again later.": "密码错误次数过多，登录已暂时锁定，请稍后再试。",
    "Use at least 10 characters.": "请至少使用 10 个字符。",
    "Enter the email you will sign in with.": "请输入登录用的邮箱。",
    "That email belongs to another account.": "该邮箱已属于另一个账户。",
    "Link no longer valid": "链接已失效",
    "This sign-in link was already used or has expired. Sign in with your password, or ask for a new link.": "此登录链接已被使用或已过期。请使用密码登录，或申请新的链接。",
    "Form expired": "表单已过期",
    "This form has expired or did not come from this site. Reload the page and try again.": "此表单已过期或并非来自本站。请刷新页面后重试。",
    "Not available": "暂不可用",
    "Subscription": "订阅",
    "plan": "套餐",
    "5-hour window": "5 小时窗口",
    "This week": "本周",
    "This month": "本月",
    "Flows": "Flows",
    "Resets": "重置于",
    "in": "剩余",
    "Not started: the next call opens it.": "尚未开始：下一次调用将开启窗口。",
    "Usage": "用量",
    "Flows per hour": "每小时 Flows",
    "Flows per day": "每天 Flows",
    "Per day (week view)": "按天（周视图）",
    "Per hour (5-hour view)": "按小时（5 小时视图）",
    "Key": "密钥",
    "All keys": "全部密钥",
    "Model": "模型",
    "All models": "全部模型",
    "Filter": "筛选",
    "Time": "时间",
    "Tokens in / out / cached": "输入 / 输出 / 缓存 Token",
    "USD value": "美元价值",
    "Billing mode": "计费方式",
    "Newer": "较新",
    "Older": "较早",
    "No calls yet.": "还没有调用。",
    "Cost by model (30 days)": "按模型的费用（30 天）",
    "Calls": "调用次数",
    "No usage in the last 30 days.": "最近 30 天没有用量。",
    "API keys": "API 密钥",
    "Create key": "创建密钥",
    "Name": "名称",
    "Kind": "类型",
    "Pay As You Go": "按量付费",
    "Management": "管理",
    "Create": "创建",
    "Cancel": "取消",
    "Created": "创建时间",
    "Last used": "最近使用",
    "Never": "从未",
    "Actions": "操作",
    "Rotate": "轮换",
    "Revoke": "吊销",
    "Your new key": "您的新密钥",
    "Copy the secret now: it is shown only once.": "请立即复制密钥：它只显示这一次。",
    "Copy": "复制",
    "Copied": "已复制",
    "Done": "完成",
    "Plan": "套餐",
    "Current plan": "当前套餐",
    "Insider": "Insider 会员",
    "Check your email": "请查收邮件",
    "We sent a mail to": "我们已发送邮件到",
    "Open the link in it within 24 hours to finish.": "请在 24 小时内打开邮件中的链接以完成注册。",
    "A Free account for": "免费账户：",
    "with its first API key. Upgrade whenever you like.": "附带第一个 API 密钥，可随时升级。",
    "Your email is confirmed:": "您的邮箱已确认：",
    "You can buy a paid plan whenever you like.": "您可以随时购买付费套餐。",
    "This sign-up link was already used or has expired. Sign up again.": "此注册链接已被使用或已过期，请重新注册。",
    "We could not send the mail to finish your sign-up. Try again in a few minutes.": "无法发送完成注册的邮件，请几分钟后再试。",
    "value per Flow": "每 Flow 价值",
    "value multiplier": "价值倍率",
    "paid until": "已付至",
    "Scheduled change": "计划变更",
    "from": "生效于",
    "/month": "/月",
    "Flows per 5 hours": "Flows / 5 小时",
    "per month": "每月",
    "Upgrade to": "升级到",
    "Downgrade to": "降级到",
    "Extra Usage": "额外用量",
    "When a window's cap is reached, calls go on, billed to your pay-as-you-go balance at list price.": "窗口额度用尽后，调用继续进行，按标价从按量付费余额中扣费。",
    "On": "开",
    "Off": "关",
    "Secret": "密钥",
    "Status": "状态",
    "active": "有效",
    "revoked": "已吊销",
    "Spent through Extra Usage (recent calls)": "额外用量花费（近期调用）",
    "Balance": "余额",
    "Top up": "充值",
    "Reselect": "重新选择",
    "Select a Key": "选择密钥",
    "Pay-as-you-go keys": "按量付费密钥",
    "This account has no pay-as-you-go key yet.": "此账户还没有按量付费密钥。",
    "Select": "选择",
    "Create new key": "创建新密钥",
    "Billing history": "账单历史",
    "Nothing billed yet.": "还没有账单。",
    "Date": "日期",
    "What": "项目",
    "Amount": "金额",
    "Reference": "参考号",
    "Refund": "退款",
    "Latest refund": "最近退款",
    "refunded": "已退款",
    "Refund preview": "退款预览",
    "Paid": "已付",
    "Usage value since the payment": "付款以来的用量价值",
    "Refunded before": "此前已退款",
    "Refundable": "可退金额",
    "Processor fee (5%)": "手续费（5%）",
    "Once refunded, the account moves to Free at once.": "退款后账户将立即转为 Free 套餐。",
    "Confirm refund": "确认退款",
    "Not refundable.": "不可退款。",
    "A paid plan can be refunded within 24 hours of its payment, less the value of the usage since.": "付费套餐可在付款后 24 小时内退款，扣除此后用量的价值。",
    "Request refund": "申请退款",
    "Amount (USD)": "金额（美元）",
    "Pricing": "价格",
    "Create account": "创建账户",
    "A Free account, with its first API key. Upgrade whenever you like.": "免费账户，附带第一个 API 密钥。随时可以升级。",
    "Have an account?": "已有账户？",
    "New here?": "第一次来？",
    "Too many sign-ups from your address. Try again in an hour.": "您的地址注册次数过多，请一小时后再试。",
    "An account with this email exists. Sign in instead.": "该邮箱已有账户，请直接登录。",
    "Your account is ready": "您的账户已就绪",
    "Your first API key. Copy it now: it is shown only once.": "您的第一个 API 密钥。请立即复制：它只显示这一次。",
    "Go to your subscription": "前往订阅页面",
    "Confirm your email first: open the link we sent you.": "请先确认邮箱：打开我们发送给您的链接。",
    "Every call costs Flows, priced from its tokens; one Flow is worth": "每次调用按 Token 计价，消耗 Flows；1 Flow 价值",
    "Weekly": "每周",
    "Monthly": "每月",
    "Requests per minute": "每分钟请求数",
    "Models": "模型数",
    "Equivalent API value": "等值 API 价值",
    "Value leverage": "价值倍数",
    "Get": "购买",
    "Plans compared: monthly Flows and their equivalent API value": "套餐对比：每月 Flows 及等值 API 价值",
    "Monthly Flows": "每月 Flows",
    "Equivalent API value (USD)": "等值 API 价值（美元）",
    "Continue to payment": "前往付款",
    "Payment received.": "已收到付款。",
    "Checkout cancelled.": "已取消付款。",
    "This account is suspended: you can see it, but not change anything. Contact support.": "此账户已被暂停：您可以查看，但不能做任何更改。请联系客服。",
    "this account is suspended; contact support": "此账户已被暂停，请联系客服。",
}


def choose(cookie: str | None, accept_language: str) -> str:
    """The switch's choice, else the first of Accept-Language's languages that the console speaks."""
    if cookie in LANGUAGES:
        return cookie
    ranked = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def translator(language: str) -> Callable[[str], str]:
    if language == "zh":
        return lambda text: ZH.get(text, text)
    return lambda text: text
