"""Local multiple-choice sets built from held-out text and packaged data (no benchmark data ships
in a package that installs here; see docs/material.md §3), with a fixed seed, written as JSONL plus an
lm-evaluation-harness task YAML each, so that `lm_eval --include_path DIR` runs them offline.

Construction (every choice is a real string from the same domain; the gold is never equal to a
distractor; distractors are distinct; the gold's position is drawn uniformly):
- **cloze_<domain>** (HellaSwag / StoryCloze style): each held-out passage (a corpus chunk) is
  cut into consecutive windows of ≈ `context_chars` characters of context followed by ≈
  `continuation_chars` of gold continuation; every cut falls at a single space inside a line, so
  every choice starts with " " and the seam gives nothing away. Distractors are the continuations
  of windows of *other* held-out documents of the domain (of the same document only when the
  domain has too few). Windows are taken round-robin over documents in a seeded order, so items
  spread over documents.
- **math_answer**: "Question: Q\\nAnswer:" against " A" for the question's own answer and answers of
  other held-out questions of the same module (mathematics_dataset module where the document id
  names it) and the same answer kind (integer, decimal, fraction, boolean, expression, other);
  a distractor in one variable is rewritten in the gold's variable (`rename_variable`).
- **humaneval**: a HumanEval prompt against its canonical solution and other problems' canonical
  solutions.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_schemas.atomic import atomic_open
from stages.evaluate.multiple_choice import ACCURACY_METRICS, ChoiceItem

LM_EVAL_PREFIX = "polyfuse_"  # lm-eval ships its own `humaneval`; ours must not shadow it


@dataclass(frozen=True)
class Passage:
    """A held-out corpus sample."""

    sample_id: str
    doc_id: str
    text: str


def _order(seed: int, task: str, key: str) -> str:
    """Stable pseudo-random sort key (independent of Python's hash seed)."""
    return hashlib.sha256(f"{seed}\x00{task}\x00{key}".encode()).hexdigest()


_SEAM = re.compile(r"(?<=\S) (?=\S)")


def _cut_after(text: str, start: int) -> int | None:
    """First index ≥ start holding a single space between two non-space characters."""
    match = _SEAM.search(text, start)
    return match.start() if match else None


@dataclass(frozen=True)
class ClozeWindow:
    """One context → continuation cut of a passage."""

    item_id: str
    doc_id: str
    context: str
    continuation: str


def cloze_windows(passage: Passage, context_chars: int, continuation_chars: int) -> list[ClozeWindow]:
    """Consecutive non-overlapping windows of a passage, each ≈ context_chars of context then
    ≈ continuation_chars of continuation, every cut at a single space inside a line; window k+1
    starts at the word after window k's continuation."""
    windows, start = [], 0
    while (first := _cut_after(passage.text, start + context_chars)) is not None:
        second = _cut_after(passage.text, first + continuation_chars)
        if second is None:
            break
        context, continuation = passage.text[start:first], passage.text[first:second]
        windows.append(
            ClozeWindow(f"{passage.sample_id}@{len(windows)}", passage.doc_id, context, continuation)
        )
        start = second + 1
    return windows


def _spread_over_documents(windows: Iterable[ClozeWindow], seed: int, task: str) -> list[ClozeWindow]:
    """Seeded order, round-robin over documents: the k-th window of every document before the
    (k+1)-th of any."""
    by_doc: dict[str, list[ClozeWindow]] = {}
    for w in sorted(windows, key=lambda w: _order(seed, task, w.item_id)):
        by_doc.setdefault(w.doc_id, []).append(w)
    docs = sorted(by_doc, key=lambda d: _order(seed, task, d))
    rounds = max((len(v) for v in by_doc.values()), default=0)
    return [by_doc[d][k] for k in range(rounds) for d in docs if k < len(by_doc[d])]


def _draw_item(
    rng: random.Random, item_id: str, context: str, gold: str, pool: Sequence[str], n_choices: int
) -> ChoiceItem | None:
    """Gold plus n_choices − 1 distinct distractors drawn from pool (never equal to the gold)."""
    # Keyed by the stripped text: two choices that differ only in whitespace count as one.
    distinct = {c.strip(): c for c in sorted(pool)}
    distinct.pop(gold.strip(), None)
    candidates = sorted(distinct.values())
    if len(candidates) < n_choices - 1:
        return None
    choices = rng.sample(candidates, n_choices - 1)
    position = rng.randrange(n_choices)
    choices.insert(position, gold)
    return ChoiceItem(item_id, context, tuple(choices), position)


def cloze_items(
    passages: Sequence[Passage],
    task: str,
    *,
    n_items: int,
    n_choices: int,
    context_chars: int,
    continuation_chars: int,
    seed: int,
) -> list[ChoiceItem]:
    """Cloze items of one domain's held-out passages (module docstring)."""
    windows = [w for p in passages for w in cloze_windows(p, context_chars, continuation_chars)]
    rng = random.Random(_order(seed, task, "draw"))
    items = []
    for w in _spread_over_documents(windows, seed, task):
        if len(items) == n_items:
            break
        other_docs = [v.continuation for v in windows if v.doc_id != w.doc_id]
        same_doc = [v.continuation for v in windows if v.doc_id == w.doc_id and v is not w]
        pool = other_docs if len(set(other_docs)) >= n_choices - 1 else other_docs + same_doc
        item = _draw_item(rng, w.item_id, w.context, w.continuation, pool, n_choices)
        if item is not None:
            items.append(item)
    return items


_QA = re.compile(r"Question:\s*(?P<q>.+?)\s*\nAnswer:[ \t]*(?P<a>[^\n]+)", re.DOTALL)


def question_answers(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a math document written as "Question: …\\nAnswer: …"."""
    return [(m["q"].strip(), m["a"].strip()) for m in _QA.finditer(text) if m["a"].strip()]


def answer_kind(answer: str) -> str:
    """Coarse type of an answer, so that distractors are not told apart by their form."""
    if re.fullmatch(r"-?\d+", answer):
        return "integer"
    if re.fullmatch(r"-?\d*\.\d+", answer):
        return "decimal"
    if re.fullmatch(r"-?\d+/\d+", answer):
        return "fraction"
    if answer in ("True", "False"):
        return "boolean"
    if re.search(r"[a-zA-Z]", answer) and re.search(r"[\d*+^/()-]", answer):
        return "expression"
    return "other"


def module_of(doc_id: str) -> str:
    """The generator module a math document id names (``algebra__linear_1d-00003`` →
    ``algebra__linear_1d``); empty when the id is a bare index."""
    return re.sub(r"[-_:./#]*\d+$", "", doc_id)


_VARIABLE = re.compile(r"\b[a-z]\b")


def rename_variable(answer: str, gold: str) -> str:
    """``answer`` written in the gold's variable when each has exactly one single-letter variable:
    `(r - 9)*(r - 2)` against gold `(s - 17)*(s - 1)` becomes `(s - 9)*(s - 2)`, so the letter
    the question names does not give the gold away."""
    mine, theirs = set(_VARIABLE.findall(answer)), set(_VARIABLE.findall(gold))
    if len(mine) == 1 and len(theirs) == 1:
        return _VARIABLE.sub(theirs.pop(), answer)
    return answer


def math_answer_items(
    passages: Sequence[Passage], *, n_items: int, n_choices: int, seed: int
) -> list[ChoiceItem]:
    """Question → answer items from held-out math passages (module docstring)."""
    questions = []
    for p in passages:
        for k, (q, a) in enumerate(question_answers(p.text)):
            questions.append((f"{p.sample_id}#{k}", q, a, (module_of(p.doc_id), answer_kind(a))))
    by_group: dict[tuple[str, str], list[str]] = {}
    for _, _, a, group in questions:
        by_group.setdefault(group, []).append(f" {a}")
    rng = random.Random(_order(seed, "math_answer", "draw"))
    items = []
    for item_id, q, a, group in sorted(questions, key=lambda x: _order(seed, "math_answer", x[0])):
        if len(items) == n_items:
            break
        pool = [rename_variable(other, a) for other in by_group[group]]
        item = _draw_item(rng, item_id, f"Question: {q}\nAnswer:", f" {a}", pool, n_choices)
        if item is not None:
            items.append(item)
    return items


def humaneval_items(problems: Sequence[dict], *, n_items: int, n_choices: int, seed: int) -> list[ChoiceItem]:
    """HumanEval prompt → its canonical solution against other problems' solutions."""
    pool = [p["canonical_solution"] for p in problems]
    rng = random.Random(_order(seed, "humaneval", "draw"))
    items = []
    for p in sorted(problems, key=lambda p: _order(seed, "humaneval", p["task_id"])):
        if len(items) == n_items:
            break
        item = _draw_item(rng, p["task_id"], p["prompt"], p["canonical_solution"], pool, n_choices)
        if item is not None:
            items.append(item)
    return items


def write_task(
    directory: Path, task: str, items: Sequence[ChoiceItem], *, data_dir: Path | None = None
) -> Path:
    """Write ``task.jsonl`` and its lm-eval task file ``task.yaml`` into ``directory``; return the
    JSONL path. The YAML names the JSONL by absolute path in ``data_dir`` (default: ``directory``;
    a set built in a temporary directory names its final place)."""
    data = Path(directory) / f"{task}.jsonl"
    with atomic_open(data) as f:
        for item in items:
            record = {"item_id": item.item_id, "context": item.context, "choices": list(item.choices)}
            f.write(json.dumps({**record, "gold": item.gold}, ensure_ascii=False) + "\n")
    spec = {
        "task": f"{LM_EVAL_PREFIX}{task}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_dir or directory).resolve() / data.name)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        # Field names, not Jinja templates: a template would drop a context's trailing newline.
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        # Choices carry their own leading whitespace.
        "target_delimiter": "",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ACCURACY_METRICS
        ],
        "metadata": {"version": 1},
    }
    with atomic_open(directory / f"{task}.yaml") as f:
        yaml.safe_dump(spec, f, sort_keys=False, allow_unicode=True)
    return data


def read_task(path: Path) -> list[ChoiceItem]:
    """Items of a task JSONL written by ``write_task``."""
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            items.append(ChoiceItem(r["item_id"], r["context"], tuple(r["choices"]), int(r["gold"])))
    return items
