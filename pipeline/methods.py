"""The methods of ``polyfuse experiment``: one table, read by the experiment and by the CLI's help.

A method is a fusion strategy and the ``distill`` fields it changes; every other setting is the
config's (pipeline/experiment.py). Ablations run only when named (``--methods``). Kept free of
heavy imports so that ``polyfuse --help`` can list the methods without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import Config, TeacherConfig


@dataclass(frozen=True)
class Method:
    """One row of the comparison (or one curve of `pipeline/curves.py`): a strategy and the
    distill fields it changes."""

    name: str
    strategy: str
    overrides: tuple[tuple[str, Any], ...] = ()
    about: str = ""
    ablation: bool = False
    """Run only when asked for by name (`--methods`), not in the default comparison."""
    without_student: bool = False
    """Leave out every teacher that is the student model itself (`method_teachers`)."""

    @property
    def folder(self) -> str:
        """The run folder's name under runs/<experiment>/methods/ (no `:` in paths)."""
        return self.name.replace(":", "_")


def method_teachers(config: Config, method: Method) -> list[TeacherConfig]:
    """The configured teachers a method reads. A `without_student` method drops every teacher whose
    model is the student's own (the same folder, or the same hub id): its distribution is the
    untrained student's, so under a gate it only pulls the target towards what the student already
    writes (measured: README, Results). Where no teacher is the student, it reads them all.
    Raises ``ValueError`` when every teacher is the student."""
    if not method.without_student:
        return list(config.teachers)
    kept = [t for t in config.teachers if not _same_model(t.path, config.student.path)]
    if not kept:
        raise ValueError(
            f"{method.name}: every teacher is the student ({config.student.path}): add another teacher"
        )
    return kept


def _same_model(a: str, b: str) -> bool:
    """Two model references name one model: they resolve to the same folder (`model_folder`: a
    local path, or a hub id's snapshot, so `org/name` and its pinned commit are one model)."""
    from stages.model_source import model_folder

    first, second = model_folder(a), model_folder(b)
    if first.exists() and second.exists():
        return first.samefile(second)
    return first == second


METHODS = {
    m.name: m
    for m in (
        Method("none", "none", about="CLM-only continual training on the same text (λ = 1)"),
        Method(
            "single:qwen-coder",
            "single:qwen-coder",
            about="distillation from the strongest demo teacher alone (any `single:NAME` of the config runs)",
        ),
        Method("uniform", "uniform", about="every present teacher with weight 1/n"),
        Method(
            "min_ce",
            "min_ce",
            about="FuseLLM MinCE: the teacher with the lowest CE per sample (the best first gate feature)",
        ),
        Method("avg_ce", "avg_ce", about="FuseLLM AvgCE as coded: softmax of exp(−CE) over teachers"),
        Method(
            "min_bpb", "min_bpb", about="tokenizer-neutral MinCE: the teacher with the lowest bits per byte"
        ),
        Method(
            "avg_bpb",
            "avg_bpb",
            about="tokenizer-neutral AvgCE: softmax of 2^(−bits per byte) over teachers",
            ablation=True,
        ),
        Method(
            "random_gate",
            "random_gate",
            about="released code: a fresh untrained gate every step, τ applied (formerly `authors`)",
        ),
        Method(
            "adaptive", "adaptive", about="trained gate, threshold selection, feedback loss (τ from config)"
        ),
        Method("adaptive_tau0.1", "adaptive", (("tau", 0.1),), "ablation: τ = 0.1", ablation=True),
        Method("adaptive_tau0.3", "adaptive", (("tau", 0.3),), "ablation: τ = 0.3", ablation=True),
        Method(
            "no_feedback", "adaptive", (("beta", 0.0),), "ablation: feedback loss off (β = 0)", ablation=True
        ),
        Method(
            "gate_feedback_only",
            "adaptive",
            (("fusion_trains_gate", False),),
            "ablation: the gate trained by the feedback loss only",
            ablation=True,
        ),
        Method(
            "bpb_features",
            "adaptive",
            (("gate_features", "bits_per_byte"),),
            "ablation: gate fed 2^(−bits per byte)",
            ablation=True,
        ),
        Method(
            "adaptive_likelihood",
            "adaptive",
            (("gate_objective", "likelihood"),),
            "gate trained on the text's likelihood under the teacher mixture, not the fusion loss",
        ),
        Method(
            "likelihood_no_feedback",
            "adaptive",
            (("gate_objective", "likelihood"), ("beta", 0.0)),
            "ablation: the likelihood gate without the feedback (balance) loss",
            ablation=True,
        ),
    )
}
"""Every method by name, in the report's table order."""
PROPOSED = "adaptive"
"""The method whose knowledge-interference reduction the report gives."""
BASELINES = ("none", "min_ce", "avg_ce", "random_gate")
"""The methods that reduction is measured against."""
DEFAULT_METHODS = tuple(name for name, m in METHODS.items() if not m.ablation)
"""What ``polyfuse experiment`` runs without ``--methods``."""
ABLATIONS = tuple(name for name, m in METHODS.items() if m.ablation)
"""Methods run only when named."""
