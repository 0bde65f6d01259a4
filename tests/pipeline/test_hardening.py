"""Issue 14, the hostile sweep: corrupt corpus shards, NaN shards and corrupt entry files refused
by distill before any model loads; model folders whose own code would run; concurrent runs;
unwritable folders; config and corpus input that is not text; resume with changed settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_schemas.keys import sha256_file
from data_schemas.manifest import read_manifest, write_manifest
from pipeline.cli import app
from pipeline.config import ConfigError, load_config
from pipeline.corpus import prepare_from_config
from tests.pipeline.test_distillation import write_config
from tests.pipeline.test_repairs import flip_byte, write_nan_shard
from tests.stages.distill.fake_world import SMOLLM2, FakeWorld


def damaged_copy(world: FakeWorld, tmp_path: Path) -> tuple[Path, Path]:
    """(cache copy, config file using it)."""
    cache = tmp_path / "cache"
    shutil.copytree(world.root / "cache", cache)
    config = dataclasses.replace(world.config_for(tmp_path / "runs"), cache_dir=str(cache))
    return cache, write_config(config, tmp_path / "c.yaml")


def teacher_dir(cache: Path, config: Path, name: str) -> Path:
    """The cache directory of teacher `name` over the config's corpus."""
    corpus_key = prepare_from_config(load_config(config)).key
    return next(
        p.parent
        for p in (cache / "teachers").glob(f"*/{corpus_key}/manifest.json")
        if read_manifest(p.parent).header["teacher"] == name
    )


def distill(config: Path, *args: str):
    return CliRunner().invoke(app, ["distill", "--config", str(config), *args])


# -- 1, 5, 7: distill refuses what validate reports, before any model loads -------------------


def test_corrupt_corpus_shard_is_refused_before_any_model_loads(world, tmp_path, loaded_models) -> None:
    cache, config = damaged_copy(world, tmp_path)
    corpus = prepare_from_config(load_config(config)).directory
    shard = corpus / "train" / "shard-00001.parquet"
    flip_byte(shard, 0.3)
    result = distill(config)
    assert result.exit_code == 1 and "shard-00001.parquet: sha256 differs" in result.output
    assert f"rm -rf {corpus} && polyfuse prepare --config {config}" in result.output
    # A flip that breaks decoding, with a checksum made to match (an edited manifest): refused too.
    shutil.copy(world.root / "cache" / shard.relative_to(cache), shard)
    break_decoding(shard)
    manifest = read_manifest(corpus)
    name = "train/shard-00001.parquet"
    entries = tuple(
        dataclasses.replace(e, sha256=sha256_file(shard)) if e.name == name else e for e in manifest.shards
    )
    write_manifest(corpus, dataclasses.replace(manifest, shards=entries))
    result = distill(config)
    assert result.exit_code == 1, result.output
    assert "does not decode" in result.output or "is not a readable Parquet file" in result.output
    assert loaded_models == []


def break_decoding(path: Path) -> None:
    """Flip the first byte (from the middle on) whose flip makes the shard fail to decode."""
    from data_schemas.shard_check import read_shard_table

    good = path.read_bytes()
    for i in range(len(good) // 2, len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :])
        try:
            read_shard_table(path, "corpus")
        except RuntimeError:
            return
    raise AssertionError(f"no single flip breaks decoding {path}")


def test_nan_shard_and_corrupt_entry_are_refused_before_any_model_loads(
    world, tmp_path, loaded_models
) -> None:
    cache, config = damaged_copy(world, tmp_path)
    smol = teacher_dir(cache, config, "smol")
    write_nan_shard(smol / "shard-00000.parquet")
    result = distill(config)
    assert result.exit_code == 1 and "teacher 'smol'" in result.output and "NaN/inf scores" in result.output
    shutil.copy(
        world.root / "cache" / smol.relative_to(cache) / "shard-00000.parquet", smol / "shard-00000.parquet"
    )
    (smol / "shard-00000.parquet.entry.json").write_text("{")
    result = distill(config)
    assert (
        result.exit_code == 1
        and "shard-00000.parquet.entry.json" in result.output
        and "corrupt" in result.output
    )
    assert loaded_models == []


# -- 2: a model folder's own code never runs ---------------------------------------------------


def model_with_own_code(folder: Path, marker: Path) -> Path:
    shutil.copytree(SMOLLM2, folder)
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    code += "from transformers import PretrainedConfig, PreTrainedTokenizerFast\n"
    code += "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_polyfuse'\n"
    code += "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    (folder / "evil.py").write_text(code)
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil_polyfuse", "auto_map": auto}))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.update(
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
        tokenizer_class="EvilTokenizer",
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


def test_a_model_folders_own_code_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.extract.model_fingerprint import check_model_folder
    from stages.tokenization import load_tokenizer

    marker = tmp_path / "marker"
    folder = model_with_own_code(tmp_path / "evil", marker)
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user who would answer yes
    with pytest.raises(ValueError, match="needs its own code to load"):
        check_model_folder(folder)
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_tokenizer(folder)
    from transformers import AutoConfig

    with pytest.raises(ValueError):
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
    assert not marker.exists()


# -- 3: concurrent runs ------------------------------------------------------------------------


def test_a_second_distill_on_a_run_dir_is_refused(world, tmp_path, loaded_models) -> None:
    from pipeline.output_dirs import run_lock

    config = write_config(world.config_for(tmp_path / "runs", name="locked"), tmp_path / "c.yaml")
    with run_lock(tmp_path / "runs" / "locked"):
        result = distill(config)
    assert result.exit_code == 2 and "in use by another polyfuse distill" in result.output
    with run_lock(tmp_path / "runs" / "locked"):  # released by the refused run and by the first
        pass


def test_a_prepare_that_loses_the_rename_takes_the_winners_identical_corpus(
    tmp_path: Path, monkeypatch
) -> None:
    import stages.prepare.prepare as prepare
    from stages.prepare.settings import CorpusSettings, CorpusSource
    from tests.pipeline.test_extraction import write_corpus

    source = CorpusSource(str(write_corpus(tmp_path)), "prose")
    settings = CorpusSettings([source], max_chars=300, heldout_fraction=0.0, samples_per_shard=4, seed=0)
    original = prepare.build_rows

    def build_while_another_wins(*args, **kwargs):
        monkeypatch.setattr(prepare, "build_rows", original)
        prepare.prepare_corpus(settings, tmp_path / "cache")  # the winner, meanwhile
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare, "build_rows", build_while_another_wins)
    loser = prepare.prepare_corpus(settings, tmp_path / "cache")
    assert not loser.created and loser.manifest.complete
    assert [p.name for p in (tmp_path / "cache" / "corpus").iterdir()] == [loser.key]


def test_only_dead_writers_tmp_files_are_removed(tmp_path: Path) -> None:
    import os

    from data_schemas.atomic import remove_stale_tmp

    (tmp_path / f"a.parquet.{os.getpid()}.tmp").write_bytes(b"live")
    (tmp_path / "a.parquet.999999999.tmp").write_bytes(b"dead")
    assert [p.name for p in remove_stale_tmp(tmp_path)] == ["a.parquet.999999999.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == [f"a.parquet.{os.getpid()}.tmp"]


# -- 4: disk and permission errors -------------------------------------------------------------


def test_unwritable_folders_are_one_line_before_any_model_loads(world, tmp_path, loaded_models) -> None:
    from pipeline.output_dirs import check_writable

    (tmp_path / "file").write_text("")
    config = write_config(world.config_for(tmp_path / "file" / "runs"), tmp_path / "c.yaml")
    result = distill(config)
    assert result.exit_code == 2 and f"runs_dir {tmp_path / 'file' / 'runs'} is not a folder" in result.output
    assert loaded_models == []
    with pytest.raises(ValueError, match=r"cache_dir .* MiB free, at least .*: free space"):
        check_writable(tmp_path, "cache_dir", min_free=1 << 62)
    result = CliRunner().invoke(app, ["prepare", "--config", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder, not a YAML file" in result.output


def test_an_os_error_mid_run_is_one_line_naming_the_path() -> None:
    import errno

    from pipeline.errors import user_errors

    @user_errors
    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/x.tmp")

    with pytest.raises(SystemExit) as exit_:
        full_disk()
    assert exit_.value.code == 1


# -- 9: config and corpus input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.beta=.inf", "distill.beta must be finite"),
        ("distill.lr=.inf", "distill.lr must be finite"),
        ("distill.tau=.nan", "distill.tau must be finite"),
        ("extract.top_k=true", "extract.top_k must be a number, not true/false"),
    ],
)
def test_config_values_that_are_not_numbers_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Path(__file__).parents[2] / "configs" / "demo.yaml", [override])


def test_config_and_corpus_that_are_not_text_name_file_and_line(tmp_path: Path) -> None:
    from stages.prepare.documents import read_documents

    (tmp_path / "bad.yaml").write_bytes(b"name: demo\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2 is not valid UTF-8.*save the file as UTF-8"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "sur.yaml").write_text('name: "x\\ud800"\n')
    with pytest.raises(ConfigError, match=r"sur.yaml: name holds a surrogate escape"):
        load_config(tmp_path / "sur.yaml")
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2 is not UTF-8.*iconv"):
        list(read_documents(tmp_path / "a.jsonl", "auto", "text", "id"))
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"text": "x\\ud800"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2: field 'text' holds a lone surrogate"):
        list(read_documents(tmp_path / "a.jsonl", "auto", "text", "id"))


def test_a_folder_of_jsonl_is_read_and_a_file_is_no_model_folder(tmp_path: Path) -> None:
    from stages.extract.model_fingerprint import check_model_folder
    from stages.prepare.documents import read_documents
    from stages.tokenization import load_tokenizer

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [d.text for d in read_documents(tmp_path / "docs", "auto", "text", "id")] == ["one", "two"]
    (tmp_path / "model").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_model_folder(tmp_path / "model")
    with pytest.raises(ValueError, match="is a file, not a tokenizer folder"):
        load_tokenizer(tmp_path / "model")


# -- 10: resume with changed settings ----------------------------------------------------------


def test_resume_with_a_changed_setting_is_refused(world, tmp_path) -> None:
    from pipeline.distillation import distill_from_config

    config = world.config_for(tmp_path / "runs", name="resume", max_steps=3, checkpoint_every=1)
    distill_from_config(config, strategy="min_ce", progress=False, stop_after_steps=1)
    changed = dataclasses.replace(config, distill=dataclasses.replace(config.distill, lam=0.5, lr=2e-3))
    with pytest.raises(ValueError, match=r"--resume: this run changes lam 0.9 → 0.5, lr 0.001 → 0.002"):
        distill_from_config(changed, strategy="min_ce", resume=True, progress=False)
    with pytest.raises(ValueError, match="strategy"):
        distill_from_config(config, strategy="avg_ce", resume=True, progress=False)


# -- issue 13: the likelihood gate objective needs every teacher's target log-probabilities -----


def test_a_teacher_shard_without_target_logprobs_is_refused_before_any_model_loads(
    world, tmp_path, loaded_models
) -> None:
    """Every layout stores the target log-probability of each token (what the spans of the
    likelihood gate objective sum); a shard without those columns, checksums made to match, is a
    fault named with its repair, before any model loads."""
    import pyarrow.parquet as pq

    cache, config = damaged_copy(world, tmp_path)
    smol = teacher_dir(cache, config, "smol")
    shard = smol / "shard-00000.parquet"
    table = pq.read_table(shard)
    targets = [n for n in table.column_names if n.startswith("target_")]
    assert targets, "the shard stores target log-probabilities"
    pq.write_table(table.drop_columns(targets), shard)
    manifest = read_manifest(smol)
    assert manifest.shards[0].name == shard.name
    entry = dataclasses.replace(manifest.shards[0], bytes=shard.stat().st_size, sha256=sha256_file(shard))
    (smol / "shard-00000.parquet.entry.json").write_text(json.dumps(dataclasses.asdict(entry)))
    write_manifest(smol, manifest.with_entries([entry, *manifest.shards[1:]]))
    result = distill(config, "distill.gate_objective=likelihood")
    assert result.exit_code == 1, result.output
    assert "shard-00000.parquet" in result.output and "target_" in result.output
    assert "polyfuse extract" in result.output or "delete" in result.output, result.output
    assert loaded_models == []
