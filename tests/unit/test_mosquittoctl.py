"""deploy/mqtt/mosquittoctl.py's configuration: what the bridge's guarantees rest on."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "mqtt"))

import mosquittoctl


class TestConfig:
    def test_loopback_listener_and_persistence(self, tmp_path: Path) -> None:
        """One listener on 127.0.0.1, persistence in the data dir, queues that do not drop."""
        lines = mosquittoctl.config_text(tmp_path, 21883, with_passwords=False).splitlines()
        assert "listener 21883 127.0.0.1" in lines
        assert "persistence true" in lines
        assert f"persistence_location {tmp_path / 'data'}/" in lines
        assert f"max_queued_messages {mosquittoctl.MAX_QUEUED_MESSAGES}" in lines
        assert "allow_anonymous true" in lines

    def test_users_turn_anonymous_access_off(self, tmp_path: Path) -> None:
        """With users, only they may connect (the password file in the data dir)."""
        lines = mosquittoctl.config_text(tmp_path, 1, with_passwords=True).splitlines()
        assert "allow_anonymous false" in lines
        assert f"password_file {tmp_path / 'passwords'}" in lines

    def test_not_running_without_state(self, tmp_path: Path) -> None:
        """status of a data dir nothing was started from is None; stop is a no-op."""
        assert mosquittoctl.status(tmp_path) is None
        assert not mosquittoctl.stop(tmp_path)
