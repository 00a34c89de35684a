"""The shared shape of every ranking attack (docs/method.md#ranking-attacks): pick targets, run the one PGD engine, measure.

An attack is built once per gallery (benign embeddings held in memory, e.g. the vectors of a FAISS index) and
called on batches of images. Each subclass registers itself by its `name` and states its facts as class attributes
(what it measures, with units, ERS normaliser and direction; whether /probe offers it). Its code supplies two things:
`select` (targets drawn with the attack's seeded generator) and `score` (the differentiable objective J to minimise
plus the reported values in table units).

Self entry: when an attacked image is itself in the gallery (evaluation: the query set is the gallery), its
entry is the argmin of its benign distance row, as in the reference. Pass `gallery_index_of_self` with -1 for
images that are not in the gallery (e.g. a `/probe` upload).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from retrieval import seeding
from retrieval.distances import normalize
from retrieval.errors import UserError
from retrieval.registry import Registered, Registry
from retrieval.robustness.pgd import PGDConfig, frozen, pgd

NOT_IN_GALLERY = -1


@dataclass(frozen=True)
class Measure:
    """One value an attack reports, in table units, and how ERS scores it (method.md#empirical-robustness-score-ers)."""

    key: str
    """Its column in the ERS table, e.g. "CA+"."""
    score: Callable[[float], float]
    """Raw value -> normalised score s_k, higher = more robust (nothing clipped, as in the reference)."""
    higher_is_more_robust: bool
    """The arrow of the paper's tables; an attacker pushes the value the other way."""
    unit: str = "%"
    """"%" for ranks and recalls; TMA is a cosine and ES:D a distance in [0, 2] (tables print them raw)."""


ATTACKS = Registry("attack", key="name")
"""Every attack by name, in the ERS table's column order (the order retrieval/attacks/__init__.py imports them)."""


@dataclass
class AttackResult:
    x: torch.Tensor
    """Perturbed images."""
    values: dict[str, torch.Tensor]
    """Per attacked image, each reported value in table units (percent for ranks and recalls)."""
    targets: torch.Tensor | None
    """Gallery index of each image's chosen target (query, candidate or embedding), if the attack has one."""
    passes: int = 0
    """Forward+backward passes over the batch that PGD spent on this result (all plans and restarts)."""

    @property
    def value(self) -> torch.Tensor:
        """The attack's main reported value per image."""
        return next(iter(self.values.values()))


@dataclass
class Batch:
    """What an attack knows about the images it perturbs, computed once before PGD."""

    embeddings: torch.Tensor
    """Benign embeddings [k, D]."""
    distances: torch.Tensor
    """Benign distances to the gallery [k, NX]."""
    self_index: torch.Tensor
    """Gallery position of each image's own entry [k], NOT_IN_GALLERY when absent."""
    labels: torch.Tensor | None


@dataclass
class Plan:
    """Targets chosen before PGD, plus any constants the objective needs (computed once, not per step)."""

    targets: torch.Tensor | None = None
    data: dict[str, torch.Tensor] = field(default_factory=dict)


def gallery_distances(embeddings: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """[k, NX] Euclidean distances; torch.cdist's backward stays finite when a distance is exactly zero."""
    return torch.cdist(embeddings, gallery)


def mask_self(distances: torch.Tensor, self_index: torch.Tensor) -> torch.Tensor:
    """A copy with each row's own gallery entry pushed to +inf (rows without one are unchanged)."""
    masked = distances.clone()
    rows = torch.nonzero(self_index != NOT_IN_GALLERY).flatten()
    masked[rows, self_index[rows]] = float("inf")
    return masked


def top_percent_neighbours(batch: Batch, gallery_size: int) -> torch.Tensor:
    """[k, n] the int(1% of NX) nearest non-self gallery items of each image (at least one)."""
    n = min(max(1, int(0.01 * gallery_size)), gallery_size - 1)
    return mask_self(batch.distances, batch.self_index).topk(n, dim=1, largest=False).indices


def top1_hit(distances: torch.Tensor, batch: Batch, gallery_labels: torch.Tensor) -> torch.Tensor:
    """100 where the nearest non-self gallery item has the image's label, else 0 (R@1 per image)."""
    nearest = mask_self(distances, batch.self_index).argmin(dim=1)
    return 100.0 * (gallery_labels[nearest] == batch.labels).float()


class Attack(Registered):
    """One ranking attack against a fixed gallery; call it on a batch of images.

    A subclass that sets `name` registers itself in ATTACKS; evaluation, ERS, the report tables and /probe read
    everything else they need from the class attributes below.
    """

    registry = ATTACKS
    name: ClassVar[str]
    measures: ClassVar[tuple[Measure, ...]]
    """The measured values; the first is the one the attack is judged by."""
    needs_labels: ClassVar[bool] = False
    """LTM and GTM need query and gallery labels; ES needs them only for ES:R."""
    probe_order: ClassVar[int | None] = None
    """Its place in /probe's list of attacks (0: the default), None where /probe does not offer it: a probe-able
    attack moves the query, so it can change the query's top-1."""
    reports: ClassVar[tuple[str, ...]]
    """The keys of `measures` (set from them)."""
    attacker_goal: ClassVar[int]
    """+1 when the attacker raises reports[0] (e.g. CA-), -1 when it lowers it (e.g. CA+); set from `measures`."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "measures" in cls.__dict__:
            cls.reports = tuple(measure.key for measure in cls.measures)
            cls.attacker_goal = -1 if cls.measures[0].higher_is_more_robust else 1

    def __init__(
        self,
        gallery: torch.Tensor,
        gallery_labels: torch.Tensor | None,
        cfg: PGDConfig,
        generator: torch.Generator | None = None,
        reference_quirks: bool = False,
    ) -> None:
        """`gallery`: L2-normalised embeddings [NX, D]; `generator` (CPU) draws targets and restart noise."""
        if gallery.dim() != 2 or gallery.shape[0] < 2:
            raise UserError(f"{self.name}: the gallery must hold at least two embeddings as an [NX, D] tensor")
        self.gallery = gallery.detach().float()
        self.gallery_labels = None if gallery_labels is None else gallery_labels.detach().long().view(-1)
        self.cfg = cfg
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.reference_quirks = reference_quirks
        self.query_generators: list[torch.Generator] | None = None
        """Set by `seed_queries`: one target generator per attacked query, else targets come from `generator`."""

    # -- what each attack defines ------------------------------------------------------------------------------

    def select(self, batch: Batch) -> Plan:
        """Choose targets (drawn with self.generator) and precompute constants."""
        return Plan()

    def plans(self, batch: Batch) -> list[Plan]:
        """The target plans to attack with; each image keeps the plan its attack does best with (GTM tries two)."""
        return [self.select(batch)]

    def score(self, embeddings: torch.Tensor, batch: Batch, plan: Plan) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(J per image, differentiable; reported values per image, detached)."""
        raise NotImplementedError

    def adjust(self, values: dict[str, torch.Tensor], batch: Batch, plan: Plan, before_last_step: torch.Tensor):
        """Hook for measurements the reference takes before the last PGD update (ES:D quirk)."""
        return values

    # -- the shared procedure ----------------------------------------------------------------------------------

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        gallery_index_of_self: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack `images` (float [k, C, H, W] in [0, 1]) and report each value per image."""
        batch = self._batch(model, images, labels, gallery_index_of_self)
        best = None
        for plan in self.plans(batch):
            objective, trace = self._objective(batch, plan)
            result = pgd(model, images, objective, self.cfg, generator=self.generator)
            values = self._measure(model, result.x, batch, plan)
            if trace["before_last"] is not None:
                values = self.adjust(values, batch, plan, trace["before_last"])
            best = self._stronger(best, AttackResult(x=result.x, values=values, targets=plan.targets,
                                                     passes=result.passes))
        return best

    def measure_perturbed(
        self,
        model: nn.Module,
        images: torch.Tensor,
        perturbed: torch.Tensor,
        labels: torch.Tensor | None = None,
        gallery_index_of_self: torch.Tensor | None = None,
    ) -> AttackResult:
        """The values this attack would report for a given perturbation (e.g. random noise), same targets."""
        batch = self._batch(model, images, labels, gallery_index_of_self)
        best = None
        for plan in self.plans(batch):
            measured = AttackResult(x=perturbed, values=self._measure(model, perturbed, batch, plan), targets=plan.targets)
            best = self._stronger(best, measured)
        return best

    def _stronger(self, kept: AttackResult | None, other: AttackResult) -> AttackResult:
        """Per image, whichever result the attacker prefers by the main reported value (ties keep `kept`)."""
        if kept is None:
            return other
        main = self.reports[0]
        better = (other.values[main] - kept.values[main]) * self.attacker_goal > 0
        rows = better.view(-1, *([1] * (kept.x.dim() - 1)))
        targets = kept.targets
        if targets is not None and other.targets is not None:
            targets = torch.where(better.to(targets.device), other.targets, targets)
        values = {k: torch.where(better, other.values[k], v) for k, v in kept.values.items()}
        return AttackResult(x=torch.where(rows, other.x, kept.x), values=values, targets=targets,
                            passes=kept.passes + other.passes)

    def _batch(self, model, images, labels, gallery_index_of_self) -> Batch:
        if self.needs_labels and (labels is None or self.gallery_labels is None):
            raise UserError(f"{self.name} needs labels for the attacked images and the gallery")
        with frozen(model) as net, torch.no_grad():
            emb = normalize(net(images)).float()
        distances = gallery_distances(emb, self.gallery)
        if gallery_index_of_self is None:
            self_index = distances.argmin(dim=1)
        else:
            self_index = gallery_index_of_self.to(distances.device, torch.long).view(-1)
        if labels is not None:
            labels = labels.to(distances.device, torch.long).view(-1)
        return Batch(embeddings=emb, distances=distances, self_index=self_index, labels=labels)

    def _objective(self, batch: Batch, plan: Plan) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
        """The per-image loss handed to PGD.

        With best-iterate selection (cfg.keep_best) the loss *value* is a selection key -- the reported value
        first, J as tie-break -- while its *gradient* stays that of J, so PGD keeps the iterate that is strongest
        by the reported number and more steps or restarts can only help. The trace keeps the embedding seen at
        the start of the last step for the reference's ES:D timing.
        """
        trace: dict[str, torch.Tensor | None] = {"before_last": None, "last": None}
        scale = float(self.gallery.shape[0])  # one rank position (100/NX percent) then outweighs any J in [0, 2.2]
        record = self.reference_quirks and self.cfg.steps > 0

        def objective(raw: torch.Tensor) -> torch.Tensor:
            emb = normalize(raw)
            if record:
                trace["before_last"], trace["last"] = trace["last"], emb.detach()
            loss, values = self.score(emb, batch, plan)
            if not self.cfg.keep_best:
                return loss
            key = -self.attacker_goal * values[self.reports[0]].double() * scale + loss.detach().double()
            return loss + (key - loss.detach()).detach()

        return objective, trace

    def _measure(self, model, x, batch: Batch, plan: Plan) -> dict[str, torch.Tensor]:
        with frozen(model) as net, torch.no_grad():
            emb = normalize(net(x)).float()
            _, values = self.score(emb, batch, plan)
        return values

    def _draw_any(self, batch: Batch) -> torch.Tensor:
        """Per attacked image, a gallery item drawn uniformly (CA+/QA+ targets)."""
        return self._draw(self.gallery.shape[0], len(batch.embeddings))

    def _draw_neighbour(self, batch: Batch) -> torch.Tensor:
        """Per attacked image, one of its top-1% non-self neighbours drawn uniformly (CA-/QA- targets)."""
        neighbours = top_percent_neighbours(batch, self.gallery.shape[0])
        pick = self._draw(neighbours.shape[1], len(neighbours))
        return neighbours.gather(1, pick[:, None]).squeeze(1)

    def seed_queries(self, seed: int, queries: torch.Tensor) -> None:
        """Before attacking `queries` (their indices in the split): one target generator per query, seeded by (seed,
        attack, query index), and the restart noise (which PGD draws for the whole batch) from all of their indices;
        so a query's values never depend on its batch's position or on the process that attacks it."""
        indices = queries.tolist()
        self.query_generators = [seeding.generator(seed, self.name, "targets", q) for q in indices]
        self.generator.manual_seed(seeding.derive_seed(seed, self.name, "restarts", *indices))

    def _draw(self, high: int, size: int) -> torch.Tensor:
        """Uniform integers in [0, high): one per seeded query (`seed_queries`), else from the attack's generator."""
        if self.query_generators is None:
            return torch.randint(high, (size,), generator=self.generator).to(self.gallery.device)
        if size != len(self.query_generators):
            raise RuntimeError(f"{self.name}: {size} targets asked for {len(self.query_generators)} seeded queries")
        draws = [torch.randint(high, (1,), generator=g) for g in self.query_generators]
        return torch.cat(draws).to(self.gallery.device)
