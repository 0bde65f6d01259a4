"""What a resume must share with its checkpoint (every distill setting but an explicit few, the
teachers, the caches' keys, the seed, the student, the ranks), which checkpoint folders are
complete, and a full disk told apart from other write errors."""

from __future__ import annotations

import dataclasses
import errno
import typing
from pathlib import Path

import pytest

from stages.distill.run_state import (
    RESUMABLE_SETTINGS,
    complete_checkpoint_tags,
    disk_full,
    disk_full_message,
    incomplete_checkpoint_tags,
    resume_changes,
    resume_record,
)
from stages.distill.settings import DistillSettings

FIELDS = [f.name for f in dataclasses.fields(DistillSettings)]


def record(settings: DistillSettings, **identity: typing.Any) -> dict[str, typing.Any]:
    base = {
        "teachers": ["smol", "gemma"],
        "input_keys": {"corpus_key": "c0", "teacher_key smol": "k1", "teacher_key gemma": "k2"},
        "seed": 0,
        "student": "models/student",
        "world_size": 1,
    }
    return resume_record(settings, **{**base, **identity})


def changed_value(name: str) -> typing.Any:
    """A valid value of the field other than its default, from its type: a field of a new type
    fails here until this function knows it (so it cannot slip past the resume check)."""
    default = getattr(DistillSettings(), name)
    kind = typing.get_type_hints(DistillSettings)[name]
    if typing.get_origin(kind) is typing.Literal:
        return next(v for v in typing.get_args(kind) if v != default)
    if name == "strategy":
        return "min_ce"
    if kind is bool:
        return not default
    if kind is int:
        return default + 1
    if kind is float:
        return default / 2 if default else 0.5
    if kind == str | None:
        return "configs/ds.json"
    if kind == float | None:
        return None if default is not None else 0.5
    if kind == int | None:
        return 2 if default is None else None
    if name == "report_to":
        return ["none"]
    raise AssertionError(f"distill.{name} has a type ({kind}) this test cannot change: teach changed_value")


@pytest.mark.parametrize("name", FIELDS)
def test_every_distill_setting_is_refused_on_resume_unless_listed_as_resumable(name: str) -> None:
    settings = DistillSettings()
    changed = dataclasses.replace(settings, **{name: changed_value(name)})
    changed.check()
    changes = resume_changes(record(settings), record(changed))
    if name in RESUMABLE_SETTINGS:
        assert changes == []
    else:
        assert changes == [f"{name} {getattr(settings, name)!r} → {getattr(changed, name)!r}"]


def test_the_resumable_settings_are_a_small_explicit_list() -> None:
    assert {
        "checkpoint_every",
        "log_every",
        "keep_checkpoints",
        "loader_workers",
        "export_every",
        "report_to",
    } == RESUMABLE_SETTINGS
    assert set(FIELDS) >= RESUMABLE_SETTINGS


def test_teachers_cache_keys_seed_student_and_ranks_are_compared() -> None:
    saved = record(DistillSettings())
    keys = {"corpus_key": "c0", "teacher_key smol": "k1", "teacher_key gemma": "k2-other-path"}
    assert resume_changes(saved, record(DistillSettings(), input_keys=keys)) == [
        "teacher_key gemma 'k2' → 'k2-other-path'"
    ]
    fewer = record(
        DistillSettings(), teachers=["smol"], input_keys={"corpus_key": "c0", "teacher_key smol": "k1"}
    )
    assert resume_changes(saved, fewer) == [
        "teacher_key gemma 'k2' → (none)",
        "teachers ['smol', 'gemma'] → ['smol']",
    ]
    assert resume_changes(saved, record(DistillSettings(), seed=1, world_size=2, student="other")) == [
        "seed 0 → 1",
        "student 'models/student' → 'other'",
        "world_size 1 → 2",
    ]


def test_a_checkpoint_is_complete_only_once_latest_names_it(tmp_path: Path) -> None:
    for tag in ("step-000002", "step-000004", "step-000006"):
        (tmp_path / tag).mkdir()
    assert complete_checkpoint_tags(tmp_path) == []  # no `latest`: the first was cut short
    assert incomplete_checkpoint_tags(tmp_path) == ["step-000002", "step-000004", "step-000006"]
    (tmp_path / "latest").write_text("step-000004")
    assert complete_checkpoint_tags(tmp_path) == ["step-000002", "step-000004"]
    assert incomplete_checkpoint_tags(tmp_path) == ["step-000006"]


def test_a_full_disk_is_told_apart_from_other_write_errors(tmp_path: Path) -> None:
    torch_message = "[enforce fail at inline_container.cc:672] . unexpected pos 1152 vs 1040"
    assert disk_full(RuntimeError(torch_message))
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(RuntimeError("CUDA error: out of memory"))
    message = disk_full_message(tmp_path / "checkpoints" / "step-000003")
    assert f"checkpoint {tmp_path / 'checkpoints' / 'step-000003'} could not be written" in message
    assert "is full" in message and "MiB free now" in message and "--resume" in message
    assert "\n" not in message
