"""Which value multiplier prices an account's call: the one rule quota (for the gateway) and
ingress (for metered usage) both apply, so that the same call is priced the same either way.

The operator's explicit multiplier wins when one is set (anything but the standard 1); else
the plans file's insider multiplier while the account is an insider; else 1 (SPEC §1)."""

from datetime import datetime
from fractions import Fraction

from libs.pricing.flows import Versioned

STANDARD = Fraction(1)


def effective_multiplier(explicit: Fraction, insider: bool, insider_multiplier: Fraction) -> Fraction:
    if explicit != STANDARD:
        return explicit
    return insider_multiplier if insider else STANDARD


class InsiderHistory:
    """Whether the account is an insider over time: marked and unmarked by the operator
    (InsiderStatusSet), ended for good by a lapse to Free (InsiderStatusEnded, effective at the
    lapse). Each change is keyed by its event id, so applying one twice changes nothing."""

    def __init__(self) -> None:
        self._versions = Versioned(Fraction(0))

    def add(self, event_id: str, effective_at: datetime, insider: bool) -> None:
        self._versions.add(event_id, effective_at, Fraction(int(insider)))

    def merge(self, other: "InsiderHistory") -> None:
        self._versions.merge(other._versions)

    def copy(self) -> "InsiderHistory":
        other = InsiderHistory()
        other._versions = self._versions.copy()
        return other

    def at(self, when: datetime) -> bool:
        return self._versions.at(when) == 1


class _SharedMultiplier(Versioned):
    """The multiplier history of every account whose multiplier never changed, one per value: shared
    (a million accounts at scale, some 600 bytes each otherwise), so it cannot change in place: its
    owner replaces it with a changed copy (quota's AccountQuota.with_multiplier)."""

    def add(self, version_id: str, effective_at: datetime, value: Fraction) -> None:
        raise TypeError("a shared multiplier history never changes: replace it with a changed copy")


class _SharedInsider(InsiderHistory):
    """The insider history of every account never marked: shared, see _SharedMultiplier."""

    def add(self, event_id: str, effective_at: datetime, insider: bool) -> None:
        raise TypeError("a shared insider history never changes: replace it with a changed copy")


NEVER_INSIDER: InsiderHistory = _SharedInsider()
_SHARED_MULTIPLIERS: dict[tuple[int, int], Versioned] = {}
"""By numerator and denominator (a Fraction's own hash costs a modular inverse)."""


def unchanged_multiplier(value: Fraction) -> Versioned:
    """The shared history of a multiplier that never changed from `value`."""
    key = (value.numerator, value.denominator)
    shared = _SHARED_MULTIPLIERS.get(key)
    if shared is None:
        shared = _SHARED_MULTIPLIERS[key] = _SharedMultiplier(value)
    return shared


def multiplier_at(
    explicit: Versioned, insider: InsiderHistory, insider_multiplier: Fraction, when: datetime
) -> Fraction:
    """The multiplier that prices a call made at `when`."""
    return effective_multiplier(explicit.at(when), insider.at(when), insider_multiplier)
