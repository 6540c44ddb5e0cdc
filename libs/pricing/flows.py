"""A call's price: USD cost from tokens at list price, Flows from the rate and multiplier in force.

flows = usd_cost / (usd_per_flow * multiplier) + request_flows, computed exactly in
integers and rounded half-up once, to micro-Flows; usd_cost to micro-USD.
"""

from datetime import datetime
from fractions import Fraction
from typing import NamedTuple

from libs.pricing.catalog import Model

PICO_PER_MICRO = 10**6


class Price(NamedTuple):
    usd_cost_micros: int
    flows_micros: int


def usd_cost_pico(model: Model, input_tokens: int, output_tokens: int, cached_tokens: int, images: int) -> int:
    p_in, p_out, p_cache, p_image = model.pico_prices
    return input_tokens * p_in + output_tokens * p_out + cached_tokens * p_cache + images * p_image


def price_call(
    model: Model,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    images: int = 0,
    usd_per_flow: Fraction,
    multiplier: Fraction,
) -> Price:
    pico = usd_cost_pico(model, input_tokens, output_tokens, cached_tokens, images)
    # pico-USD / (USD/Flow * m) = pico-Flows; / 10**6 = micro-Flows. Integers only: exact and fast.
    # The product's terms unreduced: the rounded quotient is the same, without Fraction's gcd (2 µs).
    numerator = usd_per_flow.numerator * multiplier.numerator
    denominator = usd_per_flow.denominator * multiplier.denominator
    usd_micros = _div_half_up(pico, PICO_PER_MICRO)
    flows_micros = _div_half_up(pico * denominator, PICO_PER_MICRO * numerator)
    return Price(usd_micros, flows_micros + model.request_flows_micros)


def _div_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half-up, for numerator >= 0 and denominator > 0."""
    return (2 * numerator + denominator) // (2 * denominator)


class Versioned:
    """A value that changes over time: each version is in force from its effective time on."""

    def __init__(self, initial: Fraction) -> None:
        self._initial = initial
        self._versions: dict[str, tuple[datetime, Fraction]] = {}
        self._sorted: list[tuple[datetime, str, Fraction]] = []

    def add(self, version_id: str, effective_at: datetime, value: Fraction) -> None:
        """Idempotent: the same version id twice is one version."""
        if version_id in self._versions:
            return
        self._versions[version_id] = (effective_at, value)
        self._sorted = sorted((at, vid, v) for vid, (at, v) in self._versions.items())

    def merge(self, other: "Versioned") -> None:
        """Add the versions only `other` has."""
        for version_id, (effective_at, value) in other._versions.items():
            self.add(version_id, effective_at, value)

    def copy(self) -> "Versioned":
        other = Versioned(self._initial)
        other._versions = dict(self._versions)
        other._sorted = list(self._sorted)
        return other

    def at(self, when: datetime) -> Fraction:
        value = self._initial
        for effective_at, _, version_value in self._sorted:
            if effective_at > when:
                break
            value = version_value
        return value
