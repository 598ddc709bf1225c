"""Create the declared topics, check the ones that exist, fix what matters.

:func:`ensure_topics` is the only code that creates a pipeline topic: the producer (its
input topic), the processor (its output topics), and ``sensorstream-topics`` — the
console script behind ``make run`` and the compose init job — all call it with specs
from :data:`sensorstream.schema.TOPOLOGY`.

For a topic that already exists it compares, and never silently accepts, what matters:

* a ``minimums`` config below its minimum (the DLQ's ``max.message.bytes``) is raised
  with AlterConfigs, keeping the topic's other settings; without the rights to do so
  it is reported with the exact ``kafka-configs.sh`` command;
* fewer partitions, another replication factor or another value of a declared config
  are reported (a warning with the command that would change it), never changed: more
  partitions move keys to other partitions, and the others are an operator's choice.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from pydantic import Field

from sensorstream.schema import (
    TOPOLOGY,
    ConfigError,
    RetriableError,
    TopicSpec,
    Topology,
    min_insync_replicas,
)

from .errors import kafka_errors
from .retry import RetryPolicy, retry
from .settings import ServiceSettings

__all__ = ["TopicState", "TopicsSettings", "ensure_topics", "main", "named_topology"]

log = structlog.get_logger("sensorstream.topics")

# DescribeConfigs: a value set on the topic itself (not a broker or built-in default).
_DYNAMIC_TOPIC_CONFIG = 1
_METADATA_WAIT = 15.0


@dataclass(slots=True)
class TopicState:
    """What a topic looks like after :func:`ensure_topics`, and what it said about it."""

    spec: TopicSpec
    created: bool
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    """The topic's current values of the keys the spec declares."""
    fixed: dict[str, str] = field(default_factory=dict)
    """Minimums this call raised."""
    findings: list[str] = field(default_factory=list)
    """What differs from the declaration, each with the command that would change it."""

    def config_int(self, key: str) -> int | None:
        value = self.configs.get(key)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _configs_command(bootstrap: str, topic: str, key: str, value: object) -> str:
    return (
        f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {topic} --add-config {key}={value}"
    )


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    specs: Iterable[TopicSpec],
    *,
    bootstrap: str,
    policy: RetryPolicy,
    fix: bool = True,
) -> list[TopicState]:
    """Create the missing topics of ``specs``, check the others (see the module doc).

    With ``fix=False`` nothing is created or changed: every topic must exist, and what
    would be fixed is reported in its findings.
    """
    specs = list(specs)
    created: set[str] = set()
    if fix:
        created = await retry("create topics", lambda: _create(admin, specs), policy=policy)
    layouts = await retry("describe topics", lambda: _layouts(admin, specs), policy=policy)
    configs = await retry("describe topic configs", lambda: _configs(admin, specs), policy=policy)
    states = []
    for spec in specs:
        partitions, replication_factor = layouts[spec.name]
        dynamic, current = configs[spec.name]
        state = TopicState(
            spec=spec,
            created=spec.name in created,
            partitions=partitions,
            replication_factor=replication_factor,
            configs={key: current[key] for key in _declared_keys(spec) if key in current},
        )
        _compare(state, bootstrap)
        if fix:
            await _raise_minimums(admin, state, dynamic, bootstrap, policy)
        else:
            _report_minimums(state, bootstrap)
        _log(state)
        states.append(state)
    return states


def _declared_keys(spec: TopicSpec) -> list[str]:
    return ["min.insync.replicas", *spec.configs, *spec.minimums]


async def _create(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> set[str]:
    new_topics = [
        NewTopic(
            name=spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            topic_configs=spec.creation_configs(),
        )
        for spec in specs
    ]
    with kafka_errors("creating topics"):
        response = await admin.create_topics(new_topics)
    created = set()
    by_name = {spec.name: spec for spec in specs}
    for name, code, *rest in response.topic_errors:
        if code == 0:
            created.add(name)
        elif code != TopicAlreadyExistsError.errno:
            spec = by_name[name]
            message = rest[0] if rest else ""
            with kafka_errors(
                f"creating topic {name!r} with {spec.partitions} partitions and replication "
                f"factor {spec.replication_factor} (check --partitions and "
                "--replication-factor against the cluster size)"
            ):
                raise for_code(code)(message)
    return created


async def _layouts(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
) -> dict[str, tuple[int, int]]:
    """Partitions and replication factor per topic, once every partition has a leader."""
    names = [spec.name for spec in specs]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _METADATA_WAIT
    while True:
        with kafka_errors("describing topics"):
            described = await admin.describe_topics(names)
        layouts = {
            topic["topic"]: (len(topic["partitions"]), len(topic["partitions"][0]["replicas"]))
            for topic in described
            if not topic.get("error_code")
            and topic.get("partitions")
            and all(p["leader"] >= 0 for p in topic["partitions"])
        }
        if len(layouts) == len(names):
            return layouts
        if loop.time() > deadline:
            missing = sorted(set(names) - layouts.keys())
            raise RetriableError(f"topics {missing} have no leader for every partition yet")
        await asyncio.sleep(0.1)  # metadata follows a create by a moment


async def _configs(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Per topic: (its dynamic configs, every config's current value)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in specs]
    with kafka_errors("describing topic configs"):
        responses = await admin.describe_configs(resources)
    result: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                with kafka_errors(f"describing the configs of {resource['resource_name']!r}"):
                    raise for_code(resource["error_code"])(resource["error_message"])
            dynamic: dict[str, str] = {}
            current: dict[str, str] = {}
            for entry in resource["config_entries"]:
                name, value = entry["config_names"], entry["config_value"]
                current[name] = value
                source = entry.get("config_source")
                is_dynamic = (
                    source == _DYNAMIC_TOPIC_CONFIG
                    if source is not None
                    else not entry.get("is_default", True)
                )
                if is_dynamic and value is not None:
                    dynamic[name] = value
            result[resource["resource_name"]] = (dynamic, current)
    return result


def _compare(state: TopicState, bootstrap: str) -> None:
    spec = state.spec
    if state.created:
        return
    name = spec.name
    if state.partitions < spec.partitions:
        state.findings.append(
            f"{name} has {state.partitions} partitions, {spec.partitions} declared: processors "
            f"beyond {state.partitions} stay idle. Adding partitions moves sensors to other "
            "partitions (their order across the change is lost); if that is acceptable: "
            f"kafka-topics.sh --bootstrap-server {bootstrap} --alter --topic {name} "
            f"--partitions {spec.partitions}"
        )
    if state.replication_factor != spec.replication_factor:
        state.findings.append(
            f"{name} has replication factor {state.replication_factor}, "
            f"{spec.replication_factor} declared; change it with kafka-reassign-partitions.sh"
        )
    wanted = {
        "min.insync.replicas": str(min_insync_replicas(state.replication_factor)),
        **spec.configs,
    }
    for key, value in wanted.items():
        if state.configs.get(key) != value:
            state.findings.append(
                f"{name} has {key}={state.configs.get(key)}, {value} declared: "
                + _configs_command(bootstrap, name, key, value)
            )


def _below_minimum(state: TopicState) -> dict[str, int]:
    below = {}
    for key, minimum in state.spec.minimums.items():
        current = state.config_int(key)
        if current is None or current < minimum:
            below[key] = minimum
    return below


def _report_minimums(state: TopicState, bootstrap: str) -> None:
    for key, minimum in _below_minimum(state).items():
        state.findings.append(
            f"{state.spec.name} has {key}={state.configs.get(key)}, needs at least {minimum}: "
            + _configs_command(bootstrap, state.spec.name, key, minimum)
        )


async def _raise_minimums(
    admin: AIOKafkaAdminClient,
    state: TopicState,
    dynamic: dict[str, str],
    bootstrap: str,
    policy: RetryPolicy,
) -> None:
    below = _below_minimum(state)
    if not below:
        return
    # AlterConfigs replaces the topic's whole dynamic config: send what it has plus ours.
    wanted = {**dynamic, **{key: str(value) for key, value in below.items()}}
    resource = ConfigResource(ConfigResourceType.TOPIC, state.spec.name, wanted)

    async def alter() -> None:
        with kafka_errors(f"raising {sorted(below)} of topic {state.spec.name!r}"):
            for response in await admin.alter_configs([resource]):
                for code, message, *_ in response.resources:
                    if code:
                        raise for_code(code)(message)

    try:
        await retry("alter topic configs", alter, policy=policy)
    except ConfigError as exc:  # e.g. no ALTER_CONFIGS permission
        log.warning("topic_config_not_fixed", topic=state.spec.name, error=str(exc))
        _report_minimums(state, bootstrap)
        return
    for key, value in below.items():
        state.fixed[key] = str(value)
        state.configs[key] = str(value)


def _log(state: TopicState) -> None:
    spec = state.spec
    log.info(
        "topic_ready",
        topic=spec.name,
        role=spec.role,
        created=state.created,
        partitions=state.partitions,
        replication_factor=state.replication_factor,
    )
    if state.fixed:
        log.warning("topic_config_fixed", topic=spec.name, configs=state.fixed)
    for finding in state.findings:
        log.warning("topic_differs", topic=spec.name, finding=finding)


# --------------------------------------------------------------------------- CLI


class TopicsSettings(ServiceSettings):
    """``sensorstream-topics``: create the declared topics, check and fix existing ones."""

    service_name: ClassVar[str] = "sensorstream-topics"

    partitions: int = Field(
        TOPOLOGY.input.partitions, ge=1, le=10_000, description="Partitions of each topic."
    )
    replication_factor: int = Field(
        TOPOLOGY.input.replication_factor,
        ge=1,
        le=32,
        description="Replication factor of each topic.",
    )
    topic: str = Field(TOPOLOGY.input.name, min_length=1, description="Input topic.")
    aggregates_topic: str = Field(
        TOPOLOGY.aggregates.name, min_length=1, description="Aggregates topic."
    )
    alerts_topic: str = Field(TOPOLOGY.alerts.name, min_length=1, description="Alerts topic.")
    dlq_topic: str = Field(TOPOLOGY.dlq.name, min_length=1, description="Dead-letter topic.")
    check: bool = Field(
        False,
        description="Only check: create and change nothing, exit 1 if anything differs "
        "from the declaration.",
    )

    def topology(self) -> Topology:
        return named_topology(
            self, partitions=self.partitions, replication_factor=self.replication_factor
        )


def named_topology(settings: Any, *, partitions: int, replication_factor: int) -> Topology:
    """The declared topology under a command's topic names (its ``topic``,
    ``aggregates_topic``, ``alerts_topic`` and ``dlq_topic`` settings) and layout."""
    return TOPOLOGY.configured(
        partitions=partitions,
        replication_factor=replication_factor,
        names={
            "input": settings.topic,
            "aggregates": settings.aggregates_topic,
            "alerts": settings.alerts_topic,
            "dlq": settings.dlq_topic,
        },
    )


async def _run(settings: TopicsSettings, stop: Any) -> int:
    from .kafka import connect_admin

    admin = await connect_admin(settings)
    try:
        policy = RetryPolicy(budget=settings.startup_timeout)
        specs = list(settings.topology())
        if settings.check:
            existing = set(await retry("list topics", lambda: _list(admin), policy=policy))
            missing = [spec.name for spec in specs if spec.name not in existing]
            if missing:
                print(f"missing topics: {', '.join(missing)}")
            specs = [spec for spec in specs if spec.name in existing]
        else:
            missing = []
        states = await ensure_topics(
            admin,
            specs,
            bootstrap=settings.bootstrap_servers,
            policy=policy,
            fix=not settings.check,
        )
    finally:
        await admin.close()
    for state in states:
        verb = "created" if state.created else "exists"
        fixed = f", raised {state.fixed}" if state.fixed else ""
        print(
            f"{state.spec.name}: {verb}, {state.partitions} partitions, replication "
            f"{state.replication_factor}{fixed}"
        )
        for finding in state.findings:
            print(f"  differs: {finding}")
    if settings.check and (missing or any(state.findings for state in states)):
        return 1
    return 0


async def _list(admin: AIOKafkaAdminClient) -> list[str]:
    with kafka_errors("listing topics"):
        return list(await admin.list_topics())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sensorstream-topics``."""
    from .lifecycle import run_service
    from .logging import configure_logging
    from .settings import load_settings

    settings = load_settings(TopicsSettings, argv)
    configure_logging(
        service=settings.service_name,
        version="0",
        instance=settings.instance_id,
        fmt=settings.resolved_log_format(),
        level=settings.log_level,
        secrets=settings.secret_values(),
    )
    sys.exit(run_service(lambda stop: _run(settings, stop), prog=settings.service_name))
