"""The evaluate unit of work: one HF model folder scored by lm-evaluation-harness (lm-eval), its
per-sample outputs turned into `UnitScore`s with per-observation data for the paired statistics.

    model folder ──► lm-eval HFLM ──► simple_evaluate(log_samples=True)
                                        ├─ polyfuse_bpb_<domain>  loglikelihood_rolling (rolling_tasks.py)
                                        ├─ polyfuse_<set>         multiple_choice (mc_sets.py)
                                        └─ named tasks            any installed task whose data is local
                                      ──► bpb/<domain>, acc*/<set>, <metric>/<task> UnitScores

Conventions (what polyfuse reports; tests/stages/evaluate/hand_scorer.py is the hand-written
oracle that tests hold lm-eval to):
- bits per byte: a held-out sample is encoded *without* special tokens and every token is
  predicted, the first one from lm-eval's prefix token (the tokenizer's BOS, else its EOS):
  lm-eval's ``loglikelihood_rolling`` with ``add_bos_token=False``. So every UTF-8 byte of the
  text is predicted and counted, with any tokenizer. (With lm-eval's default the text of a
  tokenizer that adds BOS, e.g. Gemma's, is encoded with it and the BOS is "predicted" from the
  prefix BOS: EleutherAI/lm-evaluation-harness#3333.) A sample longer than ``max_length``
  tokens is scored in lm-eval's disjoint rolling windows, not truncated: every token is predicted
  once; a window after the first conditions its first token on the one token before it (the last
  window on up to ``max_length`` tokens). A document's observation is (Σ bits, Σ bytes) over its
  samples.
- multiple choice: lm-eval's default encoding (the tokenizer's special tokens, BOS where it adds
  one), contexts left-truncated to ``max_length`` + 1 tokens with the choice; acc, acc_norm
  (per character), acc_bytes (per byte); an item's observation is (correct, 1).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from stages.evaluate.bits_per_byte import ScoredText, domain_bits_per_byte
from stages.evaluate.unit_score import UnitScore

logger = logging.getLogger(__name__)

NATS_PER_BIT = math.log(2)


def scorer_version() -> str:
    """``lm-eval <version>``: part of the score cache key, so an upgraded lm-eval re-scores."""
    return f"lm-eval {importlib.metadata.version('lm_eval')}"


@functools.cache
def _task_manager(include_paths: tuple[str, ...]):
    """lm-eval's task index (installed tasks plus ours): ~10 s to build, so built once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None)


def check_named_tasks(names: Sequence[str], include_paths: Sequence[Path] = ()) -> None:
    """Raise ValueError, naming the task and the fix, when a named lm-eval task (a registered name
    or a path to a task YAML) is unknown or its data cannot be loaded here (offline and not in the
    Hugging Face datasets cache, or a local data file that is missing)."""
    if not names:
        return
    manager = _task_manager(tuple(str(Path(p).resolve()) for p in include_paths))
    for name in names:
        is_yaml = Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()
        if not is_yaml and name not in manager.all_tasks:
            raise ValueError(
                f"evaluate.lm_eval_tasks: lm-eval has no task {name!r}: use a name `lm_eval ls tasks` "
                "lists (e.g. hellaswag) or remove it"
            )
        try:
            manager.load([name])
        except yaml.YAMLError as e:  # a task YAML (or one it includes) that does not parse
            raise ValueError(
                f"evaluate.lm_eval_tasks: the task file {name} is not valid YAML "
                f"({' '.join(str(e).split())}): fix its syntax or remove it from evaluate.lm_eval_tasks"
            ) from e
        except (OSError, KeyError, ValueError) as e:  # datasets offline: ConnectionError (an OSError)
            raise ValueError(
                f"evaluate.lm_eval_tasks: the data of lm-eval task {name} is not available offline "
                f"({' '.join(str(e).split())}): download it once with network access (run `lm_eval "
                f"--tasks {name} --limit 1` with HF_DATASETS_OFFLINE unset) or remove {name} from "
                "evaluate.lm_eval_tasks"
            ) from e


def check_scorable(folder: Path) -> None:
    """``ValueError`` naming the folder and the fix, before its weights load, unless lm-eval can
    score it as polyfuse does: a causal LM whose tokenizer files are there, fit its embedding and
    give a prefix token (BOS, else EOS) to predict a text's first token from (module docstring)."""
    from transformers import AutoTokenizer

    from stages.model_config import check_causal_lm, check_tokenizer_fits
    from stages.tokenization import check_tokenizer_files

    check_causal_lm(folder, "the model")
    check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer in {folder}: {' '.join(str(e).split())}") from e
    check_tokenizer_fits(tokenizer, folder, "the model")
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(
            f"the tokenizer in {folder} has neither a BOS nor an EOS token, so lm-eval has no token to "
            "predict a text's first token from: set bos_token (or eos_token) in its "
            "tokenizer_config.json to the token the model starts or ends documents with"
        )


def load_lm(folder: Path, *, dtype: str, batch_size: int, max_length: int, device: str | None = None):
    """lm-eval's HF model on a local folder (offline, no remote code), fp32 log-softmax."""
    import torch
    from lm_eval.models.huggingface import HFLM

    try:
        return HFLM(
            pretrained=str(folder),
            backend="causal",
            dtype=dtype,
            softmax_dtype="float32",
            batch_size=batch_size,
            max_length=max_length,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            trust_remote_code=False,
        )
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot load the model in {folder}: {e}") from e


def _without_special_tokens(lm):
    """A second lm-eval view of the same loaded model that encodes text without special tokens
    (module docstring: bits per byte)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=lm.model,
        tokenizer=lm.tokenizer,
        backend="causal",
        softmax_dtype="float32",
        batch_size=lm.batch_size,
        max_length=lm.max_length,
        add_bos_token=False,
    )


def _evaluate(lm, tasks: Sequence[str], include_paths: tuple[str, ...]) -> dict[str, list[dict]]:
    """task → lm-eval's logged samples (one filter: the first), zero-shot, no bootstrap."""
    import lm_eval

    if not tasks:
        return {}
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=_task_manager(include_paths),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples: dict[str, list[dict]] = {}
    for task, logged in results["samples"].items():
        first_filter = logged[0]["filter"] if logged else None
        samples[task] = [s for s in logged if s["filter"] == first_filter]
    return samples


def rolling_scores(domain: str, samples: Sequence[Mapping]) -> tuple[dict[str, UnitScore], list[ScoredText]]:
    """``bpb/<domain>`` from a rolling task's logged samples: lm-eval's per-sample
    ``bits_per_byte = (log-likelihood, bytes)``, summed per document (the sample's ``doc_id``)."""
    scored = [
        ScoredText(nats=-float(s["bits_per_byte"][0]), n_bytes=int(s["bits_per_byte"][1])) for s in samples
    ]
    documents = [str(s["doc"]["doc_id"]) for s in samples]
    return domain_bits_per_byte([domain] * len(samples), documents, scored), scored


def sample_scores(task: str, samples: Sequence[Mapping], item_key: str | None = None) -> dict[str, UnitScore]:
    """``<metric>/<task>`` for every per-sample metric lm-eval logged: a number (acc, acc_norm,
    acc_bytes, exact_match …) is an observation (value, 1); lm-eval's ``bits_per_byte`` pair
    (log-likelihood, bytes) becomes ``bpb/<task>``; its other perplexities are left out (the
    same numbers). Observations are keyed by ``doc[item_key]``, else lm-eval's doc_id."""
    if not samples:
        return {}
    observations: dict[str, dict[str, tuple[float, float]]] = {}
    for s in samples:
        key = str(s["doc"][item_key]) if item_key else str(s["doc_id"])
        for metric in s["metrics"]:
            value = s[metric]
            if metric == "bits_per_byte":
                observations.setdefault("bpb", {})[key] = (-float(value[0]) / NATS_PER_BIT, float(value[1]))
            elif isinstance(value, int | float):  # bool is an int: acc may be logged as one
                observations.setdefault(metric, {})[key] = (float(value), 1.0)
    for per_key in observations.values():
        if len(per_key) != len(samples):
            raise ValueError(f"task {task}: item ids repeat: give every item its own {item_key or 'doc_id'}")
    return {
        f"{metric}/{task}": UnitScore.from_observations(f"{metric}/{task}", metric, metric != "bpb", per_key)
        for metric, per_key in sorted(observations.items())
    }


def score_model(
    folder: Path,
    *,
    rolling_tasks: Mapping[str, Path],
    mc_tasks: Mapping[str, Path],
    named_tasks: Sequence[str] = (),
    dtype: str = "float32",
    batch_size: int = 1,
    max_length: int = 1024,
    threads: int | None = None,
) -> tuple[dict[str, UnitScore], dict]:
    """Every unit's score of one model folder through lm-eval, and run facts (samples, bytes,
    windowed samples, seconds).

    rolling_tasks: domain → its loglikelihood_rolling task YAML (rolling_tasks.py).
    mc_tasks: set name → its multiple_choice task YAML (mc_sets.py).
    named_tasks: installed lm-eval tasks by name (check them first: `check_named_tasks`).
    """
    import torch

    from stages.evaluate.mc_sets import LM_EVAL_PREFIX
    from stages.evaluate.rolling_tasks import task_name

    if threads is not None:
        torch.set_num_threads(threads)
    include = tuple(
        sorted({str(Path(p).resolve().parent) for p in [*rolling_tasks.values(), *mc_tasks.values()]})
    )
    indexing = time.perf_counter()
    _task_manager(include)  # lm-eval's task index, once per process: timed apart from scoring
    started = time.perf_counter()
    lm = load_lm(folder, dtype=dtype, batch_size=batch_size, max_length=max_length)
    loaded = time.perf_counter()

    rolling = _evaluate(_without_special_tokens(lm), [task_name(d) for d in rolling_tasks], include)
    scores: dict[str, UnitScore] = {}
    n_samples = n_bytes = windowed = 0
    for domain in rolling_tasks:
        samples = rolling[task_name(domain)]
        domain_scores, scored = rolling_scores(domain, samples)
        scores.update(domain_scores)
        n_samples += len(scored)
        n_bytes += sum(s.n_bytes for s in scored)
        # lm-eval logs a rolling request's windows only as one sum: count them from the text.
        windowed += sum(
            len(lm.tok_encode(s["doc"]["text"], add_special_tokens=False)) > max_length for s in samples
        )
    bpb_done = time.perf_counter()
    logger.info(
        "%s: bits per byte on %d samples, %d bytes (%.0f s)", folder, n_samples, n_bytes, bpb_done - loaded
    )

    mc = _evaluate(lm, [f"{LM_EVAL_PREFIX}{t}" for t in mc_tasks], include)
    for task in mc_tasks:
        scores.update(sample_scores(task, mc[f"{LM_EVAL_PREFIX}{task}"], item_key="item_id"))
    mc_done = time.perf_counter()
    logger.info("%s: %d multiple-choice sets (%.0f s)", folder, len(mc_tasks), mc_done - bpb_done)

    for task, samples in _evaluate(lm, named_tasks, include).items():
        scores.update(sample_scores(task, samples))
    facts = {
        "scorer": scorer_version(),
        "bpb_samples": n_samples,
        "bpb_bytes": n_bytes,
        "bpb_windowed_samples": windowed,
        "task_index_seconds": round(started - indexing, 1),
        "load_seconds": round(loaded - started, 1),
        "bpb_seconds": round(bpb_done - loaded, 1),
        "mc_seconds": round(mc_done - bpb_done, 1),
        "named_seconds": round(time.perf_counter() - mc_done, 1),
    }
    del lm
    return scores, facts
