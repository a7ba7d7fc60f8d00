"""What the two frame stages (VAE, teacher) share: the cohort's frames, this rank's training sampler and
held-out frames, the Dice+CE loss, and the checkpoint step (held-out Dice and PSNR, the final scale factor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss

from factory.store.reader import open_store
from factory.train.data import CohortFrames, FrameSampler, shard, split_subjects
from factory.train.loop import StageRun
from factory.train.objectives import dice_ce
from factory.train.validation import reconstruction_metrics

VAL_FRAMES_PER_SUBJECT = 4  # ED, ES and two more labeled frames of each held-out subject
SCALE_BATCHES = 8  # batches of training frames per worker that measure the scale factor

Batch = dict[str, torch.Tensor]


@dataclass
class FrameStage:
    """One worker's frame data of a frame stage; `with_ed` adds each frame's ED frame (the teacher's input)."""

    run: StageRun
    with_ed: bool
    cohort: CohortFrames
    sampler: FrameSampler
    val_pairs: np.ndarray  # this rank's share of the held-out labeled (subject, frame) pairs
    seg_loss: DiceCELoss

    @classmethod
    def open(cls, run: StageRun, with_ed: bool = False) -> FrameStage:
        """Split the cohort's subjects (train / held out) and take this rank's share of each."""
        cfg = run.cfg
        cohort = CohortFrames(open_store(cfg.cohort))
        train_ids, val_ids = split_subjects(cohort.n_subjects, cfg.val_fraction, cfg.seed)
        val_pairs = shard(cohort.labeled_frames(val_ids, VAL_FRAMES_PER_SUBJECT), run.rank, run.world)
        return cls(run, with_ed, cohort, FrameSampler(cohort, shard(train_ids, run.rank, run.world)), val_pairs,
                   dice_ce())

    def batch(self, step: int) -> Batch:
        """Training batch `step` of this rank (drawn from `run.rng(step)`), on its device."""
        run = self.run
        return run.to_device(self.sampler.batch(run.rng(step), run.cfg.batch_size, self.with_ed))

    def checkpoint(self, step: int, module: torch.nn.Module, reconstruct: Callable[[Batch], tuple[torch.Tensor, ...]],
                   scale_name: str, scaled: Callable[[Batch], torch.Tensor]) -> None:
        """Checkpoint with `module` validated in eval mode: held-out Dice and PSNR of `reconstruct(batch) ->
        (image, logits)`; at the last step also `scale_name` = 1 / std of `scaled(batch)` on fresh training batches."""
        run = self.run
        module.eval()
        with torch.no_grad():
            metrics = reconstruction_metrics(run, self.cohort, self.val_pairs, run.cfg.batch_size, reconstruct,
                                             self.with_ed)
            extra = {}
            if step == run.cfg.steps:
                with run.autocast():
                    extra[scale_name] = 1.0 / run.global_std(scaled(b) for b in self.scale_batches())
        module.train()
        run.checkpoint(step, metrics, extra)

    def scale_batches(self) -> Iterator[Batch]:
        """SCALE_BATCHES training batches after the last step (generators no training step used)."""
        return (self.batch(self.run.cfg.steps + k) for k in range(1, SCALE_BATCHES + 1))
