"""The run's logs: metrics.jsonl and the sample log as a resumed run finds them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from stages.distill.metrics import MetricsLogger, SampleLog, read_metrics


def write_log(path: Path, steps: list[int], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": s, "loss/total": 1.0 / s}) + "\n" for s in steps) + tail)


@pytest.mark.parametrize("checkpoint_step", [3, 2])
def test_a_torn_last_line_is_dropped_on_resume_with_the_file_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, checkpoint_step: int
) -> None:
    """A full disk (or a kill) during a log write leaves half a record; the resumed run keeps the
    complete records at or before its checkpoint step and logs on after them."""
    path = tmp_path / "logs" / "metrics.jsonl"
    write_log(path, [1, 2, 3], tail='{"step": 4, "loss/tot')
    with caplog.at_level(logging.WARNING):
        logger = MetricsLogger(
            tmp_path / "logs",
            enabled=True,
            total_steps=6,
            start_step=checkpoint_step,
            progress=False,
            report_to=("none",),
        )
    assert [r["step"] for r in read_metrics(path)] == list(range(1, checkpoint_step + 1))
    assert f"{path}: dropped 1 torn line(s)" in caplog.text
    logger.log(checkpoint_step + 1, {"loss/total": 0.5})
    logger.close()
    assert [r["step"] for r in read_metrics(path)] == list(range(1, checkpoint_step + 2))


def test_a_torn_line_inside_the_sample_log_is_dropped_too(tmp_path: Path) -> None:
    path = tmp_path / "samples-rank0.jsonl"
    path.write_text(
        '{"step": 1, "sample_ids": ["a"]}\n{"step": 2, "sampl\x00\x00\n{"step": 2, "sample_ids": ["b"]}\n'
    )
    log = SampleLog(tmp_path, 0, start_step=2)
    log.close()
    assert [json.loads(line)["sample_ids"] for line in path.read_text().splitlines()] == [["a"], ["b"]]
