"""iBOT loss: the DINO cross-entropy on masked patch tokens (student sees them masked, the teacher unmasked).

Only masked tokens are gathered, so unmasked tokens cannot leak into the value or the gradient (not even as
NaN * 0), and the K-way softmax is computed on the masked tokens alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pathme.losses.centering import CenteredCrossEntropy


class IBOTLoss(CenteredCrossEntropy):
    """Masked-token cross-entropy with its own centre (patch tokens are distributed unlike CLS tokens)."""

    def forward(self, student: Tensor, teacher: Tensor, masks: Tensor, teacher_temp: float) -> Tensor:
        """Mean over all B samples of the mean cross-entropy over each sample's masked tokens, a sample without a
        masked token counting as 0.

        This is DINOv2's ``iBOTPatchLoss.forward_masked`` normalisation (token weights 1 / masked tokens of their
        sample, summed, divided by the number of samples), whose defaults the paper kept, so that
        ``ibot_loss_weight`` weighs iBOT as in the paper's configuration; a mean over the masked samples only would
        weigh it about 1 / (share of samples masked), 2x at the usual half.
        ``student``, ``teacher``: patch logits [B, N, K]; ``masks`` [B, N] bool, True = masked for the student.
        Returns 0 with a graph to the student when no token is masked.
        """
        if masks.shape != student.shape[:2] or teacher.shape != student.shape:
            raise ValueError(f"shapes differ: student {student.shape}, teacher {teacher.shape}, masks {masks.shape}")
        masks = masks.bool()
        ce = self.cross_entropy(self.teacher_probs(teacher[masks], teacher_temp), student[masks])
        if ce.numel() == 0:
            return ce.sum()
        counts = masks.sum(dim=1)
        weights = (1.0 / counts.clamp(min=1).float()).unsqueeze(1).expand_as(masks)[masks]
        return (ce * weights).sum() / masks.shape[0]

    @torch.no_grad()
    def update_center(self, teacher: Tensor, masks: Tensor) -> None:
        """EMA of the mean teacher logits over the masked tokens of every rank (unchanged if none is masked)."""
        self.update_center_from(teacher[masks.bool()])
