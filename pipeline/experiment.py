"""``polyfuse experiment``: the paper's comparison on one set of cached teacher shards.

    extract (every teacher once; finished caches are found, not redone)
       │
       ├─► distill the same student with each method ──► runs/<name>/methods/<method>/export
       │   (a method whose export exists is not trained again when its settings and cache keys
       │   match, and refused with the fix when not; one with checkpoints resumes)
       ▼
    evaluate the target before fusion, each teacher with real weights, each export
       (scores cached per model: a rerun scores only new exports)   runs/<name>/eval/
       ▼
    report: table (rows = methods), paired Δ against the target and `none`, KI and its
    reduction, gate weights per teacher and domain, plots           runs/<name>/report/

Every method reads the config's `distill` section (steps, batch, λ, β, τ …) and changes only what
its row of `METHODS` (pipeline/methods.py) names, so the methods differ in the fusion rule alone.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from data_schemas.atomic import atomic_open, write_json_atomic
from pipeline.config import Config
from pipeline.evaluation import NONE_LABEL, PAIRED_NOTE, evaluate_from_config
from pipeline.methods import BASELINES, METHODS, PROPOSED, Method, method_teachers
from stages.distill.model_card import heldout_frame, write_model_card
from stages.distill.settings import canonical_strategy
from stages.evaluate.interference import Interference, interference_reduction
from stages.evaluate.paired_delta import MEAN_BPB, PairedDelta, compare_to_references, comparisons_to_dict
from stages.evaluate.report import comparison_sections, experiment_markdown, results_frame
from stages.evaluate.unit_score import UnitScore

logger = logging.getLogger(__name__)


TARGET_LABEL = "target"
REPORT_METRICS = ("bpb", "acc_norm")
"""The report's units: bits per byte per domain and length-normalised accuracy per task."""


@dataclass(frozen=True)
class ExperimentResult:
    report_dir: Path
    markdown: str
    """``report.md``."""
    results: dict
    """``results.json``."""


def experiment_dir(config: Config) -> Path:
    return Path(config.runs_dir) / config.name


def method_config(config: Config, method: Method) -> Config:
    """The config one method trains with: its own run folder, the strategy and its overrides."""
    distill = dataclasses.replace(config.distill, strategy=method.strategy, **dict(method.overrides))
    distill.check()
    return dataclasses.replace(
        config,
        name=method.folder,
        runs_dir=str(experiment_dir(config) / "methods"),
        teachers=method_teachers(config, method),
        distill=distill,
    )


def choose_methods(names: list[str] | None, teacher_names: list[str]) -> list[Method]:
    """The methods to run, in table order (`single:NAME` rows of other teachers after those of
    `METHODS`). ``None``: the default comparison, every row that is not an ablation and whose
    `single:` teacher is among ``teacher_names``."""
    if names is None:
        return [m for m in METHODS.values() if not m.ablation and _teachers_exist(m, teacher_names)]
    names = [canonical_strategy(n) for n in names]  # `authors` is the method random_gate
    singles = {f"single:{t}" for t in teacher_names}
    unknown = [n for n in names if n not in METHODS and n not in singles]
    if unknown:
        choices = ", ".join([*(n for n in METHODS if not n.startswith("single:")), "single:NAME"])
        raise ValueError(
            f"unknown method(s) {unknown}: choose from {choices} (NAME: one of {', '.join(teacher_names)})"
        )
    chosen = [m for name, m in METHODS.items() if name in names]
    missing = [m for m in chosen if not _teachers_exist(m, teacher_names)]
    if missing:
        raise ValueError(
            f"method {missing[0].name} names a teacher the config lacks: use single:NAME with NAME one "
            f"of {', '.join(teacher_names)}"
        )
    extra = [
        Method(n, n, about=f"distillation from {n.split(':', 1)[1]} alone") for n in names if n not in METHODS
    ]
    return chosen + extra


def _teachers_exist(method: Method, teacher_names: list[str]) -> bool:
    return not method.strategy.startswith("single:") or method.strategy.split(":", 1)[1] in teacher_names


def export_changes(sub: Config, export: Path) -> list[str]:
    """How the training of ``export`` (its config.yaml) differs from what ``sub`` would train, as
    ``"name old → new"``: every ``distill`` field a resume may not change, the seed, the student
    and teachers (hub ids pinned) and the corpus and teacher cache keys. Empty: the export is
    ``sub``'s result."""
    from pipeline.distillation import export_config_yaml, resolve_stream_inputs
    from stages.distill.run_state import resume_changes

    saved = export / "config.yaml"
    if not saved.is_file():
        return [f"{saved} (none: the export does not say how it was trained)"]
    # Both sides resolve `auto` the same way (export_config_yaml).
    expected = export_config_yaml(sub, resolve_stream_inputs(sub, checksums=False))
    return resume_changes(_training_identity(saved.read_text(encoding="utf-8")), _training_identity(expected))


SAME_WEIGHTS_SETTINGS = frozenset({"zero_stage"})
"""``distill`` fields that a resume may not change (the checkpoint's layout depends on them) but that
do not change the trained weights, so a finished export stands for every value of them: ZeRO's
stages lay out one optimizer differently. Measured on one rank: a three-epoch curve of SmolLM2
(exact-token KD) trained at stage 0 and at stage 2 scores the held-out documents at most 4.5e-7
bits per byte apart, where another order of the same samples moves it by 1e-3
(bench/results/xeon_amx/zero0_parity; tests/bench/test_train_parity.py on the tiny world)."""


def _training_identity(config_yaml: str) -> dict[str, Any]:
    """What of an export's config.yaml decides the trained weights (``export_changes``)."""
    import yaml

    from stages.distill.run_state import RESUMABLE_SETTINGS

    data = yaml.safe_load(config_yaml) or {}
    keys = dict(
        line.removeprefix("# ").split(": ", 1)
        for line in config_yaml.splitlines()
        if line.startswith(("# corpus_key: ", "# teacher_key "))
    )
    ignored = RESUMABLE_SETTINGS | SAME_WEIGHTS_SETTINGS
    distill = {f"distill.{k}": v for k, v in data.get("distill", {}).items() if k not in ignored}
    return {**keys, **distill, **{k: data.get(k) for k in ("seed", "student", "teachers")}}


def refuse_stale_exports(config: Config, methods: list[Method]) -> None:
    """``ValueError`` listing every method whose finished export was trained otherwise than this
    experiment would train it, with the command that clears them (docs/reliability.md: an export
    is reused only when its settings and cache keys match)."""
    stale = {}
    for method in methods:
        sub = method_config(config, method)
        export = Path(sub.runs_dir) / sub.name / "export"
        if (export / "config.json").is_file() and (changes := export_changes(sub, export)):
            stale[method.name] = (export.parent, changes)
    if stale:
        listed = "; ".join(
            f"{name} ({', '.join(changes[:3])}{' …' if len(changes) > 3 else ''})"
            for name, (_, changes) in stale.items()
        )
        folders = " ".join(str(folder) for folder, _ in stale.values())
        raise ValueError(
            f"experiment {config.name}: finished method(s) were trained with other settings or data than "
            f"this run asks for: {listed}: train them again with `rm -rf {folders}` and rerun, or give "
            "this experiment another name (name=...)"
        )


def train_method(config: Config, method: Method, *, progress: bool = True) -> Path:
    """The method's export folder: found when it exists (``run_experiment`` has refused an export
    trained otherwise, ``refuse_stale_exports``), else trained (resumed from the last complete
    checkpoint when the run was interrupted)."""
    from pipeline.distillation import distill_from_config
    from stages.distill.run_state import complete_checkpoint_tags

    sub = method_config(config, method)
    run_dir = Path(sub.runs_dir) / sub.name
    export = run_dir / "export"
    # The export folder is renamed into place whole, after training: it existing means done.
    if (export / "config.json").is_file():
        logger.info("method %s: trained already (%s)", method.name, export)
        return export
    resume = bool(complete_checkpoint_tags(run_dir / "checkpoints"))
    logger.info("method %s: %s", method.name, "resuming" if resume else "training")
    run = distill_from_config(sub, resume=resume, progress=progress)
    # The destroyed engine (recipe cleanup) still sits in reference cycles: free its ≈ 2 GB before
    # the next method loads (measured: without destroy() + collect, every method's engine stayed
    # alive and the driver's RSS grew by ≈ 2 GB per method).
    gc.collect()
    if run.export_dir is None:
        raise RuntimeError(f"method {method.name}: distill stopped before exporting; rerun to resume it")
    # The export is the method's result; its checkpoints (student + optimizer states, ≈ 2 GB each
    # for a 135M student) only served a resume, and ten methods' worth would fill a small disk.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return run.export_dir


def evaluated_models(config: Config, exports: dict[str, Path]) -> tuple[list[Path], list[str]]:
    """(folders, labels): the target first, then teachers that are real model folders (not the
    target itself, not tokenizer-only folders), then each method's export."""
    target = Path(config.student.path)
    folders, labels = [target], [TARGET_LABEL]
    for teacher in config.teachers if config.evaluate.teachers else ():
        folder = Path(teacher.path)
        if (folder / "config.json").is_file() and folder.resolve() != target.resolve():
            folders.append(folder)
            labels.append(f"teacher:{teacher.name}")
    for name, export in exports.items():
        folders.append(export)
        labels.append(name)
    return folders, labels


@dataclass(frozen=True)
class TrainScores:
    """Per-sample teacher data of the train split as the loader builds it for the gate: features,
    bits per byte and the span log-likelihoods of the gate objective and diagnostics."""

    teacher_names: list[str]
    domains: list[str]
    features: np.ndarray
    """[N, K, F] float32 gate features (0 where absent); `[..., 0]` is the teacher's score."""
    present: np.ndarray
    """[N, K] bool."""
    bits_per_byte: np.ndarray
    """[N, K] float32 each teacher's stored bits per byte (+inf where absent)."""
    span_loglik: np.ndarray
    """[N, K, S] float32 log-likelihoods of the common-boundary spans (0 on padding)."""
    span_mask: np.ndarray
    """[N, S] bool."""
    span_bytes: np.ndarray
    """[N] int64 UTF-8 bytes the spans cover."""

    @property
    def scores(self) -> np.ndarray:
        """[N, K] float32 per-sample teacher scores, what the fixed rules rank by."""
        return np.ascontiguousarray(self.features[..., 0])


def load_train_scores(config: Config, features: str) -> TrainScores:
    """Read every teacher's rows over the train split and compute, as the loader does, the gate
    features, bits per byte and span log-likelihoods (no student, no alignment)."""
    from data_schemas.teacher_shard import decode_table, read_teacher_shard
    from pipeline.distillation import resolve_stream_inputs
    from stages.distill.loader import feature_count, present_span_logliks, teacher_features

    inputs = resolve_stream_inputs(config, checksums=False)
    names = [t.name for t in inputs.teachers]
    sample_ids, domains, texts = [], [], []
    for shard in inputs.corpus_shards:
        table = pq.read_table(shard.path, columns=["sample_id", "domain", "text"])
        sample_ids += table["sample_id"].to_pylist()
        domains += table["domain"].to_pylist()
        texts += table["text"].to_pylist()
    index = {sid: i for i, sid in enumerate(sample_ids)}
    values = np.zeros((len(sample_ids), len(names), feature_count(features)), dtype=np.float32)
    rows: list[list] = [[None] * len(names) for _ in sample_ids]
    for k, teacher in enumerate(inputs.teachers):
        for path in teacher.shards.values():
            for sample in decode_table(read_teacher_shard(path)):
                sample_values = teacher_features(sample, features)
                if np.isfinite(sample_values).all():  # else absent, as in the loader
                    i = index[sample.sample_id]
                    values[i, k], rows[i][k] = sample_values, sample
    spans = [present_span_logliks(teachers, text) for teachers, text in zip(rows, texts, strict=True)]
    width = max((ll.shape[1] for ll, _ in spans), default=0)
    span_loglik = np.zeros((len(sample_ids), len(names), width), np.float32)
    span_mask = np.zeros((len(sample_ids), width), bool)
    for i, (ll, _) in enumerate(spans):
        span_loglik[i, :, : ll.shape[1]], span_mask[i, : ll.shape[1]] = ll, True
    present = np.array([[t is not None for t in teachers] for teachers in rows], bool).reshape(
        values.shape[:2]
    )
    bits_per_byte = np.array(
        [[np.inf if t is None else t.bits_per_byte for t in teachers] for teachers in rows], np.float32
    ).reshape(values.shape[:2])
    span_bytes = np.array([size for _, size in spans], np.int64)
    return TrainScores(names, domains, values, present, bits_per_byte, span_loglik, span_mask, span_bytes)


def train_weights(method: Method, train: TrainScores, tau: float, export: Path) -> np.ndarray | None:
    """`[N, K]` fusion weights of the train split with the method's final gate (`export/gate.pt`) or
    fixed rule; None for `none` and `random_gate` (a random gate)."""
    import torch

    from stages.distill.gating import SelectionGate
    from stages.distill.loader import feature_count
    from stages.distill.strategies import parse_strategy, sample_weights

    if method.strategy in ("none", "random_gate") or not train.teacher_names:
        return None
    gate = None
    if method.strategy == "adaptive":
        saved = torch.load(export / "gate.pt", map_location="cpu", weights_only=True)
        # gate.pt records the feature kind it was trained on, hence F (export.py).
        gate = SelectionGate(len(train.teacher_names), feature_count(saved["features"]))
        gate.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        weights = sample_weights(
            parse_strategy(method.strategy, train.teacher_names),
            torch.from_numpy(train.scores),
            torch.from_numpy(train.present),
            features=torch.from_numpy(train.features),
            bits_per_byte=torch.from_numpy(train.bits_per_byte),
            gate=gate,
            tau=tau,
        )
    return weights.numpy()


def gate_weights_by_domain(
    method: Method, train: TrainScores, tau: float, export: Path
) -> dict[str, dict[str, float]]:
    """Mean fusion weight per teacher per domain over the train split (`train_weights`); empty for
    `none` and `random_gate`."""
    from stages.evaluate.training_summary import domain_weights

    weights = train_weights(method, train, tau, export)
    return {} if weights is None else domain_weights(train.domains, weights, train.teacher_names)


def gate_diagnostics_by_domain(train: TrainScores, weights: np.ndarray) -> dict[str, dict[str, float | int]]:
    """`gate_diagnostics` of `weights` (`[N, K]`) per domain of the train split and over all of it."""
    import torch

    from stages.distill.gate_diagnostics import gate_diagnostics

    domains = np.array(train.domains)
    groups = {**{d: domains == d for d in sorted(set(train.domains))}, "all": np.ones(len(domains), bool)}
    tensors = [
        torch.from_numpy(a)
        for a in (
            weights,
            train.span_loglik,
            train.span_mask,
            train.span_bytes,
            train.bits_per_byte,
            train.present,
        )
    ]
    return {
        group: gate_diagnostics(*(t[torch.from_numpy(rows)] for t in tensors), train.teacher_names)
        for group, rows in groups.items()
    }


def method_gate_report(
    config: Config, method: Method, export: Path, train_scores: dict[str, TrainScores]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float | int]]]:
    """(mean weight per domain and teacher, `gate_diagnostics_by_domain`) of one method's final
    weights; both empty for `none` and `random_gate`. ``train_scores`` caches the reads per feature kind."""
    sub = method_config(config, method)
    if method.strategy in ("none", "random_gate") or not config.teachers:
        return {}, {}
    train = _train_scores(config, sub.distill.gate_features, train_scores)
    weights = train_weights(method, train, sub.distill.tau, export)
    if weights is None:
        return {}, {}
    from stages.evaluate.training_summary import domain_weights

    return domain_weights(train.domains, weights, train.teacher_names), gate_diagnostics_by_domain(
        train, weights
    )


def _train_scores(config: Config, features: str, cache: dict[str, TrainScores]) -> TrainScores:
    if features not in cache:
        cache[features] = load_train_scores(config, features)
    return cache[features]


DIAGNOSTIC_COLUMNS = {
    "samples": "samples",
    "agreement": "agreement",
    "bpb/gate": "bpb gate",
    "bpb/best_single": "bpb best single",
    "bpb/oracle_teacher": "bpb oracle teacher",
    "bpb/oracle_mixture": "bpb oracle mixture",
}
"""`gate_diagnostics` keys shown per method and domain, and their column names."""


def diagnostics_frames(
    diagnostics: dict[str, dict[str, dict[str, float | int]]], teacher_names: list[str]
) -> list[tuple[str, Any]]:
    """The report's two gate-diagnostic tables: per method and domain, the agreement with the
    oracle teacher and the bits per byte of the method's mixture against the oracles; per domain,
    the oracles themselves (method-independent: taken from the first method that has them)."""
    rows = [
        {"method": name, "domain": domain, **{c: _rounded(d[k]) for k, c in DIAGNOSTIC_COLUMNS.items()}}
        for name, per_domain in diagnostics.items()
        for domain, d in per_domain.items()
    ]
    first = next((per_domain for per_domain in diagnostics.values() if per_domain), {})
    oracle_rows = [
        {
            "domain": domain,
            **{f"oracle teacher share {t}": _rounded(d[f"oracle_share/{t}"]) for t in teacher_names},
            **{f"EM mixture w {t}": _rounded(d[f"oracle_mixture_w/{t}"]) for t in teacher_names},
        }
        for domain, d in first.items()
    ]
    return [
        (
            "Gate against its oracles (train split, final weights; bits per byte on the teachers' spans)",
            _frame(rows),
        ),
        ("Oracles per domain (train split)", _frame(oracle_rows)),
    ]


def export_gate_diagnostics(export: Path) -> list[tuple[str, Any]]:
    """`polyfuse inspect EXPORT`: the gate diagnostics of an exported student's final weights over
    the train split, from the config it was trained with (`export/config.yaml`) and its
    `gate.pt`; run from the working directory of that config's relative paths."""
    from pipeline.config import load_config

    config = load_config(export / "config.yaml")
    method = Method(config.name, config.distill.strategy)
    if method.strategy in ("none", "random_gate") or len(config.teachers) < 2:
        raise ValueError(
            f"{export} was trained with strategy {method.strategy} and {len(config.teachers)} teacher(s): "
            "it has no fusion weights to diagnose; pass the export of a run that fuses two or more teachers"
        )
    train = load_train_scores(config, config.distill.gate_features)
    weights = train_weights(method, train, config.distill.tau, export)
    assert weights is not None  # every other strategy has weights
    return diagnostics_frames({method.name: gate_diagnostics_by_domain(train, weights)}, train.teacher_names)


def _rounded(value: float | int) -> float | int:
    return value if isinstance(value, int) else round(float(value), 4)


def run_experiment(
    config: Config, methods: list[str] | None = None, *, progress: bool = True, command: str | None = None
) -> ExperimentResult:
    """Extract, train every method, evaluate everything, write the report (module docstring).

    ``command``: the command line that reproduces the run, quoted in the report."""
    from pipeline.extraction import run_extraction
    from stages.distill.metrics import read_metrics
    from stages.evaluate import plots

    chosen = choose_methods(methods, [t.name for t in config.teachers])
    if config.teachers:
        run_extraction(config, progress=progress)
    refuse_stale_exports(config, chosen)  # before any method trains: a refusal costs no training
    exports = {m.name: train_method(config, m, progress=progress) for m in chosen}

    folders, labels = evaluated_models(config, exports)
    evaluation = evaluate_from_config(config, folders, target=folders[0], labels=labels)
    scores = {
        label: {u: UnitScore.from_dict(s) for u, s in entry["scores"].items()}
        for label, entry in evaluation.payload["models"].items()
    }
    ki = {label: v["count"] for label, v in evaluation.payload["interference"].items()}
    reductions = (
        interference_reduction(ki, PROPOSED, [b for b in BASELINES if b in ki]) if PROPOSED in ki else {}
    )

    report_dir = experiment_dir(config) / "report"
    train_scores: dict[str, TrainScores] = {}  # per gate feature: read once for all methods
    logs = {
        m.name: read_metrics(Path(method_config(config, m).runs_dir) / m.folder / "logs" / "metrics.jsonl")
        for m in chosen
    }
    gate_reports = {m.name: method_gate_report(config, m, exports[m.name], train_scores) for m in chosen}
    gate_weights = {name: weights for name, (weights, _) in gate_reports.items()}
    diagnostics = {name: per_domain for name, (_, per_domain) in gate_reports.items() if per_domain}
    gate_rows = [
        {"method": name, "domain": domain, **{t: round(w, 3) for t, w in per_teacher.items()}}
        for name, per_domain in gate_weights.items()
        for domain, per_teacher in per_domain.items()
    ]
    interference = {
        label: Interference(v["count"], tuple(v["worse_units"]), v["compared_units"])
        for label, v in evaluation.payload["interference"].items()
    }
    table = results_frame(scores, interference, metrics=REPORT_METRICS)
    references = [r for r in (TARGET_LABEL, NONE_LABEL) if r in scores]
    comparisons = compare_to_references(scores, references, REPORT_METRICS)
    for name, export in exports.items():  # every export's model card gets its held-out table
        write_model_card(export, heldout_frame(name, scores, comparisons, TARGET_LABEL, REPORT_METRICS))
    bpb = {
        label: {u.split("/", 1)[1]: (s.value, s.se) for u, s in per.items() if s.metric == "bpb"}
        for label, per in scores.items()
    }
    fused = [m.name for m in chosen if m.strategy != "none"]
    vs_none = comparisons.get(NONE_LABEL, {})
    figures = plots.draw_experiment_figures(
        report_dir,
        bpb,
        logs,
        proposed=PROPOSED,
        teachers=[t.name for t in config.teachers],
        fused=fused,
        deltas_vs_none={m.name: _bpb_deltas(vs_none[m.name]) for m in chosen if m.name in vs_none},
    )

    markdown = experiment_markdown(
        command=command or "polyfuse experiment --methods " + ",".join(m.name for m in chosen),
        table=table,
        reductions=reductions,
        method=PROPOSED,
        gate_table=_frame(gate_rows),
        diagnostics=[
            (t, f)
            for t, f in diagnostics_frames(diagnostics, [t.name for t in config.teachers])
            if f is not None
        ],
        plots=[(title, path.name) for title, path in figures],
        comparisons=comparison_sections(comparisons, TARGET_LABEL, REPORT_METRICS),
        notes=[
            "bpb: held-out bits per byte (lower is better) ± standard error, documents as observations. "
            "acc_norm: multiple-choice accuracy by log-likelihood, per-character normalised (lm-eval's), "
            "± lm-eval's standard error. These standard errors describe one model; compare models "
            "with the paired Δ tables. KI: units (domains, tasks) where a model is worse than the "
            "target by more than the paired standard error of the difference.",
            PAIRED_NOTE,
            "Methods: " + "; ".join(f"`{m.name}`: {m.about}" for m in chosen) + ".",
        ],
    )
    results = {
        "methods": {
            m.name: {"strategy": m.strategy, "overrides": dict(m.overrides), "about": m.about} for m in chosen
        },
        "scores": {
            label: {u: s.to_dict(with_observations=False) for u, s in per.items()}
            for label, per in scores.items()
        },
        "paired": comparisons_to_dict(comparisons),
        "interference": evaluation.payload["interference"],
        "reduction": {"method": PROPOSED, "against": reductions},
        "gate_weights": gate_weights,
        "gate_diagnostics": diagnostics,
        "final_metrics": {name: records[-1] if records else {} for name, records in logs.items()},
        "exports": {name: str(path) for name, path in exports.items()},
    }
    write_json_atomic(report_dir / "results.json", results)
    with atomic_open(report_dir / "report.md") as f:
        f.write(markdown)
    logger.info("report written to %s", report_dir / "report.md")
    return ExperimentResult(report_dir, markdown, results)


def _bpb_deltas(deltas: dict[str, PairedDelta]) -> dict[str, tuple[float, float]]:
    """domain (or `MEAN_BPB`) → (Δ, paired SE) of the bits-per-byte units of one comparison."""
    return {
        u.removeprefix("bpb/"): (d.delta, d.se)
        for u, d in deltas.items()
        if u.startswith("bpb/") or u == MEAN_BPB
    }


def _frame(rows: list[dict]) -> Any:
    import polars as pl

    return pl.DataFrame(rows) if rows else None
