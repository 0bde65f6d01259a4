import json
from pathlib import Path

import polars as pl
import pytest

from data_schemas.manifest import read_manifest
from pipeline.cache_check import Repairs, cache_faults
from stages.prepare.prepare import prepare_corpus
from stages.prepare.settings import CorpusSettings, CorpusSource

SETTINGS = {"max_chars": 200, "heldout_fraction": 0.25, "samples_per_shard": 8, "seed": 0}
OLD_KEY = "e8d92d4866893eb6"
"""The key of the `sources` fixture's corpus under SETTINGS, computed before empty documents were
counted (issue 24, item 5)."""


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    return path


@pytest.fixture
def sources(tmp_path: Path) -> list[CorpusSource]:
    prose = _write_jsonl(tmp_path / "prose.jsonl", [f"Paragraph {i}. " * (5 + i) for i in range(12)])
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    for i in range(6):
        (code_dir / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n\n" * (3 + i))
    return [CorpusSource(prose, "prose"), CorpusSource(code_dir, "code")]


def test_prepare_writes_shards_split_by_document(tmp_path: Path, sources: list[CorpusSource]) -> None:
    out = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "cache")
    assert out.created and out.manifest.complete
    assert cache_faults(out.directory, Repairs()) == []
    train = pl.read_parquet(sorted((out.directory / "train").glob("*.parquet")))
    heldout = pl.read_parquet(sorted((out.directory / "heldout").glob("*.parquet")))
    assert set(train["domain"]) == set(heldout["domain"]) == {"prose", "code"}
    pairs = lambda df: set(zip(df["domain"], df["doc_id"]))  # noqa: E731
    assert not pairs(train) & pairs(heldout), "a document appears in both splits"
    all_rows = pl.concat([train, heldout])
    assert all_rows["sample_id"].n_unique() == all_rows.height
    # Every document comes back whole from its chunks.
    doc = all_rows.filter(pl.col("domain") == "prose", pl.col("doc_id") == "d11").sort("chunk_index")
    assert "".join(doc["text"]) == "Paragraph 11. " * 16
    assert all_rows["text"].str.len_chars().max() <= SETTINGS["max_chars"]


def test_rerun_writes_nothing_and_a_changed_file_changes_the_key(
    tmp_path: Path, sources: list[CorpusSource]
) -> None:
    first = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "cache")
    mtimes = {p: p.stat().st_mtime_ns for p in first.directory.rglob("*")}
    again = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "cache")
    assert not again.created and again.key == first.key
    assert {p: p.stat().st_mtime_ns for p in first.directory.rglob("*")} == mtimes
    ids_first = pl.read_parquet(sorted(first.directory.rglob("*.parquet")))["sample_id"].to_list()
    (sources[1].path / "m0.py").write_text("changed = True\n")
    changed = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "cache")
    assert changed.created and changed.key != first.key
    assert first.directory.exists(), "the old corpus must stay untouched"
    assert read_manifest(first.directory).complete
    ids_changed = pl.read_parquet(sorted(changed.directory.rglob("*.parquet")))["sample_id"].to_list()
    assert [i for i in ids_first if i.startswith("prose")] == [
        i for i in ids_changed if i.startswith("prose")
    ]


def test_sample_ids_are_stable_across_runs(tmp_path: Path, sources: list[CorpusSource]) -> None:
    a = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "a")
    b = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "b")
    assert a.key == b.key
    for shard in a.manifest.shards:
        assert (a.directory / shard.name).read_bytes() == (b.directory / shard.name).read_bytes()


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        (b"", "jsonl", "the corpus is empty"),
        (b'{"id": 1, "body": "x"}\n', "jsonl", "has no text field 'text'"),
        (b"caf\xe9 au lait", "text", "is not UTF-8"),
        (b'{"text": "x"\n', "jsonl", "is not valid JSON"),
    ],
)
def test_bad_input_is_a_value_error_and_leaves_nothing(
    tmp_path: Path, content: bytes, fmt: str, message: str
) -> None:
    src = tmp_path / ("in.jsonl" if fmt == "jsonl" else "in.txt")
    src.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        prepare_corpus(CorpusSettings([CorpusSource(src, "prose", fmt)], **SETTINGS), tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.parquet"))


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist: fix corpus.sources"):
        prepare_corpus(
            CorpusSettings([CorpusSource(tmp_path / "nope.jsonl", "prose")], **SETTINGS), tmp_path / "cache"
        )


def test_parquet_and_saved_dataset_sources(tmp_path: Path) -> None:
    import datasets

    docs = [{"id": f"p{i}", "text": f"Document number {i}. " * 4} for i in range(5)]
    pl.DataFrame(docs).write_parquet(tmp_path / "docs.parquet")
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "ds"))
    out = prepare_corpus(
        CorpusSettings(
            [CorpusSource(tmp_path / "docs.parquet", "a"), CorpusSource(tmp_path / "ds", "b")], **SETTINGS
        ),
        tmp_path / "cache",
    )
    rows = pl.read_parquet(sorted(out.directory.rglob("*.parquet")))
    assert rows.group_by("domain").len().sort("domain")["len"].to_list() == [5, 5]


def test_empty_documents_are_dropped_before_the_heldout_draw_and_counted(tmp_path: Path) -> None:
    """Two documents with text among eight whitespace-only ones, the two that the seeded draw ranks
    first: counting the empty ones, a held-out fraction of 0.5 would hold out five documents, both
    real ones among them, and leave the domain without a training sample."""
    from stages.prepare.prepare import _rank

    ids = [f"d{i}" for i in range(10)]
    real = set(sorted(ids, key=lambda d: _rank(0, "prose", d))[:2])
    texts = {d: (f"Text of {d}. " * 5 if d in real else " \n\t ") for d in ids}
    path = tmp_path / "prose.jsonl"
    path.write_text("".join(json.dumps({"id": d, "text": texts[d]}) + "\n" for d in ids))
    code = _write_jsonl(tmp_path / "code.jsonl", [f"def f{i}(): return {i}\n" for i in range(4)])
    settings = CorpusSettings(
        [CorpusSource(path, "prose"), CorpusSource(code, "code")], **{**SETTINGS, "heldout_fraction": 0.5}
    )
    out = prepare_corpus(settings, tmp_path / "cache")
    train = pl.read_parquet(sorted((out.directory / "train").glob("*.parquet")))
    heldout = pl.read_parquet(sorted((out.directory / "heldout").glob("*.parquet")))
    prose_train = set(train.filter(pl.col("domain") == "prose")["doc_id"])
    prose_heldout = set(heldout.filter(pl.col("domain") == "prose")["doc_id"])
    assert len(prose_train) == len(prose_heldout) == 1 and prose_train | prose_heldout == real
    # The sample ids keep each document's position in its source.
    positions = {
        int(s.split(":")[1])
        for s in pl.concat([train, heldout]).filter(pl.col("domain") == "prose")["sample_id"]
    }
    assert positions == {ids.index(d) for d in real}
    described = {s["domain"]: s for s in out.manifest.header["sources"]}
    assert described["prose"]["empty_documents"] == 8 and "empty_documents" not in described["code"]


def test_a_corpus_without_empty_documents_keeps_its_key(tmp_path: Path, sources: list[CorpusSource]) -> None:
    """Counting empty documents changes the key only of sources that hold some: this corpus's key is
    the one the version before the count computed (the demo caches stay valid)."""
    out = prepare_corpus(CorpusSettings(sources, **SETTINGS), tmp_path / "cache")
    assert out.key == OLD_KEY


def test_a_domain_of_empty_documents_only_is_refused(tmp_path: Path) -> None:
    blank = _write_jsonl(tmp_path / "blank.jsonl", ["  ", "\n"])
    prose = _write_jsonl(tmp_path / "prose.jsonl", ["Some text. " * 5, "More text. " * 5])
    settings = CorpusSettings([CorpusSource(prose, "prose"), CorpusSource(blank, "blank")], **SETTINGS)
    with pytest.raises(ValueError, match=r"corpus domain\(s\) \['blank'\] hold no text"):
        prepare_corpus(settings, tmp_path / "cache")
