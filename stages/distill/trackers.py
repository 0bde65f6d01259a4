"""Experiment trackers: where a distill run's metrics go beside ``metrics.jsonl`` (``distill.report_to``).

    tensorboard   logs/tensorboard/ event files (the default)
    wandb         Weights & Biases under logs/wandb/, offline unless WANDB_MODE says otherwise
                  (no account, no network; `wandb sync logs/wandb/offline-run-*` uploads later)
    none          metrics.jsonl alone

Every tracker gets the same names: each finite scalar under its ``metrics.jsonl`` key
(``loss/total``, ``gate/mean_w/<teacher>`` …), and the per-sample count of selected teachers as
the histogram ``gate/selected_count``. The run config is the run's resolved YAML (the export's
``config.yaml``). A tracker's package is imported only when it is chosen; a chosen one that is
not installed is refused when the config is checked (settings.py), before any model loads.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

INSTALL = {"wandb": "pip install wandb (or, in a clone, pip install -e '.[wandb]')"}
"""The install command of each tracker that is not a core dependency."""
HISTOGRAM = "gate/selected_count"


class Tracker(Protocol):
    """One destination of the metrics, open for the run."""

    def log(self, step: int, scalars: dict[str, float], selected_hist: Sequence[int] | None) -> None:
        """``scalars`` at optimizer step ``step``; ``selected_hist[n]``: samples with n selected
        teachers in the window (None when the window has no histogram)."""

    def close(self) -> None: ...


class TensorBoardTracker:
    """TensorBoard event files under ``log_dir/tensorboard``; the config as the text ``config``."""

    def __init__(self, log_dir: Path, *, start_step: int, run_config: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events a killed run wrote after its last checkpoint.
        self._writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"), purge_step=start_step + 1)
        if run_config:  # indented: a markdown code block in TensorBoard's text tab
            self._writer.add_text("config", "".join(f"    {line}\n" for line in run_config.splitlines()))

    def log(self, step: int, scalars: dict[str, float], selected_hist: Sequence[int] | None) -> None:
        import torch

        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        if selected_hist and sum(selected_hist):
            counts = torch.repeat_interleave(torch.arange(len(selected_hist)), torch.tensor(selected_hist))
            self._writer.add_histogram(HISTOGRAM, counts, step, bins=len(selected_hist))

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    """One W&B run per distill run, under ``log_dir/wandb``. A resumed distill run continues the
    W&B run of the same id (kept in ``log_dir/wandb-run-id``)."""

    def __init__(self, log_dir: Path, *, start_step: int, run_config: str | None, run_name: str) -> None:
        import wandb
        import yaml

        id_file = log_dir / "wandb-run-id"
        if start_step > 0 and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n", encoding="utf-8")
        self._wandb = wandb
        self._run = wandb.init(
            dir=str(log_dir),
            project=os.environ.get("WANDB_PROJECT", "polyfuse"),
            name=run_name,
            id=run_id,
            resume="allow",
            config=yaml.safe_load(run_config) if run_config else None,
            mode=os.environ.get("WANDB_MODE") or "offline",
            # The training loop's own output stays untouched (W&B would wrap stdout and stderr).
            settings=wandb.Settings(console="off"),
        )

    def log(self, step: int, scalars: dict[str, float], selected_hist: Sequence[int] | None) -> None:
        values: dict[str, object] = dict(scalars)
        if selected_hist and sum(selected_hist):
            edges = list(range(len(selected_hist) + 1))  # bin n: samples with n selected teachers
            values[HISTOGRAM] = self._wandb.Histogram(np_histogram=(list(selected_hist), edges))
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


def open_trackers(
    report_to: Sequence[str], log_dir: Path, *, start_step: int, run_config: str | None, run_name: str
) -> list[Tracker]:
    """The trackers ``report_to`` names, opened (rank 0 only); ``none`` gives none."""
    trackers: list[Tracker] = []
    for name in report_to:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(log_dir, start_step=start_step, run_config=run_config))
        elif name == "wandb":
            trackers.append(
                WandbTracker(log_dir, start_step=start_step, run_config=run_config, run_name=run_name)
            )
        else:
            assert name == "none", f"DistillSettings.check lets no tracker {name!r} through"
    return trackers


def missing_trackers(report_to: Sequence[str]) -> list[str]:
    """The trackers of ``report_to`` whose package is not installed (found without importing it)."""
    import importlib.util

    return [name for name in report_to if name in INSTALL and importlib.util.find_spec(name) is None]
