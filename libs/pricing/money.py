"""Exact money and Flow arithmetic: integers in micro-units, Fractions for rates, half-up rounding."""

import functools
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction

MICRO = 1_000_000


class InvalidAmount(ValueError):
    pass


@functools.lru_cache(maxsize=4096)  # rates and multipliers repeat on every priced call
def parse_fraction(text: str) -> Fraction:
    """Parse "0.02525", "20", "5/198" or "1/39.6" into an exact Fraction."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            value = _exact(numerator) / _exact(denominator)
        else:
            value = _exact(text)
    except (InvalidOperation, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise InvalidAmount(f"not a number: {text!r}") from exc
    return value


def _exact(text: str) -> Fraction:
    number = Decimal(text.strip())
    # Refuse infinities and absurd exponents before Fraction builds a gigantic integer.
    if not number.is_finite() or not -24 <= number.adjusted() <= 24 or number.as_tuple().exponent < -24:  # type: ignore[operator]
        raise InvalidOperation(text)
    return Fraction(number)


def fraction_text(value: Fraction) -> str:
    """The exact, canonical text of a Fraction ("5/198", "1"). Not remembered: a cache would hash
    the Fraction (a modular inverse in Python, 1.3 µs a lookup), twice the cost of the text itself."""
    return str(value)


def round_half_up(value: Fraction) -> int:
    """Round to the nearest integer, halves away from zero."""
    return round_half_up_ratio(value.numerator, value.denominator)


def round_half_up_ratio(n: int, d: int) -> int:
    """round_half_up(Fraction(n, d)) without building the Fraction (its gcd, on a hot path); d != 0."""
    if d < 0:
        n, d = -n, -d
    if n >= 0:
        return (2 * n + d) // (2 * d)
    return -((-2 * n + d) // (2 * d))


def to_micros(text: str) -> int:
    """A decimal amount ("20.00", "0.5") to integer micro-units; more than 6 decimals is refused."""
    value = parse_fraction(text) * MICRO
    if value.denominator != 1:
        raise InvalidAmount(f"more than 6 decimal places: {text!r}")
    return value.numerator


_WHOLE_DIGITS_LIMIT = 10**18
"""Below it Decimal's 28 digits hold every micro-unit exactly: the text without Decimal is the same."""


def micros_to_str(micros: int, places: int = 6) -> str:
    """Micro-units as a decimal string rounded half-up to `places` ("54.55" for places=2)."""
    if places == 6 and -_WHOLE_DIGITS_LIMIT < micros < _WHOLE_DIGITS_LIMIT:
        # Nothing to round: the digits as they are (the gateway writes Flows left on every answer,
        # and the Decimal division and quantize were 2 µs of it).
        whole, fraction = divmod(abs(micros), MICRO)
        return f"{'-' if micros < 0 else ''}{whole}.{fraction:06d}"
    quantum = Decimal(1).scaleb(-places)
    return str((Decimal(micros) / MICRO).quantize(quantum, rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> str:
    """Exact micro-USD as a money string: at least cents, more decimals only where they are not zero
    ("20.00", "1.234567", "-0.50")."""
    text = micros_to_str(micros).rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents:0<2}"


def micros_to_number(micros: int) -> float | int:
    """Flows for JSON: a number with up to 6 decimals, built from the exact decimal text."""
    text = micros_to_str(micros).rstrip("0").rstrip(".")
    return int(text) if "." not in text else float(text)
