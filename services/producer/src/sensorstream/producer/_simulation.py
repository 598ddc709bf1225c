"""A simulated sensor fleet that generates already-encoded readings, a batch at a time.

Each sensor has a plausible signal rather than uniform noise: a per-sensor baseline,
a slow mean-reverting random walk, a daily cycle (with a per-sensor phase) and a
little measurement noise. With ``anomaly_probability`` a reading is a spike far
outside the normal band, which the processor's alert thresholds catch.

Sensors report round-robin, so at any rate each sensor gets its fair share and its
``seq`` runs 0, 1, 2, ... without gaps. Everything random comes from one seeded
``random.Random``: the same seed gives the same fleet, the same readings and the
same event ids (v4-formatted UUIDs from ``getrandbits(128)``, much cheaper than
``uuid4()``), apart from ``event_time``, which is the wall clock passed in.

Per-sensor state lives in flat lists, not objects, so 100,000 sensors cost a few
megabytes. This module does no I/O and never logs.
"""

from __future__ import annotations

import math
import random

import orjson

from sensorstream.schema import HUMIDITY_RANGE, SCHEMA_VERSION, TEMPERATURE_RANGE

__all__ = ["DAY_MS", "EncodedReading", "SensorFleet", "event_id_from_bits", "sensor_ids"]

EncodedReading = tuple[bytes, bytes]
"""(key, value): the sensor id and the v1 JSON reading, both UTF-8 bytes."""

DAY_MS = 86_400_000

_T_LOW, _T_HIGH = TEMPERATURE_RANGE
_H_LOW, _H_HIGH = HUMIDITY_RANGE
# Bits a version-4, variant-1 UUID fixes: 4 bits of version, 2 bits of variant.
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID_SET = (0x4 << 76) | (0x2 << 62)
_TWO_PI = 2.0 * math.pi
# The walk reverts towards the baseline so a long run never drifts out of range.
_WALK_STEP = 0.05
_WALK_KEEP = 0.995


def event_id_from_bits(bits: int) -> str:
    """Format 128 random bits as a canonical lowercase version-4 UUID string."""
    h = "%032x" % ((bits & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def sensor_ids(count: int) -> list[str]:
    """``sensor-0000`` .. ``sensor-<count-1>``, zero-padded to a common width (at least 4)."""
    width = max(4, len(str(count - 1)))
    return [f"sensor-{i:0{width}d}" for i in range(count)]


class SensorFleet:
    """``sensors`` simulated sensors; :meth:`generate` returns the next readings, encoded."""

    __slots__ = (
        "_anomaly_probability",
        "_cursor",
        "_hum_base",
        "_hum_walk",
        "_ids",
        "_keys",
        "_phase",
        "_rng",
        "_seq",
        "_temp_amplitude",
        "_temp_base",
        "_temp_walk",
        "sensors",
    )

    def __init__(
        self, sensors: int, *, seed: int | None = None, anomaly_probability: float = 0.0
    ) -> None:
        if sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {sensors}")
        if not 0.0 <= anomaly_probability <= 1.0:
            raise ValueError(f"anomaly_probability must be in 0..1, got {anomaly_probability}")
        rng = random.Random(seed)
        self._rng = rng
        self.sensors = sensors
        self._anomaly_probability = anomaly_probability
        self._ids = sensor_ids(sensors)
        self._keys = [sensor_id.encode() for sensor_id in self._ids]
        uniform = rng.uniform
        self._temp_base = [uniform(12.0, 28.0) for _ in range(sensors)]
        self._temp_amplitude = [uniform(1.0, 6.0) for _ in range(sensors)]
        self._hum_base = [uniform(30.0, 70.0) for _ in range(sensors)]
        self._phase = [uniform(0.0, _TWO_PI) for _ in range(sensors)]
        self._temp_walk = [0.0] * sensors
        self._hum_walk = [0.0] * sensors
        self._seq = [0] * sensors
        self._cursor = 0

    @property
    def sensor_ids(self) -> list[str]:
        """The fleet's sensor ids, index = sensor number."""
        return list(self._ids)

    def next_seq(self, sensor: int) -> int:
        """The ``seq`` the sensor's next reading will carry (= readings generated so far)."""
        return self._seq[sensor]

    def generate(self, count: int, event_time: int) -> list[EncodedReading]:
        """The next ``count`` readings, round-robin over the sensors, all at ``event_time`` (ms)."""
        # Hot path, once per event: locals only, no logging, no objects but the output.
        rng = self._rng
        rand = rng.random
        getrandbits = rng.getrandbits
        dumps = orjson.dumps
        sin = math.sin
        ids = self._ids
        keys = self._keys
        seqs = self._seq
        temp_base = self._temp_base
        temp_amp = self._temp_amplitude
        temp_walk = self._temp_walk
        hum_base = self._hum_base
        hum_walk = self._hum_walk
        phase = self._phase
        anomaly_p = self._anomaly_probability
        sensors = self.sensors
        day_angle = _TWO_PI * (event_time % DAY_MS) / DAY_MS
        cursor = self._cursor
        out: list[EncodedReading] = []
        append = out.append
        for _ in range(count):
            i = cursor
            cursor += 1
            if cursor == sensors:
                cursor = 0
            tw = temp_walk[i] * _WALK_KEEP + (rand() - 0.5) * _WALK_STEP
            hw = hum_walk[i] * _WALK_KEEP + (rand() - 0.5) * _WALK_STEP
            temp_walk[i] = tw
            hum_walk[i] = hw
            cycle = sin(day_angle + phase[i])
            temperature = temp_base[i] + tw + temp_amp[i] * cycle + (rand() - 0.5) * 0.2
            humidity = hum_base[i] + hw - 4.0 * cycle + (rand() - 0.5) * 0.5
            if anomaly_p and rand() < anomaly_p:
                temperature, humidity = _spike(rand(), temperature, humidity)
            seq = seqs[i]
            seqs[i] = seq + 1
            h = "%032x" % ((getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
            append(
                (
                    keys[i],
                    dumps(
                        {
                            "schema_version": SCHEMA_VERSION,
                            "event_id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                            "sensor_id": ids[i],
                            "seq": seq,
                            "event_time": event_time,
                            "temperature": round(temperature, 2),
                            "humidity": round(min(max(humidity, _H_LOW), _H_HIGH), 2),
                        }
                    ),
                )
            )
        self._cursor = cursor
        return out


def _spike(draw: float, temperature: float, humidity: float) -> tuple[float, float]:
    """An anomaly: one of the four alert kinds, chosen by ``draw`` in [0, 1)."""
    if draw < 0.4:
        return min(temperature + 35.0 + 20.0 * draw, _T_HIGH), humidity
    if draw < 0.6:
        return max(temperature - 40.0 - 20.0 * draw, _T_LOW), humidity
    if draw < 0.8:
        return temperature, 95.0 + 20.0 * (draw - 0.6)
    return temperature, 5.0 * (1.0 - draw)
