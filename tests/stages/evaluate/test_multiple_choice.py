import math
import statistics

import pytest
import torch

from stages.evaluate.multiple_choice import ChoiceItem
from tests.stages.evaluate.hand_scorer import encode_pair, predictions, score_items, task_accuracy
from tests.stages.evaluate.tiny_model import (  # noqa: F401 (autouse fixture)
    gemma_tokenizer,
    memorise,
    one_torch_thread,
    smollm2_tokenizer,
    tiny_gemma3,
    tiny_llama,
)

SENTENCE = "The old cat sat on the warm mat and purred all afternoon."
ITEM = ChoiceItem(
    "cat",
    "The old cat sat on the",
    (" cold moon and barked twice.", " warm mat and purred all afternoon.", " river bank.", " big red bus"),
    1,
)


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return memorise(tiny_llama(len(tokenizer)), tokenizer, SENTENCE)


def _direct_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context) from one forward of the whole sequence."""
    ids = context_ids + continuation_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    start = len(context_ids)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_picks_the_memorised_choice_and_agrees_with_direct_loglikelihood(model, tokenizer) -> None:
    (result,) = score_items(model, tokenizer, [ITEM], max_tokens=128)
    assert result.predictions == {"acc": 1, "acc_norm": 1, "acc_bytes": 1}
    assert result.logprobs[1] > max(result.logprobs[i] for i in (0, 2, 3)) + 5
    for choice, got in zip(ITEM.choices, result.logprobs):
        context_ids, cont_ids = encode_pair(tokenizer, ITEM.context, choice)
        assert got == pytest.approx(_direct_logprob(model, context_ids, cont_ids), abs=1e-3)


def test_shared_context_cache_matches_whole_sequences_with_a_sliding_window() -> None:
    tokenizer = gemma_tokenizer()
    model = tiny_gemma3(len(tokenizer))
    context = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
    item = ChoiceItem("g", context, (" sailed every day.", " slept", " never once saw the ocean at all."), 0)
    (result,) = score_items(model, tokenizer, [item], max_tokens=128)
    for choice, got in zip(item.choices, result.logprobs):
        context_ids, cont_ids = encode_pair(tokenizer, context, choice)
        assert len(context_ids) > 8 and context_ids[0] == tokenizer.bos_token_id
        assert got == pytest.approx(_direct_logprob(model, context_ids, cont_ids), abs=1e-3)


def test_agrees_with_lm_eval_loglikelihood(model, tokenizer) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu")
    items = [
        ITEM,
        # Trailing whitespace of a context moves to the continuation, as in lm-eval.
        ChoiceItem("ws", "def add(a, b):\n", ("    return a + b\n", "    return a - b\n"), 0),
        ChoiceItem("sp", "Answer: ", ("4", "five"), 0),
    ]
    ours = score_items(model, tokenizer, items, max_tokens=128)
    for item, result in zip(items, ours):
        requests = [
            Instance("multiple_choice", {}, (item.context, choice), i)
            for i, choice in enumerate(item.choices)
        ]
        theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
        assert result.logprobs == pytest.approx(theirs, abs=1e-3), item.item_id


def test_encode_pair_moves_trailing_whitespace(tokenizer) -> None:
    context_ids, cont_ids = encode_pair(tokenizer, "Answer: ", "4")
    assert tokenizer.decode(context_ids) == "Answer:"
    assert tokenizer.decode(cont_ids) == " 4"
    with pytest.raises(ValueError, match="non-empty"):
        encode_pair(tokenizer, "", "x")


def test_normalised_predictions_divide_by_characters_and_bytes() -> None:
    # Choice 0 wins raw; per character choice 1 (−6/12 > −4/4); per byte "é" doubles choice 2's
    # bytes, so choice 2 wins there (−5/10 = −0.5 > −6/12 … tie broken by the first, choice 1).
    picks = predictions([-4.0, -6.0, -5.0], ["abcd", "abcdefghijkl", "ééééé"])
    assert picks == {"acc": 0, "acc_norm": 1, "acc_bytes": 1}
    assert predictions([-4.0, -6.0, -4.9], ["abcd", "abcdefghijkl", "ééééé"])["acc_bytes"] == 2


def test_task_accuracy_and_lm_eval_standard_error(model, tokenizer) -> None:
    items = [ChoiceItem(f"i{i}", ITEM.context, ITEM.choices, gold) for i, gold in enumerate([1, 0, 1, 0])]
    results = score_items(model, tokenizer, items, max_tokens=128)
    scores = task_accuracy("t", results)
    assert set(scores) == {"acc/t", "acc_norm/t", "acc_bytes/t"}
    acc = scores["acc/t"]
    assert acc.value == 0.5 and acc.higher_is_better
    assert acc.se == pytest.approx(statistics.stdev([1, 0, 1, 0]) / math.sqrt(4))
    with pytest.raises(ValueError, match="repeat"):
        task_accuracy("t", results[:1] * 2)


def test_long_context_is_left_truncated(model, tokenizer) -> None:
    (result,) = score_items(model, tokenizer, [ITEM], max_tokens=8)
    assert result.context_truncated
    with pytest.raises(ValueError, match="longer than max_tokens"):
        score_items(model, tokenizer, [ITEM], max_tokens=2)
