"""Rate accuracy of ``sensorstream-producer``: does it hold 1,000 and 10,000 events/s?

Runs the real CLI for a fixed duration per rate, reads the topic back and counts
records by their timestamps (set when each batch was appended, i.e. when the pacer
released it). Total error = |events in the first D seconds - rate x D| / (rate x D);
per-second error = |events in second k - rate| / rate. Targets: total <= 0.1 %,
p99 per-second <= 1 %. Prints a markdown table.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "kafka"))
sys.path.insert(0, str(ROOT / "tests"))

RATES = (1_000, 10_000)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(bootstrap: str, rate: int, seconds: float) -> dict[str, float]:
    from kafka_helpers import consume_all

    topic = f"bench-rate-{rate}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [sys.executable, "-m", "sensorstream.producer", "--bootstrap-servers", bootstrap,
         "--topic", topic, "--rate", str(rate), "--duration", str(seconds + 1),
         "--sensors", "1000", "--metrics-port", "0", "--log-level", "warning"],
        check=True, timeout=seconds + 120,
    )  # fmt: skip
    records = asyncio.run(consume_all(bootstrap, topic, timeout=120))
    # Skip the first second (start-up) and measure the next ``seconds`` whole seconds.
    start = min(r.timestamp for r in records) + 1000
    per_second = [0] * int(seconds)
    for record in records:
        k = (record.timestamp - start) // 1000
        if 0 <= k < len(per_second):
            per_second[k] += 1
    print(f"rate {rate}: events per second {per_second}", file=sys.stderr)
    total = sum(per_second)
    expected = rate * seconds
    errors = [abs(c - rate) / rate for c in per_second]
    return {
        "events": total,
        "expected": expected,
        "total_error": abs(total - expected) / expected,
        "p50": _percentile(errors, 0.5),
        "p99": _percentile(errors, 0.99),
        "max": max(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s per rate instead of 30 s")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else 30.0

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
    print(f"{seconds:g} s per rate, constant profile, counted by record timestamp\n")
    print(
        "| target ev/s | events | expected | total error | p50 / p99 / max per-second error | ok |"
    )
    print("|---:|---:|---:|---:|---:|:-:|")
    for rate, r in results.items():
        ok = r["total_error"] <= 0.001 and r["p99"] <= 0.01
        print(
            f"| {rate:,} | {int(r['events']):,} | {int(r['expected']):,} | "
            f"{r['total_error']:.3%} | {r['p50']:.2%} / {r['p99']:.2%} / {r['max']:.2%} | "
            f"{'yes' if ok else 'NO'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
