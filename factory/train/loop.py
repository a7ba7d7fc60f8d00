"""The worker-side harness every stage loop runs in: what the stage loops share, nothing they differ in.

A loop builds its model and calls `setup` (AdamW, the EMA if any, both restored from the latest Ray
Train checkpoint by `resume`, the model wrapped for DDP), then iterates `steps()`. Each step it calls
`optimize` (backward, clipping, warm-up + cosine learning rate, optimizer and EMA step) and
`record`; at `at_checkpoint` steps it validates and calls `checkpoint`, the only place that talks
to Ray Train (each report is a barrier).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from factory.presets import get_preset
from factory.train.checkpoint import load_state, save_state
from factory.train.config import StageConfig
from factory.train.data import step_rng
from factory.train.metrics import MetricsLog

if TYPE_CHECKING:  # diffusers is heavy to import: only the diffusion stages' workers load it
    from diffusers.training_utils import EMAModel


class InjectedFailure(RuntimeError):
    """Raised by the `fail_at_step` test hook to simulate a worker crash."""


class StageRun:
    """One worker's view of a stage's training run."""

    def __init__(self, config: dict) -> None:
        self.cfg = StageConfig(**config)
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.preset = get_preset(self.cfg.preset)
        self.parts: dict[str, dict] = {}
        self.start_step = 0
        self.starts: list[int] = []
        self.log: MetricsLog | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.last_train: dict[str, float] = {}  # the latest logged means of the training losses

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, module: nn.Module, ema: bool = False) -> tuple[nn.Module, torch.optim.Optimizer, EMAModel | None]:
        """AdamW over the stage's `module` and, with `ema`, a moving average of its weights (warm-up decay capped
        at `ema_decay`), restored by `resume`; returns (the module on this device, in DDP with several workers,
        the optimizer, the EMA or None)."""
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.cfg.lr)
        average = None
        if ema:
            from diffusers.training_utils import EMAModel

            average = EMAModel(module.parameters(), decay=self.cfg.ema_decay, foreach=True)
        name = self.cfg.stage
        self.resume(modules={name: module}, optimizers={name: optimizer},
                    emas={name: average} if average is not None else None)
        return ray.train.torch.prepare_model(module), optimizer, average

    def resume(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer] | None = None,
               emas: dict[str, EMAModel] | None = None) -> int:
        """Register the state to checkpoint, restore it from the latest checkpoint; returns the step reached."""
        self.parts = {"modules": modules, "optimizers": optimizers or {}, "emas": emas or {}}
        state: dict = {"step": 0, "starts": []}
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                state = load_state(directory, **self.parts)
        self.start_step, self.starts = state["step"], [*state["starts"], state["step"]]
        torch.manual_seed(int(step_rng(self.cfg.seed, self.rank, self.start_step).integers(2**62)))
        if self.rank == 0:
            self.log = MetricsLog(self.cfg.log_dir, self.cfg.stage, self.cfg.steps, self.start_step)
            if self.start_step:
                print(f"[{self.cfg.stage}] resuming from the checkpoint of step {self.start_step}", flush=True)
        return self.start_step

    # -- per step ----------------------------------------------------------------------------------
    def steps(self) -> Iterator[int]:
        """Steps start_step + 1 .. steps (1-based: step k is the k-th optimizer update)."""
        for step in range(self.start_step + 1, self.cfg.steps + 1):
            if step == self.cfg.fail_at_step and self.start_step == 0:
                # Every rank first reaches this step: rank 0's report of the previous checkpoint is then in
                # Ray's queue. Without it a crash seconds after a report can beat rank 0's checkpoint upload,
                # and Ray never registers that checkpoint (the rerun would start one checkpoint earlier).
                if self.world > 1:
                    dist.barrier()
                if self.rank == self.world - 1:
                    raise InjectedFailure(f"[{self.cfg.stage}] injected failure at step {step} (fail_at_step test hook)")
            yield step

    def rng(self, step: int) -> np.random.Generator:
        """The data generator of `step` on this rank."""
        return step_rng(self.cfg.seed, self.rank, step)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor of a batch on this worker's device."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on GPU; full precision on CPU (bf16 CPU kernels are slower there)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over the first `warmup` of the run, then cosine decay to `lr_floor` x the base rate
        (a function of the step alone, so a resumed run continues the same schedule)."""
        cfg = self.cfg
        warmup = max(1, round(cfg.warmup * cfg.steps))
        if step <= warmup:
            return cfg.lr * step / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * (cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def optimize(self, step: int, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 ema: EMAModel | None = None) -> None:
        """Backward, clip the gradient norm, step the optimizer at this step's learning rate (and the EMA)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.record_value("grad_norm", nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        lr = self.learning_rate(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.record_value("lr", lr)
        optimizer.step()
        if ema is not None:
            ema.step(params)

    def record_value(self, name: str, value: torch.Tensor | float) -> None:
        """Add a value to the running sums logged at the next log step."""
        value = torch.as_tensor(value).detach().float()
        self.sums[name] = self.sums.get(name, 0.0) + value

    def record(self, step: int, **values: torch.Tensor | float) -> None:
        """Accumulate this step's losses; every `log_every` steps rank 0 logs their means and a progress line."""
        for name, value in values.items():
            self.record_value(name, value)
        self.count += 1
        if step % self.cfg.log_every == 0 or step == self.cfg.steps:
            means = {k: float(v) / self.count for k, v in self.sums.items()}
            for name, value in means.items():
                if not np.isfinite(value):
                    raise FloatingPointError(f"[{self.cfg.stage}] {name} is {value} at step {step}")
            if self.log is not None:
                self.log.log(step, means)
                print(self.log.progress(step, means), flush=True)
            self.last_train = means
            self.sums, self.count = {}, 0

    # -- checkpoints and cross-worker reductions -----------------------------------------------------
    def at_checkpoint(self, step: int) -> bool:
        """True every `checkpoint_every` steps and at the last step."""
        return step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps

    def checkpoint(self, step: int, metrics: dict[str, float], extra: dict | None = None) -> None:
        """Rank 0 saves the registered state; every rank reports, so Ray Train persists the checkpoint."""
        metrics = {**self.last_train, **metrics}
        if self.log is not None and metrics:
            self.log.log(step, metrics, kind="checkpoint")
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                save_state(directory, step=step, **self.parts,
                           extra={"starts": self.starts, "metrics": metrics, **(extra or {})})
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({"step": step, **metrics}, checkpoint=checkpoint,
                             checkpoint_dir_name=f"{self.cfg.stage}-step{step:07d}")

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over all workers (identity with one worker)."""
        values = values.to(self.device, torch.float64)
        if self.world > 1:
            dist.all_reduce(values)
        return values.cpu()

    def global_std(self, batches: Iterator[torch.Tensor]) -> float:
        """Standard deviation of every value of every batch, over all workers' batches."""
        total = torch.zeros(3, dtype=torch.float64)
        for x in batches:
            x = x.detach().double().cpu()
            total += torch.stack([torch.tensor(x.numel(), dtype=torch.float64), x.sum(), (x * x).sum()])
        n, s, ss = self.all_sum(total).tolist()
        return float(np.sqrt(max(ss / n - (s / n) ** 2, 0.0)))
