"""TrainConfig: everything a training run depends on, resolved once and stored in the run directory.

Resolution order (later wins): dataclass defaults, the optimiser defaults of the model's input-size protocol
(retrieval/protocol.py, docs/method.md#training-budgets-and-cost), the preset, the paper-notation method (every field
it names: notation.METHOD_FIELDS), explicit options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from retrieval.errors import UserError
from retrieval.models import ARCHS
from retrieval.protocol import protocol_for
from training.defenses import DefenseConfig, validate as validate_defense
from training.defenses.notation import parse_method, said

PRODUCT_METHOD = "HM[B,gLGA]&ICS+APGD"
"""What `train` trains when neither --method nor --defense says otherwise (docs/method.md#the-products-method)."""

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "dataset": "fashion-mnist",
        "model": "c2f2",
        "device": "cpu",
        "epochs": 2,
        "max_steps": 700,
        "val_subset": 2_000,
        "val_every": 2,
        "defense": {"pgd_steps": 8},
    },
    "standard": {
        "dataset": "fashion-mnist",
        "model": "c2f2",
        "device": "cpu",
        "epochs": 8,
        "max_steps": 3_000,
        "val_subset": 2_000,
        "val_every": 1,
        "checkpoint_every": 100,
        "defense": {"pgd_steps": 8},
    },
    "paper": {"defense": {"pgd_steps": 32}},
}
"""quick: 700 iterations at eta 8, validated once at the end on 2,000 test images; eta 8 because the product's APGD
adversary searches the whole eps-ball in 8 steps (BENCHMARKS.md, "Training against the strong attacker"): 0.70 s per
iteration on 2 idle cores, about 8 minutes. A fixed iteration count, not a time budget, so the same seed gives the same
model on any machine with the same kind of CPU and torch thread count (metrics.json records `torch_threads`; float
sums follow the thread count); --time-budget stays an option. standard: 3,000 iterations (6.4 epochs) at eta 8, about
36 minutes of training on 2 idle cores (0.73 s per iteration; the strong ERS plateaus from about 1,300 iterations,
BENCHMARKS.md "The learning curve"), validated every epoch and checkpointed every 100 iterations for --resume. paper:
the published protocol (model defaults: 8 epochs c2f2 / 75 resnet18) with eta 32."""

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    out: str = "runs/default"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    model: str = "c2f2"
    embedding_dim: int = 512
    pretrained: bool = True
    epochs: int = 8
    batch_pairs: int = 128
    """SPC-2 pairs per batch and per process (2x as many images)."""
    lr: float = 1e-3
    weight_decay: float = 1e-7
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many iterations in total (a checkpoint is written there, so --resume can go on)."""
    train_subset: int | None = None
    """Train on a fixed, seeded, class-balanced subset of this many anchors."""
    val_subset: int | None = None
    """Validate on a seeded, class-balanced subset of N test images (all of them when None)."""
    val_every: int = 1
    """Validate every this many epochs (and always at the end)."""
    val_batch: int = 128
    val_attack_queries: int = 128
    """Validation also attacks this many seeded validation images with APGD (QA-, TMA): a strong-attack proxy in
    log.jsonl and metrics.json (0 = off)."""
    val_attack_steps: int = 32
    """APGD steps of the validation proxy."""
    time_budget: float | None = None
    """Stop after the iteration that crosses this many seconds of training; with `init`, the seconds that trained
    the init run count too, so a fine-tuned run and a run from scratch get the same budget."""
    init: str | None = None
    """Start from the weights of this run directory or checkpoint (adversarial fine-tuning); fresh optimiser."""
    checkpoint_every: int | None = None
    """Also checkpoint every this many iterations (a checkpoint is always written at the end of each epoch)."""
    log_every: int = 10
    """Iterations per training record in log.jsonl (stats are averaged over them)."""
    num_workers: int = 4
    """DataLoader workers for folder datasets (in-memory datasets need none)."""
    device: str = "auto"
    deterministic: bool = True
    """Ask torch for deterministic kernels where it has them (warns, never fails, where it has not)."""
    preset: str | None = None
    defense: DefenseConfig = field(default_factory=DefenseConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown training configuration keys: {', '.join(sorted(unknown))}")
        return cls(**{**values, "defense": DefenseConfig(**values.get("defense", {}))})

    def validate(self) -> "TrainConfig":
        """Raise UserError for values no run can use; returns self."""
        _choice("--model", self.model, ARCHS)
        _choice("--device", self.device, DEVICES)
        validate_defense(self.defense)
        for name in ("epochs", "batch_pairs", "val_every", "val_batch", "log_every", "embedding_dim", "val_attack_steps"):
            _positive(name, getattr(self, name))
        if self.val_attack_queries < 0:
            raise UserError(f"--val-attack-queries must be >= 0, got {self.val_attack_queries}")
        for name in ("max_steps", "train_subset", "val_subset", "checkpoint_every"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.num_workers < 0:
            raise UserError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise UserError(f"--time-budget must be > 0 seconds, got {self.time_budget:g}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise UserError("--lr must be > 0 and --weight-decay >= 0")
        return self


def build_config(
    options: dict[str, Any],
    defense_options: dict[str, Any],
    *,
    preset: str | None = None,
    method: DefenseConfig | None = None,
) -> TrainConfig:
    """Resolve a TrainConfig; `options`/`defense_options` hold only the values the user gave explicitly."""
    preset_values = dict(PRESETS[_choice("--preset", preset, PRESETS)]) if preset else {}
    preset_defense = preset_values.pop("defense", {})
    model = options.get("model") or preset_values.get("model") or TrainConfig.model
    _choice("--model", model, ARCHS)
    defense = replace(DefenseConfig(), **preset_defense)
    if method is None and "defense" not in defense_options and "defense" not in preset_defense:
        method = parse_method(PRODUCT_METHOD)
    if method is not None:
        defense = replace(defense, **said(method))
    defense = replace(defense, **defense_options)
    values = {**protocol_for(ARCHS[model].input_size).optimiser, **preset_values, **options, "preset": preset}
    return TrainConfig(**values, defense=defense).validate()


def _choice(option: str, value: Any, allowed: Any) -> Any:
    if value not in allowed:
        raise UserError(f"{option} {value!r} is not one of: {', '.join(allowed)}")
    return value


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
