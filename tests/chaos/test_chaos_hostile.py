"""Hostile input mixed into live traffic: each record dead-lettered once with its reason,
no effect on the fleet's readings, every service still running."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from chaos_cluster import ChaosCluster
from chaos_hostile import FAR_TIMES, expected_dead_letters, hostile_round, inject
from chaos_pipeline import ChaosPipeline, Expected

ROUNDS = 3
BETWEEN_ROUNDS_SECONDS = 3.0


@pytest.mark.timeout(300)
async def test_hostile_input(healthy_cluster: ChaosCluster, scenario_logs: Path) -> None:
    """g. Three rounds of every rejection reason, far-future and far-past event times and
    records near the broker's size limit, between the producer's readings."""
    async with ChaosPipeline(
        healthy_cluster, scenario_logs, "g. hostile input", "exactly_once"
    ) as run:
        await run.warm_up()
        for seq in range(ROUNDS):
            if seq:
                await asyncio.sleep(BETWEEN_ROUNDS_SECONDS)  # live traffic in between
            records = hostile_round(seq, int(time.time() * 1000))
            await inject(healthy_cluster.bootstrap, run.topics.input, records)
            run.note(f"hostile round {seq}: {len(records)} records")
        run.healed()
        await run.wait_recovered()
        outcome = await run.finish(
            Expected(
                dead_letters=expected_dead_letters(ROUNDS),
                foreign_readings=ROUNDS * len(FAR_TIMES),
            )
        )
    outcome.check()
