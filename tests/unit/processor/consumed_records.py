"""A stand-in for aiokafka's ConsumerRecord, shared by the processor's pure unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Record:
    """Only what the pipeline and the worker read from a consumed record."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
