"""Drawn tokens (the `sampled` target): unbiased, reproducible, counted exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.extract.draws import count_draws, draw_tokens, row_uniforms


def test_draws_estimate_the_full_distribution_without_bias() -> None:
    # 4 rows over a 50-token vocabulary, 40,000 draws each (fixed seed): every token's frequency
    # lies within 5 binomial standard errors of its probability (a bound a correct sampler
    # breaks with probability < 1e-4 over all 200 tokens), and the tail beyond the top-10 too.
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.log_softmax(torch.randn(4, 50, generator=gen) * 2, dim=-1)
    draws = 40_000
    uniforms = torch.from_numpy(np.random.default_rng(1).random((4, draws)))
    ids = draw_tokens(logprobs, uniforms).numpy()
    p = logprobs.exp().double().numpy()
    freq = np.stack([np.bincount(row, minlength=50) for row in ids]) / draws
    bound = 5 * np.sqrt(p * (1 - p) / draws) + 1e-12
    assert (np.abs(freq - p) <= bound).all()
    tail = np.argsort(-p, axis=1)[:, 10:]
    tail_p = np.take_along_axis(p, tail, 1).sum(1)
    tail_f = np.take_along_axis(freq, tail, 1).sum(1)
    assert (np.abs(tail_f - tail_p) <= 5 * np.sqrt(tail_p * (1 - tail_p) / draws)).all()
    assert (tail_p > 0.01).all()  # the test would be void for a distribution without a tail


def test_a_token_of_probability_zero_is_never_drawn() -> None:
    logprobs = torch.log(torch.tensor([[0.5, 0.0, 0.5, 0.0]]))
    ids = draw_tokens(logprobs, torch.from_numpy(np.random.default_rng(0).random((1, 1000))))
    assert set(ids.flatten().tolist()) == {0, 2}


def test_uniforms_depend_on_the_sequence_and_seed_only() -> None:
    ids = np.array([5, 9, 2, 7], np.int32)
    a, b = row_uniforms(ids, 12), row_uniforms(ids.copy(), 12)
    assert a.shape == (3, 12) and np.array_equal(a, b)
    assert not np.array_equal(a, row_uniforms(np.array([5, 9, 2, 8]), 12))
    assert not np.array_equal(a, row_uniforms(ids, 12, seed=1))


def test_count_draws_by_hand() -> None:
    ids, counts = count_draws(np.array([[5, 3, 5, 5, 3, 9], [1, 1, 1, 1, 1, 1]]))
    assert ids.tolist() == [[5, 3, 9, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert counts.tolist() == [[3, 2, 1, 0, 0, 0], [6, 0, 0, 0, 0, 0]]
    assert ids.dtype == np.int32 and counts.dtype == np.uint8


def test_transformers_backend_draws_do_not_depend_on_batching(tiny_llama_folder) -> None:
    from stages.extract.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_llama_folder, top_k=4, draws=12, batch_tokens=64)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 2000, n).astype(np.int32) for n in (9, 17, 5)]
    together = backend.topk_logprobs(seqs)
    alone = [backend.topk_logprobs([s])[0] for s in seqs]
    for a, b, seq in zip(together, alone, seqs, strict=True):
        assert a.drawn_ids.shape == (len(seq) - 1, 12)
        np.testing.assert_array_equal(a.drawn_ids, b.drawn_ids)


@pytest.fixture
def tiny_llama_folder(tmp_path):
    from tests.stages.extract.conftest import build_tiny_teacher

    return build_tiny_teacher(tmp_path / "tiny")
