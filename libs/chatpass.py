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
service accepts only its own. The gateway accepts a chat pass for model calls only. Pure: no I/O
(the signing is libs/signedpass.py).
"""

from datetime import datetime
from typing import Literal, NamedTuple, get_args

from libs.signedpass import SignedPass

PREFIX = "cc-v1-"
TTL_S = 60
ChatBillingMode = Literal["subscription", "payg"]
MODES: tuple[ChatBillingMode, ...] = get_args(ChatBillingMode)
_PASS = SignedPass(PREFIX, (r"acc_[A-Za-z0-9_-]{1,64}", "subscription|payg", r"conv_[A-Za-z0-9]{1,64}"))


class ChatPass(NamedTuple):
    account_id: str
    billing_mode: ChatBillingMode
    conversation_id: str


def mint(secret: str, chat: ChatPass, now: datetime, ttl_s: int = TTL_S) -> str:
    return _PASS.mint(secret, chat, now, ttl_s)


def is_chat_pass(token: str) -> bool:
    return _PASS.owns(token)


def verify(secret: str, token: str, now: datetime) -> ChatPass | None:
    """What the pass grants, or None: malformed, forged, altered, or expired."""
    fields = _PASS.verify(secret, token, now)
    if fields is None:
        return None
    account_id, mode, conversation_id = fields
    return ChatPass(account_id, "payg" if mode == "payg" else "subscription", conversation_id)
