"""The part DINO and iBOT share: a centred, sharpened teacher target, a soft cross-entropy and an EMA centre.

Centring (subtracting a running mean of the teacher logits) and sharpening (a low teacher temperature) pull in
opposite directions and together keep the teacher from collapsing to one prototype or to a uniform output.
Everything is computed in float32 so that AMP half-precision logits cannot overflow the softmax.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class CenteredCrossEntropy(nn.Module):
    """Holds the centre buffer [1, K] (saved in checkpoints so a resumed run continues exactly)."""

    center: Tensor

    def __init__(self, num_prototypes: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be positive, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    def teacher_probs(self, teacher: Tensor, teacher_temp: float) -> Tensor:
        """Softmax of the centred teacher logits at ``teacher_temp``: a fixed target, outside the graph."""
        return F.softmax((teacher.float() - self.center) / teacher_temp, dim=-1)

    def cross_entropy(self, target: Tensor, student: Tensor) -> Tensor:
        """Per-row ``-sum_k target_k * log_softmax(student / student_temp)_k`` (log_softmax: no log(0))."""
        return -(target * F.log_softmax(student.float() / self.student_temp, dim=-1)).sum(dim=-1)

    @torch.no_grad()
    def update_center_from(self, rows: Tensor) -> None:
        """EMA step towards the mean of ``rows`` [M, K] pooled over all ranks; no step when no rank has a row.

        Sums and counts are all-reduced together (one collective), so the mean is that of every row on every
        rank, whatever each rank holds, and all ranks keep the same centre.
        """
        rows = rows.float()
        stats = torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        total, count = stats[:-1], stats[-1]
        batch_mean = (total / count.clamp(min=1)).unsqueeze(0)
        updated = self.center * self.center_momentum + batch_mean * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))
