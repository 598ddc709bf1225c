"""The pure parts of deploy/compose/compose_test.py (`make compose-test`): the parsing of
the Kafka tools' output, the partition-spread rule, Prometheus answers, exit codes and
the containers.conf check. The script itself runs the stack for real (make compose-test)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
from deploy_helpers import REPO


def _load() -> ModuleType:
    path = REPO / "deploy" / "compose" / "compose_test.py"
    spec = importlib.util.spec_from_file_location("compose_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compose_test"] = module
    spec.loader.exec_module(module)
    return module


ct = _load()

# kafka-consumer-groups.sh --describe of Kafka 4.1 (two members, one partition unowned).
GROUP_DESCRIBE = """
GROUP                  TOPIC             PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG             CONSUMER-ID                                   HOST            CLIENT-ID
sensorstream-processor sensor-data       0          1200            1210            10              aiokafka-0.12.0-1a2b-4c5d                     /10.89.0.7      aiokafka-0.12.0
sensorstream-processor sensor-data       1          1100            1100            0               aiokafka-0.12.0-1a2b-4c5d                     /10.89.0.7      aiokafka-0.12.0
sensorstream-processor sensor-data       2          900             905             5               aiokafka-0.12.0-9f8e-7d6c                     /10.89.0.8      aiokafka-0.12.0
sensorstream-processor sensor-data       3          -               1000            -               -                                             -               -
"""  # noqa: E501


def test_parse_group_members_maps_owned_partitions_to_their_member() -> None:
    members = ct.parse_group_members(GROUP_DESCRIBE, "sensor-data")
    assert {
        0: "aiokafka-0.12.0-1a2b-4c5d",
        1: "aiokafka-0.12.0-1a2b-4c5d",
        2: "aiokafka-0.12.0-9f8e-7d6c",
    } == members


def test_parse_group_members_ignores_other_topics_and_text_before_the_header() -> None:
    text = "Consumer group 'x' has no active members.\n" + GROUP_DESCRIBE
    assert {} == ct.parse_group_members(text, "sensor-aggregates")
    assert 3 == len(ct.parse_group_members(text, "sensor-data"))


def test_parse_offsets_reads_topic_partition_offset_lines() -> None:
    text = "sensor-data:0:15\nsensor-data:1:7\nsensor-data.dlq:0:3\nWARN something\n"
    assert {0: 15, 1: 7} == ct.parse_offsets(text, "sensor-data")
    assert {0: 3} == ct.parse_offsets(text, "sensor-data.dlq")


@pytest.mark.parametrize(
    ("assigned", "problem"),
    [
        ({"a": [0, 1], "b": [2, 3], "c": [4, 5]}, None),
        ({"a": [0, 1, 2, 3, 4, 5]}, None),
        ({"a": [0, 1, 2], "b": [3, 4, 5]}, None),
        ({"a": [0, 1, 2, 3], "b": [4, 5], "c": []}, "uneven spread 4/2/0"),
        ({"a": [0, 1], "b": [2, 3], "c": [4]}, "partitions [5] have no replica"),
        ({"a": [0, 1, 2], "b": [2, 3, 4, 5]}, "partitions owned twice"),
        ({"a": [0, 1, 2, 3, 4, 5, 6]}, "unknown partitions [6]"),
        ({}, "no replica"),
    ],
)
def test_spread_problem(assigned: dict[str, list[int]], problem: str | None) -> None:
    found = ct.spread_problem(assigned, 6)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem), found


def test_spread_allows_one_more_where_partitions_do_not_divide() -> None:
    assert ct.spread_problem({"a": [0, 1, 2], "b": [3, 4], "c": [5, 6]}, 7) is None
    assert "3/2/2" == ct.spread({"a": [0, 1, 2], "b": [3, 4], "c": [5, 6]})
    assert ct.spread_problem({"a": [0, 1, 2, 3], "b": [4], "c": [5, 6]}, 7) is not None


def test_prometheus_scalar() -> None:
    answer = {"status": "success", "data": {"result": [{"metric": {}, "value": [1, "3"]}]}}
    assert 3.0 == ct.prometheus_scalar(answer)
    assert ct.prometheus_scalar({"status": "success", "data": {"result": []}}) is None
    with pytest.raises(ValueError, match="bad_data"):
        ct.prometheus_scalar({"status": "error", "error": "bad_data"})


def _container(name: str, status: str, code: int) -> dict[str, object]:
    return {"Name": f"/{name}", "State": {"Status": status, "ExitCode": code}}


def test_exit_problems_names_every_container_not_exited_0() -> None:
    containers = [
        _container("p_kafka_1", "exited", 0),
        _container("p_processor_1", "exited", 143),
        _container("p_sink_1", "running", 0),
    ]
    assert ["p_processor_1: exit code 143", "p_sink_1: running"] == ct.exit_problems(containers)
    assert [] == ct.exit_problems(containers[:1])


def test_containers_conf_ok() -> None:
    assert ct.containers_conf_ok(ct.CONTAINERS_CONF)
    assert not ct.containers_conf_ok(ct.CONTAINERS_CONF.replace("cgroupfs", "systemd"))
    assert not ct.containers_conf_ok("[engine]\nruntime = 'runc'\n")
    assert not ct.containers_conf_ok("not toml [")


def test_images_cover_every_dockerfile_the_compose_file_builds() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    built = {image.dockerfile for image in ct.IMAGES}
    for dockerfile in ("services/producer/Dockerfile", "services/processor/Dockerfile",
                       "services/bridge/Dockerfile", "services/sink/Dockerfile"):  # fmt: skip
        assert f"dockerfile: {dockerfile}" in compose
        assert dockerfile in built
    for image in ct.IMAGES:
        assert (REPO / image.dockerfile).is_file(), image
