"""Node help pages are where ComfyUI's frontend looks first: it fetches
/extensions/<pack>/docs/<node_id>/<locale>.md and only on a 404 /extensions/<pack>/docs/<node_id>.md (frontend
1.27 NodeHelpService.fetchCustomNodeHelp), so every node ships docs/<node_id>/en.md (no 404 in English) and the
same text as docs/<node_id>.md (the page other locales fall back to)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "web" / "docs"


def node_ids() -> list[str]:
    ids = [
        m
        for f in sorted((REPO / "nodes").glob("*.py"))
        for m in re.findall(r'node_id="([A-Za-z0-9_]+)"', f.read_text(encoding="utf-8"))
    ]
    assert len(ids) == len(set(ids)) >= 10, ids
    return ids


def test_every_node_has_an_english_help_page_and_the_same_fallback():
    for node in node_ids():
        page, fallback = DOCS / node / "en.md", DOCS / f"{node}.md"
        assert page.is_file(), f"{page} missing: the help panel would 404 on it"
        assert fallback.is_file(), f"{fallback} missing: locales without a page would show no help"
        text = page.read_text(encoding="utf-8")
        assert text == fallback.read_text(encoding="utf-8"), f"{page} and {fallback} differ"
        assert text.lstrip().startswith("#") and len(text) > 200, f"{page}: not a help page"


def test_no_page_for_a_node_that_does_not_exist():
    ids = set(node_ids())
    shipped = {p.stem for p in DOCS.glob("*.md")} | {p.name for p in DOCS.iterdir() if p.is_dir()}
    assert shipped <= ids, sorted(shipped - ids)
