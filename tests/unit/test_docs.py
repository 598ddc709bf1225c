"""The documentation stays true to the code: settings tables, links."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
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
