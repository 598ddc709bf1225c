"""Write ``shared/schema/asyncapi.yaml``, the AsyncAPI 3.0 document of the four topics.

    uv run python -m sensorstream.schema.asyncapi          # rewrite the document
    uv run python -m sensorstream.schema.asyncapi --check  # exit 1 if it is out of date

Everything in the document comes from this package, so it cannot drift silently (a
unit test compares the committed file with :func:`render`): the channels from
:data:`TOPOLOGY` (address, partitions, replicas, topic configs as Kafka bindings); the
output and legacy payload schemas from the decoders' field rules (``AGGREGATE_FIELDS``,
``ALERT_FIELDS``, ``LEGACY_FIELDS``) and the models' attribute docstrings; the v1
reading's schema from the published ``sensor-reading.v1.schema.json`` beside the document
(its own test keeps it equal to the decoder's constants, and the AsyncAPI test holds it to
``READING_FIELDS`` through :func:`field_schema`); the dead-letter headers from what
:meth:`DeadLetterHeaders.to_kafka_headers` writes; the examples from the encoders.

A tool for the workspace: it reads and writes files under ``shared/schema/`` and is never
imported by the services. PyYAML (a dev dependency) is imported only to render.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Final, get_type_hints

import orjson

from ._constants import (
    EVENT_ID_PATTERN,
    SCHEMA_VERSION,
    SENSOR_ID_PATTERN,
    is_event_id,
    is_sensor_id,
)
from ._dead_letter import MAX_ERROR_BYTES, DeadLetterHeaders, DeadLetterReason
from ._fields import FieldSpec
from ._legacy import LEGACY_FIELDS
from ._models import Alert, SensorReading, WindowAggregate
from ._outputs import AGGREGATE_FIELDS, ALERT_FIELDS, ALERT_KINDS, encode_aggregate, encode_alert
from ._reading import decode_reading, encode_reading
from ._rejection import Rejection
from ._topology import TOPOLOGY, TopicRole, TopicSpec, Topology

__all__ = [
    "TARGET",
    "build_document",
    "dead_letter_header_names",
    "field_schema",
    "main",
    "render",
]

SCHEMA_DIR: Final = Path(__file__).resolve().parents[3] / "schema"
TARGET: Final = SCHEMA_DIR / "asyncapi.yaml"
READING_SCHEMA_FILE: Final = SCHEMA_DIR / "sensor-reading.v1.schema.json"

ASYNCAPI_VERSION: Final = "3.0.0"
KAFKA_BINDING_VERSION: Final = "0.5.0"
JSON: Final = "application/json"
BYTES: Final = "application/octet-stream"
_INTEGER_TEXT: Final = "^-?[0-9]+$"

# The field rules name their string checks as functions; JSON Schema needs the rule itself.
_STRING_RULES: Final[Mapping[Callable[[str], object], Mapping[str, object]]] = {
    is_sensor_id: {"pattern": SENSOR_ID_PATTERN},
    is_event_id: {"pattern": EVENT_ID_PATTERN},
    ALERT_KINDS.__contains__: {"enum": sorted(ALERT_KINDS)},
}

# For the fields whose model attribute has no docstring.
_FIELD_DOCS: Final[Mapping[str, str]] = {
    "sensor_id": "Which sensor, also the Kafka record key, e.g. `sensor-0007`.",
    "kind": "Which threshold the reading crossed.",
    "threshold": "The configured threshold that `value` crossed.",
    **{
        f"{measure}_{stat}": f"{word} {what} of the window's readings."
        for measure, what in (("temperature", "temperature, °C,"), ("humidity", "humidity, %,"))
        for stat, word in (("min", "Lowest"), ("max", "Highest"), ("mean", "Mean"))
    },
    "reason": "Why the record was dead-lettered.",
    "original_topic": "The topic the original record was consumed from.",
    "original_partition": "The original record's partition.",
    "original_offset": "The original record's offset.",
}

_LEGACY_DOCS: Final[Mapping[str, str]] = {
    "sensor_id": "The sensor's number; upgraded to `sensor-0007` for 7 (4 digits or more).",
    "timestamp": "When the sensor measured, UTC epoch *seconds*; upgraded to milliseconds.",
    "temperature": "Degrees Celsius, -100.0 .. 200.0.",
    "humidity": "Relative humidity in percent, 0.0 .. 100.0.",
}

_EXAMPLE_READING: Final = SensorReading(
    schema_version=SCHEMA_VERSION,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
    sensor_id="sensor-0007",
    seq=41,
    event_time=1_700_000_000_123,
    temperature=22.5,
    humidity=40.1,
)
_EXAMPLE_LEGACY: Final = (
    b'{"sensor_id": 7, "temperature": 22.5, "humidity": 40.1, "timestamp": 1700000000}'
)
_EXAMPLE_AGGREGATE: Final = WindowAggregate(
    sensor_id="sensor-0007",
    window_start=1_699_999_980_000,
    window_end=1_700_000_040_000,
    count=12,
    temperature_min=21.9,
    temperature_max=22.8,
    temperature_mean=22.35,
    humidity_min=39.5,
    humidity_max=40.6,
    humidity_mean=40.05,
    first_seq=30,
    last_seq=41,
)
_EXAMPLE_ALERT: Final = Alert(
    sensor_id="sensor-0007",
    kind="temperature_high",
    value=87.5,
    threshold=80.0,
    event_time=1_700_000_000_123,
    event_id="0b6d3c1e-8f7a-4c2b-9d5e-1a2b3c4d5e6f",
)
_EXAMPLE_DEAD_VALUE: Final = (
    b'{"schema_version": 1, "sensor_id": "sensor-0007", "temperature": 22.5}'
)


def build_document(topology: Topology = TOPOLOGY) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``topology``'s topics, as plain JSON-able values."""
    channel_messages: dict[TopicRole, tuple[str, ...]] = {
        "input": ("sensorReading", "legacySensorReading"),
        "aggregates": ("windowAggregate",),
        "alerts": ("alert",),
        "dlq": ("deadLetter",),
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Sensorstream",
            "version": metadata.version("sensorstream-shared"),
            "description": (
                "The topics of the Sensorstream telemetry pipeline: sensorstream-producer "
                "writes sensor readings; sensorstream-processor reads them and writes "
                "per-sensor window aggregates, threshold alerts and, for every record it "
                "cannot use, a dead letter. Generated from `sensorstream.schema` by "
                "`uv run python -m sensorstream.schema.asyncapi`: do not edit by hand. "
                "Channel addresses and layouts are the defaults of `topology.toml`; a "
                "deployment may rename the topics and change partitions and replication "
                "(docs/settings.md)."
            ),
        },
        "defaultContentType": JSON,
        "servers": _servers(),
        "channels": {spec.role: _channel(spec, channel_messages[spec.role]) for spec in topology},
        "operations": _operations(),
        "components": {
            "messages": _messages(topology),
            "schemas": _schemas(),
            "securitySchemes": _security_schemes(),
        },
    }


def render(topology: Topology = TOPOLOGY) -> str:
    """The document as YAML text, byte for byte what ``shared/schema/asyncapi.yaml`` holds."""
    import yaml  # type: ignore[import-untyped]  # a dev dependency, needed only here

    header = "# Generated by `uv run python -m sensorstream.schema.asyncapi`: do not edit.\n"
    body: str = yaml.safe_dump(
        build_document(topology), sort_keys=False, allow_unicode=True, width=96
    )
    return header + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sensorstream.schema.asyncapi", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            sys.stderr.write(
                f"{TARGET} is out of date: run uv run python -m sensorstream.schema.asyncapi\n"
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


# ---- servers and security ------------------------------------------------------------


def _servers() -> dict[str, Any]:
    return {
        "local": {
            "host": "127.0.0.1:9092",
            "protocol": "kafka",
            "description": (
                "The local broker (`make kafka-start`), PLAINTEXT: the services' default "
                "`SENSORSTREAM_BOOTSTRAP_SERVERS`."
            ),
        },
        "production": {
            "host": "kafka.example.com:9093",
            "protocol": "kafka-secure",
            "description": (
                "A placeholder for a production cluster: TLS with the broker's host name "
                "always checked (`SENSORSTREAM_SSL_CAFILE` for a private CA), and either "
                "SASL (`SENSORSTREAM_SECURITY_PROTOCOL=SASL_SSL`) or a client certificate "
                "(`SSL` with `SENSORSTREAM_SSL_CERTFILE`). See docs/security.md."
            ),
            "security": [
                {"$ref": f"#/components/securitySchemes/{name}"} for name in _security_schemes()
            ],
        },
    }


def _security_schemes() -> dict[str, Any]:
    def sasl(mechanism: str) -> str:
        return (
            f"SASL {mechanism} over TLS: `SENSORSTREAM_SECURITY_PROTOCOL=SASL_SSL`, "
            f"`SENSORSTREAM_SASL_MECHANISM={mechanism}`, `SENSORSTREAM_SASL_USERNAME` and "
            "`SENSORSTREAM_SASL_PASSWORD_FILE`."
        )

    return {
        "scramSha512": {"type": "scramSha512", "description": sasl("SCRAM-SHA-512")},
        "scramSha256": {"type": "scramSha256", "description": sasl("SCRAM-SHA-256")},
        "plain": {"type": "plain", "description": sasl("PLAIN")},
        "mutualTls": {
            "type": "X509",
            "description": (
                "Mutual TLS: `SENSORSTREAM_SECURITY_PROTOCOL=SSL` with a client certificate "
                "(`SENSORSTREAM_SSL_CERTFILE`, `SENSORSTREAM_SSL_KEYFILE`)."
            ),
        },
    }


# ---- channels and operations ---------------------------------------------------------


def _channel(spec: TopicSpec, message_ids: Sequence[str]) -> dict[str, Any]:
    return {
        "address": spec.name,
        "title": spec.name,
        "description": spec.description,
        "messages": {
            message_id: {"$ref": f"#/components/messages/{message_id}"}
            for message_id in message_ids
        },
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": {
                    key: _config_value(value)
                    for key, value in sorted(spec.creation_configs().items())
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _config_value(value: str) -> int | str | list[str]:
    """A topic config as the Kafka binding types it: integers as integers, lists as lists."""
    if re.fullmatch(_INTEGER_TEXT, value):
        return int(value)
    return value.split(",") if "," in value else value


def _operations() -> dict[str, Any]:
    def operation(
        action: str,
        role: TopicRole,
        message_ids: Sequence[str],
        *,
        service: str,
        summary: str,
        description: str,
    ) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{role}"},
            "summary": summary,
            "description": description,
            "tags": [{"name": service}],
            "messages": [
                {"$ref": f"#/channels/{role}/messages/{message_id}"} for message_id in message_ids
            ],
        }

    producer, processor = "sensorstream-producer", "sensorstream-processor"
    return {
        "sendReadings": operation(
            "send",
            "input",
            ["sensorReading"],
            service=producer,
            summary="The producer sends sensor readings.",
            description=(
                "v1 readings of the simulated sensors, keyed by sensor id: the default "
                "partitioner keeps each sensor on one partition, so its `seq` stays in "
                "order. The producer writes no record headers."
            ),
        ),
        "receiveReadings": operation(
            "receive",
            "input",
            ["sensorReading", "legacySensorReading"],
            service=processor,
            summary="The processor receives sensor readings.",
            description=(
                "v1 readings, and legacy v0 ones upgraded on decode: windowed per sensor "
                "and checked against the alert thresholds. A record it cannot decode or "
                "use becomes a dead letter."
            ),
        ),
        "sendAggregates": operation(
            "send",
            "aggregates",
            ["windowAggregate"],
            service=processor,
            summary="The processor sends window aggregates.",
            description="One per sensor and closed tumbling event-time window, keyed by sensor id.",
        ),
        "sendAlerts": operation(
            "send",
            "alerts",
            ["alert"],
            service=processor,
            summary="The processor sends alerts.",
            description="One per reading that crosses a threshold, keyed by sensor id.",
        ),
        "sendDeadLetters": operation(
            "send",
            "dlq",
            ["deadLetter"],
            service=processor,
            summary="The processor sends dead letters.",
            description=(
                "Each record it cannot use, with its original key, value and headers and "
                "the `sensorstream.dlq.*` headers saying why and from where."
            ),
        ),
    }


# ---- messages ------------------------------------------------------------------------


def _messages(topology: Topology) -> dict[str, Any]:
    sensor_key = {
        "type": "string",
        "pattern": SENSOR_ID_PATTERN,
        "description": "The sensor id (UTF-8), equal to the payload's `sensor_id`.",
    }

    def message(
        *,
        name: str,
        title: str,
        summary: str,
        schema: str,
        content_type: str,
        key: Mapping[str, object],
        example: Mapping[str, Any],
        headers: str | None = None,
    ) -> dict[str, Any]:
        built: dict[str, Any] = {
            "name": name,
            "title": title,
            "summary": summary,
            "contentType": content_type,
        }
        if headers is not None:
            built["headers"] = {"$ref": f"#/components/schemas/{headers}"}
        built["payload"] = {"$ref": f"#/components/schemas/{schema}"}
        built["bindings"] = {"kafka": {"key": dict(key), "bindingVersion": KAFKA_BINDING_VERSION}}
        built["examples"] = [dict(example)]
        return built

    return {
        "sensorReading": message(
            name="SensorReading",
            title="Sensor reading (v1)",
            summary=_doc(SensorReading),
            schema="SensorReading",
            content_type=JSON,
            key=sensor_key,
            example={"name": "reading", "payload": _json(encode_reading(_EXAMPLE_READING))},
        ),
        "legacySensorReading": message(
            name="LegacySensorReading",
            title="Legacy sensor reading (v0)",
            summary=(
                "The kafka-python tutorial simulator's format, still sent by old devices: "
                "accepted and upgraded to a v1 reading on decode. Never written by "
                "sensorstream-producer."
            ),
            schema="LegacySensorReading",
            content_type=JSON,
            key={"description": "Whatever the legacy device sets; the processor ignores it."},
            example={"name": "legacy", "payload": _json(_EXAMPLE_LEGACY)},
        ),
        "windowAggregate": message(
            name="WindowAggregate",
            title="Window aggregate",
            summary=_doc(WindowAggregate),
            schema="WindowAggregate",
            content_type=JSON,
            key=sensor_key,
            example={"name": "aggregate", "payload": _json(encode_aggregate(_EXAMPLE_AGGREGATE))},
        ),
        "alert": message(
            name="Alert",
            title="Alert",
            summary=_doc(Alert),
            schema="Alert",
            content_type=JSON,
            key=sensor_key,
            example={"name": "alert", "payload": _json(encode_alert(_EXAMPLE_ALERT))},
        ),
        "deadLetter": message(
            name="DeadLetter",
            title="Dead letter",
            summary=(
                "A record the processor could not use: its original key, value and headers, "
                "plus the `sensorstream.dlq.*` headers (`DeadLetterHeaders`)."
            ),
            schema="DeadLetterValue",
            content_type=BYTES,
            headers="DeadLetterHeaders",
            key={"description": "The original record's key, unchanged (normally the sensor id)."},
            example={
                "name": "missingField",
                "headers": _example_dead_letter_headers(topology),
                "payload": _EXAMPLE_DEAD_VALUE.decode(),
            },
        ),
    }


def _json(data: bytes) -> Any:
    return orjson.loads(data)


def _example_dead_letter_headers(topology: Topology) -> dict[str, str]:
    """The headers the processor writes for the example value, refused by the decoder."""
    rejection = decode_reading(_EXAMPLE_DEAD_VALUE)
    assert isinstance(rejection, Rejection)
    headers = DeadLetterHeaders.for_rejection(
        rejection,
        original_topic=topology.input.name,
        original_partition=3,
        original_offset=1841,
        original_timestamp=1_700_000_000_200,
        instance="processor-0",
    )
    return {name: value.decode() for name, value in headers.to_kafka_headers()}


# ---- schemas -------------------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    return {
        "SensorReading": _reading_schema(),
        "LegacySensorReading": _legacy_schema(),
        "WindowAggregate": _object_schema(
            WindowAggregate,
            AGGREGATE_FIELDS,
            description=(
                f"{_doc(WindowAggregate)} The window is [window_start, window_end), "
                "window_end after window_start."
            ),
        ),
        "Alert": _object_schema(Alert, ALERT_FIELDS, description=_doc(Alert)),
        "DeadLetterValue": {
            "type": "string",
            "format": "binary",
            "description": (
                "The original record's value, byte for byte: not necessarily JSON, nor "
                "even UTF-8. Cut to fit the dead-letter topic only when it is too large, "
                "and then `original_size` and `sha256` describe the whole value."
            ),
        },
        "DeadLetterHeaders": _dead_letter_headers_schema(),
    }


def _reading_schema() -> dict[str, Any]:
    """The published v1 JSON Schema, less the keys that would re-base its references."""
    schema: dict[str, Any] = json.loads(READING_SCHEMA_FILE.read_text(encoding="utf-8"))
    return {key: value for key, value in schema.items() if key not in ("$schema", "$id")}


def _legacy_schema() -> dict[str, Any]:
    if [spec.name for spec in LEGACY_FIELDS] != list(_LEGACY_DOCS):
        raise ValueError("LEGACY_FIELDS changed: describe its fields in _LEGACY_DOCS")
    schema = _schema_of_fields(
        LEGACY_FIELDS,
        _LEGACY_DOCS,
        description=(
            "A legacy v0 reading: no `schema_version` (which tells it apart from v1), an "
            "integer sensor number and epoch seconds. The processor upgrades it: "
            "`sensor_id` `sensor-0007`, `event_time` = timestamp * 1000, `seq` null, "
            "`event_id` a UUID5 of the raw bytes."
        ),
    )
    schema["not"] = {"required": ["schema_version"]}
    return schema


def _object_schema(model: type, specs: Sequence[FieldSpec], *, description: str) -> dict[str, Any]:
    """The schema of a model's wire object: one property per field, in wire order."""
    names = [f.name for f in fields(model)]
    if names != [spec.name for spec in specs]:
        raise ValueError(f"the field rules of {model.__name__} do not list its fields in order")
    docs = {**_FIELD_DOCS, **_attribute_docs(model)}
    return _schema_of_fields(specs, docs, description=description)


def _schema_of_fields(
    specs: Sequence[FieldSpec], docs: Mapping[str, str], *, description: str
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{description} Unknown extra keys are ignored.",
        "required": [spec.name for spec in specs],
        "additionalProperties": True,
        "properties": {
            spec.name: {"description": _described(docs, spec.name), **field_schema(spec)}
            for spec in specs
        },
    }


def field_schema(spec: FieldSpec) -> dict[str, Any]:
    """The JSON Schema of one field rule: its type, range and pattern or set of values."""
    schema: dict[str, Any] = {"type": [spec.kind, "null"] if spec.nullable else spec.kind}
    if spec.bounds is not None:
        schema["minimum"], schema["maximum"] = spec.bounds
    if spec.matches is not None:
        try:
            schema.update(_STRING_RULES[spec.matches])
        except KeyError:
            raise ValueError(
                f"{spec.name}: no JSON Schema for its check {spec.matches!r}; add it to "
                "_STRING_RULES in sensorstream/schema/asyncapi.py"
            ) from None
    return schema


def _dead_letter_headers_schema() -> dict[str, Any]:
    hints = get_type_hints(DeadLetterHeaders)
    by_name = {field.name: field for field in fields(DeadLetterHeaders)}
    docs = {**_FIELD_DOCS, **_attribute_docs(DeadLetterHeaders)}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, header in dead_letter_header_names().items():
        schema: dict[str, Any] = {"description": _described(docs, name), "type": "string"}
        if hints[name] is DeadLetterReason:
            schema["enum"] = [reason.value for reason in DeadLetterReason]
        elif _is_int(hints[name]):
            schema["pattern"] = _INTEGER_TEXT
            schema["description"] += " Decimal text."
        if name == "error":
            schema["maxLength"] = MAX_ERROR_BYTES
            schema["description"] += f" At most {MAX_ERROR_BYTES} bytes of UTF-8."
        properties[header] = schema
        if by_name[name].default is MISSING:
            required.append(header)
    return {
        "type": "object",
        "description": (
            f"{_doc(DeadLetterHeaders)} Kafka header values are bytes; these are UTF-8 "
            "text. The original record's headers come along unchanged, so other names "
            "may appear too."
        ),
        "required": required,
        "additionalProperties": True,
        "properties": properties,
    }


def dead_letter_header_names() -> dict[str, str]:
    """Each ``DeadLetterHeaders`` field name and the header that carries it, in writing order.

    Read from what ``to_kafka_headers`` writes for a sample whose every field holds a
    value of its own, so a renamed header is renamed here too.
    """
    hints = get_type_hints(DeadLetterHeaders)
    sample: dict[str, Any] = {}
    for number, field in enumerate(fields(DeadLetterHeaders), start=1):
        hint = hints[field.name]
        if hint is DeadLetterReason:
            sample[field.name] = DeadLetterReason.LATE_EVENT
        elif _is_int(hint):
            sample[field.name] = 1000 + number
        else:
            sample[field.name] = f"<{field.name}>"
    field_of = {str(value).encode(): name for name, value in sample.items()}
    written = DeadLetterHeaders(**sample).to_kafka_headers()
    return {field_of[value]: name for name, value in written}


def _is_int(hint: object) -> bool:
    """``int`` or ``int | None``."""
    return hint is int or int in getattr(hint, "__args__", ())


# ---- docstrings ----------------------------------------------------------------------


def _doc(cls: type) -> str:
    return _plain(inspect.getdoc(cls) or "")


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's annotated attributes, by attribute name."""
    tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
    body = next(
        node.body
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__
    )
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = _plain(following.value.value)
    return docs


def _described(docs: Mapping[str, str], name: str) -> str:
    if name not in docs:
        raise ValueError(f"{name}: no description; give it a docstring or a _FIELD_DOCS entry")
    return docs[name]


def _plain(text: str) -> str:
    """One line of Markdown from a reST docstring, in JSON's words (``None`` is null)."""
    return " ".join(inspect.cleandoc(text).split()).replace("``", "`").replace("`None`", "`null`")


if __name__ == "__main__":
    sys.exit(main())
