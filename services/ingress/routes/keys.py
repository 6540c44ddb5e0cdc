"""The account's keys: list, create, rotate, revoke (changes need a management key)."""

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from libs.web import decode_body, json_response
from proto.v1 import (
    CreateKey,
    ListKeys,
    RevokeKey,
    RotateKey,
    rpc,
)
from services.ingress import views
from services.ingress.routes.edge import Edge


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    kind: Literal["subscription", "payg", "management"] = "subscription"


class KeyRoutes(Edge):
    async def list_keys(self, request: web.Request) -> web.Response:
        listed = await self._ask(rpc.KEYS_LIST, ListKeys(account_id=await self._account_of(request)))
        return json_response({"object": "list", "data": [views.key(k) for k in listed.keys]})

    async def create_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        body = decode_body(await request.read(), NewKey)
        issued = await self._ask(rpc.KEYS_CREATE, CreateKey(account_id=account_id, name=body.name, kind=body.kind))
        return json_response({**views.key(issued.key), "key": issued.secret}, 201)

    async def rotate_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        issued = await self._ask(rpc.KEYS_ROTATE, RotateKey(account_id=account_id,
                                                            key_id=request.match_info["key_id"]))  # fmt: skip
        return json_response({**views.key(issued.key), "key": issued.secret}, 201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        revoked = await self._ask(rpc.KEYS_REVOKE, RevokeKey(account_id=account_id,
                                                             key_id=request.match_info["key_id"]))  # fmt: skip
        return json_response({**views.key(revoked.keys[0]), "revoked": True})
