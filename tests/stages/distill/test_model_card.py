"""The model card of every export: `huggingface_hub.ModelCard.load` reads back its front-matter
(base model, licence, tags, datasets); the body names the teachers with their pinned revisions and
keys, the objective, the training tokens; a refresh after evaluation adds the held-out table of
paired deltas, atomically. End to end through `polyfuse distill` on the fake-backend world."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from stages.distill.model_card import TAGS, _loss_text, heldout_frame, write_model_card
from stages.evaluate.paired_delta import compare_to_references
from stages.evaluate.report import delta_frame
from stages.evaluate.unit_score import UnitScore

STUDENT_COMMIT, TEACHER_COMMIT, DATA_COMMIT = "1" * 40, "2" * 40, "3" * 40
STATS = {
    "strategy": "adaptive",
    "tau": 0.15,
    "features": "exp_neg_ce",
    "steps": 3,
    "samples": 24,
    "tokens": 12345,
    "teachers": {
        "hubby": {"mean_w": 0.625, "present_rate": 1.0, "aligned_rate": 0.9, "selected_rate": 0.7},
        "local": {"mean_w": 0.375, "present_rate": 0.5, "aligned_rate": 0.8, "selected_rate": 0.4},
    },
}


def _export(tmp_path: Path, student_card: str | None = None) -> Path:
    """An export folder as write_export leaves it, minus the weights: a hub student pinned to a
    commit, a hub and a local teacher, a local and a hub dataset corpus source."""
    student = tmp_path / "student"
    student.mkdir()
    if student_card is not None:
        (student / "README.md").write_text(student_card)
    export = tmp_path / "runs" / "fused" / "export"
    export.mkdir(parents=True)
    config = {
        "name": "fused",
        "corpus": {
            "sources": [
                {"path": "data/prose.jsonl", "domain": "prose"},
                {"dataset": f"org/web@{DATA_COMMIT}", "domain": "web", "split": "train"},
            ]
        },
        "student": {"path": f"org/student@{STUDENT_COMMIT}"},
        "teachers": [
            {"name": "hubby", "path": f"org/teacher@{TEACHER_COMMIT}"},
            {"name": "local", "path": "models/local-teacher"},
        ],
        "extract": {"top_k": 10, "draws": 0},
        "distill": {"strategy": "adaptive", "lam": 0.9, "beta": 0.5, "tau": 0.15, "max_steps": 3, "lr": 2e-5},
    }
    header = "# corpus_key: ckey123\n# teacher_key hubby: tkeyhub\n# teacher_key local: tkeylocal\n"
    (export / "config.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    (export / "fusion_stats.json").write_text(json.dumps({**STATS, "student": str(student)}))
    return export


def test_the_card_holds_what_the_hub_and_a_reader_need(tmp_path: Path) -> None:
    export = _export(tmp_path, "---\nlicense: apache-2.0\n---\n# The student\n")
    card = ModelCard.load(write_model_card(export))
    assert card.data.base_model == "org/student"
    assert card.data.license == "apache-2.0"
    assert card.data.tags == TAGS
    assert card.data.datasets == ["org/web"]
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
    text = card.text
    assert (
        f"| `hubby` | [org/teacher](https://huggingface.co/org/teacher) | `{TEACHER_COMMIT}` | `tkeyhub` |"
        in text
    )
    assert "| `local` | `models/local-teacher` | local folder | `tkeylocal` |" in text
    assert "12,345 training tokens" in text and "| training tokens | 12,345 |" in text
    assert "| `strategy` | `adaptive` |" in text and "| `lam` | `0.9` |" in text
    assert "| `extract.top_k` | `10` |" in text
    assert "Corpus key `ckey123`" in text and f"hub dataset `org/web@{DATA_COMMIT}`" in text
    assert "Not evaluated yet" in text


def test_a_local_student_has_no_base_model_and_an_unknown_licence(tmp_path: Path) -> None:
    export = _export(tmp_path)
    config = export / "config.yaml"
    config.write_text(config.read_text().replace(f"org/student@{STUDENT_COMMIT}", "models/student"))
    card = ModelCard.load(write_model_card(export))
    assert card.data.base_model is None and card.data.license == "unknown"
    assert "no model card that states one" in card.text


def _scores(bits: list[float], correct: list[int]) -> dict[str, UnitScore]:
    """bpb/prose over three documents of 100 bytes and acc_norm/cloze over four items."""
    bpb = {f"d{i}": (b, 100.0) for i, b in enumerate(bits)}
    acc = {f"q{i}": (float(c), 1.0) for i, c in enumerate(correct)}
    return {
        "bpb/prose": UnitScore.from_observations("bpb/prose", "bpb", False, bpb),
        "acc_norm/cloze": UnitScore.from_observations("acc_norm/cloze", "acc_norm", True, acc),
    }


def test_a_refresh_after_evaluation_adds_the_paired_table_atomically(tmp_path: Path) -> None:
    export = _export(tmp_path)
    first = ModelCard.load(write_model_card(export))
    scores = {
        "target": _scores([90.0, 120.0, 80.0], [1, 0, 0, 1]),
        "none": _scores([88.0, 119.0, 80.5], [1, 0, 1, 1]),
        "fused": _scores([85.0, 117.0, 79.0], [1, 1, 1, 1]),
    }
    comparisons = compare_to_references(scores, ["target", "none"], ("bpb", "acc_norm"))
    frame = heldout_frame("fused", scores, comparisons, "target", ("bpb", "acc_norm"))
    card = ModelCard.load(write_model_card(export, frame))
    assert card.data == first.data
    assert "Not evaluated yet" not in card.text
    lines = {line.split("|")[1].strip(): line for line in card.text.splitlines() if line.startswith("| ")}
    header = lines["unit"]
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "unit",
        "fused",
        "target",
        "Δ vs target",
        "Δ vs none",
    ]
    # The cells are the evaluation report's: Δ vs the target on bpb is exactly its delta_frame cell.
    vs_target = delta_frame({"x": comparisons["target"]["fused"]}, ("bpb", "acc_norm"))["bpb/prose"][0]
    vs_none = delta_frame({"x": comparisons["none"]["fused"]}, ("bpb", "acc_norm"))["mean bpb"][0]
    assert vs_target in lines["bpb/prose"] and vs_none in lines["mean bpb"]
    assert comparisons["target"]["fused"]["bpb/prose"].delta < 0  # fused is better than the target
    assert not [p for p in export.iterdir() if p.name.endswith(".tmp")]
    # `none` itself is compared with the target only.
    none = heldout_frame("none", scores, comparisons, "target", ("bpb", "acc_norm"))
    assert none.columns == ["model", "bpb/prose", "acc_norm/cloze", "mean bpb", "mean acc_norm"]
    assert none["model"].to_list() == ["none", "target", "Δ vs target"]


def test_polyfuse_distill_exports_a_card_the_hub_reads(world, tmp_path: Path) -> None:
    from pipeline.distillation import distill_from_config

    config = world.config_for(tmp_path / "runs", name="carded", max_steps=2)
    config = dataclasses.replace(config, distill=dataclasses.replace(config.distill, report_to=["none"]))
    run = distill_from_config(config, strategy="min_ce", progress=False)
    card = ModelCard.load(run.export_dir / "README.md")
    assert card.data.tags == TAGS and card.data.license == "unknown" and card.data.base_model is None
    stats = json.loads((run.export_dir / "fusion_stats.json").read_text())
    header = (run.export_dir / "config.yaml").read_text()
    for name in ("smol", "gemma"):
        key = next(
            line.split(": ")[1] for line in header.splitlines() if line.startswith(f"# teacher_key {name}:")
        )
        assert f"| `{name}` | `" in card.text and f"`{key}`" in card.text
    assert f"{stats['tokens']:,} training tokens" in card.text and "the `min_ce` strategy" in card.text
    assert "loss = λ · CLM + (1 − λ) · fusion, where fusion matches" in card.text


def test_the_card_states_the_loss_the_run_trained_with() -> None:
    assert _loss_text({"objective": "chunk"}, "none").startswith("loss = CLM: plain training")
    chunk = _loss_text({"objective": "chunk", "gate_objective": "likelihood"}, "adaptive")
    assert chunk.startswith("loss = λ · CLM + (1 − λ) · chunk + β · feedback + gate NLL, where chunk matches")
    assert "(ALM)" in chunk
    exact = _loss_text({"objective": "exact_token"}, "single:qwen")
    assert exact.startswith("loss = λ · CLM + (1 − λ) · exact_token, where") and "feedback" not in exact
    assert _loss_text({}, "min_ce").startswith("loss = λ · CLM + (1 − λ) · fusion, where")  # an older config
