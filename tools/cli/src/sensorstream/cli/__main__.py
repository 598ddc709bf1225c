"""Entry point of ``sensorstream`` (see the package docstring for the subcommands)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._audit import audit
from ._capacity import capacity
from ._dlq import dlq_app
from ._lag import lag
from ._topics import topics_app

app = typer.Typer(
    name="sensorstream",
    help="Operate a Sensorstream pipeline: dead letters, lag, topics, audit, capacity. "
    "Connection "
    "settings come from the services' SENSORSTREAM_* variables (docs/operations.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            help="Kafka bootstrap servers (default: SENSORSTREAM_BOOTSTRAP_SERVERS, "
            "else 127.0.0.1:9092).",
        ),
    ] = None,
) -> None:
    ctx.meta["sensorstream.bootstrap"] = bootstrap_servers


# Subcommands, one module each; their options are their own.
app.command(
    "audit",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
    add_help_option=False,
)(audit)
app.command("lag")(lag)
app.command("capacity")(capacity)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="dlq")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
