"""The chaos suite (``make chaos``): fault-injection scenarios on one three-broker cluster.

- ``chaos_cluster`` (session): three KRaft nodes on stable free ports, started once
  through ``kafkactl`` like ``tests/conftest.py`` starts its clusters, stopped at the
  end of the session (also after a failure or Ctrl-C). Sharing one cluster keeps the
  suite inside its time budget; the price is that every scenario must give it back
  healthy.
- ``healthy_cluster`` (function): the same cluster, restored to three healthy nodes
  (none paused, every partition led and fully in sync) before the scenario and again
  after it, whatever the scenario left behind.
- ``scenario_logs`` (function): where the scenario's services write their logs,
  ``.cache/chaos/logs/<test>/`` (kept until the next session starts).

Every test here gets the ``chaos`` marker. Each scenario records one row
(``chaos_results``); the table of the session's rows is printed at the end.
"""

from __future__ import annotations

import atexit
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import kafkactl
import pytest

CHAOS_DIR = Path(__file__).resolve().parent
# processor_support (start_processor, Topics, ...) lives beside the processor's tests.
sys.path.insert(0, str(CHAOS_DIR.parent / "integration" / "processor"))

from chaos_cluster import ChaosCluster, start_cluster  # noqa: E402
from chaos_results import SESSION_ROWS, render_table, results_dir  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CHAOS_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    """Three Kafka nodes for the whole chaos session (RF 3, min ISR 2 by default)."""
    data_dir = tmp_path_factory.mktemp("chaos") / "kafka"
    # If the session dies before the finally runs (a no-op once stopped).
    atexit.register(kafkactl.stop, data_dir, grace=0)
    try:
        try:
            cluster = start_cluster(data_dir)
        except kafkactl.KafkactlError as exc:
            pytest.exit(f"could not start the chaos cluster: {exc}", returncode=1)
        yield ChaosCluster(cluster)
    finally:
        kafkactl.stop(data_dir, grace=0)


@pytest.fixture
async def healthy_cluster(chaos_cluster: ChaosCluster) -> AsyncIterator[ChaosCluster]:
    """The session's cluster with three healthy nodes, and restored to that afterwards."""
    await chaos_cluster.restore()
    yield chaos_cluster
    await chaos_cluster.restore()


@pytest.fixture(scope="session")
def chaos_logs() -> Path:
    """``.cache/chaos/logs``: the services' logs of this session's scenarios (the
    previous session's are removed; pytest's own tmp dirs are rotated away too soon)."""
    logs = results_dir() / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    return logs


@pytest.fixture
def scenario_logs(chaos_logs: Path, request: pytest.FixtureRequest) -> Path:
    """A directory for this scenario's producer and processor logs."""
    directory = chaos_logs / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    directory.mkdir()
    return directory


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SESSION_ROWS:
        return
    terminalreporter.section("chaos results")
    terminalreporter.write_line(render_table(SESSION_ROWS))
    terminalreporter.write_line(f"(also in {results_dir() / 'results.md'} and results.jsonl)")
