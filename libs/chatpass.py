"""The credential Studio Chat calls the gateway with, for the owner signed in to the console.

The console never holds a key's secret (only hashes are stored), so it cannot call models
with one. Instead, per message, it mints a short-lived assertion "a call of this owner's
account, billed this way, from this conversation, until T", signed with the secret the
console shares with the gateway (FLOWPLAN_CONSOLE_SECRET):
`cc-v1-<account_id>.<billing mode>.<conversation_id>.<unix expiry>.<HMAC-SHA256, base64url>`.

The billing mode and the conversation are inside the signature, so a holder of a pass can
change neither; a model key carries no mode at all (its kind decides), so a leaked key cannot
pick another billing mode. The MAC covers the `cc-v1-` prefix, so an owner pass for the account
API (`cs-v1-`, libs/ownerpass.py) is no chat pass, and a chat pass is no owner pass: each
service accepts only its own. The gateway accepts a chat pass for model calls only. Pure: no I/O.
"""

import base64
import hashlib
import hmac
import re
from datetime import datetime
from typing import Literal, NamedTuple, get_args

PREFIX = "cc-v1-"
TTL_S = 60
ChatBillingMode = Literal["subscription", "payg"]
MODES: tuple[ChatBillingMode, ...] = get_args(ChatBillingMode)
_FORM = re.compile(
    r"^cc-v1-(?P<account>acc_[A-Za-z0-9_-]{1,64})\.(?P<mode>subscription|payg)\.(?P<conversation>conv_[A-Za-z0-9]{1,64})"
    r"\.(?P<until>\d{1,12})\.(?P<mac>[A-Za-z0-9_-]{43})$"
)


class ChatPass(NamedTuple):
    account_id: str
    billing_mode: ChatBillingMode
    conversation_id: str


def _mac(secret: str, signed: str) -> str:
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(secret: str, chat: ChatPass, now: datetime, ttl_s: int = TTL_S) -> str:
    signed = f"{PREFIX}{chat.account_id}.{chat.billing_mode}.{chat.conversation_id}.{int(now.timestamp()) + ttl_s}"
    return f"{signed}.{_mac(secret, signed)}"


def is_chat_pass(token: str) -> bool:
    return token.startswith(PREFIX)


def verify(secret: str, token: str, now: datetime) -> ChatPass | None:
    """What the pass grants, or None: malformed, forged, altered, or expired."""
    match = _FORM.match(token)
    if match is None:
        return None
    signed, _, mac = token.rpartition(".")
    if not hmac.compare_digest(mac, _mac(secret, signed)):
        return None
    if now.timestamp() >= int(match.group("until")):
        return None
    mode: ChatBillingMode = "payg" if match.group("mode") == "payg" else "subscription"
    return ChatPass(match.group("account"), mode, match.group("conversation"))
