-- Plain PostgreSQL (no TimescaleDB on the server): an index for time-range queries
-- across sensors, and aggregates_hourly as an ordinary view, computed when queried.
-- The same columns as the TimescaleDB variant's continuous aggregate, so dashboards
-- and queries work on either.

CREATE INDEX aggregates_window_start ON aggregates (window_start);

CREATE VIEW aggregates_hourly AS
SELECT
    sensor_id,
    date_trunc('hour', window_start)                        AS bucket,
    sum(count)::bigint                                      AS readings,
    min(temperature_min)                                    AS temperature_min,
    max(temperature_max)                                    AS temperature_max,
    sum(temperature_mean * count) / sum(count)              AS temperature_mean,
    min(humidity_min)                                       AS humidity_min,
    max(humidity_max)                                       AS humidity_max,
    sum(humidity_mean * count) / sum(count)                 AS humidity_mean
FROM aggregates
GROUP BY sensor_id, date_trunc('hour', window_start);
