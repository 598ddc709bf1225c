"""``sensorstream capacity``: the capacity model's arithmetic, its doc table and options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from sensorstream.cli import _capacity as model
from sensorstream.cli.__main__ import app
from sensorstream.cli._capacity import (
    DEFAULT_RATES,
    Plan,
    parse_rate,
    plan,
    processor_replica_events_per_second,
    render_markdown,
)
from sensorstream.producer._simulation import SensorFleet

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "capacity.md"
RULES = REPO / "deploy" / "prometheus" / "sensorstream.rules.yml"
BEGIN = "<!-- capacity-table: begin (sensorstream capacity --markdown) -->\n"
END = "<!-- capacity-table: end -->"


def answers(p: Plan) -> tuple[int, int, int, int]:
    return (p.partitions, p.processor_replicas, p.producer_instances, p.brokers)


class TestArithmetic:
    """Checked by hand. One replica: 1e6 / 3.75 CPU s per 1M = 266,667 ev/s per core, x 0.7
    = 186,667 ev/s; one producer: 1e6 / 4.5 = 222,222, x 0.7 = 155,556 ev/s. A partition:
    10 MB/s x 0.7 = 7 MB/s, 70,107 x 0.7 = 49,075 records/s. A broker: 125 MB/s x 0.7 =
    87.5 MB/s each of disk write and network out. 193 bytes per record, RF 3."""

    def test_10k(self) -> None:
        """1.93 MB/s in. Replicas max(2, ceil(0.05)) = 2; producers ceil(0.06) = 1;
        partitions max(6, ceil(0.28), ceil(0.20), 2 x 2) = 6; brokers max(3, ceil(5.79 /
        87.5), ceil(7.72 / 87.5), ceil(72 / 2800)) = 3."""
        p = plan(10_000)
        assert ((6, 2, 1, 3), 1_930_000, 5_790_000, 7_720_000) == (
            answers(p),
            round(p.input_bytes_per_second),
            round(p.broker_write_bytes_per_second),
            round(p.broker_egress_bytes_per_second),
        )

    def test_100k(self) -> None:
        """19.3 MB/s in. Replicas max(2, ceil(0.54)) = 2; producers ceil(0.64) = 1;
        partitions max(6, ceil(19.3 / 7) = 3, ceil(2.04) = 3, 4) = 6; brokers max(3,
        ceil(57.9 / 87.5) = 1, ceil(77.2 / 87.5) = 1, 1) = 3."""
        p = plan(100_000)
        assert ((6, 2, 1, 3), 19_300_000, 57_900_000, 77_200_000) == (
            answers(p),
            round(p.input_bytes_per_second),
            round(p.broker_write_bytes_per_second),
            round(p.broker_egress_bytes_per_second),
        )

    def test_1m(self) -> None:
        """193 MB/s in. Replicas ceil(1e6 / 186,667 = 5.36) = 6; producers ceil(1e6 /
        155,556 = 6.43) = 7; partitions max(6, ceil(193 / 7 = 27.6) = 28, ceil(20.4) = 21,
        2 x 6 = 12) = 28; brokers max(3, ceil(579 / 87.5 = 6.6) = 7, ceil(772 / 87.5 = 8.8)
        = 9, ceil(4 x 28 x 3 = 336 / 2800) = 1) = 9: the network out decides."""
        p = plan(1_000_000)
        assert ((28, 6, 7, 9), 193_000_000, 579_000_000, 772_000_000) == (
            answers(p),
            round(p.input_bytes_per_second),
            round(p.broker_write_bytes_per_second),
            round(p.broker_egress_bytes_per_second),
        )

    def test_the_arithmetic_lines_show_the_numbers(self) -> None:
        assert (
            "max(RF 3, disk ⌈579.0 MB/s / (125.0 MB/s x 0.7)⌉ = 7, network out"
            " ⌈772.0 MB/s / (125.0 MB/s x 0.7)⌉ = 9, partition replicas ⌈336 / (4,000 x 0.7)⌉"
            " = 1) = 9"
        ) == plan(1_000_000).arithmetic["brokers"]

    def test_replication_factor_and_headroom_are_inputs(self) -> None:
        """RF 1 halves nothing on the processors but writes a third: 193 MB/s, ceil(193 /
        87.5) = 3 brokers for disk, out 193 x 2 = 386 MB/s -> 5. Headroom 1: one replica
        takes 266,667 ev/s -> ceil(3.75) = 4 replicas."""
        assert (
            (193_000_000, 5),
            4,
        ) == (
            (
                round(plan(1e6, replication_factor=1).broker_write_bytes_per_second),
                plan(1e6, replication_factor=1).brokers,
            ),
            plan(1e6, headroom=1.0).processor_replicas,
        )

    @given(
        rate=st.floats(min_value=1, max_value=1e9),
        headroom=st.floats(min_value=0.05, max_value=1),
        replication_factor=st.integers(min_value=1, max_value=5),
    )
    def test_partitions_never_below_replicas(
        self, rate: float, headroom: float, replication_factor: int
    ) -> None:
        """Nor below twice the replicas (room to scale out), nor brokers below RF."""
        p = plan(rate, headroom=headroom, replication_factor=replication_factor)
        assert (True, True, True) == (
            p.partitions >= p.processor_replicas,
            p.partitions >= model.PARTITION_SCALE_OUT * p.processor_replicas,
            p.brokers >= replication_factor,
        )


class TestTheNumbersStayTrue:
    def test_the_record_size_covers_what_the_producer_writes(self) -> None:
        """A full 128 KiB batch of readings of a million-sensor fleet, as aiokafka encodes
        it for the broker: at most RECORD_BYTES per record (and not far below)."""
        fleet = SensorFleet(1_000_000, seed=1)
        readings = fleet.generate(5_000, 1_700_000_000_000)
        batch = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=0,
            is_transactional=0,
            producer_id=1,
            producer_epoch=0,
            base_sequence=0,
            batch_size=131_072,
        )
        count = 0
        for key, value in readings:
            if batch.append(offset=count, timestamp=1_700_000_000_000, key=key, value=value,
                            headers=[]) is None:  # fmt: skip
                break
            count += 1
        per_record = len(batch.build()) / count
        assert model.RECORD_BYTES - 5 <= per_record <= model.RECORD_BYTES

    def test_the_prometheus_rule_uses_the_models_figures(self) -> None:
        """The recording rules' fallback is the model's replica rate, their headroom
        HEADROOM, their drain target DRAIN_SECONDS."""
        rules = {
            rule["record"]: rule["expr"]
            for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]
            if "record" in rule
        }
        capacity = rules["sensorstream:processor_replica_capacity:events_per_second"]
        recommended = rules["sensorstream:processor_recommended_replicas"]
        assert (f"vector({round(processor_replica_events_per_second())})", True, True) == (
            rules["sensorstream:processor_replica_capacity_model:events_per_second"],
            bool(re.search(rf"\* {model.HEADROOM:g}\s", capacity)),
            bool(re.search(rf"/ {model.DRAIN_SECONDS}\s", recommended)),
        )

    def test_every_constant_has_a_source(self) -> None:
        assert [] == [c.name for c in model.CONSTANTS if not c.source or not c.unit]


class TestDoc:
    def test_the_doc_table_is_what_the_code_prints(self) -> None:
        """docs/capacity.md holds `sensorstream capacity --markdown` verbatim; after a
        change to the model, paste the new output between the markers."""
        text = DOC.read_text()
        doc_table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
        result = CliRunner().invoke(app, ["capacity", "--markdown"])
        assert (0, result.output) == (result.exit_code, doc_table)

    def test_the_scaling_section_of_operations_md_quotes_the_same_answers(self) -> None:
        """docs/operations.md sums the table up as partitions/replicas/producers/brokers."""
        quoted = ", ".join("/".join(map(str, answers(plan(r)))) for r in DEFAULT_RATES[:2])
        summary = f"{quoted} and {'/'.join(map(str, answers(plan(DEFAULT_RATES[2]))))}"
        operations = " ".join((REPO / "docs" / "operations.md").read_text().split())
        assert summary in operations

    def test_the_default_rates_are_the_docs(self) -> None:
        assert (
            render_markdown([plan(r) for r in DEFAULT_RATES])
            == CliRunner().invoke(app, ["capacity", "--markdown"]).output
        )


class TestCommand:
    def test_json_shape(self) -> None:
        result = CliRunner().invoke(app, ["capacity", "--rate", "1000000", "--json"])
        document = json.loads(result.output)
        [only] = document["plans"]
        assert (
            0,
            {"constants", "plans"},
            {"name", "value", "unit", "source"},
            {
                "rate", "headroom", "replication_factor", "record_bytes",
                "input_bytes_per_second", "processor_replicas", "producer_instances",
                "partitions", "brokers", "broker_write_bytes_per_second",
                "broker_egress_bytes_per_second", "arithmetic",
            },
            {"processor_replicas", "producer_instances", "partitions", "brokers"},
            (1_000_000, 28, 6, 7, 9),
        ) == (
            result.exit_code,
            set(document),
            set(document["constants"][0]),
            set(only),
            set(only["arithmetic"]),
            (only["rate"], only["partitions"], only["processor_replicas"],
             only["producer_instances"], only["brokers"]),
        )  # fmt: skip

    def test_text_for_one_rate(self) -> None:
        result = CliRunner().invoke(app, ["capacity", "--rate", "1M"])
        assert (0, True) == (
            result.exit_code,
            result.output.startswith(
                "1,000,000 ev/s (193.0 MB/s in, RF 3, headroom 0.7): 28 partitions,"
                " 6 processor replicas, 7 producer instances, 9 brokers\n"
            ),
        )

    @pytest.mark.parametrize(
        ("text", "value"),
        [("1000000", 1e6), ("1_000_000", 1e6), ("1e6", 1e6), ("100k", 1e5), ("1M", 1e6),
         ("2.5k", 2500.0), (" 10000 ", 1e4)],
    )  # fmt: skip
    def test_rates_it_reads(self, text: str, value: float) -> None:
        assert value == parse_rate(text)

    @pytest.mark.parametrize("bad", ["abc", "0", "-5", "1G", "", "1e10", "nan", "1,000"])
    def test_a_bad_rate_exits_2_with_one_line(self, bad: str) -> None:
        result = CliRunner().invoke(app, ["capacity", "--rate", bad])
        lines = result.output.splitlines()
        assert (2, 1, True) == (
            result.exit_code,
            len(lines),
            bool(re.fullmatch(r"sensorstream: error: --rate: .* is not a rate; .*", lines[0])),
        )

    @pytest.mark.parametrize(
        "argv",
        [["--headroom", "0"], ["--headroom", "1.5"], ["--replication-factor", "0"],
         ["--json", "--markdown"]],
    )  # fmt: skip
    def test_other_bad_options_exit_2_with_one_line(self, argv: list[str]) -> None:
        result = CliRunner().invoke(app, ["capacity", *argv])
        assert (2, 1) == (result.exit_code, len(result.output.splitlines()))
