import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _polyfuse(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def _config(tmp_path: Path, sources: list[dict], name: str = "c", **corpus: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"cache_dir": str(tmp_path / "cache"), "corpus": {"sources": sources, **corpus}})
    )
    return path


def test_help_lists_commands(tmp_path: Path) -> None:
    out = _polyfuse("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("prepare", "config-help"):
        assert command in out.stdout


def test_prepare_then_rerun_is_a_no_op(tmp_path: Path) -> None:
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Sentence {i}. " * 30}) + "\n" for i in range(6)))
    config = _config(tmp_path, [{"path": str(docs), "domain": "prose"}])
    first = _polyfuse("prepare", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "written to" in first.stdout and "prose" in first.stdout
    second = _polyfuse("prepare", "--config", str(config), cwd=tmp_path)
    assert second.returncode == 0 and "nothing written" in second.stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"na\xefve text")
    cases = [
        (_config(tmp_path, [{"path": str(bad), "domain": "prose"}], "a"), [], "is not UTF-8"),
        (_config(tmp_path, [{"path": str(tmp_path / "no.jsonl"), "domain": "x"}], "b"), [], "does not exist"),
        (_config(tmp_path, [], "c"), ["corpus.max_chars=5"], "corpus.max_chars must be at least 64"),
        (_config(tmp_path, [], "d"), ["corpus.bogus=1"], "unknown key(s) corpus.bogus"),
        (_config(tmp_path, [], "e"), [], "the corpus has no sources"),
    ]
    for config, overrides, message in cases:
        out = _polyfuse("prepare", "--config", str(config), *overrides, cwd=tmp_path)
        assert out.returncode == 2, (message, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert not list((tmp_path / "cache").rglob("*.parquet")) if (tmp_path / "cache").exists() else True


def test_experiment_help_lists_every_method_of_the_table(tmp_path: Path) -> None:
    from pipeline.methods import METHODS

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "experiment", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "400"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    words = set(out.stdout.replace(",", " ").replace(";", " ").replace(")", " ").replace("(", " ").split())
    assert set(METHODS) <= words, sorted(set(METHODS) - words)
