"""`flowplan accounts show`: one account as its owners see it: quota (plan, windows, PAYG,
Extra Usage) and keys over request/reply, and its latest events straight from the log."""

from datetime import datetime
from typing import TypeVar

import msgspec
from nats.aio.client import Client

from libs.eventlog import subjects
from libs.ops import OpsError, connected
from libs.ops.events import Line, Selection, last_events, to_line
from libs.pricing.money import micros_to_str
from libs.refusal import Refusal
from libs.rpc import Unavailable, ask
from libs.settings import Settings
from proto.v1 import KeyView, ListKeys, QuotaStatus, QuotaStatusRequest, WindowStatus, rpc
from proto.v1.rpc import Rpc

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class AccountReport(msgspec.Struct, kw_only=True):
    """What --json prints: the services' own messages (integer micro-units), the log's lines."""

    account_id: str
    quota: QuotaStatus
    keys: list[KeyView]
    events: list[Line]


async def _ask(nc: Client, settings: Settings, call: Rpc[Req, Rep], message: Req) -> Rep:
    try:
        return await ask(nc, call, message, settings.request_timeout_s)
    except Unavailable as exc:
        cause = exc.__cause__.__class__.__name__
        raise OpsError(f"the {call.service} service did not answer {call.subject} ({cause})") from exc
    except Refusal as exc:
        raise OpsError(f"{call.service} service: {exc.message}") from exc


async def report(settings: Settings, account_id: str, n_events: int = 10) -> AccountReport:
    if not subjects.ACCOUNT_TOKEN.match(account_id):
        raise OpsError(f"{account_id!r}: not an account id (letters, digits, '_' and '-')")
    async with connected(settings) as nc:
        status = await _ask(nc, settings, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=account_id))
        if not status.known:
            raise OpsError(f"unknown account {account_id}")
        keys = await _ask(nc, settings, rpc.KEYS_LIST, ListKeys(account_id=account_id))
        recent, _ = await last_events(nc.jetstream(), settings.stream, Selection(accounts=(account_id,)), n_events)
    return AccountReport(
        account_id=account_id, quota=status, keys=keys.keys, events=[to_line(stored) for stored in recent]
    )


def _time(when: datetime | None) -> str:
    return when.isoformat().replace("+00:00", "Z") if when is not None else "-"


def _flows(micros: int) -> str:
    return micros_to_str(micros).rstrip("0").rstrip(".")


def _window(label: str, window: WindowStatus) -> str:
    return (
        f"  {label:<9} {_flows(window.used_flows_micros)} of {_flows(window.limit_flows_micros)} Flows used, "
        f"{_flows(window.remaining_flows_micros)} left, {_flows(window.reserved_flows_micros)} reserved; "
        f"started {_time(window.started_at)}, resets {_time(window.resets_at)}"
    )


class _Summary(msgspec.Struct):
    """The few event fields the human view shows; every event has the first two."""

    type: str
    occurred_at: datetime
    model: str | None = None
    flows_micros: int | None = None


_summary = msgspec.json.Decoder(_Summary)


def _event(entry: Line) -> str:
    head = f"  #{entry.seq} stored {_time(entry.stored_at)}"
    if not entry.event:
        return f"{head}  (not an event: {entry.unreadable!r:.60})"
    try:
        event = _summary.decode(entry.event)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"{head}  (not an event: {bytes(entry.event)[:60]!r})"
    usage = f"  {event.model} {_flows(event.flows_micros or 0)} Flows" if event.model else ""
    return f"{head}  {event.type} at {_time(event.occurred_at)}{usage}"


def render(report: AccountReport) -> str:
    """The human view: one screen, Flows and USD as decimals."""
    quota = report.quota
    extra = f"on (PAYG key {quota.payg_key_id})" if quota.extra_usage else "off"
    lines = [
        f"account {report.account_id}  plan {quota.plan}",
        _window("5-hour", quota.window_5h),
        _window("weekly", quota.weekly),
        _window("monthly", quota.monthly),
        f"  PAYG balance ${micros_to_str(quota.balance_micros, 2)} "
        f"(${micros_to_str(quota.payg_reserved_micros, 2)} held by calls in flight); Extra Usage {extra}",
        f"keys ({len(report.keys)})",
    ]
    for key in report.keys:
        state = f"revoked {_time(key.revoked_at)}" if key.revoked_at else f"last used {_time(key.last_used_at)}"
        created = _time(key.created_at)
        lines.append(f"  {key.id}  {key.kind:<12} {key.prefix}…{key.last4}  {key.name!r}  created {created}, {state}")
    lines.append(f"last events ({len(report.events)})")
    lines += [_event(entry) for entry in report.events]
    return "\n".join(lines)
