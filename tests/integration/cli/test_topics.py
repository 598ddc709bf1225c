"""``sensorstream topics check | apply`` against the real broker, on each test's own names.

Every finding is made by changing a topic behind the CLI's back with the admin API, and
every claim of the CLI ("created", "raised") is checked by reading the topic back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from kafka_helpers import create_topic, new_topic_name
from sensorstream.schema import TOPOLOGY

PARTITIONS = 2


def sensorstream(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sensorstream.cli --bootstrap-servers B ARGS``, no SENSORSTREAM_* set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "sensorstream.cli", "--bootstrap-servers", bootstrap, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Names:
    """One test's topic names, as CLI options."""

    def __init__(self, prefix: str) -> None:
        self.by_role = {
            "input": new_topic_name(f"{prefix}-in"),
            "aggregates": new_topic_name(f"{prefix}-agg"),
            "alerts": new_topic_name(f"{prefix}-alerts"),
            "dlq": new_topic_name(f"{prefix}-dlq"),
        }

    def options(self) -> list[str]:
        return [
            "--partitions",
            str(PARTITIONS),
            "--topic",
            self.by_role["input"],
            "--aggregates-topic",
            self.by_role["aggregates"],
            "--alerts-topic",
            self.by_role["alerts"],
            "--dlq-topic",
            self.by_role["dlq"],
        ]


async def topics(bootstrap: str, command: str, names: Names, *extra: str) -> tuple[int, Any]:
    """Run ``topics COMMAND --json``: its exit status and parsed output."""
    result = await asyncio.to_thread(
        sensorstream, bootstrap, "topics", command, *names.options(), "--json", *extra
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def by_role(document: Any) -> dict[str, Any]:
    return {topic["role"]: topic for topic in document["topics"]}


def findings(document: Any) -> dict[str, list[str]]:
    """Per role, the messages of its findings (roles without any left out)."""
    return {
        topic["role"]: [f["message"] for f in topic["findings"]]
        for topic in document["topics"]
        if topic["findings"]
    }


async def dynamic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    """The configs set on ``topic`` itself (not broker defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    return {
        entry["config_names"]: entry["config_value"]
        for entry in resource["config_entries"]
        if entry["config_source"] == 1  # DYNAMIC_TOPIC_CONFIG
    }


async def set_configs(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """Replace ``topic``'s own configs with ``configs`` (AlterConfigs is not incremental)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs)]
        )
    finally:
        await admin.close()
    assert [] == [r for r in response.resources if r[0]], response


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def applied(bootstrap: str, prefix: str) -> Names:
    """Fresh names whose four topics ``topics apply`` has just created."""
    names = Names(prefix)
    status, document = await topics(bootstrap, "apply", names)
    assert 0 == status, document
    assert {"input": True, "aggregates": True, "alerts": True, "dlq": True} == {
        role: topic["created"] for role, topic in by_role(document).items()
    }
    return names


class TestApplyAndCheck:
    async def test_apply_creates_the_declared_topics_and_check_finds_them_clean(
        self, kafka_bootstrap: str
    ) -> None:
        """apply creates every topic with its declared configs; check then exits 0."""
        names = await applied(kafka_bootstrap, "cli-topics-fresh")
        for spec in TOPOLOGY:
            name = names.by_role[spec.role]
            assert spec.creation_configs() == await dynamic_configs(kafka_bootstrap, name)
        status, document = await topics(kafka_bootstrap, "check", names)
        assert (0, True, {}) == (status, document["ok"], findings(document))
        text = await asyncio.to_thread(
            sensorstream, kafka_bootstrap, "topics", "check", *names.options()
        )
        assert 0 == text.returncode, text.stderr
        assert "all 4 topics as declared" in text.stdout

    async def test_check_names_a_changed_config_and_apply_leaves_it(
        self, kafka_bootstrap: str
    ) -> None:
        """A retention.ms changed behind our back: check and apply exit 1 naming the key,
        its value, the declared one and the command; apply does not change it."""
        names = await applied(kafka_bootstrap, "cli-topics-retention")
        topic = names.by_role["input"]
        await set_configs(
            kafka_bootstrap, topic, {"min.insync.replicas": "1", "retention.ms": "3600000"}
        )
        for command in ("check", "apply"):
            status, document = await topics(kafka_bootstrap, command, names)
            [message] = findings(document)["input"]
            assert (1, False, ["input"]) == (status, document["ok"], list(findings(document)))
            assert f"{topic} has retention.ms=3600000, 604800000 declared" in message
            assert (
                f"kafka-configs.sh --bootstrap-server {kafka_bootstrap} --alter --entity-type "
                f"topics --entity-name {topic} --add-config retention.ms=604800000"
                == by_role(document)["input"]["findings"][0]["command"]
            )
        assert "3600000" == (await dynamic_configs(kafka_bootstrap, topic))["retention.ms"]
        text = await asyncio.to_thread(
            sensorstream, kafka_bootstrap, "topics", "check", *names.options()
        )
        assert 1 == text.returncode
        assert "retention.ms=3600000" in text.stdout
        assert "1 of 4 topics differ from the declaration" in text.stdout

    async def test_apply_raises_a_minimum_that_check_and_dry_run_only_report(
        self, kafka_bootstrap: str
    ) -> None:
        """The DLQ's max.message.bytes lowered: check and apply --dry-run report it and
        change nothing; apply raises it, keeps the other configs, and exits 0."""
        names = await applied(kafka_bootstrap, "cli-topics-minimum")
        dlq = names.by_role["dlq"]
        declared = TOPOLOGY.dlq.creation_configs()
        await set_configs(kafka_bootstrap, dlq, {**declared, "max.message.bytes": "1048576"})
        for command, extra in (("check", ()), ("apply", ("--dry-run",))):
            status, document = await topics(kafka_bootstrap, command, names, *extra)
            [message] = findings(document)["dlq"]
            assert (1, ["dlq"]) == (status, list(findings(document)))
            assert f"{dlq} has max.message.bytes=1048576, needs at least 4194304" in message
        assert "1048576" == (await dynamic_configs(kafka_bootstrap, dlq))["max.message.bytes"]
        status, document = await topics(kafka_bootstrap, "apply", names)
        assert (0, {}) == (status, findings(document))
        assert {"max.message.bytes": "4194304"} == by_role(document)["dlq"]["fixed"]
        assert declared == await dynamic_configs(kafka_bootstrap, dlq)
        assert 0 == (await topics(kafka_bootstrap, "check", names))[0]


class TestMissingAndSmallTopics:
    async def test_check_reports_a_missing_topic_and_apply_creates_it(
        self, kafka_bootstrap: str
    ) -> None:
        """A declared topic that does not exist: check exits 1 with the create command and
        creates nothing; apply creates that one topic only, after which check exits 0."""
        names = await applied(kafka_bootstrap, "cli-topics-missing")
        names.by_role["alerts"] = alerts = new_topic_name("cli-topics-missing-alerts2")
        status, document = await topics(kafka_bootstrap, "check", names)
        assert (1, ["alerts"]) == (status, list(findings(document)))
        assert False is by_role(document)["alerts"]["exists"]
        command = by_role(document)["alerts"]["findings"][0]["command"]
        assert command.startswith(
            f"kafka-topics.sh --bootstrap-server {kafka_bootstrap} --create --topic {alerts} "
            f"--partitions {PARTITIONS} --replication-factor 1"
        )
        assert "--config retention.ms=2592000000" in command
        assert alerts not in await topic_names(kafka_bootstrap)
        status, document = await topics(kafka_bootstrap, "apply", names)
        assert (0, {}) == (status, findings(document))
        assert {"input": False, "aggregates": False, "alerts": True, "dlq": False} == {
            role: topic["created"] for role, topic in by_role(document).items()
        }
        assert 0 == (await topics(kafka_bootstrap, "check", names))[0]

    async def test_fewer_partitions_are_reported_never_added(self, kafka_bootstrap: str) -> None:
        """An input topic with 1 partition where 2 are declared: check and apply exit 1
        with the kafka-topics.sh --alter command; the topic keeps its 1 partition."""
        names = Names("cli-topics-partitions")
        topic = names.by_role["input"]
        await create_topic(
            kafka_bootstrap, topic, 1, config=dict(TOPOLOGY.input.creation_configs())
        )
        for command in ("check", "apply"):
            status, document = await topics(kafka_bootstrap, command, names)
            assert 1 == status
            [message] = findings(document)["input"]
            assert f"{topic} has 1 partitions, {PARTITIONS} declared" in message
            assert 1 == by_role(document)["input"]["partitions"]
        assert by_role(document)["input"]["findings"][0]["command"] == (
            f"kafka-topics.sh --bootstrap-server {kafka_bootstrap} --alter --topic {topic} "
            f"--partitions {PARTITIONS}"
        )
