"""Service wiring without a broker: profile choice, readiness, start-up retries, and how a
run ends (the shutdown report of what was never acknowledged, a fatal failed delivery)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from fake_kafka_producer import AckingProducer
from prometheus_client import CollectorRegistry
from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
from structlog.testing import capture_logs

from sensorstream.producer import _service as service_module
from sensorstream.producer._pacing import (
    BurstProfile,
    ConstantProfile,
    PoissonProfile,
    SineProfile,
)
from sensorstream.producer._resume import ResumedSeqs
from sensorstream.producer._sender import DeliveryFailedError
from sensorstream.producer._service import ProducerService, build_profile
from sensorstream.producer.settings import ProducerSettings
from sensorstream.runtime import KafkaUnavailableError, StopSignal, load_settings

SENSORS = 12


@pytest.fixture(autouse=True)
def restored_retry_hooks() -> Iterator[None]:
    """The service installs stamina's global retry hooks: put the previous ones back."""
    hooks = get_on_retry_hooks()
    yield
    set_on_retry_hooks(hooks)


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """The topic's highest seq per sensor number, as the faked start-up read finds it."""
    highest: dict[int, int] = {}

    async def resume_seqs(
        settings: ProducerSettings, keys: list[bytes], partitions: int, **_: Any
    ) -> ResumedSeqs:
        return ResumedSeqs(next_seqs=[highest.get(i, -1) + 1 for i in range(len(keys))])

    monkeypatch.setattr(service_module, "resume_seqs", resume_seqs)
    return highest


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, stored: dict[int, int]) -> AckingProducer:
    """The service's Kafka, faked: the topic is 'prepared' (empty, unless ``stored`` says
    otherwise) and this producer 'started'."""
    fake = AckingProducer(capacity=50)

    async def prepare_topic(self: ProducerService) -> int:
        return 6

    async def start_producer(self: ProducerService) -> Any:
        return fake

    monkeypatch.setattr(ProducerService, "_prepare_topic", prepare_topic)
    monkeypatch.setattr(ProducerService, "_start_producer", start_producer)
    return fake


def _service(*argv: str) -> ProducerService:
    settings = load_settings(
        ProducerSettings,
        ["--metrics-port", "0", "--sensors", str(SENSORS), "--seed", "1", *argv],
    )
    return ProducerService(settings, StopSignal(), registry=CollectorRegistry())


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _acked(service: ProducerService) -> int:
    return 0 if service.sender is None else service.sender.counts.acked


class TestBuildProfile:
    @pytest.mark.parametrize(
        ("name", "kind"),
        [
            ("constant", ConstantProfile),
            ("poisson", PoissonProfile),
            ("sine", SineProfile),
            ("burst", BurstProfile),
        ],
    )
    def test_profile_per_setting(self, name: str, kind: type) -> None:
        """--rate-profile picks the matching profile at the configured rate."""
        settings = load_settings(ProducerSettings, ["--rate-profile", name, "--rate", "40"])
        profile = build_profile(settings, 40.0)
        assert (kind, 40.0) == (type(profile), profile.rate)  # type: ignore[attr-defined]


class TestReadiness:
    def test_not_ready_before_start(self) -> None:
        """/readyz says 'starting' until the Kafka producer runs."""
        settings = load_settings(ProducerSettings, [])
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert (False, {"reason": "starting"}) == service.readiness()

    def test_max_rate_has_no_pacer(self) -> None:
        """--rate max sends as fast as acknowledged: no pacer."""
        settings = load_settings(ProducerSettings, ["--rate", "max"])
        service = ProducerService(settings, StopSignal(), registry=CollectorRegistry())
        assert None is service.pacer


class TestStartProducer:
    async def test_unreachable_broker_is_retried_then_fatal(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Start-up retries (retry_scheduled, 'start producer'), then one KafkaUnavailableError."""

        class Unreachable:
            stopped = 0

            async def start(self) -> None:
                raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")

            async def stop(self) -> None:
                Unreachable.stopped += 1

        monkeypatch.setattr(service_module, "create_producer", lambda settings: Unreachable())
        service = _service("--startup-timeout", "0.5")
        service_module.instrument_retries(service.metrics.retries)
        with (
            capture_logs() as logs,
            pytest.raises(KafkaUnavailableError, match="cannot start the Kafka producer at "),
        ):
            await service._start_producer()
        retries = [log for log in logs if log["event"] == "retry_scheduled"]
        counted = service.registry.get_sample_value(
            "sensorstream_producer_retries_total", {"operation": "start producer"}
        )
        assert {"start producer"} == {log["operation"] for log in retries}
        assert (len(retries), len(retries) + 1) == (counted, Unreachable.stopped)

    async def test_started_after_retries(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A broker that comes up during start-up: the producer starts, producer_started."""
        attempts: list[int] = []

        class Late:
            async def start(self) -> None:
                attempts.append(1)
                if len(attempts) < 2:
                    raise KafkaConnectionError("not yet")

            async def stop(self) -> None:
                pass

        monkeypatch.setattr(service_module, "create_producer", lambda settings: Late())
        service = _service()
        service_module.instrument_retries(service.metrics.retries)
        with capture_logs() as logs:
            producer = await service._start_producer()
        assert isinstance(producer, Late)
        assert ["retry_scheduled", "producer_started"] == [log["event"] for log in logs]


def _sent_seqs(broker: AckingProducer) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for batch in broker.offered:
        for _, value, _ in batch.records:
            reading = orjson.loads(value)
            seqs[reading["sensor_id"]].append(reading["seq"])
    return seqs


class TestResumeSeq:
    async def test_each_sensor_continues_after_its_highest_stored_seq(
        self, broker: AckingProducer, stored: dict[int, int]
    ) -> None:
        """Seqs in the topic: each sensor's first reading is its highest + 1; seqs_resumed."""
        stored.update({0: 41, 3: 0, 11: 7})
        service = _service("--rate", "2000", "--count", str(SENSORS * 2))
        with capture_logs() as logs:
            assert 0 == await asyncio.wait_for(service.run(), 10)
        firsts = {sensor: seqs[:2] for sensor, seqs in _sent_seqs(broker).items()}
        assert [42, 43] == firsts["sensor-0000"]
        assert ([1, 2], [8, 9], [0, 1]) == (
            firsts["sensor-0003"],
            firsts["sensor-0011"],
            firsts["sensor-0005"],
        )
        [resumed] = [log for log in logs if log["event"] == "seqs_resumed"]
        assert (3, SENSORS, 41) == (
            resumed["sensors"],
            resumed["of_sensors"],
            resumed["highest_seq"],
        )
        assert resumed["seconds"] >= 0

    async def test_a_topic_this_run_created_is_not_read(
        self, broker: AckingProducer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Just created: nothing can be stored, so the start-up read is skipped."""

        async def prepare_topic(self: ProducerService) -> int:
            self._topic_created = True
            return 6

        async def resume_seqs(*args: Any, **kwargs: Any) -> ResumedSeqs:
            raise AssertionError("a topic created by this run was read")

        monkeypatch.setattr(ProducerService, "_prepare_topic", prepare_topic)
        monkeypatch.setattr(service_module, "resume_seqs", resume_seqs)
        service = _service("--rate", "2000", "--count", str(SENSORS))
        with capture_logs() as logs:
            assert 0 == await asyncio.wait_for(service.run(), 10)
        [resumed] = [log for log in logs if log["event"] == "seqs_resumed"]
        assert (0, None, 0) == (resumed["sensors"], resumed["highest_seq"], resumed["records_read"])
        assert {sensor: [0] for sensor in service.fleet.sensor_ids} == _sent_seqs(broker)

    async def test_off_starts_every_sensor_at_zero(
        self, broker: AckingProducer, stored: dict[int, int]
    ) -> None:
        """--no-resume-seq: the topic is not read, every sensor starts at 0."""
        stored.update({0: 41})
        service = _service("--rate", "2000", "--count", str(SENSORS), "--no-resume-seq")
        with capture_logs() as logs:
            assert 0 == await asyncio.wait_for(service.run(), 10)
        assert {sensor: [0] for sensor in service.fleet.sensor_ids} == _sent_seqs(broker)
        assert [] == [log for log in logs if log["event"] == "seqs_resumed"]


class TestShutdownReport:
    async def test_lists_exactly_the_unacknowledged_seqs_per_sensor(
        self, broker: AckingProducer
    ) -> None:
        """Broker gone at shutdown: exit 1, and the final line names each sensor's unacked seqs."""
        service = _service("--rate", "2000", "--shutdown-timeout", "0.2")
        with capture_logs() as logs:
            run = asyncio.create_task(service.run())
            await _until(lambda: _acked(service) > 200)
            broker.away = True
            taken_before = len(broker.sent)
            await _until(lambda: len(broker.sent) >= taken_before + 3)  # never to be acked
            service.stop.request("test")
            assert 1 == await asyncio.wait_for(run, 10)

        # What the broker acknowledged, against what the fleet generated.
        acked: dict[str, set[int]] = defaultdict(set)
        for _, batch, future in broker.sent:
            if future.done() and future.exception() is None:
                for _, value, _ in batch.records:
                    reading = orjson.loads(value)
                    acked[reading["sensor_id"]].add(reading["seq"])
        fleet = service.fleet
        never_acked = {
            sensor: sorted(set(range(fleet.next_seq(i))) - acked[sensor])
            for i, sensor in enumerate(fleet.sensor_ids)
        }
        expected = {
            sensor: f"{seqs[0]}-{seqs[-1]}" if len(seqs) > 1 else str(seqs[0])
            for sensor, seqs in never_acked.items()
            if seqs
        }
        final = logs[-1]
        assert "producer_stopped_with_losses" == final["event"]
        assert expected == final["unacknowledged_seqs"]
        assert (sum(map(len, never_acked.values())), len(expected)) == (
            final["unacknowledged"],
            final["unacknowledged_sensors"],
        )
        # Per-sensor order kept: what is missing is the end of each sensor's readings.
        assert all(
            seqs == list(range(seqs[0], fleet.next_seq(i)))
            for i, seqs in enumerate(never_acked.values())
            if seqs
        )
        assert f"{final['unacknowledged']} events were not acknowledged" in final["message"]

    async def test_all_acknowledged_is_a_clean_stop(self, broker: AckingProducer) -> None:
        """Everything acknowledged: exit 0, producer_stopped, nothing unacknowledged."""
        service = _service("--rate", "2000", "--count", "500")
        with capture_logs() as logs:
            assert 0 == await asyncio.wait_for(service.run(), 10)
        final = logs[-1]
        assert ("producer_stopped", 500, 500, 0) == (
            final["event"],
            final["sent"],
            final["acked"],
            final["unacknowledged"],
        )


class TestFailedDelivery:
    async def test_stops_generating_reports_and_raises(self, broker: AckingProducer) -> None:
        """A batch failing for good: nothing more is sent, the final line names it, run raises."""
        service = _service("--rate", "2000", "--shutdown-timeout", "1")
        with capture_logs() as logs:
            run = asyncio.create_task(service.run())
            await _until(lambda: _acked(service) > 200)
            broker.fail_next = TopicAuthorizationFailedError("sensor-readings")
            with pytest.raises(DeliveryFailedError, match="TopicAuthorizationFailedError") as info:
                await asyncio.wait_for(run, 10)
        assert service.sender is not None
        counts = service.sender.counts
        final = [log for log in logs if log["event"] == "producer_stopped_with_losses"][-1]
        assert broker.offered_at_failure == len(broker.offered)
        assert (str(info.value), counts.sent - counts.acked) == (
            final["error"],
            final["unacknowledged"],
        )
        assert ["batch_failed"] == [log["event"] for log in logs if log["log_level"] == "error"][:1]
        assert {"TopicAuthorizationFailedError": counts.failed} == counts.failed_by_kind
