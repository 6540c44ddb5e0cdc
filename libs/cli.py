"""The `flowplan` ops command: a table of commands; the work is done in libs/ops and libs/setup."""

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import msgspec
import typer

from libs.ops import OpsError
from libs.ops import accounts as ops_accounts
from libs.ops import dlq as ops_dlq
from libs.ops import events as ops_events
from libs.ops.events import Selection
from libs.settings import load_settings

T = TypeVar("T")
app = typer.Typer(help="flowplan operations: set-up, the local stack, the event log, dead letters and accounts.",
                  no_args_is_help=True)  # fmt: skip
events_app = typer.Typer(help="Read, export and import the event log (FLOWPLAN_EVENTS) as JSON Lines.",
                         no_args_is_help=True)  # fmt: skip
dlq_app = typer.Typer(help="List and retry dead letters (FLOWPLAN_DLQ): events a projection could not apply.",
                      no_args_is_help=True)  # fmt: skip
accounts_app = typer.Typer(help="Look at one account.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(dlq_app, name="dlq")
app.add_typer(accounts_app, name="accounts")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an ops coroutine; an OpsError is the operator's to fix: its message, exit 1."""
    try:
        return asyncio.run(coro)
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an RFC 3339 time or date: {text!r}") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _line_writer(out: IO[bytes]) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        out.write(data + b"\n")
        out.flush()  # a follower piped into another tool sees each event at once

    return write


@app.command()
def setup() -> None:
    """Create the database, declare the streams and apply every migration (idempotent)."""
    from libs.setup import set_up

    applied = asyncio.run(set_up(load_settings()))
    typer.echo(f"set-up done; {len(applied)} migrations applied")


@app.command()
def replay(
    projection: str = typer.Option(..., "--projection", "-p", help="ingress, quota, keys, billing, ... or all"),
    from_seq: int = typer.Option(1, "--from-seq", min=1, help="First stream sequence to apply (default 1)."),
    verify: bool = typer.Option(False, "--verify", help="Compare with the live projection before the swap."),
    swap_if_different: bool = typer.Option(
        False, "--swap-if-different", help="Swap even when --verify finds differences (a rebuild after a bug fix)."
    ),
    keep_old: bool = typer.Option(
        False, "--keep-old", help="Keep the replaced tables in a schema <schema>_old_<time> instead of dropping them."
    ),
    pause_timeout: float = typer.Option(
        30.0,
        "--pause-timeout",
        min=0.1,
        max=600,
        help="Seconds every instance of the service gets to pause its projection; else the replay fails, unswapped.",
    ),
) -> None:
    """Rebuild projections from the event log into fresh tables and swap them in atomically.

    The service that owns each projection does the rebuild while it goes on serving; its
    projection stands still only for the final catch-up and the swap (on every instance of the
    service, when it runs several: one that does not pause fails the replay). With --verify, a
    rebuild that differs from the live projection is listed table by table and NOT swapped
    (exit code 3) unless --swap-if-different is given. Exit code 1: a replay failed (its
    live projection is untouched) or no service answers for the projection.
    """
    from rich.console import Console

    from libs.ops import replay as ops_replay
    from proto.v1 import StartReplay

    request = StartReplay(
        from_seq=from_seq, verify=verify, swap_if_different=swap_if_different, keep_old=keep_old,
        pause_timeout_s=pause_timeout,
    )  # fmt: skip
    outcomes = _run(ops_replay.replay(load_settings(), projection, request, Console(stderr=True)))
    for outcome in outcomes:
        ops_replay.summary(outcome, typer.echo)
    if any(o.phase == "failed" for o in outcomes):
        raise typer.Exit(1)
    if not all(o.swapped for o in outcomes):
        raise typer.Exit(3)


@app.command()
def up() -> None:
    """Run the whole stack locally until Ctrl-C (what `make run` does)."""
    from libs.devstack import main as run_stack

    run_stack()


# -- events ---------------------------------------------------------------------------

Accounts = Annotated[list[str] | None, typer.Option("--account", "-a", help="Only this account's events (repeatable).")]
Types = Annotated[
    list[str] | None, typer.Option("--type", "-t", help="Only events of this type, e.g. UsageRecorded (repeatable).")
]
FromSeq = Annotated[int | None, typer.Option(min=1, help="First stream sequence (inclusive).")]
ToSeq = Annotated[int | None, typer.Option(min=1, help="Last stream sequence (inclusive).")]
Since = Annotated[
    datetime | None,
    typer.Option(
        parser=_time, help="Stream time (when the log stored it): at or after this. RFC 3339, UTC by default."
    ),
]
Until = Annotated[datetime | None, typer.Option(parser=_time, help="Stream time: stored before this.")]
OccurredSince = Annotated[
    datetime | None,
    typer.Option(parser=_time, help="Event time (the event's occurred_at): at or after this. Checked client-side."),
]
OccurredUntil = Annotated[datetime | None, typer.Option(parser=_time, help="Event time: occurred_at before this.")]


def _selection(
    accounts: list[str] | None,
    types: list[str] | None,
    from_seq: int | None,
    to_seq: int | None,
    since: datetime | None,
    until: datetime | None,
    occurred_since: datetime | None,
    occurred_until: datetime | None,
) -> Selection:
    return Selection(
        tuple(accounts or ()), tuple(types or ()), from_seq, to_seq, since, until, occurred_since, occurred_until
    )


@events_app.command("tail")
def events_tail(
    account: Accounts = None,
    type: Types = None,
    from_seq: FromSeq = None,
    to_seq: ToSeq = None,
    since: Since = None,
    until: Until = None,
    occurred_since: OccurredSince = None,
    occurred_until: OccurredUntil = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many of the last matching events.")] = 10,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print new ones until Ctrl-C.")] = False,
) -> None:
    """Print the last matching events, one JSON line each (the format is in README.md, "Ops commands")."""
    selection = _selection(account, type, from_seq, to_seq, since, until, occurred_since, occurred_until)
    try:
        _run(ops_events.tail(load_settings(), selection, lines, follow, _line_writer(sys.stdout.buffer)))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follower stops


@events_app.command("export")
def events_export(
    account: Accounts = None,
    type: Types = None,
    from_seq: FromSeq = None,
    to_seq: ToSeq = None,
    since: Since = None,
    until: Until = None,
    occurred_since: OccurredSince = None,
    occurred_until: OccurredUntil = None,
    output: Annotated[str, typer.Option("--output", "-o", help="File to write, or - for stdout.")] = "-",
) -> None:
    """Write every matching event stored so far as JSON Lines, oldest first."""
    selection = _selection(account, type, from_seq, to_seq, since, until, occurred_since, occurred_until)
    target = contextlib.nullcontext(sys.stdout.buffer) if output == "-" else open(output, "wb")
    with target as out:
        count = _run(ops_events.export(load_settings(), selection, _line_writer(out)))
    typer.echo(f"exported {count} events", err=True)


@events_app.command("import")
def events_import(
    file: Annotated[str, typer.Argument(help="A file written by `flowplan events export`, or - for stdin.")],
) -> None:
    """Publish a file's events into the log. Every line is checked first: one bad line and nothing is published.
    Events already in the log (same event_id, within JetStream's duplicate window) are stored once."""
    if file == "-":
        stored, duplicates = _run(ops_events.import_events(load_settings(), sys.stdin.buffer.readlines()))
    else:
        if not Path(file).is_file():
            raise typer.BadParameter(f"no such file: {file}", param_hint="FILE")
        with open(file, "rb") as lines:
            stored, duplicates = _run(ops_events.import_events(load_settings(), lines))
    typer.echo(f"imported {stored} events ({duplicates} were already in the log)")


# -- dead letters ---------------------------------------------------------------------

Projection = Annotated[
    str | None, typer.Option(help="Only this projection's dead letters (quota, keys, billing, ingress, refund).")
]


@dlq_app.command("list")
def dlq_list(
    projection: Projection = None,
    json: Annotated[bool, typer.Option("--json", help="A JSON array instead of a table.")] = False,
) -> None:
    """Show the dead letters: DLQ sequence, projection, the event's sequence, type and account, and the error."""
    letters = _run(ops_dlq.list_dead_letters(load_settings(), projection))
    if json:
        typer.echo(msgspec.json.encode(letters).decode())
        return
    for letter in letters:
        typer.echo(f"{letter.dlq_seq:>6}  {letter.projection:<10} event #{letter.event_seq:<8} {letter.event_type:<18} "
                   f"{letter.account:<24} {letter.error}")  # fmt: skip
    typer.echo(f"{len(letters)} dead letters", err=True)


@dlq_app.command("retry")
def dlq_retry(
    seq: Annotated[list[int] | None, typer.Option(help="This dead letter (its DLQ sequence; repeatable).")] = None,
    projection: Projection = None,
    all: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each projection's answer.")] = 30.0,
) -> None:
    """Have the projection that dead-lettered each chosen event apply it again, once its cause is fixed.
    Applied dead letters are removed; the others stay, with the reason printed. Exit 1 if any was not applied."""
    results = _run(ops_dlq.retry(load_settings(), seq or [], projection, all, timeout))
    for result in results:
        typer.echo(f"{result.dlq_seq}: applied" if result.applied else f"{result.dlq_seq}: not applied: {result.error}")
    failed = sum(not result.applied for result in results)
    typer.echo(f"{len(results) - failed} applied, {failed} not applied", err=True)
    if failed:
        raise typer.Exit(1)


# -- accounts -------------------------------------------------------------------------


@accounts_app.command("show")
def accounts_show(
    account_id: Annotated[str, typer.Argument(help="The account id (acc_…).")],
    json: Annotated[bool, typer.Option("--json", help="JSON (micro-units, the services' own messages).")] = False,
    events: Annotated[int, typer.Option(min=0, help="How many of its latest events to show.")] = 10,
) -> None:
    """Plan, 5-hour/weekly/monthly windows, PAYG balance and Extra Usage, keys, and the latest events."""
    report = _run(ops_accounts.report(load_settings(), account_id, events))
    typer.echo(msgspec.json.encode(report).decode() if json else ops_accounts.render(report))


def main() -> None:
    app()
