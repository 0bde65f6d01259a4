"""Hub ids as model paths, offline: a temporary HF_HOME laid out as the hub cache (refs, snapshots,
blobs) holding a tiny model; a branch that moves gives another teacher key, a pinned revision does
not move, a local folder wins, and an id not in the cache is a user error naming the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import config_from_dict
from pipeline.extraction import load_teacher_tokenizer, plan_teacher, prepare_shared_corpus
from stages import model_source
from stages.extract.model_fingerprint import model_fingerprint
from stages.model_source import resolve_model
from tests.hub_cache import add_snapshot, point_branch
from tests.pipeline.test_extraction import write_config, write_corpus
from tests.tiny_models import save_tiny_llama

SMOLLM2 = Path(__file__).resolve().parents[2] / "models" / "tokenizers" / "smollm2-135m-instruct"
COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SMOLLM2 / "tokenizer.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: run `make setup`")
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", SMOLLM2)


@pytest.fixture
def hub(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline HF_HOME whose cache holds org/tiny at two commits, main → the first."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_source._resolve_hub.cache_clear()  # a fresh process: resolution is once per process
    hub = tmp_path / "hf" / "hub"
    for commit in (COMMIT_1, COMMIT_2):
        add_snapshot(hub, "org/tiny", commit, tiny_model)
    point_branch(hub, "org/tiny", "main", COMMIT_1)
    yield hub
    model_source._resolve_hub.cache_clear()


def test_a_hub_id_resolves_to_the_snapshot_its_branch_points_at(hub: Path) -> None:
    source = resolve_model("org/tiny")
    assert source.folder == hub / "models--org--tiny" / "snapshots" / COMMIT_1
    assert (source.repo_id, source.revision, source.pinned) == ("org/tiny", COMMIT_1, f"org/tiny@{COMMIT_1}")
    assert resolve_model("org/tiny@main").revision == COMMIT_1
    before = model_fingerprint("org/tiny")
    point_branch(hub, "org/tiny", "main", COMMIT_2)
    assert resolve_model("org/tiny").revision == COMMIT_1  # resolved once per process
    model_source._resolve_hub.cache_clear()  # the next process
    assert resolve_model("org/tiny").revision == COMMIT_2
    assert model_fingerprint("org/tiny") != before
    assert resolve_model(f"org/tiny@{COMMIT_1}").revision == COMMIT_1  # a pinned revision stays


def test_a_moved_branch_is_another_teacher_key(hub: Path, tmp_path: Path) -> None:
    def plan() -> object:
        corpus = tmp_path / "docs.jsonl"
        if not corpus.exists():
            write_corpus(tmp_path, docs=4)
        config = config_from_dict(
            {
                "cache_dir": str(tmp_path / "cache"),
                "corpus": {"sources": [{"path": str(corpus), "domain": "prose"}], "heldout_fraction": 0.0},
                "teachers": [{"name": "tiny", "path": "org/tiny", "backend": "transformers"}],
            }
        )
        teacher = config.teachers[0]
        tokenizer = load_teacher_tokenizer(teacher, "transformers")  # checks the snapshot folder
        return plan_teacher(config, teacher, prepare_shared_corpus(config), tokenizer)

    first = plan()
    assert first.header["model_revision"] == COMMIT_1 and first.header["model_path"] == "org/tiny"
    assert first.model_path == hub / "models--org--tiny" / "snapshots" / COMMIT_1
    point_branch(hub, "org/tiny", "main", COMMIT_2)
    model_source._resolve_hub.cache_clear()
    second = plan()
    assert second.header["model_revision"] == COMMIT_2 and second.key != first.key


def test_a_local_folder_wins_over_a_hub_id(
    hub: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "org" / "tiny")
    source = resolve_model("org/tiny")
    assert source.folder == Path("org/tiny") and source.revision is None and source.pinned == "org/tiny"
    assert resolve_model(str(tiny_model)).folder == tiny_model  # an absolute path is never an id


def test_an_id_not_in_the_cache_is_a_user_error_naming_the_fix(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'org/missing'.*local Hugging Face cache.*hf download org/missing"):
        resolve_model("org/missing")
    with pytest.raises(ValueError, match=r"'org/tiny@v9'.*--revision v9"):
        resolve_model("org/tiny@v9")
    from pipeline.cli import app

    config = write_config(tmp_path, tmp_path / "cache", [{"name": "x", "path": "org/missing"}])
    result = CliRunner().invoke(app, ["extract", "--config", str(config)])
    assert result.exit_code == 2 and "org/missing" in result.output and "hf download" in result.output


def test_a_branch_that_names_no_commit_is_a_user_error_naming_the_cache(hub: Path, tiny_model: Path) -> None:
    """A hand-edited or damaged hub cache: refs/main holds a name, and a snapshot folder of that
    name exists; once an AssertionError inside model_source.py."""
    add_snapshot(hub, "org/tiny", "not-a-commit", tiny_model)
    point_branch(hub, "org/tiny", "main", "not-a-commit")
    with pytest.raises(ValueError) as err:
        resolve_model("org/tiny")
    message = str(err.value)
    assert "refs/main" in message and "not-a-commit" in message
    assert f"delete {hub / 'models--org--tiny'}" in message and "hf download org/tiny" in message
