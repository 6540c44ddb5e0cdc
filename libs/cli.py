"""The `flowplan` ops command."""

import asyncio

import typer

from libs.settings import load_settings

app = typer.Typer(help="flowplan operations: set-up and the local stack.", no_args_is_help=True)


@app.command()
def setup() -> None:
    """Create the database, declare the streams and apply every migration (idempotent)."""
    from libs.setup import set_up

    applied = asyncio.run(set_up(load_settings()))
    typer.echo(f"set-up done; {len(applied)} migrations applied")


@app.command()
def up() -> None:
    """Run the whole stack locally until Ctrl-C (what `make run` does)."""
    from libs.devstack import main as run_stack

    run_stack()


def main() -> None:
    app()
