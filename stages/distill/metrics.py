"""What a user sees of a distill run: a progress bar, `metrics.jsonl` and the trackers of
`distill.report_to` (TensorBoard by default, trackers.py), from one small logger object, plus
the accumulator that turns micro-batch outputs into those numbers.

Every rank accumulates its own micro-batches; at a log step the sums are all-reduced (one small
collective) so the numbers describe the whole job, and only rank 0 writes anything.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data_schemas.atomic import atomic_open
from stages.distill.batch import FusionBatch
from stages.distill.gate_diagnostics import SUM_SIZES, contested, diagnostic_sums, diagnostics_from_sums
from stages.distill.loss_terms import TERMS
from stages.distill.model import FusionOutput
from stages.distill.trackers import Tracker, open_trackers

logger = logging.getLogger(__name__)


class StepStats:
    """Sums over the micro-batches since the last log line (reset by `summary`).

    Args:
        teacher_names: the K teachers, for the per-teacher keys.
        terms: the run's loss terms (name → weight, `loss_terms.term_weights`): each logs
            `loss/NAME` and the rates its `LossTerm` declares.
    """

    def __init__(self, teacher_names: Sequence[str], terms: Mapping[str, float]) -> None:
        self.teacher_names = list(teacher_names)
        self.terms = list(terms)
        self.reset()

    def reset(self) -> None:
        k = len(self.teacher_names)
        # One flat float64 vector so that all ranks' sums travel in one all-reduce.
        self._layout = {
            "micro_batches": 1,
            "total": 1,
            "tokens": 1,
            "samples": 1,
            "student_rows": 1,
            **{f"{name}/{stat}": 1 for name in self.terms for stat in ("loss", *TERMS[name].stats)},
            "weight_sum": k,
            "selected": k,
            "present": k,
            "aligned_rows": k,
            "mapped_mass": k,
            "selected_hist": k + 1,
            # gate diagnostics (gate_diagnostics.py) over the window's contested samples
            **{f"diagnostics/{name}": size or k for name, size in SUM_SIZES.items()},
        }
        # The contested samples of the window, whose diagnostics `summary` computes in one go.
        self._contested: list[tuple[torch.Tensor, ...]] = []
        self._sums = torch.zeros(sum(self._layout.values()), dtype=torch.float64)
        self._started = time.perf_counter()

    def _slot(self, name: str) -> slice:
        start = 0
        for key, size in self._layout.items():
            if key == name:
                return slice(start, start + size)
            start += size
        raise KeyError(name)

    def add(self, batch: FusionBatch, output: FusionOutput) -> None:
        """Count one micro-batch (call after its forward)."""
        losses = output.losses
        terms = losses.detached()
        weights = output.weights.detach().to("cpu", torch.float64)
        values = {
            "micro_batches": 1.0,
            "total": terms["total"],
            **{f"{name}/loss": terms[name] for name in self.terms},
            **{key: float(stat) for key, stat in losses.stats.items()},
            "tokens": float(batch.num_tokens),
            "samples": float(len(batch.sample_ids)),
            "student_rows": float(batch.student_rows),
        }
        for name, value in values.items():
            self._sums[self._slot(name)] += value
        self._sums[self._slot("weight_sum")] += weights.sum(dim=0)
        self._sums[self._slot("present")] += batch.present.to("cpu", torch.float64).sum(dim=0)
        self._sums[self._slot("aligned_rows")] += batch.aligned_rows.to(torch.float64)
        self._sums[self._slot("mapped_mass")] += batch.mapped_mass.to(torch.float64)
        self._sums[self._slot("selected")] += (weights > 0).to(torch.float64).sum(dim=0)
        selected = (weights > 0).sum(dim=1)
        self._sums[self._slot("selected_hist")] += torch.bincount(
            selected, minlength=len(self.teacher_names) + 1
        ).to(torch.float64)
        self._add_gate_diagnostics(batch, weights)

    def _add_gate_diagnostics(self, batch: FusionBatch, weights: torch.Tensor) -> None:
        """Keep the micro-batch's contested samples (CPU copies) for the window's diagnostics: the
        EM oracle runs once per log window over all of them, not once per micro-batch."""
        keep = contested(batch.present.cpu(), batch.span_mask.cpu()) & (weights.sum(dim=-1) > 0)
        if bool(keep.any()):
            parts = (batch.span_loglik, batch.span_mask, batch.span_bytes, batch.bits_per_byte, batch.present)
            self._contested.append((weights[keep], *(t.cpu()[keep] for t in parts)))

    def _window_diagnostics(self) -> None:
        """Add the diagnostic sums of the window's contested samples (spans padded to the widest)."""
        if not self._contested:
            return
        width = max(entry[1].shape[-1] for entry in self._contested)
        padded = [
            (w, F.pad(ll, (0, width - ll.shape[-1])), F.pad(mask, (0, width - mask.shape[-1])), *rest)
            for w, ll, mask, *rest in self._contested
        ]
        columns = [torch.cat(parts) for parts in zip(*padded, strict=True)]
        for name, value in diagnostic_sums(*columns).items():
            self._sums[self._slot(f"diagnostics/{name}")] += value

    def summary(
        self, lrs: dict[str, float], world_size: int, device: torch.device | str = "cpu"
    ) -> dict[str, Any]:
        """Means over the window (all ranks), then reset. Call on every rank at the same step;
        `device` is where the collective runs (the engine's device: NCCL needs CUDA tensors)."""
        self._window_diagnostics()
        sums = self._sums.clone()
        if world_size > 1 and torch.distributed.is_initialized():
            reduced = sums.to(device)
            torch.distributed.all_reduce(reduced)
            sums = reduced.cpu()
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        s = {name: sums[self._slot(name)] for name in self._layout}
        micro = max(float(s["micro_batches"]), 1.0)
        samples = max(float(s["samples"]), 1.0)
        rows = max(float(s["student_rows"]), 1.0)
        out: dict[str, Any] = {
            "loss/total": float(s["total"]) / micro,
            **{f"loss/{name}": float(s[f"{name}/loss"]) / micro for name in self.terms},
            **{f"lr/{group}": lr for group, lr in lrs.items()},
            "throughput/tokens_per_s": float(s["tokens"]) / elapsed,
            "throughput/samples_per_s": float(s["samples"]) / elapsed,
            "gate/selected_hist": [int(v) for v in s["selected_hist"].tolist()],
            "tokens": int(s["tokens"]),
            "samples": int(s["samples"]),
            "student_rows": int(s["student_rows"]),
        }
        for name in self.terms:
            for key, (numerator, denominator) in TERMS[name].rates.items():
                top = float(s[f"{name}/{numerator}"])
                bottom = float(s[denominator] if denominator in s else s[f"{name}/{denominator}"])
                out[key] = top / bottom if bottom else 0.0
        out.update(_gate_diagnostics_summary(s))
        for k, name in enumerate(self.teacher_names):
            aligned = float(s["aligned_rows"][k])
            out[f"gate/mean_w/{name}"] = float(s["weight_sum"][k]) / samples
            out[f"gate/selected_rate/{name}"] = float(s["selected"][k]) / samples
            out[f"align/present_rate/{name}"] = float(s["present"][k]) / samples
            out[f"align/aligned_rate/{name}"] = aligned / rows
            out[f"align/mapped_mass_rate/{name}"] = float(s["mapped_mass"][k]) / aligned if aligned else 0.0
        self.reset()
        return out


LOGGED_DIAGNOSTICS = {
    "samples": "gate/contested_samples",
    "agreement": "gate/oracle_agreement",
    "bpb/gate": "gate/bpb/gate",
    "bpb/best_single": "gate/bpb/best_single",
    "bpb/oracle_teacher": "gate/bpb/oracle_teacher",
    "bpb/oracle_mixture": "gate/bpb/oracle_mixture",
}
"""`diagnostics_from_sums` keys → the names the training log gives them."""


def _gate_diagnostics_summary(s: dict[str, torch.Tensor]) -> dict[str, float]:
    """`gate/oracle_agreement` and the bits per byte on the teachers' spans of the gate's mixture,
    the best single teacher of the window, the per-sample oracle teacher and the EM oracle mixture
    (gate_diagnostics.py); nothing in a window without a contested sample (`none`, one teacher)."""
    sums = {name: s[f"diagnostics/{name}"] for name in SUM_SIZES}
    if float(sums["contested"]) == 0 or float(sums["span_bytes"]) == 0:
        return {}
    values = diagnostics_from_sums(sums, [str(k) for k in range(len(sums["weight_sum"]))])
    return {logged: values[key] for key, logged in LOGGED_DIAGNOSTICS.items()}


class MetricsLogger:
    """`metrics.jsonl` + the chosen trackers (trackers.py) + a tqdm progress bar; a no-op object on
    ranks other than 0.

    Args:
        log_dir: where `metrics.jsonl` and the trackers' files go.
        enabled: false on every rank but 0.
        total_steps: optimizer steps of the run (for the bar's ETA).
        start_step: steps already done (a resumed run); JSONL lines past it are dropped first, so a
            run killed after its last checkpoint does not leave duplicate steps in the log.
        progress: show the progress bar (off in tests and when stderr is not wanted).
        report_to: `distill.report_to`: the trackers beside `metrics.jsonl` (`["none"]`: none).
        run_config: the run's resolved YAML, the trackers' run config.
        run_name: the run's name in the trackers.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        report_to: Sequence[str] = ("tensorboard",),
        run_config: str | None = None,
        run_name: str = "distill",
    ) -> None:
        self.enabled = enabled
        self.path = Path(log_dir) / "metrics.jsonl"
        self._trackers: list[Tracker] = []
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._trackers = open_trackers(
            report_to, Path(log_dir), start_step=start_step, run_config=run_config, run_name=run_name
        )
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="distill", unit="step", dynamic_ncols=True
            )

    def progress(self, step: int, terms: dict[str, float], tokens_per_s: float | None = None) -> None:
        """Advance the bar to `step` with the latest loss terms (every optimizer step)."""
        if self._bar is None:
            return
        postfix = {name: f"{value:.4f}" for name, value in terms.items()}
        if tokens_per_s is not None:
            postfix["tok/s"] = f"{tokens_per_s:.0f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One JSONL line of `metrics` at `step`, and its finite scalars (same names) and the
        selected-teacher histogram to every tracker."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        scalars = {
            name: value
            for name, value in metrics.items()
            if isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)
        }
        for tracker in self._trackers:
            tracker.log(step, scalars, metrics.get("gate/selected_hist"))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


class SampleLog:
    """Every rank's record of which samples it trained on: `samples-rank{R}.jsonl`, one line per
    micro-batch (`{"step": s, "sample_ids": [...]}`, s = the optimizer step it counts toward).

    Small (a few ids per line) and always on: it answers "what did this model see", names the
    data around a loss spike, and is how the tests check the rank split of a real multi-process run.
    """

    def __init__(self, log_dir: str | Path, rank: int, start_step: int = 0) -> None:
        self.path = Path(log_dir) / f"samples-rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed in close())

    def add(self, step: int, sample_ids: Sequence[str]) -> None:
        self._file.write(json.dumps({"step": step, "sample_ids": list(sample_ids)}) + "\n")

    def close(self) -> None:
        self._file.close()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the complete JSONL records at or before `step`: records beyond it are left by a run
    killed after its last checkpoint, and a line that is no JSON object is torn (a full disk or a
    kill mid-write). Torn lines are named in one warning; the file is rewritten atomically."""
    if not path.exists():
        return
    kept, torn = [], 0
    # errors="replace": a write cut inside a character leaves bytes that are no UTF-8.
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            torn += 1
        elif record.get("step", 0) <= step:
            kept.append(line)
    if torn:
        logger.warning(
            "%s: dropped %d torn line(s) (an interrupted write); kept the records to step %d",
            path,
            torn,
            step,
        )
    with atomic_open(path) as f:
        f.write("".join(f"{line}\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` (for reports and tests)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
