"""Exact money arithmetic, the catalog, call pricing, versioned rates and GET /v1/plans numbers."""

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.pricing.catalog import Model, ModelPricing, load_catalog
from libs.pricing.flows import Versioned, price_call
from libs.pricing.money import (
    MICRO,
    InvalidAmount,
    micros_to_number,
    micros_to_str,
    parse_fraction,
    round_half_up,
    to_micros,
)
from services.ingress.views import plans

DEFAULT_RATE = Fraction(10, 396)  # exactly 1/39.6 USD per Flow


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


# --- money ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.02525", Fraction(2525, 100000)),
        ("20", Fraction(20)),
        ("5/198", Fraction(5, 198)),
        ("1/39.6", Fraction(5, 198)),
        ("10/396", Fraction(5, 198)),
        (" 2 / 4 ", Fraction(1, 2)),
        ("-0.5", Fraction(-1, 2)),
        ("1e3", Fraction(1000)),
        ("0.1", Fraction(1, 10)),  # exact, not the binary float 0.1000000000000000055...
    ],
)
def test_parse_fraction_is_exact(text, expected):
    assert parse_fraction(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1/0", "NaN", "sNaN", "1/", "/2", "1,5", "0x10"])
def test_parse_fraction_refuses_non_numbers(text):
    with pytest.raises(InvalidAmount):
        parse_fraction(text)


@pytest.mark.parametrize("text", ["Infinity", "-inf", "1/Infinity", "1e999999999", "1e-999999999"])
def test_parse_fraction_refuses_infinities_and_absurd_exponents(text):
    """Infinity used to escape as OverflowError (a 500); a huge exponent would build a
    gigantic integer. Both must be a plain InvalidAmount (a 400 naming the field)."""
    with pytest.raises(InvalidAmount):
        parse_fraction(text)


def test_admin_positive_infinity_is_a_400():
    from libs.web import ApiError
    from services.ingress.admin import positive

    with pytest.raises(ApiError) as caught:
        positive("Infinity", "usd_per_flow")
    assert caught.value.status == 400
    assert caught.value.field == "usd_per_flow"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(0), 0),
        (Fraction(1, 2), 1),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 3),  # half-up, not banker's rounding (which gives 2)
        (Fraction(49, 100), 0),
        (Fraction(51, 100), 1),
        (Fraction(-1, 2), -1),  # halves away from zero
        (Fraction(-5, 2), -3),
        (Fraction(-49, 100), 0),
        (Fraction(-51, 100), -1),
        (Fraction(7), 7),
        (Fraction(-7), -7),
    ],
)
def test_round_half_up(value, expected):
    assert round_half_up(value) == expected


@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**12))
def test_round_half_up_matches_decimal_half_up(value):
    from decimal import ROUND_HALF_UP, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert round_half_up(value) == expected
    assert abs(Fraction(round_half_up(value)) - value) <= Fraction(1, 2)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("20.00", 20_000_000),
        ("0.5", 500_000),
        ("0.000001", 1),
        ("-1.5", -1_500_000),
        ("0", 0),
        ("5/4", 1_250_000),
    ],
)
def test_to_micros(text, micros):
    assert to_micros(text) == micros


@pytest.mark.parametrize("text", ["0.0000001", "1e-7", "1/3", "abc"])
def test_to_micros_refuses_more_than_six_decimals_or_junk(text):
    with pytest.raises(InvalidAmount):
        to_micros(text)


@pytest.mark.parametrize(
    ("micros", "places", "text"),
    [
        (20_000_000, 2, "20.00"),
        (54_545_455, 2, "54.55"),
        (5_000, 2, "0.01"),  # exactly half a cent rounds up
        (4_999, 2, "0.00"),
        (-5_000, 2, "-0.01"),
        (1, 6, "0.000001"),
        (1_234_567, 6, "1.234567"),
        (1_500_000, 0, "2"),
        (2_500_000, 0, "3"),  # half-up, not half-even
    ],
)
def test_micros_to_str(micros, places, text):
    assert micros_to_str(micros, places) == text


@pytest.mark.parametrize(
    ("micros", "number", "kind"),
    [
        (0, 0, int),
        (10_000_000, 10, int),
        (50_400_000, 50.4, float),
        (1, 0.000001, float),
        (123_456_789, 123.456789, float),
        (-1_500_000, -1.5, float),
    ],
)
def test_micros_to_number(micros, number, kind):
    result = micros_to_number(micros)
    assert result == number
    assert type(result) is kind


@given(st.integers(min_value=-(10**20), max_value=10**20) | st.integers(min_value=-(10**7), max_value=10**7))
def test_micros_to_str_at_six_places_is_decimals_text(micros):
    """Six places is written from the integer's digits (no Decimal): the same text Decimal gives."""
    expected = str((Decimal(micros) / MICRO).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP))
    assert micros_to_str(micros) == expected


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_round_trip_through_text(micros):
    assert to_micros(micros_to_str(micros)) == micros
    assert Decimal(str(micros_to_number(micros))) * MICRO == micros


# --- catalog ------------------------------------------------------------------------------


def test_catalog_models_and_tiers(catalog):
    assert len(catalog.models) == 96
    tiers = [m.tier for m in catalog.models.values()]
    assert tiers.count("free") == 12
    assert sorted(m.id for m in catalog.models.values() if m.tier == "max") == [
        "openai/gpt-5-pro",
        "openai/gpt-5.2-pro",
    ]
    assert set(tiers) == {"free", "pro", "max"}


def test_catalog_plans_and_limits(catalog):
    assert list(catalog.plans) == ["free", "pro", "max", "ultra"]
    assert catalog.default_usd_per_flow == DEFAULT_RATE
    assert catalog.plan("free").limits_micros == (5_000_000, 50_400_000, 216_000_000)
    assert catalog.plan("pro").limits_micros == (50_000_000, 504_000_000, 2_160_000_000)
    assert catalog.plan("max").limits_micros == (300_000_000, 3_024_000_000, 12_960_000_000)
    assert catalog.plan("ultra").limits_micros == (800_000_000, 8_064_000_000, 34_560_000_000)
    assert [catalog.plan(p).rpm for p in catalog.plans] == [10, 10, 15, 15]


def test_catalog_models_per_plan(catalog):
    free = {m.id for m in catalog.models_in_plan("free")}
    pro = {m.id for m in catalog.models_in_plan("pro")}
    max_ = {m.id for m in catalog.models_in_plan("max")}
    ultra = {m.id for m in catalog.models_in_plan("ultra")}
    assert len(free) == 12
    assert free < pro < max_
    assert len(pro) >= 70
    assert max_ == ultra == set(catalog.models)
    assert max_ - pro == {"openai/gpt-5-pro", "openai/gpt-5.2-pro"}
    assert catalog.plans_with_model(catalog.models["openai/gpt-5-pro"]) == ["max", "ultra"]
    a_free_model = next(m for m in catalog.models.values() if m.tier == "free")
    assert catalog.plans_with_model(a_free_model) == ["free", "pro", "max", "ultra"]


def test_catalog_prices_are_exact_pico_usd(catalog):
    sonnet = catalog.models["anthropic/claude-3.5-sonnet"]
    assert sonnet.pico_prices == (3_000_000, 15_000_000, 300_000, 0)
    assert sonnet.request_flows_micros == 10_000
    for model in catalog.models.values():
        assert all(p >= 0 for p in model.pico_prices)
        assert model.request_flows_micros >= 0
        if model.kind == "image":
            assert model.pico_prices[3] > 0, model.id


def _model(prompt="0", completion="0", cache="0", image="0", request_flows="0", kind="chat") -> Model:
    return Model(
        id="test/model",
        name="Test",
        vendor="test",
        api="openai",
        kind=kind,
        tier="free",
        context_length=1000,
        pricing=ModelPricing(prompt=prompt, completion=completion, input_cache_read=cache, image=image),
        request_flows=request_flows,
    )


def test_catalog_refuses_sub_pico_prices():
    from libs.pricing.catalog import Catalog

    with pytest.raises(ValueError, match="pico"):
        Catalog([_model(prompt="0.0000000000001")], [], DEFAULT_RATE)


# --- price_call ---------------------------------------------------------------------------


def test_price_call_sonnet_at_default_rate(catalog):
    sonnet = catalog.models["anthropic/claude-3.5-sonnet"]
    price = price_call(sonnet, input_tokens=1000, output_tokens=500, usd_per_flow=DEFAULT_RATE, multiplier=Fraction(1))
    # 1000 * $3/M + 500 * $15/M = $0.0105; 0.0105 * 39.6 = 0.4158 Flows + 0.01 per call
    assert price.usd_cost_micros == 10_500
    assert price.flows_micros == 425_800


def test_price_call_multiplier_gives_more_value_per_flow(catalog):
    sonnet = catalog.models["anthropic/claude-3.5-sonnet"]
    insider = price_call(
        sonnet, input_tokens=1000, output_tokens=500, usd_per_flow=DEFAULT_RATE, multiplier=Fraction(2)
    )
    abuser = price_call(
        sonnet, input_tokens=1000, output_tokens=500, usd_per_flow=DEFAULT_RATE, multiplier=Fraction(1, 2)
    )
    assert insider.usd_cost_micros == abuser.usd_cost_micros == 10_500  # USD cost does not depend on it
    assert insider.flows_micros == 207_900 + 10_000
    assert abuser.flows_micros == 831_600 + 10_000


def test_price_call_counts_cached_tokens_and_images():
    model = _model(prompt="0.000002", completion="0.00001", cache="0.0000005", image="0.04", kind="image")
    price = price_call(
        model,
        input_tokens=100,
        output_tokens=10,
        cached_tokens=1000,
        images=2,
        usd_per_flow=Fraction(1, 40),
        multiplier=Fraction(1),
    )
    usd = Fraction(100 * 2 + 10 * 10 + 1000 * Fraction(1, 2), 10**6) + Fraction(8, 100)
    assert price.usd_cost_micros == usd * MICRO == 80_800
    assert price.flows_micros == usd * 40 * MICRO == 3_232_000


def test_price_call_rounds_half_up_once_from_the_exact_cost():
    # 1 token at $0.0000005 = 0.5 micro-USD: rounds up to 1.
    half = _model(prompt="0.0000005")
    assert price_call(half, input_tokens=1, output_tokens=0, usd_per_flow=Fraction(1), multiplier=Fraction(1)) == (1, 1)
    # 0.4 micro-USD rounds to 0 micro-USD, but its Flows (0.8 micro-Flows at $0.5/Flow) are
    # computed from the exact cost, not from the rounded one: 1, not 0.
    small = _model(prompt="0.0000004")
    price = price_call(small, input_tokens=1, output_tokens=0, usd_per_flow=Fraction(1, 2), multiplier=Fraction(1))
    assert price.usd_cost_micros == 0
    assert price.flows_micros == 1


_rates = st.fractions(min_value=Fraction(1, 10**6), max_value=10**3, max_denominator=10**6)


@given(
    tokens=st.tuples(*[st.integers(0, 10**7)] * 3),
    prompt=st.sampled_from(["0", "0.0000005", "0.000003", "0.0000151", "0.00007"]),
    usd_per_flow=_rates,
    multiplier=_rates,
)
def test_price_call_is_the_exact_quotient_rounded_half_up_once(tokens, prompt, usd_per_flow, multiplier):
    # price_call divides by the rate times the multiplier without reducing that product (no gcd):
    # the result must be the exact Fraction arithmetic's, whatever the two have in common.
    model = _model(prompt=prompt, completion="0.000015", cache="0.0000003", request_flows="0.01")
    input_tokens, output_tokens, cached_tokens = tokens
    price = price_call(
        model, input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens,
        usd_per_flow=usd_per_flow, multiplier=multiplier,
    )  # fmt: skip
    usd = input_tokens * Fraction(prompt) + output_tokens * Fraction(15, 10**6) + cached_tokens * Fraction(3, 10**7)
    assert price.usd_cost_micros == round_half_up(usd * MICRO)
    assert price.flows_micros == round_half_up(usd / (usd_per_flow * multiplier) * MICRO) + 10_000


def test_price_call_zero_tokens_costs_the_per_call_overhead(catalog):
    sonnet = catalog.models["anthropic/claude-3.5-sonnet"]
    price = price_call(sonnet, input_tokens=0, output_tokens=0, usd_per_flow=DEFAULT_RATE, multiplier=Fraction(1))
    assert price == (0, 10_000)


@given(
    st.integers(0, 10**8),
    st.integers(0, 10**8),
    st.integers(0, 10**8),
    st.fractions(min_value=Fraction(1, 1000), max_value=10, max_denominator=1000),
)
def test_price_call_matches_the_formula(input_tokens, output_tokens, cached_tokens, multiplier):
    model = _model(prompt="0.0000025", completion="0.00001", cache="0.00000025", request_flows="0.015")
    price = price_call(
        model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        usd_per_flow=DEFAULT_RATE,
        multiplier=multiplier,
    )
    usd = (
        input_tokens * Fraction("0.0000025")
        + output_tokens * Fraction("0.00001")
        + cached_tokens * Fraction("0.00000025")
    )
    assert abs(price.usd_cost_micros - usd * MICRO) <= Fraction(1, 2)
    flows = usd / (DEFAULT_RATE * multiplier) * MICRO
    assert abs(price.flows_micros - 15_000 - flows) <= Fraction(1, 2)


# --- Versioned ----------------------------------------------------------------------------

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def test_versioned_value_in_force_at_each_time():
    rate = Versioned(DEFAULT_RATE)
    rate.add("v2", T0 + timedelta(days=10), Fraction(3, 100))
    rate.add("v1", T0, Fraction(2, 100))  # added out of order
    assert rate.at(T0 - timedelta(microseconds=1)) == DEFAULT_RATE
    assert rate.at(T0) == Fraction(2, 100)  # in force from its effective time on, inclusive
    assert rate.at(T0 + timedelta(days=10) - timedelta(microseconds=1)) == Fraction(2, 100)
    assert rate.at(T0 + timedelta(days=10)) == Fraction(3, 100)
    assert rate.at(T0 + timedelta(days=1000)) == Fraction(3, 100)


def test_versioned_add_is_idempotent_by_version_id():
    rate = Versioned(Fraction(1))
    rate.add("v1", T0, Fraction(2))
    rate.add("v1", T0 - timedelta(days=1), Fraction(5))  # the same version again: ignored
    assert rate.at(T0 - timedelta(hours=1)) == Fraction(1)
    assert rate.at(T0) == Fraction(2)


# --- GET /v1/plans --------------------------------------------------------------------------


def test_plans_reproduce_the_product_page_at_the_default_rate(catalog):
    body = plans(catalog, catalog.default_usd_per_flow)
    by_id = {p["id"]: p for p in body["plans"]}
    assert list(by_id) == ["free", "pro", "max", "ultra"]
    assert [by_id[p]["equivalent_usd"] for p in ("pro", "max", "ultra")] == ["54.55", "327.27", "872.73"]
    assert [by_id[p]["leverage"] for p in ("pro", "max", "ultra")] == [2.73, 3.27, 4.36]
    assert by_id["free"]["equivalent_usd"] == "5.45"
    assert by_id["free"]["leverage"] is None  # a $0 plan has no leverage (no division by zero)
    assert [by_id[p]["price_usd"] for p in by_id] == ["0.00", "20.00", "100.00", "200.00"]
    pro = by_id["pro"]
    assert (pro["window_5h_flows"], pro["weekly_flows"], pro["monthly_flows"], pro["rpm"]) == (
        50,
        504,
        2160,
        10,
    )
    assert by_id["free"]["weekly_flows"] == 50.4
    assert len(by_id["free"]["models"]) == 12
    assert "openai/gpt-5-pro" in by_id["max"]["models"]
    assert "openai/gpt-5-pro" not in by_id["pro"]["models"]
    assert body["usd_per_flow"] == "0.025253"
    assert Fraction(body["usd_per_flow_exact"]) == DEFAULT_RATE


def test_plans_follow_the_rate_in_force(catalog):
    body = plans(catalog, Fraction(3, 100))
    by_id = {p["id"]: p for p in body["plans"]}
    # 2160 * 0.03 = 64.80 (3.24x); 12960 * 0.03 = 388.80 (3.888x); 34560 * 0.03 = 1036.80 (5.184x)
    assert [by_id[p]["equivalent_usd"] for p in ("free", "pro", "max", "ultra")] == [
        "6.48",
        "64.80",
        "388.80",
        "1036.80",
    ]
    assert [by_id[p]["leverage"] for p in ("pro", "max", "ultra")] == [3.24, 3.89, 5.18]
    assert body["usd_per_flow"] == "0.030000"
    # the limits in Flows do not depend on the rate
    assert by_id["pro"]["monthly_flows"] == 2160


def test_page_rate_0_02525_does_not_reproduce_the_table(catalog):
    """The spec's reason for 1/39.6: the rounded $0.02525 gives 54.54, not 54.55."""
    by_id = {p["id"]: p for p in plans(catalog, Fraction("0.02525"))["plans"]}
    assert by_id["pro"]["equivalent_usd"] == "54.54"
