"""Settings every unit test shares.

Hypothesis runs with no per-example deadline: its 200 ms default measures wall time, so
on a loaded two-core CI machine a slow example fails a property that holds. Each test's
``max_examples`` still bounds its work, and pytest-timeout a hung one.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("sensorstream", deadline=None)
settings.load_profile("sensorstream")
