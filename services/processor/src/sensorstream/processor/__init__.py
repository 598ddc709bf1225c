"""Sensorstream processor: consumes sensor readings, windows them, raises alerts,
dead-letters what it cannot process, and commits only what is done.

Public surface: the ``sensorstream-processor`` CLI, :class:`ProcessorSettings`, the
``sensorstream_processor_*`` metrics and the handler API in
:mod:`sensorstream.processor.handler`. Everything in ``_modules`` is private.
"""

from .handler import Handler, HandlerContext
from .settings import ProcessorSettings

__all__ = ["Handler", "HandlerContext", "ProcessorSettings"]
