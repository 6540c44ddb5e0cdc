"""The one error a decision raises when it refuses a request: a code from proto's Literals, a message
for the person at the other end, and the field at fault (or the reason behind the code) when there is
one. Responders turn it into their refusal reply (`libs.rpc`), ingress into a 4xx (`libs.web.ApiError`
is the HTTP one, with its status), and `libs.rpc.ask` raises it again on the caller's side."""


class Refusal(Exception):
    def __init__(self, code: str, message: str, field: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.reason = code, message, field, reason
        self.status: int | None = None
        """The HTTP status its code means at the edge, once known (proto/v1/rpc.py's maps)."""

    def __repr__(self) -> str:
        return f"Refusal({self.code!r}, {self.message!r}, field={self.field!r}, reason={self.reason!r})"
