"""Where each vendor's models are served: a base URL and a key, per vendor or by default.

FLOWPLAN_UPSTREAMS='{"default": {"url": "https://api.example.com", "key": "..."},
                     "anthropic": {"url": "https://api.anthropic.com", "key": "...", "protocols": ["messages"]}}'
Requests are forwarded to `<url>/v1/...` in the protocol the client spoke (OpenAI chat, Responses,
images or Anthropic messages) when the upstream speaks it, else translated to one it speaks
(services.gateway.translate).

A vendor the table does not name, when it has no "default" either (unset: every vendor), goes to
the local simulator, which speaks what that vendor's own API speaks (SIMULATED): so the default
stack translates exactly as production would."""

from typing import Literal

import msgspec

EVERY_PROTOCOL = frozenset({"chat", "messages", "images"})
Spoken = Literal["chat", "messages", "responses", "images"]
SIMULATED: dict[str, frozenset[Spoken]] = {
    "anthropic": frozenset({"messages"}),
    "openai": frozenset({"chat", "responses", "images"}),
}
"""What each vendor's API speaks (the simulator answers them so); the others speak chat and images."""
SIMULATED_OTHERS: frozenset[Spoken] = frozenset({"chat", "images"})


class Upstream(msgspec.Struct, frozen=True):
    url: str
    key: str = ""
    protocols: frozenset[Spoken] | None = None
    """What it speaks (`"protocols": ["chat", "responses"]`); unset, every protocol but responses.
    A call in another protocol is translated (services.gateway.translate)."""

    @property
    def speaks(self) -> frozenset[str]:
        return EVERY_PROTOCOL if self.protocols is None else frozenset(self.protocols)


class Upstreams:
    def __init__(self, config: str, simulator_url: str) -> None:
        table = msgspec.json.decode(config, type=dict[str, Upstream]) if config else {}
        self._default = table.pop("default", None)
        self._by_vendor = table
        self._simulator = {
            vendor: Upstream(simulator_url, protocols=protocols) for vendor, protocols in SIMULATED.items()
        }
        self._simulated = Upstream(simulator_url, protocols=SIMULATED_OTHERS)

    def for_vendor(self, vendor: str) -> Upstream:
        if (upstream := self._by_vendor.get(vendor, self._default)) is not None:
            return upstream
        return self._simulator.get(vendor, self._simulated)
