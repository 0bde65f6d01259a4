import math
import statistics

import numpy as np
import pytest
import torch

from stages.evaluate.bits_per_byte import ScoredText, domain_bits_per_byte
from stages.evaluate.unit_score import ratio_estimate
from tests.stages.evaluate.hand_scorer import score_texts
from tests.stages.evaluate.tiny_model import (  # noqa: F401 (autouse fixture)
    gemma_tokenizer,
    one_torch_thread,
    smollm2_tokenizer,
    tiny_gemma3,
    tiny_llama,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Naïve café owners say “hello” in 日本語 too.",
    "def add(a, b):\n    return a + b\n",
    "Short one.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer))


def _hand_nats(model, ids: list[int], scored_from: int = 1) -> float:
    """Σ −log p(token t | tokens < t) for t ≥ scored_from, from one unbatched forward in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return -sum(logprobs[t - 1, ids[t]].item() for t in range(scored_from, len(ids)))


def test_matches_hand_computation_in_a_padded_batch(model, tokenizer) -> None:
    # No special tokens in the text; every token is predicted, the first from the prefix token
    # (SmolLM2 has a BOS token, though it adds none by default), so every byte counts.
    prefix = tokenizer.bos_token_id
    assert prefix is not None and tokenizer.encode(TEXTS[2])[0] != prefix
    scored = score_texts(model, tokenizer, TEXTS, max_tokens=256, batch_tokens=10_000)
    for text, s in zip(TEXTS, scored):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert s.n_tokens == len(ids) and not s.windowed
        assert s.n_bytes == len(text.encode())
        assert s.nats == pytest.approx(_hand_nats(model, [prefix, *ids]), rel=1e-5)
        assert s.bits_per_byte == pytest.approx(s.nats / math.log(2) / s.n_bytes)
    # One text per batch gives the same numbers: padding never leaks into real tokens.
    alone = score_texts(model, tokenizer, TEXTS, max_tokens=256, batch_tokens=256)
    assert [a.nats for a in alone] == pytest.approx([s.nats for s in scored], rel=1e-5)


def test_with_bos_the_first_token_is_predicted_from_one_bos() -> None:
    tokenizer = gemma_tokenizer()
    model = tiny_gemma3(len(tokenizer))
    scored = score_texts(model, tokenizer, TEXTS, max_tokens=256, batch_tokens=1024)
    for text, s in zip(TEXTS, scored):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.encode(text) == [tokenizer.bos_token_id, *ids]  # the default adds BOS
        assert s.n_bytes == len(text.encode()) and s.n_tokens == len(ids)
        assert s.nats == pytest.approx(_hand_nats(model, [tokenizer.bos_token_id, *ids]), rel=1e-5)


def test_long_texts_are_scored_in_rolling_windows(model, tokenizer) -> None:
    (s,) = score_texts(model, tokenizer, TEXTS[:1], max_tokens=6, batch_tokens=64)
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    assert s.windowed and s.n_tokens == len(ids) > 12 and s.n_bytes == len(TEXTS[0].encode())
    # By hand, lm-eval's windows: the first predicts ids[0:6] from [prefix] + ids[0:5]; each next
    # one predicts the next ≤ 6 tokens from the 6 tokens before its last one.
    seq = [tokenizer.bos_token_id, *ids]
    expected = _hand_nats(model, seq[:7])
    done = 6
    while done < len(ids):
        width = min(6, len(ids) - done)
        done += width
        window = seq[done - 6 : done + 1]
        expected += _hand_nats(model, window, scored_from=len(window) - width)
    assert s.nats == pytest.approx(expected, rel=1e-5)


def test_domain_score_is_byte_weighted_with_documents_as_observations() -> None:
    ln2 = math.log(2)
    scored = [
        ScoredText(nats=10 * ln2, n_bytes=10, n_tokens=3),  # doc a: 1.0 bpb
        ScoredText(nats=30 * ln2, n_bytes=10, n_tokens=3),  # doc a: 3.0 bpb
        ScoredText(nats=20 * ln2, n_bytes=40, n_tokens=9),  # doc b: 0.5 bpb
        ScoredText(nats=5 * ln2, n_bytes=5, n_tokens=1),  # other domain
        ScoredText(nats=0.0, n_bytes=0, n_tokens=0),  # an empty text
    ]
    scores = domain_bits_per_byte(["p", "p", "p", "q", "p"], ["a", "a", "b", "c", "d"], scored)
    p = scores["bpb/p"]
    assert p.value == pytest.approx(60 / 60) and p.n == 2 and not p.higher_is_better
    assert p.observations == {"a": pytest.approx((40.0, 20.0)), "b": pytest.approx((20.0, 40.0))}
    # Delta-method SE by hand: residuals (y − R x) / Σx = (40 − 20) / 60 and (20 − 40) / 60.
    assert p.se == pytest.approx(math.sqrt(2 / 1 * ((20 / 60) ** 2 + (20 / 60) ** 2)))
    assert math.isnan(scores["bpb/q"].se) and scores["bpb/q"].n == 1


def test_ratio_se_with_unit_denominators_is_lm_evals_mean_stderr() -> None:
    values = [1, 0, 1, 1, 0, 1, 1, 1]
    value, se = ratio_estimate(values, np.ones(len(values)))
    assert value == pytest.approx(statistics.mean(values))
    assert se == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
