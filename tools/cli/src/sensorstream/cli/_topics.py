"""``sensorstream topics check`` / ``topics apply``: the live topics against the topology.

Both run :func:`sensorstream.runtime.ensure_topics`, the one code that creates and checks
pipeline topics (``sensorstream-topics`` does the same): ``check`` with ``fix=False``
(nothing is created or changed), ``apply`` with ``fix=True`` (missing topics are created,
minimums below their value raised). What neither may change - partitions, replication
factor, another value of a declared config - is reported with the command that would.

Topic names and layout are :class:`~sensorstream.runtime.topics.TopicsSettings`'s: the
same options, the same ``SENSORSTREAM_*`` variables and the same defaults.

Exit statuses: 0 every topic as declared; 1 a topic is missing or differs (after
``apply``: still differs); 2 a bad option; 3 Kafka unreachable or refusing us.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from sensorstream.runtime import (
    RetryPolicy,
    TopicState,
    connect_admin,
    ensure_topics,
    kafka_errors,
    retry,
)
from sensorstream.runtime.settings import describe_validation_error
from sensorstream.runtime.topics import TopicsSettings
from sensorstream.schema import TopicSpec, Topology

from ._connection import EXIT_FOUND, EXIT_OK, CliSettings, connection, fail, run

__all__ = [
    "TopicReport",
    "apply",
    "check",
    "configured_topology",
    "missing_report",
    "render_json",
    "render_text",
    "report_of",
    "topics_app",
]

topics_app = typer.Typer(
    name="topics",
    help="The live topics against the declared topology (topology.toml).",
    no_args_is_help=True,
)

_FIELDS = TopicsSettings.model_fields


def _help(name: str) -> str:
    info = _FIELDS[name]
    return f"{info.description} (default: {info.default}; env SENSORSTREAM_{name.upper()})"


# The options of TopicsSettings; None means "as TopicsSettings has it" (its variable, else
# its default), so both commands resolve them in one place.
PartitionsOption = Annotated[
    int | None, typer.Option("--partitions", help=_help("partitions"), show_default=False)
]
ReplicationOption = Annotated[
    int | None,
    typer.Option("--replication-factor", help=_help("replication_factor"), show_default=False),
]
TopicOption = Annotated[
    str | None, typer.Option("--topic", help=_help("topic"), show_default=False)
]
AggregatesOption = Annotated[
    str | None,
    typer.Option("--aggregates-topic", help=_help("aggregates_topic"), show_default=False),
]
AlertsOption = Annotated[
    str | None, typer.Option("--alerts-topic", help=_help("alerts_topic"), show_default=False)
]
DlqOption = Annotated[
    str | None, typer.Option("--dlq-topic", help=_help("dlq_topic"), show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]


def configured_topology(**given: Any) -> Topology:
    """The topology under these options (``None``: the variable, else the default), as
    ``sensorstream-topics`` would see it; a bad value exits 2 naming option and variable."""
    try:
        settings = TopicsSettings(
            **{key: value for key, value in given.items() if value is not None}
        )
    except ValidationError as exc:
        fail(describe_validation_error(exc))
    try:
        return settings.topology()
    except ValueError as exc:  # a name Kafka would refuse
        fail(str(exc))


# --------------------------------------------------------------------------- report


_COMMAND = re.compile(r"\b(kafka-[a-z-]+\.sh\b.*)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicReport:
    """One declared topic as found (and, by ``apply``, left)."""

    role: str
    name: str
    exists: bool
    created: bool = False
    partitions: int | None = None
    replication_factor: int | None = None
    configs: dict[str, str] = field(default_factory=dict)
    """The topic's values of the keys its spec declares."""
    fixed: dict[str, str] = field(default_factory=dict)
    """Minimums ``apply`` raised."""
    findings: tuple[str, ...] = ()
    """What differs from the declaration, each naming the command that would change it."""

    @property
    def as_declared(self) -> bool:
        return self.exists and not self.findings


def report_of(state: TopicState) -> TopicReport:
    """The report of a topic :func:`ensure_topics` looked at."""
    return TopicReport(
        role=state.spec.role,
        name=state.spec.name,
        exists=True,
        created=state.created,
        partitions=state.partitions,
        replication_factor=state.replication_factor,
        configs=dict(state.configs),
        fixed=dict(state.fixed),
        findings=tuple(state.findings),
    )


def missing_report(spec: TopicSpec, bootstrap: str) -> TopicReport:
    """The report of a declared topic that does not exist, with how to create it."""
    configs = " ".join(f"--config {key}={value}" for key, value in spec.creation_configs().items())
    return TopicReport(
        role=spec.role,
        name=spec.name,
        exists=False,
        findings=(
            f"{spec.name} does not exist: sensorstream topics apply creates it, as does "
            f"kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {spec.name} "
            f"--partitions {spec.partitions} --replication-factor {spec.replication_factor} "
            f"{configs}",
        ),
    )


def command_of(finding: str) -> str | None:
    """The shell command a finding names, if any."""
    match = _COMMAND.search(finding)
    return match.group(1) if match else None


def _status(report: TopicReport) -> str:
    if not report.exists:
        return "missing"
    done = ["created"] if report.created else []
    done += [f"raised {key} to {value}" for key, value in report.fixed.items()]
    verdict = "differs" if report.findings else "as declared"
    return ", ".join([*done, verdict])


def render_text(reports: Sequence[TopicReport]) -> str:
    """The report for people: a line per topic, an indented line per finding, a verdict."""
    lines = []
    for report in reports:
        layout = (
            f", {report.partitions} partitions, replication {report.replication_factor}"
            if report.exists
            else ""
        )
        lines.append(f"{report.name} ({report.role}): {_status(report)}{layout}")
        lines.extend(f"  differs: {finding}" for finding in report.findings)
    drifted = [report for report in reports if not report.as_declared]
    if drifted:
        lines.append(f"{len(drifted)} of {len(reports)} topics differ from the declaration")
    else:
        lines.append(f"all {len(reports)} topics as declared")
    return "\n".join(lines)


def render_json(reports: Sequence[TopicReport]) -> str:
    """The report for scripts: ``ok`` and, per topic, what it is and what differs."""
    document = {
        "ok": all(report.as_declared for report in reports),
        "topics": [
            {
                "role": report.role,
                "name": report.name,
                "exists": report.exists,
                "created": report.created,
                "partitions": report.partitions,
                "replication_factor": report.replication_factor,
                "configs": report.configs,
                "fixed": report.fixed,
                "findings": [
                    {"message": finding, "command": command_of(finding)}
                    for finding in report.findings
                ],
            }
            for report in reports
        ],
    }
    return json.dumps(document, indent=2)


def exit_status(reports: Sequence[TopicReport]) -> int:
    return EXIT_OK if all(report.as_declared for report in reports) else EXIT_FOUND


# --------------------------------------------------------------------------- Kafka


async def inspect(settings: CliSettings, topology: Topology, *, fix: bool) -> list[TopicReport]:
    """Every topic of ``topology``, in data-flow order: created and raised with ``fix``,
    else only looked at (a missing one reported as such)."""
    admin = await connect_admin(settings)
    try:
        policy = RetryPolicy(budget=settings.startup_timeout)
        specs = list(topology)
        present = specs
        if not fix:
            existing = set(await retry("list topics", lambda: _list(admin), policy=policy))
            present = [spec for spec in specs if spec.name in existing]
        states = (
            await ensure_topics(
                admin, present, bootstrap=settings.bootstrap_servers, policy=policy, fix=fix
            )
            if present
            else []
        )
    finally:
        await admin.close()
    by_name = {state.spec.name: report_of(state) for state in states}
    return [
        by_name.get(spec.name) or missing_report(spec, settings.bootstrap_servers) for spec in specs
    ]


async def _list(admin: AIOKafkaAdminClient) -> list[str]:
    with kafka_errors("listing topics"):
        return list(await admin.list_topics())


# --------------------------------------------------------------------------- commands


def _report(ctx: typer.Context, topology: Topology, *, fix: bool, as_json: bool) -> None:
    settings = connection(ctx)
    reports = run(inspect(settings, topology, fix=fix))
    print(render_json(reports) if as_json else render_text(reports))
    raise typer.Exit(exit_status(reports))


@topics_app.command("check")
def check(
    ctx: typer.Context,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    topic: TopicOption = None,
    aggregates_topic: AggregatesOption = None,
    alerts_topic: AlertsOption = None,
    dlq_topic: DlqOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the live topics with the declaration; change nothing.

    Exit 0 if every topic is as declared, 1 if one is missing or differs (each
    difference is printed with the command that would change it).
    """
    topology = configured_topology(
        partitions=partitions,
        replication_factor=replication_factor,
        topic=topic,
        aggregates_topic=aggregates_topic,
        alerts_topic=alerts_topic,
        dlq_topic=dlq_topic,
    )
    _report(ctx, topology, fix=False, as_json=as_json)


@topics_app.command("apply")
def apply(
    ctx: typer.Context,
    partitions: PartitionsOption = None,
    replication_factor: ReplicationOption = None,
    topic: TopicOption = None,
    aggregates_topic: AggregatesOption = None,
    alerts_topic: AlertsOption = None,
    dlq_topic: DlqOption = None,
    as_json: JsonOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing: the same as topics check.")
    ] = False,
) -> None:
    """Create the missing topics and raise configs below their minimum.

    Partitions, replication factor and other declared configs are never changed, only
    reported with the command that would. Exit 0 if every topic is now as declared, 1 if
    something still differs.
    """
    topology = configured_topology(
        partitions=partitions,
        replication_factor=replication_factor,
        topic=topic,
        aggregates_topic=aggregates_topic,
        alerts_topic=alerts_topic,
        dlq_topic=dlq_topic,
    )
    _report(ctx, topology, fix=not dry_run, as_json=as_json)
