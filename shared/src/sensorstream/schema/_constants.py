"""The numbers and names of the event contract, in one place.

The decoder, the JSON Schema file (``shared/schema/sensor-reading.v1.schema.json``)
and the tests all read their limits from here, so the three can never drift apart
silently: a unit test compares the schema file with these constants.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from ._topology import TOPOLOGY

SCHEMA_VERSION: Final = 1
"""The version a v1 producer writes in every event's ``schema_version`` field."""

LEGACY_SCHEMA_VERSION: Final = 0
"""What ``SensorReading.schema_version`` reports for an event upgraded from the v0 format."""

# The default topic names, as declared in topology.toml (with each topic's layout and configs).
INPUT_TOPIC: Final = TOPOLOGY.input.name
AGGREGATES_TOPIC: Final = TOPOLOGY.aggregates.name
ALERTS_TOPIC: Final = TOPOLOGY.alerts.name
DLQ_TOPIC: Final = TOPOLOGY.dlq.name

MAX_EVENT_BYTES: Final = 64 * 1024
"""Larger payloads are rejected as ``too_large`` before any parsing is attempted."""

TEMPERATURE_RANGE: Final = (-100.0, 200.0)
"""Degrees Celsius, both ends inclusive."""

HUMIDITY_RANGE: Final = (0.0, 100.0)
"""Relative humidity in percent, both ends inclusive."""

EVENT_TIME_RANGE: Final = (946_684_800_000, 4_102_444_800_000)
"""UTC epoch milliseconds from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z, inclusive."""

SEQ_RANGE: Final = (0, 2**63 - 1)
"""Per-sensor sequence numbers start at 0; the top is the largest signed 64-bit integer."""

SENSOR_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
"""1 to 64 characters that are safe in metric-free logs, file names and Kafka keys."""

EVENT_ID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""The canonical lowercase 36-character UUID text, the form ``str(uuid.uuid4())`` gives."""

LEGACY_EVENT_ID_NAMESPACE: Final = uuid.UUID("6f1c1f0e-5d2b-5a57-9c3e-2f0c8a4b7d10")
"""uuid5 namespace for the ids of upgraded v0 events (which carry no id of their own)."""

# fullmatch with the anchors stripped: `$` alone would also accept a trailing newline.
is_sensor_id: Final = re.compile(SENSOR_ID_PATTERN[1:-1]).fullmatch
is_event_id: Final = re.compile(EVENT_ID_PATTERN[1:-1]).fullmatch
