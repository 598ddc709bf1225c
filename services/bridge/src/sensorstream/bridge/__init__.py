"""The Sensorstream MQTT bridge: devices publish readings over MQTT, the bridge forwards
them to the input topic with QoS 1 end to end (a PUBACK only once Kafka has the record).

The public surface is the ``sensorstream-mqtt-bridge`` CLI with :class:`BridgeSettings`,
the ``sensorstream-mqtt-devices`` simulator with :class:`DevicesSettings`, the metrics
named in :data:`METRIC_NAMES` and the dead-letter header :data:`MQTT_TOPIC_HEADER`;
everything in ``_modules`` is private. ``docs/bridge.md`` describes the guarantees.
"""

from ._dead_letters import MQTT_TOPIC_HEADER
from ._metrics import METRIC_NAMES
from .settings import BridgeSettings, DevicesSettings

__all__ = ["METRIC_NAMES", "MQTT_TOPIC_HEADER", "BridgeSettings", "DevicesSettings"]
