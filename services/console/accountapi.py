"""How the console acts for the signed-in owner: through ingress's account API, like any client.

Each call carries a short-lived owner pass for the session's account (libs/ownerpass.py), so
ingress authorizes it, rate-limits its changes, validates and publishes exactly as for a
management key; the console keeps no copy of those rules and reads no other service's tables.
"""

from typing import Any

import aiohttp

from libs import ownerpass
from libs.clock import Clock
from services.console.passclient import PassClient


class AccountApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.reason = status, code, message, field, reason


class AccountApi(PassClient):
    def __init__(
        self, base_url: str, secret: str, clock: Clock, admin_token: str = "", timeout_s: float = 15.0
    ) -> None:
        super().__init__(base_url, secret, clock, aiohttp.ClientTimeout(total=timeout_s))
        self.admin_token = admin_token

    async def get(self, account_id: str | None, path: str, **query: str | int) -> Any:
        return await self.call(account_id, "GET", path, params=query or None)

    async def create_account(self, email: str) -> Any:
        """Sign-up: a Free account for this email, through the admin API (the console is trusted with it)."""
        return await self.call(None, "POST", "/admin/v1/accounts", json={"name": email, "email": email},
                               token=self.admin_token)  # fmt: skip

    async def call(self, account_id: str | None, method: str, path: str, *, json: Any = None,
                   params: Any = None, token: str | None = None) -> Any:  # fmt: skip
        """The JSON answer, or AccountApiError with the API's own code (503 when ingress is away)."""
        headers = {}
        if account_id is not None:
            token = ownerpass.mint(self.secret, account_id, self.clock.now())
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.session.request(
                method, self.base_url + path, json=json, params=params, headers=headers
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AccountApiError(503, "account_api_unavailable", "the account API did not answer; retry") from exc
        if status >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise AccountApiError(
                status, error.get("code", "error"), error.get("message", "request failed"), error.get("field"),
                error.get("reason"),
            )  # fmt: skip
        return body
