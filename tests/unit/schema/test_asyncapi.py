"""shared/schema/asyncapi.yaml is what the code makes, well formed, and true to the wire."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, get_args

import jsonschema
import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sensorstream.runtime.settings import SaslMechanism
from sensorstream.schema import (
    TOPOLOGY,
    Alert,
    AlertKind,
    DeadLetterHeaders,
    DeadLetterReason,
    RejectReason,
    WindowAggregate,
    asyncapi,
    encode_aggregate,
    encode_alert,
    encode_reading,
)
from sensorstream.schema._reading import READING_FIELDS
from sensorstream.schema.testing import malformed_corpus, readings, valid_payload

REPO = Path(__file__).resolve().parents[3]
DOCUMENT_FILE = REPO / "shared" / "schema" / "asyncapi.yaml"
READING_SCHEMA_FILE = REPO / "shared" / "schema" / "sensor-reading.v1.schema.json"

# The fields the AsyncAPI Kafka bindings 0.5.0 define for a channel and a message.
KAFKA_CHANNEL_BINDING = {"topic", "partitions", "replicas", "topicConfiguration", "bindingVersion"}
KAFKA_MESSAGE_BINDING = {
    "key",
    "schemaIdLocation",
    "schemaIdPayloadEncoding",
    "schemaLookupStrategy",
    "bindingVersion",
}
SASL_SCHEMES = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}

AGGREGATE = WindowAggregate(
    sensor_id="sensor-0007",
    window_start=1_700_000_000_000,
    window_end=1_700_000_060_000,
    count=12,
    temperature_min=21.0,
    temperature_max=23.5,
    temperature_mean=22.25,
    humidity_min=39.0,
    humidity_max=41.0,
    humidity_mean=40.0,
    first_seq=30,
    last_seq=41,
)
ALERT = Alert(
    sensor_id="sensor-0007",
    kind="temperature_high",
    value=85.5,
    threshold=80.0,
    event_time=1_700_000_000_123,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
)
EVERY_HEADER = DeadLetterHeaders(
    reason=DeadLetterReason.LATE_EVENT,
    error="event_time 1700000000123 is in window [1700000000000, 1700000060000), closed",
    original_topic="sensor-data",
    original_partition=4,
    original_offset=99,
    original_timestamp=1_700_000_000_200,
    instance="processor-1",
    lateness_ms=120_000,
    original_size=70_000,
    sha256="ab" * 32,
)
"""Dead-letter headers with every optional field set."""


@functools.cache
def committed() -> dict[str, Any]:
    """The committed document, read once (the hypothesis tests ask for it per example)."""
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture
def document() -> dict[str, Any]:
    return committed()


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The object a local ``$ref`` (``#/a/b``) points at; KeyError if it points nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def payload_schema(document: dict[str, Any], message_id: str) -> dict[str, Any]:
    schema: dict[str, Any] = resolve(
        document, document["components"]["messages"][message_id]["payload"]["$ref"]
    )
    return schema


def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    """AsyncAPI 3.0's default schema format is a superset of JSON Schema draft 07."""
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def headers_text(headers: DeadLetterHeaders) -> dict[str, str]:
    return {name: value.decode() for name, value in headers.to_kafka_headers()}


class TestCommittedFile:
    def test_is_what_the_generator_writes(self) -> None:
        """The committed file equals render(): run the generator after changing the code."""
        assert asyncapi.render() == DOCUMENT_FILE.read_text(encoding="utf-8")

    def test_loads_as_the_built_document(self, document: dict[str, Any]) -> None:
        """The YAML loses nothing: it reads back as build_document() made it."""
        assert asyncapi.build_document() == document

    def test_changes_with_the_topology(self) -> None:
        """Another layout renders another document, so a stale file fails the test above."""
        assert asyncapi.render(TOPOLOGY.configured(partitions=12)) != asyncapi.render()

    def test_check_passes_when_current(self) -> None:
        """--check exits 0 on the committed file."""
        assert 0 == asyncapi.main(["--check"])

    def test_check_fails_when_stale(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--check exits 1 on a stale file and says which command fixes it."""
        stale = tmp_path / "asyncapi.yaml"
        stale.write_text("asyncapi: 3.0.0\n", encoding="utf-8")
        monkeypatch.setattr(asyncapi, "TARGET", stale)

        assert 1 == asyncapi.main(["--check"])
        assert "uv run python -m sensorstream.schema.asyncapi" in capsys.readouterr().err
        assert "asyncapi: 3.0.0\n" == stale.read_text(encoding="utf-8")

    def test_writes_the_target(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --check, main writes render() to the target."""
        target = tmp_path / "asyncapi.yaml"
        monkeypatch.setattr(asyncapi, "TARGET", target)

        assert 0 == asyncapi.main([])
        assert asyncapi.render() == target.read_text(encoding="utf-8")


class TestStructure:
    def test_is_asyncapi_3(self, document: dict[str, Any]) -> None:
        """The document declares AsyncAPI 3.0.0 and the shared package's version."""
        assert ("3.0.0", "Sensorstream", metadata.version("sensorstream-shared")) == (
            document["asyncapi"],
            document["info"]["title"],
            document["info"]["version"],
        )

    def test_every_ref_resolves(self, document: dict[str, Any]) -> None:
        """Each $ref points at an object in the document."""
        found = list(refs(document))

        assert found
        assert [] == [ref for ref in found if not isinstance(resolve(document, ref), dict)]

    def test_channel_addresses_are_the_topologys_topics(self, document: dict[str, Any]) -> None:
        """One channel per topic role, its address the topic's name."""
        assert {spec.role: spec.name for spec in TOPOLOGY} == {
            channel_id: channel["address"] for channel_id, channel in document["channels"].items()
        }

    def test_channel_bindings_are_the_topologys_layout(self, document: dict[str, Any]) -> None:
        """Topic, partitions, replicas and topic configs equal the declared topology."""
        expected = {
            spec.role: (
                spec.name,
                spec.partitions,
                spec.replication_factor,
                spec.creation_configs(),
            )
            for spec in TOPOLOGY
        }
        actual = {}
        for channel_id, channel in document["channels"].items():
            kafka = channel["bindings"]["kafka"]
            configs = {key: str(value) for key, value in kafka["topicConfiguration"].items()}
            actual[channel_id] = (kafka["topic"], kafka["partitions"], kafka["replicas"], configs)

        assert expected == actual

    def test_bindings_use_only_kafka_binding_fields(self, document: dict[str, Any]) -> None:
        """Channel and message bindings hold only fields of the Kafka bindings 0.5.0."""
        channels = [c["bindings"]["kafka"] for c in document["channels"].values()]
        messages = [m["bindings"]["kafka"] for m in document["components"]["messages"].values()]

        assert [] == [b for b in channels if not set(b) <= KAFKA_CHANNEL_BINDING]
        assert [] == [b for b in messages if not set(b) <= KAFKA_MESSAGE_BINDING]
        assert {"0.5.0"} == {b["bindingVersion"] for b in [*channels, *messages]}

    def test_operations_use_their_channels_messages(self, document: dict[str, Any]) -> None:
        """Each operation's messages are messages of its own channel (AsyncAPI 3 requires it)."""
        misplaced = []
        for operation_id, operation in document["operations"].items():
            channel_ref = operation["channel"]["$ref"]
            resolve(document, channel_ref)
            misplaced += [
                (operation_id, message["$ref"])
                for message in operation["messages"]
                if not message["$ref"].startswith(f"{channel_ref}/messages/")
            ]

        assert [] == misplaced

    def test_operations_are_the_data_flow(self, document: dict[str, Any]) -> None:
        """The producer sends readings; the processor receives them and sends the outputs."""
        flow = {
            (
                operation["tags"][0]["name"],
                operation["action"],
                resolve(document, operation["channel"]["$ref"])["address"],
                tuple(resolve(document, m["$ref"])["$ref"] for m in operation["messages"]),
            )
            for operation in document["operations"].values()
        }
        messages = "#/components/messages/"

        assert {
            ("sensorstream-producer", "send", TOPOLOGY.input.name, (f"{messages}sensorReading",)),
            (
                "sensorstream-processor",
                "receive",
                TOPOLOGY.input.name,
                (f"{messages}sensorReading", f"{messages}legacySensorReading"),
            ),
            (
                "sensorstream-processor",
                "send",
                TOPOLOGY.aggregates.name,
                (f"{messages}windowAggregate",),
            ),
            ("sensorstream-processor", "send", TOPOLOGY.alerts.name, (f"{messages}alert",)),
            ("sensorstream-processor", "send", TOPOLOGY.dlq.name, (f"{messages}deadLetter",)),
        } == flow

    def test_messages_say_content_type_and_key(self, document: dict[str, Any]) -> None:
        """Every message names its content type and describes its Kafka key."""
        messages = document["components"]["messages"]

        assert {
            "sensorReading": "application/json",
            "legacySensorReading": "application/json",
            "windowAggregate": "application/json",
            "alert": "application/json",
            "deadLetter": "application/octet-stream",
        } == {name: message["contentType"] for name, message in messages.items()}
        assert [] == [n for n, m in messages.items() if not m["bindings"]["kafka"]["key"]]

    def test_servers(self, document: dict[str, Any]) -> None:
        """A plaintext local broker and a TLS production placeholder."""
        servers = document["servers"]

        assert (("127.0.0.1:9092", "kafka"), "kafka-secure") == (
            (servers["local"]["host"], servers["local"]["protocol"]),
            servers["production"]["protocol"],
        )

    def test_production_offers_every_way_the_services_authenticate(
        self, document: dict[str, Any]
    ) -> None:
        """Each SASL mechanism the settings accept, and mutual TLS, is a security scheme."""
        offered = {
            resolve(document, scheme["$ref"])["type"]
            for scheme in document["servers"]["production"]["security"]
        }

        assert {SASL_SCHEMES[m] for m in get_args(SaslMechanism)} | {"X509"} == offered


class TestPayloads:
    @given(readings())
    def test_encoded_readings_match_the_reading_schema(self, reading: Any) -> None:
        """Whatever encode_reading writes validates against the v1 payload schema."""
        document = committed()
        schema = validator(payload_schema(document, "sensorReading"))

        schema.validate(orjson.loads(encode_reading(reading)))

    def test_reading_schema_is_the_published_json_schema(self, document: dict[str, Any]) -> None:
        """The v1 payload is sensor-reading.v1.schema.json, without $schema and $id."""
        published = json.loads(READING_SCHEMA_FILE.read_text(encoding="utf-8"))
        del published["$schema"], published["$id"]

        assert published == payload_schema(document, "sensorReading")

    @pytest.mark.parametrize("spec", READING_FIELDS, ids=lambda spec: spec.name)
    def test_field_rules_translate_as_the_published_schema_says(self, spec: Any) -> None:
        """field_schema, which makes the other payloads, agrees with the hand-kept v1 file."""
        published = json.loads(READING_SCHEMA_FILE.read_text(encoding="utf-8"))
        prop = published["properties"][spec.name]
        translated = asyncapi.field_schema(spec)

        assert translated == {key: prop[key] for key in translated}

    @given(
        first=st.none() | st.integers(0, 2**63 - 1),
        mean=st.floats(allow_nan=False, allow_infinity=False),
        count=st.integers(1, 10**9),
    )
    def test_encoded_aggregates_match(self, first: int | None, mean: float, count: int) -> None:
        """Aggregates with null or any seqs, any statistic and any count validate."""
        document = committed()
        aggregate = dataclasses.replace(
            AGGREGATE, first_seq=first, last_seq=first, temperature_mean=mean, count=count
        )

        validator(payload_schema(document, "windowAggregate")).validate(
            orjson.loads(encode_aggregate(aggregate))
        )

    @pytest.mark.parametrize("kind", get_args(AlertKind))
    def test_encoded_alerts_match(self, document: dict[str, Any], kind: str) -> None:
        """An alert of every kind validates."""
        alert = dataclasses.replace(ALERT, kind=kind)  # type: ignore[arg-type]

        validator(payload_schema(document, "alert")).validate(orjson.loads(encode_alert(alert)))

    def test_legacy_and_v1_are_told_apart(self, document: dict[str, Any]) -> None:
        """A v0 payload validates only as legacy, a v1 payload only as v1."""
        v1 = validator(payload_schema(document, "sensorReading"))
        v0 = validator(payload_schema(document, "legacySensorReading"))
        legacy = {"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}
        current = orjson.loads(valid_payload())

        assert (True, False, False, True) == (
            v0.is_valid(legacy),
            v1.is_valid(legacy),
            v0.is_valid({**legacy, "schema_version": 0}),
            v1.is_valid(current),
        )
        assert not v0.is_valid(current)

    @pytest.mark.parametrize(
        "payload",
        [
            payload
            for reason, payload in malformed_corpus()
            if reason
            in (
                RejectReason.MISSING_FIELD,
                RejectReason.WRONG_TYPE,
                RejectReason.OUT_OF_RANGE,
                RejectReason.UNKNOWN_VERSION,
            )
        ],
    )
    def test_refused_readings_match_no_input_message(
        self, document: dict[str, Any], payload: bytes
    ) -> None:
        """A JSON object the decoder refuses for its fields fits neither input schema."""
        value = json.loads(payload)

        assert (False, False) == (
            validator(payload_schema(document, "sensorReading")).is_valid(value),
            validator(payload_schema(document, "legacySensorReading")).is_valid(value),
        )

    def test_every_example_matches_its_message(self, document: dict[str, Any]) -> None:
        """Each message example validates against its payload (and headers) schema."""
        checked = 0
        for message in document["components"]["messages"].values():
            payload = validator(resolve(document, message["payload"]["$ref"]))
            headers = (
                validator(resolve(document, message["headers"]["$ref"]))
                if "headers" in message
                else None
            )
            for example in message["examples"]:
                payload.validate(example["payload"])
                if headers is not None:
                    headers.validate(example["headers"])
                checked += 1

        assert len(document["components"]["messages"]) == checked


class TestDeadLetterHeaders:
    @pytest.fixture
    def schema(self, document: dict[str, Any]) -> dict[str, Any]:
        message = document["components"]["messages"]["deadLetter"]
        headers: dict[str, Any] = resolve(document, message["headers"]["$ref"])
        return headers

    def test_are_exactly_the_dead_letter_header_fields(self, schema: dict[str, Any]) -> None:
        """One header per DeadLetterHeaders field, named as to_kafka_headers writes it."""
        written = [name for name, _ in EVERY_HEADER.to_kafka_headers()]

        assert (len(dataclasses.fields(DeadLetterHeaders)), written) == (
            len(schema["properties"]),
            list(schema["properties"]),
        )
        assert [f.name for f in dataclasses.fields(DeadLetterHeaders)] == list(
            asyncapi.dead_letter_header_names()
        )

    def test_required_are_the_ones_always_written(self, schema: dict[str, Any]) -> None:
        """The required headers are those written when no optional field is set."""
        always = dataclasses.replace(
            EVERY_HEADER, lateness_ms=None, original_size=None, sha256=None
        )

        assert [name for name, _ in always.to_kafka_headers()] == schema["required"]

    def test_reason_lists_every_dead_letter_reason(self, schema: dict[str, Any]) -> None:
        """The reason header's values are the DeadLetterReason values."""
        reason = schema["properties"]["sensorstream.dlq.reason"]

        assert [r.value for r in DeadLetterReason] == reason["enum"]

    @given(st.sampled_from(list(DeadLetterReason)), st.integers(0, 2**63 - 1))
    def test_written_headers_match(self, reason: DeadLetterReason, offset: int) -> None:
        """What to_kafka_headers writes, with or without the optional fields, validates."""
        document = committed()
        message = document["components"]["messages"]["deadLetter"]
        schema = validator(resolve(document, message["headers"]["$ref"]))
        full = dataclasses.replace(EVERY_HEADER, reason=reason, original_offset=offset)
        short = dataclasses.replace(full, lateness_ms=None, original_size=None, sha256=None)

        schema.validate(headers_text(full))
        schema.validate({**headers_text(short), "traceparent": "00-abc-def-01"})

    def test_example_reads_back(self, document: dict[str, Any]) -> None:
        """The documented example is headers DeadLetterHeaders.from_kafka_headers accepts."""
        example = document["components"]["messages"]["deadLetter"]["examples"][0]["headers"]
        headers = DeadLetterHeaders.from_kafka_headers(
            [(name, value.encode()) for name, value in example.items()]
        )

        assert headers_text(headers) == example
