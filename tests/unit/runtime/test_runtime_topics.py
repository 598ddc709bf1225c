"""Specification of creating, checking and fixing the declared topics (sensorstream.runtime.topics).

The admin client is a fake that keeps a cluster's topics in memory and answers with
aiokafka's own response types, so the code under test reads exactly the shapes a
broker's answers have.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource
from aiokafka.errors import InvalidReplicationFactorError, TopicAuthorizationFailedError
from aiokafka.protocol.admin import (
    AlterConfigsResponse_v1,
    CreateTopicsResponse_v3,
    DescribeConfigsResponse_v0,
    DescribeConfigsResponse_v1,
)
from aiokafka.protocol.metadata import MetadataResponse_v1
from structlog.testing import capture_logs

from sensorstream.runtime import kafka as runtime_kafka
from sensorstream.runtime import logging as runtime_logging
from sensorstream.runtime.retry import RetryPolicy
from sensorstream.runtime.topics import TopicsSettings, TopicState, ensure_topics, main
from sensorstream.schema import TOPOLOGY, ConfigError, TopicSpec

BOOTSTRAP = "kafka:9092"
FAST = RetryPolicy(budget=5.0, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0)
# What a broker reports for a topic config nobody set (Kafka's own defaults).
BROKER_DEFAULTS = {
    "cleanup.policy": "delete",
    "max.message.bytes": "1048588",
    "min.insync.replicas": "1",
    "retention.ms": "604800000",
    "segment.bytes": "1073741824",
}
TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself
DEFAULT_CONFIG = 5  # DescribeConfigs config_source: Kafka's built-in default
NO_ERROR = 0
ALREADY_EXISTS = 36
UNKNOWN_TOPIC = 3
TOPIC_RESOURCE = 2


@dataclass
class FakeTopic:
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    """Set on the topic itself (dynamic); everything else is a broker default."""
    leaderless_describes: int = 0
    """This many describe_topics calls still see a partition without a leader."""


class FakeAdmin:
    """Just enough of ``AIOKafkaAdminClient``: the calls ensure_topics makes."""

    def __init__(
        self,
        topics: dict[str, FakeTopic] | None = None,
        *,
        create_error: int = NO_ERROR,
        alter_errors: Sequence[int] = (),
        describe_configs_version: int = 1,
    ) -> None:
        self.topics = dict(topics or {})
        self.create_error = create_error
        self.alter_errors = list(alter_errors)
        self.describe_configs_version = describe_configs_version
        self.create_requests: list[list[NewTopic]] = []
        self.alter_requests: list[list[ConfigResource]] = []
        self.closed = False

    async def create_topics(self, new_topics: list[NewTopic]) -> CreateTopicsResponse_v3:
        self.create_requests.append(list(new_topics))
        results = []
        for new in new_topics:
            if new.name in self.topics:
                results.append((new.name, ALREADY_EXISTS, f"Topic '{new.name}' already exists."))
            elif self.create_error:
                results.append((new.name, self.create_error, "Replication factor: 3 larger than 1"))
            else:
                self.topics[new.name] = FakeTopic(
                    new.num_partitions, new.replication_factor, dict(new.topic_configs)
                )
                results.append((new.name, NO_ERROR, None))
        return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=results)

    async def describe_topics(self, names: list[str]) -> list[Any]:
        described = []
        for name in names:
            topic = self.topics.get(name)
            if topic is None:
                described.append((UNKNOWN_TOPIC, name, False, []))
                continue
            leader = -1 if topic.leaderless_describes else 1
            topic.leaderless_describes = max(0, topic.leaderless_describes - 1)
            replicas = list(range(1, topic.replication_factor + 1))
            partitions = [(0, p, leader, replicas, replicas) for p in range(topic.partitions)]
            described.append((NO_ERROR, name, False, partitions))
        metadata = MetadataResponse_v1(
            brokers=[(1, "kafka", 9092, None)], controller_id=1, topics=described
        )
        topics: list[Any] = metadata.to_object()["topics"]
        return topics

    async def describe_configs(self, resources: list[ConfigResource]) -> list[Any]:
        results = []
        for resource in resources:
            topic = self.topics.get(resource.name)
            if topic is None:
                results.append((UNKNOWN_TOPIC, "unknown topic", TOPIC_RESOURCE, resource.name, []))
                continue
            entries = []
            for name in sorted({**BROKER_DEFAULTS, **topic.configs}):
                value = topic.configs.get(name, BROKER_DEFAULTS.get(name))
                dynamic = name in topic.configs
                if self.describe_configs_version == 0:
                    entries.append((name, value, False, not dynamic, False))
                else:
                    source = TOPIC_CONFIG if dynamic else DEFAULT_CONFIG
                    entries.append((name, value, False, source, False, []))
            results.append((NO_ERROR, None, TOPIC_RESOURCE, resource.name, entries))
        response = (
            DescribeConfigsResponse_v0
            if self.describe_configs_version == 0
            else DescribeConfigsResponse_v1
        )
        return [response(throttle_time_ms=0, resources=results)]

    async def alter_configs(self, resources: list[ConfigResource]) -> list[Any]:
        self.alter_requests.append(list(resources))
        code = self.alter_errors.pop(0) if self.alter_errors else NO_ERROR
        results = []
        for resource in resources:
            if code:
                results.append((code, "Not authorized", TOPIC_RESOURCE, resource.name))
                continue
            # Like Kafka's (non-incremental) AlterConfigs: the topic's dynamic config is
            # replaced by exactly what was sent.
            self.topics[resource.name].configs = dict(resource.configs)
            results.append((NO_ERROR, None, TOPIC_RESOURCE, resource.name))
        return [AlterConfigsResponse_v1(throttle_time_ms=0, resources=results)]

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def close(self) -> None:
        self.closed = True

    @property
    def changed_anything(self) -> bool:
        return bool(self.create_requests or self.alter_requests)


def as_declared(spec: TopicSpec, **overrides: Any) -> FakeTopic:
    """The topic as ensure_topics would have created it, with ``overrides``."""
    topic = FakeTopic(spec.partitions, spec.replication_factor, spec.creation_configs())
    return dataclasses.replace(topic, **overrides)


def cluster_as_declared() -> dict[str, FakeTopic]:
    return {spec.name: as_declared(spec) for spec in TOPOLOGY}


async def ensure(admin: FakeAdmin, specs: Any = TOPOLOGY, *, fix: bool = True) -> list[TopicState]:
    with capture_logs():
        return await ensure_topics(
            admin,  # type: ignore[arg-type]
            specs,
            bootstrap=BOOTSTRAP,
            policy=FAST,
            fix=fix,
        )


def by_name(states: list[TopicState]) -> dict[str, TopicState]:
    return {state.spec.name: state for state in states}


class TestCreating:
    async def test_creates_missing_topics_with_the_specs_creation_configs(self) -> None:
        """Each missing topic is created with its declared layout and creation_configs()."""
        admin = FakeAdmin()

        await ensure(admin)

        assert [(spec.name, 6, 1, spec.creation_configs()) for spec in TOPOLOGY] == [
            (new.name, new.num_partitions, new.replication_factor, new.topic_configs)
            for request in admin.create_requests
            for new in request
        ]

    async def test_reports_created_topics_as_declared(self) -> None:
        """A created topic says created, has the declared layout, no findings, nothing fixed."""
        states = await ensure(FakeAdmin())

        assert [(spec.name, True, 6, 1, [], {}) for spec in TOPOLOGY] == [
            (s.spec.name, s.created, s.partitions, s.replication_factor, s.findings, s.fixed)
            for s in states
        ]

    async def test_reads_back_the_declared_configs(self) -> None:
        """state.configs holds the topic's current value of each declared key."""
        states = by_name(await ensure(FakeAdmin()))

        assert {
            "min.insync.replicas": "1",
            "retention.ms": "1209600000",
            "max.message.bytes": "4194304",
        } == states[TOPOLOGY.dlq.name].configs

    async def test_creates_only_what_is_missing(self) -> None:
        """An existing topic is left as it is and reported as not created."""
        admin = FakeAdmin({TOPOLOGY.input.name: as_declared(TOPOLOGY.input)})

        states = await ensure(admin)

        assert [False, True, True, True] == [state.created for state in states]

    async def test_a_refused_creation_names_the_layout_and_the_flags(self) -> None:
        """A replication factor the cluster cannot meet is a ConfigError naming the flags."""
        admin = FakeAdmin(create_error=InvalidReplicationFactorError.errno)
        specs = [TOPOLOGY.configured(replication_factor=3).input]

        with pytest.raises(ConfigError) as raised:
            await ensure(admin, specs)

        assert str(raised.value).startswith(
            "creating topic 'sensor-data' with 6 partitions and replication factor 3 (check "
            "--partitions and --replication-factor against the cluster size) failed: "
            "[Error 38] InvalidReplicationFactorError"
        )

    async def test_waits_until_every_partition_has_a_leader(self) -> None:
        """Right after a create, metadata may lack leaders: ensure_topics asks again."""
        admin = FakeAdmin(
            {TOPOLOGY.input.name: as_declared(TOPOLOGY.input, leaderless_describes=2)}
        )

        states = await ensure(admin, [TOPOLOGY.input])

        assert (6, 0) == (
            states[0].partitions,
            admin.topics[TOPOLOGY.input.name].leaderless_describes,
        )


class TestRaisingMinimums:
    async def test_raises_a_config_below_its_minimum_keeping_the_other_dynamic_configs(
        self,
    ) -> None:
        """An old DLQ at 1 MiB is raised to 4 MiB; its other own settings are sent along."""
        dlq = TOPOLOGY.dlq
        own = {"retention.ms": "1209600000", "segment.bytes": "104857600"}
        admin = FakeAdmin(
            {dlq.name: as_declared(dlq, configs={**own, "max.message.bytes": "1048588"})}
        )

        [state] = await ensure(admin, [dlq])

        assert (
            {**own, "max.message.bytes": "4194304"},
            {**own, "max.message.bytes": "4194304"},
            {"max.message.bytes": "4194304"},
            "4194304",
            [],
        ) == (
            admin.alter_requests[0][0].configs,
            admin.topics[dlq.name].configs,
            state.fixed,
            state.configs["max.message.bytes"],
            state.findings,
        )

    async def test_does_not_pin_broker_defaults_onto_the_topic(self) -> None:
        """Only the topic's own configs and the raised one are sent, never broker defaults."""
        dlq = TOPOLOGY.dlq
        admin = FakeAdmin({dlq.name: as_declared(dlq, configs={"retention.ms": "1209600000"})})

        await ensure(admin, [dlq])

        assert {"retention.ms": "1209600000", "max.message.bytes": "4194304"} == (
            admin.topics[dlq.name].configs
        )

    async def test_reads_dynamic_configs_from_an_old_describe_configs_answer(self) -> None:
        """With DescribeConfigs v0 (is_default instead of config_source) the same is kept."""
        dlq = TOPOLOGY.dlq
        own = {"retention.ms": "1209600000", "segment.bytes": "104857600"}
        admin = FakeAdmin(
            {dlq.name: as_declared(dlq, configs=dict(own))}, describe_configs_version=0
        )

        await ensure(admin, [dlq])

        assert {**own, "max.message.bytes": "4194304"} == admin.topics[dlq.name].configs

    async def test_leaves_a_config_at_or_above_its_minimum(self) -> None:
        """A DLQ already at 8 MiB is not altered (and not lowered)."""
        dlq = TOPOLOGY.dlq
        admin = FakeAdmin(
            {
                dlq.name: as_declared(
                    dlq, configs={"retention.ms": "1209600000", "max.message.bytes": "8388608"}
                )
            }
        )

        [state] = await ensure(admin, [dlq])

        assert ([], {}, "8388608") == (
            admin.alter_requests,
            state.fixed,
            state.configs["max.message.bytes"],
        )

    async def test_without_permission_reports_the_exact_command(self) -> None:
        """Not allowed to alter: nothing is fixed, the finding is the kafka-configs.sh line."""
        dlq = TOPOLOGY.dlq
        admin = FakeAdmin(
            {dlq.name: as_declared(dlq, configs={"retention.ms": "1209600000"})},
            alter_errors=[TopicAuthorizationFailedError.errno],
        )

        [state] = await ensure(admin, [dlq])

        assert (
            {},
            [
                "sensor-data.dlq has max.message.bytes=1048588, needs at least 4194304: "
                "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics "
                "--entity-name sensor-data.dlq --add-config max.message.bytes=4194304"
            ],
        ) == (state.fixed, state.findings)

    async def test_without_permission_asks_once_and_says_why(self) -> None:
        """An authorization failure is not retried; topic_config_not_fixed names the error."""
        dlq = TOPOLOGY.dlq
        admin = FakeAdmin(
            {dlq.name: as_declared(dlq, configs={"retention.ms": "1209600000"})},
            alter_errors=[TopicAuthorizationFailedError.errno],
        )

        with capture_logs() as logs:
            await ensure_topics(admin, [dlq], bootstrap=BOOTSTRAP, policy=FAST)  # type: ignore[arg-type]

        [not_fixed] = [e for e in logs if e["event"] == "topic_config_not_fixed"]
        assert (1, "warning", "sensor-data.dlq", True) == (
            len(admin.alter_requests),
            not_fixed["log_level"],
            not_fixed["topic"],
            "TopicAuthorizationFailedError" in not_fixed["error"],
        )

    async def test_a_transient_alter_failure_is_retried(self) -> None:
        """A timed-out AlterConfigs (retriable) is sent again and then succeeds."""
        dlq = TOPOLOGY.dlq
        request_timed_out = 7
        admin = FakeAdmin(
            {dlq.name: as_declared(dlq, configs={"retention.ms": "1209600000"})},
            alter_errors=[request_timed_out],
        )

        [state] = await ensure(admin, [dlq])

        assert (2, {"max.message.bytes": "4194304"}) == (len(admin.alter_requests), state.fixed)


class TestReporting:
    async def test_fewer_partitions_are_reported_with_the_command_never_changed(self) -> None:
        """3 partitions where 6 are declared: a finding with kafka-topics.sh, no change."""
        spec = TOPOLOGY.input
        admin = FakeAdmin({spec.name: as_declared(spec, partitions=3)})

        [state] = await ensure(admin, [spec])

        assert (
            [
                "sensor-data has 3 partitions, 6 declared: processors beyond 3 stay idle. "
                "Adding partitions moves sensors to other partitions (their order across the "
                "change is lost); if that is acceptable: kafka-topics.sh --bootstrap-server "
                "kafka:9092 --alter --topic sensor-data --partitions 6"
            ],
            3,
            [],
        ) == (state.findings, admin.topics[spec.name].partitions, admin.alter_requests)

    async def test_more_partitions_than_declared_are_fine(self) -> None:
        """A topic an operator widened to 12 partitions is not reported."""
        spec = TOPOLOGY.input
        admin = FakeAdmin({spec.name: as_declared(spec, partitions=12)})

        [state] = await ensure(admin, [spec])

        assert ([], 12) == (state.findings, state.partitions)

    async def test_another_replication_factor_is_reported(self) -> None:
        """RF 1 where 3 is declared: a finding pointing at kafka-reassign-partitions.sh."""
        spec = TOPOLOGY.configured(replication_factor=3).aggregates
        admin = FakeAdmin(
            {
                spec.name: as_declared(
                    spec, replication_factor=1, configs={"retention.ms": "604800000"}
                )
            }
        )

        [state] = await ensure(admin, [spec])

        assert [
            "sensor-aggregates has replication factor 1, 3 declared; change it with "
            "kafka-reassign-partitions.sh"
        ] == state.findings

    async def test_a_differing_declared_config_is_reported_not_changed(self) -> None:
        """Alerts kept for 1 day, 30 declared: a finding with kafka-configs.sh, no alter."""
        spec = TOPOLOGY.alerts
        admin = FakeAdmin({spec.name: as_declared(spec, configs={"retention.ms": "86400000"})})

        [state] = await ensure(admin, [spec])

        assert (
            [
                "sensor-alerts has retention.ms=86400000, 2592000000 declared: kafka-configs.sh "
                "--bootstrap-server kafka:9092 --alter --entity-type topics --entity-name "
                "sensor-alerts --add-config retention.ms=2592000000"
            ],
            [],
            {"retention.ms": "86400000"},
        ) == (state.findings, admin.alter_requests, admin.topics[spec.name].configs)

    async def test_min_insync_is_checked_against_the_actual_replication_factor(self) -> None:
        """A 3-replica topic at min.insync.replicas=1 is reported as wanting 2."""
        spec = TOPOLOGY.configured(replication_factor=3).input
        admin = FakeAdmin({spec.name: as_declared(spec, configs={"retention.ms": "604800000"})})

        [state] = await ensure(admin, [spec])

        assert [
            "sensor-data has min.insync.replicas=1, 2 declared: kafka-configs.sh "
            "--bootstrap-server kafka:9092 --alter --entity-type topics --entity-name "
            "sensor-data --add-config min.insync.replicas=2"
        ] == state.findings

    async def test_a_topic_as_declared_has_no_findings(self) -> None:
        """An existing topology that matches its declaration is quiet and untouched."""
        admin = FakeAdmin(cluster_as_declared())

        states = await ensure(admin)

        assert ([[], [], [], []], []) == (
            [state.findings for state in states],
            admin.alter_requests,
        )


class TestCheckOnly:
    async def test_creates_and_changes_nothing(self) -> None:
        """fix=False sends no CreateTopics and no AlterConfigs, even below a minimum."""
        topics = cluster_as_declared()
        topics[TOPOLOGY.dlq.name].configs = {"retention.ms": "1209600000"}
        admin = FakeAdmin(topics)

        await ensure(admin, fix=False)

        assert (False, {"retention.ms": "1209600000"}) == (
            admin.changed_anything,
            admin.topics[TOPOLOGY.dlq.name].configs,
        )

    async def test_reports_what_it_would_raise_with_the_command(self) -> None:
        """A minimum not met is a finding with the exact kafka-configs.sh command."""
        topics = cluster_as_declared()
        topics[TOPOLOGY.dlq.name].configs = {"retention.ms": "1209600000"}

        states = by_name(await ensure(FakeAdmin(topics), fix=False))

        assert (
            [
                "sensor-data.dlq has max.message.bytes=1048588, needs at least 4194304: "
                "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics "
                "--entity-name sensor-data.dlq --add-config max.message.bytes=4194304"
            ],
            {},
        ) == (states[TOPOLOGY.dlq.name].findings, states[TOPOLOGY.dlq.name].fixed)


class TestLogging:
    async def test_logs_topic_ready_for_each_topic(self) -> None:
        """topic_ready (info) names topic, role, whether created, partitions and RF."""
        admin = FakeAdmin({TOPOLOGY.input.name: as_declared(TOPOLOGY.input)})

        with capture_logs() as logs:
            await ensure_topics(admin, TOPOLOGY, bootstrap=BOOTSTRAP, policy=FAST)  # type: ignore[arg-type]

        assert [
            ("info", "sensor-data", "input", False, 6, 1),
            ("info", "sensor-aggregates", "aggregates", True, 6, 1),
            ("info", "sensor-alerts", "alerts", True, 6, 1),
            ("info", "sensor-data.dlq", "dlq", True, 6, 1),
        ] == [
            (
                e["log_level"],
                e["topic"],
                e["role"],
                e["created"],
                e["partitions"],
                e["replication_factor"],
            )
            for e in logs
            if e["event"] == "topic_ready"
        ]

    async def test_logs_topic_config_fixed_with_what_was_raised(self) -> None:
        """A raised minimum is a topic_config_fixed warning with the new values."""
        dlq = TOPOLOGY.dlq
        admin = FakeAdmin({dlq.name: as_declared(dlq, configs={"retention.ms": "1209600000"})})

        with capture_logs() as logs:
            await ensure_topics(admin, [dlq], bootstrap=BOOTSTRAP, policy=FAST)  # type: ignore[arg-type]

        assert [("warning", "sensor-data.dlq", {"max.message.bytes": "4194304"})] == [
            (e["log_level"], e["topic"], e["configs"])
            for e in logs
            if e["event"] == "topic_config_fixed"
        ]

    async def test_logs_topic_differs_for_each_finding(self) -> None:
        """Every finding is also a topic_differs warning carrying it."""
        spec = TOPOLOGY.alerts
        admin = FakeAdmin(
            {spec.name: as_declared(spec, partitions=3, configs={"retention.ms": "86400000"})}
        )

        with capture_logs() as logs:
            [state] = await ensure_topics(admin, [spec], bootstrap=BOOTSTRAP, policy=FAST)  # type: ignore[arg-type]

        assert [("warning", "sensor-alerts", finding) for finding in state.findings] == [
            (e["log_level"], e["topic"], e["finding"])
            for e in logs
            if e["event"] == "topic_differs"
        ]
        assert 2 == len(state.findings)


class TestTopicState:
    @pytest.mark.parametrize(
        ("value", "expected"), [("4194304", 4194304), ("-1", -1), ("lots", None), (None, None)]
    )
    def test_config_int_reads_integers_only(self, value: str | None, expected: int | None) -> None:
        """config_int is the value as an int, or None when absent or not a number."""
        configs = {} if value is None else {"max.message.bytes": value}
        state = TopicState(
            spec=TOPOLOGY.dlq, created=False, partitions=6, replication_factor=1, configs=configs
        )

        assert expected == state.config_int("max.message.bytes")


class TestTopicsSettings:
    def test_defaults_are_the_declared_topology(self) -> None:
        """Without flags, topology() is TOPOLOGY."""
        assert TOPOLOGY == TopicsSettings().topology()

    def test_topology_renames_and_relays_out(self) -> None:
        """Flags rename each topic and set one layout for all; configs stay declared."""
        settings = TopicsSettings(
            partitions=12,
            replication_factor=3,
            topic="plant-a",
            aggregates_topic="plant-a.agg",
            alerts_topic="plant-a.alerts",
            dlq_topic="plant-a.dlq",
        )

        assert [
            ("plant-a", 12, 3, TOPOLOGY.input.configs),
            ("plant-a.agg", 12, 3, TOPOLOGY.aggregates.configs),
            ("plant-a.alerts", 12, 3, TOPOLOGY.alerts.configs),
            ("plant-a.dlq", 12, 3, TOPOLOGY.dlq.configs),
        ] == [
            (spec.name, spec.partitions, spec.replication_factor, spec.configs)
            for spec in settings.topology()
        ]


@pytest.fixture
def cli_admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdmin]:
    """The CLI connects to this fake instead of Kafka, and leaves logging alone.

    run_service's uvloop leaves its closed loop's SIGINT/SIGTERM handlers behind; the
    fixture puts pytest's back.
    """
    admin = FakeAdmin()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def connect_admin(settings: object) -> FakeAdmin:
        return admin

    monkeypatch.setattr(runtime_kafka, "connect_admin", connect_admin)
    monkeypatch.setattr(runtime_logging, "configure_logging", lambda **kwargs: None)
    with capture_logs():
        yield admin
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run_cli(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exited:
        main(["--bootstrap-servers", BOOTSTRAP, *argv])
    return exited.value.code


class TestMain:
    def test_creates_the_topics_and_exits_0(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One line per topic on stdout, exit 0, and the admin client closed."""
        code = run_cli(["--partitions", "3"])

        assert (
            0,
            [
                "sensor-data: created, 3 partitions, replication 1",
                "sensor-aggregates: created, 3 partitions, replication 1",
                "sensor-alerts: created, 3 partitions, replication 1",
                "sensor-data.dlq: created, 3 partitions, replication 1",
            ],
            True,
        ) == (code, capsys.readouterr().out.splitlines(), cli_admin.closed)

    def test_prints_what_it_raised_and_what_differs(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A raised minimum and a finding are printed under their topic; still exit 0."""
        cli_admin.topics.update(cluster_as_declared())
        cli_admin.topics[TOPOLOGY.dlq.name].configs = {"retention.ms": "1209600000"}
        cli_admin.topics[TOPOLOGY.alerts.name].configs = {"retention.ms": "86400000"}

        code = run_cli([])

        assert (
            0,
            [
                "sensor-data: exists, 6 partitions, replication 1",
                "sensor-aggregates: exists, 6 partitions, replication 1",
                "sensor-alerts: exists, 6 partitions, replication 1",
                "  differs: sensor-alerts has retention.ms=86400000, 2592000000 declared: "
                "kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics "
                "--entity-name sensor-alerts --add-config retention.ms=2592000000",
                "sensor-data.dlq: exists, 6 partitions, replication 1, raised "
                "{'max.message.bytes': '4194304'}",
            ],
        ) == (code, capsys.readouterr().out.splitlines())

    def test_check_reports_missing_topics_and_exits_1(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--check creates nothing, names the missing topics and exits 1."""
        cli_admin.topics[TOPOLOGY.input.name] = as_declared(TOPOLOGY.input)

        code = run_cli(["--check"])

        assert (
            1,
            [
                "missing topics: sensor-aggregates, sensor-alerts, sensor-data.dlq",
                "sensor-data: exists, 6 partitions, replication 1",
            ],
            False,
        ) == (code, capsys.readouterr().out.splitlines(), cli_admin.changed_anything)

    def test_check_of_a_declared_cluster_exits_0(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--check on topics exactly as declared prints them and exits 0."""
        cli_admin.topics.update(cluster_as_declared())

        assert (0, 4, False) == (
            run_cli(["--check"]),
            len(capsys.readouterr().out.splitlines()),
            cli_admin.changed_anything,
        )

    def test_check_with_a_finding_exits_1(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--check exits 1 when an existing topic differs, and changes nothing."""
        cli_admin.topics.update(cluster_as_declared())
        cli_admin.topics[TOPOLOGY.dlq.name].configs = {"retention.ms": "1209600000"}

        code = run_cli(["--check"])

        assert (1, True, False) == (
            code,
            "  differs: sensor-data.dlq has max.message.bytes=1048588, needs at least 4194304"
            in capsys.readouterr().out,
            cli_admin.changed_anything,
        )

    def test_a_refused_creation_exits_2_with_one_line(
        self, cli_admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A replication factor the cluster cannot hold is a bad setting: exit 2, one line."""
        cli_admin.create_error = InvalidReplicationFactorError.errno

        code = run_cli(["--replication-factor", "3"])

        err = capsys.readouterr().err.splitlines()
        assert (2, 1, True) == (
            code,
            len(err),
            err[0].startswith("sensorstream-topics: error: creating topic 'sensor-data'"),
        )
