"""Processor faults under live traffic: a zombie that wakes up fenced, a rebalance storm.

The brokers stay healthy here; the replicas of the processor group are frozen, killed
and started while the real producer keeps sending.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest
from chaos_cluster import ChaosCluster
from chaos_pipeline import INPUT_PARTITIONS, ChaosPipeline
from processor_support import Processor

TAKEOVER_WITHIN = 60.0
REJOIN_WITHIN = 60.0
STORM_SECONDS = 120.0
STORM_STEP_SECONDS = (2.0, 5.0)
STORM_REPLICAS = (1, 3)
SEED_ENV = "SENSORSTREAM_CHAOS_SEED"


async def wait_assigned(run: ChaosPipeline, processor: Processor, at_least: int) -> None:
    deadline = time.monotonic() + TAKEOVER_WITHIN
    while await run.processors.assigned(processor) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"processor {processor.pid} holds fewer than {at_least} partitions after "
                f"{TAKEOVER_WITHIN:g} s: {processor.logs()[-2000:]}"
            )
        await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_zombie_processor_is_fenced(
    healthy_cluster: ChaosCluster, scenario_logs: Path
) -> None:
    """d. A processor frozen (SIGSTOP) past its session timeout while the other takes
    over its partitions, then continued: its transactions are fenced, so the
    read_committed outputs hold no reading twice, and it rejoins the group."""
    async with ChaosPipeline(
        healthy_cluster, scenario_logs, "d. processor SIGSTOP (zombie)", "exactly_once"
    ) as run:
        await run.warm_up()
        zombie, successor = run.processors.running()
        if await run.processors.assigned(zombie) == 0:
            zombie, successor = successor, zombie
        zombie.proc.send_signal(signal.SIGSTOP)
        try:
            await wait_assigned(run, successor, INPUT_PARTITIONS)
            run.note(f"processor {zombie.pid} frozen, {successor.pid} took over every partition")
            # The successor commits on the zombie's partitions before the zombie wakes.
            await run.wait_caught_up(TAKEOVER_WITHIN)
        finally:
            zombie.proc.send_signal(signal.SIGCONT)
        run.healed()
        try:
            await wait_assigned(run, zombie, 1)
        except AssertionError as exc:
            run.failures.append(f"the zombie did not rejoin: {exc}")
        await run.wait_recovered()
        outcome = await run.finish()
    outcome.check()


@pytest.mark.timeout(420)
async def test_rebalance_storm(healthy_cluster: ChaosCluster, scenario_logs: Path) -> None:
    """e. For two minutes a random replica is killed (SIGKILL) or a new one started every
    few seconds, one to three running at any time."""
    seed = int(os.environ.get(SEED_ENV) or time.time())
    rng = random.Random(seed)
    async with ChaosPipeline(
        healthy_cluster, scenario_logs, "e. rebalance storm 2 min", "at_least_once"
    ) as run:
        await run.warm_up()
        run.note(f"storm begins ({SEED_ENV}={seed} repeats it)")
        fewest, most = STORM_REPLICAS
        kills = starts = 0
        ends = time.monotonic() + STORM_SECONDS
        while time.monotonic() < ends:
            running = run.processors.running()
            if len(running) > fewest and (len(running) >= most or rng.random() < 0.5):
                run.processors.kill(rng.choice(running))
                kills += 1
            else:
                run.processors.start_one()
                starts += 1
            await asyncio.sleep(rng.uniform(*STORM_STEP_SECONDS))
        run.note(f"storm over: {kills} kills, {starts} starts")
        await asyncio.gather(*(p.wait_ready(within=60) for p in run.processors.running()))
        run.healed()
        await run.wait_recovered()
        outcome = await run.finish()
    outcome.check()
