"""lm-eval as the evaluator, held to the hand-written oracles (bits_per_byte.score_texts,
multiple_choice.score_items) on tiny models with real tokenizers."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from stages.evaluate import harness
from stages.evaluate.mc_sets import Passage, write_task
from stages.evaluate.multiple_choice import ChoiceItem
from stages.evaluate.rolling_tasks import write_rolling_task
from stages.tokenization import load_tokenizer
from tests.stages.evaluate.hand_scorer import rolling_windows, score_items, score_texts
from tests.stages.evaluate.tiny_model import (  # noqa: F401 (autouse fixture)
    gemma_tokenizer,
    memorise,
    one_torch_thread,
    save_model_folder,
    tiny_gemma3,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Naïve café owners say “hello” in 日本語 too.",
    "def add(a, b):\n    return a + b\n",
    "Short one.",
]
MAX_LENGTH = 16  # the first text is ~30 tokens: two or more rolling windows
# Per sample, lm-eval's log-likelihood equals the oracle's to this (nats): both are fp32
# forwards of the same windows, differing only in batch padding and summation order.
NATS_TOLERANCE = 1e-4


def _passages(texts: list[str]) -> list[Passage]:
    # One document per sample, so that the per-document observations are per-sample numbers.
    return [Passage(f"s{i}", f"d{i}", t) for i, t in enumerate(texts)]


def _oracle_model(folder: Path):
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory) -> Path:
    return save_model_folder(tmp_path_factory.mktemp("smollm2") / "model", seed=3)


def _assert_rolling_matches_oracle(folder: Path, tmp_path: Path) -> dict:
    task = write_rolling_task(tmp_path / "tasks", "prose", _passages(TEXTS))
    scores, facts = harness.score_model(
        folder, rolling_tasks={"prose": task}, mc_tasks={}, max_length=MAX_LENGTH
    )
    oracle = score_texts(
        _oracle_model(folder), load_tokenizer(folder), TEXTS, max_tokens=MAX_LENGTH, batch_tokens=64
    )
    observed = scores["bpb/prose"].observations
    assert set(observed) == {"d0", "d1", "d2"}
    for i, expected in enumerate(oracle):
        bits, n_bytes = observed[f"d{i}"]
        # Every byte of the text is predicted, under both.
        assert n_bytes == expected.n_bytes == len(TEXTS[i].encode("utf-8"))
        assert bits * math.log(2) == pytest.approx(expected.nats, abs=NATS_TOLERANCE, rel=0)
    assert oracle[0].windowed and not oracle[2].windowed
    assert facts["bpb_windowed_samples"] == sum(s.windowed for s in oracle)
    assert facts["bpb_samples"] == 3 and facts["bpb_bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert facts["scorer"].startswith("lm-eval ")
    return scores


def test_rolling_loglikelihood_equals_the_oracle_without_bos(smollm2_folder: Path, tmp_path: Path) -> None:
    scores = _assert_rolling_matches_oracle(smollm2_folder, tmp_path)
    total_bits = sum(b for b, _ in scores["bpb/prose"].observations.values())
    assert scores["bpb/prose"].value == pytest.approx(total_bits / sum(len(t.encode()) for t in TEXTS))


def test_rolling_loglikelihood_equals_the_oracle_with_bos(tmp_path: Path) -> None:
    # Gemma's tokenizer adds BOS: lm-eval's default would encode it and predict it from the prefix
    # BOS; polyfuse's convention predicts the first text token from one BOS.
    tokenizer = gemma_tokenizer()
    folder = tmp_path / "gemma"
    tiny_gemma3(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _assert_rolling_matches_oracle(folder, tmp_path)


def test_rolling_windows_predict_every_token_once() -> None:
    assert rolling_windows(0, 4) == []
    assert rolling_windows(3, 4) == [(3, 3)]
    assert rolling_windows(10, 4) == [(4, 4), (8, 4), (10, 2)]
    for n in range(1, 30):
        windows = rolling_windows(n, 5)
        assert sum(w for _, w in windows) == n and windows[-1][0] == n


def test_multiple_choice_through_lm_eval_equals_the_oracle(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(save_model_folder(tmp_path / "base"))
    sentence = "The old cat sat on the warm mat and purred all afternoon."
    model = memorise(_oracle_model(tmp_path / "base"), tokenizer, sentence)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    choices = (" cold moon and barked twice.", " warm mat and purred all afternoon.", " river bank.", " big")
    items = [
        ChoiceItem("cat", "The old cat sat on the", choices, 1),
        ChoiceItem("cat-wrong-gold", "The old cat sat on the", choices, 0),
        # Trailing whitespace of a context moves to the continuation, as in lm-eval.
        ChoiceItem("ws", "def add(a, b):\n", ("    return a + b\n", "    return a - b\n"), 0),
        ChoiceItem("sp", "Answer: ", ("4", "five"), 0),
    ]
    path = write_task(tmp_path / "sets", "toy", items)
    scores, _ = harness.score_model(
        tmp_path / "model", rolling_tasks={}, mc_tasks={"toy": path.with_suffix(".yaml")}, max_length=128
    )
    oracle = score_items(model, tokenizer, items, max_tokens=128)
    assert set(scores) == {"acc/toy", "acc_norm/toy", "acc_bytes/toy"}
    for metric in ("acc", "acc_norm", "acc_bytes"):
        got = scores[f"{metric}/toy"].observations
        assert got == {r.item_id: (float(r.predictions[metric] == r.gold), 1.0) for r in oracle}, metric
    assert scores["acc/toy"].observations["cat"] == (1.0, 1.0)
    assert scores["acc/toy"].observations["cat-wrong-gold"] == (0.0, 1.0)


def local_mc_task(directory: Path, name: str, n_items: int = 5) -> Path:
    """A multiple-choice task YAML over a local JSONL (``<name>.jsonl`` beside it): it stands for
    an installed lm-eval task whose data is in the cache. Shared with tests/pipeline."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    rows = [
        {"question": f"{a} plus {a} is", "choices": [f" {2 * a}", f" {2 * a + 1}"], "answer": 0}
        for a in range(n_items)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 0},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_named_task_with_local_data_scores_and_a_missing_one_fails(
    smollm2_folder: Path, tmp_path: Path
) -> None:
    task = local_mc_task(tmp_path / "tasks", "toy_named_mc")

    harness.check_named_tasks([str(task)])
    scores, _ = harness.score_model(
        smollm2_folder, rolling_tasks={}, mc_tasks={}, named_tasks=[str(task)], max_length=64
    )
    acc = scores["acc/toy_named_mc"]
    assert acc.n == 5 and set(acc.observations) == {"0", "1", "2", "3", "4"}
    assert acc.value == pytest.approx(sum(y for y, _ in acc.observations.values()) / 5)

    task.with_suffix(".jsonl").unlink()
    with pytest.raises(
        ValueError, match=r"the data of lm-eval task .*toy_named_mc.* is not available offline"
    ):
        harness.check_named_tasks([str(task)])
    with pytest.raises(ValueError, match="lm-eval has no task 'no_such_task'"):
        harness.check_named_tasks(["no_such_task"])


def test_sample_scores_key_items_and_refuse_repeats() -> None:
    samples = [
        {"doc_id": 0, "doc": {"item_id": "a"}, "metrics": ["acc"], "acc": 1.0},
        {"doc_id": 1, "doc": {"item_id": "b"}, "metrics": ["acc"], "acc": 0.0},
        {
            "doc_id": 2,
            "doc": {"item_id": "c"},
            "metrics": ["bits_per_byte"],
            "bits_per_byte": (-math.log(2) * 8, 4),
        },
    ]
    scores = harness.sample_scores("t", samples[:2], item_key="item_id")
    assert (
        scores["acc/t"].observations == {"a": (1.0, 1.0), "b": (0.0, 1.0)}
        and scores["acc/t"].higher_is_better
    )
    bpb = harness.sample_scores("w", samples[2:])["bpb/w"]
    assert bpb.observations == {"2": pytest.approx((8.0, 4.0))} and bpb.value == pytest.approx(2.0)
    assert not bpb.higher_is_better
    with pytest.raises(ValueError, match="item ids repeat"):
        harness.sample_scores("t", [samples[0], samples[0]], item_key="item_id")


def test_a_task_file_that_is_not_yaml_is_a_user_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken_task.yaml"
    bad.write_text("task: broken_task\ndataset_path: json\n  doc_to_text: [unclosed\n")
    with pytest.raises(ValueError) as err:
        harness.check_named_tasks([str(bad)])
    message = str(err.value)
    assert message.startswith(f"evaluate.lm_eval_tasks: the task file {bad} is not valid YAML (")
    assert "\n" not in message and "fix its syntax" in message


def test_check_scorable_passes_a_sound_folder_and_refuses_a_tokenizer_past_the_embedding(
    tmp_path: Path,
) -> None:
    """(No BOS nor EOS and missing tokenizer files: tests/pipeline/test_evaluation.py.)"""
    folder = save_model_folder(tmp_path / "model", seed=0)
    harness.check_scorable(folder)
    tokenizer = load_tokenizer(folder)
    tokenizer.add_tokens(["quick brown fox"])
    tokenizer.save_pretrained(folder)
    with pytest.raises(
        ValueError, match="the tokenizer has 49153 tokens but the model's embedding has 49152"
    ):
        harness.check_scorable(folder)
