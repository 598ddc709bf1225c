"""The device simulator's bad payloads are refused for the reasons it announces."""

from __future__ import annotations

import pytest

from sensorstream.bridge._devices import POISON_KINDS, poison_payload
from sensorstream.schema import Rejection, decode_reading


class TestPoison:
    @pytest.mark.parametrize("i", range(len(POISON_KINDS)))
    def test_each_kind_is_refused_with_its_reason(self, i: int) -> None:
        """The decoder's reason for the i-th payload is the one the simulator names."""
        reason, payload = poison_payload(i)
        decoded = decode_reading(payload)
        assert isinstance(decoded, Rejection)
        assert reason == decoded.reason.value

    def test_the_kinds_cycle(self) -> None:
        """Payload i and i + len(kinds) have the same reason."""
        assert poison_payload(1)[0] == poison_payload(1 + len(POISON_KINDS))[0]
