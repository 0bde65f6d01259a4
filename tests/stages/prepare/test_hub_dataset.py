"""Corpus sources by hub dataset id, offline: a temporary HF_HUB_CACHE holding dataset repos laid
out as huggingface_hub lays them out (refs/main → snapshots/<commit>/data/train-*.parquet, a JSONL
one, one with two configs in its README). The commit is the corpus key's; a moved branch is
another corpus, a pinned commit stays; every bad input is one ValueError line (exit 2) with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.config import config_from_dict
from stages import model_source
from stages.prepare.prepare import prepare_corpus
from stages.prepare.settings import CorpusSettings, CorpusSource
from stages.setting_rules import ConfigError
from tests.hub_cache import add_snapshot, point_branch

COMMIT_1, COMMIT_2 = "a" * 40, "b" * 40
SETTINGS = {"max_chars": 200, "heldout_fraction": 0.25, "samples_per_shard": 8, "seed": 0}
TRAIN_DOCS = [f"Web page number {i}. " * (3 + i % 4) for i in range(9)]
TEST_DOCS = ["A test page. " * 3, "Another test page. " * 2]


def _parquet_repo(root: Path, docs: list[str]) -> Path:
    """data/train-0000{0,1}-of-00002.parquet (docs split in two) and data/test-00000-of-00001.parquet,
    with the text in `content` and an id in `uid` (train0, train1, …, test0, …)."""
    data = root / "data"
    data.mkdir(parents=True)
    files = [("train-00000-of-00002", 0, docs[:5]), ("train-00001-of-00002", 5, docs[5:])]
    for name, start, texts in [*files, ("test-00000-of-00001", 0, TEST_DOCS)]:
        ids = [f"{name.split('-')[0]}{start + i}" for i in range(len(texts))]
        pq.write_table(pa.table({"content": texts, "uid": ids}), data / f"{name}.parquet")
    return root


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline HF_HUB_CACHE: org/web at two commits (main → the first; the second has one more
    document), org/lines as JSONL, org/texts as text files, org/multi with two configs."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    model_source._resolve_hub.cache_clear()  # a fresh process: resolution is once per process
    add_snapshot(hub, "org/web", COMMIT_1, _parquet_repo(tmp_path / "web1", TRAIN_DOCS), "dataset")
    more = [*TRAIN_DOCS, "One more page. " * 5]
    add_snapshot(hub, "org/web", COMMIT_2, _parquet_repo(tmp_path / "web2", more), "dataset")
    point_branch(hub, "org/web", "main", COMMIT_1, "dataset")

    lines = tmp_path / "lines" / "data"
    lines.mkdir(parents=True)
    rows = [{"id": f"l{i}", "text": f"Line document {i}. " * 4} for i in range(6)]
    (lines / "train-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    add_snapshot(hub, "org/lines", COMMIT_1, lines.parent, "dataset")
    point_branch(hub, "org/lines", "main", COMMIT_1, "dataset")

    texts = tmp_path / "texts" / "data"
    texts.mkdir(parents=True)
    for i in range(3):
        (texts / f"train-{i}.txt").write_text(f"Text file {i}.\n\nIts second paragraph.\n")
    add_snapshot(hub, "org/texts", COMMIT_1, texts.parent, "dataset")
    point_branch(hub, "org/texts", "main", COMMIT_1, "dataset")

    multi = tmp_path / "multi"
    for config in ("small", "large"):
        (multi / config).mkdir(parents=True)
        docs = [{"text": f"{config} document {i}. " * 4} for i in range(3 if config == "small" else 7)]
        (multi / config / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    front = {
        "configs": [
            {"config_name": c, "data_files": [{"split": "train", "path": f"{c}/train.jsonl"}]}
            for c in ("small", "large")
        ]
    }
    (multi / "README.md").write_text(f"---\n{yaml.safe_dump(front)}---\n# Two configs\n")
    add_snapshot(hub, "org/multi", COMMIT_1, multi, "dataset")
    point_branch(hub, "org/multi", "main", COMMIT_1, "dataset")
    yield hub
    model_source._resolve_hub.cache_clear()


def _prepare(tmp_path: Path, *sources: CorpusSource, **settings: object):
    return prepare_corpus(CorpusSettings(list(sources), **{**SETTINGS, **settings}), tmp_path / "cache")


def _rows(prepared) -> pl.DataFrame:
    return pl.read_parquet(sorted(prepared.directory.rglob("*.parquet")))


def test_a_parquet_dataset_is_read_from_its_pinned_snapshot(hub: Path, tmp_path: Path) -> None:
    local = tmp_path / "local.jsonl"
    local.write_text("".join(json.dumps({"text": f"Local {i}. " * 5}) + "\n" for i in range(4)))
    web = CorpusSource(dataset="org/web", domain="web", text_field="content", id_field="uid")
    first = _prepare(tmp_path, web, CorpusSource(str(local), "local"))
    rows = _rows(first)
    web_rows = rows.filter(pl.col("domain") == "web")
    # Every train document, whole from its chunks, and nothing of the test split.
    texts = {doc: "".join(group.sort("chunk_index")["text"]) for (doc,), group in web_rows.group_by("doc_id")}
    assert texts == {f"train{i}": text for i, text in enumerate(TRAIN_DOCS)}
    described = first.manifest.header["sources"][0]
    assert (described["dataset"], described["revision"], described["split"]) == ("org/web", COMMIT_1, "train")

    # The same commit by any name is the same corpus; a moved branch is another one.
    pinned = CorpusSource(dataset=f"org/web@{COMMIT_1}", domain="web", text_field="content", id_field="uid")
    again = _prepare(tmp_path, pinned, CorpusSource(str(local), "local"))
    assert again.key == first.key and not again.created
    point_branch(hub, "org/web", "main", COMMIT_2, "dataset")
    assert _prepare(tmp_path, web, CorpusSource(str(local), "local")).key == first.key  # resolved once
    model_source._resolve_hub.cache_clear()  # the next process
    moved = _prepare(tmp_path, web, CorpusSource(str(local), "local"))
    assert moved.key != first.key and moved.manifest.header["sources"][0]["revision"] == COMMIT_2
    assert _rows(moved).filter(pl.col("domain") == "web")["doc_id"].n_unique() == 10


def test_a_split_a_jsonl_dataset_and_a_config_are_read(hub: Path, tmp_path: Path) -> None:
    test_split = CorpusSource(dataset="org/web", domain="web", split="test", text_field="content")
    assert sorted(_rows(_prepare(tmp_path, test_split, heldout_fraction=0.0))["text"]) == sorted(TEST_DOCS)
    by_pattern = CorpusSource(
        dataset="org/web", domain="web", split="train", text_field="content", data_files="data/test-*"
    )
    assert sorted(_rows(_prepare(tmp_path, by_pattern, heldout_fraction=0.0))["text"]) == sorted(TEST_DOCS)

    lines = _rows(_prepare(tmp_path, CorpusSource(dataset="org/lines", domain="lines")))
    assert sorted(lines["doc_id"]) == [f"l{i}" for i in range(6)]

    # A text file is one document, as in a local folder of text files.
    texts = _rows(_prepare(tmp_path, CorpusSource(dataset="org/texts", domain="texts"), heldout_fraction=0.0))
    assert sorted(texts["text"]) == [f"Text file {i}.\n\nIts second paragraph.\n" for i in range(3)]

    for config, count in (("small", 3), ("large", 7)):
        source = CorpusSource(dataset="org/multi", domain="multi", config_name=config)
        rows = _rows(_prepare(tmp_path, source, heldout_fraction=0.0))
        assert rows.height == count and rows["text"].str.starts_with(config).all()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"dataset": "org/missing"},
            r"dataset 'org/missing' could not be resolved from the local Hugging Face cache .*"
            r"hf download org/missing --repo-type dataset",
        ),
        ({"dataset": "org/web@v9"}, r"'org/web@v9'.*--repo-type dataset --revision v9"),
        (
            {"dataset": "org/web", "split": "validation", "text_field": "content"},
            r"no split 'validation' \(its splits: test, train\): set corpus.sources\[\].split",
        ),
        (
            {"dataset": "org/web"},
            r"row 0 has no text field 'text' \(its fields: content, uid\): set corpus.sources\[\].text_field",
        ),
        ({"dataset": "org/multi", "config_name": "huge"}, r"'huge'.*fix corpus.sources\[\].config_name"),
        (
            {"dataset": "org/web", "data_files": "nothing/*.parquet"},
            r"nothing/\*.parquet.*fix corpus.sources\[\].config_name or corpus.sources\[\].data_files",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_value_and_the_fix(
    hub: Path, tmp_path: Path, source: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _prepare(tmp_path, CorpusSource(domain="web", **source))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.parquet"))


def test_the_cli_exits_2_with_one_line(hub: Path, tmp_path: Path) -> None:
    from pipeline.cli import app

    for source, named in (
        ({"dataset": "org/missing"}, "org/missing"),
        ({"dataset": "org/web", "split": "dev", "text_field": "content"}, "its splits: test, train"),
        ({"dataset": "org/web"}, "its fields: content, uid"),
    ):
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {"cache_dir": str(tmp_path / "cache"), "corpus": {"sources": [{"domain": "web", **source}]}}
            )
        )
        result = CliRunner().invoke(app, ["prepare", "--config", str(config)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"domain": "web"}, "needs exactly one of path .* and dataset"),
        ({"domain": "web", "path": "x.jsonl", "dataset": "org/web"}, "needs exactly one of path"),
        ({"domain": "web", "dataset": "web"}, "dataset must be a hub dataset id org/name"),
        ({"domain": "web", "dataset": "org/web", "format": "jsonl"}, "format applies to path sources only"),
        (
            {"domain": "web", "path": "x.jsonl", "split": "train", "data_files": "*.txt"},
            "data_files applies to",
        ),
        ({"dataset": "org/web"}, r"corpus.sources.0.domain must not be empty"),
    ],
)
def test_config_rules_of_a_source(source: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"corpus": {"sources": [source]}})
