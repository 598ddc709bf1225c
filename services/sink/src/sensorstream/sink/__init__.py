"""Sensorstream sink: window aggregates and alerts from Kafka into PostgreSQL.

It consumes ``sensor-aggregates`` and ``sensor-alerts`` (read_committed), writes each
batch in one database transaction (binary ``COPY`` into staging tables, then an upsert
on each row's identity), and commits the Kafka offsets only after the database
committed: a replay after a crash rewrites identical rows, which changes nothing.
The schema comes from versioned migrations the sink runs at start-up; with TimescaleDB
on the server, ``aggregates`` is a hypertable with an hourly continuous aggregate.

Public surface: the ``sensorstream-sink`` CLI, :class:`SinkSettings`, the
``sensorstream_sink_*`` metrics and the tables (docs/sink.md). Everything in
``_modules`` is private.
"""

from .settings import SinkSettings

__all__ = ["SinkSettings"]
