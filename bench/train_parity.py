"""Training parity: one learning-curve arm trained as the config says (float32) and as a variant
(a bf16 dtype, another ZeRO stage, or both) on the same samples, every epoch's export scored on the
same held-out documents, and each epoch's variant export paired per document with the float32
export of the same epoch. Beside it, the noise floor: the
same float32 arm with another seed (the samples in another order each epoch), paired the same way,
says how far two runs differ when nothing but chance changes. Writes
bench/results/train_parity.{json,md}.

    .venv/bin/python -m bench.train_parity [--config configs/experiment.yaml] [--arm none]
        [--epochs 4] [--lr 1e-4] [--dtype bfloat16] [--zero-stage N] [--reshuffle-seed 1] [KEY=VALUE ...]

The arms are `polyfuse curves` arms (pipeline/curves.py) in the same folders, so an arm the curves
already trained is reused and a rerun trains and scores nothing. A variant at another ZeRO stage
trains under `<name>-zero<N>`: an export's identity leaves the stage out (pipeline/experiment.py
`export_changes`), so in the config's folder it would find the reference's exports. A reused arm
may have been trained at another stage than the config's: the report gives the stage each run was
trained at (its export's config.yaml). **Parity holds** when at every
epoch the mean-over-domains Δ (bf16 − float32) is within 2 paired SE of zero, and at every epoch
no domain's Δ is beyond 3 SE. The reshuffled run is reported beside it, per epoch and at each run's
best epoch, so a reader can tell a dtype's effect from the spread between seeds. The speed-up is the ratio of the two arms' training wall times
(timing.json, with the load average before and after: one model job at a time, or it is not a
measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from bench.distill_bench import RESULTS
from data_schemas.atomic import write_json_atomic
from stages.evaluate.paired_delta import MEAN_BPB

REFERENCE = "float32"
RESHUFFLED = "float32-reshuffled"
MEAN_SE_LIMIT = 2.0
DOMAIN_SE_LIMIT = 3.0


def variant(config: Any, dtype: str, seed: int, stage: int) -> Any:
    """``config`` trained in ``dtype`` with ``seed`` at ZeRO ``stage`` (under its own name where that is
    not the config's)."""
    name = config.name if stage == config.distill.zero_stage else f"{config.name}-zero{stage}"
    distill = dataclasses.replace(config.distill, dtype=dtype, zero_stage=stage)
    return dataclasses.replace(config, name=name, seed=seed, distill=distill)


def parity(deltas: dict[str, dict[str, float]]) -> bool:
    """One epoch's verdict from its `curves.delta_table` (unit → delta, se, z)."""
    return all(
        abs(d["z"]) <= (MEAN_SE_LIMIT if unit == MEAN_BPB else DOMAIN_SE_LIMIT) for unit, d in deltas.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/experiment.yaml"))
    parser.add_argument("--arm", default="none", help="a `polyfuse curves` arm (pipeline/curves.py ARMS)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "bf16_mixed", REFERENCE])
    parser.add_argument(
        "--zero-stage",
        type=int,
        choices=[0, 1, 2, 3],
        help="the variant's ZeRO stage (default: the config's)",
    )
    parser.add_argument(
        "--reshuffle-seed", type=int, default=1, help="the seed of the float32 noise-floor run (0: none)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (as for `polyfuse`)")
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.curves import ARMS, arm_timing, delta_table, mean_bpb, plan_curves, scores_of, train_arm
    from pipeline.evaluation import evaluate_from_config
    from pipeline.extraction import run_extraction
    from stages.cpu_features import cpu_summary
    from stages.evaluate.paired_delta import compare_models

    if args.arm not in ARMS:
        parser.error(f"--arm {args.arm!r}: choose from {', '.join(ARMS)}")
    arm = ARMS[args.arm]
    config = load_config(args.config, args.overrides)
    if args.reshuffle_seed and args.reshuffle_seed == config.seed:
        parser.error(
            f"--reshuffle-seed {args.reshuffle_seed} is the config's seed: choose another, or 0 for none"
        )
    stage = config.distill.zero_stage
    tested_stage = stage if args.zero_stage is None else args.zero_stage
    other_stage = tested_stage != stage
    tested = args.dtype + (f"-zero{tested_stage}" if other_stage else "")
    if tested == REFERENCE:
        parser.error(f"--dtype {REFERENCE} at the config's ZeRO stage {stage} is the reference: change one")
    run_extraction(config)
    runs = {REFERENCE: (REFERENCE, config.seed, stage), tested: (args.dtype, config.seed, tested_stage)}
    if args.reshuffle_seed:
        runs[RESHUFFLED] = (REFERENCE, args.reshuffle_seed, stage)
    folders, labels, timing = [Path(config.student.path)], ["untrained"], {}
    for name, (dtype, seed, zero_stage) in runs.items():
        sub = variant(config, dtype, seed, zero_stage)
        plan = plan_curves(sub, epochs=args.epochs, lr=args.lr, teacher=None)
        exports = train_arm(sub, arm, plan)
        folders += exports
        labels += [f"{name}@{epoch}" for epoch in range(1, len(exports) + 1)]
        timing[name] = arm_timing(sub, arm, plan)

    scores = scores_of(evaluate_from_config(config, folders, target=folders[0], labels=labels))

    def against_reference(name: str, epoch: int, reference_epoch: int | None = None) -> dict:
        return delta_table(
            compare_models(scores[f"{name}@{epoch}"], scores[f"{REFERENCE}@{reference_epoch or epoch}"])
        )

    epochs = []
    for epoch in range(1, args.epochs + 1):
        deltas = against_reference(tested, epoch)
        row = {"epoch": epoch, "deltas": deltas, "parity": parity(deltas)}
        if RESHUFFLED in runs:
            row["reshuffled"] = against_reference(RESHUFFLED, epoch)
        epochs.append(row)
    best = {
        name: min(range(1, args.epochs + 1), key=lambda e: mean_bpb(scores[f"{name}@{e}"])) for name in runs
    }
    at_best = {
        name: {"epoch": best[name], "deltas": against_reference(name, best[name], best[REFERENCE])}
        for name in runs
        if name != REFERENCE
    }
    seconds = {d: timing[d].get("seconds") for d in (REFERENCE, tested)}
    # Wall times compare only where each run was trained at the stage asked of it: the stage costs or
    # saves whole seconds a step (bench/results/xeon_amx/train_speed.md), and a reused arm may have
    # been trained at another.
    stages = {REFERENCE: stage, tested: tested_stage}
    comparable = all(seconds.values()) and all(timing[n].get("zero_stage") == stages[n] for n in stages)
    results = {
        "arm": args.arm,
        "dtype": tested,
        "zero_stage": stages,
        "reference": REFERENCE,
        "plan": {
            "epochs": args.epochs,
            "lr": args.lr,
            "teacher": plan.teacher,
            "steps_per_epoch": plan.steps_per_epoch,
        },
        "seed": config.seed,
        "reshuffle_seed": args.reshuffle_seed or None,
        "epochs": epochs,
        "parity": all(e["parity"] for e in epochs),
        "best_epoch": best,
        "at_best_epoch": at_best,
        "timing": timing,
        "speedup": seconds[REFERENCE] / seconds[tested] if comparable else None,
        "largest_abs_delta": max(abs(d["delta"]) for e in epochs for d in e["deltas"].values()),
        "machine": {**cpu_summary(), "load_at_report": list(os.getloadavg())},
        "command": f"python -m bench.train_parity --config {args.config} --arm {args.arm} "
        f"--epochs {args.epochs} --lr {args.lr:g} --dtype {args.dtype}"
        + (f" --zero-stage {tested_stage}" if other_stage else "")
        + f" --reshuffle-seed {args.reshuffle_seed}"
        + "".join(f" {o}" for o in args.overrides),
    }
    write_json_atomic(args.out / "train_parity.json", results)
    (args.out / "train_parity.md").write_text(render(results))
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    dtype, ref = results["dtype"], results["reference"]
    seed, reshuffle = results["seed"], results["reshuffle_seed"]
    lines = [
        f"# Training parity: `{dtype}` against `{ref}`",
        "",
        f"Arm `{results['arm']}` of `polyfuse curves`, {results['plan']['epochs']} epochs × "
        f"{results['plan']['steps_per_epoch']} steps, lr {results['plan']['lr']:g}, seed {seed}; every epoch's "
        f"export paired per held-out document with the {ref} export of the same epoch (Δ = run − {ref}, "
        "bits per byte ± paired SE).",
        "",
        *(
            [f"ZeRO stage: {ref} {stages[ref]}, `{dtype}` {stages[dtype]} (one rank).", ""]
            if (stages := results.get("zero_stage", {})) and len(set(stages.values())) > 1
            else []
        ),
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}, native bf16: "
        f"{m['native_bf16']}; load at report {', '.join(f'{x:.2f}' for x in m['load_at_report'])}.",
        "",
    ]
    units = list(results["epochs"][0]["deltas"])
    lines += ["| epoch | " + " | ".join(units) + " | parity |", "|---" * (len(units) + 2) + "|"]
    for e in results["epochs"]:
        lines.append(f"| {e['epoch']} | {_cells(e['deltas'], units)} | {'yes' if e['parity'] else 'no'} |")
    lines += [
        "",
        f"Parity (every epoch: |Δ mean| ≤ {MEAN_SE_LIMIT:g} SE, every domain ≤ {DOMAIN_SE_LIMIT:g} SE): "
        f"**{'holds' if results['parity'] else 'does not hold'}**. The largest |Δ| of any epoch and unit: "
        f"{results['largest_abs_delta']:.1e} bits per byte.",
        "",
    ]
    if reshuffle:
        lines += [
            f"## The noise floor: {ref} with seed {reshuffle} (the samples in another order) − {ref} with seed {seed}",
            "",
            "| epoch | " + " | ".join(units) + " |",
            "|---" * (len(units) + 1) + "|",
        ]
        lines += [f"| {e['epoch']} | {_cells(e['reshuffled'], units)} |" for e in results["epochs"]]
        lines.append("")
    lines += [
        f"## Each run at its best epoch against {ref} at its best (epoch {results['best_epoch'][ref]})",
        "",
        "| run | best epoch | " + " | ".join(units) + " |",
        "|---" * (len(units) + 2) + "|",
    ]
    for name, row in results["at_best_epoch"].items():
        lines.append(f"| {name} | {row['epoch']} | {_cells(row['deltas'], units)} |")
    lines += ["", "| run | ZeRO stage | training wall time (s) | load before → after |", "|---|---|---|---|"]
    for d, t in results["timing"].items():
        if "seconds" in t:
            lines.append(
                f"| {d} | {t['zero_stage']} | {t['seconds']:.0f} | "
                f"{t['load_before'][0]:.1f} → {t['load_after'][0]:.1f} |"
            )
    if results["speedup"]:
        lines += ["", f"Speed-up of {dtype} over {ref}: {results['speedup']:.2f}×."]
    else:
        lines += ["", f"No speed-up: {dtype} and {ref} were not both timed at the ZeRO stages asked of them."]
    lines += ["", f"Rebuild: `{results['command']}`", ""]
    return "\n".join(lines)


def _cells(deltas: dict[str, dict[str, float]], units: list[str]) -> str:
    """Δ ± SE to four decimals, or in powers of ten where four decimals would print zeros."""
    return " | ".join(
        f"{d['delta']:+.4f} ± {d['se']:.4f}"
        if abs(d["delta"]) >= 5e-5 or d["delta"] == 0
        else f"{d['delta']:+.1e} ± {d['se']:.1e}"
        for d in (deltas[u] for u in units)
    )


if __name__ == "__main__":
    raise SystemExit(main())
