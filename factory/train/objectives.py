"""Loss terms shared by several stage loops (each loop still writes out its own weighted sum)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss

SEG_WEIGHT = 5.0  # Dice+CE on labeled frames is weighted heavily against the image L1


def dice_ce() -> DiceCELoss:
    """Dice + cross-entropy of 4-class logits against an integer mask (ACDC labels)."""
    return DiceCELoss(to_onehot_y=True, softmax=True)


def segmentation_loss(loss_fn: DiceCELoss, logits: torch.Tensor, mask: torch.Tensor,
                      labeled: torch.Tensor) -> torch.Tensor:
    """Dice+CE over the labeled frames of a batch; a graph-connected zero when none is labeled."""
    if not bool(labeled.any()):
        return logits.sum() * 0.0  # keeps every DDP rank's graph identical
    return loss_fn(logits[labeled].float(), mask[labeled][:, None])


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, 1)), mean per latent element."""
    return 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
