"""Where each vendor's models are served: a base URL and a key, per vendor or by default.

FLOWPLAN_UPSTREAMS='{"default": {"url": "https://api.example.com", "key": "..."},
                     "anthropic": {"url": "https://api.anthropic.com", "key": "..."}}'
Requests are forwarded in the protocol the client spoke (OpenAI chat, images or Anthropic
messages), to `<url>/v1/...`: an upstream must speak the protocols its models are called
with; a Responses API call goes as chat completions (services.gateway.translate.responses). Unset, every vendor goes to the local simulator."""

import msgspec


class Upstream(msgspec.Struct, frozen=True):
    url: str
    key: str = ""


class Upstreams:
    def __init__(self, config: str, simulator_url: str) -> None:
        table = msgspec.json.decode(config, type=dict[str, Upstream]) if config else {}
        self._default = table.pop("default", Upstream(simulator_url))
        self._by_vendor = table

    def for_vendor(self, vendor: str) -> Upstream:
        return self._by_vendor.get(vendor, self._default)
