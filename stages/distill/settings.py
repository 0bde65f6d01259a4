"""The settings of stage two (``polyfuse distill``), the ``distill:`` section of the YAML config.

Every default lives here, once: the pipeline hands this section to the loader and the recipe
unchanged, and ``strategy`` is parsed once into its ``Strategy`` (strategies.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stages.distill.trackers import INSTALL, missing_trackers
from stages.setting_rules import require, require_choices

STRATEGY_NAMES = (
    "adaptive",
    "min_ce",
    "avg_ce",
    "min_bpb",
    "avg_bpb",
    "uniform",
    "single:NAME",
    "random_gate",
    "none",
)
"""Every fusion strategy (strategies.py has the table of what each does)."""
STRATEGY_ALIASES = {"authors": "random_gate"}
"""Former strategy names, still accepted in a config and on the command line: `authors` (the
paper's released code) is `random_gate`, a fresh untrained gate every step."""


def canonical_strategy(name: str) -> str:
    """The strategy ``name`` under its current name (runs, logs and reports use that one)."""
    return STRATEGY_ALIASES.get(name, name)


TrackerName = Literal["tensorboard", "wandb", "none"]
"""A value of ``distill.report_to`` (trackers.py)."""

# The allowed values of each choice, written once: `check` refuses any other, and the components
# that read a choice import its Literal and trust the checked value.
TopkTarget = Literal["renormalised", "residual"]
"""The targets stages/align/sample.py builds from a cache's rows."""
Target = Literal[TopkTarget, "sampled"]
"""``distill.target``: ``sampled`` is ``residual`` over a cache of drawn tokens."""
Objective = Literal["fusion", "chunk", "exact_token"]
"""``distill.objective``."""
GateFeatures = Literal["exp_neg_ce", "bits_per_byte", "all"]
"""``distill.gate_features`` (loader.GATE_FEATURES lists the features of each)."""
GateObjective = Literal["fusion", "likelihood"]
"""``distill.gate_objective`` (gate_objective.py)."""
FeedbackScope = Literal["micro_batch", "step"]
"""``distill.feedback_scope``."""
VocabMapName = Literal["prefix", "edit_distance"]
"""``distill.vocab_map`` (stages/align/vocab_map.py adds the ``exact`` map of ``exact_token``)."""
Aligner = Literal["offsets", "dtw"]
"""``distill.aligner``."""
ZeroStage = Literal[0, 1, 2, 3]
"""``distill.zero_stage``."""
TrainingDtype = Literal["auto", "float32", "bfloat16", "bf16_mixed"]
"""``distill.dtype``; ``auto`` is resolved once per run (engine.resolve_dtype)."""


@dataclass
class DistillSettings:
    """Stage two: fusion strategy, losses and the DeepSpeed training loop."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"strategy": STRATEGY_NAMES}
    """Fields whose values are names, not a ``Literal``: `polyfuse config-help` lists them."""

    strategy: str = "adaptive"
    """The fusion strategy (the table of stages/distill/strategies.py): min_bpb / avg_bpb rank by
    bits per byte (tokenizer-neutral), min_ce / avg_ce by the first gate feature (`gate_features`),
    single:NAME names a teacher, none trains on CLM alone; ``authors`` is read as random_gate."""
    target: Target = "renormalised"
    """The sparse teacher target (stages/align/sample.py): ``renormalised`` the stored top-k scaled
    to sum 1 (FuseLLM; biased: every other token gets 0); ``residual`` the stored full-softmax
    top-k probabilities plus one "rest" bucket holding 1 − Σ top-k; ``sampled`` the empirical
    distribution of N tokens drawn from the full softmax (needs a cache extracted with
    ``extract.draws`` = N, and that same setting here)."""
    objective: Objective = "fusion"
    """The distillation loss term (stages/distill/loss_terms.py), weighted 1 − λ: ``fusion`` the
    cross-entropy against the mixture of the teachers' top-k mapped to student ids (docs/design.md §7.2);
    ``chunk`` chunk-level likelihood matching (ALM, stages/distill/chunk_loss.py): on stretches
    of text that the student and every teacher start and end at a token boundary, the student's
    log-likelihood against the teachers' mixture, with nothing mapped and no row dropped;
    ``exact_token`` the fusion cross-entropy only at rows whose next token is the same string for
    the student and the teacher, candidates mapped by exact string and the rest of the teacher's
    mass in the rest bucket (needs ``target`` residual or sampled), no token-level target
    elsewhere."""
    chunk_temperature: float = 100.0
    """τ_c of the `chunk` objective: the binarisation temperature of ALM (tokenkit's 100)."""
    chunk_space_threshold: float | None = 0.1
    """The `chunk` objective's tokenisation-bias correction: chunks are merged until every
    teacher's σ (the probability that the next token starts a new word, stored by stage one) at
    the chunk's end exceeds this, and log σ is added on both sides (tokenkit's 0.1). null: plain
    chunks, no correction (a cache without σ then serves)."""
    lam: float = 0.9
    """λ: weight of the CLM loss; the distillation term (`objective`) gets 1 − λ."""
    beta: float = 0.5
    """β: weight of the feedback (load-balancing) loss, where a gate trains (`adaptive`)."""
    tau: float = 0.15
    """τ: selection threshold on the gate probabilities (the argmax is always kept)."""
    gate_features: GateFeatures = "exp_neg_ce"
    """Per-sample teacher features fed to the gate, each in [0, 1], higher is better:
    `exp_neg_ce` exp(−ce) (the paper's); `bits_per_byte` 2^(−bits per byte) (tokenizer-neutral);
    `all` four per teacher: exp(−ce), 2^(−bits per byte), topk_mass, exp(−entropy_topk), and a
    first gate layer Linear(4K, 2K). The first feature is also the score min_ce / avg_ce rank by."""
    fusion_trains_gate: bool = True
    """Whether the fusion loss also trains the gate through the weights (the feedback loss always
    does). Read under ``gate_objective: fusion`` only: under ``likelihood`` the gate has an objective
    of its own and the fusion loss never reaches it, whatever this says."""
    gate_objective: GateObjective = "fusion"
    """What trains the gate of ``adaptive`` besides the feedback loss. ``fusion`` (the paper's): the
    fusion loss through the weights (by ``fusion_trains_gate``), which pulls weight toward the
    teacher the student already imitates. ``likelihood``: the gate maximises the likelihood of the
    training text under the weight-mixture of the teachers, over spans where every present
    teacher has a token boundary (tokenizer-neutral, from the teacher caches alone); the fusion
    loss then trains the student only (``fusion_trains_gate`` is ignored). With one teacher the
    objective is a constant."""
    feedback_scope: FeedbackScope = "micro_batch"
    """Over what the feedback loss sums gate importance: each micro-batch on its own, or the whole
    optimizer step on every rank (earlier micro-batches and other ranks enter as constants)."""
    vocab_map: VocabMapName = "prefix"
    """How teacher ids map to student ids."""
    aligner: Aligner = "offsets"
    """How teacher positions map to student positions: ``offsets`` the teacher row that predicts
    from the same character (stages/align/offsets.py); ``dtw`` FuseLLM's MinED dynamic time
    warping over the token texts, hard pairs only (stages/align/dtw.py; aligns fewer rows and
    costs more loader time, bench/results/align.md and distill.md)."""
    lr: float = 2e-5
    """Peak learning rate of the student (AdamW, cosine schedule with warmup)."""
    gate_lr: float = 1e-3
    """Learning rate of the gate (its own parameter group)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the student."""
    warmup_steps: int = 10
    """Linear warm-up optimizer steps."""
    max_steps: int = 100
    """Optimizer steps to train."""
    train_shards: int | None = None
    """Train on the first N corpus train shards only (the samples the teachers of ``max_shards``
    cover, for a data-limited run that repeats them every epoch); null: every train shard."""
    micro_batch_size: int = 2
    """Samples per micro-batch per rank."""
    grad_accum_steps: int = 4
    """Micro-batches per optimizer step."""
    max_seq_tokens: int = 1024
    """Student sequence length cap (longer samples are truncated)."""
    grad_clip: float = 1.0
    """Gradient norm clipping."""
    zero_stage: ZeroStage = 2
    """DeepSpeed ZeRO stage (0–3)."""
    dtype: TrainingDtype = "auto"
    """Training dtype of the student (the gate, the rewards and every loss stay fp32).
    ``bfloat16``: DeepSpeed's bf16 (bf16 weights, fp32 master copies in the optimizer);
    ``bf16_mixed``: fp32 weights, the student's matmuls under bf16 autocast, its output layer in
    fp32 (stages/distill/engine.py); ``auto``: bfloat16 on a GPU, float32 on a CPU (the measured
    bf16 gains and parity there: bench/results/train_speed.md) — resolved once when the run starts, and the
    resolved one is what the export's config.yaml records."""
    loader_workers: int = 2
    """DataLoader worker processes that read and align shards."""
    checkpoint_every: int = 50
    """Optimizer steps between checkpoints."""
    export_every: int = 0
    """Optimizer steps between intermediate exports (``runs_dir/name/exports/step-N``, each a whole
    HF folder: what learning curves evaluate after every epoch); 0: only the final ``export``."""
    log_every: int = 5
    """Optimizer steps between log lines."""
    deepspeed_config: str | None = None
    """Path to a user's DeepSpeed JSON used instead of the one built from these fields (ZeRO and
    precision settings; it may not hold ``optimizer`` or ``scheduler`` sections, which would replace
    the two-group AdamW and the schedule)."""
    adam_beta1: float = 0.9
    """AdamW β1 of both parameter groups."""
    adam_beta2: float = 0.95
    """AdamW β2 of both parameter groups (FuseLLM's 0.95)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept under ``runs_dir/name/checkpoints``; older ones are deleted."""
    report_to: list[TrackerName] | TrackerName = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get the metrics beside ``logs/metrics.jsonl`` (always written), with
    the same names, and the resolved config as their run config (stages/distill/trackers.py):
    ``tensorboard`` (logs/tensorboard), ``wandb`` (logs/wandb, offline unless WANDB_MODE says
    otherwise; needs ``pip install wandb``), or ``none``. A list, or one name (``report_to: wandb``)."""

    def __post_init__(self) -> None:
        self.strategy = canonical_strategy(self.strategy)
        if isinstance(self.report_to, str):  # one name: the list of it
            self.report_to = [self.report_to]

    def check(self) -> None:
        require_choices(self, "distill")
        require(0.0 <= self.lam <= 1.0, "distill.lam", self.lam, "must be in [0, 1]", "use 0.9")
        require(self.beta >= 0.0, "distill.beta", self.beta, "must be ≥ 0", "use 0.5")
        require(0.0 <= self.tau < 1.0, "distill.tau", self.tau, "must be in [0, 1)", "use 0.15")
        require(
            self.objective != "exact_token" or self.target != "renormalised",
            "distill.target",
            self.target,
            "cannot serve the exact_token objective, which keeps the teacher's unmapped mass in the "
            "rest bucket",
            "use distill.target=residual (or sampled)",
        )
        require(
            self.chunk_temperature > 0,
            "distill.chunk_temperature",
            self.chunk_temperature,
            "must be positive",
            "use 100",
        )
        require(
            self.chunk_space_threshold is None or 0.0 < self.chunk_space_threshold < 1.0,
            "distill.chunk_space_threshold",
            self.chunk_space_threshold,
            "must be in (0, 1) or null",
            "use 0.1, or null for no bias correction",
        )
        for name in (
            "max_steps",
            "micro_batch_size",
            "grad_accum_steps",
            "max_seq_tokens",
            "checkpoint_every",
            "log_every",
        ):
            value = getattr(self, name)
            require(value >= 1, f"distill.{name}", value, "must be at least 1", "use a positive integer")
        require(
            self.lr > 0 and self.gate_lr > 0,
            "distill.lr/gate_lr",
            (self.lr, self.gate_lr),
            "must be positive",
            "use e.g. 2e-5 and 1e-3",
        )
        require(
            self.warmup_steps >= 0,
            "distill.warmup_steps",
            self.warmup_steps,
            "must be ≥ 0",
            "use e.g. 10 (0: no warm-up)",
        )
        require(
            self.train_shards is None or self.train_shards >= 1,
            "distill.train_shards",
            self.train_shards,
            "must be at least 1 or null",
            "use null (every train shard) or the teachers' max_shards",
        )
        require(
            self.export_every >= 0, "distill.export_every", self.export_every, "must be ≥ 0", "use 0 (none)"
        )
        require(
            self.keep_checkpoints >= 1,
            "distill.keep_checkpoints",
            self.keep_checkpoints,
            "must be at least 1",
            "use 2",
        )
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"distill.{name}", value, "must be in [0, 1)", "use 0.9 and 0.95")
        require(self.grad_clip > 0, "distill.grad_clip", self.grad_clip, "must be positive", "use 1.0")
        require(
            self.loader_workers >= 0, "distill.loader_workers", self.loader_workers, "must be ≥ 0", "use 2"
        )
        require(
            bool(self.report_to) and len(set(self.report_to)) == len(self.report_to),
            "distill.report_to",
            self.report_to,
            "must name each tracker once",
            "use e.g. [tensorboard], or [none] for metrics.jsonl alone",
        )
        require(
            "none" not in self.report_to or self.report_to == ["none"],
            "distill.report_to",
            self.report_to,
            "cannot list none beside a tracker",
            "drop none, or use [none] alone",
        )
        missing = missing_trackers(self.report_to)
        require(
            not missing,
            "distill.report_to",
            self.report_to,
            f"lists {', '.join(missing)}, which is not installed",
            "; ".join(f"install it: {INSTALL[name]}" for name in missing)
            + f", or remove {', '.join(missing)} from distill.report_to",
        )
