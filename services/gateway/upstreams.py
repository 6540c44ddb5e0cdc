"""Where each vendor's models are served: a base URL and a key, per vendor or by default.

FLOWPLAN_UPSTREAMS='{"default": {"url": "https://api.example.com", "key": "..."},
                     "anthropic": {"url": "https://api.anthropic.com", "key": "...", "protocols": ["messages"]}}'
Requests are forwarded to `<url>/v1/...` in the protocol the client spoke (OpenAI chat, images
or Anthropic messages) when the upstream speaks it, else translated to one it speaks (chat <->
messages); a Responses API call goes as chat completions (services.gateway.translate).
Unset, every vendor goes to the local simulator."""

from typing import Literal

import msgspec

EVERY_PROTOCOL = frozenset({"chat", "messages", "images"})


class Upstream(msgspec.Struct, frozen=True):
    url: str
    key: str = ""
    protocols: frozenset[Literal["chat", "messages", "responses", "images"]] | None = None
    """What it speaks (`"protocols": ["chat", "responses"]`); unset, every protocol but responses.
    A call in another protocol is translated (services.gateway.translate)."""

    @property
    def speaks(self) -> frozenset[str]:
        return EVERY_PROTOCOL if self.protocols is None else frozenset(self.protocols)


class Upstreams:
    def __init__(self, config: str, simulator_url: str) -> None:
        table = msgspec.json.decode(config, type=dict[str, Upstream]) if config else {}
        self._default = table.pop("default", Upstream(simulator_url))
        self._by_vendor = table

    def for_vendor(self, vendor: str) -> Upstream:
        return self._by_vendor.get(vendor, self._default)
