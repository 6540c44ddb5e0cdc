"""Studio Chat (/chat): the signed-in owner's conversations with the plan's models, each message
billed to the subscription or to the PAYG balance as its conversation chooses.

Calls go through the gateway (chatcalls.py), so admission, RPM, quotas and metering are the API's
own; what a conversation cost is read back from the usage events, which name it. The reply
streams to a script as plain text (the `x-studio-stream: 1` request header); a plain form post
gets the page again once the reply is whole.
"""

import asyncio
from typing import Any

from aiohttp import web

from libs.chatpass import ChatBillingMode, ChatPass
from services.console import views
from services.console.accountapi import AccountApi, AccountApiError
from services.console.chatcalls import ChatCalls, GatewayRefused
from services.console.conversations import TITLE_MAX, Conversation, Conversations
from services.console.site import Site

STREAM_HEADER = "x-studio-stream"
COST_EVENTS = 1000
"""A conversation's cost is summed over its latest calls, at most this many."""


class NotFound(web.HTTPNotFound):
    def __init__(self) -> None:
        super().__init__(text="No such conversation.")


class ChatPages:
    def __init__(self, site: Site, api: AccountApi, conversations: Conversations, calls: ChatCalls) -> None:
        self.site = site
        self.api = api
        self.conversations = conversations
        self.calls = calls
        self.clock = site.clock

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/chat", self.index)
        r.add_post("/chat", self.create)
        r.add_get("/chat/{conversation_id}", self.show)
        r.add_get("/chat/{conversation_id}/cost", self.cost)
        r.add_post("/chat/{conversation_id}/messages", self.send)
        r.add_post("/chat/{conversation_id}/rename", self.rename)
        r.add_post("/chat/{conversation_id}/delete", self.delete)

    async def _owned(self, request: web.Request) -> tuple[str, Conversation]:
        """The signed-in owner's conversation the path names: another owner's is as absent as none."""
        account_id = await self.site.signed_in(request)
        conversation = await self.conversations.get(account_id, request.match_info["conversation_id"])
        if conversation is None:
            raise NotFound()
        return account_id, conversation

    async def _models(self, account_id: str) -> tuple[str, list[dict[str, Any]]]:
        usage, catalog = await asyncio.gather(
            self.api.get(account_id, "/v1/account/usage"), self.api.get(None, "/v1/models")
        )
        return usage["plan"], views.chat_models(catalog["data"], usage["plan"])

    async def index(self, request: web.Request) -> web.Response:
        account_id = await self.site.signed_in(request)
        return await self._page(request, account_id, None)

    async def show(self, request: web.Request) -> web.Response:
        account_id, conversation = await self._owned(request)
        return await self._page(request, account_id, conversation)

    async def _page(self, request: web.Request, account_id: str, conversation: Conversation | None,
                    status: int = 200, error: str | None = None) -> web.Response:  # fmt: skip
        try:
            usage, catalog = await asyncio.gather(
                self.api.get(account_id, "/v1/account/usage"), self.api.get(None, "/v1/models")
            )
            cost = await self._cost(account_id, conversation.id) if conversation else None
        except AccountApiError as exc:
            return self.site.render(request, "error.html", 503, title="Not available", message=exc.message)
        return self.site.render(
            request, "chat.html", status, account_id=account_id, plan=usage["plan"],
            window=usage["window_5h"], balance_usd=usage["extra_usage"]["balance_usd"],
            conversations=await self.conversations.of_account(account_id), conversation=conversation,
            messages=await self.conversations.messages(conversation.id) if conversation else [],
            models=views.chat_models(catalog["data"], usage["plan"]), cost=cost, error=error,
        )  # fmt: skip

    async def _cost(self, account_id: str, conversation_id: str) -> dict[str, Any]:
        events = await self.api.get(
            account_id, "/v1/account/usage/events", conversation_id=conversation_id, limit=COST_EVENTS
        )
        return views.conversation_cost(events["data"])

    async def cost(self, request: web.Request) -> web.Response:
        """The conversation's cost as a fragment: the script fetches it once a reply has ended (its
        usage reaches the account's views a moment after the stream)."""
        account_id, conversation = await self._owned(request)
        try:
            cost = await self._cost(account_id, conversation.id)
        except AccountApiError as exc:
            return web.Response(status=503, text=exc.message)
        return self.site.render(request, "chat_cost.html", cost=cost)

    async def create(self, request: web.Request) -> web.Response:
        account_id = await self.site.signed_in(request)
        try:
            _, models = await self._models(account_id)
        except AccountApiError as exc:
            return self.site.render(request, "error.html", 503, title="Not available", message=exc.message)
        first = next((m["id"] for m in models if m["in_plan"]), models[0]["id"] if models else "")
        conversation_id = await self.conversations.create(account_id, "subscription", first, self.clock.now())
        raise web.HTTPSeeOther(f"/chat/{conversation_id}")

    async def rename(self, request: web.Request) -> web.Response:
        account_id, conversation = await self._owned(request)
        title = " ".join(str((await request.post()).get("title", "")).split())
        if not title or len(title) > TITLE_MAX:
            problem = f"title: 1 to {TITLE_MAX} characters"
            return await self._page(request, account_id, conversation, 400, problem)
        await self.conversations.rename(account_id, conversation.id, title)
        raise web.HTTPSeeOther(f"/chat/{conversation.id}")

    async def delete(self, request: web.Request) -> web.Response:
        account_id, conversation = await self._owned(request)
        await self.conversations.delete(account_id, conversation.id)
        raise web.HTTPSeeOther("/chat")

    async def send(self, request: web.Request) -> web.StreamResponse:
        account_id, conversation = await self._owned(request)
        streaming = request.headers.get(STREAM_HEADER) == "1"
        form = await request.post()
        text = str(form.get("message", "")).strip()
        mode, model = str(form.get("billing_mode", "")), str(form.get("model", "")).strip()
        try:
            _, models = await self._models(account_id)
        except AccountApiError as exc:
            return web.Response(status=503, text=exc.message)
        problem = views.chat_problem(text, mode, model, {m["id"] for m in models})
        if problem is not None:
            if streaming:
                return web.Response(status=400, text=problem)
            return await self._page(request, account_id, conversation, 400, problem)
        billing_mode: ChatBillingMode = "payg" if mode == "payg" else "subscription"
        await self.conversations.asked(conversation, text, billing_mode, model, self.clock.now())
        history = [
            {"role": m.role, "content": m.content}
            for m in await self.conversations.messages(conversation.id)
            if m.role in ("user", "assistant")
        ]
        out: web.StreamResponse | None = None
        parts: list[str] = []
        browser_left = False
        try:
            async with self.calls.call(ChatPass(account_id, billing_mode, conversation.id), model, history) as answer:
                if streaming:
                    out = web.StreamResponse(headers={"content-type": "text/plain; charset=utf-8",
                                                      "x-flowplan-billing-mode": answer.billing_mode})  # fmt: skip
                    await out.prepare(request)
                async for delta in answer.deltas():
                    parts.append(delta)
                    if out is not None and not browser_left:
                        try:
                            await out.write(delta.encode())
                        except (ConnectionError, RuntimeError):
                            browser_left = True  # the reply is still read whole and kept
                if answer.broke_off:
                    parts.append(" [the answer broke off]")
        except GatewayRefused as refused:
            explained = refused.explain(self.clock.now())
            await self.conversations.answered(
                conversation.id, "refusal", explained, model, billing_mode, None, self.clock.now()
            )
            if streaming:
                return web.Response(status=refused.status, text=explained)
            raise web.HTTPSeeOther(f"/chat/{conversation.id}") from None
        await self.conversations.answered(
            conversation.id, "assistant", "".join(parts), model, billing_mode, answer.request_id, self.clock.now()
        )
        if out is not None:
            if not browser_left:
                try:
                    await out.write_eof()
                except (ConnectionError, RuntimeError):
                    pass
            return out
        raise web.HTTPSeeOther(f"/chat/{conversation.id}")
