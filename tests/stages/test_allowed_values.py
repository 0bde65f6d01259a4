"""Every choice of the config has its allowed values written once, as a `Literal`, and checked once,
where the config is checked: no other module of the product spells the set, and the config refuses
any other value with one line naming the key, the value and the choices."""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
import typing
from pathlib import Path

import pytest

from data_schemas import teacher_shard
from pipeline.config import ConfigError, config_from_dict
from stages.align import vocab_map
from stages.distill import loader
from stages.distill import settings as distill_settings
from stages.distill.settings import DistillSettings
from stages.extract import settings as extract_settings
from stages.extract.settings import ExtractSettings

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("pipeline", "stages", "data_schemas")

CHOICES = {
    (distill_settings, "TopkTarget"),
    (distill_settings, "Target"),
    (distill_settings, "Objective"),
    (distill_settings, "GateFeatures"),
    (distill_settings, "GateObjective"),
    (distill_settings, "FeedbackScope"),
    (distill_settings, "VocabMapName"),
    (distill_settings, "Aligner"),
    (distill_settings, "ZeroStage"),
    (distill_settings, "TrainingDtype"),
    (distill_settings, "TrackerName"),
    (extract_settings, "ExtractDtype"),
    (extract_settings, "ExtractBackend"),
    (teacher_shard, "LogprobLayout"),
    (vocab_map, "VocabMapMode"),
}


@functools.cache
def _spelled_sets(path: Path) -> list[tuple[int, set[tuple[type, object]]]]:
    """(line, {(type, value)}) of every tuple, list or set display of constants in `path`, except
    the arguments of a `Literal[...]` (where a choice is defined)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_literal = {
        id(node.slice)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal"
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set) and id(node) not in in_literal:
            values = {(type(e.value), e.value) for e in node.elts if isinstance(e, ast.Constant)}
            if values:
                found.append((node.lineno, values))
    return found


@pytest.mark.parametrize(
    ("module", "name"), [pytest.param(m, n, id=n) for m, n in sorted(CHOICES, key=lambda c: c[1])]
)
def test_no_other_module_spells_the_allowed_values(module, name: str) -> None:
    allowed = {(type(v), v) for v in typing.get_args(getattr(module, name))}
    assert len(allowed) >= 2
    spelled = [
        f"{path.relative_to(REPO)}:{line}"
        for folder in PRODUCT
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, values in _spelled_sets(path)
        if allowed <= values
    ]
    assert not spelled, f"{name}'s values {sorted(v for _, v in allowed)} are spelled again at {spelled}"


def test_the_gate_feature_table_covers_every_choice() -> None:
    assert tuple(loader.GATE_FEATURES) == typing.get_args(distill_settings.GateFeatures)


def _literal_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is typing.Literal]


@pytest.mark.parametrize(
    ("section", "field"),
    [("distill", f) for f in _literal_fields(DistillSettings)]
    + [("extract", f) for f in _literal_fields(ExtractSettings)],
)
def test_the_config_refuses_a_value_outside_the_choice(section: str, field: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^<dict>: {section}\.{field} must be one of .*, got 'bogus'"
    ) as err:
        config_from_dict({section: {field: "bogus"}})
    assert "\n" not in str(err.value)


def test_settings_built_in_code_are_checked_too() -> None:
    """The experiment and the curves build each arm's settings with `dataclasses.replace`, which the
    YAML loader never sees: `check` refuses a bad choice there, also True for a ZeRO stage."""
    for field, value in (("gate_objective", "student"), ("zero_stage", True), ("report_to", ["comet"])):
        with pytest.raises(
            ConfigError, match=rf"^distill\.{field} must be one of .*, got {re.escape(repr(value))}"
        ):
            dataclasses.replace(DistillSettings(), **{field: value}).check()
    with pytest.raises(ConfigError, match=r"^extract\.backend must be one of 'auto', 'vllm'"):
        dataclasses.replace(ExtractSettings(), backend="onnx").check()
    with pytest.raises(ConfigError, match=r"teachers\.0\.dtype must be one of"):
        config = config_from_dict({"teachers": [{"name": "a", "path": "x"}]})
        config.teachers[0].dtype = "fp8"
        config.check()
