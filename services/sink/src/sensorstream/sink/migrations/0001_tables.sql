-- The sink's tables. One row per window of a sensor, one per alert, one per Kafka
-- partition: the primary keys are the identities an at-least-once replay repeats, so
-- writing a record twice changes nothing (the sink upserts on them).

CREATE TABLE aggregates (
    sensor_id        text             NOT NULL,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    count            integer          NOT NULL CHECK (count >= 1),
    temperature_min  double precision NOT NULL,
    temperature_max  double precision NOT NULL,
    temperature_mean double precision NOT NULL,
    humidity_min     double precision NOT NULL,
    humidity_max     double precision NOT NULL,
    humidity_mean    double precision NOT NULL,
    first_seq        bigint,
    last_seq         bigint,
    -- Where the stored version came from, and how often its contents changed (an
    -- identical re-emission is not a change; a different one should never happen).
    kafka_partition  integer          NOT NULL,
    kafka_offset     bigint           NOT NULL,
    revisions        integer          NOT NULL DEFAULT 0,
    written_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, window_start)
);

COMMENT ON TABLE aggregates IS
    'sensorstream-sink: one WindowAggregate per sensor and tumbling window, from sensor-aggregates';

-- An alert is one reading (event_id) crossing one threshold (kind); a reading may cross
-- two (temperature and humidity), so the kind is part of the identity.
CREATE TABLE alerts (
    event_id         uuid             NOT NULL,
    kind             text             NOT NULL,
    sensor_id        text             NOT NULL,
    event_time       timestamptz      NOT NULL,
    value            double precision NOT NULL,
    threshold        double precision NOT NULL,
    kafka_partition  integer          NOT NULL,
    kafka_offset     bigint           NOT NULL,
    revisions        integer          NOT NULL DEFAULT 0,
    written_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, kind)
);

CREATE INDEX alerts_sensor_time ON alerts (sensor_id, event_time);
CREATE INDEX alerts_time ON alerts (event_time);

COMMENT ON TABLE alerts IS 'sensorstream-sink: one Alert per reading and threshold, from sensor-alerts';

-- Per partition of the consumed topics, the offset after the last record whose batch
-- the database committed: written in the same transaction as the rows. The group's
-- committed offset in Kafka is never ahead of it (the sink commits there afterwards).
CREATE TABLE sink_offsets (
    topic            text        NOT NULL,
    partition        integer     NOT NULL,
    next_offset      bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
