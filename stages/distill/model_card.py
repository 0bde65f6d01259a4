"""The model card of an export: ``README.md`` with the front-matter the Hugging Face hub reads.

Written from the export folder itself, so that one function serves the export (export.py) and
every later refresh: ``config.yaml`` (the resolved config, hub ids pinned to commits, headed by
the cache keys) and ``fusion_stats.json`` (the run's statistics). What it holds:

    front-matter   base_model (the student's hub id), license, tags, datasets (hub dataset ids of
                   the corpus), library_name, pipeline_tag: `huggingface_hub.ModelCardData`
    body           the teachers with their pinned revisions and teacher keys, the objective and
                   its settings, the training tokens, the corpus, and, once an evaluation exists
                   (pipeline/experiment.py calls `write_model_card` again with `heldout_frame`),
                   the held-out table: scores, Δ vs the target and vs `none` ± paired SE

The licence is the student's own card's where its folder has one (a hub snapshot does), else
``unknown``: a model trained on teachers' outputs may also be bound by the teachers' terms, which
the card says and cannot decide.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from data_schemas.atomic import atomic_open
from stages.model_source import HUB_ID

if TYPE_CHECKING:
    import polars as pl

    from stages.evaluate.paired_delta import PairedDelta
    from stages.evaluate.unit_score import UnitScore

CARD_NAME = "README.md"
TAGS = ["polyfuse", "knowledge-fusion", "distillation"]
OBJECTIVE_KEYS = ("strategy", "objective", "target", "lam", "beta", "tau", "gate_features", "gate_objective")
OBJECTIVE_KEYS += ("fusion_trains_gate", "feedback_scope", "aligner", "vocab_map")
TRAINING_KEYS = ("max_steps", "lr", "gate_lr", "warmup_steps", "micro_batch_size", "grad_accum_steps")
TRAINING_KEYS += ("max_seq_tokens", "dtype", "zero_stage")
_CORPUS_KEY = re.compile(r"^# corpus_key: (\S+)$", re.M)
_TEACHER_KEY = re.compile(r"^# teacher_key (\S+): (\S+)$", re.M)
"""The cache-key lines heading the export's config.yaml (pipeline/distillation.py: export_config_yaml)."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

The student `{{ student }}` trained by polyfuse with the `{{ strategy }}` strategy and
{{ teachers | length }} teacher cache(s):
{{ "{:,}".format(tokens) }} training tokens, {{ "{:,}".format(samples) }} samples, {{ steps }} optimizer steps.
Load it like any Hugging Face model folder (`AutoModelForCausalLM.from_pretrained`); `gate.pt`
holds the trained selection gate, `fusion_stats.json` the run's statistics.

## Teachers

| teacher | model | revision | teacher key | mean weight | present |
|---|---|---|---|---|---|
{% for t in teachers -%}
| `{{ t.name }}` | {{ t.model }} | {{ t.revision }} | {{ t.key }} | {{ t.mean_w }} | {{ t.present }} |
{% endfor %}
## Objective

{{ loss }}

| setting | value |
|---|---|
{% for key, value in objective -%}
| `{{ key }}` | `{{ value }}` |
{% endfor %}
## Training

| setting | value |
|---|---|
| training tokens | {{ "{:,}".format(tokens) }} |
{% for key, value in training -%}
| `{{ key }}` | `{{ value }}` |
{% endfor %}
{% if sources -%}
## Corpus

Corpus key `{{ corpus_key }}`.

| domain | source |
|---|---|
{% for domain, source in sources -%}
| {{ domain }} | {{ source }} |
{% endfor %}
{% endif -%}
## Held-out evaluation

{% if heldout -%}
Bits per byte per domain (lower is better) and multiple-choice accuracy, ± each model's own
standard error; Δ = this model − reference on the same documents or items, ± the paired
standard error (p: two-sided paired z-test).

{{ heldout }}
{%- else -%}
Not evaluated yet: `polyfuse experiment` adds the held-out table here.
{%- endif %}

## Reproduce

`polyfuse distill --config config.yaml` (this folder's resolved config, from the working
directory of its relative paths).

## Licence

`{{ license }}`: the student's licence
{%- if license == "unknown" %} (its folder has no model card that states one){% endif %}.
A model trained on the teachers' outputs may also be bound by the teachers' terms: check them.
"""


def write_model_card(export_dir: str | Path, heldout: pl.DataFrame | None = None) -> Path:
    """Write (or rewrite) ``export_dir/README.md`` atomically from the folder's ``config.yaml``
    and ``fusion_stats.json``, with ``heldout`` (`heldout_frame`) as its held-out table."""
    from huggingface_hub import ModelCard, ModelCardData

    export_dir = Path(export_dir)
    stats = json.loads((export_dir / "fusion_stats.json").read_text(encoding="utf-8"))
    config_path = export_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    config: dict[str, Any] = yaml.safe_load(config_text) or {}
    keys = dict(_TEACHER_KEY.findall(config_text))
    corpus_key = _CORPUS_KEY.search(config_text)
    student_spec = config.get("student", {}).get("path", stats.get("student", ""))
    license_ = _student_license(Path(stats["student"])) if stats.get("student") else "unknown"
    sources = config.get("corpus", {}).get("sources", [])
    data = ModelCardData(
        base_model=_hub_repo(student_spec),
        license=license_,
        datasets=[HUB_ID.match(s["dataset"])["repo"] for s in sources if s.get("dataset")] or None,
        tags=TAGS,
        library_name="transformers",
        pipeline_tag="text-generation",
    )
    paths = {t["name"]: t["path"] for t in config.get("teachers", [])}
    teachers = [
        {
            "name": name,
            **_model_and_revision(paths.get(name, "")),
            "key": f"`{keys[name]}`" if name in keys else "–",
            "mean_w": f"{per['mean_w']:.3f}",
            "present": f"{per['present_rate']:.3f}",
        }
        for name, per in stats.get("teachers", {}).items()
    ]
    distill = config.get("distill", {})
    objective = [(k, distill[k]) for k in OBJECTIVE_KEYS if k in distill]
    objective = objective or [("strategy", stats["strategy"]), ("tau", stats.get("tau"))]
    if config.get("extract"):
        objective += [(f"extract.{k}", config["extract"][k]) for k in ("top_k", "draws")]
    card = ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        name=config.get("name", export_dir.parent.name),
        student=student_spec,
        strategy=stats["strategy"],
        tokens=stats["tokens"],
        samples=stats["samples"],
        steps=stats["steps"],
        teachers=teachers,
        objective=objective,
        loss=_loss_text(distill, stats["strategy"]),
        training=[(k, distill[k]) for k in TRAINING_KEYS if k in distill],
        corpus_key=corpus_key[1] if corpus_key else "–",
        sources=[(s["domain"], _source_label(s)) for s in sources],
        heldout=_markdown(heldout) if heldout is not None else "",
        license=license_,
    )
    path = export_dir / CARD_NAME
    with atomic_open(path) as f:
        f.write(str(card))
    return path


OBJECTIVE_TEXT = {
    "fusion": "the w-mixture of the selected teachers' top-k distributions, mapped to the student's "
    "vocabulary at the rows both tokenizations start at the same character",
    "chunk": "the student's log-likelihood of each chunk (text the student and every teacher start and "
    "end at a token boundary) matched to the teachers' mixture (ALM)",
    "exact_token": "the teachers' top-k at the rows whose next token is the same string for teacher "
    "and student",
}
"""`distill.objective` → what the student matches (docs/design.md §7)."""


def _loss_text(distill: Mapping[str, Any], strategy: str) -> str:
    """The loss the export was trained with, in words: the terms `loss_terms.term_weights` gives
    its settings (defaults where an older config.yaml lacks a field)."""
    if strategy == "none":
        return "loss = CLM: plain training on the corpus text; no teacher signal."
    objective = distill.get("objective", "fusion")
    loss = f"loss = λ · CLM + (1 − λ) · {objective}"
    if strategy == "adaptive":
        loss += " + β · feedback"
        if distill.get("gate_objective") == "likelihood":
            loss += " + gate NLL"
    return f"{loss}, where {objective} matches {OBJECTIVE_TEXT.get(objective, objective)}."


def heldout_frame(
    model: str,
    scores: Mapping[str, Mapping[str, UnitScore]],
    comparisons: Mapping[str, Mapping[str, Mapping[str, PairedDelta]]],
    target: str,
    metrics: Sequence[str],
) -> pl.DataFrame:
    """The held-out table of one evaluated model, one row per unit (`render` transposes it):
    ``model`` and ``target`` as `value ± SE`, then `Δ vs REFERENCE` for each reference of
    ``comparisons`` (reference → model → unit → `PairedDelta`, as `compare_to_references`
    gives) that compared ``model``. The cells are the evaluation report's (stages/evaluate/report.py)."""
    import polars as pl

    from stages.evaluate.report import delta_frame, results_frame

    shown = {name: scores[name] for name in dict.fromkeys((model, target)) if name in scores}
    frames = [results_frame(shown, metrics=metrics)]
    frames += [
        delta_frame({f"Δ vs {reference}": per_model[model]}, metrics)
        for reference, per_model in comparisons.items()
        if model in per_model
    ]
    return pl.concat(frames, how="diagonal").fill_null("–")


def _markdown(frame: pl.DataFrame) -> str:
    from stages.evaluate.report import render_table

    return render_table(frame, markdown=True, by_unit=True)


def _hub_repo(spec: str) -> str | None:
    """``org/name`` of a spec the export pinned to a commit (``org/name@<40 hex>``), else None: a
    local folder has no hub id to name."""
    match = HUB_ID.match(spec)
    return match["repo"] if match and _COMMIT.match(match["revision"] or "") else None


def _model_and_revision(spec: str) -> dict[str, str]:
    repo = _hub_repo(spec)
    if repo is None:
        return {"model": f"`{spec}`" if spec else "–", "revision": "local folder"}
    return {"model": f"[{repo}](https://huggingface.co/{repo})", "revision": f"`{spec.split('@', 1)[1]}`"}


def _source_label(source: Mapping[str, Any]) -> str:
    if not source.get("dataset"):
        return f"`{source.get('path')}`"
    return f"hub dataset `{source['dataset']}`, split `{source.get('split', 'train')}`"


def _student_license(folder: Path) -> str:
    """The licence the student's own model card states, else ``unknown``."""
    from huggingface_hub import ModelCard

    card = folder / CARD_NAME
    if not card.is_file():
        return "unknown"
    try:
        return str(ModelCard.load(card).data.license or "unknown")
    except (OSError, ValueError):  # a README that is not a model card
        return "unknown"
