"""`polyfuse experiment` end to end on fake-backend teacher shards with a tiny student: every
method trained, evaluated with the target, reported; a rerun trains nothing again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from huggingface_hub import ModelCard

import pipeline.distillation
from pipeline.config import EvaluateConfig
from pipeline.experiment import (
    METHODS,
    choose_methods,
    gate_weights_by_domain,
    load_train_scores,
    method_config,
    run_experiment,
)
from pipeline.inspection import inspect_path
from stages.distill.gating import SelectionGate, select_teachers
from tests.stages.distill.fake_world import GEMMA, SMOLLM2, fake_world

# One method per path through the experiment: `none` (no teachers), a fixed rule (`min_ce`), the
# random gate (fused, but no weights to report), the trained gate, and the ablation with other gate
# features (a second feature read). `avg_ce` takes `min_ce`'s path here (its weights are
# test_strategies', its training test_recipe's), and the other ablations differ only in distill
# fields, which test_methods_change_only_their_own_fields covers: each would add a training and an
# evaluation to the slowest test of the suite.
RUN_METHODS = ["none", "min_ce", "random_gate", "adaptive", "bpb_features"]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    for folder in (SMOLLM2, GEMMA):
        if not (folder / "tokenizer.json").is_file():
            pytest.fail(f"{folder} is missing: run `make tokenizers`")
    world = fake_world(tmp_path_factory.getbasetemp() / "distill-world")
    evaluate = EvaluateConfig(
        max_samples_per_domain=2,
        max_tokens=256,
        batch_tokens=512,
        tasks=["cloze"],
        mc_items_per_task=2,
        cloze_context_chars=60,
        cloze_continuation_chars=20,
        threads=1,
    )
    runs = tmp_path_factory.mktemp("experiment")
    return dataclasses.replace(world.config_for(runs, name="exp", max_steps=1), evaluate=evaluate)


@pytest.fixture(scope="module")
def finished(config):
    """Every method of RUN_METHODS trained, evaluated and reported once for the module's tests."""
    return run_experiment(config, RUN_METHODS, progress=False)


def test_methods_change_only_their_own_fields(config) -> None:
    sub = method_config(config, METHODS["no_feedback"])
    assert sub.distill.strategy == "adaptive" and sub.distill.beta == 0.0
    assert (
        dataclasses.replace(sub.distill, beta=config.distill.beta, strategy=config.distill.strategy)
        == config.distill
    )
    assert Path(sub.runs_dir, sub.name) == Path(config.runs_dir) / "exp" / "methods" / "no_feedback"
    teachers = [t.name for t in config.teachers]
    assert [m.name for m in choose_methods(["adaptive", "none"], teachers)] == ["none", "adaptive"]
    # The former name of a method is the method under its current name.
    assert [m.name for m in choose_methods(["authors"], teachers)] == ["random_gate"]
    with pytest.raises(ValueError, match="unknown method"):
        choose_methods(["adaptiv"], teachers)


def test_the_default_comparison_and_single_teacher_rows() -> None:
    default = [m.name for m in choose_methods(None, ["smollm2", "gemma3", "qwen-coder"])]
    assert default == [
        "none",
        "single:qwen-coder",
        "uniform",
        "min_ce",
        "avg_ce",
        "min_bpb",
        "random_gate",
        "adaptive",
        "adaptive_likelihood",
    ]
    # Without a qwen-coder teacher its row drops out of the default and is refused by name.
    assert "single:qwen-coder" not in [m.name for m in choose_methods(None, ["a", "b"])]
    with pytest.raises(ValueError, match="single:NAME with NAME one of a, b"):
        choose_methods(["single:qwen-coder"], ["a", "b"])
    (extra,) = choose_methods(["single:b"], ["a", "b"])
    assert (extra.strategy, extra.folder) == ("single:b", "single_b")


def test_bpb_baselines_and_the_likelihood_gate_change_only_their_own_fields(config) -> None:
    for name in ("min_bpb", "avg_bpb"):
        sub = method_config(config, METHODS[name])
        assert sub.distill.strategy == name
        assert dataclasses.replace(sub.distill, strategy=config.distill.strategy) == config.distill
    sub = method_config(config, METHODS["adaptive_likelihood"])
    assert sub.distill.strategy == "adaptive" and sub.distill.gate_objective == "likelihood"
    restored = dataclasses.replace(
        sub.distill, strategy=config.distill.strategy, gate_objective=config.distill.gate_objective
    )
    assert restored == config.distill


def test_gate_weights_of_an_all_features_gate_rebuilt_from_gate_pt(config, tmp_path: Path) -> None:
    train = load_train_scores(config, "all")
    assert train.features.shape == (len(train.domains), 2, 4) and train.present.any()
    np.testing.assert_array_equal(train.scores, train.features[..., 0])
    # The first of the four features is the one-feature run's score: min_ce / avg_ce are unchanged.
    scalar = load_train_scores(config, "exp_neg_ce")
    both = train.present & scalar.present
    np.testing.assert_array_equal(train.scores[both], scalar.scores[both])
    torch.manual_seed(0)
    gate = SelectionGate(2, num_features=4)
    info = {"strategy": "adaptive", "teachers": train.teacher_names, "features": "all", "tau": 0.15}
    torch.save({"state_dict": gate.state_dict(), **info}, tmp_path / "gate.pt")
    weights = gate_weights_by_domain(METHODS["adaptive"], train, 0.15, tmp_path)
    with torch.no_grad():
        w = select_teachers(gate(torch.from_numpy(train.features), torch.from_numpy(train.present)), 0.15)
    expected = w[w.sum(-1) > 0].mean(0).tolist()
    assert list(weights["all"].values()) == pytest.approx(expected, abs=1e-6)
    assert sum(weights["all"].values()) == pytest.approx(1.0, abs=1e-5)


def test_experiment_end_to_end_then_resumes_without_training(config, finished, monkeypatch) -> None:
    result = finished
    report = (result.report_dir / "report.md").read_text()
    for label in ["target", *RUN_METHODS]:
        assert f"| {label} " in report, label
    results = json.loads((result.report_dir / "results.json").read_text())
    assert set(results["interference"]) == set(RUN_METHODS)
    # The baselines that ran (`avg_ce` did not): a missing one is left out, not reported as zero.
    assert set(results["reduction"]["against"]) == {"none", "min_ce", "random_gate"}
    assert "bpb/mixed" in results["scores"]["adaptive"]
    weights = results["gate_weights"]
    assert weights["none"] == weights["random_gate"] == {}
    for method in ("min_ce", "adaptive", "bpb_features"):
        assert set(weights[method]) == {"mixed", "all"}
        assert sum(weights[method]["all"].values()) == pytest.approx(1.0, abs=1e-5)
    # The gate against its oracles, per domain: every fused method but the random-gate `random_gate`.
    diagnostics = results["gate_diagnostics"]
    assert set(diagnostics) == {"min_ce", "adaptive", "bpb_features"}
    for per_domain in diagnostics.values():
        assert set(per_domain) == {"mixed", "all"}
        d = per_domain["all"]
        assert d["samples"] > 0 and 0.0 <= d["agreement"] <= 1.0
        assert (
            d["bpb/oracle_mixture"]
            <= min(d["bpb/gate"], d["bpb/oracle_teacher"], d["bpb/best_single"]) + 1e-9
        )
    assert "## Gate against its oracles" in report and "## Oracles per domain" in report
    # `polyfuse inspect EXPORT` shows the same figures from the export alone.
    export = Path(results["exports"]["adaptive"])
    tables = dict(inspect_path(export))
    (gate_title,) = [t for t in tables if t.startswith("Gate against")]
    row = tables[gate_title].filter(pl.col("domain") == "all").to_dicts()[0]
    assert row["agreement"] == pytest.approx(diagnostics["adaptive"]["all"]["agreement"], abs=1e-4)
    with pytest.raises(ValueError, match="no fusion weights to diagnose"):
        inspect_path(Path(results["exports"]["none"]))
    # A finished method keeps its export and logs, not its checkpoints (gigabytes per method).
    methods_dir = Path(config.runs_dir) / "exp" / "methods"
    assert not any((methods_dir / m / "checkpoints").exists() for m in RUN_METHODS)
    for png in ("bpb_by_domain.png", "bpb_delta_vs_none.png", "gate_weights.png", "selected.png", "loss.png"):
        assert (result.report_dir / png).stat().st_size > 1000, png
    # Paired Δ ± SE against the target and against `none`, per domain and on the mean over domains.
    paired = results["paired"]["against"]
    assert set(paired) == {"target", "none"}
    assert set(paired["target"]) == {"none", *[m for m in RUN_METHODS if m != "none"]} | {
        label for label in results["scores"] if label.startswith("teacher:")
    }
    assert set(paired["none"]["adaptive"]) == {"bpb/mixed", "mean bpb", "acc_norm/cloze_mixed"}
    assert paired["none"]["adaptive"]["bpb/mixed"]["n"] == results["scores"]["adaptive"]["bpb/mixed"]["n"]
    assert "Paired Δ vs the target `target`" in report and "Paired Δ vs `none`" in report
    assert "bpb_delta_vs_none.png" in report
    # Every export's model card carries its held-out table, read back by huggingface_hub.
    for method in RUN_METHODS:
        card = ModelCard.load(Path(results["exports"][method]) / "README.md")
        assert "polyfuse" in card.data.tags and "Not evaluated yet" not in card.text
        assert "Δ vs target" in card.text and ("Δ vs none" in card.text) == (method != "none")
    delta = paired["target"]["adaptive"]["bpb/mixed"]["delta"]
    assert f"{delta:+.4f} ± " in (Path(results["exports"]["adaptive"]) / "README.md").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished method was trained again")

    monkeypatch.setattr(pipeline.distillation, "distill_from_config", refuse)
    again = run_experiment(config, RUN_METHODS, progress=False)
    assert again.results["scores"] == results["scores"]
    # As JSON text: a NaN standard error (one document) is never equal to itself as a float.
    assert json.dumps(again.results["paired"], sort_keys=True) == json.dumps(
        result.results["paired"], sort_keys=True
    )


def test_a_finished_export_is_reused_only_with_the_settings_and_caches_it_was_trained_with(
    config, finished, monkeypatch
) -> None:
    """A rerun with `distill.lam` and `max_steps` changed once reported the old export as the new
    settings' result ("trained already"); now it is refused before anything is trained or
    evaluated, naming each change and the folder to remove."""
    import pipeline.experiment as experiment

    # The `none` export the module's experiment trained with `config`.
    export = Path(finished.results["exports"]["none"])

    def refuse(*args, **kwargs):
        raise AssertionError("trained or evaluated although a finished export is stale")

    monkeypatch.setattr(pipeline.distillation, "distill_from_config", refuse)
    monkeypatch.setattr(experiment, "evaluate_from_config", refuse)
    changed = dataclasses.replace(config, distill=dataclasses.replace(config.distill, lam=0.5, max_steps=2))
    with pytest.raises(ValueError) as err:
        run_experiment(changed, ["none"], progress=False)
    message = str(err.value)
    assert "none (distill.lam 0.9 → 0.5, distill.max_steps 1 → 2)" in message
    assert f"rm -rf {export.parent}" in message
    # The same settings, or ones that decide no weights (the log cadence, the ZeRO stage), keep the
    # export.
    experiment.refuse_stale_exports(config, [METHODS["none"]])
    for field, value in (("log_every", 7), ("zero_stage", 0)):
        other = dataclasses.replace(config, distill=dataclasses.replace(config.distill, **{field: value}))
        experiment.refuse_stale_exports(other, [METHODS["none"]])
