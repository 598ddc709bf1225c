"""Specification of the output side: transactional ids follow the input partition."""

from __future__ import annotations

from aiokafka import TopicPartition

from sensorstream.processor._outputs import transactional_id


class TestTransactionalId:
    def test_id_follows_partition_not_instance(self) -> None:
        """Whoever owns a partition uses the same transactional id, so it fences the last owner."""
        tp = TopicPartition("sensor-data", 4)
        assert "sensorstream-processor-sensor-data-4" == transactional_id(
            "sensorstream-processor", tp
        )
