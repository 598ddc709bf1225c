"""The pipeline's four topics, declared once in ``topology.toml`` beside this module.

:data:`TOPOLOGY` is the typed form of that file: one :class:`TopicSpec` per role
(input, aggregates, alerts, dead letters) with its default name, layout and the topic
configs that matter. The producer, the processor, ``sensorstream-topics`` (``make run``
and the compose init job), ``kafkactl`` and the tests all create and check topics from
it; a deployment changes only the names and the layout (:meth:`Topology.configured`).

This module is pure: it reads the packaged file once at import and never talks to Kafka
(``sensorstream.runtime.topics`` does that).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

__all__ = ["TOPOLOGY", "TopicRole", "TopicSpec", "Topology", "min_insync_replicas"]

TopicRole = Literal["input", "aggregates", "alerts", "dlq"]
ROLES: Final[tuple[TopicRole, ...]] = ("input", "aggregates", "alerts", "dlq")

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def min_insync_replicas(replication_factor: int) -> int:
    """2 from three replicas up (one broker may fail, writes still need two), else 1."""
    return 2 if replication_factor >= 3 else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """One topic of the pipeline: its name, layout and the configs that matter."""

    role: TopicRole
    name: str
    description: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Set at creation; an existing topic with another value is reported, not changed."""
    minimums: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Needed for correctness: an existing topic below one is raised to it."""

    def __post_init__(self) -> None:
        if not _TOPIC_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise ValueError(
                f"topic name {self.name!r} for {self.role}: use 1-249 of [a-zA-Z0-9._-]"
            )
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ValueError(
                f"{self.name}: replication factor must be >= 1, got {self.replication_factor}"
            )
        overlap = set(self.configs) & set(self.minimums)
        if overlap:
            raise ValueError(f"{self.name}: {sorted(overlap)} both in configs and minimums")

    def creation_configs(self) -> dict[str, str]:
        """Every topic config to create it with: configs, minimums, min.insync.replicas."""
        configs = {
            "min.insync.replicas": str(min_insync_replicas(self.replication_factor)),
            **self.configs,
        }
        configs.update((key, str(value)) for key, value in self.minimums.items())
        return configs


@dataclass(frozen=True, slots=True)
class Topology:
    """The four topics; iterate for all of them, in data-flow order."""

    input: TopicSpec
    aggregates: TopicSpec
    alerts: TopicSpec
    dlq: TopicSpec

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter((self.input, self.aggregates, self.alerts, self.dlq))

    @property
    def outputs(self) -> tuple[TopicSpec, TopicSpec, TopicSpec]:
        """The processor's output topics: aggregates, alerts, dead letters."""
        return (self.aggregates, self.alerts, self.dlq)

    def by_role(self, role: TopicRole) -> TopicSpec:
        spec: TopicSpec = getattr(self, role)
        return spec

    def configured(
        self,
        *,
        partitions: int | None = None,
        replication_factor: int | None = None,
        names: Mapping[TopicRole, str] | None = None,
    ) -> Topology:
        """This topology for one deployment: other names and/or another layout."""
        names = names or {}
        specs = {
            spec.role: replace(
                spec,
                name=names.get(spec.role, spec.name),
                partitions=spec.partitions if partitions is None else partitions,
                replication_factor=(
                    spec.replication_factor if replication_factor is None else replication_factor
                ),
            )
            for spec in self
        }
        return Topology(**specs)


def parse_topology(text: str) -> Topology:
    """The :class:`Topology` a ``topology.toml`` text declares; ``ValueError`` if malformed."""
    data = tomllib.loads(text)
    defaults = data.get("defaults", {})
    topics = data.get("topics", {})
    if sorted(topics) != sorted(ROLES):
        raise ValueError(f"topology declares {sorted(topics)}, expected {sorted(ROLES)}")
    specs: dict[str, TopicSpec] = {}
    for role in ROLES:
        entry = topics[role]
        unknown = set(entry) - {"name", "description", "configs", "minimums"}
        if unknown:
            raise ValueError(f"topology: unknown keys {sorted(unknown)} in topics.{role}")
        if not isinstance(entry.get("name"), str):
            raise ValueError(f"topology: topics.{role} needs a name (a string)")
        minimums = {}
        for key, value in entry.get("minimums", {}).items():
            if type(value) is not int:
                raise ValueError(
                    f"topology: topics.{role}.minimums.{key} must be an integer, got {value!r}"
                )
            minimums[key] = value
        specs[role] = TopicSpec(
            role=role,
            name=entry["name"],
            description=entry.get("description", ""),
            partitions=int(defaults.get("partitions", 6)),
            replication_factor=int(defaults.get("replication_factor", 1)),
            configs=MappingProxyType({k: str(v) for k, v in entry.get("configs", {}).items()}),
            minimums=MappingProxyType(minimums),
        )
    return Topology(**specs)


TOPOLOGY_FILE: Final = Path(__file__).with_name("topology.toml")
TOPOLOGY: Final = parse_topology(TOPOLOGY_FILE.read_text(encoding="utf-8"))
"""The declared topology with its default names and layout."""
