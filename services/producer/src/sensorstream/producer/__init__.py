"""The Sensorstream producer: a simulated sensor fleet writing readings to Kafka at a set rate.

The public surface is the ``sensorstream-producer`` CLI, :class:`ProducerSettings` and
the metrics named in :data:`METRIC_NAMES`; everything in ``_modules`` is private.
"""

from ._metrics import METRIC_NAMES
from .settings import ProducerSettings

__all__ = ["METRIC_NAMES", "ProducerSettings"]
