import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, ConfigError, config_from_dict, describe_fields, load_config

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_configs_load() -> None:
    demo = load_config(REPO / "configs/demo.yaml")
    assert [t.name for t in demo.teachers] == ["smollm2", "gemma3", "qwen-coder"]
    assert {s.domain for s in demo.corpus.sources} == {"prose", "reference", "code", "math"}
    paper = load_config(REPO / "configs/paper-7b.yaml")
    assert (paper.extract.top_k, paper.distill.lam, paper.distill.tau, paper.distill.beta) == (
        10,
        0.9,
        0.15,
        0.5,
    )


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/demo.yaml")
    again = load_config(_write(tmp_path, dataclasses.asdict(cfg)))
    assert again == cfg


def test_overrides_by_key_index_and_name(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs/demo.yaml",
        [
            "extract.top_k=5",
            "teachers.gemma3.max_shards=3",
            "teachers.0.path=/x",
            "distill.strategy=min_ce",
            "distill.gate_features=all",
        ],
    )
    assert cfg.extract.top_k == 5
    assert cfg.teacher("gemma3").max_shards == 3
    assert cfg.teachers[0].path == "/x"
    assert cfg.distill.strategy == "min_ce"
    assert cfg.distill.gate_features == "all"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"extract": {"topk": 10}}, r"unknown key\(s\) extract.topk"),
        ({"extract": {"top_k": "ten"}}, "extract.top_k must be of type int, got 'ten'"),
        ({"extract": {"top_k": 0}}, "extract.top_k must be at least 1, got 0"),
        ({"extract": {"top_k": 64}}, "raise extract.vllm_max_logprobs or lower extract.top_k"),
        ({"corpus": {"max_chars": 10}}, "corpus.max_chars must be at least 64"),
        ({"teachers": [{"name": "a"}]}, "required key teachers.path is missing"),
        ({"teachers": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "must be unique"),
        (
            {"corpus": {"sources": [{"path": "a", "domain": "d"}, {"path": "b", "domain": "d"}]}},
            r"corpus.sources\[\].domain must be unique",
        ),
        ({"distill": {"zero_stage": 4}}, "distill.zero_stage must be one of 0, 1, 2, 3, got 4"),
    ],
)
def test_bad_config_names_file_key_and_value(tmp_path: Path, data: dict, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(REPO / "configs/demo.yaml", ["extract.top_k"])
    with pytest.raises(ConfigError, match="no list item 'nobody'"):
        load_config(REPO / "configs/demo.yaml", ["teachers.nobody.path=x"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_is_documented() -> None:
    rows = describe_fields()
    undocumented = [key for key, _, doc in rows if not doc and key not in ("corpus", "student", "teachers")]
    assert undocumented == [], undocumented
    assert config_from_dict({}) == Config()


def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML's default) reads 5e-5 as a string; a learning rate written so is a number.
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  lr: 5e-5\n  gate_lr: 1E-3\n")
    config = load_config(path, ["distill.beta=2e-1"])
    assert (config.distill.lr, config.distill.gate_lr, config.distill.beta) == (5e-5, 1e-3, 0.2)
    assert load_config(path, ["name=1e5x"]).name == "1e5x"  # not a number: still a string


def test_a_choice_field_names_its_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'renormalised', 'residual', 'sampled', got 'topp'"):
        config_from_dict({"distill": {"target": "topp"}})
