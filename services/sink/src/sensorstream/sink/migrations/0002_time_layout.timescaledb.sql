-- TimescaleDB: aggregates becomes a hypertable on window_start (one chunk per day; the
-- primary key includes the partitioning column, as TimescaleDB requires), and
-- aggregates_hourly a continuous aggregate, refreshed by a background policy.
-- WITH NO DATA lets it be created inside the migration's transaction; the policy fills it.

CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable(
    'aggregates', 'window_start',
    chunk_time_interval => INTERVAL '1 day',
    if_not_exists => TRUE,
    migrate_data => TRUE
);

CREATE MATERIALIZED VIEW aggregates_hourly
WITH (timescaledb.continuous) AS
SELECT
    sensor_id,
    time_bucket(INTERVAL '1 hour', window_start)            AS bucket,
    sum(count)::bigint                                      AS readings,
    min(temperature_min)                                    AS temperature_min,
    max(temperature_max)                                    AS temperature_max,
    sum(temperature_mean * count) / sum(count)              AS temperature_mean,
    min(humidity_min)                                       AS humidity_min,
    max(humidity_max)                                       AS humidity_max,
    sum(humidity_mean * count) / sum(count)                 AS humidity_mean
FROM aggregates
GROUP BY sensor_id, time_bucket(INTERVAL '1 hour', window_start)
WITH NO DATA;

SELECT add_continuous_aggregate_policy(
    'aggregates_hourly',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes'
);
