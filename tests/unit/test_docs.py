"""The documentation stays true to the code: settings tables, metric names, links."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
from sensorstream.audit._metrics import AuditMetrics  # noqa: E402
from sensorstream.processor._metrics import ProcessorMetrics  # noqa: E402
from sensorstream.producer._metrics import ProducerMetrics  # noqa: E402

PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
sys.path.insert(0, str(DOCS))

import settings as settings_page  # noqa: E402  (docs/settings.py)

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    anchors = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


class TestSettingsPage:
    def test_settings_md_is_generated_from_the_models(self) -> None:
        """docs/settings.md equals what docs/settings.py renders (run it after a change)."""
        assert settings_page.render() == (DOCS / "settings.md").read_text()


def _exported(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        counter = family.type == "counter"
        names.add(family.name + ("_total" if counter else ""))
    return names


class TestMetricNames:
    @pytest.mark.parametrize(
        ("page", "metrics"),
        [
            ("processor.md", ProcessorMetrics),
            ("producer.md", ProducerMetrics),
            ("audit.md", AuditMetrics),
        ],
    )
    def test_every_metric_is_documented(self, page: str, metrics: type) -> None:
        """Each metric a service exports has a row in its page."""
        registry = CollectorRegistry()
        metrics(registry)
        text = (DOCS / page).read_text()
        assert [] == sorted(name for name in _exported(registry) if f"`{name}" not in text)


class TestLinks:
    @pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
    def test_relative_links_resolve(self, page: Path) -> None:
        """Every relative link points at a file that exists, and at a heading if it names one."""
        broken = []
        for target in _LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(target)
                continue
            if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(target)
        assert [] == broken
