"""Run one tiny training under torchrun and save this process's final weights as rank<R>.pt (DDP test helper)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from rich.console import Console

from retrieval import distributed
from training.config import TrainConfig
from training.trainer import Trainer

if __name__ == "__main__":
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    processes = distributed.start(cfg.device)
    try:
        trainer = Trainer(cfg, processes, resume=False, console=Console(quiet=True))
        trainer.run()
        torch.save(trainer.model.state_dict(), Path(cfg.out) / f"rank{processes.rank}.pt")
    finally:
        distributed.stop(processes)
