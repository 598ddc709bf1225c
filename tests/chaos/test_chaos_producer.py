"""The producer killed -9 mid-run and restarted: what it acknowledged is there once.

The restarted producer must go on with each sensor's ``seq`` where the topic ends (it
reads them at start-up), so every sensor's seqs stay contiguous and unique; and every
reading the killed run had acknowledged (scraped from its /metrics just before the
kill) is in the topic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_cluster import ChaosCluster
from chaos_pipeline import ChaosPipeline

AFTER_RESTART_SECONDS = 5


@pytest.mark.timeout(300)
async def test_producer_killed_and_restarted(
    healthy_cluster: ChaosCluster, scenario_logs: Path
) -> None:
    """f. kill -9 the producer under load, start it again at once."""
    async with ChaosPipeline(
        healthy_cluster, scenario_logs, "f. producer kill -9", "at_least_once"
    ) as run:
        await run.warm_up()
        before = await run.kill_producer()
        run.note(f"producer killed -9 ({before.acked} acknowledged, {before.sent} sent)")
        run.start_producer()
        run.healed()
        await run.live_producer.wait_acking()
        await run.wait_recovered()
        # Some seconds of the resumed run, so most of its seqs follow the resumed ones.
        await run.live_producer.wait_acking(at_least=AFTER_RESTART_SECONDS * run.rate)
        outcome = await run.finish()
    outcome.check()
