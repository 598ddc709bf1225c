"""The CLI's integration tests drive a real processor: reuse the processor tests' helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "processor"))
