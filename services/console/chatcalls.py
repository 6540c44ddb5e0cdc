"""How Studio Chat calls a model: through the gateway, like any client, with a chat pass.

The console holds no key secret; per message it signs a pass naming the account, the billing
mode and the conversation (libs/chatpass.py), and the gateway admits, limits, meters and bills the
call exactly as it would a key of that mode. The reply is read as the OpenAI chat stream (SSE) and
handed on delta by delta.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import msgspec

from libs import chatpass
from libs.clock import Clock
from services.console.passclient import PassClient

_json = msgspec.json.Decoder()


class GatewayRefused(Exception):
    """The gateway did not admit the call (or did not answer): its status, reason and words."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s

    def explain(self, now: datetime) -> str:
        """What the owner is shown: the reason, the gateway's words and, for a limit, when it lifts."""
        text = f"Refused ({self.code}): {self.message}"
        if self.retry_after_s is not None:
            resets = (now + timedelta(seconds=self.retry_after_s)).strftime("%Y-%m-%d %H:%M:%S UTC")
            text += f" The window resets at {resets} (in {self.retry_after_s} s)."
        return text


class Answer:
    """An admitted call's streamed reply."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.request_id = response.headers.get("x-flowplan-request-id")
        self.billing_mode = response.headers.get("x-flowplan-billing-mode", "")
        self.broke_off = False

    async def deltas(self) -> AsyncIterator[str]:
        """The reply's text as it streams; ends early (broke_off) when the gateway's stream breaks."""
        try:
            async for line in self._response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = _json.decode(data)
                except msgspec.DecodeError:
                    continue
                if text := _delta_text(event):
                    yield text
        except (aiohttp.ClientError, TimeoutError):
            self.broke_off = True


def _delta_text(event: Any) -> str:
    choices = event.get("choices") if isinstance(event, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


class ChatCalls(PassClient):
    def __init__(self, gateway_url: str, secret: str, clock: Clock, timeout_s: float = 300.0) -> None:
        super().__init__(gateway_url, secret, clock, aiohttp.ClientTimeout(total=timeout_s, sock_connect=10))
        self.url = self.base_url + "/v1/chat/completions"

    @asynccontextmanager
    async def call(self, chat: chatpass.ChatPass, model: str, messages: list[dict[str, str]]) -> AsyncIterator[Answer]:
        """The admitted call's answer; GatewayRefused when it was not admitted."""
        token = chatpass.mint(self.secret, chat, self.clock.now())
        body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        try:
            response = await self.session.post(self.url, json=body, headers={"Authorization": f"Bearer {token}"})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayRefused(503, "gateway_unavailable", "The model gateway did not answer; retry.") from exc
        try:
            if response.status != 200:
                raise await _refused(response)
            yield Answer(response)
        finally:
            response.release()


async def _refused(response: aiohttp.ClientResponse) -> GatewayRefused:
    try:
        error = _json.decode(await response.read()).get("error") or {}
    except (msgspec.DecodeError, AttributeError, aiohttp.ClientError):
        error = {}
    retry = response.headers.get("retry-after", "")
    return GatewayRefused(
        response.status, str(error.get("code") or error.get("type") or response.status),
        str(error.get("message") or response.reason or "refused"), int(retry) if retry.isdigit() else None,
    )  # fmt: skip
