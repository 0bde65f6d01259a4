"""The design and the material notes live in the repository: every citation points at a section
of docs/design.md or docs/material.md that exists, and nothing cites the files that used to sit
outside the clone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN_DOC = REPO / "docs" / "design.md"
DOCS = {"design": DESIGN_DOC, "material": REPO / "docs" / "material.md"}
SKIPPED = {".git", ".venv", "cache", "runs", "models", "data", "__pycache__", "node_modules"}
# Split: this file would match itself.
OLD_DOCS = re.compile(r"\b(?:" + "DES" + "IGN|" + "MATER" + r"IAL)\.md\b|\b" + "DES" + r"IGN\b")
CITATION = re.compile(r"docs/(design|material)\.md((?:\s*(?:,|and)?\s*§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,3} §(\d+(?:\.\d+)*) ", re.MULTILINE)


def _sources() -> list[Path]:
    return sorted(
        p
        for p in REPO.rglob("*")
        if p.suffix in (".py", ".md") and p.is_file() and not SKIPPED & set(p.relative_to(REPO).parts)
    )


def _sections(doc: Path = DESIGN_DOC) -> set[str]:
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def test_nothing_cites_a_design_file_outside_the_repository() -> None:
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OLD_DOCS.search(line)
    ]
    assert not hits, "cite docs/design.md §N or docs/material.md §N instead:\n" + "\n".join(hits)


def test_every_cited_section_of_the_docs_exists() -> None:
    sections = {name: _sections(doc) for name, doc in DOCS.items()}
    assert {"1", "7.4", "14"} <= sections["design"] and {"1", "2", "3"} <= sections["material"]
    missing = [
        f"{path.relative_to(REPO)}: docs/{doc}.md §{number}"
        for path in _sources()
        for doc, cited in CITATION.findall(path.read_text(encoding="utf-8"))
        for number in SECTION.findall(cited)
        if number not in sections[doc]
    ]
    assert not missing, "no such heading:\n" + "\n".join(missing)


def test_the_design_refers_only_to_its_own_sections() -> None:
    sections = _sections()
    text = HEADING.sub("", DESIGN_DOC.read_text(encoding="utf-8"))
    missing = sorted({n for n in SECTION.findall(text) if n not in sections})
    assert not missing, f"docs/design.md refers to sections it lacks: {missing}"
