"""Rate accuracy of ``sensorstream-producer``: does it hold 1,000 and 10,000 events/s?

Runs the real CLI with ``--duration D`` per rate into a fresh 6-partition topic whose
records carry the broker's append time (``message.timestamp.type=LogAppendTime``),
reads every record of the run back and measures:

- total error: |events of the run - rate x D| / (rate x D), where an event counts
  only if its ``event_time`` lies in the run's D seconds [t0, t0 + D) (t0 = the first
  event time). Nothing is skipped or trimmed: these are exactly the run's events.
- per-second error (the target): |events the broker appended in second k - rate| / rate
  over the inner seconds 1 .. D-2 (the first and last are partial), by the broker's
  ``LogAppendTime``: the producer's own clock and timestamps play no part in it, so a
  descheduling pause or a slow send shows here.
- for information: the same per-second error by ``event_time``, which is the start of
  the 5 ms pacer tick the event was scheduled in (docs: "Event time"; exact by
  construction unless the loop fell more than 1 s behind), and the lag append time -
  event_time.

Targets: total <= 0.1 %, p99 per-second <= 1 %. Prints markdown tables.

    uv run python benchmarks/bench_rate.py [--quick] [--bootstrap host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
sys.path.insert(0, str(ROOT / "tests"))

RATES = (1_000, 10_000)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _per_second(times: list[int], start: int, seconds: int) -> list[int]:
    counts = [0] * seconds
    for t in times:
        k = (t - start) // 1000
        if 0 <= k < seconds:
            counts[k] += 1
    return counts


def measure(bootstrap: str, rate: int, seconds: int) -> dict[str, float]:
    from kafka_helpers import consume_all, create_topic

    topic = f"bench-rate-{rate}-{uuid.uuid4().hex[:8]}"
    asyncio.run(
        create_topic(bootstrap, topic, 6, config={"message.timestamp.type": "LogAppendTime"})
    )
    subprocess.run(
        [sys.executable, "-m", "sensorstream.producer", "--bootstrap-servers", bootstrap,
         "--topic", topic, "--rate", str(rate), "--duration", str(seconds),
         "--sensors", "1000", "--metrics-port", "0", "--log-level", "warning"],
        check=True, timeout=seconds + 120,
    )  # fmt: skip
    records = asyncio.run(consume_all(bootstrap, topic, timeout=120))
    event_times = [orjson.loads(r.value)["event_time"] for r in records]
    appended = [r.timestamp for r in records]
    start = min(event_times)
    by_event_time = _per_second(event_times, start, seconds)
    by_append = _per_second(appended, start, seconds)[1:-1]
    print(f"rate {rate}: per second by event time {by_event_time}", file=sys.stderr)
    print(f"rate {rate}: per second by append time {by_append}", file=sys.stderr)
    expected = rate * seconds
    in_run = sum(by_event_time)
    errors = [abs(c - rate) / rate for c in by_event_time]
    delivery = [abs(c - rate) / rate for c in by_append]
    lags = [a - e for a, e in zip(appended, event_times, strict=True)]
    return {
        "records": len(records),
        "events": in_run,
        "expected": expected,
        "total_error": abs(in_run - expected) / expected + (len(records) - in_run) / expected,
        "p50": _percentile(errors, 0.5),
        "p99": _percentile(errors, 0.99),
        "max": max(errors),
        "delivery_p50": _percentile(delivery, 0.5),
        "delivery_p99": _percentile(delivery, 0.99),
        "lag_p50": _percentile(lags, 0.5),
        "lag_p99": _percentile(lags, 0.99),
        "lag_max": max(lags),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s per rate instead of 30 s")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    seconds = 10 if args.quick else 30

    import kafkactl

    data_dir = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-rate-kafka-"))
        ports = sorted({kafkactl.free_port() for _ in range(4)})[:2]
        bootstrap = kafkactl.start(
            ports=ports[:1], controller_ports=ports[1:], data_dir=data_dir
        ).bootstrap
    try:
        results = {rate: measure(bootstrap, rate, seconds) for rate in RATES}
    finally:
        if data_dir is not None:
            kafkactl.stop(data_dir)
    print(
        f"{seconds} s per rate, constant profile; per-second error by broker append time "
        "(inner seconds)\n"
    )
    print(
        "| target ev/s | events in run | expected | total error | p50 / p99 per-second error | ok |"
    )
    print("|---:|---:|---:|---:|---:|:-:|")
    for rate, r in results.items():
        ok = r["total_error"] <= 0.001 and r["delivery_p99"] <= 0.01
        print(
            f"| {rate:,} | {int(r['events']):,} | {int(r['expected']):,} | "
            f"{r['total_error']:.3%} | {r['delivery_p50']:.2%} / {r['delivery_p99']:.2%} | "
            f"{'yes' if ok else 'NO'} |"
        )
    print("\nfor information: per-second error by event time (the schedule), lag after it\n")
    print("| target ev/s | p50 / p99 / max per-second error | lag p50 / p99 / max ms |")
    print("|---:|---:|---:|")
    for rate, r in results.items():
        print(
            f"| {rate:,} | {r['p50']:.2%} / {r['p99']:.2%} / {r['max']:.2%} | "
            f"{r['lag_p50']:.0f} / {r['lag_p99']:.0f} / {r['lag_max']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
