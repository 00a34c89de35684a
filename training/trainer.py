"""The training loop: SPC-2 batches -> defense loss -> Adam step, with validation, logs, checkpoints and DDP.

`train(cfg)` runs one configuration into its run directory (layout in docs/architecture.md) and returns the final
metrics. Each iteration is `loss, stats = defense(model, images, labels)`, backward, `optimizer.step()`; the only
host syncs are the floats the defense reports. Everything random is seeded from cfg.seed and checkpointed, so a run
resumed from any checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from retrieval.atomic import atomic_write_json
from retrieval.datasets import ImageDataset, load_dataset
from retrieval.errors import UserError
from retrieval.sampling import balanced_subset
from retrieval.seeding import derive_seed, generator
from retrieval import distributed
from retrieval.models import build_model
from retrieval.models.loading import load_trained
from training.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from training.config import TrainConfig
from training.data import SPC2Sampler, TrainBatches
from training.defenses import build_defense
from training.defenses.notation import format_method
from training.plots import plot_curves
from training.runlog import RunLog, StatsWindow, TrainProgress
from training.validation import validate

HARDNESS_KEYS = ("hardness_adv", "hardness_source", "hardness")
"""Stats shown as the progress bar's mean hardness, first present wins."""


@dataclass
class Position:
    """Where the run stands; stored in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    """Batches of `epoch` already trained on."""
    step: int = 0
    train_seconds: float = 0.0
    """Wall time spent in training iterations (validation and checkpoint writes excluded)."""
    image_passes: float = 0.0
    """Sum of the defense's per-iteration `image_passes` stat."""
    wall_seconds: float = 0.0
    """Wall time of the whole run so far, validation and checkpoints included."""
    init_seconds: float = 0.0
    """Training seconds of the `init` run (and of its own init), counted against the time budget."""
    init_image_passes: float = 0.0


def train(cfg: TrainConfig, *, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run (or, with resume, continue) the training run in cfg.out; returns the metrics written to metrics.json."""
    processes = distributed.start(cfg.device)
    try:
        return Trainer(cfg, processes, resume=resume, console=console or Console()).run()
    finally:
        distributed.stop(processes)


class Trainer:
    """One run in one process: build everything from the config (and checkpoint), then `run()`."""

    def __init__(self, cfg: TrainConfig, processes: distributed.Processes, *, resume: bool, console: Console):
        self.cfg = cfg
        self.processes = processes
        self.console = console
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / "checkpoint.pt"
        if resume:
            state = load_checkpoint(self.checkpoint_path)
        elif self.checkpoint_path.exists():
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        else:
            state = None
        _configure_determinism(cfg.deterministic)
        device = processes.device

        torch.manual_seed(derive_seed(cfg.seed, "model"))  # identical initial weights on every process
        self.model = build_model(cfg.model, embedding_dim=cfg.embedding_dim, pretrained=cfg.pretrained)
        shape = {"image_size": self.model.input_size, "channels": self.model.channels}
        train_set = load_dataset(cfg.dataset, "train", root=cfg.data_root, **shape)
        val_set = load_dataset(cfg.dataset, "test", root=cfg.data_root, **shape)
        items = balanced_subset(train_set.labels, cfg.train_subset, cfg.seed) if cfg.train_subset else None
        labels = train_set.labels if items is None else train_set.labels[items]
        self.sampler = SPC2Sampler(
            labels, cfg.batch_pairs, cfg.seed, rank=processes.rank, world_size=processes.world_size
        )
        self.batches = TrainBatches(train_set, items, device, seed=cfg.seed, num_workers=cfg.num_workers)
        self.val_data, self.val_labels, self.validated_on = _validation_data(val_set, cfg.val_subset, cfg.seed)

        init = _load_init(cfg, self.model) if cfg.init and state is None else None
        self.model.to(device)
        torch.manual_seed(derive_seed(cfg.seed, "torch", processes.rank))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.net: nn.Module = self.model
        if processes.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.generator = generator(cfg.seed, "defense", processes.rank, device=device)
        self.defense = build_defense(cfg.defense, generator=self.generator)
        if hasattr(self.model, "freeze_bn"):  # BatchNorm in batch-statistics mode for the defenses that train it
            self.model.freeze_bn = not self.defense.trains_batchnorm

        self.position = Position()
        if init is not None:
            self.position.init_seconds, self.position.init_image_passes = init
        self.log = RunLog(self.out / "log.jsonl", enabled=processes.is_main)
        self.validations: list[dict[str, Any]] = []
        """Validation records (rank 0 only: the other processes wait while it validates)."""
        if state is not None:
            self._restore(state)

    # -- main loop -------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, pos = self.cfg, self.position
        per_epoch = self.sampler.batches_per_epoch
        limit = min(cfg.max_steps or math.inf, cfg.epochs * per_epoch)
        if self.processes.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", cfg.to_dict())
        self.log.truncate_after(pos.step)  # drop records of a run that went further than its checkpoint
        self._window = StatsWindow()
        self._window_start = pos.train_seconds
        budget_left = None if cfg.time_budget is None else cfg.time_budget - pos.init_seconds - pos.train_seconds
        self._progress = TrainProgress(int(limit), pos.step, console=self.console, enabled=self.processes.is_main,
                                       time_limit_s=budget_left)
        self._clock = self._wall_clock = time.perf_counter()
        with self._progress:
            while self._stop_reason() is None:
                plan = self.sampler.epoch(pos.epoch)
                for images, labels in self.batches.iterate(pos.epoch, plan, start=pos.batch):
                    self._step(images, labels)
                    self._progress.count(pos.step)  # the step between log records (loss: the last record's mean)
                    stopping = self._stop_reason() is not None
                    if pos.step % cfg.log_every == 0 or stopping:
                        self._log_window()
                    if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.batch < len(plan):
                        self._paused(self._save)
                    if stopping:
                        break
                epoch_done = pos.batch >= len(plan)
                if epoch_done:
                    pos.epoch += 1
                    pos.batch = 0
                if self._stop_reason() is not None or (epoch_done and pos.epoch % cfg.val_every == 0):
                    self._paused(self._validate)
                self._paused(self._save)
        self._tick()
        return self._finish()

    # -- pieces ----------------------------------------------------------------------------------------------------

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One iteration: the defense's loss on this process's batch, backward (DDP averages), Adam step."""
        loss, stats = self.defense(self.net, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.position.step += 1
        self.position.batch += 1
        self.position.image_passes += stats.get("image_passes", 0.0)
        self._window.add(stats, images=images.shape[0])

    def _over_budget(self) -> bool:
        """Whether the time budget (init run included) is spent; the same answer on every process."""
        budget = self.cfg.time_budget
        if budget is None:
            return False
        spent = self.position.init_seconds + self._tick()
        return bool(self.processes.broadcast(spent >= budget))

    def _log_window(self) -> None:
        """Write the mean stats since the last record to log.jsonl and the progress bar."""
        seconds = self._tick() - self._window_start
        self._window_start = self.position.train_seconds
        speed = self._window.images / max(seconds, 1e-9)
        means = self._window.means()
        self.log.write({"kind": "train", "step": self.position.step, "epoch": self._epochs(), **means,
                        "images_per_s": speed})
        self._progress.update(self.position.step, _progress_stats(means), speed)

    def _epochs(self) -> float:
        """Epochs trained so far, fractional inside an epoch."""
        return round(self.position.step / self.sampler.batches_per_epoch, 4)

    def _tick(self) -> float:
        """Add the time since the last tick to train_seconds; returns the new total."""
        now = time.perf_counter()
        self.position.train_seconds += now - self._clock
        self._clock = now
        return self.position.train_seconds

    def _wall(self) -> float:
        """Add the wall time since the last call to wall_seconds; returns the new total."""
        now = time.perf_counter()
        self.position.wall_seconds += now - self._wall_clock
        self._wall_clock = now
        return self.position.wall_seconds

    def _paused(self, action) -> None:
        """Run `action` outside the training clock."""
        self._tick()
        action()
        self._clock = time.perf_counter()

    def _validate(self) -> None:
        pos = self.position
        if self.processes.is_main:
            cfg = self.cfg
            metrics = validate(
                self.model, self.val_data, self.val_labels, batch_size=cfg.val_batch, num_workers=cfg.num_workers,
                attack_queries=cfg.val_attack_queries, attack_steps=cfg.val_attack_steps,
            )
            record = {"kind": "val", "step": pos.step, "epoch": self._epochs(), **metrics}
            self.validations.append(record)
            self.log.write(record)
            summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("R@1", "R@2", "mAP", "NMI", "robust_proxy")
                                if k in metrics)
            self.console.print(f"epoch {record['epoch']:g} step {pos.step}: {summary}")
            if metrics["collapsed"]:
                warning = (
                    f"the embedding looks collapsed (mean cosine {metrics['mean_cosine']:.3f}, R@1 "
                    f"{metrics['R@1']:.3f}); consider a weaker adversary or a lower learning rate"
                )
                self.log.write({"kind": "warning", "step": pos.step, "message": warning})
                self.console.print(f"[yellow]warning: {warning}")
        self.processes.barrier()

    def _save(self) -> None:
        self._wall()
        mine = {"rng": rng_state(self.generator), "defense": self.defense.state_dict()}
        everyone = self.processes.gather(mine)
        if self.processes.is_main:
            save_checkpoint(
                self.checkpoint_path,
                {
                    "config": self.cfg.to_dict(),
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "position": asdict(self.position),
                    "processes": everyone,
                    "validations": self.validations,
                },
            )

    def _restore(self, state: dict[str, Any]) -> None:
        processes = state["processes"]
        if len(processes) != self.processes.world_size:
            raise UserError(
                f"{self.checkpoint_path} was written by {len(processes)} process(es); "
                f"resume it with the same number, not {self.processes.world_size}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        mine = processes[self.processes.rank]
        restore_rng(mine["rng"], self.generator)
        self.defense.load_state_dict(mine["defense"])
        self.position = Position(**state["position"])
        self.validations = list(state["validations"])

    def _finish(self) -> dict[str, Any]:
        pos, cfg = self.position, self.cfg
        self._wall()
        epochs = self._epochs()
        final = self.validations[-1] if self.validations else {}
        metrics: dict[str, Any] = {k: v for k, v in final.items() if k not in ("kind", "step", "epoch")}
        metrics.update(
            {
                "collapsed": any(v["collapsed"] for v in self.validations),
                "best_R@1": max((v["R@1"] for v in self.validations), default=float("nan")),
                "method": format_method(self.cfg.defense),
                "paper_cost": self.defense.paper_cost(),
                "image_passes_per_iter": pos.image_passes / max(pos.step, 1),
                "steps": pos.step,
                "epochs": epochs,
                "image_passes": pos.image_passes,
                "time_budget_s": cfg.time_budget,
                "budget_spent_s": pos.init_seconds + pos.train_seconds,
                "stopped_by": self._stop_reason(),
                "init": cfg.init,
                "init_seconds": pos.init_seconds,
                "init_image_passes": pos.init_image_passes,
                "wall_seconds": pos.wall_seconds,
                "validated_on": self.validated_on,
                "train_seconds": pos.train_seconds,
                "seconds_per_epoch": pos.train_seconds / epochs if epochs else float("nan"),
                "seconds_per_step": pos.train_seconds / max(pos.step, 1),
                "world_size": self.processes.world_size,
                "torch_threads": torch.get_num_threads(),  # float summation order, so part of reproducing a run
                "dataset": cfg.dataset,
                "model": cfg.model,
            }
        )
        if self.processes.is_main:
            atomic_write_json(self.out / "metrics.json", metrics)
            plot_curves(self.log.records(), self.out / "curves.png")
        return metrics


    def _stop_reason(self) -> str | None:
        """Why training stops now (time_budget, max_steps, epochs), None while it goes on: the one stop decision,
        which the loop, its log records and metrics.json's stopped_by all ask. The same answer on every process."""
        pos, cfg = self.position, self.cfg
        if self._over_budget():
            return "time_budget"
        if cfg.max_steps is not None and pos.step >= cfg.max_steps:
            return "max_steps"
        if pos.epoch >= cfg.epochs or pos.step >= cfg.epochs * self.sampler.batches_per_epoch:
            return "epochs"
        return None


def _load_init(cfg: TrainConfig, model: nn.Module) -> tuple[float, float]:
    """Load the init run's weights into `model`; returns the (training seconds, image passes) it cost."""
    trained = load_trained(cfg.init)
    if trained.config.get("arch") != cfg.model or int(trained.config["embedding_dim"]) != cfg.embedding_dim:
        raise UserError(
            f"--init {cfg.init} holds a {trained.config.get('arch')} with {trained.config['embedding_dim']}-d "
            f"embeddings, not the {cfg.model} with {cfg.embedding_dim}-d embeddings this run trains"
        )
    model.load_state_dict(trained.model.state_dict())
    position = trained.position
    seconds = position.get("train_seconds", 0.0) + position.get("init_seconds", 0.0)
    passes = position.get("image_passes", 0.0) + position.get("init_image_passes", 0.0)
    return float(seconds), float(passes)


def _progress_stats(means: dict[str, float]) -> dict[str, float]:
    hardness = next((means[k] for k in HARDNESS_KEYS if k in means), None)
    return {"loss": means.get("loss", float("nan")), "hardness": hardness if hardness is not None else float("nan")}


def _validation_data(
    dataset: ImageDataset, n: int | None, seed: int
) -> tuple[torch.Tensor | Dataset, torch.Tensor, dict[str, Any]]:
    """(images, labels, description): all test images, or a seeded class-balanced subset of n of them.

    A prefix would not do: folder datasets list their files class by class, so the first images are one class.
    """
    total, tensors = len(dataset), dataset.tensors()
    if not n or n >= total:
        data, labels, selection = (tensors if tensors is not None else dataset), dataset.labels, "all"
    else:
        items = balanced_subset(dataset.labels, n, seed, purpose="validation")
        data = tensors[items] if tensors is not None else Subset(dataset, items.tolist())
        labels, selection = dataset.labels[items], "seeded class-balanced subset"
    described = {"images": len(labels), "of": total, "classes": int(torch.unique(labels).numel()),
                 "selection": selection}
    return data, labels, described


def _configure_determinism(enabled: bool) -> None:
    """Deterministic kernels where torch has them; ops without one only warn."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
