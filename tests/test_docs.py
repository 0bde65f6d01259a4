"""The design lives in the repository: every citation points at a section of docs/design.md that
exists, and nothing cites the design file that used to sit outside the clone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN_DOC = REPO / "docs" / "design.md"
SKIPPED = {".git", ".venv", "cache", "runs", "models", "data", "__pycache__", "node_modules"}
OLD_DESIGN = re.compile(r"\b" + "DES" + r"IGN\b")  # split: this file would match itself
CITATION = re.compile(r"docs/design\.md((?:\s*(?:,|and)?\s*§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,3} §(\d+(?:\.\d+)*) ", re.MULTILINE)


def _sources() -> list[Path]:
    return sorted(
        p
        for p in REPO.rglob("*")
        if p.suffix in (".py", ".md") and p.is_file() and not SKIPPED & set(p.relative_to(REPO).parts)
    )


def _sections() -> set[str]:
    return set(HEADING.findall(DESIGN_DOC.read_text(encoding="utf-8")))


def test_nothing_cites_a_design_file_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OLD_DESIGN.search(line)
    ]
    assert not hits, "cite docs/design.md §N instead:\n" + "\n".join(hits)


def test_every_cited_section_of_docs_design_md_exists() -> None:
    sections = _sections()
    assert {"1", "7.4", "14"} <= sections, sorted(sections)
    missing = [
        f"{path.relative_to(REPO)}: §{number}"
        for path in _sources()
        for cited in CITATION.findall(path.read_text(encoding="utf-8"))
        for number in SECTION.findall(cited)
        if number not in sections
    ]
    assert not missing, "no such heading in docs/design.md:\n" + "\n".join(missing)


def test_the_design_refers_only_to_its_own_sections() -> None:
    sections = _sections()
    text = HEADING.sub("", DESIGN_DOC.read_text(encoding="utf-8"))
    missing = sorted({n for n in SECTION.findall(text) if n not in sections})
    assert not missing, f"docs/design.md refers to sections it lacks: {missing}"
