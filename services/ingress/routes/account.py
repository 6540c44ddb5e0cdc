"""The account's own views: usage, the calls page by page, Extra Usage."""

from aiohttp import web

from libs.web import ApiError, decode_body, json_response
from proto.v1 import (
    ListKeys,
    UsageEventsRequest,
    rpc,
)
from services.ingress import admin, views
from services.ingress.routes.edge import Edge, cursor_query, filter_query, int_query


class AccountRoutes(Edge):
    async def get_account_usage(self, request: web.Request) -> web.Response:
        principal = await self._authorized(request)
        status = await self._status(principal.account_id)
        body = views.account_usage(status)
        body["extra_usage"] = views.extra_usage(status)
        # Only the console's owner reads a suspended account (its keys are refused): the page says so.
        body["account_suspended"] = principal.suspended
        return json_response(body)

    async def get_account_usage_events(self, request: web.Request) -> web.Response:
        """The account's calls, newest first, a page at a time: `before` (older, from next_cursor) or
        `after` (newer, from prev_cursor), optionally of one key (`key_id`), one model (`model`), one
        Studio Chat conversation (`conversation_id`) and one billing mode (`billing_mode`)."""
        account_id = await self._account_of(request)
        limit = int_query(request, "limit", 50, 1, 1000)
        before, after = (cursor_query(request, name) for name in ("before", "after"))
        if before is not None and after is not None:
            raise ApiError(400, "invalid_request", "after: give before or after, not both", "after")
        asked = UsageEventsRequest(
            account_id=account_id, limit=limit, before=before, after=after,
            key_id=filter_query(request, "key_id", 128), model=filter_query(request, "model", 200),
            conversation_id=filter_query(request, "conversation_id", 128),
            billing_mode=filter_query(request, "billing_mode", 12),
        )  # fmt: skip
        if asked.billing_mode not in (None, "subscription", "payg"):
            raise ApiError(400, "invalid_request", "billing_mode: subscription or payg", "billing_mode")
        reply = await self._ask(rpc.QUOTA_EVENTS, asked)
        return json_response(views.usage_events(reply, paged_back=before is not None, paged_forward=after is not None))

    async def set_extra_usage(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        command = decode_body(await request.read(), admin.SetExtraUsage)
        listed = await self._ask(rpc.KEYS_LIST, ListKeys(account_id=account_id))
        payg = {k.id for k in listed.keys if k.kind == "payg" and k.revoked_at is None}
        event = admin.set_extra_usage(account_id, command, payg, self.clock.now())
        await self._until_quota_applied(account_id, await self._publish([event]))
        return json_response(views.extra_usage(await self._status(account_id)))
