"""A simulated sensor fleet that generates already-encoded readings, a batch at a time.

Each sensor has a plausible signal rather than uniform noise: a per-sensor baseline,
a slow mean-reverting random walk, a daily cycle (with a per-sensor phase) and a
little measurement noise. With ``anomaly_probability`` a reading is a spike far
outside the normal band, which the processor's alert thresholds catch.

Sensors report round-robin, so at any rate each sensor gets its fair share and its
``seq`` runs 0, 1, 2, ... without gaps, from where :meth:`SensorFleet.resume` puts it
after a restart (0 by default). Everything random comes from two generators
seeded from ``seed``, one for the signal and one for the event ids: the same seed
gives the same fleet, the same readings and the same event ids, however the readings
are split into batches, apart from ``event_time``, which is the wall clock passed in.

Generation is the producer's hot path, so the work is done per batch where it can be:
the event ids of a batch are one ``randbytes`` call formatted as version-4 UUIDs with
a handful of C-level slice operations (:func:`event_ids`), and each reading is one
``bytes %`` template (no dict, no ``round``, no ``orjson``), with values to 0.01.
The bytes are the v1 wire format of :func:`sensorstream.schema.encode_reading` up to
float spelling (``21.50`` for ``21.5``); the unit tests hold them to it.

Per-sensor state lives in flat lists, not objects, so 100,000 sensors cost a few
megabytes. This module does no I/O and never logs.
"""

from __future__ import annotations

import binascii
import math
import random
from collections.abc import Sequence
from typing import Final

from sensorstream.schema import HUMIDITY_RANGE, SCHEMA_VERSION, TEMPERATURE_RANGE

__all__ = [
    "DAY_MS",
    "DEFAULT_SENSOR_PREFIX",
    "EncodedReading",
    "SensorFleet",
    "event_ids",
    "sensor_ids",
    "seq_of",
]

EncodedReading = tuple[bytes, bytes]
"""(key, value): the sensor id and the v1 JSON reading, both UTF-8 bytes."""

DAY_MS = 86_400_000

_T_LOW, _T_HIGH = TEMPERATURE_RANGE
_H_LOW, _H_HIGH = HUMIDITY_RANGE
_TWO_PI = 2.0 * math.pi
# The walk reverts towards the baseline so a long run never drifts out of range:
# |walk| <= (_WALK_STEP / 2) / (1 - _WALK_KEEP) = 5, so without a spike temperature
# stays in 12-28 +- 6 (cycle) +- 5 +- 0.1 and humidity in 30-70 +- 4 +- 5 +- 0.25,
# well inside the contract's ranges: only spikes need clamping.
_WALK_STEP = 0.05
_WALK_KEEP = 0.995

# hexlify(..., b"-", 2) spells 16 bytes as 8 groups of 4 hex digits, each followed by
# "-" (40 chars). A UUID is groups 0+1, 2, 3, 4, 5+6+7: drop the dashes at 4, 29, 34
# and 39; the version nibble is at 15 and the variant nibble at 20.
_HEX_STRIDE = 40
_DROP = b"#"
_DROP_AT = (4, 29, 34, 39)
_VERSION_AT = 15
_VARIANT_AT = 20
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_JSON = (
    b'{"schema_version":%d,"event_id":"%b","sensor_id":"%b","seq":%d,"event_time":%d,'
    b'"temperature":%.2f,"humidity":%.2f}'
)
_SEQ_FIELD = b'"seq":'


def event_ids(random_bytes: bytes) -> bytes:
    """16 random bytes per id, as canonical lowercase version-4 UUIDs of 36 ASCII chars each."""
    count, rest = divmod(len(random_bytes), 16)
    if rest:
        raise ValueError(f"need a multiple of 16 bytes, got {len(random_bytes)}")
    if not count:
        return b""
    text = bytearray(binascii.hexlify(random_bytes, b"-", 2))
    text.append(0x2D)  # the last group's dash, so every id is 40 chars
    for at in _DROP_AT:
        text[at::_HEX_STRIDE] = _DROP * count
    text[_VERSION_AT::_HEX_STRIDE] = b"4" * count
    text[_VARIANT_AT::_HEX_STRIDE] = text[_VARIANT_AT::_HEX_STRIDE].translate(_VARIANT)
    return bytes(text.translate(None, _DROP))


def seq_of(value: bytes) -> int:
    """The ``seq`` in a reading that :meth:`SensorFleet.generate` encoded (not per event)."""
    start = value.index(_SEQ_FIELD) + len(_SEQ_FIELD)
    return int(value[start : value.index(b",", start)])


DEFAULT_SENSOR_PREFIX: Final = "sensor-"


def sensor_ids(count: int, prefix: str = DEFAULT_SENSOR_PREFIX) -> list[str]:
    """``sensor-0000`` .. ``sensor-<count-1>`` (or ``prefix`` in place of ``sensor-``),
    zero-padded to a common width (at least 4)."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


class SensorFleet:
    """``sensors`` simulated sensors; :meth:`generate` returns the next readings, encoded."""

    __slots__ = (
        "_anomaly_probability",
        "_cursor",
        "_hum_base",
        "_hum_walk",
        "_id_rng",
        "_id_seed",
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
        self,
        sensors: int,
        *,
        seed: int | None = None,
        anomaly_probability: float = 0.0,
        id_prefix: str = DEFAULT_SENSOR_PREFIX,
    ) -> None:
        if sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {sensors}")
        if not 0.0 <= anomaly_probability <= 1.0:
            raise ValueError(f"anomaly_probability must be in 0..1, got {anomaly_probability}")
        rng = random.Random(seed)
        self._rng = rng
        # Ids from a generator of their own: drawn per batch, they would otherwise
        # interleave differently with the signal's draws for different batch sizes.
        self._id_seed = rng.getrandbits(64)
        self._id_rng = random.Random(self._id_seed)
        self.sensors = sensors
        self._anomaly_probability = anomaly_probability
        self._ids = sensor_ids(sensors, id_prefix)
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

    @property
    def keys(self) -> list[bytes]:
        """The fleet's record keys (the sensor ids as UTF-8), index = sensor number."""
        return list(self._keys)

    def next_seq(self, sensor: int) -> int:
        """The ``seq`` the sensor's next reading will carry (= readings generated so far)."""
        return self._seq[sensor]

    def resume(self, next_seqs: Sequence[int]) -> None:
        """Continue each sensor's ``seq`` at ``next_seqs[sensor]`` (after a restart).

        Call it before the first :meth:`generate`. The event ids are then drawn from the
        seed and the number of readings resumed, so a seeded fleet that resumes does not
        repeat the ids of the run it continues (a run that wrote nothing resumes the same
        count and repeats ids that never reached the topic).
        """
        if len(next_seqs) != self.sensors:
            raise ValueError(f"need {self.sensors} next seqs, got {len(next_seqs)}")
        if any(seq < 0 for seq in next_seqs):
            raise ValueError("next seqs must be >= 0")
        self._seq = list(next_seqs)
        self._id_rng = random.Random(self._id_seed ^ sum(self._seq))

    def generate(self, count: int, event_time: int) -> list[EncodedReading]:
        """The next ``count`` readings, round-robin over the sensors, all at ``event_time`` (ms)."""
        if count <= 0:
            return []
        ids = event_ids(self._id_rng.randbytes(16 * count))
        rand = self._rng.random
        sin = math.sin
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
        json = _JSON
        version = SCHEMA_VERSION
        half_step = _WALK_STEP / 2
        cursor = self._cursor
        start = 0
        out: list[EncodedReading] = []
        append = out.append
        for _ in range(count):
            # Hot path, once per event: locals only, no logging, no objects but the output.
            i = cursor
            cursor += 1
            if cursor == sensors:
                cursor = 0
            tw = temp_walk[i] * _WALK_KEEP + rand() * _WALK_STEP - half_step
            hw = hum_walk[i] * _WALK_KEEP + rand() * _WALK_STEP - half_step
            temp_walk[i] = tw
            hum_walk[i] = hw
            cycle = sin(day_angle + phase[i])
            temperature = temp_base[i] + tw + temp_amp[i] * cycle + rand() * 0.2 - 0.1
            humidity = hum_base[i] + hw - 4.0 * cycle + rand() * 0.5 - 0.25
            if anomaly_p and rand() < anomaly_p:
                temperature, humidity = _spike(rand(), temperature, humidity)
            seq = seqs[i]
            seqs[i] = seq + 1
            key = keys[i]
            end = start + 36
            value = json % (version, ids[start:end], key, seq, event_time, temperature, humidity)
            start = end
            append((key, value))
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
