"""The vLLM backend (CPU build here, the same code as on GPU) against the transformers backend.

vLLM is imported at module level on purpose: a vLLM that does not import is a failure of this
test file, not a skip (docs/design.md §4 promises the parity).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.extract.backends.vllm_backend import VllmBackend
from tests.stages.extract.conftest import MAX_TOKENS, TOP_K


def test_vllm_matches_transformers(tiny_teacher: Path, transformers_backend, tokenized) -> None:
    backend = VllmBackend(
        tiny_teacher, top_k=TOP_K, max_tokens=MAX_TOKENS, dtype="float32", kv_cache_gib=0.25
    )
    try:
        assert backend.version
        vllm_rows = backend.topk_logprobs([t.ids for t in tokenized])
    finally:
        backend.close()
    hf_rows = transformers_backend.topk_logprobs([t.ids for t in tokenized])
    same_sets = positions = 0
    worst = 0.0
    for tok, v, h in zip(tokenized, vllm_rows, hf_rows, strict=True):
        assert v.n_rows == h.n_rows == max(len(tok.ids) - 1, 0)
        assert v.topk_ids.dtype == np.int32 and v.topk_logprobs.dtype == np.float32
        assert v.space_logprobs is None  # top-k prompt logprobs only: no σ (vllm_backend.py)
        for r in range(v.n_rows):
            positions += 1
            if set(v.topk_ids[r]) == set(h.topk_ids[r]):
                same_sets += 1
                # Compare the logprob of each id, not of each rank: near-ties may swap ranks.
                order_v, order_h = np.argsort(v.topk_ids[r]), np.argsort(h.topk_ids[r])
                worst = max(
                    worst, float(np.abs(v.topk_logprobs[r][order_v] - h.topk_logprobs[r][order_h]).max())
                )
        if v.n_rows:
            worst = max(worst, float(np.abs(v.target_logprobs - h.target_logprobs).max()))
            assert (np.diff(v.topk_logprobs, axis=1) <= 0).all()
    assert positions > 300
    assert same_sets / positions >= 0.995, f"top-{TOP_K} sets agree on {same_sets}/{positions} positions"
    assert worst <= 1e-3, f"largest logprob difference {worst}"


def test_top_k_above_max_logprobs_is_refused_before_loading(tiny_teacher: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"top_k must be between 1 and the vllm backend's maximum \(20\), got 21: raise extract.vllm_max_logprobs",
    ):
        VllmBackend(tiny_teacher, top_k=21, max_tokens=MAX_TOKENS, max_logprobs=20)


def test_max_tokens_beyond_the_model_positions_is_refused(tiny_teacher: Path) -> None:
    # The tiny model has 1,024 positions; vLLM needs one more for the generated token.
    with pytest.raises(
        ValueError, match=r"extract.max_tokens must be at most 1023 .* vllm backend .* got 1024"
    ):
        VllmBackend(tiny_teacher, top_k=TOP_K, max_tokens=1024)


def test_both_prompt_logprob_formats_parse_alike() -> None:
    """Flat logprobs (actual token first, then the top-k) and the older per-position dicts (actual
    token merged in by id) give the same rows."""
    from vllm.logprobs import FlatLogprobs, Logprob

    ids = np.array([5, 7, 9])
    # Position 1 (predicts 7): 7 is ranked 2nd; position 2 (predicts 9): 9 is outside the top-2.
    positions = [
        {7: Logprob(-1.2, 2), 3: Logprob(-0.5, 1)},
        {9: Logprob(-6.0, 40), 4: Logprob(-0.1, 1), 8: Logprob(-2.5, 2)},
    ]
    flat = FlatLogprobs()
    flat.append(None)
    flat.append_fast([7, 3, 7], [-1.2, -0.5, -1.2], iter([2, 1, 2]), [None] * 3)
    flat.append_fast([9, 4, 8], [-6.0, -0.1, -2.5], iter([40, 1, 2]), [None] * 3)
    backend = VllmBackend.__new__(VllmBackend)  # parsing only: no engine
    backend.top_k = 2
    for prompt_logprobs in (flat, [None, *positions]):
        rows = backend._rows(ids, prompt_logprobs)
        np.testing.assert_array_equal(rows.topk_ids, [[3, 7], [4, 8]])
        np.testing.assert_allclose(rows.topk_logprobs, [[-0.5, -1.2], [-0.1, -2.5]])
        np.testing.assert_allclose(rows.target_logprobs, [-1.2, -6.0])
