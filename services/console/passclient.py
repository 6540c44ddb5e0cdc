"""What the console's two clients of other services share: one aiohttp session, opened at start
and closed at stop, and the secret and clock they sign each call's short-lived pass with
(accountapi.AccountApi: owner passes to ingress; chatcalls.ChatCalls: chat passes to the gateway).
"""

import aiohttp

from libs.clock import Clock


class PassClient:
    def __init__(self, base_url: str, secret: str, clock: Clock, timeout: aiohttp.ClientTimeout) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.clock = clock
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session
