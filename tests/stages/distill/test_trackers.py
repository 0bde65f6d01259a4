"""`distill.report_to`: TensorBoard (the default), W&B offline and none get the same metric names as
metrics.jsonl and the resolved YAML as their run config; a tracker is imported only when chosen;
`wandb` without its package is refused at config check, before any model loads (exit 2)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.distill.metrics import MetricsLogger, read_metrics
from stages.distill.trackers import HISTOGRAM
from stages.setting_rules import ConfigError
from tests.pipeline.test_distillation import loaded_models  # noqa: F401 (a pytest fixture)

REPO = Path(__file__).resolve().parents[3]
RUN_CONFIG = "name: demo\ndistill:\n  strategy: adaptive\n  tau: 0.15\n"
WANDB_SKIP = "wandb is not installed here: pip install -e '.[dev]' (or '.[wandb]') installs it"


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B account, no network, nothing written outside tmp_path; WANDB_MODE unset, so the
    tracker's own default (offline) is what runs."""
    pytest.importorskip("wandb", reason=WANDB_SKIP)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def wandb_records(log_dir: Path) -> tuple[dict, list[dict]]:
    """(run config, history rows) of the one offline W&B run under ``log_dir``, read from its
    `.wandb` transaction log (LevelDB-style 32 KiB blocks of 7-byte-headed chunks after a 7-byte
    file header, each record a `wandb_internal_pb2.Record`)."""
    import wandb
    from wandb.proto import wandb_internal_pb2

    # finish() returns before W&B's service process has written the run's last records; its
    # shutdown waits for them (a process that exits shuts it down the same way, at exit).
    wandb.teardown()
    (path,) = glob.glob(str(log_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    return config, history


def tensorboard_tags(log_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return events.Tags()


WINDOWS = [
    {"loss/total": 2.5, "gate/mean_w/a": 0.75, "tokens": 100, "gate/selected_hist": [0, 3, 1]},
    {"loss/total": 2.0, "gate/mean_w/a": float("nan"), "tokens": 90, "gate/selected_hist": [0, 2, 2]},
]


def _log_two_windows(log_dir: Path, report_to: list[str]) -> list[dict]:
    logger = MetricsLogger(
        log_dir, enabled=True, total_steps=2, progress=False, report_to=report_to, run_config=RUN_CONFIG
    )
    for step, metrics in enumerate(WINDOWS, start=1):
        logger.log(step, metrics)
    logger.close()
    return read_metrics(log_dir / "metrics.jsonl")


def test_tensorboard_gets_the_jsonl_names_and_the_config(tmp_path: Path) -> None:
    records = _log_two_windows(tmp_path, ["tensorboard"])
    assert [r["loss/total"] for r in records] == [2.5, 2.0]
    tags = tensorboard_tags(tmp_path)
    assert set(tags["scalars"]) == {"loss/total", "gate/mean_w/a", "tokens"}  # lists are no scalars
    assert tags["histograms"] == [HISTOGRAM]
    assert "config/text_summary" in tags["tensors"]
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_gets_the_same_names_and_the_resolved_yaml(tmp_path: Path, offline_wandb) -> None:
    records = _log_two_windows(tmp_path, ["wandb", "tensorboard"])
    config, history = wandb_records(tmp_path)
    assert config == yaml.safe_load(RUN_CONFIG)
    assert [row["_step"] for row in history] == [1, 2]
    for row, record in zip(history, records, strict=True):
        scalars = {k: v for k, v in row.items() if not k.startswith(("_", HISTOGRAM))}
        finite = {k: v for k, v in record.items() if k not in ("step", "time", "gate/selected_hist")}
        assert scalars == {k: v for k, v in finite.items() if v == v}  # NaN goes to the JSONL only
        assert row[f"{HISTOGRAM}/values"] == record["gate/selected_hist"]
    assert set(tensorboard_tags(tmp_path)["scalars"]) == {"loss/total", "gate/mean_w/a", "tokens"}


def test_none_writes_metrics_jsonl_alone_and_imports_no_tracker(tmp_path: Path) -> None:
    assert len(_log_two_windows(tmp_path, ["none"])) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    # A fresh process: what `none` and `tensorboard` import (this one has imported both already).
    probe = (
        "import sys\n"
        "from stages.distill.metrics import MetricsLogger\n"
        f"MetricsLogger({str(tmp_path / 'probe')!r}, enabled=True, total_steps=1, progress=False, "
        "report_to=sys.argv[1:])\n"
        "print(sorted(m for m in ('wandb', 'torch.utils.tensorboard') if m in sys.modules))\n"
    )
    for report_to, imported in ((["none"], "[]"), (["tensorboard"], "['torch.utils.tensorboard']")):
        out = subprocess.run(
            [sys.executable, "-c", probe, *report_to],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip().splitlines()[-1] == imported


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        ([], "must name each tracker once"),
        (["tensorboard", "tensorboard"], "must name each tracker once"),
        (["none", "tensorboard"], "cannot list none beside a tracker"),
        (["comet"], "must be one of 'tensorboard', 'wandb', 'none', got \\['comet'\\]"),
    ],
)
def test_bad_report_to_is_a_config_error(report_to: list[str], message: str) -> None:
    from pipeline.config import config_from_dict

    with pytest.raises(ConfigError, match=message):
        config_from_dict({"distill": {"report_to": report_to}})
    assert config_from_dict({"distill": {"report_to": "none"}}).distill.report_to == ["none"]


def test_wandb_without_its_package_exits_2_before_any_model_loads(
    world,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loaded_models: list[str],  # noqa: F811 (the fixture imported above)
) -> None:
    from pipeline.cli import app

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec finds nothing
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(dataclasses.asdict(world.config_for(tmp_path / "runs"))))
    result = CliRunner().invoke(app, ["distill", "--config", str(config), "distill.report_to=wandb"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "distill.report_to lists wandb, which is not installed" in line and "pip install wandb" in line
    assert loaded_models == [] and not (tmp_path / "runs").exists()


def test_a_distill_run_reports_to_wandb_and_tensorboard_alike(world, tmp_path: Path, offline_wandb) -> None:
    from pipeline.distillation import distill_from_config

    config = world.config_for(
        tmp_path / "runs", name="tracked", max_steps=2, log_every=1, report_to=["tensorboard", "wandb"]
    )
    run = distill_from_config(config, strategy="adaptive", progress=False)
    logs = tmp_path / "runs" / "tracked" / "logs"
    records = read_metrics(logs / "metrics.jsonl")
    scalars = {k for k, v in records[-1].items() if isinstance(v, float | int) and k not in ("step", "time")}
    assert {"loss/total", "gate/mean_w/smol", "align/aligned_rate/gemma"} <= scalars
    wandb_config, history = wandb_records(logs)
    exported = yaml.safe_load((run.export_dir / "config.yaml").read_text())
    assert wandb_config == exported  # the run config is the resolved YAML
    assert [row["_step"] for row in history] == [1, 2]
    assert {k for k in history[-1] if not k.startswith(("_", HISTOGRAM))} == scalars
    assert set(tensorboard_tags(logs)["scalars"]) == scalars
