"""The model catalog and the plans, loaded from data files (libs/catalog/*.json)."""

from collections.abc import Iterable
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Final, Literal

import msgspec

from libs.pricing.money import MICRO, parse_fraction, round_half_up

DATA_DIR = Path(__file__).resolve().parent.parent / "catalog"
PICO_PER_USD = 10**12


class ModelPricing(msgspec.Struct, frozen=True):
    """List prices in USD per unit, as the vendor publishes them."""

    prompt: str
    completion: str
    input_cache_read: str
    image: str


class Model(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    id: str
    name: str
    vendor: str
    api: Literal["openai", "anthropic"]
    kind: Literal["chat", "image"]
    tier: str
    context_length: int
    pricing: ModelPricing
    request_flows: str

    @cached_property
    def pico_prices(self) -> tuple[int, int, int, int]:
        """(prompt, completion, cache read, image) in integer pico-USD per unit: exact, fast."""
        prices = []
        for text in (
            self.pricing.prompt,
            self.pricing.completion,
            self.pricing.input_cache_read,
            self.pricing.image,
        ):
            pico = parse_fraction(text) * PICO_PER_USD
            if pico.denominator != 1 or pico < 0:
                raise ValueError(f"{self.id}: price {text!r} is not a whole number of pico-USD")
            prices.append(pico.numerator)
        return prices[0], prices[1], prices[2], prices[3]

    @cached_property
    def request_flows_micros(self) -> int:
        return round_half_up(parse_fraction(self.request_flows) * MICRO)


class Plan(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    id: str
    name: str
    price_usd: str
    window_5h_flows: str
    weekly_flows: str
    monthly_flows: str
    rpm: int
    tiers: list[str]

    @cached_property
    def limits_micros(self) -> tuple[int, int, int]:
        """(5-hour, weekly, monthly) caps in micro-Flows."""
        return (
            round_half_up(parse_fraction(self.window_5h_flows) * MICRO),
            round_half_up(parse_fraction(self.weekly_flows) * MICRO),
            round_half_up(parse_fraction(self.monthly_flows) * MICRO),
        )


FREE: Final = "free"
"""The plan every account starts on, and is on again once a paid period ends unrenewed or is refunded
(plans.json names its caps and models like any other plan's)."""


class _ModelsFile(msgspec.Struct):
    version: int
    models: list[Model]


class _PlansFile(msgspec.Struct):
    version: int
    default_usd_per_flow: str
    plans: list[Plan]
    insider_multiplier: str = "1.25"


class Catalog:
    """Models and plans, with the lookups pricing and admission need."""

    def __init__(
        self,
        models: Iterable[Model],
        plans: Iterable[Plan],
        default_usd_per_flow: Fraction,
        insider_multiplier: Fraction = Fraction(5, 4),
    ):
        self.models = {m.id: m for m in models}
        self.plans = {p.id: p for p in plans}
        self.default_usd_per_flow = default_usd_per_flow
        if insider_multiplier <= 0:
            raise ValueError(f"insider_multiplier must be greater than zero, not {insider_multiplier}")
        self.insider_multiplier = insider_multiplier
        """An insider's value per Flow over standard, while their paid subscription is unbroken."""
        for model in self.models.values():
            model.pico_prices  # noqa: B018  (validate every price once, at load)

    def plan(self, plan_id: str) -> Plan:
        return self.plans[plan_id]

    def models_in_plan(self, plan_id: str) -> list[Model]:
        tiers = set(self.plan(plan_id).tiers)
        return [m for m in self.models.values() if m.tier in tiers]

    def plans_with_model(self, model: Model) -> list[str]:
        return [p.id for p in self.plans.values() if model.tier in p.tiers]


def load_catalog(models_path: str | Path = "", plans_path: str | Path = "") -> Catalog:
    models_file = msgspec.json.decode(Path(models_path or DATA_DIR / "models.json").read_bytes(), type=_ModelsFile)
    plans_file = msgspec.json.decode(Path(plans_path or DATA_DIR / "plans.json").read_bytes(), type=_PlansFile)
    return Catalog(
        models_file.models,
        plans_file.plans,
        parse_fraction(plans_file.default_usd_per_flow),
        parse_fraction(plans_file.insider_multiplier),
    )


def model_json(catalog: Catalog, m: Model) -> dict[str, object]:
    """A model as the public API lists it (OpenAI list item with `pricing` and `plans`)."""
    return {
        "id": m.id,
        "object": "model",
        "created": 0,
        "owned_by": m.vendor,
        "name": m.name,
        "kind": m.kind,
        "context_length": m.context_length,
        "pricing": {
            "prompt": m.pricing.prompt,
            "completion": m.pricing.completion,
            "input_cache_read": m.pricing.input_cache_read,
            "image": m.pricing.image,
            "request_flows": m.request_flows,
        },
        "plans": catalog.plans_with_model(m),
    }
