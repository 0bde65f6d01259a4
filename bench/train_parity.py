"""bf16 training parity: one learning-curve arm trained in float32 and in a bf16 dtype on the same
samples, every epoch's export scored on the same held-out documents, and each epoch's bf16 export
paired per document with the float32 export of the same epoch. Writes
bench/results/train_parity.{json,md}.

    .venv/bin/python -m bench.train_parity [--config configs/experiment.yaml] [--arm none]
        [--epochs 4] [--lr 1e-4] [--dtype bfloat16]

The arms are `polyfuse curves` arms (pipeline/curves.py) in the same folders, so an arm the curves
already trained is reused and a rerun trains and scores nothing. **Parity holds** when at every
epoch the mean-over-domains Δ (bf16 − float32) is within 2 paired SE of zero, and at every epoch
no domain's Δ is beyond 3 SE. The speed-up is the ratio of the two arms' training wall times
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
MEAN_SE_LIMIT = 2.0
DOMAIN_SE_LIMIT = 3.0


def with_dtype(config: Any, dtype: str) -> Any:
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, dtype=dtype))


def parity(deltas: dict[str, dict[str, float]]) -> bool:
    """One epoch's verdict from its `curves._deltas` table (unit → delta, se, z)."""
    return all(
        abs(d["z"]) <= (MEAN_SE_LIMIT if unit == MEAN_BPB else DOMAIN_SE_LIMIT) for unit, d in deltas.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/experiment.yaml"))
    parser.add_argument("--arm", default="none", help="a `polyfuse curves` arm (pipeline/curves.py ARMS)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "bf16_mixed"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.curves import ARMS, _deltas, _timing, plan_curves, train_arm
    from pipeline.evaluation import evaluate_from_config
    from pipeline.extraction import run_extraction
    from stages.cpu_features import cpu_summary
    from stages.evaluate.paired_delta import compare_models
    from stages.evaluate.unit_score import UnitScore

    if args.arm not in ARMS:
        parser.error(f"--arm {args.arm!r}: choose from {', '.join(ARMS)}")
    arm = ARMS[args.arm]
    config = load_config(args.config)
    run_extraction(config)
    dtypes = (REFERENCE, args.dtype)
    folders, labels, timing = [Path(config.student.path)], ["untrained"], {}
    for dtype in dtypes:
        sub = with_dtype(config, dtype)
        plan = plan_curves(sub, epochs=args.epochs, lr=args.lr, teacher=None)
        exports = train_arm(sub, arm, plan)
        folders += exports
        labels += [f"{dtype}@{epoch}" for epoch in range(1, len(exports) + 1)]
        timing[dtype] = _timing(sub, arm, plan)

    evaluation = evaluate_from_config(config, folders, target=folders[0], labels=labels)
    scores = {
        label: {u: UnitScore.from_dict(s) for u, s in entry["scores"].items()}
        for label, entry in evaluation.payload["models"].items()
    }
    epochs = []
    for epoch in range(1, args.epochs + 1):
        deltas = _deltas(compare_models(scores[f"{args.dtype}@{epoch}"], scores[f"{REFERENCE}@{epoch}"]))
        epochs.append({"epoch": epoch, "deltas": deltas, "parity": parity(deltas)})
    seconds = {d: timing[d].get("seconds") for d in dtypes}
    results = {
        "arm": args.arm,
        "dtype": args.dtype,
        "reference": REFERENCE,
        "plan": {
            "epochs": args.epochs,
            "lr": args.lr,
            "teacher": plan.teacher,
            "steps_per_epoch": plan.steps_per_epoch,
        },
        "epochs": epochs,
        "parity": all(e["parity"] for e in epochs),
        "timing": timing,
        "speedup": seconds[REFERENCE] / seconds[args.dtype] if all(seconds.values()) else None,
        "machine": {**cpu_summary(), "load_at_report": list(os.getloadavg())},
        "command": f"python -m bench.train_parity --config {args.config} --arm {args.arm} "
        f"--epochs {args.epochs} --lr {args.lr:g} --dtype {args.dtype}",
    }
    write_json_atomic(args.out / "train_parity.json", results)
    (args.out / "train_parity.md").write_text(render(results))
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    dtype, ref = results["dtype"], results["reference"]
    lines = [
        f"# bf16 training parity: `{dtype}` against `{ref}`",
        "",
        f"Arm `{results['arm']}` of `polyfuse curves`, {results['plan']['epochs']} epochs × "
        f"{results['plan']['steps_per_epoch']} steps, lr {results['plan']['lr']:g}; every epoch's "
        f"export paired per held-out document with the {ref} export of the same epoch (Δ = {dtype} − {ref}, "
        "bits per byte ± paired SE).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}, native bf16: "
        f"{m['native_bf16']}; load at report {', '.join(f'{x:.2f}' for x in m['load_at_report'])}.",
        "",
    ]
    units = list(results["epochs"][0]["deltas"])
    lines += ["| epoch | " + " | ".join(units) + " | parity |", "|---" * (len(units) + 2) + "|"]
    for e in results["epochs"]:
        cells = [f"{e['deltas'][u]['delta']:+.4f} ± {e['deltas'][u]['se']:.4f}" for u in units]
        lines.append(f"| {e['epoch']} | " + " | ".join(cells) + f" | {'yes' if e['parity'] else 'no'} |")
    lines += [
        "",
        f"Parity (every epoch: |Δ mean| ≤ {MEAN_SE_LIMIT:g} SE, every domain ≤ {DOMAIN_SE_LIMIT:g} SE): "
        f"**{'holds' if results['parity'] else 'does not hold'}**.",
        "",
        "| dtype | training wall time (s) | load before → after |",
        "|---|---|---|",
    ]
    for d, t in results["timing"].items():
        if t:
            lines.append(
                f"| {d} | {t['seconds']:.0f} | {t['load_before'][0]:.1f} → {t['load_after'][0]:.1f} |"
            )
    if results["speedup"]:
        lines += ["", f"Speed-up of {dtype} over {ref}: {results['speedup']:.2f}×."]
    lines += ["", f"Rebuild: `{results['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
