"""deploy/procctl.py: the process control the ctl scripts and the local stack share.

Against real stand-in processes (``sleep``, a Python child) and loopback sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))

import procctl


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((procctl.HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = procctl.spawn(
        ["sleep", "60"], tmp_path / "sleep.log", env={**os.environ, "PROCCTL_MARK": "here"}
    )
    yield process
    procctl.signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=5)


class TestPorts:
    def test_a_listening_port_is_in_use_and_accepts(self, listening: int) -> None:
        assert procctl.port_in_use(listening)
        assert procctl.accepts(listening)

    def test_a_free_port_is_free(self) -> None:
        port = procctl.free_port()
        assert not procctl.port_in_use(port)
        assert not procctl.accepts(port)

    def test_stable_ports_are_free_distinct_and_below_the_ephemeral_range(self) -> None:
        low, high = procctl.ephemeral_port_range()
        assert low <= high
        ports = procctl.stable_free_ports(3)
        assert sorted(set(ports)) == ports
        assert len(ports) == 3
        assert all(port < low for port in ports)
        assert not any(procctl.port_in_use(port) for port in ports)

    def test_too_few_free_ports_raise_with_what_was_found(self) -> None:
        low = procctl.ephemeral_port_range()[0]
        with pytest.raises(procctl.NoFreePorts) as raised:
            procctl.stable_free_ports(10**6, lowest=low - 50, min_span=10)
        assert raised.value.highest == low - 1
        assert str(raised.value).startswith(f"found only {raised.value.found} free ports in")


class TestProcesses:
    def test_spawn_leads_its_own_group_and_logs_output(self, tmp_path: Path) -> None:
        log = tmp_path / "out.log"
        log.write_text("before\n")
        process = procctl.spawn([sys.executable, "-c", "print('hello')"], log, cwd=tmp_path)
        assert 0 == process.wait(timeout=10)
        assert "before\nhello\n" == log.read_text()
        assert "hello" == procctl.tail(log, 1)

    def test_live_process_reads_the_command_line(self, sleeper: subprocess.Popen[bytes]) -> None:
        # Just exec'ed, a process's command line may still be empty.
        assert procctl.wait_for(
            lambda: procctl.read_cmdline(sleeper.pid) != [""], timeout=10, interval=0.01
        )
        live = procctl.live_process(sleeper.pid)
        assert live is not None
        assert "(sleep)" in live.stat
        assert ["sleep", "60", ""] == live.args
        assert ["sleep", "60", ""] == procctl.read_cmdline(sleeper.pid)
        assert "here" == procctl.environ_value(sleeper.pid, "PROCCTL_MARK")
        assert procctl.environ_value(sleeper.pid, "PROCCTL_NOT_SET") is None
        assert os.getpgid(sleeper.pid) == sleeper.pid

    def test_no_process_for_nonpositive_or_exited_pids(self, tmp_path: Path) -> None:
        assert procctl.live_process(0) is None
        assert procctl.live_process(-1) is None
        process = procctl.spawn(["true"], tmp_path / "log")
        process.wait(timeout=10)
        assert procctl.live_process(process.pid) is None
        assert procctl.read_cmdline(process.pid) is None
        assert not procctl.still_exiting(process.pid)

    def test_stop_group_terms_then_kills(self, tmp_path: Path) -> None:
        stubborn = procctl.spawn(
            [
                sys.executable,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)",
            ],
            tmp_path / "log",
        )
        assert procctl.wait_for(
            lambda: "ready" in (tmp_path / "log").read_text(), timeout=10, interval=0.02
        )
        started = time.monotonic()
        procctl.stop_group(
            stubborn.pid, lambda: procctl.live_process(stubborn.pid) is not None, grace=0.3
        )
        assert time.monotonic() - started >= 0.3
        assert procctl.live_process(stubborn.pid) is None  # and reaped by live_process

    def test_stop_groups_returns_who_was_alive(self, sleeper: subprocess.Popen[bytes]) -> None:
        def alive(pid: int) -> bool:
            return pid == sleeper.pid and sleeper.poll() is None

        assert [sleeper.pid] == procctl.stop_groups([sleeper.pid, 0], alive, grace=10)
        sleeper.wait(timeout=5)
        assert -signal.SIGTERM == sleeper.returncode
        assert [] == procctl.stop_groups([sleeper.pid], alive, grace=10)

    def test_cut_short_ends_the_grace_early(self, tmp_path: Path) -> None:
        stubborn = procctl.spawn(
            [sys.executable, "-c", "import signal, time; signal.signal(15, 1); time.sleep(60)"],
            tmp_path / "log",
        )
        time.sleep(0.3)
        started = time.monotonic()
        procctl.stop_groups(
            [stubborn.pid], lambda pid: stubborn.poll() is None, grace=30, cut_short=lambda _: 0
        )
        assert -signal.SIGKILL == stubborn.wait(timeout=5)
        assert time.monotonic() - started < 5

    def test_signal_group_of_a_gone_process_is_no_error(self, tmp_path: Path) -> None:
        process = procctl.spawn(["true"], tmp_path / "log")
        process.wait(timeout=10)
        procctl.signal_group(process.pid, signal.SIGTERM)


class TestWaitingAndFiles:
    def test_wait_for_is_true_once_ready_false_on_timeout(self) -> None:
        calls: list[int] = []
        assert procctl.wait_for(
            lambda: len(calls) >= 2, timeout=5, interval=0, check=lambda: calls.append(1)
        )
        assert 2 == len(calls)
        assert not procctl.wait_for(lambda: False, timeout=0.05, interval=0.01)

    def test_check_raises_to_give_up(self) -> None:
        def gone() -> None:
            raise RuntimeError("exited")

        with pytest.raises(RuntimeError, match="exited"):
            procctl.wait_for(lambda: True, timeout=5, interval=0, check=gone)

    def test_json_round_trip_and_unreadable_files(self, tmp_path: Path) -> None:
        path = tmp_path / "state.json"
        assert procctl.read_json(path) is None
        procctl.write_json(path, {"pid": 1, "ports": [2, 3]})
        assert {"pid": 1, "ports": [2, 3]} == procctl.read_json(path)
        assert path.read_text().endswith("]\n}\n")
        assert not (tmp_path / "state.tmp").exists()
        path.write_text("{half")
        assert procctl.read_json(path) is None

    def test_tail_of_a_missing_log(self, tmp_path: Path) -> None:
        log = tmp_path / "nothing.log"
        assert f"(no log at {log})" == procctl.tail(log)
        assert "(no log)" == procctl.tail(log, missing="(no log)")
        log.write_text("".join(f"line {i}\n" for i in range(30)))
        assert "line 28\nline 29" == procctl.tail(log, 2)
