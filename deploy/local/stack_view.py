"""The local stack's live view: the services' ``/metrics`` scraped once a second, shown
as rich tables (``render``) or, with ``--no-ui``, as one summary line (``summary_line``).

Rates are the difference between two scrapes of a counter; a service that does not
answer shows ``-``. Every metric name here is the service's own (their ``_metrics.py``).
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stack_processes import Child, Stack, http_get

__all__ = [
    "METRIC_ROLES",
    "Reading",
    "Sampler",
    "Samples",
    "by_label",
    "parse_metrics",
    "prometheus_alerts",
    "render",
    "summary_line",
    "total",
]

METRIC_ROLES = ("producer", "processor", "audit", "bridge", "sink")
"""The roles whose children serve ``/metrics`` (not Prometheus, not the device simulator)."""
HISTORY = 32  # scrapes kept per service: rates over up to ~30 s
SINK_SPAN = 10.0  # the sink writes a window's rows at once: its rates are over one window

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text format -> sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass
class Reading:
    at: float
    samples: Samples | None  # None: the service did not answer


class Sampler:
    """Scrapes every service once per tick and keeps the previous scrape for rates."""

    def __init__(self, children: Sequence[Child]) -> None:
        self.children = [c for c in children if c.role in METRIC_ROLES and c.url]
        self.now: dict[str, Reading] = {}
        self.before: dict[str, Reading] = {}
        self.history: dict[str, deque[Reading]] = {}  # for rates over a longer span

    def tick(self) -> None:
        for child in self.children:
            at = time.monotonic()
            try:
                samples: Samples | None = parse_metrics(http_get(f"{child.url}/metrics").decode())
            except (OSError, urllib.error.URLError, ValueError):
                samples = None
            if child.name in self.now:
                self.before[child.name] = self.now[child.name]
            self.now[child.name] = Reading(at, samples)
            self.history.setdefault(child.name, deque(maxlen=HISTORY)).append(self.now[child.name])

    def value(self, child: Child, name: str, **match: str) -> float | None:
        reading = self.now.get(child.name)
        if reading is None or reading.samples is None:
            return None
        return total(reading.samples, name, **match)

    def rate(
        self, child: Child, name: str, *, span: float | None = None, **match: str
    ) -> float | None:
        """Per second since the previous scrape, or over the last ``span`` seconds (for a
        counter that moves in bursts, like the sink's rows at each window's close)."""
        now, before = self.now.get(child.name), self.before.get(child.name)
        if span is not None and now is not None:
            older = [
                r
                for r in self.history.get(child.name, ())
                if r.samples is not None and now.at - span - 0.5 <= r.at < now.at
            ]
            before = older[0] if older else None
        if not now or not before or now.samples is None or before.samples is None:
            return None
        elapsed = now.at - before.at
        if elapsed <= 0:
            return None
        delta = total(now.samples, name, **match) - total(before.samples, name, **match)
        return max(delta, 0.0) / elapsed

    def labelled(self, child: Child, name: str, label: str) -> dict[str, float]:
        reading = self.now.get(child.name)
        if reading is None or reading.samples is None:
            return {}
        return by_label(reading.samples, name, label)

    def labelled_rate(self, child: Child, name: str, label: str) -> dict[str, float]:
        now, before = self.now.get(child.name), self.before.get(child.name)
        if not now or not before or now.samples is None or before.samples is None:
            return {}
        elapsed = max(now.at - before.at, 1e-9)
        old = by_label(before.samples, name, label)
        return {
            key: max(value - old.get(key, 0.0), 0.0) / elapsed
            for key, value in by_label(now.samples, name, label).items()
        }


def prometheus_alerts(url: str | None) -> list[dict[str, Any]] | None:
    if url is None:
        return None
    try:
        body = json.loads(http_get(url + "/api/v1/alerts"))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return list(body.get("data", {}).get("alerts", []))


# --------------------------------------------------------------------------- views


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fmt_problem(value: float | None) -> str:
    """A count that should be 0: red when it is not."""
    return f"[red]{_fmt(value, 0)}[/red]" if value else _fmt(value, 0)


def render(stack: Stack, sampler: Sampler, started: float) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    elapsed = time.monotonic() - started
    header = Text.assemble(
        ("Sensorstream local stack", "bold"),
        f"  up {elapsed:,.0f} s   Kafka {stack.bootstrap}   ",
        f"Prometheus {stack.prometheus_url or 'not running'}   ",
        f"Mosquitto {stack.mosquitto.address if stack.mosquitto else 'not running'}   ",
        f"PostgreSQL {_postgres_address(stack) or 'not running'}   ",
        ("Ctrl-C stops everything", "dim"),
    )

    producers = Table(title="Producer", expand=True)
    for column in (
        "instance",
        "target ev/s",
        "achieved ev/s",
        "acked ev/s",
        "behind s",
        "in flight",
        "errors",
    ):
        producers.add_column(column, justify="right" if column != "instance" else "left")
    for child in stack.services("producer"):
        producers.add_row(
            f"{child.name} :{child.port}",
            _fmt(sampler.value(child, "sensorstream_producer_target_rate_events_per_second")),
            _fmt(sampler.value(child, "sensorstream_producer_achieved_rate_events_per_second")),
            _fmt(sampler.rate(child, "sensorstream_producer_events_acked_total")),
            _fmt(sampler.value(child, "sensorstream_producer_behind_schedule_seconds"), 2),
            _fmt(sampler.value(child, "sensorstream_producer_events_in_flight"), 0),
            _fmt(sampler.value(child, "sensorstream_producer_send_errors_total"), 0),
        )

    processors = Table(title="Processors", expand=True)
    for column in (
        "replica",
        "partitions",
        "processed ev/s",
        "lag events",
        "lag s",
        "rebalances",
        "commits ok/failed",
        "open windows",
        "RSS MB",
        "CPU %",
    ):
        processors.add_column(column, justify="right" if column != "replica" else "left")
    partitions: dict[str, tuple[str, float, float, float]] = {}
    outcomes: dict[str, float] = {}
    outcome_rates: dict[str, float] = {}
    dead: dict[str, float] = {}
    alerts: dict[str, float] = {}
    for child in stack.services("processor"):
        lag = sampler.labelled(child, "sensorstream_processor_consumer_lag_events", "partition")
        lag_s = sampler.labelled(child, "sensorstream_processor_consumer_lag_seconds", "partition")
        consumed = sampler.labelled_rate(
            child, "sensorstream_processor_events_consumed_total", "partition"
        )
        for partition, events in lag.items():
            partitions[partition] = (
                child.name,
                events,
                lag_s.get(partition, 0.0),
                consumed.get(partition, 0.0),
            )
        for key, value in sampler.labelled(
            child, "sensorstream_processor_events_total", "outcome"
        ).items():
            outcomes[key] = outcomes.get(key, 0.0) + value
        for key, value in sampler.labelled_rate(
            child, "sensorstream_processor_events_total", "outcome"
        ).items():
            outcome_rates[key] = outcome_rates.get(key, 0.0) + value
        for key, value in sampler.labelled(
            child, "sensorstream_processor_dead_letters_total", "reason"
        ).items():
            dead[key] = dead.get(key, 0.0) + value
        for key, value in sampler.labelled(
            child, "sensorstream_processor_alerts_emitted_total", "kind"
        ).items():
            alerts[key] = alerts.get(key, 0.0) + value
        cpu = sampler.rate(child, "process_cpu_seconds_total")
        commits = "sensorstream_processor_commits_total"
        rss = sampler.value(child, "process_resident_memory_bytes")
        processors.add_row(
            _instance(child, sampler),
            _fmt(sampler.value(child, "sensorstream_processor_assigned_partitions"), 0),
            _fmt(sampler.rate(child, "sensorstream_processor_events_total")),
            _fmt(sum(lag.values()) if lag else None, 0),
            _fmt(max(lag_s.values()) if lag_s else None, 1),
            _fmt(sampler.value(child, "sensorstream_processor_rebalances_total"), 0),
            f"{_fmt(sampler.value(child, commits, outcome='ok'), 0)}"
            f" / {_fmt(sampler.value(child, commits, outcome='failed'), 0)}",
            _fmt(sampler.value(child, "sensorstream_processor_open_windows"), 0),
            _fmt(None if rss is None else rss / 1e6, 0),
            _fmt(None if cpu is None else cpu * 100, 0),
        )

    lag_table = Table(title="Lag per partition", expand=True)
    for column in ("partition", "owner", "lag events", "lag s", "consumed ev/s"):
        lag_table.add_column(column, justify="right" if column != "owner" else "left")
    for partition in sorted(partitions, key=lambda p: int(p) if p.isdigit() else 0):
        owner, events, seconds, rate = partitions[partition]
        lag_table.add_row(partition, owner, _fmt(events, 0), _fmt(seconds, 1), _fmt(rate))

    outcome_table = Table(title="Outcomes (total, ev/s)", expand=True)
    outcome_table.add_column("outcome")
    outcome_table.add_column("total", justify="right")
    outcome_table.add_column("ev/s", justify="right")
    for key in sorted(outcomes):
        outcome_table.add_row(key, _fmt(outcomes[key], 0), _fmt(outcome_rates.get(key)))
    for key in sorted(k for k, v in dead.items() if v):
        outcome_table.add_row(f"dead letter: {key}", _fmt(dead[key], 0), "")

    alert_table = Table(title="Alerts", expand=True)
    alert_table.add_column("emitted by the processors (kind)")
    alert_table.add_column("total", justify="right")
    for key in sorted(alerts):
        alert_table.add_row(key, _fmt(alerts[key], 0))
    rules = prometheus_alerts(stack.prometheus_url)
    if rules is None:
        alert_table.add_row("Prometheus alert rules", "n/a")
    elif not rules:
        alert_table.add_row("Prometheus alert rules", "[green]none firing[/green]")
    for alert in rules or []:
        name = alert.get("labels", {}).get("alertname", "?")
        alert_table.add_row(
            f"[red]{name}[/red] {alert.get('labels', {}).get('instance', '')}",
            str(alert.get("state", "")),
        )

    bottom = Table.grid(expand=True)
    bottom.add_column()
    bottom.add_column()
    bottom.add_column()
    bottom.add_row(lag_table, outcome_table, alert_table)
    parts = [header, producers, processors, audit_table(stack, sampler)]
    edges = [t for t in (bridge_table(stack, sampler), sink_table(stack, sampler)) if t]
    if edges:
        row = Table.grid(expand=True)
        for _ in edges:
            row.add_column()
        row.add_row(*edges)
        parts.append(row)
    return Group(*parts, bottom)


def _postgres_address(stack: Stack) -> str | None:
    server = stack.postgres
    return None if server is None else f"{server.host}:{server.port}"


def _alive(child: Child, sampler: Sampler) -> bool:
    up = sampler.now.get(child.name)
    return child.process.poll() is None and up is not None and up.samples is not None


def _instance(child: Child, sampler: Sampler) -> str:
    return f"{child.name} :{child.port}" + ("" if _alive(child, sampler) else " [red](down)[/red]")


def bridge_table(stack: Stack, sampler: Sampler) -> Any:
    """The MQTT bridge: messages in from Mosquitto, records Kafka acknowledged, the DLQ."""
    from rich.table import Table

    bridges = stack.services("bridge")
    if not bridges:
        return None
    devices = "device simulator on" if stack.services("devices") else "no device simulator"
    table = Table(title=f"MQTT bridge (Mosquitto -> Kafka; {devices})", expand=True)
    for column in (
        "instance",
        "MQTT in/s",
        "Kafka acked/s",
        "DLQ/s",
        "DLQ",
        "redelivered",
        "in flight",
        "MQTT",
    ):
        table.add_column(column, justify="right" if column != "instance" else "left")
    p = "sensorstream_bridge_"
    for child in bridges:
        connected = sampler.value(child, p + "mqtt_connected")
        table.add_row(
            _instance(child, sampler),
            _fmt(sampler.rate(child, p + "messages_received_total")),
            _fmt(sampler.rate(child, p + "records_produced_total")),
            _fmt(sampler.rate(child, p + "dead_letters_total")),
            _fmt(sampler.value(child, p + "dead_letters_total"), 0),
            _fmt(sampler.value(child, p + "duplicates_dropped_total"), 0),
            _fmt(sampler.value(child, p + "messages_in_flight"), 0),
            "-" if connected is None else ("[green]up[/green]" if connected else "[red]down[/red]"),
        )
    return table


def sink_table(stack: Stack, sampler: Sampler) -> Any:
    """The sink: rows written to PostgreSQL per second, batches, what it still lags."""
    from rich.table import Table

    sinks = stack.services("sink")
    if not sinks:
        return None
    table = Table(title=f"Sink (Kafka -> PostgreSQL; rates over {SINK_SPAN:.0f} s)", expand=True)
    for column in (
        "instance",
        "aggregate rows/s",
        "alert rows/s",
        "rows",
        "batches/s",
        "lag",
        "database",
    ):
        table.add_column(column, justify="right" if column != "instance" else "left")
    p = "sensorstream_sink_"
    rows = p + "rows_written_total"
    for child in sinks:
        database = sampler.value(child, p + "database_up")
        table.add_row(
            _instance(child, sampler),
            _fmt(sampler.rate(child, rows, span=SINK_SPAN, table="aggregates")),
            _fmt(sampler.rate(child, rows, span=SINK_SPAN, table="alerts")),
            _fmt(sampler.value(child, rows), 0),
            _fmt(sampler.rate(child, p + "batches_total", span=SINK_SPAN, outcome="committed")),
            _fmt(sampler.value(child, p + "consumer_lag_records"), 0),
            "-" if database is None else ("[green]up[/green]" if database else "[red]down[/red]"),
        )
    return table


def audit_table(stack: Stack, sampler: Sampler) -> Any:
    """The audit's accounting: every reading in exactly one aggregate or in the DLQ."""
    from rich.table import Table

    table = Table(title="Audit (sensorstream-audit --follow)", expand=True)
    for column in (
        "instance",
        "produced",
        "aggregated",
        "dead-lettered",
        "missing",
        "counted twice",
        "conflicting windows",
        "partial windows",
        "sensors with problems",
        "last pass",
    ):
        table.add_column(column, justify="right" if column != "instance" else "left")
    readings, windows = "sensorstream_audit_readings", "sensorstream_audit_windows"
    for child in stack.services("audit"):
        last = sampler.value(child, "sensorstream_audit_last_pass_timestamp_seconds")
        table.add_row(
            f"{child.name} :{child.port}",
            _fmt(sampler.value(child, readings, state="produced"), 0),
            _fmt(sampler.value(child, readings, state="aggregated"), 0),
            _fmt(sampler.value(child, readings, state="dead_lettered"), 0),
            _fmt_problem(sampler.value(child, readings, state="missing")),
            _fmt_problem(sampler.value(child, readings, state="duplicated")),
            _fmt_problem(sampler.value(child, windows, kind="conflicting")),
            _fmt(sampler.value(child, windows, kind="partial"), 0),
            _fmt(sampler.value(child, "sensorstream_audit_sensors_with_problems"), 0),
            "-" if not last else f"{max(time.time() - last, 0.0):,.0f} s ago",
        )
    return table


def summary_line(stack: Stack, sampler: Sampler, started: float) -> str:
    produced = sum(
        sampler.rate(c, "sensorstream_producer_events_acked_total") or 0.0
        for c in stack.services("producer")
    )
    processed = sum(
        sampler.rate(c, "sensorstream_processor_events_total") or 0.0
        for c in stack.services("processor")
    )
    lag = sum(
        sampler.value(c, "sensorstream_processor_consumer_lag_events") or 0.0
        for c in stack.services("processor")
    )
    readings = "sensorstream_audit_readings"
    missing = sum(
        sampler.value(c, readings, state="missing") or 0.0 for c in stack.services("audit")
    )
    twice = sum(
        sampler.value(c, readings, state="duplicated") or 0.0 for c in stack.services("audit")
    )
    firing = prometheus_alerts(stack.prometheus_url)
    return (
        f"stack: t={time.monotonic() - started:,.0f}s produced {produced:,.1f} ev/s, "
        f"processed {processed:,.1f} ev/s, lag {lag:,.0f} events, "
        f"audit missing {missing:,.0f} / counted twice {twice:,.0f}, "
        + _edges_summary(stack, sampler)
        + f"alerts {'n/a' if firing is None else len(firing)}"
    )


def _edges_summary(stack: Stack, sampler: Sampler) -> str:
    """The bridge's and the sink's part of the summary line ('' for what is not running)."""

    def rate(role: str, name: str, span: float | None = None) -> float:
        return sum(sampler.rate(c, name, span=span) or 0.0 for c in stack.services(role))

    def value(role: str, name: str) -> float:
        return sum(sampler.value(c, name) or 0.0 for c in stack.services(role))

    text = ""
    if stack.services("bridge"):
        b = "sensorstream_bridge_"
        text += (
            f"bridge {rate('bridge', b + 'messages_received_total'):,.1f} msg/s in / "
            f"{rate('bridge', b + 'records_produced_total'):,.1f} acked / "
            f"DLQ {value('bridge', b + 'dead_letters_total'):,.0f}, "
        )
    if stack.services("sink"):
        k = "sensorstream_sink_"
        text += (
            f"sink {rate('sink', k + 'rows_written_total', SINK_SPAN):,.1f} rows/s "
            f"(lag {value('sink', k + 'consumer_lag_records'):,.0f}), "
        )
    return text
