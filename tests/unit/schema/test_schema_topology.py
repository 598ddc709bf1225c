"""The pipeline's topics are declared once, in topology.toml, and typed in TOPOLOGY."""

from __future__ import annotations

import dataclasses

import pytest

from sensorstream.schema import (
    AGGREGATES_TOPIC,
    ALERTS_TOPIC,
    DLQ_TOPIC,
    INPUT_TOPIC,
    TOPOLOGY,
    TopicSpec,
    Topology,
    min_insync_replicas,
)
from sensorstream.schema._topology import TOPOLOGY_FILE, parse_topology

MiB = 1024 * 1024

VALID = """
[defaults]
partitions = 3
replication_factor = 3

[topics.input]
name = "in"
description = "readings"
configs = { "retention.ms" = 1000 }

[topics.aggregates]
name = "agg"

[topics.alerts]
name = "alerts"

[topics.dlq]
name = "in.dlq"
minimums = { "max.message.bytes" = 4194304 }
"""


def spec(**overrides: object) -> TopicSpec:
    """A valid TopicSpec, with ``overrides`` applied."""
    fields: dict[str, object] = {
        "role": "dlq",
        "name": "sensor-data.dlq",
        "description": "dead letters",
        "partitions": 6,
        "replication_factor": 1,
        **overrides,
    }
    return TopicSpec(**fields)  # type: ignore[arg-type]


class TestPackagedTopology:
    def test_the_packaged_file_parses_into_topology(self) -> None:
        """topology.toml beside the module is what TOPOLOGY holds."""
        assert TOPOLOGY == parse_topology(TOPOLOGY_FILE.read_text(encoding="utf-8"))

    def test_four_roles_in_data_flow_order(self) -> None:
        """Iterating gives input, aggregates, alerts, dlq: the order data flows."""
        assert ["input", "aggregates", "alerts", "dlq"] == [spec.role for spec in TOPOLOGY]

    def test_default_names_are_the_topic_constants(self) -> None:
        """INPUT_TOPIC, AGGREGATES_TOPIC, ALERTS_TOPIC and DLQ_TOPIC name the declared topics."""
        assert [INPUT_TOPIC, AGGREGATES_TOPIC, ALERTS_TOPIC, DLQ_TOPIC] == [
            spec.name for spec in TOPOLOGY
        ]

    def test_default_layout_is_six_partitions_one_replica(self) -> None:
        """A local deployment gets 6 partitions and replication factor 1 for every topic."""
        assert {(6, 1)} == {(spec.partitions, spec.replication_factor) for spec in TOPOLOGY}

    def test_the_dlq_accepts_records_of_at_least_4_mib(self) -> None:
        """A dead letter (a value of up to 1 MiB plus headers) fits: max.message.bytes >= 4 MiB."""
        assert {"max.message.bytes": 4 * MiB} == dict(TOPOLOGY.dlq.minimums)

    def test_only_the_dlq_has_minimums(self) -> None:
        """The other topics need no config raised on an existing topic."""
        assert ["dlq"] == [spec.role for spec in TOPOLOGY if spec.minimums]

    def test_every_topic_has_a_retention_and_a_description(self) -> None:
        """Each topic states how long it keeps records and what travels on it."""
        assert [] == [
            spec.role
            for spec in TOPOLOGY
            if "retention.ms" not in spec.configs or not spec.description
        ]

    def test_outputs_are_the_processors_three_topics(self) -> None:
        """outputs is (aggregates, alerts, dlq): everything but the input."""
        assert (TOPOLOGY.aggregates, TOPOLOGY.alerts, TOPOLOGY.dlq) == TOPOLOGY.outputs

    @pytest.mark.parametrize("role", ["input", "aggregates", "alerts", "dlq"])
    def test_by_role_finds_each_topic(self, role: str) -> None:
        """by_role(role) is the spec whose role it is."""
        assert role == TOPOLOGY.by_role(role).role  # type: ignore[arg-type]

    def test_specs_are_immutable(self) -> None:
        """A spec is a frozen value; its config mappings cannot be changed in place."""
        with pytest.raises(TypeError):
            TOPOLOGY.input.configs["retention.ms"] = "1"  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            TOPOLOGY.input.name = "other"  # type: ignore[misc]


class TestMinInsyncReplicas:
    @pytest.mark.parametrize(("replication_factor", "expected"), [(1, 1), (2, 1), (3, 2), (5, 2)])
    def test_two_from_three_replicas_up(self, replication_factor: int, expected: int) -> None:
        """With 3 or more replicas writes need 2 in sync; below that, 1."""
        assert expected == min_insync_replicas(replication_factor)


class TestTopicSpec:
    def test_creation_configs_merge_configs_minimums_and_min_insync(self) -> None:
        """Created with its configs, its minimums as strings and min.insync.replicas."""
        dlq = spec(
            replication_factor=3,
            configs={"retention.ms": "1209600000"},
            minimums={"max.message.bytes": 4 * MiB},
        )

        assert {
            "min.insync.replicas": "2",
            "retention.ms": "1209600000",
            "max.message.bytes": "4194304",
        } == dlq.creation_configs()

    @pytest.mark.parametrize(("replication_factor", "expected"), [(1, "1"), (2, "1"), (3, "2")])
    def test_min_insync_follows_the_replication_factor(
        self, replication_factor: int, expected: str
    ) -> None:
        """min.insync.replicas is 2 from RF 3 up, else 1."""
        assert (
            expected
            == spec(replication_factor=replication_factor).creation_configs()["min.insync.replicas"]
        )

    def test_the_packaged_dlq_is_created_with_its_minimum(self) -> None:
        """The declared DLQ is created with max.message.bytes=4194304 and its retention."""
        assert {
            "min.insync.replicas": "1",
            "retention.ms": "1209600000",
            "max.message.bytes": "4194304",
        } == TOPOLOGY.dlq.creation_configs()

    @pytest.mark.parametrize("name", ["", ".", "..", "a b", "topic/1", "ü", "x" * 250])
    def test_refuses_a_name_kafka_would_refuse(self, name: str) -> None:
        """A topic name is 1-249 of [a-zA-Z0-9._-] and not '.' or '..'; the error says so."""
        with pytest.raises(ValueError, match=r"use 1-249 of \[a-zA-Z0-9\._-\]"):
            spec(name=name)

    def test_accepts_the_longest_name(self) -> None:
        """249 characters is still a valid topic name."""
        assert "x" * 249 == spec(name="x" * 249).name

    @pytest.mark.parametrize(
        ("field", "message"),
        [
            ("partitions", "partitions must be >= 1, got 0"),
            ("replication_factor", "replication factor must be >= 1, got 0"),
        ],
    )
    def test_refuses_an_empty_layout(self, field: str, message: str) -> None:
        """Zero partitions or replicas is refused, quoting the value."""
        with pytest.raises(ValueError, match=message):
            spec(**{field: 0})

    def test_refuses_a_key_both_configured_and_a_minimum(self) -> None:
        """A key is either set at creation or raised to a minimum, never both."""
        with pytest.raises(ValueError, match=r"\['max\.message\.bytes'\] both in configs"):
            spec(configs={"max.message.bytes": "1"}, minimums={"max.message.bytes": 2})


class TestConfigured:
    def test_renames_and_relays_out_every_topic(self) -> None:
        """Names, partitions and replication factor change; roles, configs, minimums stay."""
        names = {"input": "a", "aggregates": "b", "alerts": "c", "dlq": "d"}

        configured = TOPOLOGY.configured(partitions=12, replication_factor=3, names=names)

        assert [
            dataclasses.replace(spec, name=names[spec.role], partitions=12, replication_factor=3)
            for spec in TOPOLOGY
        ] == list(configured)

    def test_creation_configs_follow_the_new_replication_factor(self) -> None:
        """A topology re-laid out to RF 3 creates its topics with min.insync.replicas=2."""
        configured = TOPOLOGY.configured(replication_factor=3)

        assert {"2"} == {spec.creation_configs()["min.insync.replicas"] for spec in configured}

    def test_unnamed_roles_keep_their_default_names(self) -> None:
        """Renaming one topic leaves the other three as declared."""
        configured = TOPOLOGY.configured(names={"dlq": "plant-a.dlq"})

        assert [INPUT_TOPIC, AGGREGATES_TOPIC, ALERTS_TOPIC, "plant-a.dlq"] == [
            spec.name for spec in configured
        ]

    def test_without_arguments_is_the_same_topology(self) -> None:
        """configured() with nothing to change equals the original."""
        assert TOPOLOGY == TOPOLOGY.configured()

    def test_leaves_the_original_untouched(self) -> None:
        """TOPOLOGY is a value: configuring a copy does not change it."""
        TOPOLOGY.configured(partitions=1, names={"input": "elsewhere"})

        assert (INPUT_TOPIC, 6) == (TOPOLOGY.input.name, TOPOLOGY.input.partitions)

    def test_refuses_an_invalid_new_name(self) -> None:
        """A deployment's topic name is checked like a declared one."""
        with pytest.raises(ValueError, match="topic name 'a b' for alerts"):
            TOPOLOGY.configured(names={"alerts": "a b"})


class TestParseTopology:
    def test_reads_names_layout_configs_and_minimums(self) -> None:
        """Every topic gets the defaults' layout; configs become strings, minimums ints."""
        topology = parse_topology(VALID)

        assert (
            ["in", "agg", "alerts", "in.dlq"],
            {(3, 3)},
            {"retention.ms": "1000"},
            {"max.message.bytes": 4 * MiB},
            "readings",
        ) == (
            [spec.name for spec in topology],
            {(spec.partitions, spec.replication_factor) for spec in topology},
            dict(topology.input.configs),
            dict(topology.dlq.minimums),
            topology.input.description,
        )

    def test_without_defaults_six_partitions_and_one_replica(self) -> None:
        """A file with no [defaults] table lays every topic out as 6 x RF 1."""
        topology = parse_topology(VALID.replace("partitions = 3\nreplication_factor = 3\n", ""))

        assert {(6, 1)} == {(spec.partitions, spec.replication_factor) for spec in topology}

    def test_returns_a_topology(self) -> None:
        """The result is the typed Topology, not a dict."""
        assert isinstance(parse_topology(VALID), Topology)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                VALID.replace("[topics.alerts]", "[unused.alerts]"),
                r"topology declares \['aggregates', 'dlq', 'input'\], expected \['aggregates', "
                r"'alerts', 'dlq', 'input'\]",
            ),
            (
                VALID + '\n[topics.audit]\nname = "audit"\n',
                r"topology declares \[.*'audit'.*\], expected",
            ),
            (
                VALID.replace('name = "agg"', 'name = "agg"\npartitions = 3'),
                r"unknown keys \['partitions'\] in topics\.aggregates",
            ),
            (
                VALID.replace('name = "agg"', 'name = "agg gregates"'),
                r"topic name 'agg gregates' for aggregates",
            ),
            (
                VALID.replace("partitions = 3", "partitions = 0"),
                r"in: partitions must be >= 1, got 0",
            ),
            (
                VALID.replace(
                    'name = "in.dlq"', 'name = "in.dlq"\nconfigs = { "max.message.bytes" = 1 }'
                ),
                r"in\.dlq: \['max\.message\.bytes'\] both in configs and minimums",
            ),
        ],
        ids=[
            "missing-role",
            "extra-role",
            "unknown-key",
            "bad-name",
            "zero-partitions",
            "config-and-minimum",
        ],
    )
    def test_refuses_malformed_text_naming_the_problem(self, text: str, message: str) -> None:
        """A malformed topology is a ValueError that says what is wrong and where."""
        with pytest.raises(ValueError, match=message):
            parse_topology(text)

    def test_refuses_text_that_is_not_toml(self) -> None:
        """A syntax error is a ValueError too (tomllib's TOMLDecodeError) giving the line."""
        with pytest.raises(ValueError, match=r"at line 1"):
            parse_topology("[topics.input\nname = ")

    def test_refuses_a_topic_without_a_name(self) -> None:
        """A topic entry with no name is a ValueError naming the role, like any other mistake."""
        with pytest.raises(ValueError, match=r"topics\.alerts"):
            parse_topology(VALID.replace('name = "alerts"', 'description = "no name"'))
