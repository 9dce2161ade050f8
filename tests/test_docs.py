"""The documentation stands alone: every file in ``docs/`` is in its index, and nothing in the
repository points outside it (the team's notes beside the checkout are not part of it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {"build", "dist", "__pycache__", "_work"}
TEXT = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".cfg", ".c", ".json", ".sh", ""}
# paths of the workspace this repository was developed in, which a checkout does not have
OUTSIDE = re.compile(r"\.\./shared/|\bshared/(docs|data)/|/work/(shared|wt|main)\b")


def test_every_doc_is_in_the_index():
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+)\)", index))
    docs = {p.name for p in DOCS.glob("*.md") if p.name != "README.md"}
    assert docs <= linked, f"not in docs/README.md: {sorted(docs - linked)}"


def _files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        hidden = [p for p in rel.parts if p.startswith(".") and p not in (".ci", ".github")]
        if hidden or any(p in SKIP_DIRS for p in rel.parts[:-1]):
            continue  # git, caches, virtual environments
        if path.is_file() and path.suffix in TEXT and path.stat().st_size < 2_000_000:
            yield path


def test_nothing_points_outside_the_repository():
    found = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) and path != Path(__file__):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "references outside the repository:\n" + "\n".join(found)
