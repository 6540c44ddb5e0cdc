"""Studio Chat's calls: the console's chat pass (libs/chatpass.py) as the same caller a model key is.

A verified pass becomes the KeyView the key path produces, of the kind its billing mode names, so
admission, RPM, quotas, Extra Usage overflow and the PAYG balance check treat the call exactly as a
call with a key of that kind (no side door). What differs: no key made the call (its usage carries
no key_id but the conversation), and the pass names only the account, so whether the account is
suspended is asked of the keys service (keys.access), which owns suspensions.
"""

from datetime import datetime
from typing import NamedTuple

from nats.aio.client import Client

from libs import chatpass
from libs.rpc import ask
from proto.v1 import GetAccountAccess, KeyView, rpc

STUDIO_KEY_ID = "studio-chat"
"""The caller's id inside the gateway only: never stored (usage events carry key_id None)."""


class StudioCaller(NamedTuple):
    key: KeyView
    conversation_id: str


def caller_of(secret: str, token: str, now: datetime) -> StudioCaller | None:
    """The caller a chat pass stands for; None when it is forged, altered or expired."""
    chat = chatpass.verify(secret, token, now)
    if chat is None:
        return None
    key = KeyView(
        id=STUDIO_KEY_ID, account_id=chat.account_id, name="Studio Chat", kind=chat.billing_mode,
        prefix=chatpass.PREFIX, last4="", created_at=now,
    )  # fmt: skip
    return StudioCaller(key, chat.conversation_id)


async def suspended(nc: Client, account_id: str, timeout_s: float) -> bool:
    """Raises Unavailable when keys does not answer: not knowing is not "no"."""
    return (await ask(nc, rpc.KEYS_ACCESS, GetAccountAccess(account_id=account_id), timeout_s)).suspended
