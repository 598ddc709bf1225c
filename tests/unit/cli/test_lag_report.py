"""``sensorstream lag``'s arithmetic, verdict and rendering, without a broker."""

from __future__ import annotations

import json

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from rich.console import Console
from typer.testing import CliRunner

from sensorstream.cli.__main__ import app
from sensorstream.cli._lag import (
    GroupLag,
    LagReport,
    Owner,
    PartitionLag,
    _described_group,
    exit_status,
    format_seconds,
    lag_events,
    next_offset,
    over_max_lag,
    render_json,
    render_tables,
    seconds_behind,
)
from sensorstream.schema import ConfigError

OWNER = Owner(client_id="sensorstream-processor-host-42", host="10.0.0.7", member_id="m-1")


def row(
    partition: int,
    committed: int | None,
    end: int,
    *,
    start: int = 0,
    lag_seconds: float | None = 0.0,
    owner: Owner | None = None,
) -> PartitionLag:
    return PartitionLag(
        topic="sensor-data",
        partition=partition,
        committed=committed,
        start=start,
        end=end,
        stable=end,
        lag_seconds=lag_seconds,
        owner=owner,
    )


def report(*rows: PartitionLag, group: str = "sensorstream-processor") -> LagReport:
    return LagReport(
        groups=(GroupLag(group=group, state="Stable", members=1, partitions=rows),),
        taken_at=1_700_000_000.0,
    )


class TestLagArithmetic:
    def test_a_group_reads_next_at_its_commit(self) -> None:
        """The next offset is the commit, and the lag what lies between it and the end."""
        assert (40, 60) == (next_offset(40, 0), lag_events(40, 0, 100))

    def test_no_commit_reads_from_the_log_start(self) -> None:
        """Without a commit the whole retained log is behind (the processor resets to
        earliest)."""
        assert (10, 90) == (next_offset(None, 10), lag_events(None, 10, 100))

    def test_a_commit_retention_deleted_counts_from_the_log_start(self) -> None:
        """A commit below the log start: the records in between are gone, not behind."""
        assert (50, 50) == (next_offset(5, 50), lag_events(5, 50, 100))

    def test_caught_up_and_beyond_the_end_is_no_lag(self) -> None:
        assert (0, 0) == (lag_events(100, 0, 100), lag_events(120, 0, 100))

    def test_seconds_behind_is_the_age_of_the_oldest_unprocessed_record(self) -> None:
        assert 12.5 == seconds_behind(3, 1_000_000, 1_012.5)

    def test_seconds_behind_is_zero_when_caught_up_whatever_the_record(self) -> None:
        assert (0.0, 0.0) == (seconds_behind(0, None, 5.0), seconds_behind(0, 1000, 5.0))

    def test_seconds_behind_is_unknown_without_a_timestamp(self) -> None:
        """Record not read in time (None) or written without a timestamp (-1)."""
        assert (None, None) == (seconds_behind(3, None, 5.0), seconds_behind(3, -1, 5.0))

    def test_a_record_from_a_clock_ahead_of_ours_is_not_negative_lag(self) -> None:
        assert 0.0 == seconds_behind(3, 10_000, 5.0)


class TestGroupTotals:
    def test_lag_is_the_sum_and_seconds_the_oldest(self) -> None:
        group = report(row(0, 10, 15, lag_seconds=2.0), row(1, 3, 10, lag_seconds=7.5)).groups[0]
        assert (12, 7.5) == (group.lag, group.lag_seconds)

    def test_seconds_are_unknown_if_one_partition_is(self) -> None:
        group = report(row(0, 10, 15, lag_seconds=2.0), row(1, 3, 10, lag_seconds=None)).groups[0]
        assert None is group.lag_seconds

    def test_an_empty_group_is_zero(self) -> None:
        assert (0, 0.0) == (report().groups[0].lag, report().groups[0].lag_seconds)


class TestMaxLag:
    def test_without_max_lag_nothing_is_over(self) -> None:
        found = report(row(0, 0, 1_000_000))
        assert ([], 0) == (over_max_lag(found, None), exit_status(found, None))

    def test_exactly_max_lag_is_not_over(self) -> None:
        found = report(row(0, 0, 100), row(1, 50, 100))
        assert ([], 0) == (over_max_lag(found, 100), exit_status(found, 100))

    def test_one_partition_over_exits_1_and_is_named(self) -> None:
        over = row(1, 49, 150)
        found = report(row(0, 0, 100), over, group="g")
        assert ([("g", over)], 1) == (over_max_lag(found, 100), exit_status(found, 100))

    def test_max_lag_zero_demands_caught_up(self) -> None:
        assert (0, 1) == (
            exit_status(report(row(0, 5, 5)), 0),
            exit_status(report(row(0, 4, 5)), 0),
        )


class TestFormatSeconds:
    @pytest.mark.parametrize(
        ("seconds", "shown"),
        [
            (None, "?"),
            (0.0, "0"),
            (0.04, "0.0s"),
            (4.25, "4.2s"),
            (59.9, "59.9s"),
            (65, "1m05s"),
            (3599, "59m59s"),
            (3600 * 2 + 180, "2h03m"),
            (86_400 * 3 + 3600 * 4 + 59, "3d04h"),
        ],
    )
    def test_shown_in_the_largest_sensible_unit(self, seconds: float | None, shown: str) -> None:
        assert shown == format_seconds(seconds)


class TestRendering:
    def test_json_has_every_number_and_null_for_no_owner(self) -> None:
        found = report(row(0, 10, 15, lag_seconds=2.123456, owner=OWNER), row(1, None, 4))
        document = json.loads(render_json(found))
        assert {
            "taken_at": "2023-11-14T22:13:20.000+00:00",
            "groups": [
                {
                    "group": "sensorstream-processor",
                    "state": "Stable",
                    "members": 1,
                    "lag": 9,
                    "lag_seconds": 2.123,
                    "partitions": [
                        {
                            "topic": "sensor-data",
                            "partition": 0,
                            "committed": 10,
                            "start": 0,
                            "end": 15,
                            "stable": 15,
                            "lag": 5,
                            "lag_seconds": 2.123,
                            "owner": {
                                "client_id": "sensorstream-processor-host-42",
                                "host": "10.0.0.7",
                                "member_id": "m-1",
                            },
                        },
                        {
                            "topic": "sensor-data",
                            "partition": 1,
                            "committed": None,
                            "start": 0,
                            "end": 4,
                            "stable": 4,
                            "lag": 4,
                            "lag_seconds": 0.0,
                            "owner": None,
                        },
                    ],
                }
            ],
        } == document

    def test_json_for_watch_is_one_line(self) -> None:
        assert 1 == len(render_json(report(row(0, 1, 2)), indent=None).splitlines())

    def test_table_shows_each_partition_its_owner_or_dash_and_the_total(self) -> None:
        console = Console(width=200, record=True)
        console.print(render_tables(report(row(0, 10, 15, owner=OWNER), row(1, None, 4))))
        lines = console.export_text().splitlines()
        rows = [
            [cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in lines
            if line.startswith("│")
        ]
        assert "sensorstream-processor (Stable, 1 member)" == lines[0].strip()
        assert [
            ["sensor-data", "0", "10", "15", "5", "0", "sensorstream-processor-host-42@10.0.0.7"],
            ["sensor-data", "1", "-", "4", "4", "0", "-"],
            ["total", "", "", "", "9", "0", ""],
        ] == rows

    def test_table_shows_the_stable_offset_where_it_lags_the_end(self) -> None:
        pending = PartitionLag(
            topic="t",
            partition=0,
            committed=0,
            start=0,
            end=9,
            stable=5,
            lag_seconds=None,
            owner=None,
        )
        console = Console(width=200, record=True)
        console.print(render_tables(report(pending)))
        assert "9 (stable 5)" in console.export_text()


class TestDescribedGroup:
    def test_owners_come_from_the_members_assignments(self) -> None:
        """Each partition in a member's consumer-protocol assignment is owned by it."""
        assignment = ConsumerProtocolMemberAssignment(
            0, [("sensor-data", [0, 2]), ("other", [1])], b""
        ).encode()
        group, described = _described_group(
            (0, "g", "Stable", "consumer", "range", [("m-1", "cid", "/10.0.0.7", b"", assignment)])
        )
        owner = Owner(client_id="cid", host="10.0.0.7", member_id="m-1")
        assert ("g", "Stable", 1) == (group, described.state, described.members)
        assert {
            TopicPartition("sensor-data", 0): owner,
            TopicPartition("sensor-data", 2): owner,
            TopicPartition("other", 1): owner,
        } == described.owners

    def test_a_member_without_assignment_owns_nothing(self) -> None:
        """Mid-rebalance a member has no assignment yet; garbage bytes are no assignment."""
        _, described = _described_group(
            (
                0,
                "g",
                "PreparingRebalance",
                "consumer",
                "",
                [("m-1", "c", "/h", b"", b""), ("m-2", "c", "/h", b"", b"\x01")],
            )
        )
        assert (2, {}) == (described.members, described.owners)

    def test_a_refused_describe_is_a_config_error(self) -> None:
        """GROUP_AUTHORIZATION_FAILED (30): fix the ACLs, not a retry."""
        with pytest.raises(ConfigError, match="describing consumer group 'g'"):
            _described_group((30, "g", "", "", "", []))


class TestOptions:
    def test_a_negative_max_lag_is_a_bad_option(self) -> None:
        """Refused before any connection: exit 2."""
        result = CliRunner().invoke(app, ["lag", "--max-lag", "-1"])
        assert 2 == result.exit_code

    def test_an_empty_group_is_a_bad_option(self) -> None:
        result = CliRunner().invoke(app, ["lag", "--group", ""])
        assert 2 == result.exit_code
