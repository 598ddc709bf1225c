"""Cost of generating and encoding one reading, the producer's per-event CPU floor.

Times ``SensorFleet.generate`` alone (simulation, event ids, JSON bytes; no Kafka) for
a few fleet and batch sizes, best of several repeats, next to the straightforward way
(``uuid4()`` + ``orjson.dumps`` of a dict with rounded values) for scale. Prints a
markdown table of nanoseconds per event.

    uv run python benchmarks/bench_generation.py [--events 200000]
"""

from __future__ import annotations

import argparse
import math
import random
import time
import uuid
from collections.abc import Callable

import orjson

from sensorstream.producer._simulation import SensorFleet

T0 = 1_700_000_000_000
REPEATS = 5
CASES = ((1_000, 50), (1_000, 5_000), (100_000, 5_000))
"""(sensors, events per ``generate`` call): 10k ev/s on 5 ms ticks, and ``--rate max``."""


def _best_ns_per_event(generate: Callable[[int, int], object], batch: int, events: int) -> float:
    calls = max(1, events // batch)
    generate(batch, T0)  # warm up
    best = math.inf
    for _ in range(REPEATS):
        started = time.perf_counter_ns()
        for _ in range(calls):
            generate(batch, T0)
        best = min(best, (time.perf_counter_ns() - started) / (calls * batch))
    return best


def _straightforward(sensors: int) -> Callable[[int, int], list[tuple[bytes, bytes]]]:
    """The obvious per-event code: a dict per reading, uuid4, round, orjson."""
    rng = random.Random(1)
    ids = [f"sensor-{i:04d}" for i in range(sensors)]
    seqs = [0] * sensors
    cursor = 0

    def generate(count: int, event_time: int) -> list[tuple[bytes, bytes]]:
        nonlocal cursor
        out = []
        for _ in range(count):
            i = cursor
            cursor = (cursor + 1) % sensors
            reading = {
                "schema_version": 1,
                "event_id": str(uuid.uuid4()),
                "sensor_id": ids[i],
                "seq": seqs[i],
                "event_time": event_time,
                "temperature": round(20.0 + rng.random(), 2),
                "humidity": round(40.0 + rng.random(), 2),
            }
            seqs[i] += 1
            out.append((ids[i].encode(), orjson.dumps(reading)))
        return out

    return generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="per repeat and case")
    args = parser.parse_args()
    print(f"best of {REPEATS} x {args.events:,} events, one core\n")
    print("| generator | sensors | events per call | ns per event |")
    print("|---|---:|---:|---:|")
    for sensors, batch in CASES:
        fleet = SensorFleet(sensors, seed=1, anomaly_probability=0.001)
        ns = _best_ns_per_event(fleet.generate, batch, args.events)
        print(f"| SensorFleet.generate | {sensors:,} | {batch:,} | {ns:,.0f} |")
    ns = _best_ns_per_event(_straightforward(1_000), 5_000, args.events)
    print(f"| uuid4 + dict + round + orjson.dumps (reference) | 1,000 | 5,000 | {ns:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
