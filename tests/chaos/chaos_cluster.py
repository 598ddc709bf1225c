"""The chaos suite's three-broker cluster: faults to inject, and the way back to healthy.

One cluster serves every scenario of a session (``chaos_cluster`` in ``conftest.py``),
so each scenario must hand it back as it found it: three nodes up, none paused, every
partition of every topic led and fully in sync. :meth:`ChaosCluster.restore` does that
whatever a scenario left behind, and the fixture calls it before and after each one.

Faults are the ones a real host sees: ``kill -9`` (:meth:`~ChaosCluster.kill`), a clean
SIGTERM shutdown (:meth:`~ChaosCluster.terminate`), and a frozen process
(:meth:`~ChaosCluster.pause` / :meth:`~ChaosCluster.resume`, SIGSTOP / SIGCONT to the
node's process group). Stopping and starting go through ``kafkactl`` (the same code as
``make kafka-start``) in a thread, so the scenario's own clients keep running.

Metadata questions go to a fresh admin client bootstrapped from the nodes that answer
(up and not paused): a long-lived client would keep asking a dead or frozen node.

Unlike ``tests/conftest.py``'s function-scoped ``failover_cluster`` this cluster lives
for the whole session (one cluster start for the suite's time budget), and it knows
about paused nodes, which a describe call must avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kafkactl
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

__all__ = ["ChaosCluster", "start_cluster"]

NODES = 3
START_ATTEMPTS = 2
DESCRIBE_TIMEOUT_MS = 3000
HEALTHY_WITHIN = 90.0
POLL_SECONDS = 0.25


def start_cluster(data_dir: Path) -> kafkactl.KafkaCluster:
    """Three nodes on stable free ports (below the ephemeral range: a node that is down
    keeps its ports, so it can always come back); a failed attempt retries on new ports."""
    last: kafkactl.KafkactlError | None = None
    for _ in range(START_ATTEMPTS):
        ports = kafkactl.stable_free_ports(2 * NODES)
        try:
            return kafkactl.start(
                nodes=NODES, ports=ports[:NODES], controller_ports=ports[NODES:], data_dir=data_dir
            )
        except kafkactl.KafkactlError as exc:
            last = exc
    assert last is not None
    raise last


class ChaosCluster:
    """A recorded three-node cluster whose nodes the scenarios kill, freeze and restart."""

    def __init__(self, cluster: kafkactl.KafkaCluster) -> None:
        self.data_dir = Path(cluster.data_dir)
        self.bootstrap = cluster.bootstrap
        """Every node, up or down: the ports never change."""
        self.node_ids = tuple(node.node_id for node in cluster.nodes)

    # ------------------------------------------------------------------ node state

    def _node(self, node_id: int) -> kafkactl.KafkaNode:
        cluster = kafkactl.recorded(self.data_dir)
        assert cluster is not None, f"the cluster in {self.data_dir} is no longer recorded"
        return cluster.node(node_id)

    def is_up(self, node_id: int) -> bool:
        """The node's broker process runs (it may be paused)."""
        return any(node.node_id == node_id for node in kafkactl.live_nodes(self.data_dir))

    def is_paused(self, node_id: int) -> bool:
        """The node's process is stopped by SIGSTOP (state T)."""
        pid = self._node(node_id).pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] == "T"

    def answering(self) -> list[kafkactl.KafkaNode]:
        """The nodes that are up and not paused."""
        return [n for n in kafkactl.live_nodes(self.data_dir) if not self.is_paused(n.node_id)]

    @property
    def answering_bootstrap(self) -> str:
        return ",".join(node.address for node in self.answering())

    # ------------------------------------------------------------------ faults

    async def kill(self, node_id: int) -> None:
        """``kill -9`` the node: no controlled shutdown; returns once it is gone."""
        await asyncio.to_thread(kafkactl.stop_node, self.data_dir, node_id, hard=True)

    async def terminate(self, node_id: int) -> None:
        """SIGTERM: a controlled shutdown (leaderships handed over first)."""
        await asyncio.to_thread(kafkactl.stop_node, self.data_dir, node_id, hard=False)

    async def start(self, node_id: int) -> None:
        """Start a stopped node on its ports and data; returns once every node has it."""
        await asyncio.to_thread(kafkactl.start_node, self.data_dir, node_id)

    def pause(self, node_id: int) -> None:
        """SIGSTOP the node's process group: it holds its sockets and answers nothing."""
        os.killpg(self._node(node_id).pid, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        """SIGCONT the node's process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._node(node_id).pid, signal.SIGCONT)

    # ------------------------------------------------------------------ metadata

    async def describe(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        """``describe_topics`` (all topics by default), asked of the answering nodes;
        retried for a while, since a node just killed or fenced may answer first."""
        deadline = time.monotonic() + 30
        while True:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.answering_bootstrap, request_timeout_ms=DESCRIBE_TIMEOUT_MS
            )
            try:
                await admin.start()
                described: list[dict[str, Any]] = await admin.describe_topics(topics)
            except (KafkaError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if all(t["error_code"] == 0 for t in described):
                    return described
                problem = f"errors in {[(t['topic'], t['error_code']) for t in described]}"
            finally:
                await admin.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not describe {topics or 'the topics'}: {problem}")
            await asyncio.sleep(POLL_SECONDS)

    async def leader_of(self, topic: str, partition: int) -> int:
        """The node leading ``topic``-``partition`` now (-1: none)."""
        [described] = await self.describe([topic])
        [found] = [p for p in described["partitions"] if p["partition"] == partition]
        return int(found["leader"])

    async def coordinator_of(self, group_id: str) -> int:
        """The node coordinating ``group_id`` (its offsets and membership)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.answering_bootstrap, request_timeout_ms=DESCRIBE_TIMEOUT_MS
        )
        try:
            await admin.start()
            return int(await admin.find_coordinator(group_id))
        finally:
            await admin.close()

    async def led_by(self, topic: str, node_id: int) -> list[int]:
        """The partitions of ``topic`` that ``node_id`` leads now."""
        [described] = await self.describe([topic])
        return sorted(p["partition"] for p in described["partitions"] if p["leader"] == node_id)

    async def wait_leader_moved(self, topic: str, partition: int, away_from: int) -> int:
        """Wait until another node than ``away_from`` leads the partition; return it."""
        deadline = time.monotonic() + HEALTHY_WITHIN
        while True:
            leader = await self.leader_of(topic, partition)
            if leader not in (-1, away_from):
                return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}-{partition} still led by {leader}")
            await asyncio.sleep(POLL_SECONDS)

    async def under_replicated(self, topics: Iterable[str] | None = None) -> list[str]:
        """``topic-partition (isr ...)`` of every partition without a leader or a full ISR."""
        described = await self.describe(None if topics is None else list(topics))
        return [
            f"{t['topic']}-{p['partition']} (leader {p['leader']}, isr {sorted(p['isr'])})"
            for t in described
            for p in t["partitions"]
            if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"])
        ]

    async def wait_healthy(self, within: float = HEALTHY_WITHIN) -> float:
        """Wait until all three nodes answer and every partition of every topic is led and
        fully in sync (a restarted node back in every ISR). Returns the seconds it took."""
        started = time.monotonic()
        deadline = started + within
        while True:
            answering = {node.node_id for node in self.answering()}
            problems: list[str] = [
                f"node {n} not answering" for n in self.node_ids if n not in answering
            ]
            if not problems:
                registered = await asyncio.to_thread(self._registered_everywhere)
                problems = registered or await self.under_replicated()
            if not problems:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy after {within:g} s: {problems[:10]}")
            await asyncio.sleep(POLL_SECONDS)

    def _registered_everywhere(self) -> list[str]:
        """Every node lists all three as registered (unfenced) brokers; else what is not."""
        problems = []
        for node in self.answering():
            try:
                seen = set(kafkactl.probe_brokers(kafkactl.HOST, node.port, timeout=1.0))
            except OSError as exc:
                problems.append(f"node {node.node_id}: {exc}")
                continue
            if missing := set(self.node_ids) - seen:
                problems.append(f"node {node.node_id} does not list {sorted(missing)}")
        return problems

    async def restore(self, within: float = HEALTHY_WITHIN) -> None:
        """Whatever a scenario left: resume paused nodes, start stopped ones, wait healthy."""
        for node_id in self.node_ids:
            if self.is_up(node_id) and self.is_paused(node_id):
                self.resume(node_id)
        for node_id in self.node_ids:
            if not self.is_up(node_id):
                await self.start(node_id)
        await self.wait_healthy(within)
