"""Multi-expert knowledge distillation: align the student's L0 patch tokens with expert-B features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ExpertKDLoss(nn.Module):
    """Multi-expert KD: 1 - mean cosine(projected student L0 patch tokens, expert-B L0 features) over valid tiles.

    The projector is trained with the student; it exists only when the widths differ, since a cosine needs
    vectors of one width.
    """

    def __init__(self, student_dim: int, expert_dim: int) -> None:
        super().__init__()
        self.projector: nn.Module = nn.Linear(student_dim, expert_dim) if student_dim != expert_dim else nn.Identity()

    def forward(self, student: Tensor, expert: Tensor, valid: Tensor) -> Tensor:
        """``student`` [B, N, D], ``expert`` [B, N, Db], ``valid`` [B, N] bool; 0 (with a graph) if none is valid.

        Invalid tiles are dropped before the projection, so whatever they hold cannot reach the loss.
        """
        if valid.shape != student.shape[:2] or expert.shape[:2] != student.shape[:2]:
            raise ValueError(f"shapes differ: student {student.shape}, expert {expert.shape}, valid {valid.shape}")
        valid = valid.bool()
        projected = self.projector(student[valid]).float()
        cosine = F.cosine_similarity(projected, expert[valid].detach().float(), dim=-1)
        if cosine.numel() == 0:
            return cosine.sum()
        return 1 - cosine.mean()
