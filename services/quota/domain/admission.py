"""Admission: may a call start now, and what does the account's quota look like.

A call is admitted on the subscription while the 5-hour window, the week and the
month all still have room: used + reserved < cap. The call that crosses a cap may
finish (its cost is only known at the end); in-flight calls hold a reservation of
their estimate so that concurrent calls cannot run far past a cap.
"""

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from fractions import Fraction
from typing import NamedTuple

from libs.pricing.catalog import Model, Plan
from libs.pricing.flows import Versioned
from libs.pricing.money import round_half_up_ratio
from libs.pricing.multipliers import NEVER_INSIDER, InsiderHistory, unchanged_multiplier
from proto.v1.events import BillingMode
from services.quota.domain.compact import MonthTotals, PackedWindow, flat_months, pack_window, unpack_window
from services.quota.domain.periods import Period, Segment, period_at, segment_at
from services.quota.domain.ratelimit import RateDecision, gcra
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK, Window, current


class AccountQuota:
    """What admission needs to know of one account, kept in memory (a million of them at scale:
    slots, the shared histories of unchanged multipliers and insider marks, and the windows,
    months and plans held compactly: services/quota/domain/compact.py)."""

    __slots__ = (
        "_segments", "balance", "created_at", "extra_usage", "insider", "months_flat", "multiplier", "packed_5h",
        "packed_weekly", "payg_key_id",
    )  # fmt: skip

    def __init__(
        self,
        created_at: datetime,
        segments: Sequence[Segment],
        window_5h: Window | None = None,
        weekly: Window | None = None,
        months: Mapping[datetime, int] | None = None,
        multiplier: Versioned | None = None,
        balance: int = 0,
        extra_usage: bool = False,
        payg_key_id: str | None = None,
        insider: InsiderHistory = NEVER_INSIDER,
    ) -> None:
        self.created_at = created_at
        self._segments = tuple(segments)
        self.packed_5h: PackedWindow = pack_window(window_5h, FIVE_HOURS) if window_5h is not None else None
        """The latest 5-hour window as compact.pack_window holds it (`window_5h` reads and writes it)."""
        self.packed_weekly: PackedWindow = pack_window(weekly, ONE_WEEK) if weekly is not None else None
        self.months_flat: tuple[datetime | int, ...] = flat_months(months) if months else ()
        """The monthly totals as (start, flows, start, flows, ...) (`months` reads and writes them)."""
        self.multiplier = multiplier if multiplier is not None else unchanged_multiplier(Fraction(1))
        """The operator's explicit multiplier over time (1: none set)."""
        self.balance = balance
        """The PAYG balance in micro-USD: the sum of the account's ledger."""
        self.extra_usage = extra_usage
        self.payg_key_id = payg_key_id
        self.insider = insider

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The plan history, in time order (a tuple: most accounts have one or two plans)."""
        return self._segments

    @segments.setter
    def segments(self, segments: Sequence[Segment]) -> None:
        self._segments = tuple(segments)

    @property
    def window_5h(self) -> Window | None:
        """The latest 5-hour window."""
        return unpack_window(self.packed_5h, FIVE_HOURS)

    @window_5h.setter
    def window_5h(self, window: Window | None) -> None:
        self.packed_5h = pack_window(window, FIVE_HOURS)

    @property
    def weekly(self) -> Window | None:
        """The latest weekly window."""
        return unpack_window(self.packed_weekly, ONE_WEEK)

    @weekly.setter
    def weekly(self, window: Window | None) -> None:
        self.packed_weekly = pack_window(window, ONE_WEEK)

    @property
    def months(self) -> MonthTotals:
        """Flows per monthly period, by the period's start."""
        return MonthTotals(self)

    @months.setter
    def months(self, months: Mapping[datetime, int]) -> None:
        self.months_flat = flat_months(months)

    def _fields(self) -> tuple[object, ...]:
        return (
            self.created_at, self._segments, self.packed_5h, self.packed_weekly, self.months,
            self.multiplier, self.balance, self.extra_usage, self.payg_key_id, self.insider,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:  # as the dataclass it was compared
        return isinstance(other, AccountQuota) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return (
            f"AccountQuota({self.created_at!r}, {self.segments!r}, {self.window_5h!r}, {self.weekly!r}, "
            f"{self.months!r}, balance={self.balance!r}, extra_usage={self.extra_usage!r})"
        )

    def copy(self) -> "AccountQuota":
        """A copy that can change without touching this one. Windows, months and segments are
        immutable; the multiplier and insider histories are shared: whoever changes one replaces it
        with a changed copy (`with_multiplier`, `with_insider`), so a batch of usage (most of the
        log) copies neither."""
        other = AccountQuota.__new__(AccountQuota)
        other.created_at, other._segments, other.packed_5h, other.packed_weekly, other.months_flat = (
            self.created_at, self._segments, self.packed_5h, self.packed_weekly, self.months_flat,
        )  # fmt: skip
        other.multiplier, other.balance, other.extra_usage, other.payg_key_id, other.insider = (
            self.multiplier, self.balance, self.extra_usage, self.payg_key_id, self.insider,
        )  # fmt: skip
        return other

    def with_multiplier(self, version_id: str, effective_at: datetime, value: Fraction) -> None:
        changed = self.multiplier.copy()
        changed.add(version_id, effective_at, value)
        self.multiplier = changed

    def with_insider(self, event_id: str, effective_at: datetime, insider: bool) -> None:
        changed = self.insider.copy()
        changed.add(event_id, effective_at, insider)
        self.insider = changed

    def plan_at(self, when: datetime) -> str:
        return self.segments[segment_at(self.segments, when)].plan_at(when)


class Limits(NamedTuple):
    window_5h: int
    weekly: int
    monthly: int


class WindowView(NamedTuple):
    used: int
    limit: int
    reserved: int
    started_at: datetime | None
    resets_at: datetime | None

    @property
    def has_room(self) -> bool:
        return self.used + self.reserved < self.limit


class QuotaView(NamedTuple):
    plan: str
    window_5h: WindowView
    weekly: WindowView
    monthly: WindowView


class Decision(NamedTuple):
    admitted: bool
    reason: str | None
    view: QuotaView
    retry_after_s: int | None


def view(account: AccountQuota, limits_by_plan: Mapping[str, Limits], reserved: int, now: datetime) -> QuotaView:
    plan = account.plan_at(now)
    limits = limits_by_plan[plan]
    w5 = current(account.window_5h, now)
    wk = current(account.weekly, now)
    period: Period = period_at(account.segments, now)
    return QuotaView(
        plan=plan,
        window_5h=WindowView(
            w5.flows if w5 else 0,
            limits.window_5h,
            reserved,
            w5.start if w5 else None,
            w5.end if w5 else None,
        ),
        weekly=WindowView(
            wk.flows if wk else 0, limits.weekly, reserved, wk.start if wk else None, wk.end if wk else None
        ),
        monthly=WindowView(account.months.get(period.start, 0), limits.monthly, reserved, period.start, period.end),
    )


def decide(account: AccountQuota, limits_by_plan: Mapping[str, Limits], reserved: int, now: datetime) -> Decision:
    quota = view(account, limits_by_plan, reserved, now)
    blocking = [w for w in quota if isinstance(w, WindowView) and not w.has_room]
    if not blocking:
        return Decision(True, None, quota, None)
    waits = [(w.resets_at - now).total_seconds() for w in blocking if w.resets_at is not None]
    # Blocked by reservations alone (no window open yet): in-flight calls report within seconds.
    retry_after = max(1, math.ceil(max(waits))) if waits else 1
    return Decision(False, "quota_exhausted", quota, retry_after)


class Admission(NamedTuple):
    """The whole answer to "may this call start?", before any state changes."""

    admitted: bool
    billing_mode: BillingMode | None
    """subscription or payg when admitted (and payg when a PAYG call is refused)."""
    reason: str | None
    rate: RateDecision | None
    """The RPM verdict (None when refused before the RPM check)."""
    quota: QuotaView | None
    retry_after_s: int | None


def admit(
    account: AccountQuota,
    plan: Plan,
    model: Model | None,
    *,
    billing_mode: str,
    rate_tat: datetime | None,
    reserved: int,
    payg_reserved: int,
    estimate_usd: int,
    limits_by_plan: Mapping[str, Limits],
    now: datetime,
) -> Admission:
    """The plan's models, then the RPM limit, then the subscription's windows; past a cap, with
    Extra Usage on, the PAYG balance. A PAYG call (key, posted mode or a Pay As You Go Studio Chat
    conversation) bills the balance directly and may call every model: the plan limits what the
    subscription pays for, not what the balance may buy (SPEC §5: "every model on PAYG").

    PAYG admission needs the balance, less the estimates of PAYG calls still running, to
    cover this call's estimate: so the balance can go below zero only by what calls admitted
    while it still covered them cost beyond their estimates."""
    if model is None:
        return Admission(False, None, "unknown_model", None, None, None)
    if model.tier not in plan.tiers and billing_mode != "payg":
        return Admission(False, None, "model_not_in_plan", None, None, None)
    rate = gcra(rate_tat, now, plan.rpm)
    if not rate.allowed:
        return Admission(False, None, "rate_limit_exceeded", rate, None, rate.retry_after_s)
    covered = account.balance - payg_reserved >= max(estimate_usd, 1)
    if billing_mode == "payg":
        if covered:
            return Admission(True, "payg", None, rate, None, None)
        return Admission(False, "payg", "insufficient_balance", rate, None, None)
    decision = decide(account, limits_by_plan, reserved, now)
    if decision.admitted:
        return Admission(True, "subscription", None, rate, decision.view, None)
    if account.extra_usage:
        if covered:
            return Admission(True, "payg", None, rate, decision.view, None)
        return Admission(False, "payg", "insufficient_balance", rate, decision.view, decision.retry_after_s)
    return Admission(False, None, decision.reason, rate, decision.view, decision.retry_after_s)


class Estimate(NamedTuple):
    """A call's estimated cost in both units: what a subscription call (micro-Flows) or a PAYG call
    (micro-USD) reserves."""

    flows: int
    usd: int


def estimate(flows_micros: int, usd_micros: int, usd_per_flow: Fraction, multiplier: Fraction) -> Estimate:
    """The gateway estimates in USD when it can (the model's prices), else in Flows: the other unit
    follows at the Flow rate and the account's multiplier in force now."""
    # USD per Flow at this multiplier as n/d, in integers: exact like the Fractions, without their
    # normalising gcd per operation (a quarter of quota's own work per check).
    n = usd_per_flow.numerator * multiplier.numerator
    d = usd_per_flow.denominator * multiplier.denominator
    usd = usd_micros or round_half_up_ratio(flows_micros * n, d)
    flows = round_half_up_ratio(usd_micros * d, n) if usd_micros > 0 else flows_micros
    return Estimate(flows, usd)


def flows_remaining(admission: Admission, estimate_flows: int) -> int:
    """The 5-hour window's room once this call holds its reservation (0 without a window view)."""
    window = admission.quota.window_5h if admission.quota else None
    if window is None:
        return 0
    room = window.limit - window.used - window.reserved
    if admission.admitted and admission.billing_mode == "subscription":
        room -= estimate_flows
    return max(0, room)
