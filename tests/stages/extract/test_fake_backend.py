"""The fake backend's σ: the mass of its own full distribution (top-k plus an even rest) on the
space mask, deterministic and within (0, 1]."""

from __future__ import annotations

import numpy as np

from stages.extract.backends.fake_backend import FakeBackend


def test_fake_sigma_is_its_distributions_mass_on_the_mask() -> None:
    vocab, k = 1000, 5
    mask = np.zeros(vocab, bool)
    mask[::4] = True  # a quarter of the ids start a word
    backend = FakeBackend("t", top_k=k, vocab_size=vocab, space_mask=mask)
    seqs = [np.arange(40, dtype=np.int32) * 7 % vocab, np.array([3, 9, 4], np.int32), np.array([8], np.int32)]
    rows = backend.topk_logprobs(seqs)
    again = FakeBackend("t", top_k=k, vocab_size=vocab, space_mask=mask).topk_logprobs(seqs[:1])[0]
    np.testing.assert_array_equal(again.space_logprobs, rows[0].space_logprobs)
    assert rows[2].space_logprobs.shape == (0,)
    for r in rows[:2]:
        probs = np.exp(r.topk_logprobs.astype(np.float64))
        masked_topk = (probs * mask[r.topk_ids]).sum(axis=1)
        rest = 1 - probs.sum(axis=1)
        outside = (mask.sum() - mask[r.topk_ids].sum(axis=1)) / (vocab - k)
        np.testing.assert_allclose(np.exp(r.space_logprobs), masked_topk + rest * outside, rtol=1e-6)
        assert (r.space_logprobs <= 0).all() and np.isfinite(r.space_logprobs).all()
    # A mask of every id gives σ = 1; no mask gives no σ; a mask shorter than V is padded with False.
    full = FakeBackend("t", top_k=k, vocab_size=vocab, space_mask=np.ones(vocab, bool))
    np.testing.assert_allclose(full.topk_logprobs(seqs[:1])[0].space_logprobs, 0.0, atol=1e-6)
    assert FakeBackend("t", top_k=k, vocab_size=vocab).topk_logprobs(seqs[:1])[0].space_logprobs is None
    short = FakeBackend("t", top_k=k, vocab_size=vocab, space_mask=mask[:10])
    assert short.space_mask.sum() == mask[:10].sum() and len(short.space_mask) == vocab
