"""The local mail adapter: flowplan sends mail here (`POST /mailbox`) instead of to an SMTP
server, and `GET /mailbox` shows what was sent, newest first: a page, or
`{"messages": [{"to", "subject", "text", "sent_at"}]}` for `Accept: application/json`."""

import html
from datetime import UTC, datetime

import msgspec
from aiohttp import web

KEPT = 1000


class Mail(msgspec.Struct, frozen=True, kw_only=True):
    to: str
    subject: str
    text: str
    sent_at: str = ""


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Mail] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/mailbox", self.send)
        app.router.add_get("/mailbox", self.show)

    async def send(self, request: web.Request) -> web.Response:
        try:
            mail = msgspec.json.decode(await request.read(), type=Mail)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": {"code": "invalid_request", "message": str(exc)}}, status=400)
        sent = msgspec.structs.replace(mail, sent_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"))
        self.messages = [sent, *self.messages][:KEPT]
        return web.json_response({"sent": True}, status=201)

    async def show(self, request: web.Request) -> web.Response:
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"messages": [msgspec.to_builtins(m) for m in self.messages]})
        items = "".join(
            f"<article><h2>{html.escape(m.subject)}</h2><p>To {html.escape(m.to)}, {html.escape(m.sent_at)}</p>"
            f"<pre>{html.escape(m.text)}</pre></article>"
            for m in self.messages
        )
        page = f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Mailbox</title></head>" \
               f"<body><h1>Mailbox (local mail adapter)</h1>{items or '<p>No mail yet.</p>'}</body></html>"  # fmt: skip
        return web.Response(text=page, content_type="text/html")
