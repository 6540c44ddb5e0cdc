"""Whether an account is suspended, for the console's owner: a key comes back from key.lookup
with its account's suspension, a console pass names only the account, so ingress asks the keys
service (keys.access), which owns suspensions, and caches the answer as KeyCache caches keys.

The answer is dropped as soon as `keys.changed` names the account (keys broadcasts it when a
suspension starts or ends), and never trusted for longer than `max_age_s` without asking again,
so a missed broadcast delays a suspension by at most that. Concurrent misses for one account
share one question (a console page reads the account API several times at once).
"""

import asyncio
import time
from collections.abc import Callable

import msgspec
from cachetools import LRUCache
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.rpc import ask
from proto.v1 import AccountAccess, GetAccountAccess, KeysChanged, rpc, subjects


class Suspensions:
    def __init__(
        self,
        nc: Client,
        *,
        max_age_s: float = 1.0,
        timeout_s: float = 2.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._known: LRUCache[str, tuple[float, bool]] = LRUCache(max_entries)
        self._asking: dict[str, asyncio.Future[bool]] = {}
        self._broadcasts = 0
        """Counts keys.changed naming accounts: an answer asked for before one arrived may be stale."""
        self._changed = msgspec.json.Decoder(KeysChanged)

    async def start(self) -> None:
        await self._nc.subscribe(subjects.KEYS_CHANGED, cb=self._on_changed)

    async def _on_changed(self, msg: Msg) -> None:
        for account_id in self._changed.decode(msg.data).account_ids:
            self._known.pop(account_id, None)
            self._broadcasts += 1

    def learn(self, access: AccountAccess) -> None:
        """What this process just told keys to do (the admin API): known here at once, whichever of
        the reply and the broadcast arrives first."""
        self._known[access.account_id] = (self._clock(), access.suspended)

    async def suspended(self, account_id: str) -> bool:
        """Raises a 503 keys_unavailable when keys does not answer: not knowing is not "no"."""
        known = self._known.get(account_id)
        if known is not None and self._clock() - known[0] < self._max_age_s:
            return known[1]
        asking = self._asking.get(account_id)
        if asking is None:
            asking = self._asking[account_id] = asyncio.ensure_future(self._ask(account_id))
            asking.add_done_callback(lambda done: self._asked(account_id, done))
        return await asyncio.shield(asking)

    def _asked(self, account_id: str, done: "asyncio.Future[bool]") -> None:
        self._asking.pop(account_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every request waiting on it may have gone

    async def _ask(self, account_id: str) -> bool:
        asked_at, broadcasts = self._clock(), self._broadcasts
        # No answer raises libs.rpc.Unavailable: a 503 keys_unavailable with Retry-After.
        access = await ask(self._nc, rpc.KEYS_ACCESS, GetAccountAccess(account_id=account_id), self._timeout_s)
        suspended = access.suspended
        if broadcasts == self._broadcasts:  # else keep nothing: the next request asks again
            self._known[account_id] = (asked_at, suspended)
        return suspended
