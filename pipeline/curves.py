"""``polyfuse curves``: learning curves of distillation arms where distillation is known to pay,
the data-limited regime (the same few samples repeated for several epochs).

    extract (every teacher once; finished caches are found)
       │
       ├─► each arm trains the same student on the same samples (the first `train_shards` corpus
       │   train shards, the ones every teacher covers) for `epochs` passes, an export after every
       │   epoch                                  runs/<name>/arms/<arm>-lr<lr>-e<epochs>-<dtype>/exports/
       ▼
    every epoch's export and the untrained student scored on the same held-out documents
       (scores cached per model)                                        runs/<name>/eval/
       ▼
    per arm and epoch: paired Δ bits per byte against the untrained student; each arm at its best
    epoch against `none` at its best; the curves with their paired error bars
                                        runs/<name>/report/curves.{md,json,png} (+ bench/results/)

An arm is a strategy and the distill fields it changes (`ARMS`); every other setting is the
config's, so the arms differ in what they distil alone (an ablation arm may also set its own
`lr`, which then names its folder, `arm_lr`, or leave out the teacher that is the student itself,
`methods.method_teachers`). Arms that name `{teacher}` use the
`--teacher` given (the strongest, by default the one with the lowest stored bits per byte).
A rerun trains nothing that is exported and scores nothing that is cached.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_schemas.atomic import atomic_open, write_json_atomic
from pipeline.config import Config
from pipeline.evaluation import evaluate_from_config
from pipeline.methods import Method, method_teachers
from stages.evaluate.paired_delta import MEAN_BPB, PairedDelta, compare_models
from stages.evaluate.unit_score import UnitScore

logger = logging.getLogger(__name__)

TARGET_LABEL = "untrained"


Arm = Method
"""One curve: a strategy and the distill fields it changes (the record of a comparison row);
`ablation` arms run only when named (`--arms`)."""


ARMS = {
    a.name: a
    for a in (
        Arm("none", "none", about="plain training (CLM) on the same samples"),
        Arm(
            "ce_chunk",
            "single:{teacher}",
            (("objective", "chunk"), ("lam", 0.5)),
            "CE + chunk-level likelihood matching (ALM) against {teacher}, λ = 0.5",
        ),
        Arm(
            "chunk",
            "single:{teacher}",
            (("objective", "chunk"), ("lam", 0.0)),
            "chunk-level likelihood matching alone against {teacher}",
        ),
        Arm(
            "ce_exact_token",
            "single:{teacher}",
            (("objective", "exact_token"), ("lam", 0.5), ("target", "residual")),
            "ablation: CE + exact-token KD from {teacher} (rows whose next token is the same string), λ = 0.5",
            ablation=True,
        ),
        Arm(
            "ce_chunk_gate",
            "adaptive",
            (("objective", "chunk"), ("lam", 0.5), ("gate_objective", "likelihood")),
            "CE + chunk matching against every teacher under the likelihood gate, λ = 0.5",
        ),
        Arm(
            "ce_chunk_gate_no_self",
            "adaptive",
            (("objective", "chunk"), ("lam", 0.5), ("gate_objective", "likelihood")),
            "ablation: `ce_chunk_gate` without the student's own model among the teachers",
            ablation=True,
            without_student=True,
        ),
        Arm(
            "ce_exact_token_gate",
            "adaptive",
            (
                ("objective", "exact_token"),
                ("lam", 0.5),
                ("target", "residual"),
                ("gate_objective", "likelihood"),
            ),
            "ablation: CE + exact-token KD from every teacher under the likelihood gate, λ = 0.5",
            ablation=True,
        ),
        Arm(
            "ce_exact_token_lr2e-4",
            "single:{teacher}",
            (("objective", "exact_token"), ("lam", 0.5), ("target", "residual"), ("lr", 2e-4)),
            "ablation: `ce_exact_token` at twice the learning rate (does the teacher's anchor let it learn faster?)",
            ablation=True,
        ),
        Arm(
            "ce_exact_token_lam0.75",
            "single:{teacher}",
            (("objective", "exact_token"), ("lam", 0.75), ("target", "residual")),
            "CE + exact-token KD from {teacher}, λ = 0.75 (the measured balance: README, Results)",
        ),
        Arm(
            "ce_exact_token_gate_lam0.75",
            "adaptive",
            (
                ("objective", "exact_token"),
                ("lam", 0.75),
                ("target", "residual"),
                ("gate_objective", "likelihood"),
            ),
            "ablation: CE + exact-token KD from every teacher under the likelihood gate, the student's own "
            "model among them, λ = 0.75",
            ablation=True,
        ),
        Arm(
            "ce_exact_token_gate_lam0.75_no_self",
            "adaptive",
            (
                ("objective", "exact_token"),
                ("lam", 0.75),
                ("target", "residual"),
                ("gate_objective", "likelihood"),
            ),
            "CE + exact-token KD from every teacher but the student's own model under the likelihood gate, "
            "λ = 0.75",
            without_student=True,
        ),
        Arm(
            "ce_chunk_no_sigma",
            "single:{teacher}",
            (("objective", "chunk"), ("lam", 0.5), ("chunk_space_threshold", None)),
            "ablation: CE + chunk matching without the σ correction",
            ablation=True,
        ),
        Arm(
            "ce_fusion",
            "single:{teacher}",
            (("objective", "fusion"), ("lam", 0.5), ("target", "residual")),
            "ablation: CE + the first-token vocabulary-map KD (residual target), λ = 0.5",
            ablation=True,
        ),
        Arm(
            "chunk_gate",
            "adaptive",
            (("objective", "chunk"), ("lam", 0.0), ("gate_objective", "likelihood")),
            "ablation: chunk matching alone against every teacher under the likelihood gate",
            ablation=True,
        ),
    )
}


@dataclass(frozen=True)
class Plan:
    """What every arm of one invocation shares."""

    epochs: int
    lr: float
    teacher: str
    train_shards: int
    steps_per_epoch: int
    dtype: str
    """The training dtype, resolved (`engine.resolve_dtype`): part of every arm's folder name."""
    seed: int = 0
    """The config's seed (the order of the samples in every epoch): in the folder name unless 0."""


def plan_curves(config: Config, *, epochs: int, lr: float | None, teacher: str | None) -> Plan:
    """The shared plan: the train shards every teacher covers, the steps of one pass over them."""
    from pipeline.distillation import resolve_stream_inputs

    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    names = [t.name for t in config.teachers]
    if not names:
        raise ValueError("learning curves compare distillation arms: the config needs `teachers:`")
    inputs = resolve_stream_inputs(config, checksums=False)
    covered = min(len(t.shards) for t in inputs.teachers)
    shards = min(covered, config.distill.train_shards or covered)
    samples = sum(s.rows for s in inputs.corpus_shards[:shards])
    per_step = config.distill.micro_batch_size * config.distill.grad_accum_steps
    if samples % per_step:
        raise ValueError(
            f"the {samples} samples of the first {shards} train shards are not a whole number of optimizer "
            f"steps of {per_step} samples: choose distill.micro_batch_size × grad_accum_steps dividing {samples}"
        )
    if teacher is None:
        teacher = strongest_teacher(inputs)
    elif teacher not in names:
        raise ValueError(f"--teacher {teacher!r} is not a configured teacher: use one of {', '.join(names)}")
    from stages.distill.engine import resolve_dtype

    lr = config.distill.lr if lr is None else lr
    dtype = resolve_dtype(config.distill.dtype)
    return Plan(epochs, lr, teacher, shards, samples // per_step, dtype, config.seed)


def strongest_teacher(inputs: Any) -> str:
    """The teacher with the lowest mean stored bits per byte over the samples it covers."""
    from data_schemas.teacher_shard import decode_table, read_teacher_shard

    means = {}
    for source in inputs.teachers:
        values = [
            s.bits_per_byte for p in source.shards.values() for s in decode_table(read_teacher_shard(p))
        ]
        means[source.name] = sum(values) / max(len(values), 1)
    return min(means, key=means.__getitem__)


def arm_lr(arm: Arm, plan: Plan) -> float:
    """The arm's peak learning rate: its own where it sets `lr` (an lr ablation), else the plan's."""
    return dict(arm.overrides).get("lr", plan.lr)


def arm_folder(arm: Arm, plan: Plan) -> str:
    """The arm's run folder: its settings that vary between invocations are in the name, so a run
    with another learning rate, length, dtype or seed never reuses this one's exports (seed 0, the
    default, is left out of the name)."""
    seed = f"-seed{plan.seed}" if plan.seed else ""
    return f"{arm.name}-lr{arm_lr(arm, plan):g}-e{plan.epochs}-{plan.dtype}{seed}"


def arm_config(config: Config, arm: Arm, plan: Plan) -> Config:
    """The config an arm trains with: its folder, strategy and overrides, the plan's schedule."""
    overrides = dict(arm.overrides)
    overrides["lr"] = arm_lr(arm, plan)
    distill = dataclasses.replace(
        config.distill,
        strategy=arm.strategy.format(teacher=plan.teacher),
        dtype=plan.dtype,
        train_shards=plan.train_shards,
        max_steps=plan.epochs * plan.steps_per_epoch,
        export_every=plan.steps_per_epoch,
        checkpoint_every=plan.steps_per_epoch,
        **overrides,
    )
    distill.check()
    return dataclasses.replace(
        config,
        name=arm_folder(arm, plan),
        runs_dir=str(curves_dir(config) / "arms"),
        teachers=method_teachers(config, arm),
        distill=distill,
    )


def curves_dir(config: Config) -> Path:
    return Path(config.runs_dir) / config.name


def train_arm(config: Config, arm: Arm, plan: Plan, *, progress: bool = True) -> list[Path]:
    """The arm's epoch exports, in order: found when its final export exists, else trained (resumed
    from its last checkpoint when interrupted). Records its wall time and the load beside it."""
    from pipeline.distillation import distill_from_config
    from pipeline.experiment import export_changes
    from stages.distill.run_state import checkpoint_tags

    sub = arm_config(config, arm, plan)
    run_dir = Path(sub.runs_dir) / sub.name
    if (run_dir / "export" / "config.json").is_file() and (
        changes := export_changes(sub, run_dir / "export")
    ):
        raise ValueError(
            f"arm {arm.name}: {run_dir} was trained with other settings or data than this run asks for "
            f"({', '.join(changes[:3])}{' …' if len(changes) > 3 else ''}): train it again with "
            f"`rm -rf {run_dir}` and rerun, or give this experiment another name (name=...)"
        )
    if not (run_dir / "export" / "config.json").is_file():
        resume = (run_dir / "checkpoints").is_dir() and bool(checkpoint_tags(run_dir / "checkpoints"))
        logger.info("arm %s: %s", arm.name, "resuming" if resume else "training")
        load_before, started = os.getloadavg(), time.perf_counter()
        run = distill_from_config(sub, resume=resume, progress=progress)
        seconds = time.perf_counter() - started
        gc.collect()  # the destroyed engine's reference cycles (see pipeline/experiment.py)
        if run.export_dir is None:
            raise RuntimeError(f"arm {arm.name}: distill stopped before exporting; rerun to resume it")
        timing = {
            "seconds": seconds,
            "resumed": resume,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        }
        write_json_atomic(run_dir / "timing.json", timing)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    exports = sorted((run_dir / "exports").glob("step-*"))
    if len(exports) != plan.epochs:
        raise RuntimeError(
            f"arm {arm.name}: {len(exports)} epoch exports in {run_dir / 'exports'}, expected {plan.epochs}: "
            f"delete {run_dir} and rerun"
        )
    return exports


def choose_arms(names: list[str] | None) -> list[Arm]:
    if names is None:
        return [a for a in ARMS.values() if not a.ablation]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
    return [ARMS[n] for n in names]


def mean_bpb(scores: dict[str, UnitScore]) -> float:
    """The unweighted mean over domains of a model's held-out bits per byte."""
    values = [s.value for s in scores.values() if s.metric == "bpb"]
    return sum(values) / len(values)


def run_curves(
    config: Config,
    arms: list[str] | None = None,
    *,
    epochs: int = 4,
    lr: float | None = None,
    teacher: str | None = None,
    seeds: list[int] | None = None,
    progress: bool = True,
    results_dir: Path | None = None,
    command: str | None = None,
) -> dict:
    """Extract, train every arm, score every epoch, write the report (module docstring).

    ``seeds``: train every arm once per seed (the order of the samples; default: the config's seed)
    and add the comparisons over seeds (`seed_results`); the curves and tables of the first seed are
    the report's main ones. ``results_dir``: also write curves.{json,md,png} there (bench/results).
    Returns results.json."""
    from pipeline.extraction import run_extraction

    chosen = choose_arms(arms)
    seeds = list(dict.fromkeys(seeds or [config.seed]))
    run_extraction(config, progress=progress)
    configs = {seed: dataclasses.replace(config, seed=seed) for seed in seeds}
    plans = {seed: plan_curves(configs[seed], epochs=epochs, lr=lr, teacher=teacher) for seed in seeds}
    plan = plans[seeds[0]]
    logger.info(
        "curves: %d arms × %d epochs of %d steps on the first %d train shards, lr %g, teacher %s, seeds %s",
        len(chosen), plan.epochs, plan.steps_per_epoch, plan.train_shards, plan.lr, plan.teacher, seeds,
    )  # fmt: skip
    target = Path(config.student.path)
    folders, labels, owner = [target], [TARGET_LABEL], {}
    for seed in seeds:
        for arm in chosen:
            paths = train_arm(configs[seed], arm, plans[seed], progress=progress)
            for epoch, path in enumerate(paths, start=1):
                label = f"{arm.name}@{epoch}"
                labels.append(label if seed == seeds[0] else f"{label}/seed{seed}")
                folders.append(path)
                owner[labels[-1]] = (seed, label)
    scores = scores_of(evaluate_from_config(config, folders, target=target, labels=labels))
    by_seed = {seed: {TARGET_LABEL: scores[TARGET_LABEL]} for seed in seeds}
    for label, (seed, short) in owner.items():
        by_seed[seed][short] = scores[label]
    names = [a.name for a in chosen]
    per_seed = {seed: curve_results(scores, names, plans[seed]) for seed, scores in by_seed.items()}
    results = per_seed[seeds[0]]
    if len(seeds) > 1:
        results["seeds"] = seed_results(by_seed, per_seed, names)
        results["seeds"]["timing"] = {
            str(seed): {a.name: arm_timing(configs[seed], a, plans[seed]) for a in chosen} for seed in seeds
        }
    results["arms"] = {a.name: arm_record(config, a, plan) for a in chosen}
    results["plan"] = dataclasses.asdict(plan)
    results["command"] = command or f"polyfuse curves --epochs {plan.epochs} --arms {','.join(names)}"
    from stages.cpu_features import cpu_summary

    results["machine"] = cpu_summary()
    results["machine"]["load_at_report"] = list(os.getloadavg())
    report_dir = curves_dir(config) / "report"
    for folder in [report_dir, *([results_dir] if results_dir else [])]:
        write_curve_report(folder, results)
    return results


def scores_of(evaluation: Any) -> dict[str, dict[str, UnitScore]]:
    """label → unit → score, from an `evaluate_from_config` result."""
    return {
        label: {u: UnitScore.from_dict(s) for u, s in entry["scores"].items()}
        for label, entry in evaluation.payload["models"].items()
    }


def arm_record(config: Config, arm: Arm, plan: Plan) -> dict:
    """What the report says of an arm: its strategy, overrides, description, the configured
    teachers it leaves out, its run folder and its training time."""
    sub = arm_config(config, arm, plan)
    return {
        "strategy": arm.strategy.format(teacher=plan.teacher),
        "overrides": dict(arm.overrides),
        "about": arm.about.format(teacher=plan.teacher),
        "left_out": sorted({t.name for t in config.teachers} - {t.name for t in sub.teachers}),
        "folder": str(Path(sub.runs_dir) / sub.name),
        "timing": arm_timing(config, arm, plan),
    }


def arm_timing(config: Config, arm: Arm, plan: Plan) -> dict:
    """The arm's training wall time, the load beside it (timing.json) and the ZeRO stage it was
    trained at (its export's config.yaml: an export is reused whatever the stage asked for now);
    {} when it was never timed."""
    import yaml

    run_dir = Path(arm_config(config, arm, plan).runs_dir) / arm_folder(arm, plan)
    if not (run_dir / "timing.json").is_file():
        return {}
    export = yaml.safe_load((run_dir / "export" / "config.yaml").read_text(encoding="utf-8"))
    return {
        **json.loads((run_dir / "timing.json").read_text()),
        "zero_stage": export["distill"]["zero_stage"],
    }


def curve_results(scores: dict[str, dict[str, UnitScore]], arms: list[str], plan: Plan) -> dict:
    """Per arm and epoch Δ against the untrained student, the best epochs, and each arm's best
    against `none`'s best (paired, per domain and the mean over domains)."""
    untrained = scores[TARGET_LABEL]
    curves: dict[str, list[dict]] = {}
    best: dict[str, int] = {}
    for arm in arms:
        points = []
        for epoch in range(1, plan.epochs + 1):
            label = f"{arm}@{epoch}"
            deltas = compare_models(scores[label], untrained)
            points.append({"epoch": epoch, "mean_bpb": mean_bpb(scores[label]), **delta_table(deltas)})
        curves[arm] = points
        best[arm] = min(points, key=lambda p: p["mean_bpb"])["epoch"]
    against_none = {}
    final_against_none = {}
    crossfit_against_none = {}
    crossfit = {arm: cross_fitted(scores, arm, plan.epochs) for arm in arms}
    if "none" in arms:
        reference = scores[f"none@{best['none']}"]
        final = scores[f"none@{plan.epochs}"]
        for arm in arms:
            if arm != "none":
                against_none[arm] = delta_table(compare_models(scores[f"{arm}@{best[arm]}"], reference))
                final_against_none[arm] = delta_table(compare_models(scores[f"{arm}@{plan.epochs}"], final))
                crossfit_against_none[arm] = delta_table(
                    compare_models(crossfit[arm][0], crossfit["none"][0])
                )
    # Every arm against `none` at the same epoch: the curves' differences with their paired errors.
    by_epoch = {
        arm: [
            delta_table(compare_models(scores[f"{arm}@{e}"], scores[f"none@{e}"]))[MEAN_BPB]
            for e in range(1, plan.epochs + 1)
        ]
        for arm in arms
        if arm != "none" and "none" in arms
    }
    # Every other pair of arms at their best epochs (a − b): e.g. three teachers against one.
    others = [arm for arm in arms if arm != "none"]
    pairs = {
        f"{a} − {b}": delta_table(compare_models(scores[f"{a}@{best[a]}"], scores[f"{b}@{best[b]}"]))
        for i, a in enumerate(others)
        for b in others[i + 1 :]
    }
    return {
        "curves": curves,
        "best_epoch": best,
        "best_vs_none_best": against_none,
        "best_pairs": pairs,
        "vs_none_by_epoch": by_epoch,
        "final_vs_none_final": final_against_none,
        "crossfit_best_epochs": {arm: epochs for arm, (_, epochs) in crossfit.items()},
        "crossfit_vs_none": crossfit_against_none,
        "untrained_mean_bpb": mean_bpb(untrained),
    }


def seed_results(
    by_seed: dict[int, dict[str, dict[str, UnitScore]]], per_seed: dict[int, dict], arms: list[str]
) -> dict:
    """The arms over several seeds (each seed another order of the same samples), from each seed's
    scores and its `curve_results`.

    Every seed's arm is taken at its own best epoch. ``curves``: each seed's mean Δ against the
    untrained student per epoch. ``vs_none``: each seed's best against that seed's `none` at its
    best. ``pooled_vs_none`` and ``pooled_pairs``: per document, the mean over seeds of an arm's
    bits (`seed_mean`), against `none`'s (or another arm's) mean — the seed's noise averaged out,
    the standard error still over documents. ``seed_spread``: every later seed's best against the
    first seed's best of the same arm, the noise floor a difference between arms must clear."""
    first, seeds = next(iter(by_seed)), list(by_seed)
    best = {seed: per_seed[seed]["best_epoch"] for seed in seeds}
    pooled = {arm: seed_mean([by_seed[seed][f"{arm}@{best[seed][arm]}"] for seed in seeds]) for arm in arms}
    others = [arm for arm in arms if arm != "none"]
    return {
        "seeds": seeds,
        "curves": {
            str(seed): {
                arm: [p[MEAN_BPB] for p in points] for arm, points in per_seed[seed]["curves"].items()
            }
            for seed in seeds
        },
        "best_epoch": {str(seed): epochs for seed, epochs in best.items()},
        "vs_none": {str(seed): per_seed[seed]["best_vs_none_best"] for seed in seeds},
        "pooled_vs_none": {
            arm: delta_table(compare_models(pooled[arm], pooled["none"])) for arm in others if "none" in arms
        },
        "pooled_pairs": {
            f"{a} − {b}": delta_table(compare_models(pooled[a], pooled[b]))
            for i, a in enumerate(others)
            for b in others[i + 1 :]
        },
        "seed_spread": {
            f"{arm}: seed {seed} − seed {first}": delta_table(
                compare_models(
                    by_seed[seed][f"{arm}@{best[seed][arm]}"], by_seed[first][f"{arm}@{best[first][arm]}"]
                )
            )
            for arm in arms
            for seed in seeds[1:]
        },
    }


def seed_mean(models: list[dict[str, UnitScore]]) -> dict[str, UnitScore]:
    """Per unit, the model whose every observation is the mean of `models`' (the same documents:
    bits averaged, bytes shared) — several seeds of one arm as one model for paired comparisons."""
    out = {}
    for unit, first in models[0].items():
        keys = first.observations.keys()
        if any(m[unit].observations.keys() != keys for m in models[1:]):
            raise ValueError(f"{unit}: the seeds were scored on different documents; score them again")
        observations = {
            k: (sum(m[unit].observations[k][0] for m in models) / len(models), first.observations[k][1])
            for k in keys
        }
        out[unit] = UnitScore.from_observations(unit, first.metric, first.higher_is_better, observations)
    return out


def cross_fitted(
    scores: dict[str, dict[str, UnitScore]], arm: str, epochs: int
) -> tuple[dict[str, UnitScore], list[int]]:
    """The arm's held-out scores with the best epoch chosen on *other* documents (two-fold cross-fitting).

    Each domain's documents, in key order, alternate between two halves. The epoch with the lowest
    mean bits per byte on one half supplies the scores of the other half's documents, so no document
    is scored by an epoch its own score helped choose; the result pairs with any model per document.
    Returns the scores and the epoch each half's documents got ([half 0, half 1])."""
    units = [u for u, s in scores[f"{arm}@1"].items() if s.metric == "bpb"]
    halves = {u: [sorted(scores[f"{arm}@1"][u].observations)[h::2] for h in (0, 1)] for u in units}

    def half_mean(epoch: int, half: int) -> float:
        values = []
        for u in units:
            obs = scores[f"{arm}@{epoch}"][u].observations
            values.append(sum(obs[k][0] for k in halves[u][half]) / sum(obs[k][1] for k in halves[u][half]))
        return sum(values) / len(values)

    chosen = [min(range(1, epochs + 1), key=lambda e: half_mean(e, 1 - half)) for half in (0, 1)]
    out = {}
    for u in units:
        template = scores[f"{arm}@1"][u]
        observations = {
            k: scores[f"{arm}@{chosen[half]}"][u].observations[k] for half in (0, 1) for k in halves[u][half]
        }
        out[u] = UnitScore.from_observations(u, template.metric, template.higher_is_better, observations)
    return out, chosen


def delta_table(deltas: dict[str, PairedDelta]) -> dict[str, dict[str, float]]:
    """unit (`mean bpb` or the domain) → {delta, se, z}."""
    return {
        (u if u == MEAN_BPB else u.removeprefix("bpb/")): {"delta": d.delta, "se": d.se, "z": d.z}
        for u, d in deltas.items()
    }


def write_curve_report(folder: Path, results: dict) -> None:
    """curves.json, curves.md and curves.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "curves.json", results)
    plot_curves(results, folder / "curves.png")
    with atomic_open(folder / "curves.md") as f:
        f.write(curve_markdown(results))


def plot_curves(results: dict, path: Path) -> Path:
    """Δ mean bits per byte against the untrained student per epoch, one line per arm, ± paired SE
    (the first seed's; every later seed's dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_epoch = results.get("vs_none_by_epoch") or {}
    fig, axes = plt.subplots(1, 2 if by_epoch else 1, figsize=(13 if by_epoch else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    colours = {}
    for arm, points in results["curves"].items():
        epochs = [0] + [p["epoch"] for p in points]
        deltas = [0.0] + [p[MEAN_BPB]["delta"] for p in points]
        errors = [0.0] + [p[MEAN_BPB]["se"] for p in points]
        line = ax.errorbar(epochs, deltas, yerr=errors, marker="o", capsize=3, label=arm)
        colours[arm] = line.lines[0].get_color()
    # Later seeds (`seed_results`): the same arm's colour, dashed, without error bars.
    for seed, curves in list(results.get("seeds", {}).get("curves", {}).items())[1:]:
        for arm, points in curves.items():
            epochs = range(len(points) + 1)
            deltas = [0.0] + [p["delta"] for p in points]
            ax.plot(
                epochs, deltas, linestyle="--", marker=".", color=colours[arm], label=f"{arm} (seed {seed})"
            )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Δ mean bits per byte vs untrained (lower is better)")
    ax.set_title("Held-out learning curves (± paired SE over documents)")
    ax.legend(fontsize=8)
    if by_epoch:
        # The differences between arms are a few thousandths: against `none` at the same epoch they show.
        right = axes[0][1]
        for arm, points in by_epoch.items():
            epochs = range(1, len(points) + 1)
            right.errorbar(
                epochs, [p["delta"] for p in points], yerr=[p["se"] for p in points], marker="o",
                capsize=3, color=colours[arm], label=arm,
            )  # fmt: skip
        right.axhline(0.0, color=colours.get("none", "grey"), linewidth=0.8)
        right.set_xlabel("epoch")
        right.set_ylabel("Δ mean bits per byte vs `none` at the same epoch")
        right.set_title("Against plain training (± paired SE over documents)")
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _machine(machine: dict) -> str:
    """The CPU summary as one phrase (model, cores, native bf16, flags that decide the dtype)."""
    return ", ".join(f"{k} {v}" for k, v in machine.items() if not isinstance(v, list | dict)) or str(machine)


def _cell(d: dict[str, float]) -> str:
    se = "nan" if math.isnan(d["se"]) else f"{d['se']:.4f}"
    return f"{d['delta']:+.4f} ± {se}"


def seed_markdown(seeds: dict) -> list[str]:
    """The report's section on several seeds (`seed_results`)."""
    names = ", ".join(map(str, seeds["seeds"]))
    lines = [
        f"## Over seeds {names}",
        "",
        "Each seed trains every arm on the same samples in another order. Mean Δ against the untrained "
        "student per epoch (the best epoch in bold):",
        "",
    ]
    for seed, curves in seeds["curves"].items():
        epochs = len(next(iter(curves.values())))
        lines += [
            f"| seed {seed} | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " |",
            "|---|" + "---|" * epochs,
        ]
        for arm, points in curves.items():
            best = seeds["best_epoch"][seed][arm]
            cells = [f"**{_cell(p)}**" if e == best else _cell(p) for e, p in enumerate(points, start=1)]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    tables = [
        *(
            (f"Seed {seed}: each arm at its best epoch against `none` at its best", table)
            for seed, table in seeds["vs_none"].items()
        ),
        (
            "Every seed: per document, the mean over seeds of each arm at its best epoch against `none`'s",
            seeds["pooled_vs_none"],
        ),
        ("Every seed: pairs of arms, the same per-document means (a − b)", seeds["pooled_pairs"]),
        ("The noise floor: the same arm with another seed, each at its best epoch", seeds["seed_spread"]),
    ]
    for title, table in tables:
        if table:
            lines += _delta_table(title, table, heading="###")
    timing = seeds.get("timing", {})
    if timing:
        arms = list(next(iter(timing.values())))
        lines += [
            "### Training time per seed (s, load before → after)",
            "",
            "| seed | " + " | ".join(arms) + " |",
            "|---|" + "---|" * len(arms),
        ]
        for seed, per_arm in timing.items():
            cells = [
                f"{t['seconds']:.0f} ({t['load_before'][0]:.1f} → {t['load_after'][0]:.1f})" if t else "—"
                for t in per_arm.values()
            ]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _delta_table(title: str, table: dict[str, dict[str, dict[str, float]]], *, heading: str) -> list[str]:
    """A markdown table of paired Δs: one row per arm (or pair), one column per unit."""
    units = list(next(iter(table.values())))
    lines = [f"{heading} {title}", "", "| arm | " + " | ".join(units) + " |", "|---|" + "---|" * len(units)]
    lines += [f"| {row} | " + " | ".join(_cell(d[u]) for u in units) + " |" for row, d in table.items()]
    return [*lines, ""]


def curve_markdown(results: dict) -> str:
    plan = results["plan"]
    lines = [
        "# Learning curves: distillation in the data-limited regime",
        "",
        f"`{results['command']}` — {plan['epochs']} epochs of {plan['steps_per_epoch']} steps over the first "
        f"{plan['train_shards']} train shards, lr {plan['lr']:g}, seed {plan.get('seed', 0)}, teacher `{plan['teacher']}`. "
        f"Machine: {_machine(results['machine'])}.",
        "",
        "Held-out bits per byte: Δ against the untrained student (mean over domains, lower is better), ± "
        "the paired standard error over documents. Untrained mean: "
        f"{results['untrained_mean_bpb']:.4f}.",
        "",
        "| arm | "
        + " | ".join(f"epoch {e}" for e in range(1, plan["epochs"] + 1))
        + " | best | cross-fitted |",
        "|---|" + "---|" * (plan["epochs"] + 2),
    ]
    crossfit = results.get("crossfit_best_epochs", {})
    for arm, points in results["curves"].items():
        cells = [_cell(p[MEAN_BPB]) for p in points]
        halves = "/".join(map(str, crossfit.get(arm, []))) or "—"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {results['best_epoch'][arm]} | {halves} |")
    by_epoch = results.get("vs_none_by_epoch") or {}
    if by_epoch:
        lines += [
            "",
            "Each arm against `none` at the same epoch (mean over domains, ± paired SE):",
            "",
            "| arm | " + " | ".join(f"epoch {e}" for e in range(1, plan["epochs"] + 1)) + " |",
            "|---|" + "---|" * plan["epochs"],
        ]
        lines += [f"| {arm} | " + " | ".join(map(_cell, points)) + " |" for arm, points in by_epoch.items()]
    lines += ["", "![curves](curves.png)", ""]
    for title, key in (
        ("Each arm at its best epoch against `none` at its best", "best_vs_none_best"),
        ("Each arm at the last epoch against `none` at the last", "final_vs_none_final"),
        (
            "Each arm against `none`, both with the best epoch chosen on the other half of the documents",
            "crossfit_vs_none",
        ),
        ("Pairs of arms, each at its best epoch (a − b)", "best_pairs"),
    ):
        if results.get(key):
            lines += _delta_table(title, results[key], heading="##")
    if "seeds" in results:
        lines += seed_markdown(results["seeds"])
    lines += [
        "## Arms",
        "",
        "| arm | strategy | overrides | training time (s) | ZeRO stage | load before → after |",
        "|---|---|---|---|---|---|",
    ]
    for arm, info in results["arms"].items():
        timing = info["timing"]
        seconds = f"{timing['seconds']:.0f}" if timing else "—"
        stage = timing.get("zero_stage", "—")
        load = (
            f"{timing['load_before'][0]:.1f} → {timing['load_after'][0]:.1f}"
            + (" (resumed)" if timing.get("resumed") else "")
            if timing
            else "—"
        )
        lines.append(f"| {arm} | {info['strategy']} | {info['overrides']} | {seconds} | {stage} | {load} |")
    lines.append("")
    lines += [
        f"- `{arm}`: {info['about']}"
        + (f" (teachers left out: {', '.join(info['left_out'])})" if info.get("left_out") else "")
        for arm, info in results["arms"].items()
    ]
    lines += [
        "",
        "The best epoch is chosen on the same held-out documents it is reported on (every arm gets the "
        "same selection), except in the cross-fitted table: there every document is scored by the epoch "
        "that is best on the other half of its domain's documents (alternate documents in key order), so "
        "the selection never sees the score it reports. The last-epoch table has no selection.",
        "",
    ]
    return "\n".join(lines)
